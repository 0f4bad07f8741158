"""The studio service: one engine, one worker thread, a fair job queue, live events.

Everything the HTTP layer does goes through :class:`Studio`; it knows nothing of
HTTP.  The engine is only ever touched by the worker thread (it is not
thread-safe), so loading a model, generating and making previews happen one at a
time, in queue order, and the model stays loaded between jobs.

Fairness: jobs wait in one FIFO line per client, and the worker takes the next
job from each client in turn, so one client with fifty jobs cannot starve another
with one.  Model loads requested by a switch go first (they run between jobs).
Every job records the checkpoint it was submitted for and runs on that one, so a
switch never changes the pictures of jobs already waiting.

Nothing is lost and nothing hangs: each batch's pictures are saved and recorded as
soon as that batch is done; a full disk fails the job with a clear message (the
pictures saved until then stay listed); every job ends in a final state with a
``done`` event, whatever happens in it; event ids grow across jobs and restarts,
so a client resuming with an old ``Last-Event-ID`` gets the whole story again.
"""
from __future__ import annotations

import asyncio
import base64
import datetime as _dt
import errno
import logging
import shutil
import threading
import time
from collections import OrderedDict, deque
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Optional

from ..catalog import find_checkpoint, find_listed_checkpoint, list_checkpoints
from ..engine import DoesNotFit, GenerationRequest, JobControl, RequestError, TooLong, planned_steps, resolve_seed
from ..execution import Cell, Loaded, Picture, Step, Task, Upscaled, Warned, comparison, execute
from ..init_image import image_hash, read_image_file
from ..outputs import save_input
from ..compare.axes import grid_shape
from ..compare.job import Comparison, grid_picture
from ..refine import GENERATION_KINDS, job_kind
from ..infotext import stopped_step
from ..lora import LoraError
from ..models.errors import CheckpointNotFound, ModelFileError
from ..outputs import ensure_writable_folder, save_png
from ..sampling.registry import UnknownSamplerError
from .store import CANCELLED, DONE, FAILED, INTERRUPTED, QUEUED, RUNNING, ImageRecord, JobRecord, JobStore, StorageFull

log = logging.getLogger(__name__)

#: the error recorded on a waiting job that its client's interrupt cancelled
INTERRUPTED_WHILE_QUEUED = "cancelled before it started: this client called interrupt while the job was waiting in the queue"

#: errors that mean "the request was wrong" (a 4xx), not "the server failed"
REQUEST_ERRORS = (RequestError, UnknownSamplerError, CheckpointNotFound, LoraError, ModelFileError, ValueError)


#: finished jobs whose progress events keep their preview pictures
KEEP_PREVIEWS = 16
#: jobs one client may have waiting at once
MAX_QUEUED_PER_CLIENT = 200
#: a PNG is at most about this many bytes per pixel (RGB, barely compressible)
PNG_BYTES_PER_PIXEL = 3.1
#: how often the worker retries writing what a full disk held back (seconds)
FLUSH_EVERY = 2.0
#: a job whose cluster worker died is put back in the queue at most this many times
MAX_RETRIES = 2
#: the cluster dispatcher looks at the queue and the workers at least this often (seconds)
DISPATCH_EVERY = 0.5


class NotFound(LookupError):
    pass


class Conflict(RuntimeError):
    pass


class TooManyJobs(RuntimeError):
    """One client has too many jobs waiting (a 429)."""


