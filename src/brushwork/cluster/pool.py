"""The server's side of a cluster: the worker actors it finds, and running a job on one.

``brushwork serve --cluster auto|ADDRESS`` makes a :class:`WorkerPool`; the studio
(server/studio.py) asks it which workers there are (:meth:`WorkerPool.views`, for
cluster/scheduler.py) and runs each job with :meth:`WorkerPool.run`, which sends
the task, collects the outcomes as they come (progress, previews, pictures) and
hands them to the studio, which records them as it records its own.

Workers are found by name in the ``brushwork`` namespace, looked for again every
``refresh`` seconds, so a worker that joins later is used at its first round.  A
worker whose actor died (its process or machine gone, or killed) raises
:class:`WorkerLost` from :meth:`run`; the studio puts the job back in the queue.

Ray is imported here only, and this module only with ``--cluster``.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from .scheduler import Estimates, WorkerView
from .worker import NAMESPACE, PREFIX

log = logging.getLogger(__name__)

#: seconds between looks for workers that joined or left
REFRESH_SECONDS = 2.0
#: how long one call to a worker may take before it counts as gone (seconds)
CALL_TIMEOUT = 60.0
#: how long a poll waits on the worker for news
POLL_WAIT = 0.25


class WorkerLost(RuntimeError):
    """The worker running a job died or stopped answering; the job can run elsewhere."""

    def __init__(self, worker: str, reason: str):
        super().__init__(f"worker {worker} was lost while running the job: {reason}")
        self.worker = worker
        self.reason = reason


class NoCluster(RuntimeError):
    """No Ray cluster could be reached (the message says how to start one)."""


@dataclass
class _Worker:
    name: str
    handle: Any
    info: dict = field(default_factory=dict)
    job: Optional[str] = None  # the job the server runs on it now
    job_work: float = 0.0
    job_started: float = 0.0
    lost: Optional[str] = None
    orphan: Optional[str] = None  # a job a server before this one left running on it (cancelled)
    line: tuple = ()  # the planned queue last sent to it


def connect(address: Optional[str]) -> None:
    """Join the Ray cluster at ``address`` (``auto``: the one this machine is part of)."""
    try:
        import ray
    except ImportError:
        raise NoCluster('--cluster needs Ray: pip install -e ".[cluster]" (or pip install "ray>=2.9")') from None
    if ray.is_initialized():
        return
    try:
        ray.init(address=address or "auto", namespace=NAMESPACE, log_to_driver=False, include_dashboard=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = "on this machine" if address in (None, "auto") else f"at {address}"
        raise NoCluster(f"no Ray cluster {where} ({exc}). Start one with: ray start --head   (then add workers: brushwork worker --address HEAD:6379)") from None


class WorkerPool:
    """The workers of a Ray cluster, as one server uses them."""

    def __init__(self, address: Optional[str] = None, refresh: float = REFRESH_SECONDS, estimates: Optional[Estimates] = None):
        connect(address)
        self.refresh_every = refresh
        self.estimates = estimates or Estimates()
        self._workers: dict[str, _Worker] = {}
        self._lock = threading.Lock()
        self._looked = 0.0
        self.refresh()

    # ------------------------------------------------------------ which workers

    def refresh(self, force: bool = True) -> None:
        """Look for workers that joined (and forget ones that are gone)."""
        import ray

        now = time.monotonic()
        if not force and now - self._looked < self.refresh_every:
            return
        self._looked = now
        try:
            names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a.get("namespace") == NAMESPACE and a["name"].startswith(PREFIX)]
        except Exception:  # noqa: BLE001 - the head is briefly unreachable: keep what we know
            log.warning("could not list the cluster's workers", exc_info=True)
            return
        for name in names:
            with self._lock:
                known = name in self._workers and self._workers[name].lost is None
            if known:
                continue
            try:
                handle = ray.get_actor(name, namespace=NAMESPACE)
                info = ray.get(handle.info.remote(), timeout=CALL_TIMEOUT)
            except Exception as exc:  # noqa: BLE001 - still starting, or already gone
                log.debug("worker %s not ready: %s", name, exc)
                continue
            worker = _Worker(name, handle, info)
            if info.get("running"):
                # no server but this one is meant to use the cluster, so a job running on a
                # worker it has just found was left by a server that stopped: that server's
                # job is queued again here (from the pictures it saved), so this run is cancelled
                worker.orphan = info["running"]
                handle.control.remote(worker.orphan, "cancel")
                log.info("worker %s still ran job %s for a server that stopped: cancelled", name, worker.orphan)
            with self._lock:
                self._workers[name] = worker
            log.info("worker %s joined (%s on %s)", name, info.get("device"), info.get("host"))
        self._check_orphans()
        with self._lock:
            for name in [n for n, w in self._workers.items() if n not in names and w.job is None]:
                log.info("worker %s left", name)
                del self._workers[name]

    def _check_orphans(self) -> None:
        """A worker whose left-over job has ended is free again."""
        with self._lock:
            waiting = [w for w in self._workers.values() if w.orphan is not None and w.lost is None]
        for w in self._ask_info(waiting):
            if not w.info.get("running"):
                with self._lock:
                    w.orphan = None

    def names(self) -> list[str]:
        with self._lock:
            return [n for n, w in self._workers.items() if w.lost is None]

    def views(self) -> list[WorkerView]:
        """The workers for the scheduler: what each holds and how long it is busy."""
        now = time.monotonic()
        out = []
        with self._lock:
            for w in self._workers.values():
                if w.lost is not None:
                    continue
                busy = 0.0
                if w.orphan is not None:
                    out.append(WorkerView(w.name, w.info.get("model"), 1.0, False, frozenset(w.info.get("loras") or ()), w.info.get("free_memory")))
                    continue
                if w.job is not None:
                    busy = max(0.0, self.estimates.run_seconds(w.name, w.job_work) - (now - w.job_started))
                out.append(WorkerView(w.name, w.info.get("model"), busy, w.job is None, frozenset(w.info.get("loras") or ()), w.info.get("free_memory")))
        return out

    def status(self) -> list[dict[str, Any]]:
        """Each worker's last report, with the job the server runs on it."""
        with self._lock:
            return [{**w.info, "name": w.name, "job": w.job, "lost": w.lost} for w in self._workers.values()]

    def update_info(self) -> None:
        """Ask every idle worker for a fresh report (free memory, what it holds)."""
        with self._lock:
            idle = [w for w in self._workers.values() if w.lost is None and w.job is None and w.orphan is None]
        self._ask_info(idle)

    def _ask_info(self, workers: list[_Worker]) -> list[_Worker]:
        """Fresh reports from ``workers``; one that does not answer is lost.  Returns
        those that answered."""
        import ray

        answered = []
        for w in workers:
            try:
                info = ray.get(w.handle.info.remote(), timeout=CALL_TIMEOUT)
            except Exception as exc:  # noqa: BLE001 - any failure to answer means the worker is gone
                self._lose(w.name, _reason(exc))
                continue
            with self._lock:
                w.info = info
            answered.append(w)
        return answered

    def publish_lines(self, lines: dict) -> None:
        """Tell each worker whose planned queue changed what it is to run next (no wait
        for an answer: a worker that is gone is noticed by the next call that needs it).
        Nothing is sent where nothing changed, so it may be called every round."""
        with self._lock:
            changed = []
            for w in self._workers.values():
                line = tuple(lines.get(w.name, ()))
                if w.lost is None and w.line != line:
                    w.line = line
                    changed.append((w, line))
        for w, line in changed:
            try:
                w.handle.set_queue.remote(list(line))
            except Exception:  # noqa: BLE001 - shown only; a lost worker is handled where it matters
                log.debug("could not send worker %s its planned queue", w.name, exc_info=True)

    def lines(self) -> dict[str, tuple]:
        """Worker name -> the waiting jobs last planned for it (:meth:`publish_lines`)."""
        with self._lock:
            return {w.name: w.line for w in self._workers.values()}

    def _lose(self, name: str, reason: str) -> None:
        with self._lock:
            w = self._workers.get(name)
            if w is not None and w.lost is None:
                w.lost = reason
                log.warning("worker %s lost: %s", name, reason)

    # ------------------------------------------------------------ running a job

    def claim(self, name: str, job_id: str, work: float) -> None:
        with self._lock:
            w = self._workers[name]
            w.job, w.job_work, w.job_started = job_id, work, time.monotonic()

    def run(self, name: str, job_id: str, task, control, emit: Callable[[Any], None]) -> None:
        """Run ``task`` on worker ``name`` until it ends, handing each outcome to ``emit``
        and forwarding what ``control`` is told (cancel, interrupt, skip).  Raises the
        job's own error as the worker raised it, or :class:`WorkerLost`."""
        import ray

        from ..execution import Loaded

        with self._lock:
            w = self._workers[name]
        t0 = time.monotonic()
        sent: set = set()
        try:
            try:
                ray.get(w.handle.start.remote(job_id, task), timeout=CALL_TIMEOUT)
                taken = 0
                while True:
                    for action in _actions(control, sent):
                        w.handle.control.remote(job_id, action)
                    fresh, done, error = ray.get(w.handle.poll.remote(job_id, taken, POLL_WAIT), timeout=CALL_TIMEOUT)
                    taken += len(fresh)
                    for outcome in fresh:
                        if isinstance(outcome, Loaded):
                            with self._lock:
                                w.info = {**w.info, "model": task.model}
                            if outcome.fresh:
                                self.estimates.saw_load(name, task.model or outcome.name, outcome.seconds)
                                t0 = time.monotonic()  # the run's time starts after the load
                        emit(outcome)
                    if done:
                        break
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError, ray.exceptions.ActorUnavailableError) as exc:
                self._lose(name, _reason(exc))
                raise WorkerLost(name, _reason(exc)) from None
            if error is not None:
                raise error
            with self._lock:
                work = w.job_work
            self.estimates.saw_run(name, work, time.monotonic() - t0)
        finally:
            with self._lock:
                w.job = None
                if w.lost is not None:
                    self._workers.pop(name, None)
            if w.lost is None:
                try:
                    info = ray.get(w.handle.info.remote(), timeout=CALL_TIMEOUT)
                    with self._lock:
                        w.info = info
                except Exception as exc:  # noqa: BLE001
                    self._lose(name, _reason(exc))


def _actions(control, sent: set) -> list[str]:
    """What ``control`` was told since the last look, once each (a skip again after the
    engine took the last one)."""
    out = []
    for action, flag in (("cancel", control.cancelled), ("interrupt", control.interrupted)):
        if flag and action not in sent:
            sent.add(action)
            out.append(action)
    if control.skipped:
        control.skipped = False  # the worker's engine resets its own after the batch
        out.append("skip")
    return out


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = next((line for line in text if line.strip()), type(exc).__name__)
    return f"{type(exc).__name__}: {first[:300]}"


# ---------------------------------------------------------------- status for the CLI


def queued_in(db) -> Optional[int]:
    """How many jobs wait in the server database at ``db`` (None: there is none), read
    without opening it for writing (the server may be running)."""
    import sqlite3
    from pathlib import Path

    path = Path(db)
    if not path.is_file():
        return None
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            return int(con.execute("SELECT count(*) FROM jobs WHERE state = 'queued'").fetchone()[0])
        finally:
            con.close()
    except sqlite3.Error:
        return None
