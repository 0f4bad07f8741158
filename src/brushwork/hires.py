"""The request side of the hires fix: generate small, upscale, refine the result.

AUTOMATIC1111's hires fix is two passes of the one generation path: a txt2img at
the request's size, then the upscaled result as the start of an img2img
(``start.Start``) at the target size, with the same seeds and the hires pass's own
steps, sampler, prompts and CFG.  This module is pure functions over a
:class:`~brushwork.request.GenerationRequest`: the target size, the checks, the
second pass's request, and the infotext keys A1111 writes (and reading them
back); the engine runs the passes, ``upscale/`` resizes between them.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Callable, Optional

from .upscale.latent import DEFAULT_LATENT_MODE, LATENT_UPSCALE_MODES, latent_mode_name, upscale_latents

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from .request import GenerationRequest

#: hires scale limits (A1111's slider goes to 4; the target side is capped anyway)
MAX_HIRES_SCALE = 8.0

#: infotext keys, A1111's spelling ("Hires CFG Scale" is Forge's)
SCALE_KEY, RESIZE_KEY, STEPS_KEY, UPSCALER_KEY = "Hires upscale", "Hires resize", "Hires steps", "Hires upscaler"
SAMPLER_KEY, SCHEDULE_KEY, PROMPT_KEY, NEGATIVE_KEY, CFG_KEY = "Hires sampler", "Hires schedule type", "Hires prompt", "Hires negative prompt", "Hires CFG Scale"
HIRES_KEYS = (SCALE_KEY, RESIZE_KEY, STEPS_KEY, UPSCALER_KEY, SAMPLER_KEY, SCHEDULE_KEY, PROMPT_KEY, NEGATIVE_KEY, CFG_KEY)


@dataclass(frozen=True)
class HiresSize:
    """The second pass's size (``width`` x ``height``), and the size the first
    picture is upscaled to before it is cropped to it (``cover_*``; the same unless
    both hires_resize sides are given with another aspect: then the upscale covers
    the target and the middle is kept, as A1111 does)."""

    cover_width: int
    cover_height: int
    width: int
    height: int


#: the hires defaults by the model's native side: (scale, steps, strength); SD 1.x
#: at 512 px (and the 128 px demo) doubles, 768 px SD 2.x and 1024 px SDXL go 1.5x
_DEFAULTS_BY_SIDE = ((512, (2.0, 10, 0.5)), (768, (1.5, 10, 0.5)), (10**6, (1.5, 10, 0.4)))


def hires_defaults(native_side: int) -> tuple[float, int, float]:
    """(scale, hires steps, strength) that suit a model of this native side."""
    return next(v for side, v in _DEFAULTS_BY_SIDE if native_side <= side)


def with_hires_defaults(req: "GenerationRequest", d) -> "GenerationRequest":
    """The hires fields a request leaves unset, from the family defaults ``d``."""
    scale, steps, strength = hires_defaults(max(d.width, d.height))
    return replace(
        req,
        hires_scale=scale if req.hires_scale is None else req.hires_scale,
        hires_steps=steps if req.hires_steps is None else req.hires_steps,
        hires_strength=strength if req.hires_strength is None else req.hires_strength,
    )


def _eighths(v: float) -> int:
    return max(8, int(v) // 8 * 8)


def largest_size(req) -> tuple[int, int]:
    """(width, height) of the largest pass of a request: its own size, or with the hires
    fix its target size (what memory must be planned for)."""
    if not req.hires:
        return req.width, req.height
    size = hires_size(req.width, req.height, req.hires_scale, req.hires_resize_x, req.hires_resize_y)
    return size.width, size.height


def hires_size(width: int, height: int, scale: float, resize_x: int = 0, resize_y: int = 0) -> HiresSize:
    """AUTOMATIC1111's target: ``scale`` times the first pass, or ``resize_x`` /
    ``resize_y`` (one of them: the other from the aspect; both: cover and crop).
    Sides are rounded down to multiples of 8 (the latents are 1/8 the size)."""
    if not resize_x and not resize_y:
        w, h = _eighths(width * scale), _eighths(height * scale)
        return HiresSize(w, h, w, h)
    if not resize_y:
        w, h = _eighths(resize_x), _eighths(resize_x * height / width)
        return HiresSize(w, h, w, h)
    if not resize_x:
        w, h = _eighths(resize_y * width / height), _eighths(resize_y)
        return HiresSize(w, h, w, h)
    tw, th = _eighths(resize_x), _eighths(resize_y)
    if width / height < resize_x / resize_y:  # the target is wider: match widths, crop height
        return HiresSize(tw, max(th, _eighths(resize_x * height / width)), tw, th)
    return HiresSize(max(tw, _eighths(resize_y * width / height)), th, tw, th)


def upscaler_name(req: "GenerationRequest") -> str:
    """The request's hires upscaler: a latent mode's canonical name, else the name as
    given (an image upscaler, looked up in the data home by the engine)."""
    name = req.hires_upscaler
    if name is None or not name.strip():
        return DEFAULT_LATENT_MODE
    return latent_mode_name(name) or name.strip()


def is_latent(name: str) -> bool:
    return name in LATENT_UPSCALE_MODES


def check_hires(req: "GenerationRequest") -> None:
    """The hires fields' ranges (what needs no model or data home); RequestError with the fix."""
    from .request import MAX_SIDE, MAX_STEPS, MIN_SIDE, RequestError

    if not req.hires:
        return
    if req.refines:
        raise RequestError("hires fix is a txt2img option: to enlarge a picture you have, use img2img with a larger width/height, or brushwork upscale.")
    s = req.hires_scale
    if s is not None and (isinstance(s, bool) or not isinstance(s, (int, float)) or not 1 <= s <= MAX_HIRES_SCALE):
        raise RequestError(f"hires scale must be from 1 to {MAX_HIRES_SCALE:g}; got {s!r}. 2 is typical (512 -> 1024 px).")
    for name in ("hires_resize_x", "hires_resize_y"):
        v = getattr(req, name)
        if isinstance(v, bool) or not isinstance(v, int) or not (v == 0 or MIN_SIDE <= v <= MAX_SIDE):
            raise RequestError(f"{name.replace('_', ' ')} must be 0 (use the hires scale) or a size from {MIN_SIDE} to {MAX_SIDE} pixels; got {v!r}.")
    n = req.hires_steps
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= MAX_STEPS):
        raise RequestError(f"hires steps must be a whole number from 0 (the same as steps) to {MAX_STEPS}; got {n!r}. 10-20 is typical.")
    if req.hires_cfg is not None and not 0 <= float(req.hires_cfg) <= 30:
        raise RequestError(f"hires CFG scale must be between 0 and 30; got {req.hires_cfg}. Leave it unset to use the CFG scale.")
    d = req.hires_strength
    if d is not None and (isinstance(d, bool) or not isinstance(d, (int, float)) or not 0 <= d <= 1):
        raise RequestError(f"denoising strength must be between 0 and 1; got {d!r}. For the hires pass 0.3-0.6 keeps the composition; latent upscalers need about 0.5 or more.")
    if req.width is not None and req.height is not None and (req.hires_scale is not None or req.hires_resize_x or req.hires_resize_y):
        size = hires_size(req.width, req.height, req.hires_scale or 1, req.hires_resize_x, req.hires_resize_y)
        for side in (size.cover_width, size.cover_height):
            if side > MAX_SIDE:
                raise RequestError(f"the hires target {size.cover_width}x{size.cover_height} is larger than {MAX_SIDE} px per side; use a smaller hires scale or resize.")
            if side < MIN_SIDE:
                raise RequestError(f"the hires target {size.width}x{size.height} is smaller than {MIN_SIDE} px per side; use a larger hires scale or resize.")
    if req.hires_sampler is not None:
        from .sampling.registry import UnknownSamplerError, resolve_sampler

        try:
            resolve_sampler(req.hires_sampler, req.hires_schedule)
        except (UnknownSamplerError, ValueError) as exc:
            raise RequestError(f"hires sampler: {exc}") from None
    if req.stop_at_step is not None and req.steps is not None and isinstance(req.stop_at_step, int) and req.stop_at_step > req.steps:
        raise RequestError(f"stop_at_step {req.stop_at_step} is inside the hires pass; a stop there keeps the upscaled first picture, which stop_at_step {req.steps} gives.")


