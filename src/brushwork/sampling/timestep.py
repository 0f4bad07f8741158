"""A1111's "timestep samplers": DDIM CFG++, PLMS and UniPC (DDIM is in samplers.py).

In A1111 these work in the variance-preserving form on integer training timesteps
and ignore the chosen schedule.  Here they are written in the same sigma form as
every other sampler, where the VP scale factors cancel exactly (x_vp = x / sqrt(1 +
sigma²)), and the registry runs them on DDIM's own timestep grid
(:func:`~brushwork.sampling.schedules.ddim_timesteps`).  In this form a DDIM step
is x_next = x0 + sigma_next * eps with eps = (x - x0) / sigma.

One difference from A1111 worth knowing: A1111's UniPC builds its own grid (time-
uniform from timestep 999 to 0, stopping at sigma_min), while ours steps along the
DDIM grid to sigma 0 like our DDIM and PLMS; the solver itself is the same.
"""
from __future__ import annotations

from typing import Optional

import torch

from .samplers import Denoiser, NoiseSource, StepCallback, _log_sigma_t, _report

#: A1111 divides the guidance scale by this for its CFG++ samplers, mapping the
#: usual CFG range 0..12.5 onto the paper's lambda in 0..1.
CFGPP_SCALE_DIVISOR = 12.5


@torch.no_grad()
def sample_ddim_cfgpp(denoise: Denoiser, x, sigmas, *, noise: Optional[NoiseSource] = None, callback: Optional[StepCallback] = None) -> torch.Tensor:
    """DDIM with CFG++ (Chung et al., "CFG++: Manifold-constrained Classifier Free
    Guidance for Diffusion Models", 2024), deterministic (eta = 0, A1111's default).

    Each step re-noises the guided estimate with the *unconditional* noise:
    x_next = x0_guided + sigma_next * (x - x0_uncond) / sigma, where x0_guided uses
    CFG / 12.5 as its scale, as A1111 does.  ``denoise`` must offer
    ``with_uncond(x, sigma, scale_factor)`` (the denoiser from ``make_denoiser`` does)."""
    with_uncond = getattr(denoise, "with_uncond", None)
    if with_uncond is None:
        raise TypeError("DDIM CFG++ needs the unconditional estimate: pass a denoiser with a with_uncond(x, sigma, scale_factor) method (make_denoiser builds one).")
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        guided, uncond = with_uncond(x, sigma, 1 / CFGPP_SCALE_DIVISOR)
        x = guided + sigma_next * (x - uncond) / sigma
        _report(callback, i, x, guided)
    return x


#: Adams-Bashforth weights on the newest..oldest noise predictions (PLMS orders 2-4)
_ADAMS_BASHFORTH = {2: (3 / 2, -1 / 2), 3: (23 / 12, -16 / 12, 5 / 12), 4: (55 / 24, -59 / 24, 37 / 24, -9 / 24)}


@torch.no_grad()
def sample_plms(denoise: Denoiser, x, sigmas, *, noise: Optional[NoiseSource] = None, callback: Optional[StepCallback] = None) -> torch.Tensor:
    """PLMS, the pseudo linear multistep method of Liu et al., "Pseudo Numerical
    Methods for Diffusion Models on Manifolds" (ICLR 2022), as in CompVis / A1111:
    DDIM steps driven by an Adams-Bashforth combination (constant coefficients, up to
    fourth order) of the last noise predictions; the first step, with no history, is
    a pseudo improved-Euler (Heun) step and costs two model calls."""
    history: list[torch.Tensor] = []  # noise predictions, oldest first
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoise(x, sigma)
        eps = (x - denoised) / sigma
        if not history:
            eps_step = eps
            if sigma_next > 0:
                x_pred = x + (sigma_next - sigma) * eps
                eps_step = (eps + (x_pred - denoise(x_pred, sigma_next)) / sigma_next) / 2
        else:
            recent = [eps] + history[::-1][:3]
            eps_step = sum(w * e for w, e in zip(_ADAMS_BASHFORTH[len(recent)], recent))
        history = (history + [eps])[-3:]
        estimate = x - sigma * eps_step
        x = estimate + sigma_next * eps_step
        _report(callback, i, x, estimate)
    return x


