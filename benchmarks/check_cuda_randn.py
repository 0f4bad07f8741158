"""Check Brushwork's CPU emulation of torch's CUDA randn against the real thing.

    python benchmarks/check_cuda_randn.py

On a machine with an NVIDIA GPU this draws ``torch.randn(shape, device="cuda",
generator=g)`` for a few seeds and shapes, three draws in a row from one
generator (so the offset handling is checked too), and compares each with

* ``PhiloxGenerator(seed, gpu=(SMs, threads per SM))``: the emulation of this GPU,
  including tensors too large for one pass of its threads;
* ``PhiloxGenerator(seed)``: AUTOMATIC1111's NV generator (one Philox block per
  element), which equals the GPU as long as a tensor fits in one pass.

It prints the largest absolute difference and how many elements differ by more
than 1e-4 (a wrong element order or offset shows up there; float rounding does
not: the GPU's float32 logf and fast __sincosf differ from the float64 emulation by a few
float32 units in the last place).  It also compares Brownian-tree noise made on
the GPU (source GPU) with the tree made on the CPU from the NV emulation.

Exit status 0 when the emulation of this GPU is within 1e-5 everywhere, 1 when
not; without CUDA it says so and exits 0.  Not a benchmark: nothing is timed.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from brushwork.noise import BrownianNoise, PhiloxGenerator, cuda_threads  # noqa: E402

SEEDS = [0, 42, 31337, 2**32 - 1, 12345678901]
SHAPES = [(3, 4), (5,), (4, 9, 7), (4, 64, 64), (4, 128, 128), (16, 128, 128), (4, 256, 256)]
DRAWS = 3
TOLERANCE = 1e-5


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to compare (this check needs an NVIDIA GPU with a CUDA build of torch).")
        return 0
    props = torch.cuda.get_device_properties(0)
    sms = props.multi_processor_count
    per_sm = getattr(props, "max_threads_per_multi_processor", None)
    if per_sm is None:
        per_sm = 2048
        print("this torch does not report max_threads_per_multi_processor; assuming 2048")
    print(f"{props.name}: {sms} multiprocessors x {per_sm} threads = {sms * per_sm} threads at once; torch {torch.__version__}")
    print(f"{'seed':>12} {'shape':>16} {'draw':>4} {'threads':>8}  {'this GPU: max diff':>18} {'>1e-4':>6}  {'A1111 NV: max diff':>18} {'>1e-4':>7}")
    worst = 0.0
    for seed in SEEDS:
        for shape in SHAPES:
            g = torch.Generator("cuda").manual_seed(seed)
            ours, nv = PhiloxGenerator(seed, gpu=(sms, per_sm)), PhiloxGenerator(seed)
            for draw in range(DRAWS):
                real = torch.randn(shape, device="cuda", generator=g).cpu()
                a, b = ours.randn(shape), nv.randn(shape)
                da, db = (real - a).abs(), (real - b).abs()
                worst = max(worst, float(da.max()))
                numel = real.numel()
                print(f"{seed:>12} {str(shape):>16} {draw:>4} {cuda_threads(numel, sms, per_sm):>8}  {float(da.max()):>18.3e} {int((da > 1e-4).sum()):>6}  {float(db.max()):>18.3e} {int((db > 1e-4).sum()):>7}")
            if hasattr(g, "get_offset") and g.get_offset() != 4 * ours.offset:
                print(f"  offset: torch {g.get_offset()}, emulation {4 * ours.offset} (x4)")
                worst = float("inf")

    sigmas = torch.tensor([14.6146, 7.0, 3.0, 1.2, 0.5, 0.2, 0.0292, 0.0], dtype=torch.float64)
    on_gpu = BrownianNoise([1, 2], (4, 64, 64), sigmas, device="cuda", source="GPU")
    on_cpu = BrownianNoise([1, 2], (4, 64, 64), sigmas, device="cpu", source="NV")
    diffs = [float((on_gpu(s, t).cpu() - on_cpu(s, t)).abs().max()) for s, t in zip(sigmas[:-2], sigmas[1:-1])]
    print(f"Brownian-tree noise, CUDA tree (GPU source) vs CPU tree (NV emulation): max diff per step {', '.join(f'{d:.2e}' for d in diffs)}")

    ok = worst <= TOLERANCE
    print(f"largest difference of the emulation of this GPU: {worst:.3e} ({'within' if ok else 'beyond'} {TOLERANCE:g})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
