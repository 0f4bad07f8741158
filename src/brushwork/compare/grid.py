"""The picture side of X/Y/Z comparisons: labelled grids drawn with Pillow alone.

The layout follows AUTOMATIC1111's X/Y/Z plot (see the compatibility reference, section h.5):

* X values run across the columns, Y values down the rows; one sub-grid per Z value.
* X labels sit in a band above the columns, centred over each; Y labels in a band to the left,
  3/4 of a cell wide (no band at all when every Y label is empty, e.g. the "Nothing" axis).
* Text is black on white; the font size is (cell width + cell height) / 25, at least
  ``MIN_FONT_SIZE``.
* The Z sub-grids are tiled into one row, each with its Z label as a column title above it.

Label fitting: a label is word-wrapped to the width of its box (a word wider than the box is
broken between characters).  When some label of an axis needs more than ``MAX_LABEL_LINES`` lines,
or its lines are taller than the box allows (Y labels must fit in a row's height), the font of that
whole axis is shrunk step by step until every label fits, down to ``MIN_FONT_SIZE``; below that the
band simply grows to hold more lines.  Each label is rendered into an image the size of its own box
and pasted there, so text can never spill into a neighbouring label or cell.

The font is Pillow's own built-in font (``ImageFont.load_default``, scalable since Pillow 10.1);
no system font is ever looked up.  Without FreeType the fixed-size bitmap default is used.

``layout`` is a pure function that says where everything goes, so a client (the web studio) can
map a click on the grid picture back to a cell with ``Layout.cell_at`` / ``Layout.cell_box``.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from typing import Any, Sequence

from PIL import Image, ImageDraw, ImageFont

__all__ = [
    "MAX_GRID_PIXELS",
    "GridTooLarge",
    "Layout",
    "XYZLayout",
    "label_text",
    "font_size_for",
    "layout",
    "draw_grid",
    "xyz_layout",
    "draw_xyz",
    "estimate_grid_size",
    "check_grid_size",
]

MAX_GRID_PIXELS = 64_000_000
"""The largest grid picture (width x height) we agree to draw: 64 megapixels."""

MAX_LABEL_LINES = 3
MIN_FONT_SIZE = 10
LABEL_PAD = 4  # px of white around the text inside a label box

BACKGROUND = (255, 255, 255)
TEXT = (0, 0, 0)
EMPTY_CELL = (221, 221, 221)
EMPTY_MARK = (120, 120, 120)

Box = tuple[int, int, int, int]  # left, top, right, bottom (right/bottom exclusive)


class GridTooLarge(ValueError):
    """The grid picture would be larger than the pixel limit."""


# ----------------------------------------------------------------------------- label text

# Axes whose cell label is the bare value (no "Axis: " prefix).
_BARE_AXES = {
    "sampler", "hires sampler", "prompt s/r", "schedule type", "vae", "hires upscaler",
    "rng source",
}
# Axes whose value is a list shown joined with ", ".
_JOINED_AXES = {"prompt order", "styles"}
# Axes whose value is a model file: shown as the file name without folders or extension.
_FILE_AXES = {"checkpoint name", "refiner checkpoint"}


def _format_number(value: Any) -> str:
    if isinstance(value, float):
        value = round(value, 8)
        if value == 0:
            value = 0.0  # no "-0.0"
    return str(value)


def _file_stem(value: Any) -> str:
    text = str(value).strip()
    # A1111 checkpoint titles carry a short hash: "model.safetensors [6ce0161689]".
    if text.endswith("]") and " [" in text:
        text = text[: text.rindex(" [")]
    base = os.path.basename(text.replace("\\", "/"))
    stem, ext = os.path.splitext(base)
    return stem if ext and stem else base


def _format_size(value: Any) -> str:
    if isinstance(value, (tuple, list)) and len(value) == 2:
        return f"{int(value[0])}x{int(value[1])}"
    return str(value).replace(" ", "").replace("X", "x").replace("×", "x")


def label_text(axis_label: str, value: Any) -> str:
    """The text drawn for one axis value, in AUTOMATIC1111's form.

    ``"Steps: 20"``, ``"CFG Scale: 7.0"`` (floats rounded to 8 decimals, Python's repr),
    the bare value for Sampler / Prompt S/R (and the other name-valued axes), the joined list
    for Prompt order, the file stem for Checkpoint name, ``"512x768"`` for Size, and ``""``
    for the Nothing axis.
    """
    key = (axis_label or "").strip().lower()
    if key in ("", "nothing"):
        return ""
    if key in _FILE_AXES:
        return _file_stem(value)
    if key in _JOINED_AXES:
        if isinstance(value, (list, tuple)):
            return ", ".join(str(v) for v in value)
        return str(value)
    if key == "size":
        return _format_size(value)
    if key in _BARE_AXES:
        return str(value)
    return f"{axis_label}: {_format_number(value)}"


# ----------------------------------------------------------------------------- fonts


@functools.lru_cache(maxsize=64)
def _font(size: int):
    """Pillow's built-in font at ``size`` px, or its bitmap default when it cannot scale."""
    try:
        return ImageFont.load_default(size=size)
    except Exception:  # no FreeType, or truetype() refused: fall back to the bitmap font
        pass
    loader = getattr(ImageFont, "load_default_imagefont", None)
    if loader is not None:
        return loader()
    return ImageFont.load_default()


def _scalable(font) -> bool:
    return isinstance(font, ImageFont.FreeTypeFont)


def _line_height(font) -> int:
    try:
        ascent, descent = font.getmetrics()
        return int(ascent + descent)
    except AttributeError:
        bbox = font.getbbox("Ajg|")
        return int(bbox[3]) + 2


def _text_width(font, text: str) -> float:
    return font.getlength(text)


def font_size_for(cell_w: int, cell_h: int) -> int:
    """A1111's legend font size: (cell width + cell height) / 25, at least ``MIN_FONT_SIZE``."""
    return max(MIN_FONT_SIZE, (int(cell_w) + int(cell_h)) // 25)


def _break_word(font, word: str, width: float) -> list[str]:
    pieces: list[str] = []
    current = ""
    for ch in word:
        if current and _text_width(font, current + ch) > width:
            pieces.append(current)
            current = ch
        else:
            current += ch
    if current:
        pieces.append(current)
    return pieces


def _wrap(font, text: str, width: float) -> list[str]:
    """Greedy word wrap of ``text`` to ``width`` px; explicit newlines are kept."""
    if not text:
        return []
    lines: list[str] = []
    for paragraph in text.split("\n"):
        current = ""
        for word in paragraph.split():
            candidate = f"{current} {word}" if current else word
            if _text_width(font, candidate) <= width:
                current = candidate
                continue
            if current:
                lines.append(current)
                current = ""
            if _text_width(font, word) <= width:
                current = word
            else:
                pieces = _break_word(font, word, width)
                lines.extend(pieces[:-1])
                current = pieces[-1]
        lines.append(current)
    return lines


@dataclass(frozen=True)
class _AxisText:
    """How the labels of one axis are set: font size, line height and the wrapped lines."""

    font_size: int
    line_height: int
    lines: tuple[tuple[str, ...], ...]

    @property
    def max_lines(self) -> int:
        return max((len(lines) for lines in self.lines), default=0)


def _fit_axis(labels: Sequence[str], box_w: int, start_size: int,
              max_height: int | None = None) -> _AxisText:
    """Wrap every label of an axis to ``box_w``; shrink the axis font until all fit.

    A fit is at most ``MAX_LABEL_LINES`` lines and, if ``max_height`` is given, lines that
    fit in that height (padding included)."""
    text_w = max(1, box_w - 2 * LABEL_PAD)
    size = max(MIN_FONT_SIZE, int(start_size))
    while True:
        font = _font(size)
        wrapped = tuple(tuple(_wrap(font, label or "", text_w)) for label in labels)
        line_h = _line_height(font)
        most = max((len(w) for w in wrapped), default=0)
        fits = most <= MAX_LABEL_LINES and (
            max_height is None or most * line_h + 2 * LABEL_PAD <= max_height)
        if fits or size <= MIN_FONT_SIZE or not _scalable(font):
            return _AxisText(size, line_h, wrapped)
        size = max(MIN_FONT_SIZE, int(size * 0.85))


# ----------------------------------------------------------------------------- layout


@dataclass(frozen=True)
class Layout:
    """Where every part of one grid picture goes.  Boxes are (left, top, right, bottom)."""

    nx: int
    ny: int
    cell_w: int
    cell_h: int
    margin: int
    left: int  # width of the Y label band (0 when there are no Y labels)
    top: int  # height of the title band + X label band
    title_h: int
    x_band_h: int
    size: tuple[int, int]
    x_text: _AxisText = field(repr=False)
    y_text: _AxisText = field(repr=False)
    title_text: _AxisText | None = field(repr=False, default=None)

    def cell_box(self, ix: int, iy: int) -> Box:
        if not (0 <= ix < self.nx and 0 <= iy < self.ny):
            raise IndexError(f"no cell ({ix}, {iy}) in a {self.nx}x{self.ny} grid")
        x0 = self.left + ix * (self.cell_w + self.margin)
        y0 = self.top + iy * (self.cell_h + self.margin)
        return (x0, y0, x0 + self.cell_w, y0 + self.cell_h)

    def x_label_box(self, ix: int) -> Box:
        x0, _, x1, _ = self.cell_box(ix, 0)
        return (x0, self.title_h, x1, self.title_h + self.x_band_h)

    def y_label_box(self, iy: int) -> Box:
        _, y0, _, y1 = self.cell_box(0, iy)
        return (0, y0, self.left, y1)

    def title_box(self) -> Box:
        return (0, 0, self.size[0], self.title_h)

    def cell_at(self, x: float, y: float) -> tuple[int, int] | None:
        """The (ix, iy) of the cell under picture pixel (x, y), or None (label, margin, outside)."""
        for iy in range(self.ny):
            for ix in range(self.nx):
                x0, y0, x1, y1 = self.cell_box(ix, iy)
                if x0 <= x < x1 and y0 <= y < y1:
                    return (ix, iy)
        return None


def _labels_or_blank(labels: Sequence[str] | None, n: int, what: str) -> list[str]:
    if not labels:
        return [""] * n
    if len(labels) != n:
        raise ValueError(f"{len(labels)} {what} labels for {n} {what} values")
    return ["" if s is None else str(s) for s in labels]


def layout(nx: int, ny: int, cell_w: int, cell_h: int,
           x_labels: Sequence[str] | None = None, y_labels: Sequence[str] | None = None,
           title: str | None = None, margin: int = 0,
           font_size: int | None = None) -> Layout:
    """Where the cells and labels of an ``nx`` x ``ny`` grid of ``cell_w`` x ``cell_h`` cells go.

    Pure: the same arguments always give the same layout and nothing is drawn."""
    if nx < 1 or ny < 1:
        raise ValueError("a grid needs at least one column and one row")
    if cell_w < 1 or cell_h < 1:
        raise ValueError("cells need a positive size")
    margin = max(0, int(margin))
    xs = _labels_or_blank(x_labels, nx, "X")
    ys = _labels_or_blank(y_labels, ny, "Y")
    size = font_size or font_size_for(cell_w, cell_h)

    has_y = any(s.strip() for s in ys)
    left = max(1, (cell_w * 3) // 4) if has_y else 0

    x_text = _fit_axis(xs, cell_w, size)
    y_text = _fit_axis(ys, left, size, max_height=cell_h) if has_y else _AxisText(size, 0, ())
    x_band_h = x_text.max_lines * x_text.line_height + 2 * LABEL_PAD if x_text.max_lines else 0

    grid_w = nx * cell_w + (nx - 1) * margin
    grid_h = ny * cell_h + (ny - 1) * margin
    width = left + grid_w

    title_text = None
    title_h = 0
    if title and title.strip():
        title_text = _fit_axis([title], width, size)
        title_h = title_text.max_lines * title_text.line_height + 2 * LABEL_PAD

    top = title_h + x_band_h
    return Layout(nx=nx, ny=ny, cell_w=int(cell_w), cell_h=int(cell_h), margin=margin,
                  left=left, top=top, title_h=title_h, x_band_h=x_band_h,
                  size=(width, top + grid_h), x_text=x_text, y_text=y_text,
                  title_text=title_text)


# ----------------------------------------------------------------------------- drawing


def _render_label(lines: Sequence[str], box: Box, text: _AxisText) -> Image.Image:
    """The label's lines centred in an image exactly the size of ``box``."""
    w, h = box[2] - box[0], box[3] - box[1]
    img = Image.new("RGB", (max(1, w), max(1, h)), BACKGROUND)
    if not lines:
        return img
    font = _font(text.font_size)
    draw = ImageDraw.Draw(img)
    block_h = len(lines) * text.line_height
    y = (h - block_h) // 2
    for line in lines:
        line_w = _text_width(font, line)
        x = int(round((w - line_w) / 2))
        draw.text((x, y), line, font=font, fill=TEXT)
        y += text.line_height
    return img


def _paste_label(canvas: Image.Image, lines: Sequence[str], box: Box, text: _AxisText) -> None:
    if lines and box[2] > box[0] and box[3] > box[1]:
        canvas.paste(_render_label(lines, box, text), box[:2])


def _empty_cell(w: int, h: int) -> Image.Image:
    """A failed or skipped cell: a light grey box with a dash in the middle."""
    img = Image.new("RGB", (w, h), EMPTY_CELL)
    draw = ImageDraw.Draw(img)
    dash_w = max(3, w // 5)
    thick = max(1, min(w, h) // 40)
    cx, cy = w // 2, h // 2
    draw.rectangle((cx - dash_w // 2, cy - thick // 2, cx - dash_w // 2 + dash_w - 1,
                    cy - thick // 2 + thick - 1), fill=EMPTY_MARK)
    return img


def _as_rgb(img: Image.Image) -> tuple[Image.Image, Image.Image | None]:
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        return rgba.convert("RGB"), rgba.getchannel("A")
    return (img if img.mode == "RGB" else img.convert("RGB")), None


def _check_pixels(width: int, height: int, what: str, limit: int) -> None:
    if width * height > limit:
        raise GridTooLarge(
            f"{what} would be {width}x{height} px ({_mp(width * height)} megapixels); "
            f"the limit is {_mp(limit)} megapixels: fewer values or a smaller size")


def draw_grid(cells: Sequence[Sequence[Image.Image | None]],
              x_labels: Sequence[str] | None = None, y_labels: Sequence[str] | None = None,
              title: str | None = None, margin: int = 0,
              limit: int = MAX_GRID_PIXELS) -> Image.Image:
    """Draw one labelled grid: ``cells[iy][ix]`` (rows are Y values, columns X values).

    Cells of different sizes are laid out on the largest width and height, each centred in its
    slot; a ``None`` cell is drawn as a grey box with a dash.  The layout used is attached to the
    picture as ``image.info["layout"]`` (not saved with the file)."""
    rows = [list(r) for r in cells]
    if not rows or not rows[0]:
        raise ValueError("a grid needs at least one cell")
    nx = len(rows[0])
    if any(len(r) != nx for r in rows):
        raise ValueError("every row of a grid needs the same number of cells")
    ny = len(rows)
    present = [c for r in rows for c in r if c is not None]
    if present:
        cell_w = max(c.width for c in present)
        cell_h = max(c.height for c in present)
    else:
        cell_w = cell_h = 64
    lay = layout(nx, ny, cell_w, cell_h, x_labels, y_labels, title=title, margin=margin)
    _check_pixels(*lay.size, f"a {nx}x{ny} grid of {cell_w}x{cell_h} cells", limit)

    canvas = Image.new("RGB", lay.size, BACKGROUND)
    if lay.title_text is not None:
        _paste_label(canvas, lay.title_text.lines[0], lay.title_box(), lay.title_text)
    for ix in range(nx):
        _paste_label(canvas, lay.x_text.lines[ix], lay.x_label_box(ix), lay.x_text)
    if lay.left:
        for iy in range(ny):
            _paste_label(canvas, lay.y_text.lines[iy], lay.y_label_box(iy), lay.y_text)

    for iy, row in enumerate(rows):
        for ix, cell in enumerate(row):
            x0, y0, x1, y1 = lay.cell_box(ix, iy)
            if cell is None:
                canvas.paste(_empty_cell(cell_w, cell_h), (x0, y0))
                continue
            rgb, mask = _as_rgb(cell)
            ox = x0 + (cell_w - rgb.width) // 2
            oy = y0 + (cell_h - rgb.height) // 2
            canvas.paste(rgb, (ox, oy), mask)
    canvas.info["layout"] = lay
    return canvas


# ----------------------------------------------------------------------------- X/Y/Z


@dataclass(frozen=True)
class XYZLayout:
    """Where each Z sub-grid and its title go in the top-level picture."""

    sizes: tuple[tuple[int, int], ...]
    margin: int
    title_h: int
    size: tuple[int, int]
    text: _AxisText = field(repr=False)

    def _x0(self, iz: int) -> int:
        return sum(w for w, _ in self.sizes[:iz]) + iz * self.margin

    def grid_box(self, iz: int) -> Box:
        w, h = self.sizes[iz]
        x0 = self._x0(iz)
        return (x0, self.title_h, x0 + w, self.title_h + h)

    def label_box(self, iz: int) -> Box:
        w, _ = self.sizes[iz]
        x0 = self._x0(iz)
        return (x0, 0, x0 + w, self.title_h)

    def grid_at(self, x: float, y: float) -> tuple[int, float, float] | None:
        """(iz, x, y inside that sub-grid) for a picture pixel, or None."""
        for iz in range(len(self.sizes)):
            x0, y0, x1, y1 = self.grid_box(iz)
            if x0 <= x < x1 and y0 <= y < y1:
                return (iz, x - x0, y - y0)
        return None


def _z_font_size(sizes: Sequence[tuple[int, int]]) -> int:
    smallest = min(min(w, h) for w, h in sizes)
    return max(MIN_FONT_SIZE + 2, min(64, smallest // 14))


def xyz_layout(sizes: Sequence[tuple[int, int]], z_labels: Sequence[str] | None = None,
               margin: int = 0, font_size: int | None = None) -> XYZLayout:
    """Pure layout of Z sub-grids of the given sizes tiled into one row, titles above."""
    sizes = tuple((int(w), int(h)) for w, h in sizes)
    if not sizes:
        raise ValueError("no sub-grids to tile")
    margin = max(0, int(margin))
    labels = _labels_or_blank(z_labels, len(sizes), "Z")
    size = font_size or _z_font_size(sizes)
    # Fit all titles with one font: wrap to the narrowest sub-grid.
    narrowest = min(w for w, _ in sizes)
    text = _fit_axis(labels, narrowest, size)
    title_h = text.max_lines * text.line_height + 2 * LABEL_PAD if text.max_lines else 0
    width = sum(w for w, _ in sizes) + margin * (len(sizes) - 1)
    height = title_h + max(h for _, h in sizes)
    return XYZLayout(sizes=sizes, margin=margin, title_h=title_h, size=(width, height), text=text)


def draw_xyz(grids: Sequence[Image.Image], z_labels: Sequence[str] | None = None,
             margin: int = 0, limit: int = MAX_GRID_PIXELS) -> Image.Image:
    """Tile one sub-grid per Z value into a row, each under its Z label (A1111's top-level grid).

    Sub-grids are top-aligned; the layout is attached as ``image.info["layout"]``."""
    grids = list(grids)
    if not grids:
        raise ValueError("no sub-grids to tile")
    lay = xyz_layout([g.size for g in grids], z_labels, margin=margin)
    _check_pixels(*lay.size, f"a row of {len(grids)} sub-grids", limit)
    canvas = Image.new("RGB", lay.size, BACKGROUND)
    for iz, grid in enumerate(grids):
        _paste_label(canvas, lay.text.lines[iz], lay.label_box(iz), lay.text)
        rgb, mask = _as_rgb(grid)
        canvas.paste(rgb, lay.grid_box(iz)[:2], mask)
    canvas.info["layout"] = lay
    return canvas


# ----------------------------------------------------------------------------- size limit


def _mp(pixels: int) -> int:
    return int(round(pixels / 1_000_000))


def estimate_grid_size(nx: int, ny: int, nz: int, cell_w: int, cell_h: int,
                       margin: int = 0) -> tuple[int, int]:
    """A generous estimate of the top-level picture's size, label bands included.

    Assumes labels on every axis with more than one value, X labels and Z titles of
    ``MAX_LABEL_LINES`` lines at the starting font size."""
    nx, ny, nz = max(1, int(nx)), max(1, int(ny)), max(1, int(nz))
    cell_w, cell_h, margin = int(cell_w), int(cell_h), max(0, int(margin))
    line_h = int(font_size_for(cell_w, cell_h) * 1.3) + 1
    band = MAX_LABEL_LINES * line_h + 2 * LABEL_PAD
    left = (cell_w * 3) // 4 if ny > 1 else 0
    top = band if nx > 1 else 0
    sub_w = left + nx * cell_w + (nx - 1) * margin
    sub_h = top + ny * cell_h + (ny - 1) * margin
    if nz > 1:
        z_line_h = int(_z_font_size([(sub_w, sub_h)]) * 1.3) + 1
        z_band = MAX_LABEL_LINES * z_line_h + 2 * LABEL_PAD
        return (nz * sub_w + (nz - 1) * margin, z_band + sub_h)
    return (sub_w, sub_h)


def check_grid_size(nx: int, ny: int, nz: int, cell_w: int, cell_h: int,
                    margin: int = 0, limit: int = MAX_GRID_PIXELS) -> None:
    """Refuse, before anything is generated, a grid whose picture would pass ``limit`` pixels."""
    width, height = estimate_grid_size(nx, ny, nz, cell_w, cell_h, margin)
    shape = f"{nx}x{ny}" if max(1, int(nz)) == 1 else f"{nx}x{ny}x{nz}"
    _check_pixels(width, height, f"a {shape} grid of {cell_w}x{cell_h} cells", limit)
