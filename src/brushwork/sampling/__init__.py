"""Sampling: noise schedules, samplers and the denoiser wrapper (no model files, no web)."""
from .registry import SAMPLERS, UnknownSamplerError, resolve_sampler, resolve_schedule, sampling_sigmas, schedule_label
from .schedules import ModelSchedule, scaled_linear_schedule

__all__ = [
    "SAMPLERS",
    "UnknownSamplerError",
    "resolve_sampler",
    "resolve_schedule",
    "sampling_sigmas",
    "schedule_label",
    "ModelSchedule",
    "scaled_linear_schedule",
]
