"""The X/Y/Z grid picture: layout numbers, where pixels land, label text and the size limit."""
from __future__ import annotations

import pytest
from PIL import Image, ImageFont

from brushwork.compare import grid as G
from brushwork.compare.grid import (
    MAX_GRID_PIXELS, GridTooLarge, check_grid_size, draw_grid, draw_xyz, label_text, layout,
    xyz_layout,
)

CELL = 64
X_LABELS = ["Steps: 20", "Steps: 30", "Steps: 40"]
Y_LABELS = ["CFG Scale: 5.0", "CFG Scale: 7.5"]


def colour(ix: int, iy: int) -> tuple[int, int, int]:
    return (30 + 70 * ix, 40 + 120 * iy, 200 - 50 * ix)


def solid_cells(nx: int, ny: int, w: int = CELL, h: int = CELL):
    return [[Image.new("RGB", (w, h), colour(ix, iy)) for ix in range(nx)] for iy in range(ny)]


def dark_pixels(img: Image.Image, box) -> int:
    return sum(img.crop(box).convert("L").histogram()[:128])


def only_colour(img: Image.Image, box, rgb) -> bool:
    colours = img.crop(box).getcolors(1 << 24) or []
    return [c for _, c in colours] == [tuple(rgb)]


# ------------------------------------------------------------------ layout and pixels


def test_grid_size_equals_layout_size():
    img = draw_grid(solid_cells(3, 2), X_LABELS, Y_LABELS)
    lay = layout(3, 2, CELL, CELL, X_LABELS, Y_LABELS)
    assert img.size == lay.size
    assert img.info["layout"] == lay
    # 3 columns of cells plus a Y band of 3/4 a cell; 2 rows plus an X band.
    assert lay.size[0] == 3 * CELL + (CELL * 3) // 4
    assert lay.top > 0 and lay.size[1] == lay.top + 2 * CELL


