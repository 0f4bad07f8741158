"""How close the time estimate (budget.py) comes to real runs, and what cancel costs.

    python benchmarks/bench_estimate.py [--model demo] [--sizes 128,256,512] [--steps 8]

For each size: the estimate before the first run (speed from the probe only), the
measured time, and their ratio; then the estimate after learning from the runs.
Last, how long a cancel takes to stop a tiled decode of a large picture.
"""
from __future__ import annotations

import argparse
import threading
import time

import torch

from brushwork.budget import THROUGHPUT
from brushwork.engine import Engine, GenerationRequest, JobControl


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="demo")
    ap.add_argument("--sizes", default="128,256,512")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--cancel-size", type=int, default=2048)
    args = ap.parse_args()
    eng = Engine(device="cpu")
    eng.load(args.model)
    eng.txt2img(GenerationRequest("warm up", seed=1, steps=2))
    print(f"probe speed: {THROUGHPUT.rate(torch.device('cpu'), torch.float32) / 1e9:.1f} GFLOP/s sustained (estimate)")
    print(f"{'size':>6} {'estimate s':>11} {'measured s':>11} {'measured/estimate':>18}")
    for side in (int(s) for s in args.sizes.split(",")):
        req = eng.complete(GenerationRequest("a lake", seed=1, steps=args.steps, width=side, height=side))
        est = eng.estimate_time(req).seconds
        t0 = time.perf_counter()
        eng.txt2img(req)
        took = time.perf_counter() - t0
        print(f"{side:>6} {est:>11.2f} {took:>11.2f} {took / est:>18.2f}")
    side = args.cancel_size
    req = eng.complete(GenerationRequest("a lake", seed=1, steps=1, width=side, height=side))
    control = JobControl()
    stamps: dict[str, float] = {}

    def progress(p):  # cancel 0.5 s into the decode that follows the only step
        def later():
            time.sleep(0.5)
            stamps["cancel"] = time.perf_counter()
            control.cancel()

        threading.Thread(target=later, daemon=True).start()

    t0 = time.perf_counter()
    out = list(eng.batches(req, progress=progress, control=control))
    stamps["end"] = time.perf_counter()
    print(f"cancel during the tiled decode of {side}x{side}: stopped {stamps['end'] - stamps['cancel']:.2f} s after the cancel (whole job {stamps['end'] - t0:.1f} s, {len(out)} batches returned; full estimate {eng.estimate_time(req).seconds:.0f} s)")


if __name__ == "__main__":
    main()
