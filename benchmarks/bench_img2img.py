#!/usr/bin/env python
"""img2img at strength 0.5 against txt2img at the same steps: UNet time and calls.

    python benchmarks/bench_img2img.py [--steps 20] [--strength 0.5] [--rounds 3] [--model PATH]

Uses the built-in demo model (or --model) on the CPU, in one process.  Each round
runs one txt2img and one img2img of the same size, prompt, seed and steps, one after
the other, and times every UNet call (a forward hook pair on the UNet) and the whole
generation.  Prints the median UNet seconds, UNet calls and total seconds of both,
and the ratios img2img / txt2img.  AUTOMATIC1111's step semantics run
int(strength * steps) + 1 steps, so at 0.5 and 20 steps the expected UNet ratio is
11/20 = 0.55; the total also holds the VAE encode of the init picture.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--strength", type=float, default=0.5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--model", help="checkpoint (default: the built-in demo model)")
    args = ap.parse_args()

    import tempfile

    from brushwork import Engine
    from brushwork.engine import GenerationRequest, planned_steps

    eng = Engine(tempfile.mkdtemp(prefix="bench-img2img-"), device="cpu")
    eng.load(args.model)
    unet = eng.model.networks.unet
    timer = {"t0": 0.0, "seconds": 0.0, "calls": 0}
    unet.register_forward_pre_hook(lambda *_: timer.__setitem__("t0", time.perf_counter()))

    def done(*_):
        timer["seconds"] += time.perf_counter() - timer["t0"]
        timer["calls"] += 1

    unet.register_forward_hook(done)
    base = GenerationRequest("a lighthouse on a hill at sunset", seed=7, steps=args.steps)
    init = eng.txt2img(base)[0].image  # the picture img2img starts from (also the warm-up)
    refine = GenerationRequest(base.prompt, seed=8, steps=args.steps, init_image=init, denoising_strength=args.strength)

    def measure(req):
        timer.update(seconds=0.0, calls=0)
        t0 = time.perf_counter()
        eng.txt2img(req)
        return timer["seconds"], timer["calls"], time.perf_counter() - t0

    runs = {"txt2img": [], "img2img": []}
    for _ in range(args.rounds):
        runs["txt2img"].append(measure(base))
        runs["img2img"].append(measure(refine))
    med = {k: [statistics.median(r[i] for r in v) for i in range(3)] for k, v in runs.items()}
    print(f"model {eng.model.path.name}, {init.width}x{init.height}, {args.steps} steps, strength {args.strength} "
          f"(img2img runs {planned_steps(eng.complete(refine, warn=False))} steps), {args.rounds} rounds, {eng.placement.label}")
    print(f"{'':8} {'UNet s':>8} {'calls':>6} {'total s':>8}")
    for k, (unet_s, calls, total) in med.items():
        print(f"{k:8} {unet_s:8.3f} {calls:6.0f} {total:8.3f}")
    t, i = med["txt2img"], med["img2img"]
    print(f"ratio img2img/txt2img: UNet time {i[0] / t[0]:.2f}, UNet calls {i[1] / t[1]:.2f}, total {i[2] / t[2]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