def test_each_cell_lands_exactly_on_its_box():
    img = draw_grid(solid_cells(3, 2), X_LABELS, Y_LABELS)
    lay = img.info["layout"]
    for iy in range(2):
        for ix in range(3):
            x0, y0, x1, y1 = lay.cell_box(ix, iy)
            assert (x1 - x0, y1 - y0) == (CELL, CELL)
            want = colour(ix, iy)
            for px in [((x0 + x1) // 2, (y0 + y1) // 2), (x0, y0), (x1 - 1, y0),
                       (x0, y1 - 1), (x1 - 1, y1 - 1)]:
                assert img.getpixel(px) == want, (ix, iy, px)
            assert only_colour(img, (x0, y0, x1, y1), want)
            assert lay.cell_at((x0 + x1) / 2, (y0 + y1) / 2) == (ix, iy)
    assert lay.cell_at(0, 0) is None  # the label corner is no cell


def test_margin_separates_cells_with_background():
    img = draw_grid(solid_cells(2, 2), ["a", "b"], ["c", "d"], margin=6)
    lay = img.info["layout"]
    a, b = lay.cell_box(0, 0), lay.cell_box(1, 0)
    assert b[0] - a[2] == 6
    assert only_colour(img, (a[2], a[1], b[0], a[3]), (255, 255, 255))
    assert img.size == (lay.left + 2 * CELL + 6, lay.top + 2 * CELL + 6)


def test_labels_above_columns_and_left_of_rows():
    img = draw_grid(solid_cells(3, 2), X_LABELS, Y_LABELS)
    lay = img.info["layout"]
    for ix in range(3):
        box = lay.x_label_box(ix)
        assert box[3] <= lay.cell_box(ix, 0)[1]  # above its column
        assert (box[0], box[2]) == lay.cell_box(ix, 0)[0::2]
        assert dark_pixels(img, box) > 0
    for iy in range(2):
        box = lay.y_label_box(iy)
        assert box[2] <= lay.cell_box(0, iy)[0]  # left of its row
        assert (box[1], box[3]) == lay.cell_box(0, iy)[1::2]
        assert dark_pixels(img, box) > 0
    # The top-left corner (above the Y band, left of the X band) stays blank.
    assert only_colour(img, (0, 0, lay.left, lay.top), (255, 255, 255))


def test_empty_labels_take_no_space():
    lay = layout(3, 2, CELL, CELL, ["", "", ""], ["", ""])
    assert (lay.left, lay.top) == (0, 0)
    assert lay.size == (3 * CELL, 2 * CELL)
    img = draw_grid(solid_cells(3, 2), [label_text("Nothing", "")] * 3, None)
    assert img.size == (3 * CELL, 2 * CELL)
    # Y labels only: no top band.
    lay = layout(1, 2, CELL, CELL, None, Y_LABELS)
    assert lay.top == 0 and lay.left == (CELL * 3) // 4


def test_long_label_wraps_inside_its_column():
    long = "a watercolour castle on a hill at dusk, dramatic clouds, highly detailed"
    labels = ["Euler a", label_text("Prompt S/R", long), "DPM++ 2M"]
    img = draw_grid(solid_cells(3, 1, 128, 128), labels, None)
    lay = img.info["layout"]
    assert len(lay.x_text.lines[1]) > 1  # wrapped onto several lines
    font = G._font(lay.x_text.font_size)
    for line in lay.x_text.lines[1]:
        assert font.getlength(line) <= 128
    # Each neighbour's label box holds exactly that label's own pixels: nothing bleeds in.
    for ix in (0, 2):
        box = lay.x_label_box(ix)
        alone = G._render_label(lay.x_text.lines[ix], box, lay.x_text)
        assert img.crop(box).tobytes() == alone.tobytes()
        assert dark_pixels(img, box) > 0
    # Text pixels of the long label stay in its own box: the column edges are clear.
    mid = lay.x_label_box(1)
    assert only_colour(img, (mid[0], mid[1], mid[0] + 2, mid[3]), (255, 255, 255))
    assert only_colour(img, (mid[2] - 2, mid[1], mid[2], mid[3]), (255, 255, 255))


def test_very_long_label_shrinks_the_axis_font():
    long = "word " * 40
    lay = layout(2, 1, 256, 256, [long, "Steps: 20"], None)
    start = G.font_size_for(256, 256)
    assert lay.x_text.font_size < start
    assert lay.x_text.font_size >= G.MIN_FONT_SIZE
    short = layout(2, 1, 256, 256, ["Steps: 10", "Steps: 20"], None)
    assert short.x_text.font_size == start
    assert short.x_text.max_lines == 1


def test_y_labels_fit_in_row_height():
    lay = layout(1, 2, 64, 64, None, ["Prompt order long text here and more", "b"])
    assert lay.y_text.max_lines * lay.y_text.line_height + 2 * G.LABEL_PAD <= 64 or \
        lay.y_text.font_size == G.MIN_FONT_SIZE


def test_none_cell_is_grey_with_a_dash():
    cells = solid_cells(2, 1)
    cells[0][1] = None
    img = draw_grid(cells, ["Seed: 1", "Seed: 2"], None)
    x0, y0, x1, y1 = img.info["layout"].cell_box(1, 0)
    assert img.getpixel((x0 + 2, y0 + 2)) == G.EMPTY_CELL
    assert img.getpixel((x1 - 3, y1 - 3)) == G.EMPTY_CELL
    assert img.getpixel(((x0 + x1) // 2, (y0 + y1) // 2)) == G.EMPTY_MARK
    assert only_colour(img, img.info["layout"].cell_box(0, 0), colour(0, 0))


def test_cells_of_different_sizes_are_centred_on_the_largest():
    small = Image.new("RGB", (32, 48), (255, 0, 0))
    big = Image.new("RGB", (64, 80), (0, 0, 255))
    img = draw_grid([[small, big]], ["Size: a", "Size: b"], None)
    lay = img.info["layout"]
    assert (lay.cell_w, lay.cell_h) == (64, 80)
    x0, y0, x1, y1 = lay.cell_box(0, 0)
    assert only_colour(img, (x0 + 16, y0 + 16, x0 + 48, y0 + 64), (255, 0, 0))
    assert img.getpixel((x0 + 2, y0 + 2)) == (255, 255, 255)
    assert only_colour(img, lay.cell_box(1, 0), (0, 0, 255))


def test_transparent_cells_sit_on_white():
    cell = Image.new("RGBA", (CELL, CELL), (10, 20, 30, 0))
    img = draw_grid([[cell]])
    assert only_colour(img, (0, 0, CELL, CELL), (255, 255, 255))


def test_title_band_above_x_labels():
    img = draw_grid(solid_cells(2, 1), ["a", "b"], None, title="Seed: 5")
    lay = img.info["layout"]
    assert lay.title_h > 0 and lay.top == lay.title_h + lay.x_band_h
    assert dark_pixels(img, lay.title_box()) > 0


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError):
        draw_grid([[Image.new("RGB", (8, 8))], []])
    with pytest.raises(ValueError):
        layout(2, 1, 8, 8, ["only one"], None)
    with pytest.raises(IndexError):
        layout(2, 1, 8, 8).cell_box(2, 0)


# ------------------------------------------------------------------ X/Y/Z


def test_xyz_tiles_sub_grids_in_a_row_under_their_titles():
    a = draw_grid(solid_cells(3, 2), X_LABELS, Y_LABELS)
    b = draw_grid(solid_cells(3, 2), X_LABELS, Y_LABELS)
    top = draw_xyz([a, b], ["Seed: 1", "Seed: 2"], margin=10)
    lay = top.info["layout"]
    assert lay == xyz_layout([a.size, b.size], ["Seed: 1", "Seed: 2"], margin=10)
    assert top.size == (a.width + b.width + 10, lay.title_h + a.height)
    assert lay.title_h > 0
    for iz, sub in enumerate((a, b)):
        x0, y0, x1, y1 = lay.grid_box(iz)
        assert (x0, y0) == ((a.width + 10) * iz, lay.title_h)
        assert top.crop((x0, y0, x1, y1)).tobytes() == sub.tobytes()
        assert dark_pixels(top, lay.label_box(iz)) > 0
        assert lay.label_box(iz)[3] <= y0
    # The margin between sub-grids is background.
    assert only_colour(top, (a.width, lay.title_h, a.width + 10, top.height), (255, 255, 255))
    assert lay.grid_at(a.width + 15, lay.title_h + 1) == (1, 5, 1)


def test_xyz_without_z_labels_has_no_title_band():
    a = draw_grid(solid_cells(1, 1))
    top = draw_xyz([a, a], ["", ""])
    assert top.size == (2 * a.width, a.height)


# ------------------------------------------------------------------ label text


@pytest.mark.parametrize("axis, value, want", [
    ("Steps", 20, "Steps: 20"),
    ("CFG Scale", 7.0, "CFG Scale: 7.0"),
    ("CFG Scale", 7.5, "CFG Scale: 7.5"),
    ("Denoising", 0.1 + 0.2, "Denoising: 0.3"),
    ("Seed", 1234, "Seed: 1234"),
    ("Sampler", "DPM++ 2M", "DPM++ 2M"),
    ("Prompt S/R", "a red fox", "a red fox"),
    ("Prompt order", ["cat", "hat", "bat"], "cat, hat, bat"),
    ("Checkpoint name", "models/Stable-diffusion/sd_v1-5.safetensors", "sd_v1-5"),
    ("Checkpoint name", "sub\\dream.ckpt [6ce0161689]", "dream"),
    ("Size", (512, 768), "512x768"),
    ("Size", "512x768", "512x768"),
    ("Nothing", "", ""),
    ("Nothing", None, ""),
])
def test_label_text(axis, value, want):
    assert label_text(axis, value) == want


# ------------------------------------------------------------------ size limit


def test_check_grid_size_refuses_with_the_numbers():
    with pytest.raises(GridTooLarge) as err:
        check_grid_size(10, 10, 1, 1024, 1024)
    msg = str(err.value)
    w, h = G.estimate_grid_size(10, 10, 1, 1024, 1024)
    assert w >= 10240 and h >= 10240
    assert "10x10 grid of 1024x1024 cells" in msg
    assert f"{w}x{h} px" in msg
    assert f"({round(w * h / 1e6)} megapixels)" in msg
    assert "the limit is 64 megapixels" in msg
    assert isinstance(err.value, ValueError)


def test_check_grid_size_passes_small_grids_and_counts_z():
    check_grid_size(3, 2, 1, 512, 512)
    check_grid_size(4, 4, 2, 512, 512)
    assert MAX_GRID_PIXELS == 64_000_000
    with pytest.raises(GridTooLarge, match="4x4x4 grid"):
        check_grid_size(4, 4, 4, 1024, 1024)


def test_estimate_covers_the_real_grid():
    cells = solid_cells(3, 2, 96, 96)
    img = draw_xyz([draw_grid(cells, X_LABELS, Y_LABELS)] * 2, ["Seed: 1", "Seed: 2"])
    w, h = G.estimate_grid_size(3, 2, 2, 96, 96)
    assert w >= img.width and h >= img.height


def test_draw_grid_refuses_past_the_limit():
    with pytest.raises(GridTooLarge):
        draw_grid(solid_cells(2, 1), ["a", "b"], None, limit=1000)


# ------------------------------------------------------------------ font


def test_font_is_builtin_never_a_system_path(monkeypatch):
    real = ImageFont.truetype
    seen = []

    def guarded(font=None, *args, **kwargs):
        seen.append(font)
        if isinstance(font, (str, bytes)) or hasattr(font, "__fspath__"):
            raise AssertionError(f"a font was loaded from a path: {font!r}")
        return real(font, *args, **kwargs)

    monkeypatch.setattr(ImageFont, "truetype", guarded)
    G._font.cache_clear()
    try:
        img = draw_grid(solid_cells(2, 1), ["Steps: 20", "Steps: 30"], None)
        assert dark_pixels(img, img.info["layout"].x_label_box(0)) > 0
        assert seen, "the built-in scalable font goes through truetype() with in-memory bytes"
    finally:
        G._font.cache_clear()


def test_still_draws_when_truetype_is_unavailable(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("no FreeType here")

    monkeypatch.setattr(ImageFont, "truetype", refuse)
    G._font.cache_clear()
    try:
        img = draw_grid(solid_cells(2, 2), ["Steps: 20", "a long label that needs wrapping"],
                        Y_LABELS)
        lay = img.info["layout"]
        assert not isinstance(G._font(lay.x_text.font_size), ImageFont.FreeTypeFont)
        assert img.size == lay.size
        assert dark_pixels(img, lay.x_label_box(0)) > 0
        assert dark_pixels(img, lay.y_label_box(1)) > 0
        assert only_colour(img, lay.cell_box(1, 1), colour(1, 1))
    finally:
        G._font.cache_clear()


def test_grid_module_does_not_import_torch():
    import subprocess
    import sys
    code = ("import sys; import brushwork.compare.grid; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
