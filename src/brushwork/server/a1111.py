"""The AUTOMATIC1111-compatible subset under ``/sdapi/v1``.

Field names, defaults and response shapes follow AUTOMATIC1111 (see
docs/http-api.md for the list and for where we differ on purpose: unknown
samplers, models and unsupported features are clear 4xx errors instead of
silent fallbacks or 500s).  ``txt2img`` goes through the same job queue as the
native API and blocks until its job is done, as AUTOMATIC1111's does.

Like AUTOMATIC1111 (an older FastAPI), a body without a Content-Type is read as
JSON here; a body sent as another type (text/plain, a form) is a 415.

Errors on these routes carry AUTOMATIC1111's four keys, with the message where
the clients read it: ``detail`` and ``errors`` (a string), and ``error`` as an
object ``{"type", "message", "code"}``, because Open WebUI reads ``error["message"]`` (see
:func:`error_response`).  Routes of AUTOMATIC1111's API that Brushwork does not
have yet answer 501 naming the feature (:data:`NOT_YET`).
"""
from __future__ import annotations

import base64
import datetime as _dt
import json
import logging
import os
import re
import time
from typing import Annotated, Any, Callable, Optional

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .. import __version__
from ..embeddings import embedding_files
from ..engine import MAX_SEED, MAX_SIDE, MAX_STEPS, MIN_SIDE, GenerationRequest
from ..infotext import RNG_SOURCES, parse_infotext
from ..lora import listed_metadata, lora_files
from ..prompts.styles import StylesFileError, read_styles
from ..sampling.registry import SAMPLERS
from ..sampling.schedules import SCHEDULE_LABELS
from ..init_image import MAX_BASE64_CHARS
from ..refine import GENERATION_KINDS
from .schemas import MAX_BATCH_COUNT, MAX_BATCH_SIZE, MAX_INFOTEXT_CHARS, MAX_JSON_DEPTH, MAX_PROMPT_CHARS, BadRequest, check_names, check_request, finite, nesting_depth, public_path, public_text
from .studio import Studio

log = logging.getLogger(__name__)

PREFIX = "/sdapi/v1"
DOCS = "docs/http-api.md"
_STATUS_NAMES = {
    400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound", 405: "MethodNotAllowed", 408: "RequestTimeout",
    409: "Conflict", 413: "PayloadTooLarge", 415: "UnsupportedMediaType", 422: "UnprocessableEntity", 429: "TooManyRequests",
    500: "InternalServerError", 501: "NotImplemented", 507: "InsufficientStorage",
}


def a1111_error(status: int, message: str, kind: Optional[str] = None) -> dict[str, Any]:
    """The error body of the ``/sdapi/v1`` routes.

    AUTOMATIC1111 sends ``{"error": <exception class>, "detail": <message>, "body": "",
    "errors": <message>}``.  The message stays in ``detail`` and ``errors`` (what
    webuiapi, SillyTavern and most scripts show: the body text, or ``detail``), but
    ``error`` is an object ``{"type": <name>, "message": <message>, "code": <status>}``: Open WebUI
    (0.5/0.6, ``routers/images.py``) reads ``data["error"]["message"]`` from a failed
    txt2img, and crashes with a 500 on AUTOMATIC1111's plain string."""
    name = kind or _STATUS_NAMES.get(status, "HTTPException")
    return {"detail": message, "error": {"type": name, "message": message, "code": status}, "errors": message, "body": ""}


def error_response(request: Request, status: int, message: str, field: Optional[str] = None, headers: Optional[dict[str, str]] = None) -> JSONResponse:
    """AUTOMATIC1111's error shape (:func:`a1111_error`) on its routes, ``{"detail": ...}``
    elsewhere.  Every error answer passes here, so this is where the data home's
    location is cut out."""
    studio = getattr(request.app.state, "studio", None)
    if studio is not None:
        message = public_text(studio.home, message)
    if request.url.path.startswith(PREFIX):
        return JSONResponse(a1111_error(status, message), status_code=status, headers=headers)
    body: dict[str, Any] = {"detail": message}
    if field:
        body["field"] = field
    return JSONResponse(body, status_code=status, headers=headers)


def validation_body(errors: list[dict[str, Any]], message: str) -> dict[str, Any]:
    """A 422 for a body that failed validation on ``/sdapi/v1``: FastAPI's ``detail`` list
    (what AUTOMATIC1111 sends, and what clients written against FastAPI parse), plus the
    readable ``message`` and the ``error``/``errors``/``body`` keys of :func:`a1111_error`."""
    body = a1111_error(422, message, "RequestValidationError")
    body["detail"] = [{k: v for k, v in e.items() if k in ("loc", "msg", "type")} for e in errors]
    return {"detail": body.pop("detail"), "message": message, **body}


#: a prompt style name as sent in ``styles``
StyleName = Annotated[str, Field(max_length=256)]


