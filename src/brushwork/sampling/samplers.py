"""Samplers: small pure functions that integrate the diffusion ODE/SDE.

Every sampler has one signature::

    sampler(denoise, x, sigmas, *, noise=None, callback=None) -> x_final

* ``denoise(x, sigma) -> x0`` is the model: it maps a noisy latent at noise level
  ``sigma`` (a 0-d tensor) to its estimate of the clean latent.  Whether the
  network predicts eps or v, and classifier-free guidance, are hidden inside it
  (see :mod:`brushwork.sampling.denoiser`).
* ``x`` is the starting latent, already scaled to ``sigmas[0]``; it is never
  modified in place.
* ``sigmas`` is a decreasing 1-D tensor ending in 0 (:mod:`.schedules`).
* ``noise(sigma, sigma_next)`` returns fresh standard-normal noise shaped like
  ``x`` for the move from ``sigma`` to ``sigma_next``; only stochastic samplers call
  it.  It is injected so that every image of a batch draws from its own seeded
  generator; the two noise levels let a Brownian-tree source (A1111's choice for
  the DPM++ SDE family) return the matching increment.  Sub-steps pass their own
  pair, as k-diffusion does.
* ``callback(i, x, denoised)`` is called once per step for progress and previews.

The update rules follow the papers named in each docstring, in the notation of
Karras et al. (2022): the probability-flow ODE is dx/dsigma = (x - D(x, sigma)) / sigma.
The k-diffusion family lives here; DPM fast / adaptive (which choose their own
steps) are in :mod:`.dpm_solver`, Restart in :mod:`.restart`, and A1111's timestep
samplers PLMS, UniPC and DDIM CFG++ in :mod:`.timestep`.
"""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
NoiseSource = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
StepCallback = Callable[[int, torch.Tensor, torch.Tensor], None]


def to_d(x: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
    """The ODE derivative dx/dsigma = (x - D(x, sigma)) / sigma."""
    return (x - denoised) / sigma


def ancestral_step(sigma: torch.Tensor, sigma_next: torch.Tensor, eta: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Split a step to ``sigma_next`` into a deterministic part down to
    ``sigma_down`` and fresh noise of size ``sigma_up`` (sigma_down² + sigma_up² = sigma_next²)."""
    if not eta or sigma_next == 0:
        return sigma_next, torch.zeros_like(sigma_next)
    sigma_up = torch.minimum(sigma_next, eta * (sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2) ** 0.5)
    sigma_down = (sigma_next**2 - sigma_up**2) ** 0.5
    return sigma_down, sigma_up


def _require_noise(noise: Optional[NoiseSource], name: str) -> NoiseSource:
    if noise is None:
        raise ValueError(f"the {name} sampler is stochastic and needs a noise source; pass noise=...")
    return noise


def _report(callback: Optional[StepCallback], i: int, x: torch.Tensor, denoised: torch.Tensor) -> None:
    if callback is not None:
        callback(i, x, denoised)


def _log_sigma_t(sigma: torch.Tensor) -> torch.Tensor:
    """DPM-Solver's time variable t = -log(sigma)."""
    return -sigma.log()


def _sigma_of_t(t: torch.Tensor) -> torch.Tensor:
    return (-t).exp()


# ----------------------------------------------------------------- one-step solvers
# Each moves x from ``sigma`` to ``sigma_to`` given the denoised estimate at sigma;
# the second-order ones call the denoiser once more.  A step to sigma 0 is an Euler
# step (the derivative at 0 is undefined).


def euler_step(denoise: Denoiser, x, sigma, sigma_to, denoised):
    return x + to_d(x, sigma, denoised) * (sigma_to - sigma)


def heun_step(denoise: Denoiser, x, sigma, sigma_to, denoised):
    """Heun's trapezoid rule (Karras et al. 2022, Algorithm 1)."""
    if sigma_to == 0:
        return euler_step(denoise, x, sigma, sigma_to, denoised)
    d = to_d(x, sigma, denoised)
    x_euler = x + d * (sigma_to - sigma)
    d_to = to_d(x_euler, sigma_to, denoise(x_euler, sigma_to))
    return x + (d + d_to) / 2 * (sigma_to - sigma)


def dpm2_step(denoise: Denoiser, x, sigma, sigma_to, denoised):
    """DPM-Solver-2 in Karras' form: the derivative taken at the log-space midpoint."""
    if sigma_to == 0:
        return euler_step(denoise, x, sigma, sigma_to, denoised)
    sigma_mid = sigma.log().lerp(sigma_to.log(), 0.5).exp()
    x_mid = x + to_d(x, sigma, denoised) * (sigma_mid - sigma)
    return x + to_d(x_mid, sigma_mid, denoise(x_mid, sigma_mid)) * (sigma_to - sigma)


def dpmpp_2s_step(denoise: Denoiser, x, sigma, sigma_to, denoised):
    """DPM-Solver++(2S): a half step in log-sigma, then the full step with the denoised estimate there."""
    if sigma_to == 0:
        return euler_step(denoise, x, sigma, sigma_to, denoised)
    t, t_to = _log_sigma_t(sigma), _log_sigma_t(sigma_to)
    h = t_to - t
    s = t + 0.5 * h
    x_2 = (_sigma_of_t(s) / sigma) * x - torch.expm1(-0.5 * h) * denoised
    return (sigma_to / sigma) * x - torch.expm1(-h) * denoise(x_2, _sigma_of_t(s))


def _deterministic(step, name: str, doc: str):
    @torch.no_grad()
    def sampler(denoise: Denoiser, x, sigmas, *, noise=None, callback=None) -> torch.Tensor:
        for i in range(len(sigmas) - 1):
            denoised = denoise(x, sigmas[i])
            x = step(denoise, x, sigmas[i], sigmas[i + 1], denoised)
            _report(callback, i, x, denoised)
        return x

    sampler.__doc__ = doc
    sampler.__name__ = sampler.__qualname__ = name
    return sampler


def _ancestral(step, label: str, name: str, doc: str):
    @torch.no_grad()
    def sampler(denoise: Denoiser, x, sigmas, *, noise=None, callback=None, eta: float = 1.0) -> torch.Tensor:
        noise = _require_noise(noise, label)
        for i in range(len(sigmas) - 1):
            denoised = denoise(x, sigmas[i])
            sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1], eta)
            x = step(denoise, x, sigmas[i], sigma_down, denoised)
            if sigmas[i + 1] > 0:
                x = x + noise(sigmas[i], sigmas[i + 1]) * sigma_up
            _report(callback, i, x, denoised)
        return x

    sampler.__doc__ = doc
    sampler.__name__ = sampler.__qualname__ = name
    return sampler