def image_upscaler(home, req: "GenerationRequest"):
    """The request's hires upscaler when it is an image upscaler (``upscale.UpscalerInfo``),
    None for a latent mode; one not in the data home is a RequestError listing those there."""
    from .request import RequestError

    name = upscaler_name(req)
    if is_latent(name):
        return None
    from .upscale import UpscalerError, find_upscaler

    try:
        return find_upscaler(home, name)
    except UpscalerError as exc:
        raise RequestError(f"hires upscaler: {exc}") from None


def second_pass(req: "GenerationRequest") -> "GenerationRequest":
    """The hires pass as its own request (completed first-pass request in): an img2img
    at the target size, with the hires steps, sampler, schedule, prompts and CFG
    (each the first pass's when unset) and the first pass's seeds and noise settings.
    The engine supplies its starting latents (the upscaled first pass)."""
    size = hires_size(req.width, req.height, req.hires_scale, req.hires_resize_x, req.hires_resize_y)
    same_sampler = req.hires_sampler is None or not req.hires_sampler.strip()
    return replace(
        req,
        prompt=req.hires_prompt or req.prompt,
        negative_prompt=req.hires_negative_prompt or req.negative_prompt,
        steps=req.hires_steps or req.steps,
        sampler=req.sampler if same_sampler else req.hires_sampler,
        schedule=(req.hires_schedule or req.schedule) if same_sampler else req.hires_schedule,
        cfg_scale=req.cfg_scale if req.hires_cfg is None else req.hires_cfg,
        width=size.width,
        height=size.height,
        seed_resize_from_w=0,
        seed_resize_from_h=0,
        hires=False,
        stop_at_step=None,
        styles=[],
    )