class Txt2ImgBody(BaseModel):
    """AUTOMATIC1111's txt2img request: every field optional, unknown keys ignored."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    prompt: str = Field("", max_length=MAX_PROMPT_CHARS)
    negative_prompt: str = Field("", max_length=MAX_PROMPT_CHARS)
    styles: Optional[list[StyleName]] = Field(None, max_length=64)
    seed: int = Field(-1, ge=-1, le=MAX_SEED)
    subseed: int = Field(-1, ge=-1, le=MAX_SEED)
    subseed_strength: float = Field(0.0, ge=0, le=1)
    seed_resize_from_h: int = -1
    seed_resize_from_w: int = -1
    sampler_name: Optional[str] = Field(None, max_length=64)
    scheduler: Optional[str] = Field(None, max_length=64)
    batch_size: int = Field(1, ge=1, le=MAX_BATCH_SIZE)
    n_iter: int = Field(1, ge=1, le=MAX_BATCH_COUNT)
    steps: int = Field(50, ge=1, le=MAX_STEPS)
    cfg_scale: float = Field(7.0, ge=0, le=30)
    distilled_cfg_scale: float = Field(3.5, ge=0, le=30)  # Forge's field: Flux.1 dev's distilled guidance (other models ignore it)
    # not necessarily multiples of 8: rounded down like AUTOMATIC1111 (txt2img says so in info)
    width: int = Field(512, ge=MIN_SIDE, le=MAX_SIDE)
    height: int = Field(512, ge=MIN_SIDE, le=MAX_SIDE)
    restore_faces: Optional[bool] = None
    tiling: Optional[bool] = None
    do_not_save_samples: bool = False
    do_not_save_grid: bool = False
    eta: Optional[float] = None
    denoising_strength: Optional[float] = None
    s_min_uncond: Optional[float] = None
    s_churn: Optional[float] = None
    s_tmax: Optional[float] = None
    s_tmin: Optional[float] = None
    s_noise: Optional[float] = None
    override_settings: Optional[dict[str, Any]] = None
    override_settings_restore_afterwards: bool = True
    refiner_checkpoint: Optional[str] = Field(None, max_length=512)
    refiner_switch_at: Optional[float] = None
    disable_extra_networks: bool = False
    comments: Optional[dict[str, Any]] = None
    enable_hr: bool = False
    firstphase_width: int = 0
    firstphase_height: int = 0
    hr_scale: float = 2.0
    hr_upscaler: Optional[str] = None
    hr_second_pass_steps: int = 0
    hr_resize_x: int = 0
    hr_resize_y: int = 0
    hr_checkpoint_name: Optional[str] = Field(None, max_length=512)
    hr_sampler_name: Optional[str] = Field(None, max_length=64)
    hr_scheduler: Optional[str] = Field(None, max_length=64)
    hr_prompt: str = Field("", max_length=MAX_PROMPT_CHARS)
    hr_negative_prompt: str = Field("", max_length=MAX_PROMPT_CHARS)
    hr_cfg: Optional[float] = Field(None, ge=0, le=30)  # Forge's hires CFG scale
    force_task_id: Optional[str] = Field(None, max_length=256)
    sampler_index: str = Field("Euler", max_length=64)
    script_name: Optional[str] = Field(None, max_length=256)
    script_args: list[Any] = Field(default_factory=list)
    send_images: bool = True
    save_images: bool = False
    alwayson_scripts: dict[str, Any] = Field(default_factory=dict)
    infotext: Optional[str] = Field(None, max_length=MAX_INFOTEXT_CHARS)

    @model_validator(mode="before")
    @classmethod
    def _not_too_deep(cls, data: Any) -> Any:
        if nesting_depth(data) > MAX_JSON_DEPTH:
            raise ValueError(f"the request nests lists/objects more than {MAX_JSON_DEPTH} levels deep; no setting needs that")
        return data


class Img2ImgBody(Txt2ImgBody):
    """AUTOMATIC1111's img2img request: txt2img's fields plus the picture, the mask and
    the inpaint settings (numbers as A1111 sends them: resize_mode 0-3, inpainting_fill 0-3)."""

    init_images: Optional[list[Annotated[str, Field(max_length=MAX_BASE64_CHARS)]]] = Field(None, max_length=16)
    resize_mode: int = Field(0, ge=0, le=3)
    denoising_strength: Optional[float] = Field(0.75, ge=0, le=1)
    image_cfg_scale: Optional[float] = None
    mask: Optional[str] = Field(None, max_length=MAX_BASE64_CHARS)
    mask_blur_x: int = Field(4, ge=0, le=64)
    mask_blur_y: int = Field(4, ge=0, le=64)
    mask_blur: Optional[int] = Field(None, ge=0, le=64)
    mask_round: bool = True
    inpainting_fill: int = Field(0, ge=0, le=3)
    inpaint_full_res: bool = True
    inpaint_full_res_padding: int = Field(0, ge=0, le=256)
    inpainting_mask_invert: int | bool = Field(0, ge=0, le=1)
    initial_noise_multiplier: Optional[float] = None
    latent_mask: Optional[str] = None
    include_init_images: bool = False


#: script_name values that mean AUTOMATIC1111's X/Y/Z plot
XYZ_SCRIPT_NAMES = ("x/y/z plot", "xyz plot", "x/y/z")


def _comparison(req: GenerationRequest, script_args: list, mode: str):
    """The comparison an X/Y/Z plot request asks for, checked (a 400 naming the
    problem), and whether its single pictures are wanted too."""
    from ..compare.axes import AxisError, script_args_to_axes
    from ..compare.job import Comparison
    from .schemas import check_comparison

    try:
        x, y, z, options = script_args_to_axes(script_args, mode)
    except AxisError as exc:
        raise BadRequest(str(exc), "script_args") from None
    if req.batch_size != 1 or req.batch_count != 1:
        raise BadRequest("X/Y/Z plot: Brushwork makes one picture per cell; send batch_size 1 and n_iter 1 (more seeds: a Seed axis)", "batch_size")
    cmp = Comparison(req, x, y, z, vary_seeds=(options["vary_seeds_x"], options["vary_seeds_y"], options["vary_seeds_z"]),
                     keep_random_seeds=options["no_fixed_seeds"], draw_legend=options["draw_legend"], margin=options["margin_size"])
    check_comparison(cmp)
    return cmp, bool(options["include_lone_images"])


def _refine_fields(body: Img2ImgBody) -> dict[str, Any]:
    """GenerationRequest fields of an img2img body (pictures decoded; a bad one is a
    400 naming its field).  A1111's inpaint_full_res default is true ("only masked")."""
    from ..init_image import RESIZE_MODES
    from ..masks import INPAINT_AREAS, MASKED_CONTENT
    from .schemas import decode_picture

    if body.image_cfg_scale not in (None, 1.0, 1.5):
        log.info("image_cfg_scale %s ignored: only instruct-pix2pix models use it", body.image_cfg_scale)
    if body.latent_mask:
        raise BadRequest("latent_mask (a second mask for the latents) is not supported; send only mask", "latent_mask")
    if body.initial_noise_multiplier not in (None, 1.0):
        raise BadRequest("initial_noise_multiplier other than 1 is not supported yet", "initial_noise_multiplier")
    if len(body.init_images or []) > 1:
        log.info("img2img got %d init images; Brushwork uses the first one", len(body.init_images))

    blur = body.mask_blur if body.mask_blur is not None else max(body.mask_blur_x, body.mask_blur_y)
    return {
        "init_image": decode_picture(body.init_images[0], "init_images"),
        "mask": decode_picture(body.mask, "mask") if body.mask else None,
        "denoising_strength": 0.75 if body.denoising_strength is None else body.denoising_strength,
        "resize_mode": RESIZE_MODES[body.resize_mode],
        "mask_blur": blur,
        "masked_content": MASKED_CONTENT[body.inpainting_fill],  # the same order as A1111's numbers
        "inpaint_area": INPAINT_AREAS[1 if body.inpaint_full_res else 0],
        "only_masked_padding": body.inpaint_full_res_padding,
        "invert_mask": bool(body.inpainting_mask_invert),
    }


