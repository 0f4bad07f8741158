"""The memory plan: where each network lives and how it is stored, chosen from free memory.

A pure function of (the model's weights, one generation's working memory, the
device, the free bytes): no torch, no device, so every choice is unit-tested
without a GPU (tests/test_memory_plan.py).  The plan is a rung on a ladder; each
rung needs less memory than the one above and costs some speed:

GPU (half precision):

0. ``resident``: every network on the GPU, whole-frame VAE decode.
1. ``tiled VAE``: the decode streamed in tiles (vae.py; the same picture).
2. ``text encoders on the CPU``: the prompt is encoded on the CPU in float32
   (a second or two per new prompt), their weights never take GPU memory.
3. ``VAE swapped in``: the VAE comes onto the GPU only for its pass and the UNet
   leaves meanwhile (it comes back for the next job: about 0.5 s for SDXL over PCIe).
4. ``sequential``: the UNet stays in host memory and its layers are brought onto the
   GPU one at a time as they run (diffusers' group offloading; slow, the last resort).

CPU (float32 arithmetic):

0. ``resident``: float32 weights, whole-frame decode.
1. ``tiled VAE``.
2. ``16-bit at rest``: the UNet's and text encoders' weights stay in 16 bits in
   memory (the file's own fp16/bf16, so the picture is the same bit for bit) and
   each layer is widened to float32 only while it runs.  A float32 file is rounded
   to fp16 at rest: a slightly different picture, said in the plan's note.
3. ``text encoders released``: after the prompts are encoded the text encoders'
   weights are dropped, and read again from the checkpoint file when a new prompt
   needs them (encodings are cached per prompt; not while a LoRA is merged into them).

A plan that does not fit even on its last rung is returned with ``fits`` False;
callers refuse the request with :func:`fitting_size`'s suggestion.  When the
device still runs out of memory mid-job, the engine steps one rung down and runs
the batch again (:func:`step_down`, engine's OOM retry).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Weights:
    """Parameter counts of a checkpoint's components, and the float size its file stores them in."""

    unet: int
    vae: int
    text_encoders: int
    file_bytes_per_weight: int  # 2 for fp16/bf16 files, 4 for fp32 ones (the UNet's majority)
    file_dtype: str  # safetensors' name: "F16", "BF16", "F32"
    largest: int = 0  # weights of the largest tensor: the size of the float32 scratch that 16 bits at rest widens layers into

    @property
    def total(self) -> int:
        return self.unet + self.vae + self.text_encoders


@dataclass(frozen=True)
class Working:
    """Peak working memory (bytes) of each stage of one generation, weights excluded."""

    sample: int  # one UNet call over the whole batch (both CFG halves)
    decode: int  # one whole-frame VAE decode of one picture
    encode_text: int  # one text-encoder call


GPU_RUNGS = ("resident", "tiled VAE", "text encoders on the CPU", "VAE swapped in", "sequential")
CPU_RUNGS = ("resident", "tiled VAE", "16-bit at rest", "text encoders released")

#: the working memory the meta-device count does not see (allocator, oneDNN's kernel
#: scratch and weight reorders) per stage, as a factor on the counted bytes plus a
#: fixed part.  CPU: fitted to peak RSS over the weights of the SD 1.5 UNet (512 and
#: 768 px) and VAE decode (256, 512, 1024 px), within 3% (benchmarks/README.md,
#: bench_memory.py).  CUDA: an allowance, not measured here (no GPU was lent).
OVERHEAD = {
    "cpu": {"sample": (1.40, 64 << 20), "decode": (1.25, 128 << 20), "text": (1.25, 32 << 20)},
    "cuda": {"sample": (1.15, 64 << 20), "decode": (1.15, 64 << 20), "text": (1.15, 32 << 20)},
}
#: the share of the UNet's weights on the GPU at once with sequential offload
SEQUENTIAL_SHARE = 0.05
#: plans keep this share of the free memory unused
SAFETY = 0.92
#: on the CPU, glibc may keep freed blocks for reuse (faster, runtime.tune_cpu_allocator)
#: only where the plan's peak is this far below the budget: a heap that never returns
#: memory grows with fragmentation (SDXL at 1024 px resident: 22.0 GiB measured for 17.5 predicted;
#: decodes hand their blocks back in any case, runtime.large_blocks_returned)
REUSE_HEADROOM = 1.5


