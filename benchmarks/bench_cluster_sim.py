#!/usr/bin/env python
"""The cluster scheduler in a simulation: throughput and model loads for 1-8 workers.

    python benchmarks/bench_cluster_sim.py [--jobs 400] [--load 8] [--step 0.12] [--seed 0] [--patience 60]

The same ``brushwork.cluster.scheduler.assign`` the server's dispatcher calls, driven
by a discrete-event simulation instead of Ray: a fake worker's load and step times are
parameters (defaults: an SDXL file read in 8 s, 0.12 s per step and picture, as on a
mid-range GPU).  The job mix is a community's: 6 clients, 5 checkpoints of unequal
popularity (40/25/15/12/8 %), 20-30 steps, batches of 1-4, a LoRA on a third of the
jobs, all waiting at the start (a backlog, so throughput is the workers' and not the
arrivals').  Each row runs the mix twice: with :func:`assign` (model affinity) and with
``assign_round_robin`` (the next idle worker takes the next job, as a load balancer in
front of several A1111 instances does).  The scheduler learns load and step times from
the finished jobs, as in the server.

Prints a Markdown table: jobs/minute, speed-up over one worker, model loads, loads
against round-robin, and the longest wait of any client's first job (fairness).
"""
from __future__ import annotations

import argparse
import heapq
import random
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from brushwork.cluster.scheduler import Estimates, JobView, WorkerView, assign, assign_round_robin  # noqa: E402

MODELS = ("juggernautXL", "realisticVision", "dreamshaper", "ponyDiffusion", "animagine")
POPULARITY = (0.40, 0.25, 0.15, 0.12, 0.08)


@dataclass
class SimJob:
    id: str
    client: str
    model: str
    work: float  # steps x pictures
    loras: frozenset


def job_mix(n: int, seed: int) -> list[SimJob]:
    rng = random.Random(seed)
    jobs = []
    for i in range(n):
        model = rng.choices(MODELS, POPULARITY)[0]
        steps, batch = rng.randint(20, 30), rng.choice((1, 1, 2, 4))
        loras = frozenset({f"style{rng.randint(1, 3)}"}) if rng.random() < 0.33 else frozenset()
        jobs.append(SimJob(f"j{i:04d}", f"client{rng.randint(1, 6)}", model, steps * batch, loras))
    return jobs


def fair_order(jobs: list[SimJob]) -> list[SimJob]:
    """Round-robin over clients, FIFO within one (the studio's FairQueue.order)."""
    lines: dict[str, list[SimJob]] = {}
    for j in jobs:
        lines.setdefault(j.client, []).append(j)
    out, queues = [], [list(v) for v in lines.values()]
    while any(queues):
        for q in queues:
            if q:
                out.append(q.pop(0))
    return out


def simulate(jobs: list[SimJob], workers: int, load_s: float, step_s: float, affinity: bool, seed: int, patience: float = 60.0) -> dict:
    rng = random.Random(seed + 1)
    waiting = list(jobs)
    queued = {j.id: 0.0 for j in jobs}
    state = {f"w{i}": {"model": None, "loras": frozenset(), "ends": 0.0, "idle": True} for i in range(workers)}
    est = Estimates()
    events: list = []  # (time, worker, job, loaded, run seconds)
    now, loads, first_start = 0.0, 0, {}
    while waiting or events:
        views = [WorkerView(w, s["model"], busy_for=max(0.0, s["ends"] - now), idle=s["idle"], loras=s["loras"]) for w, s in state.items()]
        order = fair_order(waiting)
        jv = [JobView(j.id, j.client, j.model, j.work, j.loras, waited=now - queued[j.id]) for j in order]
        plan = assign(jv, views, est, patience) if affinity else assign_round_robin(jv, views)
        by_id = {j.id: j for j in order}
        for job_id, w in plan.start:
            job, s = by_id[job_id], state[w]
            waiting.remove(job)
            first_start.setdefault(job.client, now)
            load = 0.0
            if s["model"] != job.model:
                load = load_s * rng.uniform(0.9, 1.1)
                loads += 1
            run = job.work * step_s * rng.uniform(0.95, 1.05) + (0.5 if job.loras != s["loras"] else 0.0)
            s.update(model=job.model, loras=job.loras, ends=now + load + run, idle=False)
            heapq.heappush(events, (now + load + run, w, job.id, job.model, load, run, job.work))
        if not events:
            break
        now, w, _, model, load, run, work = heapq.heappop(events)
        state[w]["idle"] = True
        if load:
            est.saw_load(w, model, load)
        est.saw_run(w, work, run)
    return {"minutes": now / 60, "jobs_per_min": len(jobs) / (now / 60), "loads": loads, "first_wait": max(first_start.values())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("--jobs", type=int, default=400)
    ap.add_argument("--load", type=float, default=8.0, help="seconds to load a checkpoint")
    ap.add_argument("--step", type=float, default=0.12, help="seconds per step and picture")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", default="1,2,4,8")
    ap.add_argument("--patience", type=float, default=60.0, help="seconds a job may be passed by jobs of a loaded checkpoint (the server's default: 60)")
    args = ap.parse_args(argv)
    jobs = job_mix(args.jobs, args.seed)
    print(f"{args.jobs} jobs, 6 clients, {len(MODELS)} checkpoints, load {args.load:g} s, {args.step:g} s per step and picture, patience {args.patience:g} s\n")
    print("| workers | jobs/min (affinity) | speed-up | loads (affinity) | jobs/min (round-robin) | loads (round-robin) | fewer loads | longest first wait (s) |")
    print("|---|---|---|---|---|---|---|---|")
    base = None
    for n in (int(x) for x in args.workers.split(",")):
        a = simulate(jobs, n, args.load, args.step, True, args.seed, args.patience)
        r = simulate(jobs, n, args.load, args.step, False, args.seed)
        base = base or a["jobs_per_min"]
        print(f"| {n} | {a['jobs_per_min']:.1f} | {a['jobs_per_min'] / base:.2f}x | {a['loads']} | {r['jobs_per_min']:.1f} | {r['loads']} | "
              f"{r['loads'] / max(1, a['loads']):.1f}x | {a['first_wait']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
