"""The one model contract samplers see: ``denoise(x, sigma) -> x0``.

:func:`make_denoiser` wraps a network call ``net(x_in, t, cond) -> output`` into it:

* scales the input by c_in = 1 / sqrt(sigma² + 1) (the variance-preserving input
  the UNet was trained on) and converts sigma to a fractional training timestep;
* turns the output into x0 for eps- or v-prediction;
* applies classifier-free guidance over one batched network call: the negative
  prompt first, then each positive sub-prompt (``AND``) with its weight,
  x0 = uncond + sum_i w_i * cfg * (cond_i - uncond).  With a single sub-prompt of
  weight 1 at CFG 1 the negative pass is skipped entirely;
* asks the caller for the conditioning of the current step, so prompts can
  change during sampling (prompt editing);
* on request (:meth:`CFGDenoiser.with_uncond`) also returns the unconditional
  estimate, for samplers built on it (DDIM CFG++).
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from .schedules import ModelSchedule

#: net(x_in, timestep, conditioning) -> eps or v, same shape as x_in
NetCall = Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]
#: (step, with_negative) -> the batched conditioning: [negative,] positive sub-prompts
BatchAt = Callable[[int, bool], Any]


def x0_from_output(x: torch.Tensor, sigma: torch.Tensor, out: torch.Tensor, prediction: str) -> torch.Tensor:
    """Clean-latent estimate from the network output at noise level sigma."""
    if prediction == "epsilon":
        return x - sigma * out
    if prediction == "v_prediction":
        var = sigma**2 + 1
        return x / var - out * sigma / var**0.5
    raise ValueError(f"unknown prediction type {prediction!r}; expected 'epsilon' or 'v_prediction'")


def cfg_combine(uncond: torch.Tensor, conds: list[torch.Tensor], weights: list[float], scale: float) -> torch.Tensor:
    """Classifier-free guidance, composable form: move from the unconditional estimate
    towards each conditional one by its weight times the guidance scale."""
    out = uncond
    for cond, w in zip(conds, weights):
        out = out + (cond - uncond) * (w * scale)
    return out


def step_locator(sigmas: torch.Tensor) -> Callable[[torch.Tensor], int]:
    """Maps a noise level to the 1-based sampling step it belongs to (second-order
    samplers evaluate between two sigmas; those calls belong to the earlier step)."""
    levels = [float(s) for s in sigmas]

    def step_of(sigma) -> int:
        s = float(sigma)
        for i in range(len(levels) - 1):
            if s > levels[i + 1]:
                return i + 1
        return len(levels) - 1

    return step_of


class CFGDenoiser:
    """``denoise(x, sigma) -> x0`` for one generation, with classifier-free guidance.

    Calling it gives the guided estimate, as every sampler wants.  Samplers that also
    need the unconditional (negative-prompt) estimate, such as DDIM CFG++, call
    :meth:`with_uncond`, which always runs the negative pass (even at CFG 1, where a
    plain call skips it).
    """

    def __init__(self, net: NetCall, schedule: ModelSchedule, prediction: str, batch_at: BatchAt, weights: list[float], cfg_scale: float, step_of: Callable[[torch.Tensor], int]):
        self.net, self.schedule, self.prediction = net, schedule, prediction
        self.batch_at, self.weights, self.cfg_scale, self.step_of = batch_at, weights, cfg_scale, step_of
        #: a plain call needs the negative pass unless guidance is the identity;
        #: ``cfg_scale`` may be a (B, 1, 1, 1) tensor: one scale per image of the batch
        self.needs_negative = not (bool(torch.all(torch.as_tensor(cfg_scale) == 1.0)) and weights == [1.0])

    def _estimates(self, x: torch.Tensor, sigma, with_negative: bool) -> tuple[torch.Tensor, ...]:
        """x0 of each batched conditioning: [negative,] each positive sub-prompt."""
        k = len(self.weights) + int(with_negative)
        conditioning = self.batch_at(self.step_of(sigma), with_negative)
        sigma = torch.as_tensor(sigma, dtype=torch.float64)
        t = self.schedule.sigma_to_t(sigma).to(torch.float32)
        s = sigma.to(x.dtype)
        x_rep = torch.cat([x] * k) if k > 1 else x
        out = self.net(x_rep / (s**2 + 1) ** 0.5, t, conditioning).to(x.dtype)
        return x0_from_output(x_rep, s, out, self.prediction).chunk(k)

    def __call__(self, x: torch.Tensor, sigma) -> torch.Tensor:
        x0 = self._estimates(x, sigma, self.needs_negative)
        if not self.needs_negative:
            return x0[0]
        return cfg_combine(x0[0], list(x0[1:]), self.weights, self.cfg_scale)

    def with_uncond(self, x: torch.Tensor, sigma, scale_factor: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """(guided x0, unconditional x0) from one batched network call.  The guided
        estimate uses the guidance scale times ``scale_factor`` (A1111's CFG++
        samplers guide with CFG / 12.5)."""
        x0 = self._estimates(x, sigma, True)
        return cfg_combine(x0[0], list(x0[1:]), self.weights, self.cfg_scale * scale_factor), x0[0]


def make_denoiser(net: NetCall, schedule: ModelSchedule, prediction: str, batch_at: BatchAt, weights: list[float], cfg_scale: float, step_of: Callable[[torch.Tensor], int]) -> CFGDenoiser:
    """Build ``denoise(x, sigma) -> x0`` for one generation (``weights``: one per
    positive sub-prompt); see :class:`CFGDenoiser`."""
    return CFGDenoiser(net, schedule, prediction, batch_at, weights, cfg_scale, step_of)