def hires_infotext(req: "GenerationRequest", upscaler: str, sampler_label: Optional[str] = None, schedule_label: Optional[str] = None) -> dict:
    """The hires keys of a picture's infotext in A1111's order (Denoising strength is
    one of the base keys; infotext.py places it)."""
    out: dict = {"Denoising strength": req.hires_strength}
    if req.hires_resize_x or req.hires_resize_y:
        out[RESIZE_KEY] = f"{req.hires_resize_x}x{req.hires_resize_y}"
    else:
        out[SCALE_KEY] = req.hires_scale
    if req.hires_steps:
        out[STEPS_KEY] = req.hires_steps
    out[UPSCALER_KEY] = upscaler
    if sampler_label:
        out[SAMPLER_KEY] = sampler_label
    if schedule_label:
        out[SCHEDULE_KEY] = schedule_label
    if req.hires_prompt and req.hires_prompt != req.prompt:
        out[PROMPT_KEY] = req.hires_prompt
    if req.hires_negative_prompt and req.hires_negative_prompt != req.negative_prompt:
        out[NEGATIVE_KEY] = req.hires_negative_prompt
    if req.hires_cfg is not None:
        out[CFG_KEY] = req.hires_cfg
    return out


def records_hires(extra: dict) -> bool:
    """A1111's rule: an infotext is a hires fix when it has Denoising strength and
    any of Hires upscale, Hires upscaler or Hires resize."""
    return "Denoising strength" in extra and any(k in extra for k in (SCALE_KEY, UPSCALER_KEY, RESIZE_KEY))


def hires_fields(extra: dict) -> dict:
    """GenerationRequest fields from an infotext's keys (the inverse of
    :func:`hires_infotext`); empty when the picture is no hires fix."""
    from .request import RequestError

    if not records_hires(extra):
        return {}
    try:
        fields: dict = {"hires": True, "hires_strength": float(extra["Denoising strength"]), "hires_steps": 0}
        if SCALE_KEY in extra:
            fields["hires_scale"] = float(extra[SCALE_KEY])
        if RESIZE_KEY in extra:
            w, _, h = str(extra[RESIZE_KEY]).partition("x")
            fields["hires_resize_x"], fields["hires_resize_y"] = int(w), int(h)
        if STEPS_KEY in extra:
            fields["hires_steps"] = int(extra[STEPS_KEY])
        if UPSCALER_KEY in extra:
            fields["hires_upscaler"] = str(extra[UPSCALER_KEY])
        if extra.get(SAMPLER_KEY, "Use same sampler") != "Use same sampler":
            fields["hires_sampler"] = str(extra[SAMPLER_KEY])
        if extra.get(SCHEDULE_KEY, "Use same scheduler") != "Use same scheduler":
            fields["hires_schedule"] = str(extra[SCHEDULE_KEY])
        for key, name in ((PROMPT_KEY, "hires_prompt"), (NEGATIVE_KEY, "hires_negative_prompt")):
            if key in extra:
                fields[name] = str(extra[key])
        if CFG_KEY in extra:
            fields["hires_cfg"] = float(extra[CFG_KEY])
    except ValueError as exc:
        raise RequestError(f"the picture's hires fix settings cannot be read back: {exc}") from None
    return fields


