#!/usr/bin/env python
"""How fast the built-in demo model draws at its default settings on this machine.

    python benchmarks/bench_demo_speed.py [--repeats 5]

Target (issue: demo model): one image of at least 128x128 pixels in at most
2 seconds on a 2-core CPU.  Prints seconds per image (median after one warm-up)
and the ratio to that target, measured in this process; <= 1.00 meets it.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

TARGET_S = 2.0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    import torch

    from brushwork import Engine, GenerationRequest

    with tempfile.TemporaryDirectory() as home:
        eng = Engine(home, device="cpu")
        t0 = time.perf_counter()
        model = eng.load()  # an empty home: the demo model is the default
        load_s = time.perf_counter() - t0
        req = eng.complete(GenerationRequest("cinematic landscape, great mountain", seed=0))
        eng.txt2img(req)  # warm-up
        times = []
        for i in range(args.repeats):
            t0 = time.perf_counter()
            eng.txt2img(GenerationRequest("cinematic landscape, great mountain", seed=i + 1))
            times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    print(f"model: {model.path.name} ({model.spec.label}), load {load_s:.2f}s")
    print(f"settings (the model's defaults): {req.width}x{req.height}, {req.steps} steps, {req.sampler} {req.schedule}, CFG {req.cfg_scale}")
    print(f"machine: {os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"seconds per image: median {med:.3f} (runs: {', '.join(f'{t:.3f}' for t in times)})")
    print(f"ratio to the {TARGET_S:.0f} s target: {med / TARGET_S:.2f} ({'MET' if med <= TARGET_S else 'NOT MET'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
