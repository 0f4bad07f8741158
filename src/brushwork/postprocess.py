"""Upscaling a finished picture (AUTOMATIC1111's "Extras"): the size it goes to,
one or two upscalers blended, and the keys its infotext gains.

Used by ``brushwork upscale``, the studio's Upscale button and the
``/sdapi/v1/extra-*`` routes alike; the networks are in ``upscale/``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

from PIL import Image

from .request import MAX_SIDE, RequestError

#: an upscale target may be larger than a generation's (an upscaled 2048 px picture)
MAX_UPSCALE_SIDE = 2 * MAX_SIDE
MAX_UPSCALE_FACTOR = 8.0

#: the infotext keys A1111 writes for an extras upscale
BY_KEY, TO_KEY, UPSCALER_KEY, UPSCALER_2_KEY, VISIBILITY_2_KEY = (
    "Postprocess upscale by", "Postprocess upscale to", "Postprocess upscaler", "Postprocess upscaler 2", "Postprocess upscaler 2 visibility",
)


@dataclass(frozen=True)
class UpscaleSettings:
    """How to upscale: by ``scale``, or to ``width`` x ``height`` (``crop``: cover the
    size and cut the middle, else stretch), with ``upscaler`` and, blended in by
    ``visibility_2``, a second one."""

    upscaler: str = "Lanczos"
    scale: float = 2.0
    width: Optional[int] = None
    height: Optional[int] = None
    crop: bool = True
    upscaler_2: str = "None"
    visibility_2: float = 0.0

    @property
    def to_size(self) -> bool:
        return self.width is not None and self.height is not None


def check_settings(s: UpscaleSettings) -> None:
    """Ranges, with the fix (names are checked against the data home by find_upscaler)."""
    if s.to_size:
        for name, v in (("width", s.width), ("height", s.height)):
            if isinstance(v, bool) or not isinstance(v, int) or not 8 <= v <= MAX_UPSCALE_SIDE:
                raise RequestError(f"upscale {name} must be a whole number of pixels from 8 to {MAX_UPSCALE_SIDE}; got {v!r}.")
    elif isinstance(s.scale, bool) or not isinstance(s.scale, (int, float)) or not 1 <= s.scale <= MAX_UPSCALE_FACTOR:
        raise RequestError(f"upscale factor must be from 1 to {MAX_UPSCALE_FACTOR:g}; got {s.scale!r}. 2 or 4 is usual.")
    if isinstance(s.visibility_2, bool) or not isinstance(s.visibility_2, (int, float)) or not 0 <= s.visibility_2 <= 1:
        raise RequestError(f"the second upscaler's visibility must be between 0 and 1; got {s.visibility_2!r}.")


def target_size(width: int, height: int, s: UpscaleSettings) -> tuple[int, int, int, int]:
    """(upscale width, upscale height, final width, final height): by the factor, or
    to the size (cropped: the upscale covers it, then the middle is kept)."""
    if not s.to_size:
        w, h = round(width * s.scale), round(height * s.scale)
        _check_side(w, h)
        return w, h, w, h
    if not s.crop:
        return s.width, s.height, s.width, s.height
    factor = max(s.width / width, s.height / height)
    w, h = max(s.width, round(width * factor)), max(s.height, round(height * factor))
    _check_side(w, h)
    return w, h, s.width, s.height


def _check_side(w: int, h: int) -> None:
    if max(w, h) > MAX_UPSCALE_SIDE:
        raise RequestError(f"the upscaled picture would be {w}x{h}, larger than {MAX_UPSCALE_SIDE} px per side; use a smaller factor.")


def upscale_picture(image: Image.Image, s: UpscaleSettings, home, device=None, should_stop: Optional[Callable[[], bool]] = None) -> tuple[Image.Image, dict]:
    """The upscaled picture and the infotext keys that say how it was made."""
    from .upscale import UpscalerError, find_upscaler, upscale_image

    check_settings(s)
    try:
        first = find_upscaler(home, s.upscaler)
        second = find_upscaler(home, s.upscaler_2) if s.visibility_2 > 0 and s.upscaler_2.strip().lower() != "none" else None
    except UpscalerError as exc:
        raise RequestError(str(exc)) from None
    image = image.convert("RGB")
    w, h, fw, fh = target_size(image.width, image.height, s)
    out = upscale_image(image, w, h, first, device, should_stop=should_stop)
    if second is not None:
        other = upscale_image(image, w, h, second, device, should_stop=should_stop)
        out = Image.blend(out, other, float(s.visibility_2))
    if (w, h) != (fw, fh):
        dx, dy = (w - fw) // 2, (h - fh) // 2
        out = out.crop((dx, dy, dx + fw, dy + fh))
    extra: dict = {TO_KEY: f"{fw}x{fh}"} if s.to_size else {BY_KEY: s.scale}
    extra[UPSCALER_KEY] = first.name
    if second is not None:
        extra[UPSCALER_2_KEY] = second.name
        extra[VISIBILITY_2_KEY] = s.visibility_2
    return out, extra


def with_postprocess(infotext: str, extra: dict) -> str:
    """A picture's infotext with the upscale keys appended to its parameter line (a
    picture without one gets them alone)."""
    from .infotext import format_pairs

    pairs = format_pairs(extra)
    text = infotext.rstrip()
    if not text:
        return pairs
    return f"{text}, {pairs}"