def may_keep_freed_blocks(plan: "MemoryPlan") -> bool:
    """Whether a CPU plan leaves room for the faster allocator setting."""
    return plan.at_rest_bits == 32 and plan.peak * REUSE_HEADROOM <= SAFETY * plan.free


@dataclass(frozen=True)
class Need:
    """What one generation needs: the model's weights and the working memory of its
    stages (counted in the device's compute precision; ``tiled_decode``: the decode's
    working memory when streamed in tiles)."""

    weights: Weights
    working: Working
    tiled_decode: int
    vae_bytes: int = 0  # bytes per VAE weight (0: the device's compute size)


@dataclass(frozen=True)
class MemoryPlan:
    device: str  # "cpu" or "cuda"
    rung: int
    name: str
    at_rest_bits: int  # 16 or 32: how the UNet's and text encoders' weights are kept in memory
    tiled_vae: bool
    text_encoders_on_cpu: bool
    vae_swapped: bool
    sequential: bool
    peak: int  # predicted peak bytes on the device
    free: int  # bytes free for it
    exact: bool  # the same picture as the resident plan
    note: str = ""
    release_text_encoders: bool = False  # CPU: dropped after encoding, read again for a new prompt
    family: str = "sd"  # "flux": a Flux model's ladder (flux_plan.py)

    @property
    def fits(self) -> bool:
        return self.peak <= SAFETY * self.free

    @property
    def last(self) -> bool:
        return self.rung == len(rungs(self.device, self.family)) - 1

    def describe(self) -> str:
        text = f"memory plan '{self.name}' on {self.device}: about {self.peak / 2**30:.1f} GiB of {self.free / 2**30:.1f} GiB free"
        return text + (f" ({self.note})" if self.note else "")


def rungs(device: str, family: str = "sd") -> tuple[str, ...]:
    if family == "flux":
        from .flux_plan import FLUX_CPU_RUNGS, FLUX_GPU_RUNGS

        return FLUX_CPU_RUNGS if device == "cpu" else FLUX_GPU_RUNGS
    return CPU_RUNGS if device == "cpu" else GPU_RUNGS


def family_of(need) -> str:
    """"flux" for a Flux model's need (flux_plan.FluxNeed), else "sd"."""
    return getattr(need, "family", "sd")


def _overhead(device: str, stage: str, counted: int) -> int:
    factor, fixed = OVERHEAD["cpu" if device == "cpu" else "cuda"][stage]
    return int(counted * factor) + fixed


