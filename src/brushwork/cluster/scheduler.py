"""Which waiting job runs on which worker: pure, no Ray, no engine, no clock.

The studio's dispatcher (server/studio.py) and the scheduling simulation
(benchmarks/bench_cluster_sim.py) call the same :func:`assign`.

The rule: each waiting job, in the fair order (round-robin over clients, server/studio.py's
FairQueue), goes where it would *finish* first.  A worker's finish time for a job is

    the time until the worker is free + the load, if it holds another checkpoint + the run

counted with what earlier jobs in this round were already promised.  If that worker
is idle now, the job starts there.  If it is busy, the job waits for it. Its promised
time moves the worker's free time later, so the next jobs of the same checkpoint find
an idle worker's load cheaper once the line behind the busy one is long enough.  So a
checkpoint stays on the workers that hold it while that is faster, and spreads to more
workers when its queue grows, and an idle worker never waits for a job it would finish
later than the busy one.

Per-client fairness: the order is the fair order, and an idle worker takes the first
job in that order that it is best for; a job passed over only waits for a worker that
finishes it sooner.

Fit: a job never goes to a worker that refused it (its memory plan or time limit said
no) or that died while running it; a job that every worker refused is reported as
unrunnable.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

#: what an unknown load or step costs until one was seen (seconds)
DEFAULT_LOAD_SECONDS = 10.0
DEFAULT_STEP_SECONDS = 1.0
#: weight of a new observation in the running estimates
LEARN = 0.5
#: a job may be passed by later jobs of a checkpoint a worker holds (saving a load)
#: only until it has waited this long; then it is served in its fair turn
PATIENCE_SECONDS = 60.0


@dataclass(frozen=True)
class WorkerView:
    """A worker as the scheduler sees it."""

    id: str
    model: Optional[str]  # the checkpoint it holds (None: none yet)
    busy_for: float = 0.0  # seconds until its running job ends (an estimate; 0: idle)
    idle: bool = True
    loras: frozenset = frozenset()  # the LoRA set its last job merged
    free_memory: Optional[int] = None  # reported by the worker (shown, not planned on)


@dataclass(frozen=True)
class JobView:
    """A waiting job as the scheduler sees it."""

    id: str
    client: str
    model: Optional[str]  # None: any worker will do (an upscale)
    work: float = 1.0  # units of work: steps x pictures (a load-only job: 0)
    loras: frozenset = frozenset()
    refused_by: frozenset = frozenset()  # worker ids that refused it or died running it
    waited: float = 0.0  # seconds since it was queued


@dataclass
class Estimates:
    """What loads and steps cost on each worker, learned from finished jobs."""

    load: dict = field(default_factory=dict)  # (worker, model) -> seconds; also (None, model)
    step: dict = field(default_factory=dict)  # worker -> seconds per unit of work
    lora_seconds: float = 0.5  # merging another LoRA set

    def load_seconds(self, worker: str, model: Optional[str]) -> float:
        if model is None:
            return 0.0
        return self.load.get((worker, model), self.load.get((None, model), DEFAULT_LOAD_SECONDS))

    def run_seconds(self, worker: str, work: float) -> float:
        return work * self.step.get(worker, _mean(self.step.values(), DEFAULT_STEP_SECONDS))

    def saw_load(self, worker: str, model: str, seconds: float) -> None:
        for key in ((worker, model), (None, model)):
            old = self.load.get(key)
            self.load[key] = seconds if old is None else (1 - LEARN) * old + LEARN * seconds

    def saw_run(self, worker: str, work: float, seconds: float) -> None:
        if work <= 0 or seconds <= 0:
            return
        seen = seconds / work
        old = self.step.get(worker)
        self.step[worker] = seen if old is None else (1 - LEARN) * old + LEARN * seen


def _mean(values, default: float) -> float:
    values = list(values)
    return sum(values) / len(values) if values else default


@dataclass(frozen=True)
class Plan:
    """One round's decisions: jobs to start now, and jobs no worker can run."""

    start: tuple[tuple[str, str], ...]  # (job id, worker id)
    unrunnable: tuple[str, ...] = ()
    #: worker id -> the waiting jobs it is expected to run next, in order (each worker's
    #: queue as planned this round; a later round may place them otherwise)
    lines: dict = field(default_factory=dict)


