#!/usr/bin/env python
"""Flux.1 dev at full size: the memory plan's predictions and the CPU time estimate.

    python benchmarks/bench_flux_plan.py [--side 1024] [--steps 20] [--gpu-cap 8G]

PREDICTIONS, NOT MEASUREMENTS. No GPU was lent to the sessions that built Flux, and a
12B-parameter model does not fit this machine's 24 GiB in 16 bits beside T5-XXL.  This
builds the networks at their real size on the meta device (no weights: diffusers'
FluxTransformer2DModel, the 16-channel AutoencoderKL, transformers' T5-XXL and CLIP-L)
and asks the same code the engine asks:

* the weights as held: bf16 (a bf16 or fp8 file: fp8 is widened to bf16 as it is read),
  or a GGUF file's quantized bytes (the blocks' linear weights at the type's bits per
  weight, the rest bf16, as the loader keeps them);
* the working memory of one transformer call, one decode and one T5 call, counted on
  meta twins (flux_family.count_flux_working);
* the rung ``memory/flux_plan.choose_plan`` picks on the CPU with this machine's memory,
  and on a GPU with ``--gpu-cap`` free, with the predicted peak of each rung;
* the operations of one generation (flux_family.count_flux_flops) over this machine's
  measured bf16 rate (budget.THROUGHPUT): the estimate the CPU refusal quotes.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

import torch  # noqa: E402

GiB = 2**30
#: bits per weight of the GGUF types users run Flux in (block size and scales included)
GGUF_BITS = {"Q8_0": 8.5, "Q5_K": 5.5, "Q4_K / Q4_0": 4.5}


def full_size_spec():
    from brushwork.models.flux import FluxSpec

    return FluxSpec(prefix="", hidden=3072, head_dim=128, double=19, single=38, in_channels=64, context=4096, pooled=768, mlp=12288, guidance=True)


def meta_networks(spec):
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    with torch.device("meta"):
        transformer = FluxTransformer2DModel(**spec.diffusers_config())
        vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32)
        t5 = T5EncoderModel(T5Config(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64, feed_forward_proj="gated-gelu", is_gated_act=True))
        clip = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=77))
    return transformer, vae, [clip, t5]


def params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def quantized_share(transformer: torch.nn.Module) -> int:
    """Weights a GGUF Flux file quantizes: the 2-D linear weights of the blocks."""
    return sum(m.weight.numel() for name, m in transformer.named_modules()
               if isinstance(m, torch.nn.Linear) and ("transformer_blocks." in name))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("--side", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--gpu-cap", default="8G", help="free GPU memory for the GPU plan (e.g. 8G, 12G)")
    args = ap.parse_args(argv)

    from brushwork.budget import THROUGHPUT, estimate_time
    from brushwork.flux_family import count_flux_flops, count_flux_working
    from brushwork.memory.flux_plan import FLUX_CPU_RUNGS, FLUX_GPU_RUNGS, FluxNeed
    from brushwork.memory.manager import parse_size
    from brushwork.memory.plan import SAFETY, choose_plan, plan_at
    from brushwork.devices import free_memory_bytes
    from brushwork.vae import streamed_decode_bytes

    spec = full_size_spec()
    transformer, vae, encoders = meta_networks(spec)
    side = args.side
    n_tr, n_q = params(transformer), quantized_share(transformer)
    print(f"Flux.1 dev, full size on the meta device: transformer {n_tr / 1e9:.2f}B parameters ({n_q / 1e9:.2f}B in the blocks' linear layers), "
          f"T5-XXL {params(encoders[1]) / 1e9:.2f}B, CLIP-L {params(encoders[0]) / 1e6:.0f}M, VAE {params(vae) / 1e6:.0f}M")
    bf16 = torch.bfloat16
    te_bytes = 2 * sum(params(e) for e in encoders)
    vae_bytes = {"cpu": 4 * params(vae), "cuda": 2 * params(vae)}  # float32 on the CPU, bf16 on a GPU
    working = {dev: count_flux_working(spec, transformer, vae, encoders, side, side, 1, bf16, torch.float32 if dev == "cpu" else bf16) for dev in ("cpu", "cuda")}
    tiled = {dev: streamed_decode_bytes(vae, side, side, host_is_device=dev == "cpu", dtype_bytes=4 if dev == "cpu" else 2) for dev in ("cpu", "cuda")}
    files = {"bf16 / fp8 file": 2 * n_tr}
    for name, bits in GGUF_BITS.items():
        files[f"GGUF {name}"] = int(n_q * bits / 8) + 2 * (n_tr - n_q)
    w = working["cuda"]
    print(f"\nworking memory at {side}x{side}, batch 1, bf16 (meta-counted): transformer call {w.sample / GiB:.2f} GiB, "
          f"decode {w.decode / GiB:.2f} GiB (tiled {tiled['cuda'] / GiB:.2f}), T5 call {w.encode_text / GiB:.2f} GiB; text encoders {te_bytes / GiB:.2f} GiB")

    cpu_free = free_memory_bytes(torch.device("cpu"))
    gpu_free = parse_size(args.gpu_cap)
    for device, free, names in (("cpu", cpu_free, FLUX_CPU_RUNGS), ("cuda", gpu_free, FLUX_GPU_RUNGS)):
        where = f"CPU, {free / GiB:.1f} GiB available here" if device == "cpu" else f"GPU under a {free / GiB:.1f} GiB cap"
        print(f"\n## {where} (plans use {SAFETY:.0%} of it): predicted peak per rung, GiB")
        print("| transformer file | held | " + " | ".join(names) + " | chosen |")
        print("|---|---|" + "---|" * len(names) + "---|")
        for label, held in files.items():
            need = FluxNeed(held, vae_bytes[device], te_bytes, working[device], tiled[device])
            peaks = [plan_at(need, device, free, r).peak / GiB for r in range(len(names))]
            chosen = choose_plan(need, device, free)
            verdict = chosen.name if chosen.fits else "does not fit"
            print(f"| {label} | {held / GiB:.1f} | " + " | ".join(f"{p:.1f}" for p in peaks) + f" | {verdict} |")

    flops = count_flux_flops(spec, transformer, vae, side, side)
    rate = THROUGHPUT.rate(torch.device("cpu"), bf16)
    est = estimate_time(flops, rate, args.steps, 1, 1, 1.0)
    print(f"\none transformer call at {side}x{side}: {flops.unet / 1e12:.1f} TFLOP; decode {flops.decode / 1e12:.2f} TFLOP")
    print(f"this CPU's measured bf16 rate: {rate / 1e9:.0f} GFLOP/s -> {args.steps} steps + decode estimated at {est.text()} "
          f"({est.seconds / args.steps:.0f} s/step): the engine refuses it under the default 60-minute limit unless asked (--max-minutes 0)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
