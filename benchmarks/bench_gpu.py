#!/usr/bin/env python
"""GPU check: Brushwork against diffusers on CUDA in half precision.

    python benchmarks/bench_gpu.py [--out /tmp/gpu-bench] [--steps 20 --size 512 --repeats 3]

Uses the SD 1.5-shaped random-weight checkpoint of ``bench_vs_diffusers.py``
(built if missing).  Each tool runs in a fresh process (its own CUDA context):
load, one warm-up image, ``--repeats`` timed images (median), peak GPU memory
(``torch.cuda.max_memory_allocated``) of the generation, with DPM++ 2M Karras,
CFG 7, fp16, batch 1 and then batch 4.  Then Brushwork alone under a 6 GiB cap
(``set_per_process_memory_fraction``), the smallest card our users run.  Prints
ratios Brushwork / diffusers from this one invocation; absolute numbers belong to
the card it ran on.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "benchmarks"))

TAG = "GPU_RESULT "


def child(tool: str, out: Path, opts) -> None:
    import torch

    import bench_vs_diffusers as bvd

    ckpt = out / bvd.CKPT_NAME
    if opts.sdxl:
        import sdxl_checkpoint

        ckpt = sdxl_checkpoint.build(out)
    if opts.cap_gib:
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(opts.cap_gib * 2**30 / total)
    t0 = time.perf_counter()
    if tool == "brushwork":
        from brushwork import Engine, GenerationRequest

        eng = Engine(out / "brushwork-home", device="cuda", memory_plan=opts.plan or None, memory_limit=f"{opts.cap_gib}G" if opts.cap_gib else None)
        eng.load(str(ckpt))

        def generate(batch):
            req = GenerationRequest(prompt=bvd.PROMPT, seed=bvd.SEED, steps=opts.steps, cfg_scale=7.0, sampler="DPM++ 2M", schedule="Karras", width=opts.size, height=opts.size, batch_size=batch)
            return [g.image for g in eng.txt2img(req)]
    else:
        from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

        pipe = StableDiffusionPipeline.from_single_file(str(ckpt), config=str(out / bvd.CONFIG_NAME), local_files_only=True, safety_checker=None, feature_extractor=None, requires_safety_checker=False, torch_dtype=torch.float16).to("cuda")
        pipe.scheduler = bvd._dpmpp_2m_karras(DPMSolverMultistepScheduler)
        pipe.set_progress_bar_config(disable=True)

        def generate(batch):
            gens = [torch.Generator("cpu").manual_seed(bvd.SEED + i) for i in range(batch)]
            return pipe(prompt=[bvd.PROMPT] * batch, num_inference_steps=opts.steps, guidance_scale=7.0, width=opts.size, height=opts.size, generator=gens).images

    torch.cuda.synchronize()
    load_s = time.perf_counter() - t0
    plan = eng.memory.plan.name if tool == "brushwork" else "-"
    result = {"tool": tool, "plan": plan, "load_s": load_s, "weights_gib": torch.cuda.memory_allocated() / 2**30, "device": torch.cuda.get_device_name(0), "cap_gib": opts.cap_gib}
    for batch in opts.batches:
        generate(batch)  # warm-up (kernels, allocator)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(opts.repeats):
            t = time.perf_counter()
            images = generate(batch)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
        import numpy as np

        arr = np.asarray(images[0]).astype(float)
        if tool == "brushwork":
            result[f"plan_b{batch}"] = eng.memory.plan.name
        result[f"b{batch}"] = {"s": statistics.median(times), "it_s": opts.steps / statistics.median(times), "peak_gib": torch.cuda.max_memory_allocated() / 2**30, "reserved_gib": torch.cuda.max_memory_reserved() / 2**30, "pixel_std": float(arr.std()), "finite": bool(np.isfinite(arr).all())}
    print(TAG + json.dumps(result), flush=True)


def run(tool: str, out: Path, opts, cap: float = 0.0, plan: str = "") -> dict:
    args = [sys.executable, __file__, "--_child", tool, "--out", str(out), "--steps", str(opts.steps), "--size", str(opts.size), "--repeats", str(opts.repeats), "--batches", ",".join(map(str, opts.batches)), "--cap-gib", str(cap)]
    args += ["--plan", plan] if plan else []
    args += ["--sdxl"] if opts.sdxl else []
    proc = subprocess.run(args, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    for line in proc.stdout.splitlines():
        if line.startswith(TAG):
            return json.loads(line[len(TAG):])
    return {"tool": tool, "error": (proc.stderr or proc.stdout)[-1500:]}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out", type=Path, default=Path("/tmp/gpu-bench"))
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batches", type=lambda s: [int(x) for x in s.split(",")], default=[1, 4])
    p.add_argument("--cap-gib", type=float, default=0.0)
    p.add_argument("--sdxl", action="store_true", help="Brushwork alone on the SDXL-shaped checkpoint (sdxl_checkpoint.py), once per memory plan and once chosen under a 6 GiB cap")
    p.add_argument("--plan", default="", help=argparse.SUPPRESS)
    p.add_argument("--_child", default=None)
    opts = p.parse_args()
    if opts._child:
        child(opts._child, opts.out, opts)
        return 0
    if opts.sdxl:
        return sdxl_plans(opts)
    import bench_vs_diffusers as bvd

    opts.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    bvd.child_build(opts.out)
    print(f"checkpoint ready in {time.perf_counter() - t0:.0f} s", flush=True)
    results = {tool: run(tool, opts.out, opts) for tool in ("diffusers", "brushwork")}
    capped = run("brushwork", opts.out, argparse.Namespace(**{**vars(opts), "batches": [1]}), cap=6.0)
    for r in (*results.values(), capped):
        print(json.dumps(r))
    b, d = results["brushwork"], results["diffusers"]
    if "error" in b or "error" in d:
        return 1
    print(f"\n{b['device']}, SD 1.5 shapes (random weights), fp16, {opts.size}x{opts.size}, {opts.steps} steps, DPM++ 2M Karras, CFG 7")
    print(f"{'':10s} {'brushwork':>22s} {'diffusers':>22s} {'ratio':>7s}")
    print(f"{'load s':10s} {b['load_s']:22.2f} {d['load_s']:22.2f} {b['load_s'] / d['load_s']:7.2f}")
    for batch in opts.batches:
        kb, kd = b[f"b{batch}"], d[f"b{batch}"]
        print(f"{'batch ' + str(batch):10s} {kb['s']:9.3f} s {kb['peak_gib']:6.2f} GiB {kd['s']:9.3f} s {kd['peak_gib']:6.2f} GiB  time {kb['s'] / kd['s']:.2f} mem {kb['peak_gib'] / kd['peak_gib']:.2f}")
    if "error" in capped:
        print("6 GiB cap: FAILED", capped["error"][-300:])
    else:
        c = capped["b1"]
        print(f"6 GiB cap: batch 1 {c['s']:.3f} s/image, peak {c['peak_gib']:.2f} GiB, finite {c['finite']}, pixel std {c['pixel_std']:.1f}")
    return 0


def sdxl_plans(opts) -> int:
    """SDXL-shaped random weights at --size (use 1024): s/image and peak GPU memory for
    every rung of the memory plan, then the plan chosen under a 6 GiB cap."""
    import sdxl_checkpoint

    from brushwork.memory.plan import GPU_RUNGS

    opts.out.mkdir(parents=True, exist_ok=True)
    sdxl_checkpoint.build(opts.out)
    one = argparse.Namespace(**{**vars(opts), "batches": [1]})
    rows = [(rung, 0.0, run("brushwork", opts.out, one, plan=rung)) for rung in GPU_RUNGS]
    rows.append(("auto", 6.0, run("brushwork", opts.out, one, cap=6.0)))
    print(f"\nSDXL shapes (random weights), fp16, {opts.size}x{opts.size}, {opts.steps} steps, DPM++ 2M Karras, CFG 7, batch 1")
    print("| plan asked | cap GiB | plan used | s / image | peak allocated GiB | peak reserved GiB | finite |")
    print("|---|---:|---|---:|---:|---:|---|")
    for asked, cap, r in rows:
        if "error" in r:
            print(f"| {asked} | {cap:g} | failed: {r['error'].strip().splitlines()[-1][:120]} | | | | |")
            continue
        b = r["b1"]
        print(f"| {asked} | {cap:g} | {r.get('plan_b1', r['plan'])} | {b['s']:.2f} | {b['peak_gib']:.2f} | {b['reserved_gib']:.2f} | {b['finite']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