def _unipc_update(denoise: Denoiser, x, history: list[tuple[torch.Tensor, torch.Tensor]], sigma_to, order: int, use_corrector: bool, variant: str):
    """One UniPC step (Zhao et al. 2023, Algorithm "UniPC-p" with B(h) variants) from
    the newest history point to ``sigma_to``: the UniP predictor, then, if asked,
    the UniC corrector, which costs no extra call because its model evaluation is
    the one the next step needs anyway.  ``history`` holds (sigma, x0) pairs, newest
    last.  Returns (x, x0 at the predicted point or None)."""
    sigma_0, m0 = history[-1]
    lam_0, lam_to = _log_sigma_t(sigma_0), _log_sigma_t(sigma_to)
    h = lam_to - lam_0
    hh = -h  # data prediction
    h_phi_1 = torch.expm1(hh)
    if variant == "bh1":
        b_h = hh
    elif variant == "bh2":
        b_h = torch.expm1(hh)
    else:
        raise ValueError(f"UniPC variant must be 'bh1' or 'bh2', got {variant!r}")

    rks, diffs = [], []
    for sigma_i, m_i in reversed(history[-order:-1]):
        rk = (_log_sigma_t(sigma_i) - lam_0) / h
        rks.append(rk)
        diffs.append((m_i - m0) / rk)
    rks.append(torch.ones((), dtype=torch.float64))
    rks = torch.stack([torch.as_tensor(r, dtype=torch.float64) for r in rks])

    # R[i] = rks**i;  b[i] = (i+1)! * phi_{i+2}(hh) * hh^(i+1) / B(h)  (the paper's b vector)
    rows, b = [], []
    h_phi_k = h_phi_1 / hh - 1
    factorial = 1
    for i in range(1, order + 1):
        rows.append(rks ** (i - 1))
        b.append(h_phi_k * factorial / b_h)
        factorial *= i + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    big_r = torch.stack(rows)
    b = torch.stack([torch.as_tensor(v, dtype=torch.float64) for v in b])

    x_base = (sigma_to / sigma_0) * x - h_phi_1 * m0
    x_t = x_base
    if diffs:
        rhos_p = torch.tensor([0.5], dtype=torch.float64) if order == 2 else torch.linalg.solve(big_r[:-1, :-1], b[:-1])
        x_t = x_base - b_h * sum(r * d for r, d in zip(rhos_p, diffs))
    if not use_corrector:
        return x_t, None
    m_t = denoise(x_t, sigma_to)
    rhos_c = torch.tensor([0.5], dtype=torch.float64) if order == 1 else torch.linalg.solve(big_r, b)
    correction = sum(r * d for r, d in zip(rhos_c[:-1], diffs)) + rhos_c[-1] * (m_t - m0)
    return x_base - b_h * correction, m_t


@torch.no_grad()
def sample_unipc(denoise: Denoiser, x, sigmas, *, noise: Optional[NoiseSource] = None, callback: Optional[StepCallback] = None, order: int = 3, variant: str = "bh1", lower_order_final: bool = True) -> torch.Tensor:
    """UniPC (Zhao et al., "UniPC: A Unified Predictor-Corrector Framework for Fast
    Sampling of Diffusion Models", NeurIPS 2023), multistep, data prediction, with
    A1111's defaults: order 3, variant B(h) = h ("bh1"), lower order at the end.

    The first steps warm up at orders 1, 2, ...; every step but the last is
    corrected by UniC; one model call per step.  The final step to sigma 0 is the
    order-1 limit, the denoised estimate."""
    steps = len(sigmas) - 1
    order = max(1, min(order, steps))
    history = [(sigmas[0], denoise(x, sigmas[0]))]
    for step in range(1, steps + 1):
        sigma_to = sigmas[step]
        step_order = min(order, step)
        if lower_order_final:
            step_order = min(step_order, steps + 1 - step)
        if sigma_to == 0:
            x, m_t = history[-1][1], None
        else:
            x, m_t = _unipc_update(denoise, x, history, sigma_to, step_order, step < steps, variant)
        if step < steps:
            if m_t is None:
                m_t = denoise(x, sigma_to)
            history = (history + [(sigma_to, m_t)])[-order:]
        _report(callback, step - 1, x, m_t if m_t is not None else x)
    return x


__all__ = ["sample_ddim_cfgpp", "sample_plms", "sample_unipc", "CFGPP_SCALE_DIVISOR"]
