"""Outpainting: grow the canvas on some sides and make the mask that repaints the new area.

Pure Pillow + numpy (no torch).  The new area is pre-filled ("edge" colours
stretched outward and blurred, or seeded "noise" around the mean colour), and
the mask also covers a band of the original along each grown side so the seam
is repainted.
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter

from .init_image import ImageInputError

__all__ = ["OutpaintError", "SIDES", "MAX_OUTPAINT", "OUTPAINT_FILLS", "parse_outpaint", "check_sides", "extend_canvas"]

SIDES = ("left", "right", "top", "bottom")
#: the most pixels one side may grow by
MAX_OUTPAINT = 2048
OUTPAINT_FILLS = ("edge", "noise")
_EDGE_BLUR = 8
_NOISE_SPREAD = 32.0


class OutpaintError(ImageInputError):
    """An outpaint setting cannot be used; the message says why and what to do."""


def _check_amount(side: str, value, allow_zero: bool) -> int:
    """One side's growth, validated: a whole multiple of 8 in (0 or 8) .. MAX_OUTPAINT."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise OutpaintError(f"{side}={value!r} is not a whole number of pixels; use e.g. {side}=128")
    if value < 0 or (value == 0 and not allow_zero):
        raise OutpaintError(f"{side}={value} must be more than 0; give the pixels to add, e.g. {side}=128, or leave the side out")
    if value > MAX_OUTPAINT:
        raise OutpaintError(f"{side}={value} is more than the {MAX_OUTPAINT} pixel limit; use at most {side}={MAX_OUTPAINT} and outpaint again")
    if value % 8:
        lower, upper = value // 8 * 8, value // 8 * 8 + 8
        fixes = " or ".join(f"{v}" for v in (lower, upper) if 0 < v <= MAX_OUTPAINT)
        raise OutpaintError(f"{side}={value} is not a multiple of 8; use {fixes}")
    return value


def _unknown_side(side: str) -> OutpaintError:
    return OutpaintError(f"{side!r} is not a side; use {', '.join(SIDES)} or all (e.g. left=128,top=64)")


def parse_outpaint(text: str) -> dict[str, int]:
    """The sides to grow from text such as "left=128,top=64" or "all=64"; missing sides are 0."""
    if not isinstance(text, str) or not text.strip():
        raise OutpaintError(f"the outpaint setting {text!r} is empty; give e.g. left=128,top=64 or all=64")
    sides = dict.fromkeys(SIDES, 0)
    seen: set[str] = set()
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        side, eq, raw = (s.strip() for s in item.partition("="))
        side = side.lower()
        if not eq:
            raise OutpaintError(f"{item!r} is not side=pixels; write e.g. left=128,top=64 or all=64")
        if side not in SIDES and side != "all":
            raise _unknown_side(side)
        try:
            value = int(raw)
        except ValueError:
            raise OutpaintError(f"{side}={raw!r} is not a whole number of pixels; use e.g. {side}=128") from None
        value = _check_amount(side, value, allow_zero=False)
        for s in SIDES if side == "all" else (side,):
            if s in seen:
                raise OutpaintError(f"the side {s!r} is given twice in {text!r}; give each side once")
            seen.add(s)
            sides[s] = value
    if not seen:
        raise OutpaintError(f"the outpaint setting {text!r} names no side; give e.g. left=128,top=64 or all=64")
    return sides


def check_sides(sides: dict) -> dict[str, int]:
    """The same checks for a dict (e.g. from JSON); missing sides become 0, all zero is refused."""
    if not isinstance(sides, dict):
        raise OutpaintError(f"the outpaint sides must be an object such as {{\"left\": 128}}, not {type(sides).__name__}")
    out = dict.fromkeys(SIDES, 0)
    for key, value in sides.items():
        side = str(key).strip().lower()
        if side not in SIDES:
            raise _unknown_side(str(key))
        out[side] = _check_amount(side, value, allow_zero=True)
    if not any(out.values()):
        raise OutpaintError("no side grows (all are 0); give at least one side, e.g. {\"left\": 128}")
    return out


def _edge_fill(arr: np.ndarray, sides: dict[str, int]) -> np.ndarray:
    pad = ((sides["top"], sides["bottom"]), (sides["left"], sides["right"]), (0, 0))
    stretched = Image.fromarray(np.pad(arr, pad, mode="edge"), "RGB")
    return np.asarray(stretched.filter(ImageFilter.GaussianBlur(_EDGE_BLUR)))


def _noise_fill(arr: np.ndarray, size: tuple[int, int], seed: int) -> np.ndarray:
    w, h = size
    mean = arr.reshape(-1, 3).mean(axis=0)
    noise = np.random.default_rng(seed).normal(0.0, _NOISE_SPREAD, size=(h, w, 3))
    return np.clip(np.rint(mean + noise), 0, 255).astype(np.uint8)


def extend_canvas(
    image: Image.Image,
    sides: dict[str, int],
    fill: str = "edge",
    seed: int = 0,
    overlap: int = 16,
) -> tuple[Image.Image, Image.Image]:
    """The grown canvas (image at (left, top)) and its mask: white over the new area and an
    ``overlap`` band into the original along each grown side, black elsewhere."""
    if fill not in OUTPAINT_FILLS:
        raise OutpaintError(f"outpaint fill {fill!r} is not known; use one of: {', '.join(repr(f) for f in OUTPAINT_FILLS)}")
    if isinstance(overlap, bool) or not isinstance(overlap, int) or overlap < 0:
        raise OutpaintError(f"overlap={overlap!r} is not a whole number >= 0; use e.g. 16")
    sides = check_sides(sides)
    image = image.convert("RGB")
    w, h = image.size
    left, right, top, bottom = (sides[s] for s in SIDES)
    size = (w + left + right, h + top + bottom)
    arr = np.asarray(image)
    filled = _edge_fill(arr, sides) if fill == "edge" else _noise_fill(arr, size, seed)
    canvas = Image.fromarray(np.ascontiguousarray(filled), "RGB")
    canvas.paste(image, (left, top))
    # keep = the original minus the overlap band along each grown side
    x1 = left + (min(overlap, w) if left else 0)
    x2 = left + w - (min(overlap, w) if right else 0)
    y1 = top + (min(overlap, h) if top else 0)
    y2 = top + h - (min(overlap, h) if bottom else 0)
    mask = Image.new("L", size, 255)
    if x2 > x1 and y2 > y1:
        mask.paste(0, (x1, y1, x2, y2))
    return canvas, mask