def plan_at(need: Need, device: str, free: int, rung: int) -> MemoryPlan:
    """The plan on ``rung`` of ``device``'s ladder, with its predicted peak."""
    if family_of(need) == "flux":
        from .flux_plan import flux_plan_at

        return flux_plan_at(need, device, free, rung)
    names = rungs(device)
    if not 0 <= rung < len(names):
        raise ValueError(f"rung {rung} does not exist on {device}; it has rungs 0 to {len(names) - 1}")
    w, work = need.weights, need.working
    cpu = device == "cpu"
    compute = 4 if cpu else 2
    vae_w = w.vae * (need.vae_bytes or compute)
    tiled = rung >= 1
    decode = _overhead(device, "decode", min(need.tiled_decode, work.decode) if tiled else work.decode)
    sample = _overhead(device, "sample", work.sample)
    text = _overhead(device, "text", work.encode_text)
    if cpu:
        rest = 16 if rung >= 2 else 32
        released = rung >= 3
        unet_w, te_w = w.unet * rest // 8, w.text_encoders * rest // 8
        widen = 4 if rest == 16 else 0  # the float32 copy of the layer that runs
        stage_encode = unet_w + te_w + vae_w + text + widen * w.largest
        # float32 plans may keep the sampler's freed blocks in the heap (may_keep_freed_blocks),
        # and decodes map their own (runtime.large_blocks_returned): the two then add up
        work = sample + decode if rest == 32 else max(sample, decode)
        stage_rest = unet_w + (0 if released else te_w) + vae_w + widen * w.largest + work
        peak = max(stage_encode, stage_rest)
        exact = rest == 32 or w.file_bytes_per_weight <= 2
        notes = []
        if rest == 16:
            notes.append(f"weights kept as the file's {w.file_dtype} and widened per layer: the same picture" if exact else "the float32 file's weights are rounded to fp16 in memory: the picture differs slightly")
        if released:
            notes.append("text encoders read again from the file for a new prompt")
        return MemoryPlan(device, rung, names[rung], rest, tiled, False, False, False, peak, free, exact, "; ".join(notes), released)
    te_cpu, swapped, sequential = rung >= 2, rung >= 3, rung >= 4
    unet_w = w.unet * compute
    te_w = 0 if te_cpu else w.text_encoders * compute
    on_gpu_unet = int(unet_w * SEQUENTIAL_SHARE) if sequential else unet_w
    stage_encode = on_gpu_unet + vae_w + te_w + (0 if te_cpu else text)
    stage_sample = on_gpu_unet + te_w + (0 if swapped else vae_w) + sample
    stage_decode = (0 if swapped else on_gpu_unet) + te_w + vae_w + decode
    peak = max(stage_encode, stage_sample, stage_decode)
    note = "the prompt is encoded on the CPU in float32" if te_cpu else ""
    return MemoryPlan(device, rung, names[rung], compute * 8, tiled, te_cpu, swapped, sequential, peak, free, not te_cpu, note)


def choose_plan(need: Need, device: str, free: int, lowest: int = 0) -> MemoryPlan:
    """The first rung from ``lowest`` down the ladder that fits (the fastest plan that
    fits); the last rung, which then does not fit, when none does."""
    plan = plan_at(need, device, free, lowest)
    while not plan.fits and not plan.last:
        plan = plan_at(need, device, free, plan.rung + 1)
    return plan


def step_down(plan: MemoryPlan, need: Need, free: int | None = None) -> MemoryPlan | None:
    """The next rung after an out-of-memory error (None: already on the last one)."""
    if plan.last:
        return None
    return plan_at(need, plan.device, plan.free if free is None else free, plan.rung + 1)


@dataclass(frozen=True)
class Fit:
    """What would fit instead of a request that does not."""

    width: int
    height: int
    batch: int

    def text(self, width: int, height: int, batch: int) -> str:
        parts = []
        if self.batch >= 1 and self.batch < batch:
            parts.append(f"batch size {self.batch} at {width}x{height}")
        if self.width >= 64 and self.height >= 64:
            parts.append(f"{self.width}x{self.height} at batch size 1")
        return " or ".join(parts) if parts else "nothing: the model's weights alone do not fit; use a smaller model or free memory"


def fitting_size(need_at: Callable[[int, int, int], Need], device: str, free: int, width: int, height: int, batch: int) -> Fit:
    """The largest batch at this size, and the largest size of the same shape at batch 1
    (multiples of 64, in steps of 10%), that fit on the last rung.  ``need_at(width,
    height, batch)`` counts a request's need (footprint.py); sizes are tried from the
    largest down, so the answer is one that was counted and fits."""
    def fits(w: int, h: int, b: int) -> bool:
        need = need_at(w, h, b)
        return plan_at(need, device, free, len(rungs(device, family_of(need))) - 1).fits

    fits_batch = next((b for b in range(batch - 1, 0, -1) if fits(width, height, b)), 0)
    fit_w = fit_h = 0
    scale, tried = 1.0, set()
    while scale > 0.05:
        scale *= 0.9
        w, h = (max(64, int(v * scale) // 64 * 64) for v in (width, height))
        if (w, h) in tried:
            if w == h == 64:
                break
            continue
        tried.add((w, h))
        if fits(w, h, 1):
            fit_w, fit_h = w, h
            break
    return Fit(fit_w, fit_h, fits_batch)


def gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if not math.isnan(n) else "?"
