"""The request side of img2img, inpaint and outpaint: checking the fields, filling
the defaults that depend on the picture, and the infotext keys that let a result
be re-created (AUTOMATIC1111's, plus ours for what A1111 has no key for).

Pure functions over a :class:`~brushwork.engine.GenerationRequest`; the picture
work is in ``canvas.py``, the latent work in ``start.py``.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from .canvas import Canvas, Source
from .init_image import RESIZE_MODES, ImageInputError, resize_mode_name, working_size
from .masks import INPAINT_AREAS, MASKED_CONTENT, inpaint_area_name, masked_content_name
from .outpaint import OUTPAINT_FILLS, check_sides, parse_outpaint

if TYPE_CHECKING:
    from .request import FamilyDefaults, GenerationRequest

MAX_MASK_BLUR = 64
MAX_PADDING = 256

#: infotext keys (A1111's spelling and values where A1111 has them)
STRENGTH_KEY = "Denoising strength"
INIT_HASH_KEY = "Init image hash"
MASK_HASH_KEY = "Mask hash"  # ours
RESIZE_KEY = "Resize mode"  # ours; A1111 keeps it in the UI only
EXACT_STEPS_KEY = "Exact steps"  # ours: A1111's img2img_fix_steps setting
OUTPAINT_KEY = "Outpaint"  # ours: "left=128 top=64" (the CLI's --outpaint, spaces for commas)
OUTPAINT_FILL_KEY = "Outpaint fill"  # ours
#: the job kinds of generations (the others: "load")
GENERATION_KINDS = ("txt2img", "img2img", "inpaint", "compare")
INPAINT_AREA_LABELS = {"whole picture": "Whole picture", "only masked": "Only masked"}


@dataclass
class RefinedPicture:
    """A refine request's picture: as given (``source``) and at the working size."""

    source: Source
    canvas: Canvas


def check_refine(req: "GenerationRequest") -> None:
    """The refine fields' ranges and names; raises RequestError with the fix."""
    from .request import RequestError

    if not req.refines:
        if req.mask is not None:
            raise RequestError("a mask needs an init image: give the picture to inpaint (init_image / brushwork img2img IMAGE --mask MASK).")
        if req.outpaint:
            raise RequestError("outpaint needs an init image: give the picture to extend.")
        return
    s = req.denoising_strength
    if isinstance(s, bool) or not isinstance(s, (int, float)) or not 0 <= s <= 1:
        raise RequestError(f"denoising strength must be between 0 and 1; got {s!r}. 0 keeps the picture, 1 redraws it completely; 0.3-0.75 is typical.")
    for name, value, top in (("mask blur", req.mask_blur, MAX_MASK_BLUR), ("only masked padding", req.only_masked_padding, MAX_PADDING)):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= top:
            raise RequestError(f"{name} must be a whole number of pixels from 0 to {top}; got {value!r}.")
    if req.outpaint_fill not in OUTPAINT_FILLS:
        raise RequestError(f"outpaint fill must be one of {', '.join(OUTPAINT_FILLS)}; got {req.outpaint_fill!r}.")
    try:
        resize_mode_name(req.resize_mode)
        masked_content_name(req.masked_content)
        inpaint_area_name(req.inpaint_area)
    except ImageInputError as exc:
        raise RequestError(str(exc)) from None
    if req.outpaint:
        try:
            check_sides(req.outpaint)
        except ImageInputError as exc:
            raise RequestError(f"outpaint: {exc}") from None


def check_pictures(req: "GenerationRequest") -> None:
    """What can be said about the pictures before a job is queued: a mask whose shape
    does not fit the init image, or one with nothing to repaint (MaskError)."""
    from .canvas import source
    from .masks import prepare_mask, require_painted

    if not req.refines:
        return
    src = source(req.init_image, req.mask, check_sides(req.outpaint) if req.outpaint else None, req.outpaint_fill)
    if src.mask is not None:
        require_painted(prepare_mask(src.mask, req.mask_blur, req.invert_mask))


def job_kind(req: "GenerationRequest") -> str:
    """"txt2img", "img2img" or "inpaint" (a mask, a transparent init image, or outpaint)."""
    from .masks import mask_from_alpha

    if not req.refines:
        return "txt2img"
    if req.mask is not None or req.outpaint or mask_from_alpha(req.init_image) is not None:
        return "inpaint"
    return "img2img"


