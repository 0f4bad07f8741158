"""What a queued job does with an engine, told as a stream of outcomes.

This is the one place where a job meets an engine.  The studio (server/studio.py)
owns the queue, the history and the files: it turns a stored job into a
:class:`Task`, runs it, and records each outcome as it arrives (a picture saved and
listed, a progress event sent).  Where the task runs is all that differs:

* ``brushwork serve``: :func:`execute` on the server's own engine, in its worker thread;
* ``brushwork serve --cluster``: :func:`execute` inside a Ray worker actor on another
  process or machine (cluster/worker.py).  The outcomes come back to the server over
  Ray, and the server records them just as it records its own.

So everything here is plain data that pickles: a task carries its pictures, and an
outcome carries its picture and infotext.  Nothing here writes a file.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

from PIL import Image


@dataclass(frozen=True)
class Task:
    kind: str  # "txt2img" | "img2img" | "inpaint" | "compare" | "upscale" | "load"
    model: Optional[str] = None  # the listed checkpoint name (None: the engine's default)
    request: Any = None  # engine.GenerationRequest, pictures included (a generation, a comparison's base)
    compare: Optional[dict] = None  # a comparison's axes as the job stores them (see :func:`comparison`)
    upscale: Any = None  # (picture, postprocess.UpscaleSettings)
    first_batch: int = 0  # batches recorded before (a job resumed on another worker goes on after them)
    preview_every: int = 5  # a preview picture every this many steps (and at the last one)


@dataclass(frozen=True)
class Loaded:
    """The checkpoint the job runs on is loaded."""

    name: str
    short_hash: Optional[str]
    fresh: bool = False  # read from disk now (False: it was loaded already)
    seconds: float = 0.0  # how long that took


@dataclass(frozen=True)
class Step:
    step: int  # steps done, over the whole job
    total: int
    eta: Optional[float]
    preview: Optional[bytes] = None  # JPEG of the picture so far


@dataclass(frozen=True)
class Picture:
    image: Any  # engine.GeneratedImage


@dataclass(frozen=True)
class Cell:
    result: Any  # compare.job.CellResult


@dataclass(frozen=True)
class Upscaled:
    image: Image.Image
    extra: dict  # the infotext keys that say how it was made


@dataclass(frozen=True)
class Warned:
    """A warning the engine logged while running the job (a missing LoRA ...); a
    worker elsewhere sends these, the local studio collects them from its own log."""

    message: str


Outcome = Any  # Loaded | Step | Picture | Cell | Upscaled | Warned


def execute(engine, task: Task, control, emit: Callable[[Outcome], None]) -> None:
    """Run ``task`` on ``engine``, handing each outcome to ``emit`` as it happens.
    ``control`` (engine.JobControl) stops it; errors are raised as the engine raised them."""
    if task.kind == "upscale":
        _upscale(engine, task, control, emit)
        return
    from .catalog import find_listed_checkpoint

    path = find_listed_checkpoint(engine.home, task.model) if task.model else None
    before, t0 = engine.model, time.perf_counter()
    loaded = engine.load(path)
    emit(Loaded(loaded.name, loaded.short_hash, loaded is not before, round(time.perf_counter() - t0, 3)))
    if task.kind == "load":
        return
    progress = _progress(engine, task.preview_every, emit)
    if task.kind == "compare":
        from .compare.job import run_comparison

        for r in run_comparison(engine, comparison(task.request, task.compare), progress, control):
            emit(Cell(r))
        return
    later = {"first_batch": task.first_batch} if task.first_batch else {}
    for batch in engine.batches(task.request, progress=progress, control=control, **later):
        for img in batch:
            emit(Picture(img))


def comparison(request, spec: dict):
    """The compare.job.Comparison a stored comparison job describes (axes as text, so
    a task pickles whatever the axes hold)."""
    from .compare.axes import parse_axis
    from .compare.job import Comparison

    return Comparison(request, *(parse_axis(spec[a]) if spec.get(a) else None for a in "xyz"), vary_seeds=tuple(spec.get("vary_seeds", (False,) * 3)),
                      keep_random_seeds=spec.get("keep_random_seeds", False), draw_legend=spec.get("draw_legend", True), margin=spec.get("margin", 0))


def _progress(engine, every: int, emit: Callable[[Outcome], None]):
    from .previews import jpeg_bytes

    every = max(1, every)

    def progress(p) -> None:
        jpeg = None
        if p.latents is not None and (p.step % every == 0 or p.step == p.total):
            try:
                jpeg = jpeg_bytes(engine.preview(p.latents))
            except Exception:  # noqa: BLE001 - a preview is never worth failing a job
                import logging

                logging.getLogger(__name__).debug("preview failed", exc_info=True)
        emit(Step(p.step, p.total, None if not p.step else round(p.eta, 2), jpeg))

    return progress


def _upscale(engine, task: Task, control, emit) -> None:
    from .postprocess import upscale_picture
    from .vae import Cancelled

    picture, settings = task.upscale
    device = getattr(getattr(engine, "placement", None), "device", None)
    try:
        out, extra = upscale_picture(picture, settings, engine.home, device, should_stop=lambda: control.cancelled)
    except Cancelled:
        return
    emit(Upscaled(out, extra))
