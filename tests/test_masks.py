"""Inpainting masks: reading, fitting, blurring, "only masked" boxes, latent masks, paste-back, fill."""
import numpy as np
import pytest
from PIL import Image, ImageFilter

from brushwork.init_image import ImageInputError
from brushwork.masks import (
    INPAINT_AREAS,
    MASKED_CONTENT,
    MaskError,
    crop_region,
    expand_to_aspect,
    fill_masked,
    fit_mask,
    inpaint_area_name,
    is_empty,
    latent_mask,
    mask_from_alpha,
    mask_from_image,
    masked_content_name,
    overlay_mask,
    paste_back,
    prepare_mask,
)


def square_mask(size=(100, 100), box=(40, 40, 60, 60)) -> Image.Image:
    m = Image.new("L", size, 0)
    m.paste(255, box)
    return m


def noise_image(size, seed) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB")


def px(img) -> np.ndarray:
    return np.asarray(img).astype(int)


def flat(img) -> list:
    return px(img).ravel().tolist()


# --- names -----------------------------------------------------------------


def test_masked_content_names():
    assert [masked_content_name(i) for i in range(4)] == list(MASKED_CONTENT)
    assert masked_content_name("Latent_Noise") == "latent noise"
    assert masked_content_name("ORIGINAL") == "original"
    with pytest.raises(MaskError) as err:
        masked_content_name(7)
    assert "7" in str(err.value) and "0 = 'fill'" in str(err.value) and "3 = 'latent nothing'" in str(err.value)
    assert issubclass(MaskError, ImageInputError)


def test_inpaint_area_names():
    assert inpaint_area_name(False) == "whole picture" and inpaint_area_name(True) == "only masked"
    assert inpaint_area_name(0) == "whole picture" and inpaint_area_name(1) == "only masked"
    assert inpaint_area_name("Only_Masked") == "only masked"
    with pytest.raises(MaskError) as err:
        inpaint_area_name("masked only please")
    assert all(repr(a) in str(err.value) for a in INPAINT_AREAS)


# --- reading ---------------------------------------------------------------


def test_mask_from_plain_modes():
    rgb = Image.new("RGB", (4, 1), (0, 0, 0))
    rgb.putpixel((1, 0), (255, 255, 255))
    rgb.putpixel((2, 0), (255, 0, 0))
    m = mask_from_image(rgb)
    assert m.mode == "L" and flat(m) == [0, 255, 76, 0]
    one = Image.new("1", (2, 1), 0)
    one.putpixel((1, 0), 1)
    assert flat(mask_from_image(one)) == [0, 255]
    assert flat(mask_from_image(Image.new("L", (1, 1), 128))) == [128]


def test_mask_from_rgba_strokes_over_transparency():
    arr = np.zeros((1, 4, 4), np.uint8)  # transparent black
    arr[0, 1] = (255, 255, 255, 255)  # opaque white stroke
    arr[0, 2] = (255, 255, 255, 128)  # half-transparent white
    arr[0, 3] = (255, 255, 255, 0)  # transparent white: keep
    assert flat(mask_from_image(Image.fromarray(arr, "RGBA"))) == [0, 255, 128, 0]


def test_mask_from_opaque_rgba_is_luminance():
    arr = np.full((1, 2, 4), 255, np.uint8)
    arr[0, 0, :3] = 0
    assert flat(mask_from_image(Image.fromarray(arr, "RGBA"))) == [0, 255]


def test_mask_from_alpha():
    assert mask_from_alpha(Image.new("RGB", (2, 2))) is None
    assert mask_from_alpha(Image.new("RGBA", (2, 2), (1, 2, 3, 255))) is None
    arr = np.zeros((1, 3, 4), np.uint8)
    arr[0, :, 3] = (0, 100, 255)
    m = mask_from_alpha(Image.fromarray(arr, "RGBA"))
    assert m.mode == "L" and flat(m) == [255, 155, 0]
    pal = Image.new("P", (2, 1), 0)
    pal.putpixel((1, 0), 1)
    pal.info["transparency"] = 1  # palette entry 1 is transparent
    assert flat(mask_from_alpha(pal)) == [0, 255]


def test_fit_mask():
    m = square_mask((512, 512))
    same, note = fit_mask(m, (512, 512))
    assert same is m and note is None
    big, note = fit_mask(square_mask((256, 256), (64, 64, 128, 128)), (512, 512))
    assert big.size == (512, 512)
    assert note == "the mask is 256x256 but the image is 512x512; the mask was scaled to the image"
    assert big.getpixel((192, 192)) == 255 and big.getpixel((10, 10)) == 0
    near, _ = fit_mask(Image.new("L", (300, 200), 255), (604, 400))  # within 1%
    assert near.size == (604, 400)
    with pytest.raises(MaskError) as err:
        fit_mask(Image.new("L", (300, 200)), (512, 512))
    assert "300x200" in str(err.value) and "512x512" in str(err.value) and "make the mask 512x512" in str(err.value)


