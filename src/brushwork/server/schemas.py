"""Request bodies of the native API, with the ranges a form needs, and the rules
every answer follows at the HTTP boundary.

The native API is strict: JSON numbers must be numbers, unknown fields are
refused (a typo like ``stpes`` would otherwise be silently ignored), and
numbers must be finite (Python's JSON reader accepts ``NaN`` and ``Infinity``).
The AUTOMATIC1111 bodies live in ``a1111.py`` and follow that API's lax rules.

What goes out: no absolute paths (:func:`public_path`, :func:`public_text`:
clients see paths relative to the data home) and no non-finite numbers
(:func:`finite`: JSON has none, so they become null).
"""
from __future__ import annotations

import difflib
import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from ..engine import MAX_BATCH_COUNT, MAX_BATCH_SIZE, MAX_CLIP_SKIP, MAX_SEED, MAX_SIDE, MAX_STEPS, MIN_SIDE, GenerationRequest, RequestError, validate_request
from ..init_image import MAX_BASE64_CHARS, ImageInputError, decode_base64_image
from ..lora import lora_files
from ..prompts import extract_extra_networks
from ..sampling.registry import resolve_sampler

MAX_PROMPT_CHARS = 100_000
#: an infotext is a prompt, a negative prompt and one line of settings
MAX_INFOTEXT_CHARS = 2 * MAX_PROMPT_CHARS + 16_384
#: the largest id SQLite can hold (a signed 64-bit integer)
MAX_DB_ID = 2**63 - 1
#: prompt styles one request may name, and the longest name
MAX_STYLES = 32
MAX_STYLE_NAME = 200
#: how deeply free-form JSON (AUTOMATIC1111's override_settings and the like) may nest
MAX_JSON_DEPTH = 32


class BadRequest(ValueError):
    """A request that is well-formed JSON but asks for something impossible; ``field`` names the culprit."""

    def __init__(self, message: str, field: Optional[str] = None):
        super().__init__(message)
        self.field = field


class GenerateBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    prompt: str = Field("", max_length=MAX_PROMPT_CHARS, description="positive prompt, AUTOMATIC1111 syntax, <lora:name:weight> tags")
    negative_prompt: str = Field("", max_length=MAX_PROMPT_CHARS)
    seed: int = Field(-1, ge=-1, le=MAX_SEED, description="-1: random")
    steps: Optional[int] = Field(None, ge=1, le=MAX_STEPS, description="null: the model's default")
    cfg_scale: Optional[float] = Field(None, ge=0, le=30)
    distilled_cfg_scale: Optional[float] = Field(None, ge=0, le=30, description="Flux.1 dev's distilled guidance (null: the model's default, 3.5); ignored by other models")
    sampler: Optional[str] = Field(None, max_length=64, description="e.g. 'DPM++ 2M' or 'DPM++ 2M Karras'")
    schedule: Optional[str] = Field(None, max_length=64, description="e.g. 'Karras'")
    width: Optional[int] = Field(None, ge=MIN_SIDE, le=MAX_SIDE, multiple_of=8)
    height: Optional[int] = Field(None, ge=MIN_SIDE, le=MAX_SIDE, multiple_of=8)
    batch_size: int = Field(1, ge=1, le=MAX_BATCH_SIZE)
    batch_count: int = Field(1, ge=1, le=MAX_BATCH_COUNT)
    clip_skip: Optional[int] = Field(None, ge=1, le=MAX_CLIP_SKIP, description="null: the model's default (its saved default, else 1)")
    vae: Optional[str] = Field(None, max_length=512, description="Automatic (null: a VAE file made for the checkpoint, else its own), None (its own) or a file of models/vae")
    styles: list[Annotated[str, Field(max_length=MAX_STYLE_NAME)]] = Field(default_factory=list, max_length=MAX_STYLES, description="saved prompt styles (GET /api/v1/styles), applied in order; an unknown name is a warning")
    rng: Literal["CPU", "GPU", "NV"] = Field("CPU", description="starting-noise source: CPU (default), GPU or NV (an NVIDIA GPU's numbers on any device)")
    ensd: int = Field(0, ge=0, le=MAX_SEED, description="AUTOMATIC1111's Eta noise seed delta")
    subseed: int = Field(-1, ge=-1, le=MAX_SEED, description="variation seed; -1: random")
    subseed_strength: float = Field(0.0, ge=0, le=1, description="how much of the variation seed's noise (0: off)")
    seed_resize_from_w: int = Field(0, ge=0, le=MAX_SIDE, description="make the noise as for this width (0: off)")
    seed_resize_from_h: int = Field(0, ge=0, le=MAX_SIDE)
    model: Optional[str] = Field(None, max_length=512, description="checkpoint name; null: the current one")
    # ---- img2img / inpaint / outpaint (docs/http-api.md)
    init_image: Optional[str] = Field(None, max_length=MAX_BASE64_CHARS, description="the picture to start from: base64 PNG/JPEG/WebP or a data: URL; null: txt2img. width/height null: its own size")
    mask: Optional[str] = Field(None, max_length=MAX_BASE64_CHARS, description="inpaint mask, base64 or data: URL, white = repaint; null: the init image's transparency, if any")
    denoising_strength: float = Field(0.75, ge=0, le=1, description="0 keeps the picture, 1 redraws it; steps x strength are run")
    exact_steps: bool = Field(False, description="run exactly `steps` steps whatever the strength")
    resize_mode: Literal["just resize", "crop and resize", "resize and fill", "latent upscale"] = "just resize"
    mask_blur: int = Field(4, ge=0, le=64, description="pixels")
    masked_content: Literal["original", "fill", "latent noise", "latent nothing"] = "original"
    inpaint_area: Literal["whole picture", "only masked"] = "whole picture"
    only_masked_padding: int = Field(32, ge=0, le=256, description="pixels")
    invert_mask: bool = False
    outpaint: Optional[dict[Literal["left", "right", "top", "bottom"], int]] = Field(None, description="pixels to add per side (multiples of 8); the new area is filled and inpainted")
    outpaint_fill: Literal["edge", "noise"] = "edge"
    # ---- hires fix (txt2img; null: the model family's default, docs/hires.md)
    hires: bool = Field(False, description="hires fix: generate, upscale, then refine at the larger size")
    hires_scale: Optional[float] = Field(None, ge=1, le=8)
    hires_resize_x: int = Field(0, ge=0, le=MAX_SIDE, description="target width instead of the scale (0: from the scale or the aspect)")
    hires_resize_y: int = Field(0, ge=0, le=MAX_SIDE)
    hires_upscaler: Optional[str] = Field(None, max_length=256, description="a latent mode or an upscaler (GET /api/v1/upscalers); null: Latent")
    hires_steps: Optional[int] = Field(None, ge=0, le=MAX_STEPS, description="0: the same as steps")
    hires_strength: Optional[float] = Field(None, ge=0, le=1, description="denoising strength of the hires pass")
    hires_sampler: Optional[str] = Field(None, max_length=64)
    hires_schedule: Optional[str] = Field(None, max_length=64)
    hires_prompt: str = Field("", max_length=MAX_PROMPT_CHARS)
    hires_negative_prompt: str = Field("", max_length=MAX_PROMPT_CHARS)
    hires_cfg: Optional[float] = Field(None, ge=0, le=30)

    def to_request(self) -> GenerationRequest:
        """The engine's request; the pictures decoded here (a bad one is a 400 naming its field)."""
        init = mask = None
        if self.init_image is not None:
            init = decode_picture(self.init_image, "init_image")
        if self.mask is not None:
            mask = decode_picture(self.mask, "mask")
        return GenerationRequest(
            prompt=self.prompt, negative_prompt=self.negative_prompt, seed=self.seed, steps=self.steps, cfg_scale=self.cfg_scale, distilled_cfg_scale=self.distilled_cfg_scale,
            sampler=self.sampler, schedule=self.schedule, width=self.width, height=self.height,
            batch_size=self.batch_size, batch_count=self.batch_count, clip_skip=self.clip_skip, vae=self.vae,
            styles=list(self.styles), rng=self.rng, ensd=self.ensd, subseed=self.subseed, subseed_strength=self.subseed_strength,
            seed_resize_from_w=self.seed_resize_from_w, seed_resize_from_h=self.seed_resize_from_h,
            init_image=init, mask=mask, denoising_strength=self.denoising_strength, exact_steps=self.exact_steps,
            resize_mode=self.resize_mode, mask_blur=self.mask_blur, masked_content=self.masked_content, inpaint_area=self.inpaint_area,
            only_masked_padding=self.only_masked_padding, invert_mask=self.invert_mask, outpaint=dict(self.outpaint) if self.outpaint else None,
            outpaint_fill=self.outpaint_fill,
            hires=self.hires, hires_scale=self.hires_scale, hires_resize_x=self.hires_resize_x, hires_resize_y=self.hires_resize_y,
            hires_upscaler=self.hires_upscaler, hires_steps=self.hires_steps, hires_strength=self.hires_strength, hires_sampler=self.hires_sampler,
            hires_schedule=self.hires_schedule, hires_prompt=self.hires_prompt, hires_negative_prompt=self.hires_negative_prompt, hires_cfg=self.hires_cfg,
        )


