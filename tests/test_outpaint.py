"""Outpainting: the side settings, the grown canvas and its mask."""
import numpy as np
import pytest
from PIL import Image

from brushwork.init_image import ImageInputError
from brushwork.outpaint import (
    MAX_OUTPAINT,
    OUTPAINT_FILLS,
    SIDES,
    OutpaintError,
    check_sides,
    extend_canvas,
    parse_outpaint,
)


def noise_image(size, seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB")


def px(img) -> np.ndarray:
    return np.asarray(img).astype(int)


# --- settings --------------------------------------------------------------


def test_parse_outpaint():
    assert parse_outpaint("left=128,top=64") == {"left": 128, "right": 0, "top": 64, "bottom": 0}
    assert parse_outpaint(" all = 64 ") == dict.fromkeys(SIDES, 64)
    assert parse_outpaint("Right=8, bottom = 2048,") == {"left": 0, "right": 8, "top": 0, "bottom": 2048}
    assert OUTPAINT_FILLS == ("edge", "noise") and MAX_OUTPAINT == 2048
    assert issubclass(OutpaintError, ImageInputError) and issubclass(OutpaintError, ValueError)


@pytest.mark.parametrize("text, message", [
    ("right=100", "right=100 is not a multiple of 8; use 96 or 104"),
    ("left=4", "left=4 is not a multiple of 8; use 8"),
    ("top=2047", "top=2047 is not a multiple of 8; use 2040"),
    ("middle=64", "'middle' is not a side; use left, right, top, bottom or all"),
    ("left=abc", "left='abc' is not a whole number of pixels; use e.g. left=128"),
    ("left=12.5", "left='12.5' is not a whole number"),
    ("left=0", "left=0 must be more than 0"),
    ("left=-8", "left=-8 must be more than 0"),
    ("left=4096", "left=4096 is more than the 2048 pixel limit; use at most left=2048"),
    ("left=8,left=16", "the side 'left' is given twice"),
    ("all=8,top=8", "the side 'top' is given twice"),
    ("", "is empty"),
    (" , ", "names no side"),
    ("left", "'left' is not side=pixels"),
])
def test_parse_outpaint_errors(text, message):
    with pytest.raises(OutpaintError) as err:
        parse_outpaint(text)
    assert message in str(err.value)


def test_check_sides():
    assert check_sides({"left": 64}) == {"left": 64, "right": 0, "top": 0, "bottom": 0}
    assert check_sides({"Top": 8.0, "bottom": 0}) == {"left": 0, "right": 0, "top": 8, "bottom": 0}
    for bad, message in [({}, "no side grows"), ({"left": 0}, "no side grows"), ({"up": 8}, "'up' is not a side"),
                         ({"left": True}, "not a whole number"), ({"left": "64"}, "not a whole number"),
                         ({"left": 60}, "use 56 or 64"), ({"left": -8}, "must be more than 0"),
                         ({"left": 2056}, "2048 pixel limit"), ([64], "must be an object")]:
        with pytest.raises(OutpaintError) as err:
            check_sides(bad)
        assert message in str(err.value)


# --- canvas ----------------------------------------------------------------


def expected_mask(size, keep) -> np.ndarray:
    w, h = size
    m = np.full((h, w), 255)
    x1, y1, x2, y2 = keep
    m[y1:y2, x1:x2] = 0
    return m


@pytest.mark.parametrize("fill", OUTPAINT_FILLS)
def test_extend_canvas_layout(fill):
    img = noise_image((64, 48), 1)
    canvas, mask = extend_canvas(img, {"left": 32, "top": 16}, fill=fill, seed=3)
    assert canvas.size == (96, 64) and mask.size == (96, 64)
    assert canvas.mode == "RGB" and mask.mode == "L"
    # the original sits at (left, top), pixel for pixel
    assert np.array_equal(px(canvas)[16:64, 32:96], px(img))
    # repaint the new area and a 16 px band into the original along the grown sides
    assert np.array_equal(px(mask), expected_mask((96, 64), (32 + 16, 16 + 16, 96, 64)))


def test_extend_canvas_all_sides_and_overlap():
    img = noise_image((40, 40), 2)
    canvas, mask = extend_canvas(img, parse_outpaint("all=8"), overlap=4)
    assert canvas.size == (56, 56)
    assert np.array_equal(px(canvas)[8:48, 8:48], px(img))
    assert np.array_equal(px(mask), expected_mask((56, 56), (12, 12, 44, 44)))
    _, none = extend_canvas(img, {"right": 8, "bottom": 16}, overlap=0)
    assert np.array_equal(px(none), expected_mask((48, 56), (0, 0, 40, 40)))
    _, whole = extend_canvas(img, {"left": 8, "right": 8}, overlap=32)  # bands meet: all repainted
    assert (px(whole) == 255).all()


def test_edge_fill_continues_the_edge_colours():
    img = Image.new("RGB", (32, 64), (128, 128, 128))
    img.paste((200, 30, 30), (0, 0, 2, 32))  # left edge: red top half
    img.paste((30, 30, 200), (0, 32, 2, 64))  # blue bottom half
    canvas, _ = extend_canvas(img, {"left": 64}, fill="edge")
    c = px(canvas)
    assert (np.abs(c[2, :50] - (200, 30, 30)) <= 2).all()  # far from the seam: the edge colour
    assert (np.abs(c[61, :50] - (30, 30, 200)) <= 2).all()
    col = c[:, 10, 0]
    assert (np.abs(np.diff(col)) <= 40).all()  # blurred: no hard step between the two colours
    assert col[0] > 190 and col[-1] < 40


def test_noise_fill_is_seeded_and_around_the_mean():
    img = Image.new("RGB", (32, 32), (100, 150, 200))
    a, _ = extend_canvas(img, {"right": 64}, fill="noise", seed=7)
    b, _ = extend_canvas(img, {"right": 64}, fill="noise", seed=7)
    c, _ = extend_canvas(img, {"right": 64}, fill="noise", seed=8)
    assert np.array_equal(px(a), px(b)) and not np.array_equal(px(a), px(c))
    new = px(a)[:, 32:].reshape(-1, 3)
    assert np.allclose(new.mean(axis=0), (100, 150, 200), atol=3)
    assert 20 < new.std(axis=0).min() < 45
    assert np.array_equal(px(a)[:, :32], px(img))


def test_extend_canvas_errors():
    img = noise_image((16, 16))
    with pytest.raises(OutpaintError) as err:
        extend_canvas(img, {"left": 8}, fill="mirror")
    assert "'mirror'" in str(err.value) and "'edge', 'noise'" in str(err.value)
    with pytest.raises(OutpaintError, match="no side grows"):
        extend_canvas(img, {})
    with pytest.raises(OutpaintError, match="use 8 or 16"):
        extend_canvas(img, {"top": 12})
    with pytest.raises(OutpaintError, match="overlap=-1"):
        extend_canvas(img, {"top": 8}, overlap=-1)