def test_prepare_mask_inverts_then_blurs():
    m = square_mask()
    plain = prepare_mask(m, 0, False)
    assert np.array_equal(px(plain), px(m))
    inv = prepare_mask(m, 0, True)
    assert inv.getpixel((50, 50)) == 0 and inv.getpixel((5, 5)) == 255
    blurred = prepare_mask(m, 4, False)
    assert blurred.getpixel((50, 50)) >= 250 and blurred.getpixel((5, 5)) == 0
    assert 100 <= blurred.getpixel((40, 50)) <= 160  # the edge is half-way
    assert 0 < blurred.getpixel((37, 50)) < blurred.getpixel((40, 50)) < blurred.getpixel((43, 50)) < 255
    both = prepare_mask(m, 4, True)
    assert np.array_equal(px(both), px(Image.eval(m, lambda v: 255 - v).filter(ImageFilter.GaussianBlur(4))))
    assert both.getpixel((50, 50)) <= 5 and both.getpixel((5, 5)) == 255


@pytest.mark.parametrize("blur", [-1, 65, 2.5, True])
def test_prepare_mask_blur_range(blur):
    with pytest.raises(MaskError, match="0 to 64"):
        prepare_mask(square_mask(), blur, False)


def test_is_empty():
    assert is_empty(Image.new("L", (8, 8)))
    m = Image.new("L", (8, 8))
    m.putpixel((7, 7), 1)
    assert not is_empty(m)


# --- "only masked" ---------------------------------------------------------


def test_crop_region():
    m = square_mask()
    assert crop_region(m, 0) == (40, 40, 60, 60)
    assert crop_region(m, 8) == (32, 32, 68, 68)
    assert crop_region(m, 50) == (0, 0, 100, 100)
    assert crop_region(square_mask((100, 80), (0, 70, 10, 80)), 5) == (0, 65, 15, 80)
    with pytest.raises(MaskError) as err:
        crop_region(Image.new("L", (10, 10)), 4)
    assert str(err.value) == "the mask is empty: nothing to repaint; paint the area to change in white"


@pytest.mark.parametrize("box, target, image, expected", [
    ((40, 40, 60, 50), (512, 512), (100, 100), (40, 35, 60, 55)),  # too wide: grows in height, centred
    ((40, 40, 50, 60), (512, 512), (100, 100), (35, 40, 55, 60)),  # too tall: grows in width
    ((0, 0, 20, 10), (512, 512), (100, 100), (0, 0, 20, 20)),  # at the edge: shifted inside
    ((80, 90, 100, 100), (512, 512), (100, 100), (80, 80, 100, 100)),
    ((10, 0, 90, 10), (512, 512), (100, 50), (10, 0, 90, 50)),  # cannot fit: the whole height
    ((40, 40, 60, 60), (768, 512), (100, 100), (35, 40, 65, 60)),
    ((10, 10, 30, 30), (512, 512), (100, 100), (10, 10, 30, 30)),  # already right
])
def test_expand_to_aspect(box, target, image, expected):
    assert expand_to_aspect(box, *target, *image) == expected


def test_expand_to_aspect_random_boxes_stay_inside_and_match():
    rng = np.random.default_rng(3)
    for _ in range(300):
        iw, ih = (int(v) for v in rng.integers(64, 1024, 2))
        x1, x2 = sorted(int(v) for v in rng.choice(iw + 1, 2, replace=False))
        y1, y2 = sorted(int(v) for v in rng.choice(ih + 1, 2, replace=False))
        tw, th = (int(v) * 8 for v in rng.integers(32, 160, 2))
        a1, b1, a2, b2 = expand_to_aspect((x1, y1, x2, y2), tw, th, iw, ih)
        assert 0 <= a1 <= x1 and 0 <= b1 <= y1 and x2 <= a2 <= iw and y2 <= b2 <= ih  # grown, inside
        bw, bh = a2 - a1, b2 - b1
        if bw < iw and bh < ih:  # not clamped by the image: the aspect ratio matches within 1 px
            assert abs(bw * th / tw - bh) <= 1 or abs(bh * tw / th - bw) <= 1
        else:
            assert bw == iw or bh == ih


# --- latent mask, overlay, paste back ------------------------------------


def test_latent_mask():
    m = Image.new("L", (512, 384), 0)
    m.paste(255, (0, 0, 256, 384))
    lat = latent_mask(m, 64, 48)
    assert lat.shape == (48, 64) and lat.dtype == np.float32
    assert set(np.unique(lat).tolist()) == {0.0, 1.0}
    assert (lat[:, :32] == 1).all() and (lat[:, 32:] == 0).all()
    soft = latent_mask(prepare_mask(m, 16, False), 64, 48, round_values=False)
    assert soft.min() >= 0 and soft.max() <= 1
    assert 0.2 < soft[24, 32] < 0.8 and soft[24, 0] > 0.99 and soft[24, 63] < 0.01


def test_overlay_mask():
    m = Image.fromarray(np.array([[0, 1, 100, 127, 128, 200, 255]], np.uint8), "L")
    assert flat(overlay_mask(m, True)) == [0, 2, 200, 254, 255, 255, 255]
    assert flat(overlay_mask(m, False)) == [0, 1, 100, 127, 128, 200, 255]


