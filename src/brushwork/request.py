"""What a generation asks for: :class:`GenerationRequest`, its limits, the model
family's defaults, and the checks that need no model (``validate_request``).

Every client (CLI, native API, AUTOMATIC1111 API) builds these and every client
shows the same messages; :meth:`brushwork.engine.Engine.complete` fills the
defaults and checks what depends on the loaded model.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from typing import Optional

from PIL import Image

from .models.detect import ModelSpec
from .noise import RNG_SOURCES
from .hires import check_hires
from .refine import check_refine
from .sampling.registry import resolve_sampler, resolve_schedule
from .start import strength_window

MAX_SEED = 2**32 - 1
MIN_SIDE, MAX_SIDE = 64, 4096
MAX_STEPS = 150
#: the one set of request limits every client uses (CLI, native API, AUTOMATIC1111 API)
MAX_BATCH_SIZE = 16
MAX_BATCH_COUNT = 100
MAX_CLIP_SKIP = 12


class RequestError(ValueError):
    """A generation request with a value out of range; the message names the field and the fix."""


class DoesNotFit(RequestError):
    """The request needs more memory than this machine has (its message names a size
    that fits).  Another machine may have more: a cluster tries the job elsewhere."""


class TooLong(RequestError):
    """The request is estimated to take longer than this machine's time limit.  A
    faster machine may be within it: a cluster tries the job elsewhere."""


@dataclass(frozen=True)
class FamilyDefaults:
    width: int
    height: int
    steps: int = 25
    cfg_scale: float = 7.0
    sampler: str = "DPM++ 2M"
    schedule: str = "Karras"
    clip_skip: int = 1
    distilled_cfg_scale: Optional[float] = None  # Flux.1 dev's guidance input (None: the family has none)


def family_defaults(spec: ModelSpec) -> FamilyDefaults:
    """The family's defaults, overridden by what the checkpoint's own metadata asks for.
    (The user's saved defaults for a model come on top: model_defaults.effective_defaults.)"""
    known = {k: v for k, v in spec.defaults.items() if k in FamilyDefaults.__dataclass_fields__}
    return replace(base_defaults(spec), **known)


def base_defaults(spec: ModelSpec) -> FamilyDefaults:
    """The model family's own defaults (no metadata): SD's at the native size; Flux's
    steps, CFG 1 and distilled guidance (flux_family.py)."""
    if spec.family == "flux":
        from .flux_family import flux_defaults

        return flux_defaults(spec)
    return FamilyDefaults(spec.resolution, spec.resolution)


def clip_skip_limit(spec: ModelSpec) -> int:
    """The deepest clip skip a model allows: hidden_states[-n] of an L-layer encoder;
    SD 1.x reads layer L+1-clip_skip, SD 2.x and SDXL one earlier, and the embeddings
    (or beyond) are no layer to use."""
    if not spec.text_encoders:  # Flux: T5 and CLIP-L are read at their own layers
        return 1
    depth = min(e.layers for e in spec.text_encoders)
    return depth if spec.family == "sd1" else depth - 1


@dataclass
class GenerationRequest:
    """What to generate.  ``None`` means the loaded model's default."""

    prompt: str = ""
    negative_prompt: str = ""
    seed: int = -1
    steps: Optional[int] = None
    cfg_scale: Optional[float] = None
    #: Flux.1 dev's distilled guidance (Forge's "Distilled CFG Scale"); None: the
    #: model's default (3.5); not used by models without a guidance input
    distilled_cfg_scale: Optional[float] = None
    sampler: Optional[str] = None
    schedule: Optional[str] = None
    width: Optional[int] = None
    height: Optional[int] = None
    batch_size: int = 1
    batch_count: int = 1
    #: use an earlier text-encoder layer (1: the last); None: the model's default
    #: (its saved default, else 1)
    clip_skip: Optional[int] = None
    #: the VAE (vae_select.py): None or "Automatic" (a VAE file made for the checkpoint,
    #: else its own), "None" (its own) or a file of models/vae by name
    vae: Optional[str] = None
    #: prompt style names from HOME/styles.csv, applied in order (prompts/styles.py)
    styles: list[str] = field(default_factory=list)
    #: where the starting noise comes from: "CPU" (default), "GPU" or "NV" (noise.py)
    rng: str = "CPU"
    #: AUTOMATIC1111's Eta noise seed delta: step noise of ENSD samplers re-seeded with seed + ensd
    ensd: int = 0
    #: variation seed (A1111's subseed): the noise is slerped towards the subseed's by
    #: ``subseed_strength`` (0: the seed alone, 1: the subseed alone); -1: random
    subseed: int = -1
    subseed_strength: float = 0.0
    #: seed resize from WxH: the noise of that size, pasted centred (0: off)
    seed_resize_from_w: int = 0
    seed_resize_from_h: int = 0
    #: stop each batch after this step and keep its denoised estimate, as an interrupt
    #: does (re-creates a picture whose infotext says "Stopped at step")
    stop_at_step: Optional[int] = None
    # ---- refine a picture (img2img, inpaint, outpaint): see start.py and canvas.py.
    #: the picture to start from; None: txt2img.  width/height None: its own size
    init_image: Optional[Image.Image] = None
    #: white = repaint; None: the init image's transparency if it has any, else plain img2img
    mask: Optional[Image.Image] = None
    #: 0 keeps the picture (VAE round trip), 1 redraws it; steps x strength are run
    denoising_strength: float = 0.75
    #: run exactly ``steps`` steps whatever the strength (A1111's img2img_fix_steps)
    exact_steps: bool = False
    resize_mode: str = "just resize"  # init_image.RESIZE_MODES
    mask_blur: int = 4
    masked_content: str = "original"  # masks.MASKED_CONTENT
    inpaint_area: str = "whole picture"  # masks.INPAINT_AREAS
    only_masked_padding: int = 32
    invert_mask: bool = False
    #: pixels to add per side ({"left": 128, ...}); the new area is filled and inpainted
    outpaint: Optional[dict] = None
    outpaint_fill: str = "edge"  # outpaint.OUTPAINT_FILLS
    # ---- hires fix (txt2img, hires.py): generate, upscale, then an img2img pass of
    # ``hires_strength`` at the target size with the same seeds.  None: the model
    # family's default (hires.hires_defaults; SD 1.x: 2x, 10 steps, strength 0.5)
    hires: bool = False
    hires_scale: Optional[float] = None
    hires_strength: Optional[float] = None
    #: the target size instead of the scale (0: from the scale; one side: the other from the aspect)
    hires_resize_x: int = 0
    hires_resize_y: int = 0
    #: a latent mode ("Latent", "Latent (bicubic)", ...) or an image upscaler; None: "Latent"
    hires_upscaler: Optional[str] = None
    hires_steps: Optional[int] = None  # 0: the same as steps
    hires_sampler: Optional[str] = None  # None: the same sampler (and schedule)
    hires_schedule: Optional[str] = None
    hires_prompt: str = ""  # "": the same prompt
    hires_negative_prompt: str = ""
    hires_cfg: Optional[float] = None  # None: the same CFG scale

    @property
    def refines(self) -> bool:
        """img2img, inpaint or outpaint: generation starts from a picture."""
        return self.init_image is not None


def resolve_seed(seed: Optional[int], rng: Optional[random.Random] = None) -> int:
    """-1 or None means a random seed (0 .. 2**32 - 2, AUTOMATIC1111's range)."""
    if seed is None or seed == -1:
        return (rng or random.SystemRandom()).randint(0, MAX_SEED - 1)
    if not 0 <= seed <= MAX_SEED:
        raise RequestError(f"seed must be -1 (random) or between 0 and {MAX_SEED}; got {seed}.")
    return seed


def with_defaults(request: GenerationRequest, d: FamilyDefaults, native: Optional[FamilyDefaults] = None) -> GenerationRequest:
    """The request with the model's defaults ``d`` where it leaves a field unset.

    ``native``: the checkpoint's own defaults (family and metadata, without the user's
    saved ones), whose size picks the hires fix's defaults; None: ``d``'s."""
    req = replace(
        request,
        steps=d.steps if request.steps is None else request.steps,
        cfg_scale=d.cfg_scale if request.cfg_scale is None else request.cfg_scale,
        width=d.width if request.width is None else request.width,
        height=d.height if request.height is None else request.height,
        clip_skip=d.clip_skip if request.clip_skip is None else request.clip_skip,
        distilled_cfg_scale=d.distilled_cfg_scale if request.distilled_cfg_scale is None else request.distilled_cfg_scale,
    )
    if request.sampler is None:
        req = replace(req, sampler=d.sampler, schedule=request.schedule or d.schedule)
    if req.hires:
        from .hires import with_hires_defaults

        req = with_hires_defaults(req, native or d)
    return req


def pass_steps(req: GenerationRequest) -> int:
    """The sampling steps of a completed request's (first) pass: its steps, or for
    img2img the window its denoising strength picks (start.strength_window)."""
    if not req.refines:
        return req.steps
    return strength_window(req.steps, float(req.denoising_strength), req.exact_steps).steps_run


def hires_steps_run(req: GenerationRequest) -> int:
    """The steps a completed request's hires pass runs (0 without the hires fix)."""
    if not req.hires:
        return 0
    if req.hires_steps is None or req.hires_strength is None:  # not completed yet: the usual defaults, for a queue's estimate
        from .hires import with_hires_defaults

        req = with_hires_defaults(req, FamilyDefaults(req.width or 512, req.height or 512))
    return strength_window(req.hires_steps or req.steps, float(req.hires_strength)).steps_run


def planned_steps(req: GenerationRequest) -> int:
    """The sampling steps a completed request runs per batch, over both passes of a hires fix."""
    return pass_steps(req) + hires_steps_run(req)


def unet_calls(req: GenerationRequest) -> int:
    """Model calls per image and CFG pass of a completed request's first pass (at its
    size): second-order samplers call the UNet twice a step (DPM adaptive: its usual
    three per step).  The hires pass is counted apart, at its own size (Engine.estimate_time)."""
    sampler, _ = resolve_sampler(req.sampler, req.schedule)
    return pass_steps(req) * sampler.calls_per_step


def validate_request(req: GenerationRequest) -> None:
    """Range and name checks that need no model, with messages that say what to change.

    Fields left ``None`` (the model's defaults) are skipped, so a client can check a
    request before loading a multi-GB checkpoint; :meth:`Engine.complete` checks the
    completed request again, plus what depends on the model (clip skip, memory, time).
    Every client (CLI, native API) shows these messages."""
    for name in ("width", "height"):
        v = getattr(req, name)
        if v is None:
            continue
        if not isinstance(v, int) or isinstance(v, bool):
            raise RequestError(f"{name} must be a whole number of pixels; got {v!r}.")
        if v % 8:
            lo, hi = v // 8 * 8, v // 8 * 8 + 8
            raise RequestError(f"{name} must be a multiple of 8 (the VAE works on 8x8 pixel blocks); got {v}. Try {lo} or {hi}.")
        if not MIN_SIDE <= v <= MAX_SIDE:
            raise RequestError(f"{name} must be between {MIN_SIDE} and {MAX_SIDE} pixels; got {v}.")
    if req.steps is not None and (not isinstance(req.steps, int) or isinstance(req.steps, bool) or not 1 <= req.steps <= MAX_STEPS):
        raise RequestError(f"steps must be a whole number from 1 to {MAX_STEPS}; got {req.steps!r}. 20-30 is typical.")
    if req.cfg_scale is not None and not 0 <= float(req.cfg_scale) <= 30:
        raise RequestError(f"CFG scale must be between 0 and 30; got {req.cfg_scale}. 4-7 is typical.")
    g = req.distilled_cfg_scale
    if g is not None and (isinstance(g, bool) or not isinstance(g, (int, float)) or not 0 <= g <= 30):
        raise RequestError(f"distilled CFG scale must be between 0 and 30; got {g!r}. 3.5 is Flux.1 dev's default; 2-4 looks natural, higher follows the prompt harder.")
    if not 1 <= req.batch_size <= MAX_BATCH_SIZE:
        raise RequestError(f"batch size must be from 1 to {MAX_BATCH_SIZE}; got {req.batch_size}. Use batch count for more images.")
    if not 1 <= req.batch_count <= MAX_BATCH_COUNT:
        raise RequestError(f"batch count must be from 1 to {MAX_BATCH_COUNT}; got {req.batch_count}.")
    if req.clip_skip is not None and (not isinstance(req.clip_skip, int) or isinstance(req.clip_skip, bool) or not 1 <= req.clip_skip <= MAX_CLIP_SKIP):
        raise RequestError(f"clip skip must be from 1 to {MAX_CLIP_SKIP}; got {req.clip_skip}. 1 (the last layer) is the default; 2 is common for anime models.")
    if req.rng not in RNG_SOURCES:
        raise RequestError(f"rng (where the noise comes from) must be one of {', '.join(RNG_SOURCES)}; got {req.rng!r}. CPU gives the same picture on any machine; GPU and NV re-create AUTOMATIC1111's NVIDIA noise.")
    if not isinstance(req.ensd, int) or isinstance(req.ensd, bool) or not 0 <= req.ensd <= MAX_SEED:
        raise RequestError(f"ENSD (eta noise seed delta) must be a whole number from 0 to {MAX_SEED}; got {req.ensd!r}. 0 turns it off; 31337 is the usual value.")
    resolve_seed(req.seed if req.seed != -1 else 0)
    if not isinstance(req.subseed, int) or isinstance(req.subseed, bool) or not -1 <= req.subseed <= MAX_SEED:
        raise RequestError(f"variation seed must be -1 (random) or a whole number from 0 to {MAX_SEED}; got {req.subseed!r}.")
    s = req.subseed_strength
    if isinstance(s, bool) or not isinstance(s, (int, float)) or not 0 <= s <= 1:
        raise RequestError(f"variation strength must be between 0 and 1; got {s!r}. 0 is the seed alone, 1 the variation seed alone; 0.05-0.3 gives small variations.")
    for name in ("seed_resize_from_w", "seed_resize_from_h"):
        v = getattr(req, name)
        if isinstance(v, bool) or not isinstance(v, int) or not (v <= 0 or MIN_SIDE <= v <= MAX_SIDE):
            raise RequestError(f"{name.replace('_', ' ')} must be 0 (off) or a size from {MIN_SIDE} to {MAX_SIDE} pixels; got {v!r}.")
    check_refine(req)
    check_hires(req)
    if req.sampler is not None:
        resolve_sampler(req.sampler, req.schedule)  # raises with the valid names
    elif req.schedule is not None:
        resolve_schedule(req.schedule)