class UpscaleBody(BaseModel):
    """An upscale of a picture from the history (``image_id``) or sent (``image``)."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    image_id: Optional[int] = Field(None, ge=1, le=MAX_DB_ID, description="a picture of the history (GET /api/v1/images)")
    image: Optional[str] = Field(None, max_length=MAX_BASE64_CHARS, description="or a picture: base64 PNG/JPEG/WebP or a data: URL")
    upscaler: str = Field("Lanczos", max_length=256, description="GET /api/v1/upscalers")
    scale: float = Field(2.0, ge=1, le=8)
    width: Optional[int] = Field(None, ge=8, le=2 * MAX_SIDE, description="upscale to this size instead (with height)")
    height: Optional[int] = Field(None, ge=8, le=2 * MAX_SIDE)
    crop: bool = Field(True, description="to a size: cover it and cut the middle (false: stretch)")
    upscaler_2: str = Field("None", max_length=256)
    visibility_2: float = Field(0.0, ge=0, le=1)

    def settings(self):
        from ..postprocess import UpscaleSettings

        return UpscaleSettings(upscaler=self.upscaler, scale=self.scale, width=self.width, height=self.height, crop=self.crop, upscaler_2=self.upscaler_2, visibility_2=self.visibility_2)


class CompareBody(GenerateBody):
    """A comparison grid: the generation body (one picture per cell) plus the axes in
    the CLI's form, e.g. ``"Steps: 5,20,45"`` (docs/compare.md)."""

    x: str = Field(..., min_length=1, max_length=20_000, description="the axis across, 'Label: values'")
    y: Optional[str] = Field(None, max_length=20_000)
    z: Optional[str] = Field(None, max_length=20_000)
    vary_seeds: list[bool] = Field(default_factory=lambda: [False, False, False], min_length=3, max_length=3)
    keep_random_seeds: bool = False
    draw_legend: bool = True
    margin: int = Field(0, ge=0, le=256)

    def to_comparison(self):
        from ..compare.axes import AxisError, parse_axis
        from ..compare.job import Comparison

        axes = []
        for name in ("x", "y", "z"):
            text = getattr(self, name)
            try:
                axes.append(parse_axis(text) if text else None)
            except AxisError as exc:
                raise BadRequest(str(exc), name) from None
        if self.batch_size != 1 or self.batch_count != 1:
            raise BadRequest("a comparison makes one picture per cell: leave batch_size and batch_count at 1 (more seeds: a Seed axis)", "batch_size")
        cmp = Comparison(self.to_request(), *axes, vary_seeds=tuple(self.vary_seeds), keep_random_seeds=self.keep_random_seeds, draw_legend=self.draw_legend, margin=self.margin)
        check_comparison(cmp)
        return cmp