def test_paste_back_whole_picture_is_exact_outside_the_mask():
    original, generated = noise_image((96, 80), 1), noise_image((96, 80), 2)
    mask = prepare_mask(square_mask((96, 80), (30, 20, 70, 60)), 4, False)
    overlay = overlay_mask(mask, True)
    out = paste_back(original, generated, overlay)
    o, g, r, ov = px(original), px(generated), px(out), px(overlay)
    assert out.size == (96, 80) and out.mode == "RGB"
    assert (ov == 0).sum() > 1000 and (ov == 255).sum() > 1000
    assert np.array_equal(r[ov == 0], o[ov == 0])
    assert np.array_equal(r[ov == 255], g[ov == 255])
    partial = (ov > 0) & (ov < 255)
    assert partial.any()
    lo, hi = np.minimum(o, g), np.maximum(o, g)
    assert ((r[partial] >= lo[partial] - 1) & (r[partial] <= hi[partial] + 1)).all()


def test_paste_back_only_masked_is_exact_outside_the_mask():
    original = noise_image((200, 150), 3)
    mask = prepare_mask(square_mask((200, 150), (120, 40, 160, 70)), 2, False)
    box = expand_to_aspect(crop_region(mask, 8), 64, 64, 200, 150)
    assert box[2] - box[0] == box[3] - box[1]
    generated = noise_image((64, 64), 4)  # made at the working size
    overlay = overlay_mask(mask, False)
    out = paste_back(original, generated, overlay, box)
    o, r, ov = px(original), px(out), px(overlay)
    assert np.array_equal(r[ov == 0], o[ov == 0])
    placed = np.array(original)
    x1, y1, x2, y2 = box
    placed[y1:y2, x1:x2] = np.asarray(generated.resize((x2 - x1, y2 - y1), Image.Resampling.LANCZOS))
    assert np.array_equal(r[ov == 255], placed.astype(int)[ov == 255])
    assert (ov == 255).sum() > 500


def test_paste_back_size_errors():
    with pytest.raises(ValueError, match="64x64 but the original is 96x80"):
        paste_back(noise_image((96, 80), 1), noise_image((64, 64), 2), Image.new("L", (96, 80)))
    with pytest.raises(ValueError, match="overlay mask is 10x10"):
        paste_back(noise_image((96, 80), 1), noise_image((96, 80), 2), Image.new("L", (10, 10)))


# --- fill ------------------------------------------------------------------


def test_fill_keeps_unmasked_pixels_and_flows_colours_in():
    img = Image.new("RGB", (128, 96), (0, 0, 220))
    img.paste((220, 0, 0), (0, 0, 64, 96))  # red left, blue right
    mask = square_mask((128, 96), (32, 24, 96, 72))
    out = fill_masked(img, mask)
    o, r, m = px(img), px(out), px(mask)
    assert np.array_equal(r[m == 0], o[m == 0])
    hole = r[24:72, 32:96]
    assert (hole[:, :8, 0] > hole[:, :8, 2]).all()  # near the red side: reddish
    assert (hole[:, -8:, 2] > hole[:, -8:, 0]).all()  # near the blue side: bluish
    assert (hole[:, :, 1] <= 2).all()  # no colour that is not around
    assert (hole.sum(axis=2) > 150).all()  # no black hole
    inner = hole[4:-4, 4:-4]
    assert np.abs(np.diff(inner, axis=0)).max() <= 8 and np.abs(np.diff(inner, axis=1)).max() <= 8  # smooth
    row = hole[24, :, 0]
    assert row[0] > 150 and row[-1] < 60 and (np.diff(row) <= 0).all()  # red fades into blue


def test_fill_of_a_uniform_surrounding_is_that_colour():
    img = Image.new("RGB", (64, 64), (10, 120, 200))
    img.paste((255, 255, 255), (20, 20, 40, 40))  # what is under the mask does not matter
    out = fill_masked(img, square_mask((64, 64), (20, 20, 40, 40)))
    assert (np.abs(px(out) - (10, 120, 200)) <= 1).all()


def test_fill_with_a_soft_mask_keeps_zero_pixels_exact():
    img = noise_image((50, 40), 5)
    mask = prepare_mask(square_mask((50, 40), (10, 10, 30, 30)), 3, False)
    out = fill_masked(img, mask)
    m = px(mask)
    assert np.array_equal(px(out)[m == 0], px(img)[m == 0])
    assert (m == 0).sum() > 500


def test_fill_with_an_all_white_mask_is_the_mean_colour():
    img = Image.new("RGB", (10, 10), (0, 0, 0))
    img.paste((200, 100, 50), (0, 0, 5, 10))
    out = fill_masked(img, Image.new("L", (10, 10), 255))
    assert set(map(tuple, px(out).reshape(-1, 3).tolist())) == {(100, 50, 25)}


def test_fill_size_mismatch():
    with pytest.raises(MaskError, match="10x10 but the image is 20x20"):
        fill_masked(Image.new("RGB", (20, 20)), Image.new("L", (10, 10)))
