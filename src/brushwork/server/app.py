"""The HTTP layer: FastAPI routes over one :class:`~.studio.Studio`.

Native API under ``/api/v1`` (jobs, events, images, models, form ranges), the
AUTOMATIC1111-compatible subset under ``/sdapi/v1`` (``a1111.py``), OpenAPI docs
at ``/docs``.  Routes validate and translate; all work happens in the studio.
"""
from __future__ import annotations

import base64
import binascii
import io
import json
import logging
import re
import threading
import time
from pathlib import Path
from typing import Any, Optional

from fastapi import APIRouter, FastAPI, Path as PathParam, Query, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from PIL import Image, UnidentifiedImageError

from .. import __version__
from ..catalog import hash_cache, list_checkpoints
from ..engine import MAX_SEED, MAX_SIDE, MAX_STEPS, MIN_SIDE
from ..imagemeta import ImageMetaError, ImageText, read_image_text
from ..infotext import parse_infotext
from ..lora import summarize_loras
from ..models.errors import CheckpointNotFound
from ..prompts.styles import StylesFileError, extract_styles, read_styles, style_names
from ..sampling.registry import SAMPLERS
from ..sampling.schedules import SCHEDULE_LABELS
from .schemas import MAX_BATCH_COUNT, MAX_BATCH_SIZE, MAX_DB_ID, BadRequest, CompareBody, GenerateBody, PngInfoBody, SwitchModelBody, TokensBody, UpscaleBody, check_names, check_request, engine_message, public_text
from .security import Credentials, GuardMiddleware
from .store import CANCELLED, DONE, FAILED, INTERRUPTED, QUEUED, RUNNING, JobRecord, StorageFull
from .studio import Conflict, NotFound, Studio, TooManyJobs, image_view

log = logging.getLogger(__name__)

#: width/height presets per family (the sizes each was trained around)
SIZE_PRESETS = {
    "sd1": [(512, 512), (512, 768), (768, 512), (640, 448), (448, 640)],
    "sd2": [(768, 768), (768, 1024), (1024, 768), (512, 512)],
    "sdxl": [(1024, 1024), (896, 1152), (1152, 896), (832, 1216), (1216, 832), (768, 1344), (1344, 768)],
    "flux": [(1024, 1024), (896, 1152), (1152, 896), (832, 1216), (1216, 832), (768, 1344), (1344, 768), (512, 512)],
}
CLIENT_HEADER = "x-brushwork-client"
THUMB = 256
_CLIENT_OK = re.compile(r"[^A-Za-z0-9_.:@-]")


def client_of(request: Request) -> str:
    """Who is asking, for fair queueing: the authenticated user, else a client-chosen
    name (``X-Brushwork-Client``), else the address."""
    user = request.scope.get("state", {}).get("user")
    named = request.headers.get(CLIENT_HEADER)
    if named:
        return (f"{user}/" if user else "") + _CLIENT_OK.sub("_", named)[:64]
    if user:
        return str(user)
    return request.client.host if request.client else "local"


#: full image decodes allowed at once: each can take hundreds of MB, and the thread
#: pool would otherwise run dozens side by side
DECODE_SLOTS = threading.BoundedSemaphore(2)


def decode_base64(data: str, what: str = "image") -> bytes:
    """base64 or a data: URL -> bytes, with 400s that say what was wrong."""
    if data.startswith("data:"):
        head, _, data = data.partition(",")
        if ";base64" not in head:
            raise BadRequest(f"{what}: only base64 data: URLs are accepted", what)
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"{what} is not valid base64; send the file's bytes base64-encoded (or a data: URL)", what) from None


def decode_image(data: str, what: str = "image") -> Image.Image:
    """base64 or a data: URL -> a decoded PIL image, for routes that need the pixels
    (at most :data:`DECODE_SLOTS` at once).  To read an image's text, use :func:`image_text`."""
    raw = decode_base64(data, what)
    with DECODE_SLOTS:
        try:
            img = Image.open(io.BytesIO(raw))
            img.load()
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
            raise BadRequest(f"{what} is not a readable PNG, JPEG or WebP image ({exc})", what) from None
    return img


