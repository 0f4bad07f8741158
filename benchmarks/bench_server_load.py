"""Load check for ``brushwork serve``: many clients at once on loopback.

    python benchmarks/bench_server_load.py [--clients 16] [--seconds 30] [--model demo]

Starts a real server (uvicorn in this process, real engine, a fresh data home),
measures the idle latency of the status/progress/listing endpoints, then lets
``--clients`` threads submit jobs and poll them for ``--seconds`` while other
threads keep hitting the listing and progress endpoints.  Afterwards it checks
that every submitted job is accounted for (finished, with its images in the
database and on disk) and prints latencies while busy as ratios to the idle ones.
"""
from __future__ import annotations

import argparse
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from brushwork.server import ServeOptions, build, serve_in_thread  # noqa: E402

LISTINGS = ["/api/v1/status", "/sdapi/v1/progress", "/api/v1/models", "/sdapi/v1/sd-models", "/api/v1/images?limit=100", "/api/v1/jobs?limit=50"]


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--readers", type=int, default=4, help="threads that only poll listings and progress")
    p.add_argument("--seconds", type=float, default=30)
    p.add_argument("--model", default="demo")
    p.add_argument("--steps", type=int, default=6)
    args = p.parse_args()

    home = Path(tempfile.mkdtemp(prefix="bw-load-"))
    app, studio = build(ServeOptions(home=str(home), model=args.model, device="cpu"))
    with serve_in_thread(app) as base:
        ok = load(base, studio, home, args)
    studio.close()
    return 0 if ok else 1


def load(base: str, studio, home: Path, args) -> bool:

    idle: dict[str, list[float]] = {u: [] for u in LISTINGS}
    with httpx.Client(base_url=base, timeout=30) as c:
        for _ in range(20):
            for u in LISTINGS:
                t0 = time.perf_counter()
                assert c.get(u).status_code == 200
                idle[u].append(time.perf_counter() - t0)

    submitted: list[tuple[str, int]] = []
    errors: list[str] = []
    busy: dict[str, list[float]] = {u: [] for u in LISTINGS}
    polls: list[float] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + args.seconds

    def client(i: int) -> None:
        rng = random.Random(i)
        with httpx.Client(base_url=base, timeout=60, headers={"X-Brushwork-Client": f"c{i}"}) as c:
            while time.monotonic() < stop_at:
                batch = rng.choice([1, 1, 2])
                r = c.post("/api/v1/jobs", json={"prompt": rng.choice(["sunset over the sea", "snowy mountains", "a desert at night"]), "steps": args.steps, "batch_size": batch, "seed": rng.randrange(2**32)})
                if r.status_code != 202:
                    errors.append(f"submit {r.status_code} {r.text[:100]}")
                    continue
                job_id = r.json()["id"]
                with lock:
                    submitted.append((job_id, batch))
                while True:  # poll until done, like a simple client would
                    t0 = time.perf_counter()
                    j = c.get(f"/api/v1/jobs/{job_id}").json()
                    with lock:
                        polls.append(time.perf_counter() - t0)
                    if j["state"] in ("done", "failed", "cancelled", "interrupted"):
                        if j["state"] != "done":
                            errors.append(f"job {job_id} {j['state']}: {j['error']}")
                        break
                    time.sleep(0.1)

    def reader() -> None:
        with httpx.Client(base_url=base, timeout=30) as c:
            while time.monotonic() < stop_at:
                for u in LISTINGS:
                    t0 = time.perf_counter()
                    r = c.get(u)
                    dt = time.perf_counter() - t0
                    if r.status_code != 200:
                        errors.append(f"{u} {r.status_code}")
                    with lock:
                        busy[u].append(dt)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)] + [threading.Thread(target=reader) for _ in range(args.readers)]
    t_start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - t_start

    # accounting: every submitted job is in the database, done, with its images on disk
    missing = []
    images = 0
    for job_id, batch in submitted:
        job = studio.store.job(job_id)
        recs = studio.store.images_of(job_id)
        if job is None or job.state != "done" or len(recs) != batch or not all((home / r.path).is_file() for r in recs):
            missing.append(job_id)
        images += len(recs)

    print(f"clients {args.clients} + readers {args.readers}, {wall:.1f} s, model {args.model}, {args.steps} steps")
    print(f"jobs submitted {len(submitted)}, accounted for {len(submitted) - len(missing)}, images {images} ({images / wall:.2f}/s), errors {len(errors)}")
    for e in errors[:5]:
        print("  error:", e)
    print(f"job polls: {len(polls)}, p50 {1000 * pct(polls, 0.5):.1f} ms, p95 {1000 * pct(polls, 0.95):.1f} ms, max {1000 * max(polls):.1f} ms")
    print(f"{'endpoint':28s} {'idle p95 ms':>11s} {'busy p50 ms':>11s} {'busy p95 ms':>11s} {'busy max ms':>11s} {'p95 ratio':>9s}")
    for u in LISTINGS:
        i95, b50, b95 = pct(idle[u], 0.95), pct(busy[u], 0.5), pct(busy[u], 0.95)
        print(f"{u:28s} {1000 * i95:11.1f} {1000 * b50:11.1f} {1000 * b95:11.1f} {1000 * max(busy[u]):11.1f} {b95 / i95:9.1f}")
    ok = not missing and not errors
    print("RESULT:", "every job accounted for" if ok else f"{len(missing)} jobs missing, {len(errors)} errors")
    return ok


if __name__ == "__main__":
    sys.exit(main())
