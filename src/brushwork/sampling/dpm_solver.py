"""DPM-Solver with its own step sizes: A1111's "DPM fast" and "DPM adaptive".

Both follow Lu et al., "DPM-Solver: A Fast ODE Solver for Diffusion Probabilistic
Model Sampling in Around 10 Steps" (NeurIPS 2022), in its noise-prediction form
with time variable t = -log(sigma): eps = (x - D(x, sigma)) / sigma, and the
singlestep updates of orders 1-3 (the paper's DPM-Solver-1/2/3, eq. 3.7 and
Algorithms 1-2, with k-diffusion's choice of intermediate points r1 = 1/2 for
order 2 and r1 = 1/3, r2 = 2/3 for order 3).

Unlike the other samplers they do not step along the given sigmas:

* they integrate from ``sigmas[0]`` down to the smallest positive sigma of the
  grid (the registry gives them the model's full range, as A1111 does for txt2img,
  whatever schedule was asked for) and, like k-diffusion, **stop at that sigma_min**
  rather than at 0; the result keeps noise of that level (about 0.03 for Stable
  Diffusion), which is what A1111 decodes too;
* "DPM fast" spends exactly ``len(sigmas) - 1`` model evaluations on steps of
  equal size in t (mostly third order), and reports one callback per evaluation;
* "DPM adaptive" chooses its own steps with an error estimate (embedded pairs of
  orders 2/3 and a PI controller, the paper's Algorithm 4 / appendix), so its cost
  is not set by the step count.  It still reports exactly ``len(sigmas) - 1``
  callbacks, spread by how far log-sigma has come, so progress stays honest; the
  number of model calls is 3 per attempted step (accepted or rejected).

With ``eta > 0`` each step ends ancestrally (a deterministic part to a lower sigma,
then fresh noise), as in k-diffusion; A1111 runs both with eta = 1 by default.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import torch

from .samplers import Denoiser, NoiseSource, StepCallback, _report, _require_noise, ancestral_step


def _sigma(t: torch.Tensor) -> torch.Tensor:
    return (-t).exp()


def _time(sigma: torch.Tensor) -> torch.Tensor:
    return -torch.as_tensor(sigma, dtype=torch.float64).log()


class _Eps:
    """The noise prediction at (x, t), with the denoised estimate kept for callbacks."""

    def __init__(self, denoise: Denoiser):
        self.denoise = denoise
        self.evaluations = 0

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        sigma = _sigma(t)
        denoised = self.denoise(x, sigma)
        self.evaluations += 1
        return (x - denoised) / sigma, denoised


def dpm_solver_1_step(eps_fn: _Eps, x, t, t_next, eps):
    """DPM-Solver-1 (equivalent to DDIM): x - sigma(t_next) (e^h - 1) eps."""
    h = t_next - t
    return x - _sigma(t_next) * torch.expm1(h) * eps


def dpm_solver_2_step(eps_fn: _Eps, x, t, t_next, eps, r1: float = 0.5):
    """DPM-Solver-2: one intermediate evaluation at t + r1 h."""
    h = t_next - t
    s1 = t + r1 * h
    u1 = x - _sigma(s1) * torch.expm1(r1 * h) * eps
    eps_r1, _ = eps_fn(u1, s1)
    return x - _sigma(t_next) * torch.expm1(h) * eps - _sigma(t_next) / (2 * r1) * torch.expm1(h) * (eps_r1 - eps)


def dpm_solver_3_step(eps_fn: _Eps, x, t, t_next, eps, r1: float = 1 / 3, r2: float = 2 / 3, eps_r1=None):
    """DPM-Solver-3: intermediate evaluations at t + r1 h and t + r2 h.  ``eps_r1`` may
    be passed in when already known (the adaptive solver's order-2 partner shares it)."""
    h = t_next - t
    s1, s2 = t + r1 * h, t + r2 * h
    if eps_r1 is None:
        u1 = x - _sigma(s1) * torch.expm1(r1 * h) * eps
        eps_r1, _ = eps_fn(u1, s1)
    u2 = x - _sigma(s2) * torch.expm1(r2 * h) * eps - _sigma(s2) * (r2 / r1) * (torch.expm1(r2 * h) / (r2 * h) - 1) * (eps_r1 - eps)
    eps_r2, _ = eps_fn(u2, s2)
    return x - _sigma(t_next) * torch.expm1(h) * eps - _sigma(t_next) / r2 * (torch.expm1(h) / h - 1) * (eps_r2 - eps)


def _ancestral_target(t, t_next, t_end, eta: float):
    """Where the deterministic part of a step ends and how much noise follows: the
    ancestral split of sigma(t) -> sigma(t_next), never going below sigma_min."""
    if not eta:
        return t_next, torch.zeros((), dtype=torch.float64)
    sigma_down, _ = ancestral_step(_sigma(t), _sigma(t_next), eta)
    t_down = torch.minimum(t_end, _time(sigma_down))
    return t_down, (_sigma(t_next) ** 2 - _sigma(t_down) ** 2).clamp_min(0) ** 0.5


def _sigma_range(sigmas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    positive = sigmas[sigmas > 0]
    return positive.max().to(torch.float64), positive.min().to(torch.float64)


def _single_evaluation(denoise: Denoiser, x, sigma, callback) -> torch.Tensor:
    """A run with no sigma range (one step): its one evaluation is the denoised estimate."""
    denoised = denoise(x, sigma)
    _report(callback, 0, denoised, denoised)
    return denoised


def fast_orders(evaluations: int) -> list[int]:
    """The solver orders DPM fast uses for a budget of model evaluations: as many
    third-order steps as fit, the remainder as one lower-order step (two when the
    budget is a multiple of 3), all steps of equal size in t."""
    m = evaluations // 3 + 1
    if evaluations % 3 == 0:
        return [3] * (m - 2) + [2, 1]
    return [3] * (m - 1) + [evaluations % 3]


@torch.no_grad()
def sample_dpm_fast(denoise: Denoiser, x, sigmas, *, noise: Optional[NoiseSource] = None, callback: Optional[StepCallback] = None, eta: float = 1.0) -> torch.Tensor:
    """DPM-Solver-fast (Lu et al. 2022, section 3.4): ``len(sigmas) - 1`` model
    evaluations spent on equal steps in log-sigma from sigmas[0] to the smallest
    positive sigma, mostly with DPM-Solver-3.  Returns the sample at that sigma_min
    (see the module docstring); with a single step there is no range, and the one
    evaluation is the denoised estimate."""
    evaluations = len(sigmas) - 1
    sigma_max, sigma_min = _sigma_range(sigmas)
    if sigma_min == sigma_max:
        return _single_evaluation(denoise, x, sigma_max, callback)
    if eta:
        noise = _require_noise(noise, "DPM fast")
    eps_fn = _Eps(denoise)
    t_start, t_end = _time(sigma_max), _time(sigma_min)
    orders = fast_orders(evaluations)
    ts = torch.linspace(float(t_start), float(t_end), len(orders) + 1, dtype=torch.float64)
    done = 0
    for i, order in enumerate(orders):
        t, t_next = ts[i], ts[i + 1]
        t_down, sigma_up = _ancestral_target(t, t_next, t_end, eta)
        eps, denoised = eps_fn(x, t)
        step = (dpm_solver_1_step, dpm_solver_2_step, dpm_solver_3_step)[order - 1]
        x = step(eps_fn, x, t, t_down, eps)
        if sigma_up > 0:
            x = x + noise(_sigma(t), _sigma(t_next)) * sigma_up
        for _ in range(order):  # one report per model evaluation this step used
            _report(callback, done, x, denoised)
            done += 1
    return x


@dataclass
class PIStepController:
    """Step-size control for the adaptive solver (Lu et al. 2022, appendix; the
    PID form of Söderlind 2003 with k-diffusion's defaults: integral gain only).

    Each proposal scales h by a factor from the last (inverse) errors, softened by
    1 + atan(f - 1); a step is accepted when that factor is at least
    ``accept_safety``."""

    h: float
    pcoeff: float
    icoeff: float
    dcoeff: float
    order: float
    accept_safety: float = 0.81
    eps: float = 1e-8
    inv_errors: list = field(default_factory=list)

    def propose(self, error: float) -> bool:
        b1 = (self.pcoeff + self.icoeff + self.dcoeff) / self.order
        b2 = -(self.pcoeff + 2 * self.dcoeff) / self.order
        b3 = self.dcoeff / self.order
        inv = 1 / (float(error) + self.eps)
        if not self.inv_errors:
            self.inv_errors = [inv, inv, inv]
        self.inv_errors[0] = inv
        e0, e1, e2 = self.inv_errors
        factor = 1 + math.atan(e0**b1 * e1**b2 * e2**b3 - 1)
        accept = factor >= self.accept_safety
        if accept:
            self.inv_errors = [e0, e0, e1]
        self.h *= factor
        return accept


@torch.no_grad()
def sample_dpm_adaptive(
    denoise: Denoiser,
    x,
    sigmas,
    *,
    noise: Optional[NoiseSource] = None,
    callback: Optional[StepCallback] = None,
    eta: float = 1.0,
    order: int = 3,
    rtol: float = 0.05,
    atol: float = 0.0078,
    h_init: float = 0.05,
    pcoeff: float = 0.0,
    icoeff: float = 1.0,
    dcoeff: float = 0.0,
    accept_safety: float = 0.81,
) -> torch.Tensor:
    """Adaptive DPM-Solver-12 / -23 (Lu et al. 2022, section 3.4 and appendix): each
    attempted step computes an order-``order`` and an order-``order - 1`` solution
    from shared evaluations; their scaled difference (tolerances ``rtol`` relative,
    ``atol`` absolute, RMS over the whole batch) drives :class:`PIStepController`.

    Integrates from sigmas[0] to the smallest positive sigma and returns the sample
    there; ``len(sigmas) - 1`` callbacks are reported as log-sigma progresses (see
    the module docstring).  The model is called ``order`` times per attempt."""
    if order not in (2, 3):
        raise ValueError(f"order must be 2 or 3, got {order}")
    steps = len(sigmas) - 1
    sigma_max, sigma_min = _sigma_range(sigmas)
    if sigma_min == sigma_max:
        return _single_evaluation(denoise, x, sigma_max, callback)
    if eta:
        noise = _require_noise(noise, "DPM adaptive")
    eps_fn = _Eps(denoise)
    t_start, t_end = _time(sigma_max), _time(sigma_min)
    controller = PIStepController(abs(h_init), pcoeff, icoeff, dcoeff, 1.5 if eta else order, accept_safety)
    s = t_start
    x_prev = x
    reported = 0
    eps = denoised = None
    while s < t_end - 1e-5:
        t = torch.minimum(t_end, s + controller.h)
        t_down, sigma_up = _ancestral_target(s, t, t_end, eta)
        if eps is None:  # a rejected attempt retries from the same point: reuse it
            eps, denoised = eps_fn(x, s)
        if order == 2:
            x_low = dpm_solver_1_step(eps_fn, x, s, t_down, eps)
            x_high = dpm_solver_2_step(eps_fn, x, s, t_down, eps)
        else:
            h = t_down - s
            u1 = x - _sigma(s + h / 3) * torch.expm1(h / 3) * eps
            eps_r1, _ = eps_fn(u1, s + h / 3)
            x_low = x - _sigma(t_down) * torch.expm1(h) * eps - 1.5 * _sigma(t_down) * torch.expm1(h) * (eps_r1 - eps)
            x_high = dpm_solver_3_step(eps_fn, x, s, t_down, eps, eps_r1=eps_r1)
        scale = torch.maximum(torch.as_tensor(atol, dtype=x.dtype), rtol * torch.maximum(x_low.abs(), x_prev.abs()))
        error = torch.linalg.norm((x_low - x_high) / scale) / x.numel() ** 0.5
        if controller.propose(error):
            x_prev = x_low
            x = x_high
            if sigma_up > 0:
                x = x + noise(_sigma(s), _sigma(t)) * sigma_up
            s = t
            eps = None
            done = float((s - t_start) / (t_end - t_start))
            while reported < steps and (reported + 1) <= done * steps + 1e-9:
                _report(callback, reported, x, denoised)
                reported += 1
    while reported < steps:  # the last bit of rounding
        _report(callback, reported, x, denoised)
        reported += 1
    return x


__all__ = ["sample_dpm_fast", "sample_dpm_adaptive", "fast_orders", "PIStepController", "dpm_solver_1_step", "dpm_solver_2_step", "dpm_solver_3_step"]
