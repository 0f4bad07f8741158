"""Noise schedules: how a model's noise levels are spread over the sampling steps.

Everything here is a pure function of numbers.  A *model schedule*
(:class:`ModelSchedule`) describes the 1000 discrete noise levels a Stable Diffusion
UNet was trained on; a *sampling schedule* is a 1-D float64 tensor of ``steps + 1``
decreasing sigmas ending in 0, which any sampler can consume.

Names and behaviour follow AUTOMATIC1111 (see ``shared/reference/a1111-compat.md``
section e.2): Uniform is the model's own discretisation, Karras is Karras et al.
2022 (eq. 5, rho = 7), Exponential is uniform in log-sigma, SGM Uniform is uniform
in timestep between the model's extreme sigmas, Simple takes evenly strided entries
of the model's sigma table (ComfyUI's "simple").
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ModelSchedule:
    """The discrete noise levels of a DDPM-trained model.

    ``sigmas[t]`` is the noise level of training timestep ``t`` (ascending).  The
    maps between sigma and (fractional) timestep interpolate linearly in
    log-sigma, which is how k-diffusion and AUTOMATIC1111 call a UNet at a noise
    level that falls between two training timesteps.
    """

    sigmas: torch.Tensor  # float64, shape (T,)

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    @property
    def log_sigmas(self) -> torch.Tensor:
        return self.sigmas.log()

    def sigma_to_t(self, sigma: torch.Tensor | float) -> torch.Tensor:
        """Fractional timestep of a noise level (clamped to the trained range)."""
        log_sigma = torch.as_tensor(sigma, dtype=torch.float64).log()
        log_sigmas = self.log_sigmas
        dists = log_sigma.reshape(-1, 1) - log_sigmas.reshape(1, -1)
        low = dists.ge(0).cumsum(dim=1).argmax(dim=1).clamp(max=len(log_sigmas) - 2)
        high = low + 1
        lo, hi = log_sigmas[low], log_sigmas[high]
        w = ((lo - log_sigma.reshape(-1)) / (lo - hi)).clamp(0, 1)
        t = (1 - w) * low + w * high
        return t.reshape(torch.as_tensor(sigma).shape)

    def t_to_sigma(self, t: torch.Tensor | float) -> torch.Tensor:
        """Noise level of a fractional timestep."""
        t = torch.as_tensor(t, dtype=torch.float64)
        low = t.floor().long().clamp(0, len(self.sigmas) - 1)
        high = t.ceil().long().clamp(0, len(self.sigmas) - 1)
        w = t - low
        log_sigma = (1 - w) * self.log_sigmas[low] + w * self.log_sigmas[high]
        return log_sigma.exp()


def scaled_linear_alphas_cumprod(beta_start: float = 0.00085, beta_end: float = 0.012, timesteps: int = 1000) -> torch.Tensor:
    """abar_t of the schedule every SD 1.x, 2.x and SDXL checkpoint was trained with
    (betas linear in sqrt space), float64."""
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, timesteps, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


def scaled_linear_schedule() -> ModelSchedule:
    """The same schedule as noise levels: sigma_t = sqrt((1 - abar_t) / abar_t)."""
    abar = scaled_linear_alphas_cumprod()
    return ModelSchedule(((1 - abar) / abar) ** 0.5)


def _append_zero(sigmas: torch.Tensor) -> torch.Tensor:
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def uniform(n: int, model: ModelSchedule) -> torch.Tensor:
    """The model's own discretisation: timesteps evenly spaced from the last to 0."""
    t = torch.linspace(len(model.sigmas) - 1, 0, n, dtype=torch.float64)
    return _append_zero(model.t_to_sigma(t))


def karras(n: int, model: ModelSchedule, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. (2022): evenly spaced in sigma**(1/rho)."""
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    lo, hi = model.sigma_min ** (1 / rho), model.sigma_max ** (1 / rho)
    return _append_zero((hi + ramp * (lo - hi)) ** rho)


def exponential(n: int, model: ModelSchedule) -> torch.Tensor:
    """Evenly spaced in log-sigma."""
    return _append_zero(torch.linspace(math.log(model.sigma_max), math.log(model.sigma_min), n, dtype=torch.float64).exp())


def sgm_uniform(n: int, model: ModelSchedule) -> torch.Tensor:
    """Evenly spaced timesteps between the extreme sigmas, the last one dropped (SGM's 'trailing' spacing)."""
    start = model.sigma_to_t(model.sigma_max)
    end = model.sigma_to_t(model.sigma_min)
    t = torch.linspace(float(start), float(end), n + 1, dtype=torch.float64)[:-1]
    return _append_zero(model.t_to_sigma(t))


def simple(n: int, model: ModelSchedule) -> torch.Tensor:
    """Evenly strided entries of the model's sigma table, from the top."""
    stride = len(model.sigmas) / n
    picks = [model.sigmas[-(1 + int(i * stride))] for i in range(n)]
    return _append_zero(torch.stack(picks))


def ddim_timesteps(n: int, model: ModelSchedule) -> torch.Tensor:
    """DDIM's own grid (AUTOMATIC1111's 'uniform' discretisation): every T//n-th timestep, offset by one."""
    total = len(model.sigmas)
    if n > total:
        raise ValueError(f"DDIM cannot take more than {total} steps; got {n}.")
    ts = torch.arange(0, total, total // n)[:n] + 1
    ts = ts.clamp(max=total - 1).flip(0)
    return _append_zero(model.sigmas[ts])


SCHEDULES = {
    "uniform": uniform,
    "karras": karras,
    "exponential": exponential,
    "sgm_uniform": sgm_uniform,
    "simple": simple,
}

#: name -> label shown in infotexts and menus, in menu order.  "automatic" is resolved
#: by the sampler registry to the sampler's preferred schedule.
SCHEDULE_LABELS = {
    "automatic": "Automatic",
    "uniform": "Uniform",
    "karras": "Karras",
    "exponential": "Exponential",
    "sgm_uniform": "SGM Uniform",
    "simple": "Simple",
}

#: other spellings users and clients send (A1111 accepts "SGMUniform")
SCHEDULE_ALIASES = {"sgmuniform": "sgm_uniform", "sgm uniform": "sgm_uniform"}


def make_sigmas(schedule: str, steps: int, model: ModelSchedule, *, discard_penultimate: bool = False) -> torch.Tensor:
    """Sampling sigmas for ``steps`` steps: ``steps + 1`` values ending in 0.

    ``discard_penultimate`` computes one step more and drops the second-to-last
    sigma, as AUTOMATIC1111 does for DPM2 (its last step would otherwise be tiny).
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    fn = SCHEDULES[schedule]
    if discard_penultimate:
        sigmas = fn(steps + 1, model)
        return torch.cat([sigmas[:-2], sigmas[-1:]])
    return fn(steps, model)
