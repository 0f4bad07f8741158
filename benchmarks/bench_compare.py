#!/usr/bin/env python
"""A 4x4 Steps x CFG grid as one comparison job against 16 separate txt2img calls.

    python benchmarks/bench_compare.py [--size 256] [--steps 2,3,4,5] [--cfg 1,4,7,12] [--x AXIS] [--y AXIS] [--rounds 1] [--model PATH]

Default model: an SD 1.5-shaped checkpoint with random weights (the real UNet, VAE and
text-encoder shapes, 2.1 GB fp16), built once into ``bench-out/`` by the same code as
bench_vs_diffusers.py; ``--model demo`` uses the built-in demo model instead.  One
process, one loaded engine for both: each round runs the grid (X = Steps, Y = CFG
Scale: the cells of one column share their steps, so each column is one batch of 4
with one guidance scale per image) and then the same 16 cells one ``txt2img`` at a
time, in the same order, and times both (wall clock).  Prints both times and the
ratio grid / separate (target: at most 0.85), how many UNet rows the grid's first
calls had in common (sampling/shared_calls.py: cells with one seed and prompt start
from the same latents at the same first sigma, so their first call runs once), and
the largest pixel difference between a grid cell and its separate picture (batched
cells differ by float rounding only).  ``--batch-only`` also times the grid with
nothing shared, to show what batching alone gives.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "benchmarks"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--steps", default="2,3,4,5")
    ap.add_argument("--cfg", default="1,4,7,12")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--x", help="the X axis instead of Steps, e.g. 'Steps: 10'")
    ap.add_argument("--y", help="the Y axis instead of CFG Scale, e.g. 'Prompt S/R: lighthouse,castle,tower,windmill' (cells differing in prompt batch too)")
    ap.add_argument("--batch-only", action="store_true", help="also time the grid with batching but no shared first calls")
    ap.add_argument("--model", help="checkpoint path, or 'demo' (default: the SD 1.5-shaped random checkpoint in bench-out/)")
    args = ap.parse_args()

    import numpy as np
    import torch

    from brushwork import Engine
    from brushwork.compare.axes import parse_axis
    from brushwork.compare.job import Comparison, run_comparison
    from brushwork.engine import GenerationRequest
    from brushwork.sampling.shared_calls import SharedCalls

    class NothingShared(SharedCalls):
        def wrap(self, net, batch, state):
            return net

    model = args.model
    if model is None:
        from bench_vs_diffusers import CKPT_NAME, DEFAULT_OUT, child_build

        DEFAULT_OUT.mkdir(exist_ok=True)
        if not (DEFAULT_OUT / CKPT_NAME).exists():
            print("building the SD 1.5-shaped checkpoint once (about 40 s) ...", file=sys.stderr)
            child_build(DEFAULT_OUT)
        model = str(DEFAULT_OUT / CKPT_NAME)
    eng = Engine(tempfile.mkdtemp(prefix="bench-compare-"), device="cpu")
    eng.load(None if model == "demo" else model)
    base = GenerationRequest("a lighthouse on a cliff at dusk, oil painting", seed=1234, width=args.size, height=args.size, sampler="DPM++ 2M", schedule="Karras")
    cmp = Comparison(base, parse_axis(args.x or f"Steps: {args.steps}"), parse_axis(args.y or f"CFG Scale: {args.cfg}"))
    eng.txt2img(GenerationRequest(base.prompt, seed=1, width=args.size, height=args.size, steps=1))  # warm-up

    grid_s, single_s, batch_s, worst = [], [], [], 0
    for _ in range(args.rounds):
        shared = SharedCalls()
        t0 = time.perf_counter()
        cells = list(run_comparison(eng, cmp, shared=shared))
        grid_s.append(time.perf_counter() - t0)
        if args.batch_only:
            t0 = time.perf_counter()
            list(run_comparison(eng, cmp, shared=NothingShared()))
            batch_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        singles = [eng.txt2img(c.cell.request)[0] for c in cells]
        single_s.append(time.perf_counter() - t0)
        for c, s in zip(cells, singles):
            worst = max(worst, int(np.abs(np.asarray(c.image.image, dtype=int) - np.asarray(s.image, dtype=int)).max()))
    g, s = min(grid_s), min(single_s)
    print(f"model {eng.model.path.name} ({eng.model.spec.label}), {args.size}x{args.size}, {cmp.x.label} x {cmp.y.label}, "
          f"{len(cells)} cells, {torch.get_num_threads()} threads, {eng.placement.label}, best of {args.rounds}")
    print(f"grid job   {g:8.2f} s  (first calls: {shared.rows_asked} UNet rows asked, {shared.rows_run} run)")
    if batch_s:
        print(f"grid job, batching only (nothing shared) {min(batch_s):8.2f} s  -> ratio {min(batch_s) / s:.2f}")
    print(f"{len(cells)} x txt2img {s:6.2f} s")
    print(f"ratio grid/separate: {g / s:.2f}  (target <= 0.85); largest cell difference {worst} levels of 255")
    return 0


if __name__ == "__main__":
    sys.exit(main())
