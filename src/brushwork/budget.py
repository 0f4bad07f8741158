"""What a generation will cost before it starts: working memory and time.

A request that cannot finish on this device (a 4096x4096 picture on a laptop CPU)
must be refused with a number, not started and left to block every other job.

* **Memory** is counted and planned in ``memory/`` (``memory/plan.py``).
* **Time** counts floating-point operations and divides by the device's speed.
  The operations are counted by running the UNet and the VAE decoder on
  PyTorch's ``meta`` device at the requested size (shapes only: no arithmetic,
  no memory, under a second whatever the size; only for requests big enough to
  matter, and cached per model and size).  The device's speed is measured once
  per process with a short convolution, then learnt from the batches that
  really ran (``Throughput.observe``).
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Optional

import torch

from .memory.footprint import meta_twin
from .models.detect import ModelSpec

#: jobs estimated to take longer than this are refused (seconds; 0 or None: no limit)
DEFAULT_MAX_JOB_SECONDS = 60 * 60
#: a whole network sustains less than a bare convolution (norms, attention, memory traffic)
EFFICIENCY = 0.7
#: below this much work (latent tokens x model calls) the time check is skipped: it cannot be long
_SMALL_WORK = 64 * 64 * 2 * 30


def cfg_passes(cfg_scale: float) -> int:
    """UNet calls per step and sample: CFG 1 needs no unconditional pass."""
    return 1 if cfg_scale == 1.0 else 2


def _count(fn) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


@dataclass(frozen=True)
class Flops:
    """Operations of one UNet call for one sample, and of decoding one picture."""

    unet: float
    decode: float


def count_flops(spec: ModelSpec, unet: torch.nn.Module, vae, width: int, height: int) -> Flops:
    """Count operations on the meta device at the real size (on weightless twins)."""
    h, w = height // 8, width // 8
    x = torch.empty(1, spec.unet.in_channels, h, w, device="meta")
    t = torch.empty(1, device="meta")
    kwargs: dict = {"encoder_hidden_states": torch.empty(1, 77, spec.unet.context_dim, device="meta")}
    if spec.family == "sdxl":
        pooled = spec.text_encoders[-1].projection_dim or spec.text_encoders[-1].width
        kwargs["added_cond_kwargs"] = {"text_embeds": torch.empty(1, pooled, device="meta"), "time_ids": torch.empty(1, 6, device="meta")}
    twin = meta_twin(unet, torch.float32)  # counting on a weightless twin never touches the live network
    unet_flops = _count(lambda: twin(x, t, **kwargs))
    # a tiled (streamed) decode does the whole decode's arithmetic, only in tiles
    z = torch.empty(1, vae.config.latent_channels, h, w, device="meta")
    decoder = meta_twin(vae, torch.float32).decoder
    decode_flops = _count(lambda: decoder(z))
    return Flops(unet_flops, decode_flops)


class Throughput:
    """Sustained operations per second of one device: a quick measurement first,
    then what real jobs achieved (the slower of recent observations wins)."""

    def __init__(self) -> None:
        self._rates: dict[str, float] = {}
        self._lock = threading.Lock()

    def rate(self, device: torch.device, dtype: torch.dtype) -> float:
        key = f"{device}/{dtype}"
        with self._lock:
            if key not in self._rates:
                self._rates[key] = _probe(device, dtype)
            return self._rates[key]

    def observe(self, device: torch.device, dtype: torch.dtype, flops: float, seconds: float) -> None:
        """Learn from a finished batch (ignored when too short to mean anything)."""
        if seconds < 0.5 or flops <= 0:
            return
        key = f"{device}/{dtype}"
        with self._lock:
            seen = flops / seconds
            old = self._rates.get(key)
            self._rates[key] = seen if old is None else 0.5 * old + 0.5 * seen


def _probe(device: torch.device, dtype: torch.dtype) -> float:
    """Operations per second of a 3x3 convolution like the UNet's (best of three)."""
    channels, side = (128, 64) if device.type == "cpu" else (320, 128)
    conv = torch.nn.Conv2d(channels, channels, 3, padding=1).to(device, dtype)
    x = torch.randn(1, channels, side, side, device=device, dtype=dtype)
    flops = 2.0 * channels * channels * 9 * side * side
    best = float("inf")
    with torch.inference_mode():
        for _ in range(4):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            conv(x)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            best = min(best, time.perf_counter() - t0)
    return EFFICIENCY * flops / max(best, 1e-6)


THROUGHPUT = Throughput()


@dataclass(frozen=True)
class TimeEstimate:
    seconds: float
    flops: float

    def text(self) -> str:
        s = self.seconds
        if s < 90:
            return f"{s:.0f} s"
        if s < 5400:
            return f"{s / 60:.0f} min"
        return f"{s / 3600:.1f} h"


def _work(width: int, height: int, calls: int, batch: int, batch_count: int, cfg_scale: float) -> int:
    """A request's size in latent tokens times UNet calls (cheap to compute, no counting)."""
    return (width // 8) * (height // 8) * cfg_passes(cfg_scale) * batch * batch_count * calls


#: a job expected to take longer than this is announced before it starts (CLI and studio)
LONG_JOB_SECONDS = 30.0


def worth_announcing(width: int, height: int, calls: int, batch: int, batch_count: int, cfg_scale: float) -> bool:
    """Whether a job is big enough that its time is worth estimating for the user (a
    128 px demo picture is not; 512 px at 20 steps is, since on a CPU it takes minutes)."""
    return _work(width, height, calls, batch, batch_count, cfg_scale) > _SMALL_WORK // 8


def expectation(est: TimeEstimate, images: int, device: str) -> str:
    """One line that tells the user what to expect, before a long job."""
    return f"expect about {est.text()} for {images} image(s) on {device} (from this device's measured speed); fewer steps or a smaller size is faster"


def needs_time_check(width: int, height: int, steps: int, batch: int, batch_count: int, cfg_scale: float) -> bool:
    """Whether a request is big enough (latent tokens x UNet calls) for the time check."""
    return _work(width, height, steps, batch, batch_count, cfg_scale) > _SMALL_WORK


def job_flops(flops: Flops, steps: int, batch: int, batch_count: int, cfg_scale: float) -> float:
    """Operations of a whole request: every UNet call of every step, and every decode."""
    per_batch = steps * cfg_passes(cfg_scale) * batch * flops.unet + batch * flops.decode
    return per_batch * batch_count


def estimate_time(flops: Flops, rate: float, steps: int, batch: int, batch_count: int, cfg_scale: float) -> TimeEstimate:
    total = job_flops(flops, steps, batch, batch_count, cfg_scale)
    return TimeEstimate(total / rate, total)


def too_long_message(est: TimeEstimate, limit: float, width: int, height: int, steps: int, images: int, device: str) -> str:
    limit_text = TimeEstimate(limit, 0).text()
    return (
        f"{width}x{height}, {steps} steps, {images} image(s) would take about {est.text()} on {device} "
        f"(estimated from {est.flops / 1e12:.1f} TFLOP), longer than the limit of {limit_text}. "
        "Use a smaller size, fewer steps or fewer images (or a GPU), or raise the limit (brushwork generate --max-minutes N, brushwork serve --max-job-minutes N; 0: no limit)."
    )


def optional_limit(minutes: Optional[float]) -> Optional[float]:
    """--max-minutes value -> seconds (None or 0: no limit)."""
    if minutes is None:
        return DEFAULT_MAX_JOB_SECONDS
    return None if minutes <= 0 else minutes * 60