def image_text(data: str, what: str = "image") -> ImageText:
    """The infotext and text items of a base64 image, read without decoding its pixels."""
    try:
        return read_image_text(decode_base64(data, what))
    except ImageMetaError as exc:
        raise BadRequest(f"{what} is not a readable PNG, JPEG or WebP image ({exc})", what) from None


def sent_picture(data: str, field: str) -> tuple[Image.Image, str]:
    """A picture sent as base64 (a 400 naming ``field`` when it is none) and the
    infotext it carries (PNG text or EXIF; "" when none)."""
    from .schemas import decode_picture

    picture = decode_picture(data, field)
    return picture, image_text(data, field).parameters or ""


def model_entries(studio: Studio) -> list[dict[str, Any]]:
    cache = hash_cache(studio.home)
    current = studio.model_name()
    out = []
    for e in list_checkpoints(studio.home):
        sha = cache.cached_sha256(e.path)
        out.append({"name": e.name, "file": e.path.name, "title": f"{e.name}{e.path.suffix}" + (f" [{sha[:10]}]" if sha else ""), "hash": sha[:10] if sha else None, "sha256": sha, "current": e.name == current, "path": e.path})
    return out


def upscaler_list(studio: Studio) -> list:
    """The upscalers of the data home (upscale.list_upscalers): builtins, then model files."""
    from ..upscale import list_upscalers

    return list_upscalers(studio.home)


def job_views(studio: Studio, jobs: list[JobRecord]) -> list[dict[str, Any]]:
    """Many jobs at once: the queue order and the images are read once, not per job."""
    waiting = studio.queue()
    positions = {job_id: i for i, job_id in enumerate(waiting)}
    images = studio.store.images_of_jobs([j.id for j in jobs])
    return [job_view(studio, j, positions.get(j.id) if j.state == "queued" else None, images.get(j.id, [])) for j in jobs]


def job_view(studio: Studio, job: JobRecord, position: Any = "ask", images: Optional[list] = None) -> dict[str, Any]:
    _, live = studio.current()
    running_live = live if live is not None and job.state == "running" else None
    return {
        "id": job.id,
        "kind": job.kind,
        "state": job.state,
        "client": job.client,
        "model": job.model,
        "model_hash": job.model_hash,
        "request": job.request,
        "submitted": job.submitted,
        "started": job.started,
        "finished": job.finished,
        "step": running_live.step if running_live else (job.total if job.state == "done" else job.step),
        "total": running_live.total if running_live and running_live.total else job.total,
        "eta": round(running_live.eta, 2) if running_live and running_live.eta is not None else None,
        "position": studio.position(job.id) if position == "ask" else position,
        "error": public_text(studio.home, job.error) if job.error else job.error,
        "error_kind": job.error_kind,
        "warnings": [public_text(studio.home, w) for w in job.warnings],
        "images": [image_view(r) for r in (studio.images(job.id) if images is None else images)],
        "events": f"/api/v1/jobs/{job.id}/events",
    }


def public_event(studio: Studio, data: dict[str, Any]) -> dict[str, Any]:
    """An event's data with the data home cut out of its error and warnings."""
    if not data.get("error") and not data.get("warnings"):
        return data
    out = dict(data)
    if out.get("error"):
        out["error"] = public_text(studio.home, out["error"])
    if out.get("warnings"):
        out["warnings"] = [public_text(studio.home, w) for w in out["warnings"]]
    return out