def check_comparison(cmp) -> None:
    """Plan the cells once (Prompt S/R strings, value ranges, the cell limit) and the
    grid's size: 400s before anything is queued."""
    from ..compare.axes import AxisError
    from ..compare.grid import GridTooLarge
    from ..compare.job import check_size, plan_cells

    try:
        cells = plan_cells(cmp)
        for cell in cells:
            validate_request(cell.request)
        # before a model is asked: sizes left to the model's default count as 1024
        check_size(cmp, [(c.request.width or 1024, c.request.height or 1024) for c in cells])
    except (AxisError, GridTooLarge, RequestError) as exc:
        raise BadRequest(str(exc), "x") from None


def decode_picture(text: str, field: str):
    """A base64 picture of a request (``field``: its name, e.g. ``init_image``,
    ``init_images``, ``mask``), decoded with its size checked first; a bad one is a
    400 naming the field."""
    try:
        return decode_base64_image(text, "mask" if field == "mask" else "init image" if field.startswith("init") else "picture")
    except ImageInputError as exc:
        raise BadRequest(str(exc), field) from None


#: pydantic error types whose message the engine's own wording replaces (the value
#: has the right type but is out of range): one set of messages for every client
_RANGE_ERRORS = {"greater_than", "greater_than_equal", "less_than", "less_than_equal", "multiple_of"}
_REFINE_FIELDS = {"denoising_strength", "mask_blur", "only_masked_padding"}
_REQUEST_FIELDS = {"seed", "steps", "cfg_scale", "distilled_cfg_scale", "width", "height", "batch_size", "batch_count", "clip_skip", "ensd", "subseed", "subseed_strength", "seed_resize_from_w", "seed_resize_from_h"} | _REFINE_FIELDS


def engine_message(loc, error_type: str, value: Any) -> Optional[str]:
    """The engine's message for an out-of-range GenerateBody field (``loc`` as in
    pydantic's errors, e.g. ``("body", "width")``), or None to keep pydantic's."""
    parts = [x for x in loc if x != "body"]
    if error_type not in _RANGE_ERRORS or len(parts) != 1 or parts[0] not in _REQUEST_FIELDS:
        return None
    picture = {"init_image": Image.new("RGB", (64, 64))} if parts[0] in _REFINE_FIELDS else {}
    try:
        validate_request(GenerationRequest(**picture, **{parts[0]: value}))
    except (RequestError, TypeError, ValueError) as exc:
        return str(exc) if isinstance(exc, RequestError) else None
    return None


class SwitchModelBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    name: str = Field(..., min_length=1, max_length=512)


class TokensBody(BaseModel):
    text: str = Field("", max_length=MAX_PROMPT_CHARS)


class PngInfoBody(BaseModel):
    image: str = Field(..., min_length=1, description="base64 PNG/JPEG/WebP, or a data: URL")


def check_names(home, req: GenerationRequest) -> None:
    """Sampler, schedule and LoRA names must exist: a 400 that lists the valid ones."""
    if req.sampler is not None or req.schedule is not None:
        try:
            resolve_sampler(req.sampler or "DPM++ 2M", req.schedule)
        except ValueError as exc:
            raise BadRequest(str(exc), "sampler" if req.sampler and "ampler" in str(exc) else "schedule") from None
    tags = extract_extra_networks(req.prompt)
    if tags.warnings:
        raise BadRequest(tags.warnings[0], "prompt")
    if req.hires:
        check_upscaler(home, req.hires_upscaler, "hires_upscaler")
    from ..vae_select import VaeNotFound, check_vae_name

    try:
        check_vae_name(home, req.vae)
    except VaeNotFound as exc:
        raise BadRequest(public_text(home, str(exc)), "vae") from None
    known = lora_files(home)
    for tag in (t for t in tags.networks if t.kind == "lora"):
        if tag.name.lower() not in known:
            close = difflib.get_close_matches(tag.name.lower(), list(known), n=3, cutoff=0.5)
            hint = f" Did you mean {', '.join(close)}?" if close else (" No LoRAs are installed." if not known else f" Installed: {', '.join(sorted(known)[:20])}.")
            raise BadRequest(f"unknown LoRA {tag.name!r} in the prompt.{hint} LoRA files go in {home.lora_dirs[0]}.", "prompt")


