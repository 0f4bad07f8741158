"""The one model contract samplers see: ``denoise(x, sigma) -> x0``.

:func:`make_denoiser` wraps a network call ``net(x_in, t, cond) -> output`` into it:

* scales the input by c_in = 1 / sqrt(sigma² + 1) (the variance-preserving input
  the UNet was trained on) and converts sigma to a fractional training timestep;
* turns the output into x0 for eps- or v-prediction;
* applies classifier-free guidance: the unconditional and conditional passes run
  as one batch, and at CFG 1 the unconditional pass is skipped entirely.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from .schedules import ModelSchedule

#: net(x_in, timestep, conditioning) -> eps or v, same shape as x_in
NetCall = Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]


def x0_from_output(x: torch.Tensor, sigma: torch.Tensor, out: torch.Tensor, prediction: str) -> torch.Tensor:
    """Clean-latent estimate from the network output at noise level sigma."""
    if prediction == "epsilon":
        return x - sigma * out
    if prediction == "v_prediction":
        var = sigma**2 + 1
        return x / var - out * sigma / var**0.5
    raise ValueError(f"unknown prediction type {prediction!r}; expected 'epsilon' or 'v_prediction'")


def cfg_combine(uncond: torch.Tensor, cond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance: move from the unconditional towards the conditional estimate."""
    return uncond + (cond - uncond) * scale


@dataclass
class Conditioning:
    """What the network needs besides x and t, for the positive and negative prompt.

    ``cond``/``uncond`` are whatever the network call understands (a tensor of
    text embeddings, or a dict for SDXL); ``join`` batches them as [uncond, cond].
    """

    cond: Any
    uncond: Any
    join: Callable[[Any, Any], Any]


def make_denoiser(net: NetCall, schedule: ModelSchedule, prediction: str, conditioning: Conditioning, cfg_scale: float):
    """Build ``denoise(x, sigma) -> x0`` for one generation."""
    skip_uncond = cfg_scale == 1.0
    both = None if skip_uncond else conditioning.join(conditioning.uncond, conditioning.cond)

    def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, dtype=torch.float64)
        t = schedule.sigma_to_t(sigma).to(torch.float32)
        s = sigma.to(x.dtype)
        c_in = 1 / (s**2 + 1) ** 0.5
        if skip_uncond:
            out = net(x * c_in, t, conditioning.cond)
            return x0_from_output(x, s, out.to(x.dtype), prediction)
        x_in = torch.cat([x, x]) * c_in
        out = net(x_in, t, both).to(x.dtype)
        uncond, cond = x0_from_output(torch.cat([x, x]), s, out, prediction).chunk(2)
        return cfg_combine(uncond, cond, cfg_scale)

    return denoise
