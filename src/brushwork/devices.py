"""Choosing where and in what precision to run.

CUDA when present (fp16 weights), Apple MPS next (fp16), else the CPU (fp32: CPU
half-precision kernels are slow or missing).  The user can force a device.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Placement:
    device: torch.device
    dtype: torch.dtype

    @property
    def label(self) -> str:
        return f"{self.device.type}{'' if self.device.index is None else ':' + str(self.device.index)} ({str(self.dtype).replace('torch.', '')})"


class DeviceError(ValueError):
    pass


def with_precision(placement: Placement, precision: str | None) -> Placement:
    """``--precision``: None/"auto" keeps the device's default; "bf16" on a CPU runs the
    UNet and text encoders in bfloat16 (several times faster where the CPU has bf16
    units, e.g. AVX-512 BF16 or AMX; a slightly different picture, so it is opt-in and
    written into the infotext), "fp32" forces float32 anywhere."""
    if precision in (None, "", "auto"):
        return placement
    wanted = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16}.get(precision.lower())
    if wanted is None:
        raise DeviceError(f"unknown precision {precision!r}; use auto, fp32, bf16 (CPU or GPU) or fp16 (GPU).")
    if wanted == torch.float16 and placement.device.type == "cpu":
        raise DeviceError("fp16 on the CPU is slow or missing in PyTorch; use --precision bf16 (fast on CPUs with bf16 units) or fp32.")
    return Placement(placement.device, wanted)


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend and backend.is_available())


def choose_placement(requested: str | None = None) -> Placement:
    """Placement for a ``--device`` value (None or "auto" picks the best available)."""
    if requested in (None, "", "auto"):
        if torch.cuda.is_available():
            return Placement(torch.device("cuda"), torch.float16)
        if _mps_available():
            return Placement(torch.device("mps"), torch.float16)
        return Placement(torch.device("cpu"), torch.float32)
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise DeviceError(f"unknown device {requested!r}; use auto, cpu, cuda, cuda:N or mps.") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError("--device cuda was asked for but PyTorch sees no CUDA GPU (is the CUDA build of torch installed?). Use --device cpu.")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(f"--device {requested}: there are only {torch.cuda.device_count()} CUDA device(s).")
        return Placement(device, torch.float16)
    if device.type == "mps":
        if not _mps_available():
            raise DeviceError("--device mps was asked for but Apple's Metal backend is not available here. Use --device cpu.")
        return Placement(device, torch.float16)
    if device.type == "cpu":
        return Placement(device, torch.float32)
    raise DeviceError(f"unsupported device {requested!r}; use auto, cpu, cuda, cuda:N or mps.")


def free_memory_bytes(device: torch.device) -> int:
    """Memory available for a generation on ``device``."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:  # pragma: no cover - psutil is a dependency
        return 8 << 30