def second_pass_estimate(req: "GenerationRequest") -> tuple[int, int, int, float]:
    """(width, height, UNet calls per image, CFG scale) of a completed request's hires
    pass, for the time estimate."""
    from .request import hires_steps_run
    from .sampling.registry import resolve_sampler

    two = second_pass(req)
    sampler, _ = resolve_sampler(two.sampler, two.schedule)
    return two.width, two.height, hires_steps_run(req) * sampler.calls_per_step, float(two.cfg_scale)


# ----------------------------------------------------------------- the engine's side


@dataclass
class HiresPass:
    """A prepared hires pass, shared by a request's batches."""

    req: "GenerationRequest"  # the second pass (second_pass), completed
    sampler: Any  # SamplerInfo
    schedule: str
    plan: Any  # PromptPlan, encoded with the first pass's timeline
    size: HiresSize
    upscaler: str  # a latent mode, or an image upscaler's name
    image_upscaler: Any = None  # upscale.UpscalerInfo for an image upscaler
    window: Any = None  # start.StepWindow
    infotext: dict = field(default_factory=dict)


def _lora_key(tags) -> list[tuple]:
    return [(n.name.lower(), n.te, n.unet) for n in tags.networks]


def prepare_hires(req: "GenerationRequest", tags, home, encode: Callable[["GenerationRequest", str], Any]) -> HiresPass:
    """The second pass of a completed, styled request: its request, sampler and
    upscaler checked, its prompts encoded (``encode(request, text)``).  LoRAs stay
    those of the first pass, so a hires prompt must name the same ones."""
    from .prompts import extract_extra_networks
    from .request import RequestError, validate_request
    from .sampling.registry import resolve_sampler, schedule_label
    from .start import strength_window

    two = second_pass(req)
    validate_request(two)
    sampler, schedule = resolve_sampler(two.sampler, two.schedule)
    two_tags = extract_extra_networks(two.prompt)
    if _lora_key(two_tags) != _lora_key(tags):
        raise RequestError("the hires prompt names other LoRAs than the prompt; both passes use the prompt's LoRAs, so give the hires prompt the same <lora:...> tags (or leave it empty to use the prompt).")
    info = image_upscaler(home, req)
    name = upscaler_name(req) if info is None else info.name
    plan = encode(two, two_tags.text)
    window = strength_window(two.steps, float(req.hires_strength))
    same = req.hires_sampler is None or not req.hires_sampler.strip()
    text = hires_infotext(req, name, None if same else sampler.label, schedule_label(sampler, schedule) if not same and req.hires_schedule else None)
    size = hires_size(req.width, req.height, req.hires_scale, req.hires_resize_x, req.hires_resize_y)
    return HiresPass(two, sampler, schedule, plan, size, name, info, window, text)


def centre_crop_latents(latents: "torch.Tensor", height: int, width: int) -> "torch.Tensor":
    """The middle (height, width) of (B, C, H, W) latents (A1111's truncation)."""
    dy, dx = latents.shape[-2] - height, latents.shape[-1] - width
    return latents[..., dy // 2 : dy // 2 + height, dx // 2 : dx // 2 + width]


def centre_crop(image: "Image.Image", width: int, height: int) -> "Image.Image":
    dx, dy = image.width - width, image.height - height
    if not dx and not dy:
        return image
    return image.crop((dx // 2, dy // 2, dx // 2 + width, dy // 2 + height))


def hires_start(h: HiresPass, latents: "torch.Tensor", decode: Callable, encode: Callable, device, should_stop=None) -> tuple[Any, Optional[list]]:
    """Where a batch's hires pass starts (a ``start.Start`` over the batch's own
    latents) and, for image upscalers, the upscaled pictures: a latent mode resizes
    the first pass's latents; an image upscaler decodes them, upscales the pictures
    (``upscale.upscale_image``) and encodes them again, exactly as an img2img of
    the upscaled picture would (``vae.image_to_pixels``, then ``encode``)."""
    import torch

    from .start import Start
    from .vae import image_to_pixels

    s = h.size
    if h.image_upscaler is None:
        big = upscale_latents(latents, s.cover_height // 8, s.cover_width // 8, h.upscaler)
        init, upscaled = centre_crop_latents(big, s.height // 8, s.width // 8).contiguous(), None
    else:
        from .upscale import upscale_image

        upscaled = [centre_crop(upscale_image(img, s.cover_width, s.cover_height, h.image_upscaler, device, should_stop=should_stop), s.width, s.height) for img in decode(latents)]
        init = torch.cat([encode(image_to_pixels(img)) for img in upscaled])
    return Start(init, None, "original", h.window), upscaled
