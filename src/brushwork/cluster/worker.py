"""A Brushwork worker: one engine inside a Ray actor, running the jobs a server sends.

``brushwork worker --address HEAD:PORT`` starts one of these per visible GPU (or one
on the CPU) on the machine it runs on, as named actors in the ``brushwork``
namespace; ``brushwork serve --cluster`` finds them by name (cluster/pool.py).

A worker holds no history and writes no file.  It receives a
:class:`~brushwork.execution.Task` (pictures included), runs it with
:func:`~brushwork.execution.execute` in a thread of its own, and keeps the outcomes
(progress with previews, pictures with their infotexts) for the server to collect
with :meth:`EngineWorker.poll`.  The actor is threaded, so ``control`` (cancel,
interrupt, skip), ``info`` and ``poll`` are answered while a job runs; the engine
itself runs one job at a time.

This module imports no Ray at the top: :func:`actor_class` makes the actor class
when a cluster is used.
"""
from __future__ import annotations

import logging
import os
import pickle
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Optional

log = logging.getLogger(__name__)

#: the Ray namespace Brushwork's workers and servers meet in
NAMESPACE = "brushwork"
#: every worker actor's name starts with this
PREFIX = "brushwork-worker-"
#: calls a worker answers at once (poll, control, info) beside the running job
CONCURRENCY = 8


@dataclass
class _Run:
    job_id: str
    control: Any
    outcomes: list = field(default_factory=list)
    done: bool = False
    error: Optional[BaseException] = None
    cv: threading.Condition = field(default_factory=threading.Condition)


class EngineWorker:
    """What one worker actor holds: an engine, and the job running on it."""

    def __init__(self, name: str, home: str, device: Optional[str] = None, threads: Optional[str] = None, memory_limit: Optional[str] = None,
                 max_job_minutes: Optional[float] = None):
        from ..budget import optional_limit
        from ..engine import Engine

        self.name = name
        self.engine = Engine(home, device=device, threads=threads, memory_limit=memory_limit, max_job_seconds=optional_limit(max_job_minutes))
        self.model: Optional[str] = None  # the listed checkpoint name the last job loaded
        self.loras: frozenset = frozenset()
        self.loads: list[str] = []  # every checkpoint read from disk, in order (counted by tests and status)
        self.jobs_run = 0
        self._engine_lock = threading.Lock()
        self._runs: dict[str, _Run] = {}
        self._running: Optional[str] = None
        self.queue: list[str] = []  # the waiting jobs the server plans to run here next

    # ------------------------------------------------------------ jobs

    def start(self, job_id: str, task) -> None:
        """Start ``task`` as job ``job_id`` and return at once (its outcomes: :meth:`poll`)."""
        from ..engine import JobControl

        if self._running is not None:
            raise RuntimeError(f"worker {self.name} is running job {self._running} already")
        for old in [k for k, r in self._runs.items() if r.done]:  # ended, never collected: its server went away
            del self._runs[old]
        run = self._runs[job_id] = _Run(job_id, JobControl())
        self._running = job_id
        threading.Thread(target=self._execute, args=(run, task), name=f"brushwork-job-{job_id}", daemon=True).start()

    def _execute(self, run: _Run, task) -> None:
        from ..execution import Loaded, Warned, execute

        def emit(outcome) -> None:
            if isinstance(outcome, Loaded):
                self.model = task.model
                if outcome.fresh:
                    self.loads.append(task.model or outcome.name)
            with run.cv:
                run.outcomes.append(outcome)
                run.cv.notify_all()

        collector = _ThreadWarnings(lambda text: emit(Warned(text)))
        logging.getLogger("brushwork").addHandler(collector)
        try:
            with self._engine_lock:
                execute(self.engine, task, run.control, emit)
                self.loras = _lora_set(task)
                self.jobs_run += 1
        except BaseException as exc:  # noqa: BLE001 - every failure goes back to the server
            run.error = sendable(exc)
        finally:
            logging.getLogger("brushwork").removeHandler(collector)
            with run.cv:
                run.done = True
                run.cv.notify_all()
            self._running = None

    def poll(self, job_id: str, taken: int, wait: float = 0.5) -> tuple[list, bool, Optional[BaseException]]:
        """The job's outcomes after the first ``taken`` ones (waiting up to ``wait``
        seconds for one), whether it has ended, and the error it ended with."""
        run = self._runs.get(job_id)
        if run is None:
            raise KeyError(f"worker {self.name} has no job {job_id}")
        with run.cv:
            if len(run.outcomes) <= taken and not run.done:
                run.cv.wait(wait)
            fresh = run.outcomes[taken:]
            done, error = run.done and len(run.outcomes) == taken + len(fresh), run.error
        if done:
            self._runs.pop(job_id, None)
        return fresh, done, error

    def control(self, job_id: str, action: str) -> bool:
        """``cancel``, ``interrupt`` or ``skip`` the job (False: it is not running here)."""
        run = self._runs.get(job_id)
        if run is None or run.done:
            return False
        getattr(run.control, action)()
        return True

    # ------------------------------------------------------------ state

    def set_queue(self, job_ids: list[str]) -> None:
        """The server's plan: the waiting jobs this worker is to run next, in order
        (shown by ``info``; the server still sends each job when the worker is free)."""
        self.queue = list(job_ids)

    def info(self) -> dict[str, Any]:
        from ..devices import free_memory_bytes

        e = self.engine
        try:
            free = free_memory_bytes(e.placement.device)
        except Exception:  # noqa: BLE001 - shown, not needed
            free = None
        return {"name": self.name, "host": socket.gethostname(), "pid": os.getpid(), "device": e.placement.label, "model": self.model,
                "loras": sorted(self.loras), "free_memory": free, "running": self._running, "loads": list(self.loads), "jobs_run": self.jobs_run,
                "queue": [j for j in self.queue if j != self._running]}


