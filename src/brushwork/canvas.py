"""The picture side of img2img, inpaint and outpaint: from the request's init image,
mask and outpaint sides to what the VAE encodes, and back.

:func:`source` builds the source picture (the init image, with its canvas extended
for outpaint) and its mask (a mask image, the init image's transparency, or the
outpaint area).  :func:`prepare` turns them into a :class:`Canvas` at the working
size: resized by the resize mode, or, for "only masked", cropped to the mask's
area (padded, grown to the working aspect) and scaled up.  :func:`finish` pastes a
generated picture back, so that everything outside the (blurred) mask is the
source picture's own pixels.

Pure Pillow work (init_image.py, masks.py, outpaint.py do the pieces); no torch.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from PIL import Image

from .init_image import flatten, image_hash, resize_image
from .masks import crop_region, expand_to_aspect, fill_masked, fit_mask, mask_from_alpha, mask_from_image, overlay_mask, prepare_mask, require_painted
from .outpaint import check_sides, extend_canvas


@dataclass
class Source:
    """The picture a refine request works on, before resizing."""

    picture: Image.Image  # RGB (outpaint: the extended canvas)
    mask: Optional[Image.Image]  # L, white = repaint, the picture's size; None: plain img2img
    init_hash: str  # of the init image as given (A1111's "Init image hash")
    mask_hash: Optional[str] = None  # of the mask image as given
    notes: list[str] = field(default_factory=list)


@dataclass
class Canvas:
    """A refine request at its working size."""

    image: Image.Image  # RGB, width x height: what the VAE encodes
    mask: Optional[Image.Image]  # L, width x height: white = repaint (the latent mask comes from it)
    base: Image.Image  # RGB: what the result is pasted into (working size; "only masked": the source's size)
    overlay: Optional[Image.Image]  # L, the base's size: where the generated pixels show
    box: Optional[tuple[int, int, int, int]] = None  # "only masked": the crop in the base
    latent_upscale: bool = False  # resize mode "latent upscale": the latents are resized, not the picture


def source(init: Image.Image, mask: Optional[Image.Image], outpaint: Optional[dict], outpaint_fill: str = "edge", seed: int = 0, overlap: int = 16) -> Source:
    """The source picture and its mask (white = repaint): an explicit mask (scaled to
    the picture when only its size differs, with a note), else the init image's
    transparency, else none; outpaint extends both and masks the new area."""
    init_hash = image_hash(init)
    notes: list[str] = []
    picture = flatten(init)
    if mask is not None:
        fitted, note = fit_mask(mask_from_image(mask), picture.size)
        mask_hash = image_hash(mask)
        if note:
            notes.append(note)
    else:
        fitted, mask_hash = mask_from_alpha(init), None
        if fitted is not None:
            notes.append("the init image has transparent pixels and no mask was given: the transparent area is repainted")
    if outpaint:
        sides = check_sides(outpaint)
        picture, new_area = extend_canvas(picture, sides, outpaint_fill, seed, overlap)
        if fitted is not None:
            grown = Image.new("L", picture.size, 0)
            grown.paste(fitted, (sides["left"], sides["top"]))
            new_area = Image.fromarray(_maximum(grown, new_area))
        fitted = new_area
    return Source(picture, fitted, init_hash, mask_hash, notes)


def _maximum(a: Image.Image, b: Image.Image):
    import numpy as np

    return np.maximum(np.asarray(a), np.asarray(b))


def prepare(src: Source, width: int, height: int, resize_mode: str = "just resize", mask_blur: int = 4, invert: bool = False,
            masked_content: str = "original", only_masked: bool = False, padding: int = 32) -> Canvas:
    """The working picture and masks for a generation of ``width`` x ``height``."""
    latent_upscale = resize_mode == "latent upscale"
    pixel_mode = "just resize" if latent_upscale else resize_mode
    if src.mask is None:
        if latent_upscale:
            w, h = (max(8, round(v / 8) * 8) for v in src.picture.size)
            image = src.picture.resize((w, h), Image.Resampling.LANCZOS) if (w, h) != src.picture.size else src.picture
        else:
            image = resize_image(src.picture, pixel_mode, width, height)
        return Canvas(image, None, image, None, None, latent_upscale)
    mask = require_painted(prepare_mask(src.mask, mask_blur, invert))
    if only_masked:
        box = expand_to_aspect(crop_region(mask, padding), width, height, *src.picture.size)
        work_mask = resize_image(mask.crop(box), "resize and fill", width, height)
        image = resize_image(src.picture.crop(box), "resize and fill", width, height)
        base, overlay = src.picture, overlay_mask(mask, whole_picture=False)
    else:
        box = None
        image = resize_image(src.picture, pixel_mode, width, height)
        work_mask = resize_image(mask, pixel_mode, width, height)
        base, overlay = image, overlay_mask(work_mask, whole_picture=True)
    if masked_content == "fill":
        image = fill_masked(image, work_mask)
    return Canvas(image, work_mask, base, overlay, box, False)


def finish(canvas: Canvas, generated: Image.Image) -> Image.Image:
    """The generated picture pasted back: outside the mask the base's own pixels."""
    from .masks import paste_back

    if canvas.overlay is None:
        return generated
    return paste_back(canvas.base, generated, canvas.overlay, canvas.box)
