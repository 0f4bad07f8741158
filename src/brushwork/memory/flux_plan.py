"""The memory plan of a Flux.1 model: plan.py's ladder, for a transformer, a 16-channel
autoencoder and two text encoders (CLIP-L and the 4.7B-parameter T5-XXL).

Pure, like plan.py: weights are counted in the bytes they take in memory as loaded
(bf16, fp32, or a GGUF file's quantized bytes), working memory is counted on meta
twins (flux_family.count_flux_working).  The rungs:

CPU: ``resident``; ``tiled VAE``; ``text encoders released`` (T5 and CLIP-L dropped
after encoding, read again from their files for a new prompt).

GPU: ``resident``; ``tiled VAE``; ``text encoders on the CPU`` (the prompt is encoded
in host memory, the encoders never take GPU memory); ``VAE swapped in``;
``sequential`` (the transformer's layers brought onto the GPU one at a time).
"""
from __future__ import annotations

from dataclasses import dataclass

from .plan import SEQUENTIAL_SHARE, MemoryPlan, Working, _overhead

FLUX_CPU_RUNGS = ("resident", "tiled VAE", "text encoders released")
FLUX_GPU_RUNGS = ("resident", "tiled VAE", "text encoders on the CPU", "VAE swapped in", "sequential")


@dataclass(frozen=True)
class FluxNeed:
    """What one Flux generation needs, in bytes: each part's weights as held, and the
    working memory of its stages."""

    transformer: int
    vae: int
    text_encoders: int  # CLIP-L + T5
    working: Working
    tiled_decode: int

    family = "flux"


def flux_plan_at(need: FluxNeed, device: str, free: int, rung: int) -> MemoryPlan:
    """The plan on ``rung`` of a Flux model's ladder on ``device``, with its peak."""
    names = FLUX_CPU_RUNGS if device == "cpu" else FLUX_GPU_RUNGS
    if not 0 <= rung < len(names):
        raise ValueError(f"rung {rung} does not exist for Flux on {device}; it has rungs 0 to {len(names) - 1}")
    work = need.working
    tiled = rung >= 1
    decode = _overhead(device, "decode", min(need.tiled_decode, work.decode) if tiled else work.decode)
    sample = _overhead(device, "sample", work.sample)
    text = _overhead(device, "text", work.encode_text)
    tr, vae, te = need.transformer, need.vae, need.text_encoders
    if device == "cpu":
        released = rung >= 2
        kept = tr + vae + (0 if released else te)
        peak = max(tr + vae + te + text, kept + sample, kept + decode)
        note = "T5 and CLIP-L read again from their files for a new prompt" if released else ""
        return MemoryPlan(device, rung, names[rung], 16, tiled, False, False, False, peak, free, True, note, released, family="flux")
    te_cpu, swapped, sequential = rung >= 2, rung >= 3, rung >= 4
    on_gpu = int(tr * SEQUENTIAL_SHARE) if sequential else tr
    te_gpu = 0 if te_cpu else te
    stage_encode = on_gpu + vae + te_gpu + (0 if te_cpu else text)
    stage_sample = on_gpu + te_gpu + (0 if swapped else vae) + sample
    stage_decode = (0 if swapped else on_gpu) + te_gpu + vae + decode
    peak = max(stage_encode, stage_sample, stage_decode)
    note = "the prompt is encoded on the CPU" if te_cpu else ""
    return MemoryPlan(device, rung, names[rung], 16, tiled, te_cpu, swapped, sequential, peak, free, True, note, family="flux")