def source_size(req: "GenerationRequest") -> tuple[int, int]:
    """The source picture's size: the init image's, plus the outpaint sides."""
    w, h = req.init_image.size
    if req.outpaint:
        sides = check_sides(req.outpaint)
        w, h = w + sides["left"] + sides["right"], h + sides["top"] + sides["bottom"]
    return w, h


def refine_defaults(req: "GenerationRequest", d: "FamilyDefaults") -> "GenerationRequest":
    """Names made canonical, and the size a refine request leaves open: the source
    picture's own (rounded to multiples of 8; one side given: the other from the
    picture's aspect); "only masked" works at the model's native size instead."""
    if not req.refines:
        return req
    check_refine(req)
    req = replace(req, resize_mode=resize_mode_name(req.resize_mode), masked_content=masked_content_name(req.masked_content),
                  inpaint_area=inpaint_area_name(req.inpaint_area), outpaint=check_sides(req.outpaint) if req.outpaint else None)
    if req.width is not None and req.height is not None:
        return req
    if req.inpaint_area == "only masked" and (req.mask is not None or req.outpaint) and req.width is None and req.height is None:
        return replace(req, width=d.width, height=d.height)
    w, h = working_size(*source_size(req), req.width, req.height)
    return replace(req, width=w, height=h)


def refine_infotext(req: "GenerationRequest", picture: RefinedPicture) -> dict:
    """The infotext keys of a refine request, in A1111's order: Denoising strength,
    then the mask's keys, then the init image's hash (and ours)."""
    out: dict = {STRENGTH_KEY: req.denoising_strength}
    if req.resize_mode != RESIZE_MODES[0]:
        out[RESIZE_KEY] = req.resize_mode
    if req.exact_steps:
        out[EXACT_STEPS_KEY] = True
    if picture.canvas.mask is not None:
        out["Mask blur"] = req.mask_blur
        out["Inpaint area"] = INPAINT_AREA_LABELS[req.inpaint_area]
        if req.inpaint_area == "only masked":
            out["Masked area padding"] = req.only_masked_padding
        out["Masked content"] = req.masked_content
        if req.invert_mask:
            out["Mask mode"] = "Inpaint not masked"
    if req.outpaint:
        out[OUTPAINT_KEY] = " ".join(f"{side}={n}" for side, n in req.outpaint.items() if n)
        out[OUTPAINT_FILL_KEY] = req.outpaint_fill
    out[INIT_HASH_KEY] = picture.source.init_hash
    if picture.source.mask_hash:
        out[MASK_HASH_KEY] = picture.source.mask_hash
    return out


def refine_fields(extra: dict) -> dict:
    """GenerationRequest fields from an infotext's keys (the inverse of
    :func:`refine_infotext`; the pictures themselves are found by their hashes)."""
    from .request import RequestError

    fields: dict = {}
    if STRENGTH_KEY not in extra:
        return fields
    try:
        fields["denoising_strength"] = float(extra[STRENGTH_KEY])
        if RESIZE_KEY in extra:
            fields["resize_mode"] = resize_mode_name(extra[RESIZE_KEY])
        fields["exact_steps"] = str(extra.get(EXACT_STEPS_KEY, "")).lower() == "true"
        if "Mask blur" in extra:
            fields["mask_blur"] = int(extra["Mask blur"])
        if "Inpaint area" in extra:
            fields["inpaint_area"] = inpaint_area_name(str(extra["Inpaint area"]).lower())
        if "Masked area padding" in extra:
            fields["only_masked_padding"] = int(extra["Masked area padding"])
        if "Masked content" in extra:
            fields["masked_content"] = masked_content_name(extra["Masked content"])
        fields["invert_mask"] = extra.get("Mask mode") == "Inpaint not masked"
        if OUTPAINT_KEY in extra:
            fields["outpaint"] = check_sides(parse_outpaint(",".join(str(extra[OUTPAINT_KEY]).split())))
            fields["outpaint_fill"] = extra.get(OUTPAINT_FILL_KEY, "edge")
    except (ValueError, ImageInputError) as exc:
        raise RequestError(f"the picture's refine settings cannot be read back: {exc}") from None
    return fields


__all__ = ["INPAINT_AREAS", "MASKED_CONTENT", "RefinedPicture", "check_refine", "refine_defaults", "refine_fields", "refine_infotext", "source_size"]