sample_euler = _deterministic(euler_step, "sample_euler", "Euler's method on the probability-flow ODE (Karras et al. 2022, Algorithm 1 without churn).")
sample_heun = _deterministic(heun_step, "sample_heun", "Heun's second-order method; Euler for the final step to 0.")
sample_dpm_2 = _deterministic(dpm2_step, "sample_dpm_2", "DPM-Solver-2 (Karras' form), second order.")
sample_euler_ancestral = _ancestral(euler_step, "Euler a", "sample_euler_ancestral", "Euler down to sigma_down, then fresh noise of size sigma_up (ancestral sampling).")
sample_dpm_2_ancestral = _ancestral(dpm2_step, "DPM2 a", "sample_dpm_2_ancestral", "DPM-Solver-2 down to sigma_down, then fresh noise.")
sample_dpmpp_2s_ancestral = _ancestral(dpmpp_2s_step, "DPM++ 2S a", "sample_dpmpp_2s_ancestral", "DPM-Solver++(2S) down to sigma_down, then fresh noise.")


def lms_coefficient(order: int, sigmas: np.ndarray, i: int, j: int) -> float:
    """Integral over [sigma_i, sigma_{i+1}] of the Lagrange basis polynomial that is
    1 at sigma_{i-j} and 0 at the other ``order - 1`` most recent sigmas."""
    nodes = [sigmas[i - k] for k in range(order)]
    poly = np.polynomial.Polynomial([1.0])
    for k, node in enumerate(nodes):
        if k != j:
            poly = poly * np.polynomial.Polynomial([-node, 1.0]) / (nodes[j] - node)
    antiderivative = poly.integ()
    return float(antiderivative(sigmas[i + 1]) - antiderivative(sigmas[i]))


