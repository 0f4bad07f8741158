#!/usr/bin/env python
"""Brushwork against diffusers' StableDiffusionPipeline on an SD 1.5-shaped checkpoint.

One command::

    python benchmarks/bench_vs_diffusers.py [--width 256 --height 256 --steps 8 --cfg 7 --repeats 2]

1. Builds (once; cached under ``bench-out/``) a single-file, original-layout fp16
   ``.safetensors`` checkpoint with the real SD 1.5 architecture and random
   weights (about 2 GB), plus a diffusers config folder for the same architecture
   (configs only, no weights), so diffusers can load the same file offline.
2. Runs each tool in its own fresh Python process, one after the other, so each
   peak RSS belongs to one tool only.  Each child loads the checkpoint (timed),
   generates one warm-up image (timed separately), then ``--repeats`` timed
   images; the median is its seconds per image.  Both use the same sampler
   (DPM++ 2M, Karras sigmas), steps, size, CFG, prompt, seed (same initial noise),
   float32 on the CPU and the same torch thread count.
3. Prints one table with both tools and the ratios brushwork / diffusers
   (<= 1.00 means Brushwork meets the target: no slower, no more memory).

Ratios are against a reference run made in the same invocation on the same
machine; absolute seconds depend on the machine and are not a pass/fail test.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "bench-out"
CKPT_NAME = "sd15-random-fp16.safetensors"
CONFIG_NAME = "sd15-diffusers-config"
RESULT_TAG = "BENCH_RESULT "
TOOLS = ("brushwork", "diffusers")

PROMPT = "a lighthouse on a cliff at dusk, oil painting"
NEGATIVE = ""
SEED = 1234
# the noise schedule every SD 1.x checkpoint was trained with
BETA_START, BETA_END, TRAIN_STEPS = 0.00085, 0.012, 1000


# --------------------------------------------------------------------------- helpers


def _peak_rss_bytes() -> int:
    import resource

    # Linux reports ru_maxrss in KiB, macOS in bytes
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def _current_rss_bytes() -> int:
    from brushwork.runtime import process_rss_bytes  # (children only: they import brushwork anyway)

    return process_rss_bytes()


def _cpu_snapshot() -> tuple[float, float, float]:
    """(wall s, CPU s used by the whole machine, CPU s used by this process)."""
    wall = time.perf_counter()
    own = sum(os.times()[:2])
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        busy = (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")  # without guest time (already in user)
    except (OSError, ValueError, IndexError):
        busy = float("nan")
    return wall, busy, own


def _other_load(start: tuple[float, float, float], end: tuple[float, float, float]) -> float:
    """Average number of CPU cores other processes kept busy between two snapshots."""
    wall = end[0] - start[0]
    return max(0.0, ((end[1] - start[1]) - (end[2] - start[2])) / wall) if wall > 0 else float("nan")


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


#: glibc malloc settings for --glibc-no-mmap: serve every allocation from the heap and
#: never trim it, so big short-lived buffers (oneDNN's per-call conv weight reorders,
#: 59-118 MB for SD 1.5) are reused instead of mmap'd, page-faulted and unmapped each call
GLIBC_NO_MMAP = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(1 << 40)}


def _child_env(threads: int, glibc_no_mmap: bool = False) -> dict[str, str]:
    env = dict(os.environ)
    if glibc_no_mmap:
        env.update(GLIBC_NO_MMAP)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(threads)
    env["HF_HUB_OFFLINE"] = "1"
    env["TRANSFORMERS_OFFLINE"] = "1"
    env["HF_HUB_DISABLE_TELEMETRY"] = "1"
    env["DIFFUSERS_VERBOSITY"] = "error"
    env["TRANSFORMERS_VERBOSITY"] = "error"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _run_child(args: list[str], threads: int, label: str, glibc_no_mmap: bool = False) -> dict:
    """Run this script in a fresh interpreter and return the JSON it reports."""
    cmd = [sys.executable, str(Path(__file__).resolve()), *args]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=_child_env(threads, glibc_no_mmap), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-8000:])
        raise SystemExit(f"{label} failed (exit code {proc.returncode}); its output is above.")
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_TAG):
            result = json.loads(line[len(RESULT_TAG):])
            result["process_wall_s"] = wall
            return result
    sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-8000:])
    raise SystemExit(f"{label} printed no result line.")


def _report(result: dict) -> None:
    print(RESULT_TAG + json.dumps(result), flush=True)


# --------------------------------------------------------------------------- building the model files (child)


def child_build(out: Path) -> None:
    """Write the random-weight checkpoint and the diffusers config folder, if missing."""
    import torch

    from brushwork.conditioning import tokenizer
    from brushwork.models import families, save

    spec = families.sd15()
    ckpt = out / CKPT_NAME
    config_dir = out / CONFIG_NAME
    built = {"checkpoint_built": False, "config_built": False}

    if not ckpt.exists():
        t0 = time.perf_counter()
        nets = save.random_networks(spec, seed=0)
        save.save_checkpoint(ckpt, spec, nets, dtype=torch.float16, metadata={"brushwork.benchmark": "random weights, SD 1.5 shapes"})
        del nets
        built["checkpoint_built"] = True
        built["checkpoint_build_s"] = time.perf_counter() - t0

    if not (config_dir / "model_index.json").exists():
        from diffusers import DPMSolverMultistepScheduler

        shapes = save.random_networks(spec, device="meta")  # shapes only, no memory
        tmp = config_dir.with_name(config_dir.name + ".partial")
        if tmp.exists():
            shutil.rmtree(tmp)
        shapes.unet.save_config(tmp / "unet")
        shapes.vae.save_config(tmp / "vae")
        shapes.text_encoders[0].config.save_pretrained(tmp / "text_encoder")
        tokenizer().save_pretrained(str(tmp / "tokenizer"))
        _dpmpp_2m_karras(DPMSolverMultistepScheduler).save_config(tmp / "scheduler")
        index = {
            "_class_name": "StableDiffusionPipeline",
            "_diffusers_version": _version("diffusers"),
            "feature_extractor": [None, None],
            "safety_checker": [None, None],
            "requires_safety_checker": False,
            "scheduler": ["diffusers", "DPMSolverMultistepScheduler"],
            "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"],
            "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"],
        }
        (tmp / "model_index.json").write_text(json.dumps(index, indent=2), encoding="utf-8")
        if config_dir.exists():
            shutil.rmtree(config_dir)
        tmp.replace(config_dir)
        built["config_built"] = True

    # Brushwork hashes a checkpoint (sha256, for infotexts) on its first load and caches
    # the hash in its data home; do it here, so the timed loads are like every later load
    from brushwork.catalog import hash_cache
    from brushwork.paths import DataHome

    t0 = time.perf_counter()
    hash_cache(DataHome.resolve(out / "brushwork-home")).get_sha256(ckpt)
    built["hash_s"] = time.perf_counter() - t0
    _report(built)


def _dpmpp_2m_karras(cls):
    """diffusers' scheduler for A1111's "DPM++ 2M" sampler with the "Karras" schedule."""
    return cls(
        num_train_timesteps=TRAIN_STEPS,
        beta_start=BETA_START,
        beta_end=BETA_END,
        beta_schedule="scaled_linear",
        prediction_type="epsilon",
        algorithm_type="dpmsolver++",
        solver_order=2,
        use_karras_sigmas=True,
    )


# --------------------------------------------------------------------------- timing one tool (child)


class _Stopwatch:
    def __init__(self) -> None:
        self.times: dict[str, float] = {}

    def run(self, name: str, fn):
        t0 = time.perf_counter()
        value = fn()
        self.times[name] = time.perf_counter() - t0
        return value


def _brushwork_runner(ckpt: Path, out: Path, opts: argparse.Namespace):
    from brushwork import Engine, GenerationRequest

    eng = Engine(out / "brushwork-home", device="cpu", precision=opts.brushwork_precision)
    eng.load(str(ckpt))
    request = GenerationRequest(
        prompt=PROMPT,
        negative_prompt=NEGATIVE,
        seed=SEED,
        steps=opts.steps,
        cfg_scale=opts.cfg,
        sampler="DPM++ 2M",
        schedule="Karras",
        width=opts.width,
        height=opts.height,
    )

    def generate():
        return eng.txt2img(request)[0].image

    return generate


def _diffusers_runner(ckpt: Path, out: Path, opts: argparse.Namespace):
    import torch
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_single_file(
        str(ckpt),
        config=str(out / CONFIG_NAME),
        local_files_only=True,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
        torch_dtype=torch.float32,
    )
    if not isinstance(pipe.scheduler, DPMSolverMultistepScheduler) or not pipe.scheduler.config.use_karras_sigmas:
        pipe.scheduler = _dpmpp_2m_karras(DPMSolverMultistepScheduler)
    pipe.set_progress_bar_config(disable=True)

    def generate():
        # a CPU generator seeded like Brushwork's per-image generator draws the same initial noise
        gen = torch.Generator("cpu").manual_seed(SEED)
        return pipe(
            prompt=PROMPT,
            negative_prompt=NEGATIVE,
            num_inference_steps=opts.steps,
            guidance_scale=opts.cfg,
            width=opts.width,
            height=opts.height,
            generator=gen,
            output_type="pil",
        ).images[0]

    return generate


def child_time(tool: str, out: Path, opts: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(opts.threads)
    ckpt = out / CKPT_NAME
    rss_before = _current_rss_bytes()
    sw = _Stopwatch()
    make = _brushwork_runner if tool == "brushwork" else _diffusers_runner
    generate = sw.run("load", lambda: make(ckpt, out, opts))
    rss_loaded = _current_rss_bytes()
    peak_load = _peak_rss_bytes()
    image = sw.run("warmup", generate)
    times, cpu = [], []
    start = _cpu_snapshot()
    for _ in range(opts.repeats):
        t0, c0 = time.perf_counter(), sum(os.times()[:2])
        image = generate()
        times.append(time.perf_counter() - t0)
        cpu.append(sum(os.times()[:2]) - c0)
    others = _other_load(start, _cpu_snapshot())
    image.save(out / f"{tool}-{opts.width}x{opts.height}-{opts.steps}steps.png")
    _report(
        {
            "tool": tool,
            "load_s": sw.times["load"],
            "warmup_s": sw.times["warmup"],
            "image_s": times,
            "s_per_image": statistics.median(times),
            "cpu_s_per_image": statistics.median(cpu),
            "other_cores_busy": others,
            "rss_before_load": rss_before,
            "rss_after_load": rss_loaded,
            "peak_rss_load": peak_load,
            "peak_rss": _peak_rss_bytes(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
        }
    )


# --------------------------------------------------------------------------- the parent


def _prime(out: Path, ckpt: Path) -> float:
    """Read the checkpoint once so both tools start with it in the page cache."""
    t0 = time.perf_counter()
    with open(ckpt, "rb") as f:
        while f.read(16 << 20):
            pass
    return time.perf_counter() - t0


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f}"


def _image_difference(out: Path, opts: argparse.Namespace) -> str:
    """Mean absolute pixel difference (0-255) of the two tools' last images: a sanity
    check that both did the same work (not expected to be exactly 0: diffusers rounds
    timesteps to integers and starts DPM-Solver from unit-variance latents)."""
    try:
        import numpy as np
        from PIL import Image

        suffix = f"{opts.width}x{opts.height}-{opts.steps}steps.png"
        a, b = (np.asarray(Image.open(out / f"{t}-{suffix}").convert("RGB"), dtype=np.float64) for t in TOOLS)
        return f"{np.abs(a - b).mean():.2f} mean / {np.abs(a - b).max():.0f} max (0-255)"
    except Exception as exc:  # informational only
        return f"n/a ({exc})"


def print_table(results: dict[str, dict], opts: argparse.Namespace, out: Path) -> str:
    b, d = results["brushwork"], results["diffusers"]
    rows = [
        ("load (s)", f"{b['load_s']:.1f}", f"{d['load_s']:.1f}", b["load_s"] / d["load_s"]),
        ("warm-up image (s)", f"{b['warmup_s']:.1f}", f"{d['warmup_s']:.1f}", b["warmup_s"] / d["warmup_s"]),
        ("s / image (median)", f"{b['s_per_image']:.2f}", f"{d['s_per_image']:.2f}", b["s_per_image"] / d["s_per_image"]),
        ("CPU s / image (median)", f"{b['cpu_s_per_image']:.2f}", f"{d['cpu_s_per_image']:.2f}", b["cpu_s_per_image"] / d["cpu_s_per_image"]),
        ("RSS after load (GiB)", _gib(b["rss_after_load"]), _gib(d["rss_after_load"]), b["rss_after_load"] / d["rss_after_load"]),
        ("peak RSS in load (GiB)", _gib(b["peak_rss_load"]), _gib(d["peak_rss_load"]), b["peak_rss_load"] / d["peak_rss_load"]),
        ("peak RSS (GiB)", _gib(b["peak_rss"]), _gib(d["peak_rss"]), b["peak_rss"] / d["peak_rss"]),
    ]
    lines = [
        f"Brushwork vs diffusers StableDiffusionPipeline - {_dt.date.today().isoformat()}",
        f"model: SD 1.5 shapes, random weights, {CKPT_NAME} ({(out / CKPT_NAME).stat().st_size / 1e9:.2f} GB, fp16 file, run in fp32 on CPU)",
        f"settings: {opts.width}x{opts.height}, {opts.steps} steps, CFG {opts.cfg:g}, DPM++ 2M Karras, batch 1, "
        f"{opts.repeats} timed image(s) after 1 warm-up, torch threads {b['threads']}"
        + (f"; Brushwork in --precision {opts.brushwork_precision} (a different picture: the labelled opt-in speed path)" if opts.brushwork_precision == "bf16" else ""),
        f"versions: python {platform.python_version()}, torch {b['torch']}, diffusers {_version('diffusers')}, "
        f"transformers {_version('transformers')}, brushwork {_version('brushwork')}",
        f"machine: {platform.machine()}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}"
        + (f"; both run with {' '.join(f'{k}={v}' for k, v in GLIBC_NO_MMAP.items())}" if opts.glibc_no_mmap else ""),
        "",
        f"| {'metric':<24} | {'brushwork':>9} | {'diffusers':>9} | {'ratio b/d':>9} |",
        f"|{'-' * 26}|{'-' * 10}:|{'-' * 10}:|{'-' * 10}:|",
    ]
    for name, bv, dv, ratio in rows:
        lines.append(f"| {name:<24} | {bv:>9} | {dv:>9} | {ratio:>9.2f} |")
    lines += [
        "",
        f"per-image times (s): brushwork {', '.join(f'{t:.2f}' for t in b['image_s'])}; "
        f"diffusers {', '.join(f'{t:.2f}' for t in d['image_s'])}",
        f"image difference: {_image_difference(out, opts)}",
        f"other processes kept {b['other_cores_busy']:.2f} (brushwork) / {d['other_cores_busy']:.2f} (diffusers) "
        f"of {os.cpu_count()} cores busy during the timed images",
    ]
    busiest = max(b["other_cores_busy"], d["other_cores_busy"])
    if busiest > 0.1:
        lines.append(f"WARNING: the machine was not idle (up to {busiest:.2f} cores used by other processes): "
                     "the time ratios are unreliable; rerun on a quiet machine.")
    speed, memory = b["s_per_image"] / d["s_per_image"], b["peak_rss"] / d["peak_rss"]
    verdict = "MET" if speed <= 1.0 and memory <= 1.0 else "NOT MET"
    lines.append(f"target (brushwork time and peak RSS <= diffusers'): {verdict} (time {speed:.2f}x, peak RSS {memory:.2f}x)")
    text = "\n".join(lines)
    print(text)
    return text


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--width", type=int, default=256, help="image width (multiple of 8; default 256)")
    p.add_argument("--height", type=int, default=256, help="image height (multiple of 8; default 256)")
    p.add_argument("--steps", type=int, default=8, help="sampling steps (default 8)")
    p.add_argument("--cfg", type=float, default=7.0, help="CFG scale (default 7)")
    p.add_argument("--repeats", type=int, default=2, help="timed images per tool after the warm-up (default 2)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads in both tools (default: all logical CPUs)")
    p.add_argument("--order", default="brushwork,diffusers", help="comma-separated run order, each name a fresh process; repeat names to alternate, "
                   "e.g. brushwork,diffusers,brushwork,diffusers (each tool's fastest run is reported; default brushwork,diffusers)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="cache/output folder (default: <repo>/bench-out, git-ignored)")
    p.add_argument("--glibc-no-mmap", action="store_true",
                   help="diagnostic: run both tools with " + " ".join(f"{k}={v}" for k, v in GLIBC_NO_MMAP.items())
                   + " (puts both on the same allocator footing; see benchmarks/README.md)")
    p.add_argument("--json", type=Path, default=None, help="also write the raw results to this JSON file")
    p.add_argument("--brushwork-precision", default="auto", choices=["auto", "fp32", "bf16"],
                   help="Brushwork's --precision (default auto = fp32, the same picture as diffusers; bf16 is the labelled opt-in speed path, a different picture)")
    p.add_argument("--_child", choices=("build", *TOOLS), help=argparse.SUPPRESS)
    opts = p.parse_args(argv)
    if opts.width % 8 or opts.height % 8:
        p.error("--width and --height must be multiples of 8")
    if opts.steps < 1 or opts.repeats < 1 or opts.threads < 1:
        p.error("--steps, --repeats and --threads must be at least 1")
    order = [t.strip() for t in opts.order.split(",") if t.strip()]
    if not order or set(order) - set(TOOLS) or set(TOOLS) - set(order):
        p.error(f"--order must name both of {', '.join(TOOLS)} (and nothing else)")
    opts.order = order
    return opts


def _child_args(opts: argparse.Namespace, role: str) -> list[str]:
    return [
        "--_child", role, "--out", str(opts.out), "--width", str(opts.width), "--height", str(opts.height),
        "--steps", str(opts.steps), "--cfg", repr(opts.cfg), "--repeats", str(opts.repeats), "--threads", str(opts.threads),
        "--brushwork-precision", opts.brushwork_precision,
    ]


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    opts.out = opts.out.resolve()
    if opts._child == "build":
        child_build(opts.out)
        return 0
    if opts._child:
        child_time(opts._child, opts.out, opts)
        return 0

    opts.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    built = _run_child(_child_args(opts, "build"), opts.threads, "building the checkpoint")
    what = "built" if built["checkpoint_built"] else "reused"
    print(f"[bench] checkpoint {what}: {opts.out / CKPT_NAME} ({time.perf_counter() - t0:.0f}s; "
          f"Brushwork's first-load sha256, now cached: {built['hash_s']:.1f}s)", flush=True)
    primed = _prime(opts.out, opts.out / CKPT_NAME)
    print(f"[bench] read the checkpoint once into the page cache ({primed:.1f}s)", flush=True)

    runs: dict[str, list[dict]] = {t: [] for t in TOOLS}
    for tool in opts.order:
        print(f"[bench] {tool}: load, 1 warm-up + {opts.repeats} timed image(s) in a fresh process ...", flush=True)
        r = _run_child(_child_args(opts, tool), opts.threads, tool, opts.glibc_no_mmap)
        print(
            f"[bench]   load {r['load_s']:.1f}s, warm-up {r['warmup_s']:.1f}s, {r['s_per_image']:.2f} s/image, "
            f"peak RSS {_gib(r['peak_rss'])} GiB, other processes {r['other_cores_busy']:.2f} cores busy "
            f"(process {r['process_wall_s']:.0f}s)",
            flush=True,
        )
        runs[tool].append(r)

    # with repeated runs per tool, report each tool's best (lowest) s/image run: the
    # one least disturbed by the machine; peak RSS is the highest seen
    results = {}
    for tool, rs in runs.items():
        best = dict(min(rs, key=lambda r: r["s_per_image"]))
        best["peak_rss"] = max(r["peak_rss"] for r in rs)
        best["peak_rss_load"] = max(r["peak_rss_load"] for r in rs)
        results[tool] = best
    print()
    table = print_table(results, opts, opts.out)
    if opts.json:
        opts.json.write_text(json.dumps({"runs": runs, "table": table, "argv": sys.argv[1:]}, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