class DiskFull(OSError):
    """The data home has no room for a job's pictures."""


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) is a full disk or quota."""
    while exc is not None:
        if isinstance(exc, StorageFull) or (isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


@dataclass
class Event:
    seq: int
    kind: str  # "state" | "progress" | "image" | "done"
    data: dict[str, Any]


@dataclass
class Live:
    """What the worker knows about a job while it runs (and a while after)."""

    control: JobControl = field(default_factory=JobControl)
    events: list[Event] = field(default_factory=list)
    seq: int = 0  # the last event's sequence number (events may be dropped, numbers never reused)
    step: int = 0
    total: int = 0
    eta: Optional[float] = None
    preview: Optional[bytes] = None  # latest preview, JPEG
    started: Optional[float] = None
    cancel_requested: bool = False


class FairQueue:
    """Round-robin over clients, FIFO within a client; priority jobs first."""

    def __init__(self) -> None:
        self._priority: deque[str] = deque()
        self._clients: OrderedDict[str, deque[str]] = OrderedDict()

    def push(self, client: str, job_id: str, priority: bool = False) -> None:
        if priority:
            self._priority.append(job_id)
        else:
            self._clients.setdefault(client, deque()).append(job_id)

    def push_front(self, client: str, job_id: str, priority: bool = False) -> None:
        """Put a job back at the head: its client's next, and that client first in the round
        (a job whose worker was lost goes on before anything newer)."""
        if priority:
            self._priority.appendleft(job_id)
            return
        self._clients.setdefault(client, deque()).appendleft(job_id)
        self._clients.move_to_end(client, last=False)

    def pop(self) -> Optional[str]:
        if self._priority:
            return self._priority.popleft()
        if not self._clients:
            return None
        client, line = next(iter(self._clients.items()))
        job_id = line.popleft()
        del self._clients[client]
        if line:
            self._clients[client] = line  # back of the round
        return job_id

    def waiting(self, client: str) -> int:
        return len(self._clients.get(client, ()))

    def line(self, client: str) -> list[str]:
        """The jobs ``client`` has waiting, oldest first (priority jobs not included)."""
        return list(self._clients.get(client, ()))

    def remove(self, job_id: str) -> bool:
        if job_id in self._priority:
            self._priority.remove(job_id)
            return True
        for client, line in list(self._clients.items()):
            if job_id in line:
                line.remove(job_id)
                if not line:
                    del self._clients[client]
                return True
        return False

    def order(self) -> list[str]:
        """The order the jobs would run in, if nothing else arrived."""
        out = list(self._priority)
        lines = [list(line) for line in self._clients.values()]
        while any(lines):
            for line in lines:
                if line:
                    out.append(line.pop(0))
        return out

    def __len__(self) -> int:
        return len(self._priority) + sum(len(v) for v in self._clients.values())


class Studio:
    def __init__(self, engine, store: JobStore, *, preview_every: int = 5, start: bool = True, keep_live: int = 256, max_queued_per_client: int = MAX_QUEUED_PER_CLIENT,
                 pool=None, patience: Optional[float] = None, scheduler: Optional[Callable] = None):
        self.engine = engine
        # with a cluster (cluster/pool.py) jobs run on its workers, several at once; the
        # engine here still checks requests and answers what needs the model's facts
        self.pool = pool
        self.patience = patience
        # (order, workers, estimates) -> Plan; None: cluster/scheduler.assign (the
        # tests pass assign_round_robin to measure the baseline on a real cluster)
        self.scheduler = scheduler
        self.home = engine.home
        self.store = store
        self.preview_every = max(1, preview_every)
        self.max_queued_per_client = max_queued_per_client
        # event ids: one counter for all jobs, started from the clock, so ids are never
        # reused, not even after a restart (microseconds: far more ids than events)
        self._event_id = time.time_ns() // 1000
        self._queue = FairQueue()
        self._cv = threading.Condition()
        self._live: OrderedDict[str, Live] = OrderedDict()
        self._keep_live = keep_live
        self._running: OrderedDict[str, str] = OrderedDict()  # job id -> the worker running it ("local": this process)
        self._threads: dict[str, threading.Thread] = {}  # cluster jobs: the thread following each
        self._attempts: dict[str, int] = {}  # cluster jobs: workers lost while running it
        self._refused: dict[str, set] = {}  # cluster jobs: workers whose memory or time limit refused it
        self._views: dict[str, Any] = {}  # cluster jobs: (what the scheduler needs of a waiting job, when it was submitted)
        self._refusal_text: dict[str, str] = {}  # cluster jobs: the last refusal's message
        self._finished: deque[str] = deque()
        self._stopping = False
        self._target_model: Optional[str] = None  # checkpoint name new jobs are submitted for
        self._thread: Optional[threading.Thread] = None
        # a cluster's server hands interrupted jobs out again (the pictures saved stay, the
        # rest is made); on one machine a job cut off by a crash is failed, as it always was
        resumed, failed = store.recover(requeue_running=pool is not None)
        for job in store.queued_in_order():
            self._queue.push(job.client, job.id, priority=job.kind == "load")
            self._live_for(job.id)
        if resumed or failed:
            log.info("restart: %d queued jobs resumed, %d interrupted jobs marked failed", resumed, failed)
        if start:
            self.start()

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._dispatch if self.pool is not None else self._work, name="brushwork-worker", daemon=True)
            self._thread.start()

    def close(self, timeout: float = 30.0) -> None:
        """Stop the worker: the running job is interrupted and marked failed; queued jobs
        stay queued in the database and resume at the next start."""
        downloads = getattr(self, "downloads", None)  # server/downloads.py, made by the Models routes
        if downloads is not None:
            downloads.close()
        with self._cv:
            self._stopping = True
            for job_id in self._running:
                self._live_for(job_id).control.cancel()
            self._cv.notify_all()
        deadline = time.monotonic() + timeout
        if self._thread is not None:
            self._thread.join(timeout)
        for thread in list(self._threads.values()):
            thread.join(max(0.0, deadline - time.monotonic()))

    # ------------------------------------------------------------ models

    def model_name(self) -> str:
        """The checkpoint new jobs run on (the last switched to, else the engine's default)."""
        if self._target_model is None:
            loaded = self.engine.model
            path = loaded.path if loaded is not None else find_checkpoint(self.home, None)
            self._target_model = self._entry_name(path)
        return self._target_model

    def _entry_name(self, path: Path) -> str:
        for e in list_checkpoints(self.home):
            if e.path == path or e.path.resolve() == path.resolve():
                return e.name
        return path.stem

    def resolve_model(self, name: str) -> str:
        """A listed checkpoint's name for what a client sent (name, file name, title, hash)."""
        path = find_listed_checkpoint(self.home, name)
        return self._entry_name(path)

    def switch_model(self, name: str, client: str = "local") -> JobRecord:
        """Make ``name`` the model for new jobs and load it between jobs (returns the load job)."""
        resolved = self.resolve_model(name)
        self._target_model = resolved
        return self._submit(client, "load", {"model": resolved}, resolved, total=0, priority=True)

    # ------------------------------------------------------------ jobs

    def submit(self, request: GenerationRequest, client: str = "local", model: Optional[str] = None) -> JobRecord:
        """Queue a generation (validated already by the caller); the seed is fixed now, so
        a job resumed after a restart makes the same pictures."""
        model_name = self.resolve_model(model) if model else self.model_name()
        fields = self._job_fields(request)
        fields["seed"] = resolve_seed(request.seed)
        steps = planned_steps(request) if request.steps else 0
        return self._submit(client, job_kind(request), fields, model_name, total=steps * request.batch_count)

    def _job_fields(self, request: GenerationRequest) -> dict[str, Any]:
        """A request as a job stores it: its fields, with the pictures a refine starts
        from kept in HOME/inputs and named by their path there (request_of reads them back)."""
        fields = asdict(replace(request, init_image=None, mask=None))
        for name in ("init_image", "mask"):
            picture = getattr(request, name)
            if picture is not None:
                path = save_input(picture, self.home.inputs, image_hash(picture))
                fields[name] = path.relative_to(self.home.root).as_posix()
        return fields

    def submit_compare(self, cmp: "Comparison", client: str = "local", model: Optional[str] = None) -> JobRecord:
        """Queue a comparison grid (checked already: axes parsed, cells planned); its
        seeds are fixed now, like a generation's."""
        model_name = self.resolve_model(model) if model else self.model_name()
        fields = self._job_fields(cmp.request)
        fields["seed"] = resolve_seed(cmp.request.seed) if not cmp.keep_random_seeds else cmp.request.seed
        fields["compare"] = {"x": _axis_text(cmp.x), "y": _axis_text(cmp.y), "z": _axis_text(cmp.z), "vary_seeds": list(cmp.vary_seeds),
                             "keep_random_seeds": cmp.keep_random_seeds, "draw_legend": cmp.draw_legend, "margin": cmp.margin}
        nx, ny, nz = grid_shape(cmp.x, cmp.y, cmp.z)
        return self._submit(client, "compare", fields, model_name, total=nx * ny * nz * (cmp.request.steps or 0))

    def submit_upscale(self, picture, settings, client: str = "local", infotext: str = "", seed: int = 0) -> JobRecord:
        """Queue an upscale of a picture (postprocess.py; checked already), run by the
        worker like a generation so that it never competes with one for memory."""
        from dataclasses import asdict as _asdict

        path = save_input(picture, self.home.inputs, image_hash(picture))
        fields = {"init_image": path.relative_to(self.home.root).as_posix(), "upscale": _asdict(settings), "infotext": infotext, "seed": seed}
        return self._submit(client, "upscale", fields, self.model_name(), total=0)

    def _submit(self, client: str, kind: str, request: dict, model: str, total: int, priority: bool = False) -> JobRecord:
        if not priority:
            with self._cv:
                waiting = self._queue.waiting(client)
            if waiting >= self.max_queued_per_client:
                raise TooManyJobs(f"you already have {waiting} jobs waiting (the limit is {self.max_queued_per_client} per client); wait for some to finish or cancel some")
        job = self.store.add_job(client, kind, request, model, total)
        with self._cv:
            self._queue.push(client, job.id, priority=priority)
            self._emit(job.id, "state", {"state": QUEUED, "position": self._position(job.id)})
            self._cv.notify_all()
        return job

    def estimate(self, request: GenerationRequest) -> Optional[dict[str, Any]]:
        """What a request would take on the current model, for the page to show before
        Generate is pressed: None while no model is loaded (or for an invalid request).
        Safe beside the running job: it counts on weightless copies of the networks."""
        from ..budget import LONG_JOB_SECONDS

        engine = self.engine
        loaded = getattr(engine, "model", None)
        if loaded is None or loaded.name != self.model_name() or not hasattr(engine, "expected_time"):
            return None
        est = engine.expected_time(request)
        if est is None:
            return None
        return {"seconds": round(est.seconds, 1), "text": est.text(), "device": engine.placement.label, "long": est.seconds >= LONG_JOB_SECONDS}

    def job(self, job_id: str) -> JobRecord:
        job = self.store.job(job_id)
        if job is None:
            raise NotFound(f"no job {job_id!r}")
        return job

    def images(self, job_id: str) -> list[ImageRecord]:
        return self.store.images_of(job_id)

    def position(self, job_id: str) -> Optional[int]:
        with self._cv:
            return self._position(job_id)

    def _position(self, job_id: str) -> Optional[int]:
        order = self._queue.order()
        return order.index(job_id) + len(self._running) if job_id in order else None

    def queue(self) -> list[str]:
        with self._cv:
            return list(self._running) + self._queue.order()

    def cancel(self, job_id: str, reason: Optional[str] = None) -> JobRecord:
        """Cancel a waiting job (``reason``, if given, is recorded as its error), or stop
        a running one."""
        job = self.job(job_id)
        with self._cv:
            if self._queue.remove(job_id):
                self.store.update_job(job_id, state=CANCELLED, finished=time.time(), **({"error": reason} if reason else {}))
                self._emit(job_id, "done", {"state": CANCELLED, **({"error": reason} if reason else {})})
            elif job_id in self._running:
                live = self._live_for(job_id)
                live.cancel_requested = True
                live.control.cancel()  # stops inside a step or a decode, too
            elif job.final:
                raise Conflict(f"job {job_id} already finished ({job.state}); nothing to cancel")
        return self.job(job_id)

    def interrupt_client(self, client: str) -> Optional[str]:
        """AUTOMATIC1111's *interrupt*, limited to one client's own jobs.

        If ``client`` has a generation running, it stops at the next step: the partly
        denoised pictures of the current batch are kept and its later batches skipped
        (its other waiting jobs still run, as requests waiting on AUTOMATIC1111's lock
        do).  If none is running, its next waiting generation is cancelled before it
        starts (a client that gave up on a queued request).  Other clients' jobs are
        never touched.  Returns the id of the job acted on, None if there was none."""
        with self._cv:  # a re-entrant lock: cancel() below takes it again
            running = self._running_of(client)
            if running is not None:
                self._live_for(running).control.interrupt()
                return running
            waiting = self._queue.line(client)
            if not waiting:
                return None
            self.cancel(waiting[0], reason=INTERRUPTED_WHILE_QUEUED)
            return waiting[0]

    def skip_client(self, client: str) -> Optional[str]:
        """AUTOMATIC1111's *skip*, limited to ``client``'s running generation: its current
        batch stops at the next step (partly denoised pictures kept), the next batch
        runs.  Waiting jobs have no current batch, so nothing happens to them."""
        with self._cv:
            running = self._running_of(client)
            if running is not None:
                self._live_for(running).control.skip()
            return running

    def _running_of(self, client: str) -> Optional[str]:
        """The generation running now that ``client`` submitted (its oldest, with a cluster;
        caller holds the lock)."""
        for job_id in self._running:
            job = self.store.job(job_id)
            if job is not None and job.client == client and job.kind in GENERATION_KINDS and not job.final:
                return job.id
        return None

    def current(self) -> tuple[Optional[JobRecord], Optional[Live]]:
        """The running job (the oldest running, with a cluster) and its live state."""
        with self._cv:
            job_id = next(iter(self._running), None)
            live = self._live.get(job_id) if job_id else None
        return (self.store.job(job_id) if job_id else None), live

    def cluster_status(self) -> Optional[dict[str, Any]]:
        """None on one machine; with a cluster, each worker (device, what it holds, the
        job it runs, how many it ran and loaded) and the jobs waiting for one."""
        if self.pool is None:
            return None
        rows = []
        for w in self.pool.status():
            if w.get("lost"):
                continue
            rows.append({"name": w["name"], "host": w.get("host"), "device": w.get("device"), "model": w.get("model"), "loras": w.get("loras") or [],
                         "free_memory": w.get("free_memory"), "job": w.get("job"), "jobs_run": w.get("jobs_run", 0), "loads": len(w.get("loads") or [])})
        lines = self.pool.lines()
        with self._cv:
            waiting = len(self._queue)
            queued = set(self._queue.order())
            for row in rows:  # the waiting jobs the last round planned for each worker, in order
                row["queue"] = [j for j in lines.get(row["name"], ()) if j in queued]
        return {"workers": rows, "waiting": waiting, "running": sum(1 for r in rows if r["job"])}

    def wait(self, job_id: str, timeout: Optional[float] = None) -> JobRecord:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cv:
            while True:
                job = self.job(job_id)
                if job.final:
                    return job
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return job
                self._cv.wait(timeout=1.0 if left is None else min(left, 1.0))

    def events_after(self, job_id: str, after: int) -> list[Event]:
        """The job's events with a sequence number above ``after`` (never blocks).
        A job finished long ago (no live record) gets its outcome as one ``done`` event."""
        job = self.job(job_id)
        with self._cv:
            live = self._live.get(job_id)
            if live is not None and (after < live.seq or not job.final):
                return [e for e in live.events if e.seq > after]
            seq = live.seq if live is not None else self._event_id
        # finished long ago, or the client asks from past the end (an id from another
        # run, or made up): its outcome as one ``done`` event, so no stream hangs
        return [Event(max(seq, after + 1), "done", self._done_data(job))]

    async def stream(self, job_id: str, after: int = 0, heartbeat: float = 15.0, poll: float = 0.05) -> AsyncIterator[Optional[Event]]:
        """Events of a job in order from ``after`` on, ending with its ``done`` event;
        ``None`` as a heartbeat when nothing happened for ``heartbeat`` seconds.  Waits
        on the event loop, so a thousand listeners hold no threads."""
        async for e in follow_events(lambda seq: self.events_after(job_id, seq), after, heartbeat, poll):
            yield e

    async def wait_async(self, job_id: str, poll: float = 0.05) -> JobRecord:
        """:meth:`wait` for the event loop (AUTOMATIC1111's blocking txt2img)."""
        while True:
            job = self.job(job_id)
            if job.final:
                return job
            await asyncio.sleep(poll)

    # ------------------------------------------------------------ worker

    def _live_for(self, job_id: str) -> Live:
        live = self._live.get(job_id)
        if live is None:
            live = self._live[job_id] = Live()
            while len(self._live) > self._keep_live:
                oldest = next(iter(self._live))
                if oldest in self._running or oldest in self._queue.order():
                    break
                self._live.pop(oldest)
        return live

    def _emit(self, job_id: str, kind: str, data: dict) -> None:
        """Record an event (caller holds the lock)."""
        live = self._live_for(job_id)
        self._event_id += 1
        live.seq = self._event_id
        live.events.append(Event(live.seq, kind, data))
        if kind == "progress" and len(live.events) > 400:  # keep memory bounded on long jobs
            keep = [e for e in live.events if e.kind != "progress"] + live.events[-50:]
            live.events = sorted({e.seq: e for e in keep}.values(), key=lambda e: e.seq)
        self._cv.notify_all()

    def _work(self) -> None:
        """One machine: the jobs run here, one at a time, in the fair order."""
        while True:
            with self._cv:
                while not self._stopping and not len(self._queue):
                    self._cv.wait(timeout=FLUSH_EVERY)
                    if self.store.unsaved:
                        self._flush_store()
                if self._stopping:
                    return
                job_id = self._queue.pop()
                self._running[job_id] = "local"
            self._run_guarded(job_id, "local", self._run_here)

    def _run_here(self, task: Task, control: JobControl, emit) -> None:
        execute(self.engine, task, control, emit)

    def _run_guarded(self, job_id: str, worker: str, runner) -> None:
        try:
            self._run(job_id, runner, worker)
        except BaseException as exc:  # noqa: BLE001 - the worker must survive anything a job does
            log.exception("job %s crashed the worker loop", job_id)
            self._end_anyway(job_id, exc)
        finally:
            with self._cv:
                self._running.pop(job_id, None)
                self._threads.pop(job_id, None)
                self._cv.notify_all()

    # ------------------------------------------------------------ a cluster

    def _dispatch(self) -> None:
        """A cluster: each round, the scheduler (cluster/scheduler.py) places waiting jobs
        on idle workers, and a thread follows each started job to its end."""
        from ..cluster.scheduler import assign

        def plan_for(order, workers, est):
            if self.scheduler is not None:
                return self.scheduler(order, workers, est)
            return assign(order, workers, est, **({"patience": self.patience} if self.patience is not None else {}))

        while True:
            with self._cv:
                if self._stopping:
                    return
                if self.store.unsaved:
                    self._flush_store()
                waiting = bool(len(self._queue))
            self.pool.refresh(force=False)  # a worker that joined is known before the next job comes
            if waiting:
                with self._cv:
                    order = [self._view(job_id) for job_id in self._queue.order()]
                    order = [v for v in order if v is not None]
                plan = plan_for(order, self.pool.views(), self.pool.estimates)
                self.pool.publish_lines(plan.lines)
                for job_id in plan.unrunnable:
                    self._refused_everywhere(job_id)
                with self._cv:
                    for job_id, worker in plan.start:
                        if self._stopping or not self._queue.remove(job_id):
                            continue
                        view, _ = self._views.pop(job_id)
                        self.pool.claim(worker, job_id, view.work)
                        self._running[job_id] = worker
                        runner = self._remote_runner(worker, job_id)
                        thread = self._threads[job_id] = threading.Thread(target=self._run_guarded, args=(job_id, worker, runner), name=f"brushwork-job-{job_id}", daemon=True)
                        thread.start()
            else:  # the queue is empty: no worker has a planned line (sends only on a change)
                self.pool.publish_lines({})
            with self._cv:
                if not self._stopping:
                    self._cv.wait(timeout=DISPATCH_EVERY)

    def _remote_runner(self, worker: str, job_id: str):
        def run(task: Task, control: JobControl, emit) -> None:
            self.pool.run(worker, job_id, task, control, emit)

        return run

    def _view(self, job_id: str):
        """The scheduler's view of a waiting job (caller holds the lock)."""
        from ..cluster.scheduler import JobView
        from ..cluster.worker import lora_names

        known = self._views.get(job_id)
        if known is None:
            job = self.store.job(job_id)
            if job is None:
                return None
            prompt = job.request.get("prompt", "") if isinstance(job.request, dict) else ""
            view = JobView(job_id, job.client, None if job.kind == "upscale" else job.model, float(job.total if job.kind != "load" else 0), lora_names(prompt))
            known = self._views[job_id] = (view, job.submitted)
        view, submitted = known
        return replace(view, refused_by=frozenset(self._refused.get(job_id, ())), waited=max(0.0, time.time() - submitted))

    def _requeue(self, job: JobRecord, why: str) -> None:
        """Put a job whose worker could not finish it back at the head of the queue."""
        self.store.update_job(job.id, state=QUEUED, started=None)
        with self._cv:
            live = self._live_for(job.id)
            live.control = JobControl()
            live.step = 0
            self._queue.push_front(job.client, job.id, priority=job.kind == "load")
            self._emit(job.id, "state", {"state": QUEUED, "position": self._position(job.id), "requeued": why})
            self._cv.notify_all()

    def _refused_everywhere(self, job_id: str) -> None:
        with self._cv:
            if not self._queue.remove(job_id):
                return
            self._views.pop(job_id, None)
        why = self._refusal_text.get(job_id, "no worker of the cluster can run it")
        self._finish(job_id, FAILED, error=f"{why} (every worker of the cluster refused it)", error_kind="request")

    def _cluster_fault(self, job: JobRecord, worker: str, exc: BaseException, warnings: list[str]) -> bool:
        """A job's run on a cluster worker ended without finishing it: put it back in the
        queue when another try can succeed (True), else leave it to the usual failure."""
        from ..cluster.pool import WorkerLost

        if self._stopping:
            return False
        if isinstance(exc, WorkerLost):
            tries = self._attempts[job.id] = self._attempts.get(job.id, 0) + 1
            if tries > MAX_RETRIES:
                self._finish(job.id, FAILED, error=f"{exc}; it was lost {tries} times, so it is not tried again", error_kind="worker", warnings=warnings)
                return True
            self._refused.setdefault(job.id, set()).add(worker)  # a worker that died on it is not tried again
            log.warning("job %s: %s; running it again elsewhere (try %d of %d)", job.id, exc, tries + 1, MAX_RETRIES + 1)
            self._requeue(job, str(exc))
            return True
        if isinstance(exc, (DoesNotFit, TooLong)):
            refused = self._refused.setdefault(job.id, set())
            refused.add(worker)
            self._refusal_text[job.id] = str(exc)
            if set(self.pool.names()) <= refused:
                return False  # nobody else: fails with the engine's own message
            self._requeue(job, f"worker {worker} refused it: {exc}")
            return True
        return False

    # ------------------------------------------------------------ running a job

    def _task(self, job: JobRecord) -> Task:
        """What the engine is asked to do for a stored job (its pictures read back)."""
        fields = job.request
        if job.kind == "upscale":
            from ..postprocess import UpscaleSettings

            picture = read_image_file(self.home.root / fields["init_image"], "picture")
            return Task("upscale", upscale=(picture, UpscaleSettings(**fields["upscale"])))
        if job.kind == "load":
            return Task("load", model=job.model)
        req = self.request_of(job)
        first = 0
        if job.kind != "compare":  # a job resumed elsewhere goes on after the batches it saved
            first = len(self.store.images_of(job.id)) // max(1, req.batch_size)
        return Task(job.kind, model=job.model, request=req, compare=fields.get("compare"), first_batch=first, preview_every=self.preview_every)

    def _run(self, job_id: str, runner, worker: str = "local") -> None:
        job = self.store.job(job_id)
        if job is None or job.state != QUEUED:
            return
        started = time.time()
        self.store.update_job(job_id, state=RUNNING, started=started)
        with self._cv:
            live = self._live_for(job_id)
            live.started = time.monotonic()
            self._emit(job_id, "state", {"state": RUNNING, **({"worker": worker} if self.pool is not None else {})})
        warnings: list[str] = []
        handler = _WarningCollector(warnings)
        logging.getLogger("brushwork").addHandler(handler)
        results: list = []  # a comparison's cells, for its grid
        try:
            task = self._task(job)
            if job.kind != "load":
                folder = ensure_writable_folder(self.home.outputs / _dt.date.today().isoformat())  # before any work
                if task.request is not None:
                    check_room(folder, task.request)
            else:
                folder = self.home.outputs
            if self._stopping:
                live.control.cancel()
            runner(task, live.control, self._recorder(job, live, folder, warnings, results))
            if job.kind == "compare" and results and not live.control.interrupted:
                self._record_grid(job, comparison(task.request, task.compare), results)
        except Exception as exc:
            if self.pool is not None and self._cluster_fault(job, worker, exc, warnings):
                return
            if is_disk_full(exc):
                saved = len(self.store.images_of(job_id))
                kept = f" The {saved} picture(s) saved before that are kept." if saved else ""
                self._finish(job_id, FAILED, error=f"the disk holding the data home is full: {exc}. Free some space and submit the job again.{kept}", error_kind="storage", warnings=warnings)
                return
            if isinstance(exc, REQUEST_ERRORS):
                self._finish(job_id, FAILED, error=str(exc), error_kind="request", warnings=warnings)
            else:
                log.exception("job %s failed", job_id)
                self._finish(job_id, FAILED, error=f"{type(exc).__name__}: {exc}", error_kind="internal", warnings=warnings)
            return
        finally:
            logging.getLogger("brushwork").removeHandler(handler)
        if self._stopping and live.control.interrupted and not live.cancel_requested:
            if self.pool is not None:  # the next server start hands it out again, after the pictures it saved
                self._requeue(job, "the server was stopped while it ran")
                return
            self._finish(job_id, FAILED, error="the server was stopped while this job was running; submit it again", error_kind="stopped", warnings=warnings)
        elif live.cancel_requested:
            self._finish(job_id, CANCELLED, warnings=warnings)
        elif live.control.interrupted and job.kind not in ("upscale", "load"):
            self._finish(job_id, INTERRUPTED, warnings=warnings)
        else:
            self._finish(job_id, DONE, warnings=warnings)

    def _recorder(self, job: JobRecord, live: Live, folder: Path, warnings: list[str], results: list):
        """What the studio does with each outcome of a job's run (execution.py), wherever
        it ran: pictures saved and recorded as they come, progress and previews sent."""
        first_index = len(self.store.images_of(job.id))
        records: list[ImageRecord] = []

        def record(img, path: Path) -> ImageRecord:
            rec = self._record(job, img, path, first_index + len(records))
            records.append(rec)
            return rec

        def emit(outcome) -> None:
            if isinstance(outcome, Step):
                data: dict[str, Any] = {"step": outcome.step, "total": outcome.total, "eta": outcome.eta}
                if outcome.preview is not None:
                    data["preview"] = "data:image/jpeg;base64," + base64.b64encode(outcome.preview).decode()
                with self._cv:  # step and preview change together
                    live.step, live.total, live.eta = outcome.step, outcome.total, outcome.eta
                    if outcome.preview is not None:
                        live.preview = outcome.preview
                    self._emit(job.id, "progress", data)
                if self._stopping:
                    live.control.cancel()
            elif isinstance(outcome, Picture):  # saved and recorded as soon as its batch is done
                img = outcome.image
                rec = record(img, save_png(img.image, folder, img.seed, img.infotext))
                with self._cv:
                    self._emit(job.id, "image", {"image": image_view(rec), "complete": img.complete})
            elif isinstance(outcome, Cell):  # a comparison's cell, with its place in the grid
                r = outcome.result
                rec = record(r.image, save_png(r.image.image, folder, r.image.seed, r.image.infotext))
                results.append(r)
                with self._cv:
                    self._emit(job.id, "image", {"image": image_view(rec), "complete": r.image.complete, "cell": {"x": r.cell.ix, "y": r.cell.iy, "z": r.cell.iz}, "cells": r.total})
            elif isinstance(outcome, Upscaled):
                rec = self._record_upscaled(job, outcome, folder)
                with self._cv:
                    self._emit(job.id, "image", {"image": image_view(rec), "complete": True})
            elif isinstance(outcome, Loaded):
                self.store.update_job(job.id, model=outcome.name, model_hash=outcome.short_hash)
            elif isinstance(outcome, Warned):
                warnings.append(outcome.message)

        return emit

    def request_of(self, job: JobRecord) -> GenerationRequest:
        """A job's request, its pictures read back from HOME/inputs."""
        fields = dict(job.request)
        fields.pop("compare", None)
        for name in ("init_image", "mask"):
            if fields.get(name):
                fields[name] = read_image_file(self.home.root / fields[name], name.replace("_", " "))
        return GenerationRequest(**fields)

    def _record_upscaled(self, job: JobRecord, outcome: Upscaled, folder: Path) -> ImageRecord:
        """An upscaled picture saved with its infotext plus the upscale keys, and
        recorded like a generated picture."""
        from ..infotext import InfotextError, params_from_infotext
        from ..postprocess import with_postprocess

        fields = job.request
        out = outcome.image
        text = with_postprocess(fields.get("infotext") or "", outcome.extra)
        try:
            p = params_from_infotext(fields["infotext"]) if fields.get("infotext") else None
        except InfotextError:
            p = None
        seed = int(fields.get("seed") or 0)
        path = save_png(out, folder, seed, text)
        rel = path.resolve().relative_to(self.home.root.resolve()).as_posix()
        return self.store.add_image(job.id, 0, rel, seed, out.width, out.height, p.prompt if p else "", p.negative_prompt if p else "", text,
                                    (p.model_name or "") if p else "", (p.model_hash or "") if p else "")

    def _flush_store(self) -> None:
        try:
            self.store.flush()
        except Exception:  # noqa: BLE001 - retried at the next round
            log.debug("history flush failed", exc_info=True)

    def _end_anyway(self, job_id: str, exc: BaseException) -> None:
        """A job whose run raised past every handler still ends: failed, with a done event."""
        try:
            job = self.store.job(job_id)
            if job is not None and not job.final:
                self._finish(job_id, FAILED, error=f"{type(exc).__name__}: {exc}", error_kind="internal")
        except Exception:  # noqa: BLE001
            log.exception("could not record the end of job %s", job_id)
            with self._cv:
                self._emit(job_id, "done", {"state": FAILED, "error": f"{type(exc).__name__}: {exc}", "warnings": [], "images": []})

    def _record(self, job: JobRecord, img, path: Path, index: int) -> ImageRecord:
        rel = path.resolve().relative_to(self.home.root.resolve()).as_posix()
        return self.store.add_image(job.id, index, rel, img.seed, img.image.width, img.image.height, img.params.prompt, img.params.negative_prompt, img.infotext, img.params.model_name, img.params.model_hash)

    def _record_grid(self, job: JobRecord, cmp: Comparison, results: list) -> None:
        """A comparison's grid picture, after its cells: saved under HOME/outputs/grids
        and announced with ``grid: true``."""
        picture, text = grid_picture(cmp, results)
        grids = ensure_writable_folder(self.home.outputs / "grids" / _dt.date.today().isoformat())
        first = results[0].image
        grid = replace(first, image=picture, infotext=text)
        rec = self._record(job, grid, save_png(picture, grids, first.seed, text), len(self.store.images_of(job.id)))
        with self._cv:
            self._emit(job.id, "image", {"image": image_view(rec), "complete": True, "grid": True})

    def _finish(self, job_id: str, state: str, error: Optional[str] = None, error_kind: Optional[str] = None, warnings: Optional[list[str]] = None) -> None:
        self.store.update_job(job_id, state=state, finished=time.time(), error=error, error_kind=error_kind, warnings=warnings or [])
        job = self.store.job(job_id)
        assert job is not None
        with self._cv:
            self._emit(job_id, "done", self._done_data(job))
            self._live_for(job_id).preview = None
            # previews are the heavy part of a finished job's events: keep them for the
            # last few jobs (late listeners), drop them from older ones
            self._finished.append(job_id)
            while len(self._finished) > KEEP_PREVIEWS:
                old = self._live.get(self._finished.popleft())
                if old is not None:
                    old.events = [Event(e.seq, e.kind, {k: v for k, v in e.data.items() if k != "preview"}) if e.kind == "progress" else e for e in old.events]

    def _done_data(self, job: JobRecord) -> dict[str, Any]:
        return {"state": job.state, "error": job.error, "warnings": job.warnings, "images": [image_view(r) for r in self.store.images_of(job.id)]}


async def follow_events(events_after: Callable[[int], list], after: int = 0, heartbeat: float = 15.0, poll: float = 0.05) -> AsyncIterator[Optional[Any]]:
    """Events (anything with ``seq`` and ``kind``) from ``events_after(seq)`` in order,
    polled on the event loop, ending after the ``done`` one; ``None`` as a heartbeat
    when nothing came for ``heartbeat`` seconds (jobs here, downloads in downloads.py)."""
    sent, quiet = after, 0.0
    while True:
        fresh = events_after(sent)
        for e in fresh:
            sent = e.seq
            yield e
            if e.kind == "done":
                return
        if fresh:
            quiet = 0.0
            continue
        await asyncio.sleep(poll)
        quiet += poll
        if quiet >= heartbeat:
            quiet = 0.0
            yield None


def check_room(folder: Path, req: GenerationRequest) -> None:
    """Refuse to start when the disk cannot hold one batch of the job's pictures."""
    pixels = (req.width or 1024) * (req.height or 1024) * req.batch_size
    need = int(pixels * PNG_BYTES_PER_PIXEL) + (1 << 20)
    free = shutil.disk_usage(folder).free
    if free < need:
        raise DiskFull(errno.ENOSPC, f"only {free / 2**20:.1f} MB are free where the pictures go, and one batch of this job needs about {need / 2**20:.1f} MB")


class _WarningCollector(logging.Handler):
    """Collects the worker thread's warnings (missing LoRAs, fp16 fallbacks...) for the job."""

    def __init__(self, sink: list[str]):
        super().__init__(logging.WARNING)
        self.sink = sink
        self.thread = threading.get_ident()

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread:
            self.sink.append(record.getMessage())


def _axis_text(axis) -> Optional[str]:
    return None if axis is None or axis.label == "Nothing" else f"{axis.label}: {axis.raw}"


def image_view(rec: ImageRecord) -> dict[str, Any]:
    return {"grid": rec.path.startswith("outputs/grids/"), "id": rec.id, "job_id": rec.job_id, "index": rec.idx, "url": f"/api/v1/images/{rec.id}", "seed": rec.seed, "width": rec.width, "height": rec.height, "prompt": rec.prompt, "negative_prompt": rec.negative_prompt, "infotext": rec.infotext, "model": rec.model, "model_hash": rec.model_hash, "created": rec.created, "stopped_at": stopped_step(rec.infotext)}


