#!/usr/bin/env python
"""Peak memory of a 4x model upscale on the CPU, tiled against untiled.

    python benchmarks/bench_upscale.py [--size 1024] [--budget-mib 512] [--quick]

Builds a random-weight Real-ESRGAN Compact file at its real size (64 features, 32
convolutions, x4: realesr-general-x4v3's layout) in a temporary data home, then runs
three fresh subprocesses: a baseline that only imports Brushwork and loads the
model (and makes the input picture), a tiled 4x upscale of a --size picture (the
automatic tile from --budget-mib) and an untiled one (one tile the size of the
picture).  Each child reports its own peak RSS (``resource.getrusage``); the
numbers printed are the peaks minus the baseline's, their ratio, the seconds each
upscale took, and whether the tiled peak stayed under 2 GiB.  ``--quick`` uses a
256 px picture (a smoke run).  Needs spandrel (the test install has it).
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))

MIB = 1 << 20


def child(mode: str, home: str, size: int, budget: int) -> None:
    import numpy as np
    from PIL import Image

    from brushwork.paths import DataHome
    from brushwork.upscale import find_upscaler, upscale_image
    from brushwork.upscale import models as upmodels
    from brushwork.upscale.tiles import DEFAULT_HALO, bytes_per_input_pixel, choose_tile

    info = find_upscaler(DataHome(Path(home)), "compact_x4v3")
    loaded = upmodels.cached_model(info)
    rng = np.random.RandomState(0)
    picture = Image.fromarray(rng.randint(0, 256, (size, size, 3), dtype=np.uint8), "RGB")
    tile = None
    seconds = 0.0
    if mode != "baseline":
        tile = choose_tile(size, size, bytes_per_input_pixel(loaded.descriptor.model, 4), budget, DEFAULT_HALO) if mode == "tiled" else size
        start = time.perf_counter()
        out = upscale_image(picture, 4 * size, 4 * size, info, memory_budget=budget if mode == "tiled" else None, tile=None if mode == "tiled" else size)
        seconds = time.perf_counter() - start
        assert out.size == (4 * size, 4 * size)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    print(json.dumps({"mode": mode, "peak": peak, "tile": tile, "seconds": seconds}))


def run_child(mode: str, home: Path, size: int, budget: int) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--home", str(home), "--size", str(size), "--budget-mib", str(budget // MIB)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{mode} run failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=1024, help="side of the square input picture (default 1024)")
    ap.add_argument("--budget-mib", type=int, default=512, help="memory budget of the tiled run (default 512 MiB)")
    ap.add_argument("--quick", action="store_true", help="a 256 px smoke run")
    ap.add_argument("--child", choices=["baseline", "tiled", "untiled"], help=argparse.SUPPRESS)
    ap.add_argument("--home", help=argparse.SUPPRESS)
    args = ap.parse_args()
    size = 256 if args.quick else args.size
    budget = args.budget_mib * MIB
    if args.child:
        child(args.child, args.home, size, budget)
        return

    import upscaler_files as uf

    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        uf.save(uf.compact(nf=64, convs=32, scale=4), home / "models" / "RealESRGAN" / "compact_x4v3.pth", wrap="params")
        print(f"4x upscale of a {size}x{size} picture (Real-ESRGAN Compact 64nf 32nc, random weights), CPU")
        base = run_child("baseline", home, size, budget)
        tiled = run_child("tiled", home, size, budget)
        whole = run_child("untiled", home, size, budget)
    t_peak = tiled["peak"] - base["peak"]
    w_peak = whole["peak"] - base["peak"]
    print(f"baseline (imports + model + picture): {base['peak'] / MIB:8.1f} MiB peak RSS")
    print(f"tiled   (budget {args.budget_mib} MiB, tile {tiled['tile']} px): {t_peak / MIB:8.1f} MiB above baseline, {tiled['seconds']:.1f} s")
    print(f"untiled (one {whole['tile']} px tile):            {w_peak / MIB:8.1f} MiB above baseline, {whole['seconds']:.1f} s")
    print(f"untiled / tiled peak: {w_peak / max(t_peak, 1):.2f}x")
    print(f"tiled peak under 2 GiB: {'yes' if t_peak < 2 << 30 else 'NO'}")


if __name__ == "__main__":
    main()
