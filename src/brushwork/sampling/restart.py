"""Restart sampling (Xu et al., "Restart Sampling for Improving Generative
Processes", NeurIPS 2023), with AUTOMATIC1111's automatic restart plan."""
from __future__ import annotations

from typing import Optional

import torch

from .samplers import Denoiser, NoiseSource, StepCallback, _report, _require_noise, heun_step

#: A1111's automatic plan: restart from the step nearest sigma 0.1 back up to the
#: step nearest sigma 2; from 20 steps once with 9 steps, from 36 steps twice with steps // 4.
RESTART_FROM, RESTART_TO = 0.1, 2.0


def _karras(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """n Karras et al. (2022) levels from sigma_max down to sigma_min (no final 0)."""
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (hi + ramp * (lo - hi)) ** rho


def restart_plan(sigmas: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The (sigma_from, sigma_to) pairs Restart walks, in order; a pair going up is a
    restart jump (noise is added), every other pair is one Heun step.

    Below 20 steps there is no restart: the pairs are the given sigmas.  From 20
    steps on, as in A1111, ``restarts * restart_steps`` of the steps are set aside:
    the main pass becomes a Karras schedule over the rest between the given
    sigmas' extremes (so the schedule then only sets the endpoints), and after the
    main step that reaches the level nearest 0.1, the path jumps back to the level
    nearest 2 and walks down again on ``restart_steps`` Karras steps, ``restarts``
    times.  The number of Heun steps is always ``len(sigmas) - 1``."""
    steps = len(sigmas) - 1
    if steps < 20:
        return [(sigmas[i], sigmas[i + 1]) for i in range(steps)]
    restart_steps, restarts = (steps // 4, 2) if steps >= 36 else (9, 1)
    positive = sigmas[sigmas > 0]
    main = torch.cat([_karras(steps - restart_steps * restarts, float(positive.min()), float(sigmas[0])), sigmas.new_zeros(1, dtype=torch.float64)])
    low = int(torch.argmin((main - RESTART_FROM).abs()))
    high = int(torch.argmin((main - RESTART_TO).abs()))
    pairs = []
    for i in range(len(main) - 1):
        pairs.append((main[i], main[i + 1]))
        if i + 1 == low and high < low:
            walk = _karras(restart_steps + 1, float(main[low]), float(main[high]))
            for _ in range(restarts):
                pairs.append((main[low], walk[0]))  # the jump up
                pairs.extend(zip(walk[:-1], walk[1:]))
    return pairs


@torch.no_grad()
def sample_restart(denoise: Denoiser, x, sigmas, *, noise: Optional[NoiseSource] = None, callback: Optional[StepCallback] = None, s_noise: float = 1.0) -> torch.Tensor:
    """Restart (Xu et al. 2023): Heun steps down the plan of :func:`restart_plan`; at
    each restart the sample is pushed from sigma_lo back up to sigma_hi with fresh
    noise of size sqrt(sigma_hi² - sigma_lo²), which keeps its marginal exact and lets
    the following deterministic walk contract accumulated errors.

    Heun costs two model calls per step (one on the final step to 0); one callback per
    Heun step, ``len(sigmas) - 1`` in all.  ``noise`` is called as noise(sigma_lo,
    sigma_hi) for each jump; below 20 steps there are none and this is plain Heun."""
    done = 0
    for sigma, sigma_to in restart_plan(sigmas):
        if sigma_to > sigma:
            noise = _require_noise(noise, "Restart")
            x = x + noise(sigma, sigma_to) * s_noise * (sigma_to**2 - sigma**2) ** 0.5
            continue
        denoised = denoise(x, sigma)
        x = heun_step(denoise, x, sigma, sigma_to, denoised)
        _report(callback, done, x, denoised)
        done += 1
    return x


__all__ = ["sample_restart", "restart_plan"]