def form_options(studio: Studio) -> dict[str, Any]:
    """Everything a form needs: ranges, defaults for the current model, presets."""
    from ..engine import family_defaults
    from ..flux_family import FLUX_SAMPLER_LABELS

    loaded = studio.engine.model
    family, defaults, sources, native = "sd1", None, {}, (512, 512)
    if loaded is not None and loaded.name == studio.model_name():
        family, defaults = loaded.spec.family, family_defaults(loaded.spec)
        native = (defaults.width, defaults.height)  # the checkpoint's own size, whatever size is saved
        from ..model_defaults import effective_defaults

        eff = effective_defaults(studio.home, loaded.path, loaded.spec)  # the user's saved defaults win
        defaults, sources = eff.as_family_defaults(), eff.sources
    d = {"width": 512, "height": 512, "steps": 25, "cfg_scale": 7.0, "sampler": "DPM++ 2M", "schedule": "Karras", "clip_skip": 1}
    if defaults is not None:
        d = {"width": defaults.width, "height": defaults.height, "steps": defaults.steps, "cfg_scale": defaults.cfg_scale, "sampler": defaults.sampler, "schedule": defaults.schedule,
             "clip_skip": eff.values.get("clip_skip") or 1}
    flux = family == "flux"
    guided = flux and bool(getattr(loaded.spec, "guidance", False))
    if guided:
        d["distilled_cfg_scale"] = family_defaults(loaded.spec).distilled_cfg_scale
    from ..catalog import is_demo, native_presets, native_size_hint
    from .schemas import public_path

    presets = native_presets(SIZE_PRESETS.get(family, SIZE_PRESETS["sd1"]), native, MIN_SIDE)
    if loaded is not None and loaded.name == studio.model_name():
        demo = is_demo(loaded.path)
    else:
        demo = any(e.name == studio.model_name() and is_demo(e.path) for e in list_checkpoints(studio.home))
    home = studio.home
    from ..hires import hires_defaults
    from ..upscale.latent import DEFAULT_LATENT_MODE, LATENT_UPSCALE_MODES
    from ..vae_select import vae_names

    scale, hires_steps, strength = hires_defaults(max(native))
    return {
        "model": studio.model_name(),
        "model_loaded": loaded is not None and loaded.name == studio.model_name(),
        "family": family,
        "demo": demo,
        "folders": {"checkpoints": public_path(home, home.checkpoint_dirs[0]), "loras": public_path(home, home.lora_dirs[0]), "upscalers": public_path(home, home.upscaler_dirs[0])},
        "hires": {"scale": scale, "steps": hires_steps, "strength": strength, "upscaler": DEFAULT_LATENT_MODE},
        "latent_upscale_modes": list(LATENT_UPSCALE_MODES),
        "upscalers": [u.name for u in upscaler_list(studio)],
        "vaes": vae_names(home),  # Automatic, None, then the VAE files (vae_select.py)
        "defaults": d,
        # what applies to this model's family: the studio hides the rest (Flux: no clip skip,
        # no hires fix or refining yet, Distilled CFG for dev; flux_family.py)
        "applies": {"distilled_cfg_scale": guided, "clip_skip": not flux, "hires": not flux, "refine": not flux, "negative_prompt_needs_cfg": flux},
        "default_sources": sources,  # per field: "saved" (this model's own, set by the user), "metadata" (the checkpoint's) or "family"
        "native_size": {"width": native[0], "height": native[1], "hint": native_size_hint(native)},
        "ranges": {
            "steps": {"min": 1, "max": MAX_STEPS, "step": 1, "hint": "more steps: more detail, more time; 20-30 is typical"},
            "cfg_scale": {"min": 0, "max": 30, "step": 0.5, "hint": "Flux: 1 (its guidance is distilled; above 1 the negative prompt is used and each step takes twice as long)" if flux else "how closely the image follows the prompt; 4-7 is typical"},
            "distilled_cfg_scale": {"min": 0, "max": 30, "step": 0.5, "hint": "Flux.1 dev's guidance: 3.5 is its default; 2-4 looks natural, higher follows the prompt harder"},
            "width": {"min": MIN_SIDE, "max": MAX_SIDE, "step": 16 if flux else 8},
            "height": {"min": MIN_SIDE, "max": MAX_SIDE, "step": 16 if flux else 8},
            "seed": {"min": -1, "max": MAX_SEED, "hint": "-1: random; keep a seed to keep a composition"},
            "batch_size": {"min": 1, "max": MAX_BATCH_SIZE},
            "batch_count": {"min": 1, "max": MAX_BATCH_COUNT},
            "clip_skip": {"min": 1, "max": 12},
        },
        "size_presets": [{"width": w, "height": h} for w, h in presets],
        "samplers": list(FLUX_SAMPLER_LABELS) if flux else [s.label for s in SAMPLERS.values()],
        "schedules": ["Simple"] if flux else list(SCHEDULE_LABELS.values()),
    }