@torch.no_grad()
def sample_lms(denoise: Denoiser, x, sigmas, *, noise=None, callback=None, order: int = 4) -> torch.Tensor:
    """Linear multistep (Adams-Bashforth in sigma) of up to ``order``, using the last derivatives."""
    sigmas_np = sigmas.detach().cpu().double().numpy()
    derivatives: list[torch.Tensor] = []
    for i in range(len(sigmas) - 1):
        denoised = denoise(x, sigmas[i])
        derivatives.append(to_d(x, sigmas[i], denoised))
        derivatives = derivatives[-order:]
        cur_order = len(derivatives)
        coeffs = [lms_coefficient(cur_order, sigmas_np, i, j) for j in range(cur_order)]
        x = x + sum(c * d for c, d in zip(coeffs, reversed(derivatives)))
        _report(callback, i, x, denoised)
    return x


@torch.no_grad()
def sample_dpmpp_2m_sde(denoise: Denoiser, x, sigmas, *, noise=None, callback=None, eta: float = 1.0, solver_type: str = "midpoint") -> torch.Tensor:
    """DPM-Solver++(2M) SDE (Lu et al., "DPM-Solver++", 2022): the second-order
    multistep update in log-sigma, with a share ``eta`` of each step taken as fresh
    noise.  First order for the first step; the final step to sigma 0 returns the
    denoised estimate.

    ``solver_type`` picks the weight of the correction built from the last two
    denoised estimates, for the step's g = (1 + eta) h: "midpoint" uses (1 - e^-g)/2
    (with eta = 0 exactly DPM-Solver++(2M), the paper's Algorithm 2), "heun" uses the
    exact Taylor weight 1 - (1 - e^-g)/g (the DPM-Solver code's "taylor" form;
    A1111's "DPM++ 2M SDE Heun").  Both are second order."""
    if solver_type not in ("midpoint", "heun"):
        raise ValueError(f"solver_type must be 'midpoint' or 'heun', got {solver_type!r}")
    if eta:
        noise = _require_noise(noise, "DPM++ 2M SDE")
    old_denoised = None
    h_last = None
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoise(x, sigma)
        if sigma_next == 0:
            x = denoised
        else:
            h = _log_sigma_t(sigma_next) - _log_sigma_t(sigma)
            eta_h = eta * h
            x = (sigma_next / sigma) * (-eta_h).exp() * x - torch.expm1(-h - eta_h) * denoised
            if old_denoised is not None:
                r = h_last / h
                g = h + eta_h
                if solver_type == "heun":
                    weight = 1 + torch.expm1(-g) / g
                else:
                    weight = -0.5 * torch.expm1(-g)
                x = x + weight * (1 / r) * (denoised - old_denoised)
            if eta:
                x = x + noise(sigma, sigma_next) * sigma_next * (-torch.expm1(-2 * eta_h)) ** 0.5
            h_last = h
        old_denoised = denoised
        _report(callback, i, x, denoised)
    return x


