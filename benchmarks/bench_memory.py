#!/usr/bin/env python
"""The memory plan against real runs: predicted peak memory vs measured peak RSS, on the CPU.

    python benchmarks/bench_memory.py [--rows sd15:512:1,sd15:512:4,sdxl:1024:1] [--steps 1]
                                      [--plan auto] [--limit 10G] [--threads 2]

Each row is MODEL:SIDE:BATCH (MODEL ``sd15`` or ``sdxl``: the random-weight SD 1.5 and
SDXL-shaped fp16 checkpoints of ``bench_vs_diffusers.py`` and ``sdxl_checkpoint.py``,
built if missing) and runs in a fresh process: import, load, one generation of
``--steps`` steps at CFG 7, then the whole process's peak RSS (``ru_maxrss``, load
included).  The prediction is the memory plan's peak for that request
(``memory/plan.py``) plus the process's resident memory before loading (Python,
torch, diffusers, transformers), read the moment the engine is about to load.

``--plan`` forces a rung (``resident``, ``16-bit at rest`` ...), ``--limit`` gives the
engine a memory limit (``--memory-limit``), so the plan picks a rung for it.  With
``--steps`` of 2 or more the seconds per step are the time between the last steps'
progress callbacks (the first step carries one-time costs).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
TAG = "MEMORY_RESULT "
GiB = 2**30


def _rss() -> int:
    from brushwork.runtime import process_rss_bytes

    return process_rss_bytes()


def _peak() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def checkpoint(model: str, out: Path) -> Path:
    if model == "sdxl":
        import sdxl_checkpoint

        return sdxl_checkpoint.build(out)
    import bench_vs_diffusers as bvd

    path = out / bvd.CKPT_NAME
    if not path.exists():
        bvd.main(["--_child", "build", "--out", str(out)])
    return path


def child(opts) -> None:
    import torch

    import importlib

    for lib in ("diffusers", "transformers"):  # imported before the base reading, as a load would
        importlib.import_module(lib)

    from brushwork import Engine, GenerationRequest

    torch.set_num_threads(opts.threads)
    model, side, batch = opts.row.split(":")
    side, batch = int(side), int(batch)
    ckpt = checkpoint(model, opts.out)
    eng = Engine(opts.out / "brushwork-home", device="cpu", memory_plan=None if opts.plan == "auto" else opts.plan, memory_limit=opts.limit)
    base = _rss()
    t0 = time.perf_counter()
    eng.load(str(ckpt))
    load_s = time.perf_counter() - t0
    loaded = _rss()
    req = eng.complete(GenerationRequest("a lighthouse on a cliff at dusk, oil painting", seed=1234, steps=opts.steps, cfg_scale=7.0, width=side, height=side, batch_size=batch))
    plan, need = eng._memory_for(req)
    stages: dict[str, float] = {}  # peak RSS (GiB) when each stage ended: where the peak is
    def after_unet(*_):  # (returns None: a forward hook's return value would replace the output)
        stages.setdefault("after first UNet call", _peak() / GiB)

    eng.model.networks.unet.register_forward_hook(after_unet)
    decode = eng.decode

    def timed_decode(latents, control=None):
        stages["before decode (RSS)"] = _rss() / GiB
        out = decode(latents, control)
        stages["after decode"] = _peak() / GiB
        return out

    eng.decode = timed_decode
    stamps: list[float] = []
    t0 = time.perf_counter()
    eng.txt2img(req, progress=lambda p: stamps.append(time.perf_counter()))
    total = time.perf_counter() - t0
    step_s = stamps[-1] - stamps[-2] if len(stamps) >= 2 else float("nan")
    result = {
        "row": opts.row, "plan": eng.memory.plan.name, "planned": plan.name, "predicted": plan.peak + base, "base": base, "loaded": loaded,
        "measured": _peak(), "load_s": load_s, "generate_s": total, "step_s": step_s, "steps": opts.steps,
        "working_sample": need.working.sample, "working_decode": need.working.decode, "stages": stages,
        "encoders_released": type(eng.model.networks.text_encoders).__name__ == "ReleasedEncoders",
    }
    print(TAG + json.dumps(result), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", default="sd15:512:1,sd15:512:4,sd15:1024:1,sdxl:512:1,sdxl:512:4,sdxl:1024:1")
    ap.add_argument("--steps", type=int, default=1)
    ap.add_argument("--plan", default="auto")
    ap.add_argument("--limit", default=None)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--out", type=Path, default=REPO / "bench-out")
    ap.add_argument("--row", help=argparse.SUPPRESS)
    opts = ap.parse_args()
    opts.out = opts.out.resolve()
    if opts.row:
        child(opts)
        return
    print("| row | plan | predicted GiB | measured peak RSS GiB | measured / predicted | s / step | load s |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for row in opts.rows.split(","):
        cmd = [sys.executable, __file__, "--row", row, "--steps", str(opts.steps), "--plan", opts.plan, "--threads", str(opts.threads), "--out", str(opts.out)]
        if opts.limit:
            cmd += ["--limit", opts.limit]
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith(TAG)), None)
        if proc.returncode != 0 or line is None:
            print(f"| {row} | failed (exit {proc.returncode}): {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ''} | | | | | |", flush=True)
            continue
        r = json.loads(line[len(TAG):])
        ratio = r["measured"] / r["predicted"]
        step = f"{r['step_s']:.1f}" if r["step_s"] == r["step_s"] else "-"
        print(f"<!-- {row}: loaded {r['loaded'] / GiB:.2f} GiB, base {r['base'] / GiB:.2f} GiB, stages {json.dumps({k: round(v, 2) for k, v in r['stages'].items()})}, encoders released {r['encoders_released']} -->", flush=True)
        print(f"| {row.replace(':', ' ')} | {r['plan']} | {r['predicted'] / GiB:.2f} | {r['measured'] / GiB:.2f} | {ratio:.2f} | {step} | {r['load_s']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
