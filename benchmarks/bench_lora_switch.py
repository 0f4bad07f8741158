#!/usr/bin/env python
"""What a LoRA costs on an SD 1.5-shaped checkpoint: the one-off merge/unmerge time,
and the time per sampling step with and without it (merged weights: no per-step work).

    python benchmarks/bench_lora_switch.py   (needs bench-out/sd15-random-fp16.safetensors from bench_vs_diffusers.py)
"""
from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

CKPT = Path("bench-out/sd15-random-fp16.safetensors")


def main() -> int:
    from brushwork import Engine, GenerationRequest
    from brushwork.lora import LoraStack, module_table

    if not CKPT.exists():
        print(f"{CKPT} is missing: run benchmarks/bench_vs_diffusers.py once to build it.", file=sys.stderr)
        return 2
    eng = Engine(tempfile.mkdtemp(), device="cpu")
    m = eng.load(str(CKPT))
    table = module_table(m.spec, m.networks.unet, m.networks.text_encoders)
    g = torch.Generator().manual_seed(0)
    tensors = {}
    for key, (mod, _) in table.items():
        if key.startswith("lora_unet_down_blocks") and key.endswith(("to_q", "to_k", "to_v", "to_out_0")):
            w = mod.weight
            tensors[f"{key}.lora_down.weight"] = torch.randn(16, w.shape[1], generator=g).half() * 0.01
            tensors[f"{key}.lora_up.weight"] = torch.randn(w.shape[0], 16, generator=g).half() * 0.01
    lora = Path(tempfile.mkdtemp()) / "bench.safetensors"
    save_file(tensors, str(lora))
    stack = LoraStack()
    t0 = time.perf_counter()
    n = stack.apply(m.spec, m.networks.unet, m.networks.text_encoders, lora)
    apply_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    stack.restore()
    restore_s = time.perf_counter() - t0

    req = GenerationRequest("a lighthouse", seed=1, steps=4, width=128, height=128)

    def per_step(prompt: str) -> float:
        times = []
        for _ in range(2):
            stamps = []
            eng.txt2img(GenerationRequest(prompt, seed=1, steps=4, width=128, height=128), progress=lambda p: stamps.append(time.perf_counter()))
            times += [b - a for a, b in zip(stamps, stamps[1:])]
        return statistics.median(times)

    Path(eng.home.lora_dirs[0]).mkdir(parents=True, exist_ok=True)
    (eng.home.lora_dirs[0] / "bench.safetensors").write_bytes(lora.read_bytes())
    eng.txt2img(req)  # warm-up
    base = per_step("a lighthouse")
    with_lora = per_step("a lighthouse <lora:bench:1>")
    print(f"LoRA: {n} attention layers of the UNet's down blocks, rank 16 ({lora.stat().st_size / 2**20:.1f} MB)")
    print(f"one-off: merge {apply_s:.3f} s, unmerge {restore_s:.3f} s")
    print(f"seconds per step at 128x128: without {base:.3f}, with {with_lora:.3f} (ratio {with_lora / base:.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