def _extra_params(data: dict[str, str]) -> dict[str, Any]:
    """The refine and hires keys of a result's parsed infotext, as A1111's info.extra_generation_params."""
    from ..hires import HIRES_KEYS

    keys = ("Denoising strength", "Mask blur", "Inpaint area", "Masked area padding", "Masked content", "Mask mode", "Init image hash", *HIRES_KEYS)
    return {k: data[k] for k in keys if k in data}


def _same(value: Optional[str], same: str) -> Optional[str]:
    """None for an unset name or A1111's "Use same ..." choice."""
    return None if value is None or not value.strip() or value.strip().lower() == same.lower() else value


def _hires_fields(body: "Txt2ImgBody") -> dict[str, Any]:
    """GenerationRequest fields of A1111's hires fix (``enable_hr``); firstphase_* are
    legacy and ignored, as in current AUTOMATIC1111."""
    if not body.enable_hr:
        return {}
    return {
        "hires": True, "hires_scale": body.hr_scale, "hires_resize_x": body.hr_resize_x, "hires_resize_y": body.hr_resize_y,
        "hires_upscaler": body.hr_upscaler, "hires_steps": body.hr_second_pass_steps,
        "hires_strength": body.denoising_strength, "hires_sampler": _same(body.hr_sampler_name, "Use same sampler"),
        "hires_schedule": _same(body.hr_scheduler, "Use same scheduler"), "hires_prompt": body.hr_prompt or "",
        "hires_negative_prompt": body.hr_negative_prompt or "", "hires_cfg": body.hr_cfg,
    }