def finish_time(worker: WorkerView, job: JobView, free_in: float, holds: Optional[str], loras: frozenset, est: Estimates, orphaned: bool = False) -> float:
    """When ``worker`` would finish ``job``: free in ``free_in`` seconds, then the load
    if it holds another checkpoint, a LoRA merge if another set, then the run.  Where
    that load would drop the only copy of a checkpoint other waiting jobs need
    (``orphaned``), loading it again later somewhere is counted too."""
    load = 0.0
    if job.model is not None and job.model != holds:
        load = est.load_seconds(worker.id, job.model)
        if orphaned and holds is not None:
            load += est.load_seconds(worker.id, holds)
    lora = 0.0 if job.loras == loras else est.lora_seconds
    return free_in + load + lora + est.run_seconds(worker.id, job.work)


def assign(order: Sequence[JobView], workers: Sequence[WorkerView], est: Estimates, patience: float = PATIENCE_SECONDS) -> Plan:
    """This round's starts.  First, idle workers take the jobs of the checkpoint they
    hold, passing jobs ahead in the fair order that have waited less than ``patience``
    (no load at all).  Then each remaining job, in the fair order, goes to the worker
    that finishes it first (ties: an idle one, then one that holds its checkpoint,
    then the first listed).  A job placed on a busy worker waits, and is part of that
    worker's planned line (:attr:`Plan.lines`)."""
    free_in = {w.id: (0.0 if w.idle else max(0.0, w.busy_for)) for w in workers}
    holds = {w.id: w.model for w in workers}
    loras = {w.id: w.loras for w in workers}
    idle = {w.id for w in workers if w.idle}
    start: list[tuple[str, str]] = []
    placed: set = set()
    for job in order:  # the pass that saves loads, up to the first job out of patience
        if not idle:
            break
        if job.waited >= patience:
            break
        w = next((w for w in sorted(idle) if holds[w] is not None and holds[w] == job.model and w not in job.refused_by), None)
        if w is not None:
            start.append((job.id, w))
            idle.discard(w)
            placed.add(job.id)
            free_in[w] = finish_time(_view(workers, w), job, 0.0, holds[w], loras[w], est)
            loras[w] = job.loras
    order = [j for j in order if j.id not in placed]
    wanted: dict = {}  # checkpoint -> waiting jobs not yet placed
    for job in order:
        wanted[job.model] = wanted.get(job.model, 0) + 1
    unrunnable: list[str] = []
    lines: dict = {w.id: [] for w in workers}
    for job in order:  # every waiting job, so each worker's planned line is known too
        wanted[job.model] -= 1
        able = [w for w in workers if w.id not in job.refused_by]
        if not able:
            unrunnable.append(job.id)
            continue

        def orphaned(w: WorkerView) -> bool:
            m = holds[w.id]
            return bool(wanted.get(m)) and sum(1 for h in holds.values() if h == m) == 1

        def key(w: WorkerView):
            return (finish_time(w, job, free_in[w.id], holds[w.id], loras[w.id], est, orphaned(w)), w.id not in idle, holds[w.id] != job.model)

        best = min(able, key=key)
        done = key(best)[0]
        if best.id in idle:
            start.append((job.id, best.id))
            idle.discard(best.id)
        else:
            lines[best.id].append(job.id)
        free_in[best.id] = done  # promised: later jobs see it busy until then
        if job.model is not None:
            holds[best.id] = job.model
        loras[best.id] = job.loras
    return Plan(tuple(start), tuple(unrunnable), {w: tuple(ids) for w, ids in lines.items()})


def _view(workers: Sequence[WorkerView], worker_id: str) -> WorkerView:
    return next(w for w in workers if w.id == worker_id)


def assign_round_robin(order: Sequence[JobView], workers: Sequence[WorkerView]) -> Plan:
    """The baseline a hand-made load balancer gives: each idle worker takes the next
    job in order, whatever it holds (for the simulation's comparison)."""
    idle = [w.id for w in workers if w.idle]
    start = []
    for job in order:
        if not idle:
            break
        able = [w for w in idle if w not in job.refused_by]
        if able:
            start.append((job.id, able[0]))
            idle.remove(able[0])
    return Plan(tuple(start))