def sample_dpmpp_2m(denoise: Denoiser, x, sigmas, *, noise=None, callback=None) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2): the noise-free case of the above."""
    return sample_dpmpp_2m_sde(denoise, x, sigmas, callback=callback, eta=0.0)


def sample_dpmpp_2m_sde_heun(denoise: Denoiser, x, sigmas, *, noise=None, callback=None, eta: float = 1.0) -> torch.Tensor:
    """DPM-Solver++(2M) SDE with the "heun" correction (Lu et al. 2022), A1111's
    "DPM++ 2M SDE Heun"; see :func:`sample_dpmpp_2m_sde`."""
    return sample_dpmpp_2m_sde(denoise, x, sigmas, noise=noise, callback=callback, eta=eta, solver_type="heun")


@torch.no_grad()
def sample_dpmpp_3m_sde(denoise: Denoiser, x, sigmas, *, noise=None, callback=None, eta: float = 1.0) -> torch.Tensor:
    """DPM-Solver++(3M) SDE (Lu et al., "DPM-Solver++", 2022, third-order multistep),
    in k-diffusion's SDE form: with g = (1 + eta) h for the step's h in log-sigma,

        x <- e^-g x + (1 - e^-g) D + phi2(g) D1 - phi3(g) D2 (+ noise),

    phi2(g) = 1 - (1 - e^-g)/g and phi3(g) = phi2(g)/g - 1/2, where D1 and D2 are the
    first and second divided differences of the last three denoised estimates in
    log-sigma.  The first step is first order, the second second order; the final
    step to sigma 0 returns the denoised estimate.  eta = 0 is the ODE solver."""
    if eta:
        noise = _require_noise(noise, "DPM++ 3M SDE")
    d_1 = d_2 = None  # the previous two denoised estimates
    h_1 = h_2 = None  # and the log-sigma steps that led to them
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoise(x, sigma)
        h = None
        if sigma_next == 0:
            x = denoised
        else:
            h = _log_sigma_t(sigma_next) - _log_sigma_t(sigma)
            g = h * (1 + eta)
            x = (-g).exp() * x - torch.expm1(-g) * denoised
            phi2 = 1 + torch.expm1(-g) / g
            if h_2 is not None:
                r0, r1 = h_1 / h, h_2 / h
                diff_0 = (denoised - d_1) / r0
                diff_1 = (d_1 - d_2) / r1
                first = diff_0 + (diff_0 - diff_1) * r0 / (r0 + r1)
                second = (diff_0 - diff_1) / (r0 + r1)
                x = x + phi2 * first - (phi2 / g - 0.5) * second
            elif h_1 is not None:
                x = x + phi2 * (denoised - d_1) / (h_1 / h)
            if eta:
                x = x + noise(sigma, sigma_next) * sigma_next * (-torch.expm1(-2 * eta * h)) ** 0.5
        d_1, d_2 = denoised, d_1
        h_1, h_2 = h, h_1
        _report(callback, i, x, denoised)
    return x


@torch.no_grad()
def sample_dpmpp_sde(denoise: Denoiser, x, sigmas, *, noise=None, callback=None, eta: float = 1.0, r: float = 0.5) -> torch.Tensor:
    """DPM-Solver++ SDE, single-step second order: an ancestral half step to the
    log-space point ``r`` of the way, then an ancestral full step with the blended
    denoised estimate.  Fresh Gaussian noise is used for each sub-step."""
    noise = _require_noise(noise, "DPM++ SDE")
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoise(x, sigma)
        if sigma_next == 0:
            x = x + to_d(x, sigma, denoised) * (sigma_next - sigma)
        else:
            t, t_next = _log_sigma_t(sigma), _log_sigma_t(sigma_next)
            h = t_next - t
            s = t + h * r
            fac = 1 / (2 * r)
            sd, su = ancestral_step(_sigma_of_t(t), _sigma_of_t(s), eta)
            s_ = _log_sigma_t(sd)
            x_2 = (_sigma_of_t(s_) / _sigma_of_t(t)) * x - torch.expm1(t - s_) * denoised
            x_2 = x_2 + noise(sigma, _sigma_of_t(s)) * su
            denoised_2 = denoise(x_2, _sigma_of_t(s))
            sd, su = ancestral_step(_sigma_of_t(t), _sigma_of_t(t_next), eta)
            t_next_ = _log_sigma_t(sd)
            blended = (1 - fac) * denoised + fac * denoised_2
            x = (_sigma_of_t(t_next_) / _sigma_of_t(t)) * x - torch.expm1(t - t_next_) * blended
            x = x + noise(sigma, sigma_next) * su
        _report(callback, i, x, denoised)
    return x


@torch.no_grad()
def sample_lcm(denoise: Denoiser, x, sigmas, *, noise=None, callback=None) -> torch.Tensor:
    """Latent Consistency Model sampling (Luo et al. 2023): jump to the denoised
    estimate, then re-noise to the next level with fresh noise."""
    noise = _require_noise(noise, "LCM")
    for i in range(len(sigmas) - 1):
        denoised = denoise(x, sigmas[i])
        x = denoised
        if sigmas[i + 1] > 0:
            x = x + noise(sigmas[i], sigmas[i + 1]) * sigmas[i + 1]
        _report(callback, i, x, denoised)
    return x


def sample_ddim(denoise: Denoiser, x, sigmas, *, noise=None, callback=None) -> torch.Tensor:
    """Deterministic DDIM (eta = 0, Song et al. 2021).  In sigma form its update
    x_next = x0 + sigma_next * eps is exactly an Euler step, so DDIM is Euler run on
    DDIM's own timestep grid (the registry pairs it with that grid)."""
    return sample_euler(denoise, x, sigmas, noise=noise, callback=callback)


__all__ = [name for name in dir() if name.startswith("sample_")] + ["to_d", "ancestral_step", "lms_coefficient", "euler_step", "heun_step", "dpm2_step", "dpmpp_2s_step"]
