"""Inpainting masks (white = repaint): read, fit, blur, crop, paste back, fill.

Pure Pillow + numpy (no torch).  The steps follow AUTOMATIC1111's inpainting:
mask blur, "only masked" crops with padding, the rounded latent mask, and the
final composite that leaves every unmasked pixel exactly as it was.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
from PIL import Image, ImageChops, ImageFilter, ImageOps

from .init_image import ImageInputError, _choice, _has_alpha

__all__ = [
    "MaskError",
    "MASKED_CONTENT",
    "INPAINT_AREAS",
    "MAX_MASK_BLUR",
    "masked_content_name",
    "inpaint_area_name",
    "mask_from_image",
    "mask_from_alpha",
    "fit_mask",
    "prepare_mask",
    "is_empty",
    "crop_region",
    "expand_to_aspect",
    "latent_mask",
    "overlay_mask",
    "paste_back",
    "fill_masked",
]

#: A1111's inpainting_fill values 0..3, in order
MASKED_CONTENT = ("fill", "original", "latent noise", "latent nothing")
#: A1111's inpaint_full_res False/True
INPAINT_AREAS = ("whole picture", "only masked")
MAX_MASK_BLUR = 64

Box = tuple[int, int, int, int]


class MaskError(ImageInputError):
    """A mask cannot be used as given; the message says why and what to do."""


def masked_content_name(value) -> str:
    """The masked-content name for an A1111 inpainting_fill number (0..3) or a name."""
    return _choice(value, MASKED_CONTENT, "masked content", MaskError)


def inpaint_area_name(value) -> str:
    """The inpaint-area name for A1111's inpaint_full_res (False/0, True/1) or a name."""
    if isinstance(value, bool):
        return INPAINT_AREAS[int(value)]
    return _choice(value, INPAINT_AREAS, "inpaint area", MaskError)


# --- reading ---------------------------------------------------------------


def mask_from_image(img: Image.Image) -> Image.Image:
    """A greyscale mask (white = repaint); with transparency, alpha * luminance / 255."""
    if _has_alpha(img):
        la = img.convert("LA")
        lum, alpha = la.split()
        if alpha.getextrema()[0] < 255:
            return ImageChops.multiply(lum, alpha)
        return lum
    return img.convert("L")


def mask_from_alpha(img: Image.Image) -> Optional[Image.Image]:
    """Repaint where the init image is transparent (255 - alpha); None if it is fully opaque."""
    if not _has_alpha(img):
        return None
    alpha = img.convert("RGBA").getchannel("A")
    if alpha.getextrema()[0] == 255:
        return None
    return ImageOps.invert(alpha)


def fit_mask(mask: Image.Image, size: tuple[int, int]) -> tuple[Image.Image, Optional[str]]:
    """The mask at the image's size, with a note when it had to be scaled; MaskError on another aspect."""
    w, h = size
    mw, mh = mask.size
    if (mw, mh) == (w, h):
        return mask, None
    if abs(mw / mh - w / h) <= 0.01 * (w / h):
        note = f"the mask is {mw}x{mh} but the image is {w}x{h}; the mask was scaled to the image"
        return mask.resize((w, h), Image.Resampling.BILINEAR), note
    raise MaskError(
        f"the mask is {mw}x{mh} but the image is {w}x{h} (aspect ratio {mw / mh:.3f} vs {w / h:.3f}); "
        f"make the mask {w}x{h}, the image's size"
    )


def prepare_mask(mask: Image.Image, blur: int, invert: bool) -> Image.Image:
    """Invert (if asked), then Gaussian-blur by ``blur`` pixels (0 = none)."""
    if isinstance(blur, bool) or not isinstance(blur, int) or not 0 <= blur <= MAX_MASK_BLUR:
        raise MaskError(f"mask blur {blur!r} is out of range; use a whole number from 0 to {MAX_MASK_BLUR} (4 is usual)")
    out = mask.convert("L")
    if invert:
        out = ImageOps.invert(out)
    if blur:
        out = out.filter(ImageFilter.GaussianBlur(blur))
    return out


def is_empty(mask: Image.Image) -> bool:
    """True when no pixel of the mask is above 0."""
    return mask.convert("L").getbbox() is None


def require_painted(mask: Image.Image) -> Image.Image:
    """``mask`` (blurred and inverted already), or MaskError when it repaints nothing."""
    if is_empty(mask):
        raise MaskError("the mask is empty: nothing to repaint. Paint the area to change in white (or turn off invert mask).")
    return mask


# --- "only masked" ---------------------------------------------------------


def crop_region(mask: Image.Image, padding: int) -> Box:
    """The box (x1, y1, x2, y2; x2, y2 exclusive) around the painted pixels, grown by ``padding``."""
    if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
        raise MaskError(f"the mask padding {padding!r} is not a whole number >= 0; use e.g. 32")
    box = mask.convert("L").getbbox()
    if box is None:
        raise MaskError("the mask is empty: nothing to repaint; paint the area to change in white")
    w, h = mask.size
    x1, y1, x2, y2 = box
    return max(x1 - padding, 0), max(y1 - padding, 0), min(x2 + padding, w), min(y2 + padding, h)


def _grow(lo: int, hi: int, length: int, limit: int) -> tuple[int, int]:
    """The span [lo, hi) grown to ``length`` around its centre, kept inside [0, limit)."""
    length = min(max(length, hi - lo), limit)
    lo -= (length - (hi - lo)) // 2
    lo = min(max(lo, 0), limit - length)
    return lo, lo + length