def _lora_set(task) -> frozenset:
    req = getattr(task, "request", None) or getattr(getattr(task, "compare", None), "request", None)
    return lora_names(req.prompt) if req is not None else frozenset()


def lora_names(prompt: str) -> frozenset:
    """The LoRAs a prompt asks for, by name (what a worker keeps merged after the job)."""
    from ..prompts import extract_extra_networks

    return frozenset(n.name.lower() for n in extract_extra_networks(prompt or "").networks if n.kind == "lora")


def sendable(exc: BaseException) -> BaseException:
    """``exc`` if it pickles whole (the server re-raises it as the engine raised it),
    else a RuntimeError with its type and message."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001
        return RuntimeError(f"{type(exc).__name__}: {exc}")


class _ThreadWarnings(logging.Handler):
    """The warnings logged by the thread that made it (the job's own)."""

    def __init__(self, sink):
        super().__init__(logging.WARNING)
        self.sink = sink
        self.thread = threading.get_ident()

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread:
            self.sink(record.getMessage())


# ---------------------------------------------------------------- starting workers

def actor_class():
    """:class:`EngineWorker` as a threaded Ray actor class (imports Ray)."""
    import ray

    return ray.remote(max_concurrency=CONCURRENCY)(EngineWorker)


def worker_name(device: str) -> str:
    """A name no other worker has: host, device and a random part."""
    host = socket.gethostname().split(".")[0] or "host"
    return f"{PREFIX}{host}-{device.replace(':', '')}-{uuid.uuid4().hex[:6]}"


def start_workers(home: str, *, devices: Optional[list[str]] = None, cpus_per_worker: float = 1.0, threads: Optional[str] = None,
                  memory_limit: Optional[str] = None, max_job_minutes: Optional[float] = None, this_node: bool = True, lifetime: Optional[str] = None) -> list:
    """Start worker actors on this machine (Ray already initialised): one per device in
    ``devices`` (default: one per visible GPU, else one on the CPU).  Returns their
    handles once each has loaded its engine (so a bad home fails here, not later)."""
    import ray

    cls = actor_class()
    if devices is None:
        devices = visible_devices()
    options: dict[str, Any] = {"namespace": NAMESPACE, "max_restarts": 0}
    if lifetime:
        options["lifetime"] = lifetime
    if this_node:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    handles = []
    for device in devices:
        gpu = device.startswith("cuda")
        name = worker_name(device)
        # Ray gives each GPU actor its own CUDA_VISIBLE_DEVICES, so inside it the GPU is cuda
        handle = cls.options(name=name, num_cpus=cpus_per_worker, num_gpus=1 if gpu else 0, **options).remote(
            name, home, "cuda" if gpu else "cpu", threads, memory_limit, max_job_minutes)
        handles.append(handle)
    ray.get([h.info.remote() for h in handles])
    return handles


def visible_devices() -> list[str]:
    """``cuda:N`` for every GPU this machine shows, else ``["cpu"]``."""
    try:
        import torch

        n = torch.cuda.device_count()
    except Exception:  # noqa: BLE001
        n = 0
    return [f"cuda:{i}" for i in range(n)] or ["cpu"]


def wait_forever(handles, every: float = 5.0) -> None:
    """Keep the worker command alive (its actors live as long as it does) until they all die or Ctrl-C."""
    import ray

    while True:
        time.sleep(every)
        alive = 0
        for h in handles:
            try:
                ray.get(h.info.remote(), timeout=30)
                alive += 1
            except Exception:  # noqa: BLE001
                pass
        if not alive:
            return
