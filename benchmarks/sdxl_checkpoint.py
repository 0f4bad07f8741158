"""The SDXL-shaped random-weight checkpoint the memory benchmarks use.

    python benchmarks/sdxl_checkpoint.py [--out bench-out]

The SDXL counterpart of ``bench_vs_diffusers.py``'s SD 1.5 checkpoint: the real SDXL
base architecture (UNet 2.57 B parameters, CLIP ViT-L and OpenCLIP ViT-bigG text
encoders, the SDXL VAE) with seeded random weights, written in the original
single-file layout by the project's own writer (``models/save.py``) as fp16, like
the SDXL files users download (about 6.9 GB).  The networks are built directly in
fp16, one copy of the weights at a time, so building needs about 7 GB of memory.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "bench-out"
NAME = "sdxl-random-fp16.safetensors"


def build(out: Path = DEFAULT_OUT) -> Path:
    """The checkpoint's path, written first if it is not there yet."""
    path = out / NAME
    if path.exists():
        return path
    import torch

    from brushwork.models import families, save

    t0 = time.perf_counter()
    spec = families.sdxl_base()
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float16)  # random init straight into fp16: no fp32 copy of 3.5 B weights
    try:
        nets = save.random_networks(spec, seed=0)
    finally:
        torch.set_default_dtype(previous)
    save.save_checkpoint(path, spec, nets, dtype=torch.float16, metadata={"brushwork.benchmark": "random weights, SDXL base shapes"})
    print(f"built {path} ({path.stat().st_size / 1e9:.2f} GB) in {time.perf_counter() - t0:.0f} s", flush=True)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    print(build(ap.parse_args().out.resolve()))


if __name__ == "__main__":
    main()