def expand_to_aspect(box: Box, width: int, height: int, image_w: int, image_h: int) -> Box:
    """The box grown (never shrunk) to the aspect ratio width/height, inside the image."""
    x1, y1, x2, y2 = box
    bw, bh = x2 - x1, y2 - y1
    if bw < 1 or bh < 1:
        raise MaskError(f"the crop box {box} is empty; give a box with x2 > x1 and y2 > y1")
    ratio = width / height
    if bw / bh > ratio:  # too wide: add height
        y1, y2 = _grow(y1, y2, round(bw / ratio), image_h)
    else:
        x1, x2 = _grow(x1, x2, round(bh * ratio), image_w)
    return x1, y1, x2, y2


# --- sampling and pasting --------------------------------------------------


def latent_mask(mask: Image.Image, latent_w: int, latent_h: int, round_values: bool = True) -> np.ndarray:
    """The mask at latent size (bicubic) as float32 (latent_h, latent_w) in [0, 1], rounded to 0/1 by default."""
    small = mask.convert("L").resize((latent_w, latent_h), Image.Resampling.BICUBIC)
    out = np.asarray(small, dtype=np.float32) / 255.0
    if round_values:
        out = np.around(out)
    return out.astype(np.float32)


def overlay_mask(mask: Image.Image, whole_picture: bool) -> Image.Image:
    """The mask used to paste back: doubled (clipped) for the whole picture, as is for only masked."""
    mask = mask.convert("L")
    if not whole_picture:
        return mask
    arr = np.asarray(mask, dtype=np.uint16) * 2
    return Image.fromarray(np.minimum(arr, 255).astype(np.uint8), "L")


def paste_back(
    original: Image.Image,
    generated: Image.Image,
    overlay: Image.Image,
    box: Optional[Box] = None,
) -> Image.Image:
    """The original with the generated picture composited in through ``overlay``
    (resized into ``box`` first for "only masked"); pixels where overlay is 0 stay exact."""
    original = original.convert("RGB")
    generated = generated.convert("RGB")
    if overlay.size != original.size:
        raise ValueError(f"the overlay mask is {overlay.size[0]}x{overlay.size[1]} but the original is "
                         f"{original.size[0]}x{original.size[1]}; fit the mask to the original first")
    if box is not None:
        x1, y1, x2, y2 = box
        full = original.copy()
        full.paste(generated.resize((x2 - x1, y2 - y1), Image.Resampling.LANCZOS), (x1, y1))
        generated = full
    elif generated.size != original.size:
        raise ValueError(f"the generated picture is {generated.size[0]}x{generated.size[1]} but the original is "
                         f"{original.size[0]}x{original.size[1]}; give the crop box or generate at the original's size")
    return Image.composite(generated, original, overlay.convert("L"))


def _resize_f(arr: np.ndarray, size: tuple[int, int], resample) -> np.ndarray:
    """Resize an (h, w, c) float32 array channel by channel."""
    chans = [np.asarray(Image.fromarray(np.ascontiguousarray(arr[..., c]), "F").resize(size, resample))
             for c in range(arr.shape[2])]
    return np.stack(chans, axis=-1)


def _smooth(arr: np.ndarray) -> np.ndarray:
    """A 3x3 binomial blur of an (h, w, c) array, edges repeated."""
    p = np.pad(arr, ((1, 1), (1, 1), (0, 0)), mode="edge")
    rows = (p[:-2] + 2 * p[1:-1] + p[2:]) / 4
    return (rows[:, :-2] + 2 * rows[:, 1:-1] + rows[:, 2:]) / 4


def fill_masked(image: Image.Image, mask: Image.Image) -> Image.Image:
    """A1111's "masked content: fill": the masked area becomes a smooth blur of its surroundings.

    A coverage-weighted pyramid (push-pull): the unmasked colours are averaged down to one
    pixel, then each finer level keeps its known colours and takes the rest from the coarser
    one.  Unmasked pixels (mask 0) are returned exactly; an all-white mask gives the mean colour.
    """
    image = image.convert("RGB")
    mask = mask.convert("L")
    if mask.size != image.size:
        raise MaskError(f"the mask is {mask.size[0]}x{mask.size[1]} but the image is "
                        f"{image.size[0]}x{image.size[1]}; make the mask the image's size")
    rgb = np.asarray(image, dtype=np.float32)
    m = np.asarray(mask, dtype=np.float32) / 255.0
    known = 1.0 - m
    if known.max() <= 0.0:
        mean = rgb.reshape(-1, 3).mean(axis=0)
        return Image.new("RGB", image.size, tuple(int(round(v)) for v in mean))
    # premultiplied colour + coverage, halved until one pixel
    level = np.concatenate([rgb * known[..., None], known[..., None]], axis=-1)
    levels = [level]
    while max(level.shape[0], level.shape[1]) > 1:
        h, w = level.shape[:2]
        level = _resize_f(level, (max(1, (w + 1) // 2), max(1, (h + 1) // 2)), Image.Resampling.BOX)
        levels.append(level)
    top = levels[-1]
    est = top[..., :3] / np.maximum(top[..., 3:], 1e-6)
    for level in reversed(levels[:-1]):
        h, w = level.shape[:2]
        up = _smooth(_resize_f(est, (w, h), Image.Resampling.BILINEAR))
        est = level[..., :3] + up * (1.0 - level[..., 3:])  # known part + the rest from coarser
    out = np.clip(np.rint(est), 0, 255).astype(np.uint8)
    keep = m == 0
    out[keep] = np.asarray(image)[keep]
    return Image.fromarray(out, "RGB")