#: job states a ``state=`` filter may name
JOB_STATES = (QUEUED, RUNNING, DONE, FAILED, CANCELLED, INTERRUPTED)
#: an image id in a path (SQLite integers are signed 64-bit)
IMAGE_ID = PathParam(..., ge=0, le=MAX_DB_ID, description="an image id from /api/v1/images")
#: the ``before`` cursor of the history listings
BEFORE = Query(None, ge=0, le=MAX_DB_ID, description="only entries older than this id")


def parse_states(state: Optional[str]) -> Optional[tuple[str, ...]]:
    """``done,failed`` -> ("done", "failed"); an unknown name is a 400 listing the known ones."""
    if not state:
        return None
    states = tuple(dict.fromkeys(s.strip() for s in state.split(",") if s.strip()))
    unknown = [s for s in states if s not in JOB_STATES]
    if unknown:
        raise BadRequest(f"unknown job state {_cut(unknown[0])!r} in state=; use one or more of {', '.join(JOB_STATES)}, separated by commas", "state")
    return states or None


def _cut(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def event_stream(events, public) -> StreamingResponse:
    """Server-sent events from an async iterator of events (None: a keep-alive
    comment); ``public`` makes each event's data what clients may see."""
    async def lines():
        async for e in events:
            yield ": keep-alive\n\n" if e is None else f"id: {e.seq}\nevent: {e.kind}\ndata: {json.dumps(public(e.data))}\n\n"

    return StreamingResponse(lines(), media_type="text/event-stream", headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


def last_event_id(request: Request) -> int:
    """The ``Last-Event-ID`` a reconnecting stream sends (0 when absent or not a number)."""
    after = request.headers.get("last-event-id", "0").strip()
    return int(after) if after.isascii() and after.isdigit() and len(after) <= 18 else 0


def native_router(studio: Studio) -> APIRouter:
    r = APIRouter(prefix="/api/v1", tags=["brushwork"], route_class=KeepAliveRoute)

    @r.get("/status")
    def status() -> dict[str, Any]:
        job, live = studio.current()
        return {
            "version": __version__,
            "device": studio.engine.placement.label,
            "model": studio.model_name(),
            "loaded_model": studio.engine.model.name if studio.engine.model is not None else None,
            "running": job.id if job else None,
            "step": live.step if live else 0,
            "total": live.total if live else 0,
            "queue": studio.queue(),
            "counts": studio.store.counts(),
            "cluster": studio.cluster_status(),  # None unless serve --cluster
        }

    @r.get("/options")
    def options() -> dict[str, Any]:
        return form_options(studio)

    @r.get("/models")
    def models() -> list[dict[str, Any]]:
        return [{k: v for k, v in m.items() if k != "path"} for m in model_entries(studio)]

    @r.post("/models/current", status_code=202)
    def switch_model(body: SwitchModelBody, request: Request, wait: bool = False) -> dict[str, Any]:
        job = studio.switch_model(body.name, client_of(request))
        if wait:
            job = studio.wait(job.id)
            if job.state != "done":
                raise BadRequest(job.error or f"loading {body.name} failed", "name")
        return job_view(studio, job)

    @r.get("/samplers")
    def samplers() -> list[dict[str, Any]]:
        return [{"name": s.label, "key": s.key, "aliases": list(s.aliases), "default_schedule": SCHEDULE_LABELS.get(s.default_schedule, s.default_schedule), "stochastic": s.stochastic} for s in SAMPLERS.values()]

    @r.get("/schedules")
    def schedules() -> list[dict[str, str]]:
        return [{"name": k, "label": v} for k, v in SCHEDULE_LABELS.items()]

    @r.get("/loras")
    def loras() -> list[dict[str, Any]]:
        """The LoRAs with family, hash, trigger words and, from the files beside them
        (NAME.civitai.info, A1111's NAME.json), base model, recommended weight and preview;
        ``insert`` is the tag at that weight, ``insert_with_triggers`` the tag and the
        sidecar's trigger words (the file's own frequent tags are only listed)."""
        from urllib.parse import quote

        out = []
        for x in summarize_loras(studio.home):
            weight = getattr(x, "weight", None)
            tag = f"<lora:{x.name}:{weight if weight is not None else 1}>"
            preview = f"/api/v1/loras/{quote(x.name, safe='')}/preview" if getattr(x, "preview", None) else None
            out.append({"name": x.name, "family": x.family, "hash": x.addnet_hash, "triggers": x.triggers, "base_model": getattr(x, "base_model", None), "weight": weight,
                        "preview": preview, "insert": tag, "insert_with_triggers": ", ".join([tag, *getattr(x, "activation", [])])})
        return out

    @r.get("/loras/{name}/preview")
    def lora_preview(name: str) -> FileResponse:
        """A LoRA's preview picture (its NAME.preview.png sidecar)."""
        for x in summarize_loras(studio.home):
            if x.name == name and getattr(x, "preview", None):
                return FileResponse(x.preview, headers={"Cache-Control": "private, max-age=3600"})
        raise NotFound(f"no preview for a LoRA called {name!r}")

    @r.post("/jobs", status_code=202)
    def submit(body: GenerateBody, request: Request) -> dict[str, Any]:
        req = body.to_request()
        check_names(studio.home, req)
        check_request(req)
        job = studio.submit(req, client_of(request), model=body.model)
        return job_view(studio, job)

    @r.post("/compare", status_code=202)
    def compare(body: CompareBody, request: Request) -> dict[str, Any]:
        """A comparison grid as one job (kind "compare"): an ``image`` event per cell
        with its ``cell`` {x, y, z}, then the grid (``grid: true``)."""
        cmp = body.to_comparison()
        check_names(studio.home, cmp.request)
        from ..compare.job import check_vae_values
        from ..vae_select import VaeNotFound

        try:
            check_vae_values(studio.home, cmp)
        except VaeNotFound as exc:
            raise BadRequest(public_text(studio.home, str(exc)), next(a for a in "xyz" if getattr(cmp, a) is not None and getattr(cmp, a).type.vae)) from None
        check_request(cmp.request)
        return job_view(studio, studio.submit_compare(cmp, client_of(request), model=body.model))

    @r.get("/upscalers")
    def upscalers() -> dict[str, Any]:
        """The image upscalers (builtins and model files, with architecture and scale),
        the latent modes of the hires fix, and the files that could not be used."""
        from ..upscale import upscaler_problems
        from ..upscale.latent import LATENT_UPSCALE_MODES
        from .schemas import public_path

        listed = [{"name": u.name, "kind": u.kind, "architecture": u.architecture, "scale": u.scale, "file": public_path(studio.home, u.path) if u.path else None} for u in upscaler_list(studio)]
        return {"upscalers": listed, "latent_modes": list(LATENT_UPSCALE_MODES), "problems": [public_text(studio.home, p) for p in upscaler_problems(studio.home)],
                "folders": [public_path(studio.home, d) for d in studio.home.upscaler_dirs]}

    @r.post("/upscale", status_code=202)
    def upscale(body: UpscaleBody, request: Request) -> dict[str, Any]:
        """Upscale a picture of the history (``image_id``) or a sent one, as a job
        (kind "upscale"): the result is saved and recorded like a generated picture."""
        from ..init_image import read_image_file
        from .schemas import check_upscale

        if (body.image_id is None) == (body.image is None):
            raise BadRequest("send either image_id (a picture of the history) or image (base64), not both or neither", "image_id")
        infotext, seed = "", 0
        if body.image_id is not None:
            rec = studio.store.image(body.image_id)
            if rec is None:
                raise NotFound(f"no image {body.image_id}")
            picture = read_image_file(image_file(body.image_id), "picture")
            infotext, seed = rec.infotext or "", rec.seed or 0
        else:
            picture, infotext = sent_picture(body.image, "image")
        settings = body.settings()
        check_upscale(studio.home, settings, [picture.size])
        return job_view(studio, studio.submit_upscale(picture, settings, client_of(request), infotext=infotext, seed=seed))

    @r.get("/jobs")
    def jobs(limit: int = Query(50, ge=1, le=500), before: Optional[int] = BEFORE, state: Optional[str] = Query(None, max_length=256)) -> list[dict[str, Any]]:
        return job_views(studio, studio.store.jobs(limit, before, parse_states(state)))

    @r.get("/jobs/{job_id}")
    def job(job_id: str) -> dict[str, Any]:
        return job_view(studio, studio.job(job_id))

    @r.post("/jobs/{job_id}/cancel")
    def cancel(job_id: str) -> dict[str, Any]:
        return job_view(studio, studio.cancel(job_id))

    @r.get("/jobs/{job_id}/events")
    async def events(job_id: str, request: Request) -> StreamingResponse:
        studio.job(job_id)  # 404 before the stream starts
        start = last_event_id(request)

        return event_stream(studio.stream(job_id, after=start), lambda data: public_event(studio, data))

    @r.get("/images")
    def images(limit: int = Query(100, ge=1, le=1000), before: Optional[int] = BEFORE) -> list[dict[str, Any]]:
        return [image_view(x) for x in studio.store.images(limit, before)]

    def image_file(image_id: int) -> Path:
        rec = studio.store.image(image_id)
        if rec is None:
            raise NotFound(f"no image {image_id}")
        root = studio.home.root.resolve()
        path = (root / rec.path).resolve()
        if not path.is_relative_to(root):  # the database is ours, but never trust a path
            raise NotFound(f"image {image_id} is outside the data home")
        if not path.is_file():
            raise NotFound(f"image {image_id}'s file {rec.path} was moved or deleted")
        return path

    @r.get("/images/{image_id}")
    def image(image_id: int = IMAGE_ID) -> FileResponse:
        return FileResponse(image_file(image_id), media_type="image/png", headers={"Cache-Control": "private, max-age=31536000, immutable"})

    @r.get("/images/{image_id}/thumb")
    def thumb(image_id: int = IMAGE_ID) -> FileResponse:
        """A small JPEG for galleries (made once, kept in HOME/cache/thumbs)."""
        src = image_file(image_id)
        folder = studio.home.cache / "thumbs"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{image_id}.jpg"
        if not path.exists():
            with DECODE_SLOTS, Image.open(src) as im:
                im = im.convert("RGB")
                im.thumbnail((THUMB, THUMB))
                tmp = path.with_suffix(".tmp")
                im.save(tmp, "JPEG", quality=82)
                tmp.replace(path)
        return FileResponse(path, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=31536000, immutable"})

    @r.post("/tokens")
    def tokens(body: TokensBody) -> dict[str, int]:
        """Token count of a prompt for the "N/75" counter."""
        from ..conditioning import count_tokens

        n, chunks = count_tokens(body.text)
        return {"tokens": n, "chunks": chunks, "limit": 75 * chunks}

    @r.post("/estimate")
    def estimate(body: GenerateBody) -> dict[str, Any]:
        """How long this request would take on the current model and device (from the
        device's measured speed); ``estimate`` is null while no model is loaded."""
        return {"estimate": studio.estimate(body.to_request())}

    @r.get("/styles")
    def styles() -> list[dict[str, str]]:
        """The saved prompt styles (HOME/styles.csv), in file order."""
        return [{"name": st.name, "prompt": st.prompt, "negative_prompt": st.negative_prompt} for st in read_styles(studio.home.styles_file)]

    @r.post("/png-info")
    def png_info(body: PngInfoBody) -> dict[str, Any]:
        """The picture's infotext, parsed; with ``unstyled`` when it names styles
        saved here: its prompts with those styles' words taken back out."""
        found = image_text(body.image)
        text = found.parameters
        parameters = parse_infotext(text) if text else {}
        out = {"infotext": text, "parameters": parameters, "items": found.items}
        if parameters.get("Styles"):
            try:
                back = extract_styles(parameters.get("Prompt", ""), parameters.get("Negative prompt", ""), style_names(parameters["Styles"]), read_styles(studio.home.styles_file))
            except StylesFileError:
                back = None  # the parameters alone still restore the picture
            if back is not None and back.applied:
                out["unstyled"] = {"prompt": back.prompt, "negative_prompt": back.negative_prompt, "styles": back.applied, "warnings": back.warnings}
        return out

    return r


def _input_shown(got: Any) -> str:
    """The offending input for a validation message, short, whatever its type."""
    if got is None or isinstance(got, (dict, list)):
        return ""
    if isinstance(got, (bytes, bytearray)):
        shown = repr(bytes(got[:60]))
    else:
        try:
            shown = json.dumps(got)  # NaN and Infinity show as such
        except (TypeError, ValueError):
            shown = repr(got)
    return f" (got {shown[:60]})"


def validation_message(errors: list[dict[str, Any]]) -> str:
    """pydantic's errors as one line: ``steps: Input should be ... (got 0); ...``."""
    parts = []
    for e in errors[:5]:
        where = ".".join(str(x) for x in e.get("loc", ()) if x != "body") or "body"
        detail = e.get("ctx", {}).get("error") if e.get("type") == "json_invalid" else None
        parts.append(f"{where}: {e.get('msg')}{f' ({detail})' if detail else ''}{_input_shown(e.get('input'))}")
    return "; ".join(parts)


def is_json_type(content_type: str) -> bool:
    main = content_type.split(";", 1)[0].strip().lower()
    return main == "application/json" or (main.startswith("application/") and main.endswith("+json"))


def wrong_content_type(request: Request, errors: list[dict[str, Any]]) -> Optional[str]:
    """How a body that FastAPI did not read as JSON was sent ("text/plain", "no
    Content-Type"), when that is why the body is invalid; None otherwise."""
    if not any(tuple(e.get("loc", ()))[:1] == ("body",) for e in errors):
        return None
    sent = request.headers.get("content-type", "")
    if sent and not is_json_type(sent):
        return f"Content-Type {_cut(sent)}"
    if not sent and any(isinstance(e.get("input"), (bytes, bytearray)) for e in errors):
        return "no Content-Type"
    return None


def unreadable_body(exc: HTTPException) -> Optional[str]:
    """What was wrong with a JSON body FastAPI could not decode (its 400 says only that
    there was an error), or None when ``exc`` is about something else."""
    cause = exc.__cause__
    if exc.status_code != 400 or cause is None or exc.detail != "There was an error parsing the body":
        return None
    if isinstance(cause, UnicodeDecodeError):
        return f"the body is not UTF-8 text ({cause.reason} at byte {cause.start}); send JSON encoded as UTF-8"
    if isinstance(cause, RecursionError):
        return "the JSON nests lists/objects too deeply to read; no request needs more than a few levels"
    return f"the body could not be read as JSON ({type(cause).__name__}: {_cut(str(cause), 120)})"


def sdapi_http_message(request: Request, exc: HTTPException) -> str:
    """What an HTTP error from routing means on ``/sdapi/v1`` (Starlette only says "Not Found")."""
    from .a1111 import DOCS

    path = _cut(request.url.path, 120)
    if exc.status_code == 404:
        return f"{request.method} {path} is not a route of Brushwork's AUTOMATIC1111-compatible API; the routes it answers are listed in {DOCS} (and at /docs)"
    if exc.status_code == 405:
        return f"{request.method} is not allowed on {path}; see {DOCS} for the method each route takes"
    return str(exc.detail)


def crash_response(request: Request, exc: Exception) -> JSONResponse:
    from .a1111 import error_response

    log.error("unhandled error on %s", request.url.path, exc_info=exc)
    return error_response(request, 500, f"internal error ({type(exc).__name__}: {_cut(str(exc), 300)}); the server keeps running")


def _has_handler(app: FastAPI, exc: Exception) -> bool:
    return any(isinstance(key, type) and key is not Exception and isinstance(exc, key) for key in app.exception_handlers)


class KeepAliveRoute(APIRoute):
    """A route whose unexpected errors are answered here, inside the route, as a 500.
    Starlette's last-resort handler answers them too but then re-raises, and the server
    drops the connection: one bad request would cut a client's keep-alive connection."""

    def get_route_handler(self):
        handler = super().get_route_handler()

        async def guarded(request: Request):
            try:
                return await handler(request)
            except Exception as exc:  # noqa: BLE001 - errors with a handler of their own pass on
                if _has_handler(request.app, exc):
                    raise
                return crash_response(request, exc)

        return guarded


def _error(status: int, message: str, field: Optional[str] = None) -> JSONResponse:
    body: dict[str, Any] = {"detail": message}
    if field:
        body["field"] = field
    return JSONResponse(body, status_code=status)


def create_app(studio: Studio, credentials: Optional[Credentials] = None, max_body: int = 32 * 2**20, cors_origins: Optional[list[str]] = None, web: bool = True, hosts: Optional[Any] = None, body_timeout: Optional[float] = None) -> FastAPI:
    from . import a1111

    app = FastAPI(title="Brushwork", version=__version__, description="Local image generation: native API (/api/v1) and the AUTOMATIC1111-compatible subset (/sdapi/v1).")
    app.state.studio = studio

    @app.exception_handler(RequestValidationError)
    async def on_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        sent_as = wrong_content_type(request, errors)
        if sent_as:
            return a1111.error_response(request, 415, f"this route takes a JSON object: send it with Content-Type: application/json (the request had {sent_as})")
        message = validation_message(errors)
        if request.url.path.startswith(a1111.PREFIX):  # AUTOMATIC1111 clients read error.message / detail
            return JSONResponse(a1111.validation_body(errors, message), status_code=422)
        # out-of-range request fields read as the engine (and so the CLI) words them
        parts, detail = [], []
        for e in errors:
            ours = engine_message(e.get("loc", ()), e.get("type", ""), e.get("input"))
            detail.append({k: v for k, v in e.items() if k in ("loc", "msg", "type")} | ({"msg": ours} if ours else {}))
            if len(parts) < 5:
                parts.append(ours or validation_message([e]))
        return JSONResponse({"detail": detail, "message": "; ".join(parts)}, status_code=422)

    @app.exception_handler(HTTPException)
    async def on_http_error(request: Request, exc: HTTPException) -> JSONResponse:
        problem = unreadable_body(exc)
        if problem:
            return a1111.error_response(request, 422, problem)
        if request.url.path.startswith(a1111.PREFIX):
            return a1111.error_response(request, exc.status_code, sdapi_http_message(request, exc), headers=getattr(exc, "headers", None))
        return await http_exception_handler(request, exc)

    @app.exception_handler(BadRequest)
    async def on_bad_request(request: Request, exc: BadRequest) -> JSONResponse:
        return a1111.error_response(request, 400, str(exc), exc.field)

    @app.exception_handler(CheckpointNotFound)
    async def on_no_model(request: Request, exc: CheckpointNotFound) -> JSONResponse:
        return a1111.error_response(request, 404, str(exc), "model")

    @app.exception_handler(StylesFileError)
    async def on_bad_styles(request: Request, exc: StylesFileError) -> JSONResponse:
        return a1111.error_response(request, 500, f"{exc}. Fix styles.csv in the data home (a header row name,prompt,negative_prompt, then one style per row) or move it away", "styles")

    @app.exception_handler(NotFound)
    async def on_not_found(request: Request, exc: NotFound) -> JSONResponse:
        return a1111.error_response(request, 404, str(exc))

    @app.exception_handler(Conflict)
    async def on_conflict(request: Request, exc: Conflict) -> JSONResponse:
        return a1111.error_response(request, 409, str(exc))

    @app.exception_handler(TooManyJobs)
    async def on_too_many(request: Request, exc: TooManyJobs) -> JSONResponse:
        return a1111.error_response(request, 429, str(exc))

    @app.exception_handler(StorageFull)
    async def on_storage_full(request: Request, exc: StorageFull) -> JSONResponse:
        return a1111.error_response(request, 507, f"{exc}; the job was not accepted. Jobs already accepted keep their state.")

    @app.exception_handler(Exception)
    async def on_crash(request: Request, exc: Exception) -> JSONResponse:  # errors outside the routes
        return crash_response(request, exc)

    @app.middleware("http")
    async def timing(request: Request, call_next):
        t0 = time.perf_counter()
        response = await call_next(request)
        response.headers["X-Process-Time"] = f"{time.perf_counter() - t0:.4f}"
        return response

    app.include_router(native_router(studio))
    from .model_routes import models_router

    app.include_router(models_router(studio))
    app.include_router(a1111.router(studio))
    if web:
        from ..web import mount_web

        mount_web(app)
    if cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=cors_origins, allow_methods=["*"], allow_headers=["*"], allow_credentials=True)
    # added last, so outermost: Host, cross-site and credential checks and body limits come
    # before anything else; CORS preflights from --cors origins pass through to CORSMiddleware.
    # hosts: a security.HostPolicy (None: no Host check); body_timeout None: the 30 s default
    app.add_middleware(GuardMiddleware, credentials=credentials or Credentials(), max_body=max_body, cors_origins=cors_origins or (), hosts=hosts, body_timeout=body_timeout)
    return app