def check_upscaler(home, name: Optional[str], field: str) -> None:
    """An upscaler (or latent mode) name must exist: a 400 listing the available ones."""
    from ..upscale import UpscalerError, find_upscaler
    from ..upscale.latent import latent_mode_name

    if name is None or not name.strip() or latent_mode_name(name):
        return
    try:
        find_upscaler(home, name)
    except UpscalerError as exc:
        raise BadRequest(str(exc), field) from None


def check_upscale(home, settings, sizes: list[tuple[int, int]], fields: tuple[str, str, str] = ("scale", "upscaler", "upscaler_2")) -> None:
    """An upscale's ranges, its target for each picture size and its upscaler names:
    400s naming the client's fields (size field, first and second upscaler)."""
    from ..postprocess import check_settings, target_size

    try:
        check_settings(settings)
        for w, h in sizes:
            target_size(w, h, settings)
    except ValueError as exc:
        raise BadRequest(str(exc), fields[0]) from None
    check_upscaler(home, settings.upscaler, fields[1])
    if settings.visibility_2 > 0:
        check_upscaler(home, settings.upscaler_2, fields[2])


def check_request(req: GenerationRequest) -> None:
    """The checks that need no model (engine.validate_request) and those on the
    pictures (a mask that does not fit), as 400s naming the field, before queueing."""
    from ..masks import MaskError
    from ..refine import check_pictures

    try:
        validate_request(req)
        check_pictures(req)
    except MaskError as exc:
        raise BadRequest(str(exc), "mask") from None
    except ImageInputError as exc:
        raise BadRequest(str(exc), "outpaint" if "outpaint" in str(exc).lower() else "init_image") from None
    except RequestError as exc:
        text = str(exc)
        field = next((f for f, words in _MESSAGE_FIELDS if text.startswith(words)), None)
        raise BadRequest(text, field) from None


#: which field an engine message is about, by how it starts
_MESSAGE_FIELDS = (("denoising_strength", "denoising strength"), ("mask_blur", "mask blur"), ("only_masked_padding", "only masked padding"),
                   ("mask", "a mask needs"), ("outpaint", "outpaint"), ("resize_mode", "resize mode"), ("masked_content", "masked content"))


# ---------------------------------------------------------------- what goes out


def _home_roots(home) -> list[str]:
    """The data home as written in paths: as given and fully resolved, longest first."""
    root = Path(home.root)
    return sorted({str(root), str(root.resolve())}, key=len, reverse=True)


def public_path(home, path) -> str:
    """``path`` as HTTP clients see it: relative to the data home
    (``models/loras/x.safetensors``), or only the file name when it lies elsewhere."""
    p = Path(path)
    for root in _home_roots(home):
        if p.is_relative_to(root):
            return p.relative_to(root).as_posix()
    return p.name


def public_text(home, text: str) -> str:
    """``text`` (an error message, a warning) with the data home's absolute location
    cut out of the paths in it: ``/home/ann/.local/share/brushwork/models/loras``
    becomes ``models/loras``, the home itself "the data home"."""
    for root in _home_roots(home):
        inside = re.compile(re.escape(root) + r"[/\\]")
        bare = re.compile(re.escape(root) + r"(?=$|[\s'\",;:)\]]|\.(?:\s|$))")
        text = bare.sub("the data home", inside.sub("", text))
    return text


def nesting_depth(value: Any) -> int:
    """How deeply lists and objects nest in a JSON value (counted without recursion)."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, depth + 1)
            stack.extend((v, depth + 1) for v in (item.values() if isinstance(item, dict) else item))
    return deepest


def finite(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, +-Infinity) replaced by None,
    so that it serialises as strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value