class ExtrasBody(BaseModel):
    """AUTOMATIC1111's extras fields (resize_mode 0: by upscaling_resize, 1: to
    upscaling_resize_w x _h); the face-restoration fields must stay 0."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    resize_mode: int = Field(0, ge=0, le=1)
    show_extras_results: bool = True
    gfpgan_visibility: float = Field(0, ge=0, le=1)
    codeformer_visibility: float = Field(0, ge=0, le=1)
    codeformer_weight: float = Field(0, ge=0, le=1)
    upscaling_resize: float = Field(2, ge=1, le=8)
    upscaling_resize_w: int = Field(512, ge=8, le=2 * MAX_SIDE)
    upscaling_resize_h: int = Field(512, ge=8, le=2 * MAX_SIDE)
    upscaling_crop: bool = True
    upscaler_1: str = Field("None", max_length=256)
    upscaler_2: str = Field("None", max_length=256)
    extras_upscaler_2_visibility: float = Field(0, ge=0, le=1)
    upscale_first: bool = False

    def settings(self):
        from ..postprocess import UpscaleSettings

        to = self.resize_mode == 1
        return UpscaleSettings(upscaler=self.upscaler_1 or "None", scale=self.upscaling_resize, width=self.upscaling_resize_w if to else None,
                               height=self.upscaling_resize_h if to else None, crop=self.upscaling_crop, upscaler_2=self.upscaler_2 or "None",
                               visibility_2=self.extras_upscaler_2_visibility)


class ExtrasSingleBody(ExtrasBody):
    image: str = Field("", max_length=MAX_BASE64_CHARS)


class ExtrasImage(BaseModel):
    data: str = Field(..., max_length=MAX_BASE64_CHARS)
    name: str = Field("", max_length=512)


class ExtrasBatchBody(ExtrasBody):
    imageList: list[ExtrasImage] = Field(default_factory=list, max_length=16)


def _extras_unsupported(body: ExtrasBody) -> Optional[str]:
    if body.gfpgan_visibility or body.codeformer_visibility:
        return "face restoration (gfpgan_visibility / codeformer_visibility) is not supported: Brushwork has no face restorer yet (GET /sdapi/v1/face-restorers lists none); send 0"
    return None


def _extras_info(body: ExtrasBody) -> str:
    s = body.settings()
    how = f"to {s.width}x{s.height}" if s.to_size else f"by {s.scale:g}"
    return f"<p>Postprocess upscale {how}, Postprocess upscaler: {s.upscaler}</p>"


class PngInfoRequest(BaseModel):
    image: str = Field("", description="base64 or data: URL")


#: infotext key -> (request field, converter), for the ``infotext`` request field
_FROM_INFOTEXT = {
    "Prompt": ("prompt", str),
    "Negative prompt": ("negative_prompt", str),
    "Steps": ("steps", int),
    "Sampler": ("sampler_name", str),
    "Schedule type": ("scheduler", str),
    "CFG scale": ("cfg_scale", float),
    "Distilled CFG Scale": ("distilled_cfg_scale", float),
    "Seed": ("seed", int),
    "Size-1": ("width", int),
    "Size-2": ("height", int),
    "Denoising strength": ("denoising_strength", float),
    "Hires upscale": ("hr_scale", float),
    "Hires resize-1": ("hr_resize_x", int),
    "Hires resize-2": ("hr_resize_y", int),
    "Hires steps": ("hr_second_pass_steps", int),
    "Hires upscaler": ("hr_upscaler", str),
    "Hires sampler": ("hr_sampler_name", str),
    "Hires schedule type": ("hr_scheduler", str),
    "Hires prompt": ("hr_prompt", str),
    "Hires negative prompt": ("hr_negative_prompt", str),
    "Hires CFG Scale": ("hr_cfg", float),
}

#: settings a POST may send only with the value GET reports (or one of those listed):
#: we cannot honour others (a 400 says so)
_SETTINGS_FIXED: dict[str, Any] = {"samples_format": "png", "emphasis": "Original", "comma_padding_backtrack": 20, "enable_pnginfo": True, "live_previews_enable": True}
#: settings GET reports that follow from others: a POST may send them back with any value
#: (Open WebUI sends the old model's hash together with the new model), they are ignored
_SETTINGS_DERIVED = ("sd_checkpoint_hash",)
CLIP_SKIP_RANGE = (1, 12)


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_clip_skip(value: Any, where: str = "CLIP_stop_at_last_layers") -> int:
    low, high = CLIP_SKIP_RANGE
    if not _whole(value) or not low <= value <= high:
        raise BadRequest(f"{where} must be a whole number from {low} to {high}; got {_shown(value)}")
    return value


def check_rng(value: Any, where: str = "randn_source") -> str:
    if value not in RNG_SOURCES:
        raise BadRequest(f"{where} must be one of {', '.join(map(repr, RNG_SOURCES))}; got {_shown(value)}")
    return value


def check_ensd(value: Any, where: str = "eta_noise_seed_delta") -> int:
    if not _whole(value) or not 0 <= value <= MAX_SEED:
        raise BadRequest(f"{where} must be a whole number from 0 to {MAX_SEED}; got {_shown(value)}")
    return value


def check_preview_every(value: Any, where: str = "show_progress_every_n_steps") -> int:
    if not _whole(value) or value < 1:
        raise BadRequest(f"{where} must be a whole number of at least 1; got {_shown(value)}")
    return value


#: settings a POST may change (and txt2img's ``override_settings`` may set per request), with their checks
_SETTINGS_STORED: dict[str, Callable[[Any, str], Any]] = {
    "CLIP_stop_at_last_layers": check_clip_skip,
    "randn_source": check_rng,
    "eta_noise_seed_delta": check_ensd,
    "show_progress_every_n_steps": check_preview_every,
}
#: ... of which these apply to a single txt2img through ``override_settings``
_PER_REQUEST = ("CLIP_stop_at_last_layers", "randn_source", "eta_noise_seed_delta", "sd_vae")

#: AUTOMATIC1111 routes Brushwork does not have (yet): method, path, what is missing.
#: They answer 501 with that text instead of a bare "Not Found".
NOT_YET: tuple[tuple[str, str, str], ...] = (
    ("POST", "/interrogate", "interrogate (CLIP / DeepDanbooru captions of an image) is not implemented in Brushwork"),
    ("POST", "/create/embedding", "creating textual-inversion embeddings is not implemented in Brushwork"),
    ("POST", "/create/hypernetwork", "hypernetworks are not supported by Brushwork"),
    ("POST", "/train/embedding", "training textual-inversion embeddings is not implemented in Brushwork; `brushwork train-lora` trains LoRAs"),
    ("POST", "/train/hypernetwork", "hypernetworks are not supported by Brushwork"),
    ("POST", "/unload-checkpoint", "unloading the model is not implemented: Brushwork keeps one model loaded; switching with POST /sdapi/v1/options frees the previous one"),
    ("POST", "/reload-checkpoint", "reloading the model is not implemented: Brushwork keeps one model loaded; switching with POST /sdapi/v1/options frees the previous one"),
    ("POST", "/server-kill", "stopping the server over HTTP is not implemented; stop `brushwork serve` with Ctrl+C or SIGTERM"),
    ("POST", "/server-restart", "restarting the server over HTTP is not implemented; stop `brushwork serve` with Ctrl+C or SIGTERM and start it again"),
    ("POST", "/server-stop", "stopping the server over HTTP is not implemented; stop `brushwork serve` with Ctrl+C or SIGTERM"),
)

#: AUTOMATIC1111 has a "None" upscaler (no upscaling) whatever is installed
_NO_UPSCALER = {"name": "None", "model_name": None, "model_path": None, "model_url": None, "scale": 4}
_SAFE_KEY = re.compile(r"[^A-Za-z0-9_.-]")


def unsupported(body: Txt2ImgBody) -> Optional[str]:
    """The first requested feature we do not have yet (a 400, never silently dropped)."""
    checks = [
        (body.enable_hr and (body.hr_checkpoint_name or "Use same checkpoint") != "Use same checkpoint",
         "a separate hires checkpoint (hr_checkpoint_name) is not supported: the hires pass uses the request's model; send hr_checkpoint_name null"),
        (body.restore_faces, "face restoration (restore_faces) is not supported: Brushwork has no face restorer yet (GET /sdapi/v1/face-restorers lists none); send restore_faces false"),
        (body.tiling, "tiling is not supported yet"),
        (bool(body.refiner_checkpoint), "the SDXL refiner (refiner_checkpoint) is not supported yet"),
    ]
    return next((msg for cond, msg in checks if cond), None)


def rounded_size(width: int, height: int) -> tuple[int, int, Optional[str]]:
    """AUTOMATIC1111 makes pictures of the requested size rounded down to a multiple of
    8 (the latent is 1/8 the size); the note says so when it changed anything."""
    w, h = width // 8 * 8, height // 8 * 8
    if (w, h) == (width, height):
        return w, h, None
    return w, h, f"the size {width}x{height} was rounded down to {w}x{h} (a multiple of 8), as AUTOMATIC1111 does; width and height here are the real ones"


def router(studio: Studio) -> APIRouter:
    from .app import KeepAliveRoute

    r = APIRouter(prefix=PREFIX, tags=["AUTOMATIC1111 compatible"], strict_content_type=False, route_class=KeepAliveRoute)
    settings: dict[str, Any] = {"CLIP_stop_at_last_layers": 1, "randn_source": GenerationRequest.rng, "eta_noise_seed_delta": GenerationRequest.ensd, "show_progress_every_n_steps": studio.preview_every,
                                "sd_vae": "Automatic"}

    def check_vae(value: Any, where: str = "sd_vae") -> str:
        """sd_vae: Automatic, None or a VAE file of the data home (GET /sd-vae lists them)."""
        from ..vae_select import VaeNotFound, check_vae_name

        if not isinstance(value, str):
            raise BadRequest(f"{where} must be a string (Automatic, None or a VAE file name from GET /sdapi/v1/sd-vae); got {_shown(value)}")
        try:
            check_vae_name(studio.home, value)
        except VaeNotFound as exc:
            raise BadRequest(f"{where}: {public_text(studio.home, str(exc))}") from None
        return value

    stored = {**_SETTINGS_STORED, "sd_vae": check_vae}

    @r.post("/txt2img")
    async def txt2img(body: Txt2ImgBody, request: Request) -> dict[str, Any]:
        """Blocks until the job is done, as AUTOMATIC1111's does, but waits on the event
        loop: many waiting clients hold no threads."""
        return await generate(body, request, None)

    @r.post("/img2img")
    async def img2img(body: Img2ImgBody, request: Request) -> dict[str, Any]:
        """img2img and inpainting (a ``mask``): the same job as txt2img, started from the
        first of ``init_images``."""
        if not body.init_images:
            return error_response(request, 404, "Init image not found: send the picture to start from in init_images (a list with one base64 PNG)", "init_images")
        refine = await run_in_threadpool(_refine_fields, body)
        return await generate(body, request, refine)

    async def generate(body: Txt2ImgBody, request: Request, refine: Optional[dict]) -> dict[str, Any]:
        from .app import client_of

        if body.infotext:  # parsing is linear, but a long text still takes a moment: not on the loop
            body = await run_in_threadpool(_apply_infotext, body)
        problem = unsupported(body)
        if problem:
            raise BadRequest(problem)
        xyz = body.script_name is not None and body.script_name.strip().lower() in XYZ_SCRIPT_NAMES
        if body.script_name and not xyz:
            return error_response(request, 422, f"script {body.script_name!r} not found: Brushwork has the X/Y/Z plot script only (GET /sdapi/v1/scripts)")
        if body.alwayson_scripts:
            names = ", ".join(body.alwayson_scripts)
            return error_response(request, 422, f"always-on script(s) {names} not found: Brushwork has no extensions (GET /sdapi/v1/scripts lists none)")
        per_request = {k: settings[k] for k in _PER_REQUEST}
        model = None
        for key, value in (body.override_settings or {}).items():
            if key == "sd_model_checkpoint":
                model = _checkpoint_name(value, "override_settings.sd_model_checkpoint")
            elif key in per_request:
                per_request[key] = stored[key](value, f"override_settings.{key}")
        sampler = body.sampler_name or body.sampler_index
        prompt = body.prompt
        if body.disable_extra_networks:
            from ..prompts import extract_extra_networks

            prompt = extract_extra_networks(prompt).text
        width, height, size_note = rounded_size(body.width, body.height)
        clip_skip = per_request["CLIP_stop_at_last_layers"]
        req = GenerationRequest(
            prompt=prompt, negative_prompt=body.negative_prompt, seed=body.seed,
            steps=body.steps, cfg_scale=body.cfg_scale, distilled_cfg_scale=body.distilled_cfg_scale, sampler=sampler, schedule=body.scheduler, width=width,
            height=height, batch_size=body.batch_size, batch_count=body.n_iter, clip_skip=clip_skip, vae=per_request["sd_vae"],
            styles=list(body.styles or []), rng=per_request["randn_source"], ensd=per_request["eta_noise_seed_delta"],
            subseed=body.subseed, subseed_strength=body.subseed_strength or 0.0,
            seed_resize_from_w=max(body.seed_resize_from_w, 0), seed_resize_from_h=max(body.seed_resize_from_h, 0),
            **(refine or {}), **(_hires_fields(body) if refine is None else {}),
        )
        check_names(studio.home, req)
        await run_in_threadpool(check_request, req)
        lone = True
        if xyz:
            cmp, lone = await run_in_threadpool(_comparison, req, body.script_args, "img2img" if refine else "txt2img")
            job = studio.submit_compare(cmp, client_of(request), model=model)
        else:
            job = studio.submit(req, client_of(request), model=model)
        job = await studio.wait_async(job.id)
        if job.state == "failed":
            status = 400 if job.error_kind == "request" else 500
            return error_response(request, status, job.error or "generation failed")
        records = studio.images(job.id)
        if xyz:  # A1111: the grid first, the cells only with "include lone images"
            grids = [r for r in records if r.path.startswith("outputs/grids/")]
            records = grids + ([r for r in records if r not in grids] if lone else [])
        if job.state == "cancelled":
            kept = f"; the {len(records)} picture(s) finished before are kept in the history (GET /api/v1/jobs/{job.id})" if records else "; nothing was made"
            return error_response(request, 409, f"the job was {job.error or 'cancelled before it finished'}{kept}")
        images = []
        if body.send_images:
            root = studio.home.root
            for rec in records:
                data = await run_in_threadpool((root / rec.path).read_bytes)
                images.append(base64.b64encode(data).decode())
        seeds = [rec.seed for rec in records]
        # the pictures' own parameters (variation seeds, refine keys), read off the event loop
        parsed = await run_in_threadpool(lambda: [parse_infotext(rec.infotext) for rec in records]) if (refine or body.subseed_strength or body.enable_hr or "VAE: " in (records[0].infotext if records else "")) else []
        subseeds = [int(p["Variation seed"]) for p in parsed if "Variation seed" in p]
        warnings = ([size_note] if size_note else []) + [public_text(studio.home, w) for w in job.warnings]
        info = {
            "prompt": body.prompt,
            "all_prompts": [rec.prompt for rec in records],
            "negative_prompt": body.negative_prompt,
            "all_negative_prompts": [rec.negative_prompt for rec in records],
            "seed": seeds[0] if seeds else job.request.get("seed"),
            "all_seeds": seeds,
            "subseed": subseeds[0] if subseeds else body.subseed,
            "all_subseeds": subseeds or [-1] * len(seeds),
            "subseed_strength": body.subseed_strength,
            "width": width,
            "height": height,
            "sampler_name": sampler,
            "cfg_scale": body.cfg_scale,
            "distilled_cfg_scale": body.distilled_cfg_scale,
            "steps": body.steps,
            "batch_size": body.batch_size,
            "restore_faces": False,
            "face_restoration_model": None,
            "sd_model_name": job.model,
            "sd_model_hash": job.model_hash,
            "sd_vae_name": parsed[0].get("VAE") if parsed else None,
            "sd_vae_hash": parsed[0].get("VAE hash") if parsed else None,
            "seed_resize_from_w": body.seed_resize_from_w,
            "seed_resize_from_h": body.seed_resize_from_h,
            "denoising_strength": body.denoising_strength,
            "extra_generation_params": _extra_params(parsed[0]) if parsed and (refine or body.enable_hr) else {},
            "index_of_first_image": 0,
            "infotexts": [rec.infotext for rec in records],
            "styles": list(body.styles or []),
            "job_timestamp": _dt.datetime.fromtimestamp(job.submitted).strftime("%Y%m%d%H%M%S"),
            "clip_skip": clip_skip,
            "is_using_inpainting_conditioning": bool(refine) and getattr(getattr(getattr(studio.engine, "model", None), "spec", None), "inpainting", False),
            "version": f"brushwork {__version__}",
            "interrupted": job.state == "interrupted",
            "warnings": warnings,
        }
        # strict JSON: a client's JSON reader refuses NaN/Infinity in the info string
        parameters = body.model_dump()
        if refine is not None and not getattr(body, "include_init_images", False):
            parameters["init_images"], parameters["mask"] = None, None  # as A1111: not echoed unless asked
        return {"images": images, "parameters": finite(parameters), "info": json.dumps(finite(info), allow_nan=False)}

    @r.get("/progress")
    def progress(skip_current_image: bool = False) -> dict[str, Any]:
        job, live = studio.current()
        idle = {"skipped": False, "interrupted": False, "stopping_generation": False, "job": "", "job_count": 0, "job_timestamp": "0", "job_no": 0, "sampling_step": 0, "sampling_steps": 0}
        if job is None or live is None or job.kind not in GENERATION_KINDS:
            return {"progress": 0.0, "eta_relative": 0.0, "state": idle, "current_image": None, "textinfo": None}
        steps = int(job.request.get("steps") or 0) or max(1, live.total)
        count = max(1, int(job.request.get("batch_count") or 1))
        done = live.step
        job_no = min(count - 1, done // steps) if steps else 0
        step_in = done - job_no * steps
        fraction = min(1.0, 0.01 + job_no / count + (1 / count) * (step_in / steps))
        elapsed = 0.0 if live.started is None else max(0.0, time.monotonic() - live.started)
        state = {
            "skipped": live.control.skipped, "interrupted": live.control.interrupted, "stopping_generation": False,
            "job": "img2img" if job.kind != "txt2img" else "txt2img", "job_count": count, "job_timestamp": _dt.datetime.fromtimestamp(job.submitted).strftime("%Y%m%d%H%M%S"),
            "job_no": job_no, "sampling_step": step_in, "sampling_steps": steps,
        }
        image = None if skip_current_image or live.preview is None else base64.b64encode(live.preview).decode()
        return {"progress": fraction, "eta_relative": elapsed / fraction - elapsed if fraction > 0 else 0.0, "state": state, "current_image": image, "textinfo": None}

    @r.post("/interrupt")
    def interrupt(request: Request) -> dict:
        """Stops the caller's own generation (see Studio.interrupt_client): never another
        client's, and a waiting one is cancelled before it starts."""
        from .app import client_of

        studio.interrupt_client(client_of(request))
        return {}

    @r.post("/skip")
    def skip(request: Request) -> None:
        """Skips the current batch of the caller's own running generation."""
        from .app import client_of

        studio.skip_client(client_of(request))
        return None

    @r.get("/sd-models")
    def sd_models() -> list[dict[str, Any]]:
        from .app import model_entries

        return [{"title": m["title"], "model_name": m["name"].replace("/", "_").replace("\\", "_"), "hash": m["hash"], "sha256": m["sha256"], "filename": public_path(studio.home, m["path"]), "config": None} for m in model_entries(studio)]

    @r.post("/refresh-checkpoints")
    def refresh_checkpoints() -> None:
        return None  # listings read the folders on every request

    @r.post("/refresh-vae")
    def refresh_vae() -> None:
        return None  # sd-vae reads the VAE folders on every request: nothing to re-read

    @r.post("/refresh-embeddings")
    def refresh_embeddings() -> None:
        return None  # the embeddings listing reads the folders on every request

    @r.get("/sd-vae")
    def sd_vae() -> list[dict[str, str]]:
        """The VAE files (HOME/models/vae and linked installs' VAE folders), as
        AUTOMATIC1111 lists them: the name to send as sd_vae, and the file."""
        from ..vae_select import vae_files

        return [{"model_name": name, "filename": public_path(studio.home, path)} for name, path in vae_files(studio.home).items()]

    @r.get("/sd-modules")
    def sd_modules() -> list[dict[str, str]]:
        return []  # Forge's separate VAE / text-encoder files: Brushwork has none

    @r.get("/loras")
    def loras() -> list[dict[str, Any]]:
        out = []
        for _, path in sorted(lora_files(studio.home).items()):
            meta = listed_metadata(path)  # {} for a damaged or unreadable file
            out.append({"name": path.stem, "alias": meta.get("ss_output_name") or path.stem, "path": public_path(studio.home, path), "metadata": meta})
        return out

    @r.post("/refresh-loras")
    def refresh_loras() -> None:
        return None

    @r.get("/embeddings")
    def embeddings() -> dict[str, Any]:
        return {"loaded": {name: {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": None, "shape": None, "vectors": None} for name in sorted(embedding_files(studio.home))}, "skipped": {}}

    @r.get("/samplers")
    def samplers() -> list[dict[str, Any]]:
        return [{"name": s.label, "aliases": list(s.aliases), "options": {"scheduler": s.default_schedule} if s.default_schedule != "uniform" else {}} for s in SAMPLERS.values()]

    @r.get("/schedulers")
    def schedulers() -> list[dict[str, Any]]:
        return [{"name": k, "label": v, "aliases": ["SGMUniform"] if k == "sgm_uniform" else None, "default_rho": {"karras": 7.0, "polyexponential": 1.0}.get(k, -1), "need_inner_model": False} for k, v in SCHEDULE_LABELS.items()]

    @r.get("/upscalers")
    def upscalers() -> list[dict[str, Any]]:
        """AUTOMATIC1111's shape: None, Lanczos, Nearest, then every model file found."""
        from .app import upscaler_list

        return [dict(_NO_UPSCALER) if u.name == "None" else
                {"name": u.name, "model_name": u.name if u.kind == "model" else None, "model_path": str(u.path) if u.path else None, "model_url": None, "scale": u.scale or 4}
                for u in upscaler_list(studio)]

    @r.get("/latent-upscale-modes")
    def latent_upscale_modes() -> list[dict[str, str]]:
        from ..upscale.latent import LATENT_UPSCALE_MODES

        return [{"name": m} for m in LATENT_UPSCALE_MODES]

    @r.get("/realesrgan-models")
    def realesrgan_models() -> list[dict[str, Any]]:
        """The upscaler files in models/RealESRGAN, in A1111's {name, path, scale} shape."""
        from .app import upscaler_list

        folder = studio.home.root / "models" / "RealESRGAN"
        return [{"name": u.name, "path": str(u.path), "scale": u.scale} for u in upscaler_list(studio) if u.path is not None and u.path.is_relative_to(folder)]

    @r.post("/extra-single-image")
    async def extra_single_image(body: ExtrasSingleBody, request: Request) -> dict[str, Any]:
        """Upscale one picture (A1111's extras); face restoration is a 400."""
        from .app import sent_picture

        picture = await run_in_threadpool(sent_picture, body.image, "image")
        images = await extras(body, [picture], request)
        return {"html_info": _extras_info(body), "image": images[0] if images else ""}

    @r.post("/extra-batch-images")
    async def extra_batch_images(body: ExtrasBatchBody, request: Request) -> dict[str, Any]:
        from .app import sent_picture

        if not body.imageList:
            raise BadRequest("imageList is empty: send [{\"data\": base64 PNG, \"name\": \"a.png\"}, ...]", "imageList")
        pictures = [await run_in_threadpool(sent_picture, item.data, f"imageList[{i}].data") for i, item in enumerate(body.imageList)]
        return {"html_info": _extras_info(body), "images": await extras(body, pictures, request)}

    async def extras(body: "ExtrasBody", pictures: list[tuple[Any, str]], request: Request) -> list[str]:
        """Each picture an upscale job (the worker runs it, as a generation), then the
        results as base64 PNGs; the pictures' own infotexts are kept."""
        from .app import client_of
        from .schemas import check_upscale

        problem = _extras_unsupported(body)
        if problem:
            raise BadRequest(problem)
        settings = body.settings()
        check_upscale(studio.home, settings, [p.size for p, _ in pictures], ("upscaling_resize", "upscaler_1", "upscaler_2"))
        out = []
        for picture, info in pictures:
            job = studio.submit_upscale(picture, settings, client_of(request), infotext=info)
            job = await studio.wait_async(job.id)
            if job.state != "done":
                if job.error_kind == "request":
                    raise BadRequest(job.error or "the upscale failed")
                raise RuntimeError(job.error or f"the upscale was {job.state}")
            rec = studio.images(job.id)[0]
            data = await run_in_threadpool((studio.home.root / rec.path).read_bytes)
            out.append(base64.b64encode(data).decode())
        return out

    @r.get("/face-restorers")
    def face_restorers() -> list[dict[str, Any]]:
        return []  # no face restorer (restore_faces: true is a 400)

    @r.get("/hypernetworks")
    def hypernetworks() -> list[dict[str, Any]]:
        return []  # hypernetworks are not supported

    @r.get("/prompt-styles")
    def prompt_styles(request: Request):
        """The styles saved in HOME/styles.csv (AUTOMATIC1111's file format)."""
        try:
            styles = read_styles(studio.home.styles_file)
        except StylesFileError as exc:
            log.warning("prompt-styles: %s", exc)
            return error_response(request, 500, f"{exc}. Fix styles.csv in the data home (a header row name,prompt,negative_prompt, then one style per row) or move it away")
        return [{"name": st.name, "prompt": st.prompt, "negative_prompt": st.negative_prompt} for st in styles]

    @r.get("/scripts")
    def scripts() -> dict[str, list]:
        return {"txt2img": ["x/y/z plot"], "img2img": ["x/y/z plot"]}

    @r.get("/script-info")
    def script_info() -> list[dict[str, Any]]:
        return []

    @r.get("/extensions")
    def extensions() -> list[dict[str, Any]]:
        return []

    @r.get("/cmd-flags")
    def cmd_flags(request: Request) -> dict[str, Any]:
        """The AUTOMATIC1111 command-line flags clients read, as far as they mean anything
        here.  Credentials are never shown (AUTOMATIC1111 shows --api-auth's password);
        folders are relative to the data home."""
        host, port = (request.scope.get("server") or ("", None))[:2]
        home = studio.home
        return {
            "api": True,
            "nowebui": not any(getattr(route, "path", None) == "/" for route in request.app.routes),
            "listen": str(host) not in ("127.0.0.1", "::1", "localhost", "testserver"),
            "port": port,
            "share": False,
            "api_auth": None,
            "gradio_auth": None,
            "api_log": False,
            "data_dir": ".",
            "models_dir": "models",
            "ckpt_dir": public_path(home, home.checkpoint_dirs[0]),
            "lora_dir": public_path(home, home.lora_dirs[0]),
            "vae_dir": public_path(home, home.vae_dirs[0]),
            "embeddings_dir": public_path(home, home.embedding_dirs[0]),
            "hypernetwork_dir": None,
            "styles_file": [public_path(home, home.styles_file)],
            "medvram": False,
            "lowvram": False,
            "no_half": False,
            "brushwork_version": __version__,
            "brushwork_device": studio.engine.placement.label,
        }

    @r.get("/options")
    def get_options() -> dict[str, Any]:
        from .app import model_entries

        current = next((m for m in model_entries(studio) if m["current"]), None)
        return {
            "sd_model_checkpoint": current["title"] if current else studio.model_name(),
            "sd_checkpoint_hash": current["sha256"] if current else None,
            **{k: (v[0] if isinstance(v, tuple) else v) for k, v in _SETTINGS_FIXED.items()},
            **settings,
        }

    @r.post("/options")
    def set_options(body: dict[str, Any], response: Response) -> None:
        """Every key GET returns is accepted back: unchanged values do nothing, derived
        ones (sd_checkpoint_hash) are ignored; values we cannot honour are a 400 before
        anything changes; unknown keys are ignored with a log line (and named in the
        X-Brushwork-Ignored-Settings header)."""
        model = None
        changes: dict[str, Any] = {}
        ignored: list[str] = []
        for key, value in body.items():
            if key == "sd_model_checkpoint":
                model = _checkpoint_name(value, "sd_model_checkpoint")
            elif key in stored:
                changes[key] = stored[key](value, key)
            elif key in _SETTINGS_FIXED:
                allowed = _SETTINGS_FIXED[key] if isinstance(_SETTINGS_FIXED[key], tuple) else (_SETTINGS_FIXED[key],)
                if not any(value == a and type(value) is type(a) for a in allowed):
                    raise BadRequest(f"{key} can only be {' or '.join(map(repr, allowed))} in Brushwork; got {_shown(value)}")
            elif key not in _SETTINGS_DERIVED:
                ignored.append(key)
        resolved = studio.resolve_model(model) if model is not None else None  # an unknown model is a 404 before anything changes
        if ignored:
            shown = [_SAFE_KEY.sub("_", k)[:64] for k in ignored[:20]]
            log.warning("options POST: ignored %d setting(s) Brushwork does not have: %s%s", len(ignored), ", ".join(shown), " ..." if len(ignored) > 20 else "")
            response.headers["X-Brushwork-Ignored-Settings"] = ", ".join(shown)
        if resolved is not None:
            loaded = studio.engine.model
            unchanged = resolved == studio.model_name() and loaded is not None and loaded.name == resolved
            if not unchanged:  # an unchanged model is AUTOMATIC1111's no-op: nothing to load or wait for
                job = studio.wait(studio.switch_model(resolved).id)
                if job.state != "done":
                    raise BadRequest(job.error or f"could not load {resolved}")
        settings.update(changes)
        if "show_progress_every_n_steps" in changes:
            studio.preview_every = changes["show_progress_every_n_steps"]
        return None

    @r.post("/png-info")
    def png_info(body: PngInfoRequest) -> dict[str, Any]:
        from .app import image_text

        if not body.image:
            raise BadRequest("image is empty: send a base64 PNG (or a data: URL)", "image")
        found = image_text(body.image)
        text = found.parameters
        params = {k: str(v) for k, v in parse_infotext(text).items()} if text else {}
        return {"info": text, "items": found.items, "parameters": params}

    @r.get("/memory")
    def memory() -> dict[str, Any]:
        return {"ram": _ram(), "cuda": _cuda()}

    for method, path, missing in NOT_YET:
        r.add_api_route(path, _not_yet(missing), methods=[method], include_in_schema=False)

    return r


def _not_yet(missing: str):
    """A handler answering 501 for an AUTOMATIC1111 route Brushwork does not have."""

    async def handler(request: Request) -> JSONResponse:
        return error_response(request, 501, f"{request.url.path}: {missing}. The AUTOMATIC1111 routes Brushwork answers are listed in {DOCS}")

    return handler


def _checkpoint_name(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > 512:
        raise BadRequest(f"{where} must be a checkpoint title or name of at most 512 characters (see /sdapi/v1/sd-models); got {_shown(value)}")
    return value


def _shown(value: Any, limit: int = 40) -> str:
    """A value for an error message, cut short."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _allowed(name: str) -> str:
    """What a Txt2ImgBody field accepts, in words: "1 to 150", "64 to 4096, a multiple of 8"."""
    meta = {type(m).__name__: m for m in Txt2ImgBody.model_fields[name].metadata}
    if "MaxLen" in meta:
        return f"at most {meta['MaxLen'].max_length} characters"
    words = f"from {meta['Ge'].ge} to {meta['Le'].le}" if "Ge" in meta and "Le" in meta else "a finite number"
    if "MultipleOf" in meta:
        words += f", a multiple of {meta['MultipleOf'].multiple_of}"
    elif name in ("width", "height"):
        words += " (rounded down to a multiple of 8)"
    return words


#: infotext keys the reader derives from another one (``Size: 512x768``)
_DERIVED_FROM = {"Size-1": "Size", "Size-2": "Size"}


def _apply_infotext(body: Txt2ImgBody) -> Txt2ImgBody:
    """Fill the fields not sent explicitly from an infotext (AUTOMATIC1111's ``infotext`` field).
    A value out of range is a 400 that names the infotext key, its value and the range."""
    parsed = parse_infotext(body.infotext or "")
    updates: dict[str, Any] = {}
    source: dict[str, str] = {}  # request field -> infotext key
    for key, (name, conv) in _FROM_INFOTEXT.items():
        if key in parsed and name not in body.model_fields_set and parsed[key] != "":
            try:
                updates[name] = conv(parsed[key])
            except ValueError:
                raise BadRequest(f"infotext: {key} {_shown(parsed[key])} is not a valid {conv.__name__}", "infotext") from None
            source[name] = key
    from ..hires import records_hires

    if "enable_hr" not in body.model_fields_set and records_hires(parsed):  # A1111's inference (reference a.6)
        updates["enable_hr"] = True
    if "Clip skip" in parsed and not (body.override_settings or {}).get("CLIP_stop_at_last_layers"):
        low, high = CLIP_SKIP_RANGE
        try:
            clip_skip = int(parsed["Clip skip"])
        except ValueError:
            raise BadRequest(f"infotext: Clip skip {_shown(parsed['Clip skip'])} is not a whole number", "infotext") from None
        if not low <= clip_skip <= high:
            raise BadRequest(f"infotext: Clip skip {clip_skip} is out of range: allowed from {low} to {high}", "infotext")
        updates["override_settings"] = {**(body.override_settings or {}), "CLIP_stop_at_last_layers": clip_skip}
    # the noise settings an infotext records (reference a.5), unless override_settings has them
    overrides = dict(updates.get("override_settings", body.override_settings or {}))
    for key, setting in (("RNG", "randn_source"), ("ENSD", "eta_noise_seed_delta")):
        if key in parsed and parsed[key] != "" and setting not in (body.override_settings or {}):
            value: Any = parsed[key]
            if setting == "eta_noise_seed_delta":
                try:
                    value = int(value)
                except ValueError:
                    raise BadRequest(f"infotext: ENSD {_shown(parsed[key])} is not a whole number", "infotext") from None
            try:
                overrides[setting] = _SETTINGS_STORED[setting](value, f"infotext: {key}")
            except BadRequest as exc:
                raise BadRequest(str(exc), "infotext") from None
            updates["override_settings"] = overrides
    try:
        return Txt2ImgBody.model_validate({**body.model_dump(), **updates})
    except ValidationError as exc:
        raise BadRequest(_infotext_problem(exc, parsed, source), "infotext") from None


def _infotext_problem(exc: ValidationError, parsed: dict[str, str], source: dict[str, str]) -> str:
    """The first invalid value an infotext gave, as a message that names its key."""
    error = exc.errors()[0]
    name = str(error["loc"][0]) if error["loc"] else ""
    key = source.get(name)
    if key is None:
        return f"infotext: {name}: {error['msg']}"
    shown_key = _DERIVED_FROM.get(key, key)
    value = _shown(parsed.get(shown_key, parsed[key]))
    field = f" ({name})" if shown_key != key else ""
    return f"infotext: {shown_key} {value}{field} is out of range: allowed {_allowed(name)}; correct it in the infotext or send {name} explicitly"


def _ram() -> dict[str, int]:
    try:
        info = {}
        with open("/proc/meminfo") as fh:
            for line in fh:
                k, v = line.split(":", 1)
                info[k] = int(v.split()[0]) * 1024
        total, free = info["MemTotal"], info.get("MemAvailable", info["MemFree"])
    except (OSError, KeyError, ValueError):
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        free = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    return {"free": free, "used": total - free, "total": total}


def _cuda() -> dict[str, Any]:
    import torch

    if not torch.cuda.is_available():
        return {"error": "no CUDA device"}
    free, total = torch.cuda.mem_get_info()
    stats = torch.cuda.memory_stats()

    def pair(name: str) -> dict[str, int]:
        return {"current": int(stats.get(f"{name}.all.current", 0)), "peak": int(stats.get(f"{name}.all.peak", 0))}

    return {
        "system": {"free": free, "used": total - free, "total": total},
        "active": pair("active_bytes"), "allocated": pair("allocated_bytes"), "reserved": pair("reserved_bytes"), "inactive": pair("inactive_split_bytes"),
        "events": {"retries": int(stats.get("num_alloc_retries", 0)), "oom": int(stats.get("num_ooms", 0))},
    }


