"""Noise schedules: how a model's noise levels are spread over the sampling steps.

Everything here is a pure function of numbers.  A *model schedule*
(:class:`ModelSchedule`) describes the 1000 discrete noise levels a Stable Diffusion
UNet was trained on; a *sampling schedule* is a 1-D float64 tensor of ``steps + 1``
decreasing sigmas ending in 0, which any sampler can consume.

Names and behaviour follow AUTOMATIC1111 v1.10.1 (see ``shared/reference/a1111-compat.md``
section e.2); each function's docstring names its source and where we differ.
The sigma range is the model's (``ModelSchedule.sigma_min`` / ``sigma_max``).
Align Your Steps depends on the model family, which :class:`ModelSchedule` carries.
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
    #: "sd1" | "sd2" | "sdxl": only Align Your Steps looks at it (its tables are per family)
    family: str = "sd1"

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


def scaled_linear_schedule(family: str = "sd1") -> ModelSchedule:
    """The same schedule as noise levels: sigma_t = sqrt((1 - abar_t) / abar_t)."""
    abar = scaled_linear_alphas_cumprod()
    return ModelSchedule(((1 - abar) / abar) ** 0.5, family)


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


def polyexponential(n: int, model: ModelSchedule, rho: float = 1.0) -> torch.Tensor:
    """k-diffusion's polyexponential schedule: log-sigma falls from log sigma_max to
    log sigma_min along ramp**rho, ramp going 1 -> 0.  rho = 1 (A1111's default) is
    the exponential schedule."""
    ramp = torch.linspace(1, 0, n, dtype=torch.float64) ** rho
    lo, hi = math.log(model.sigma_min), math.log(model.sigma_max)
    return _append_zero((lo + ramp * (hi - lo)).exp())


def normal(n: int, model: ModelSchedule) -> torch.Tensor:
    """A1111's "Normal": timesteps evenly spaced between those of sigma_max and
    sigma_min, both included.  With the model's own range this equals Uniform."""
    start = float(model.sigma_to_t(model.sigma_max))
    end = float(model.sigma_to_t(model.sigma_min))
    return _append_zero(model.t_to_sigma(torch.linspace(start, end, n, dtype=torch.float64)))


def kl_optimal(n: int, model: ModelSchedule) -> torch.Tensor:
    """The KL-optimal schedule of Sabour, Fidler & Kreis, "Align Your Steps" (2024),
    sigma_i = tan((1 - i/n) atan(sigma_max) + (i/n) atan(sigma_min)): evenly spaced in
    arctan(sigma).  A1111 v1.10.1 takes i = 0..n and so ends at sigma_min with no 0;
    we keep its first n values and end at 0 like every other schedule, so the last
    step denoises fully instead of stopping at sigma_min."""
    frac = torch.arange(n, dtype=torch.float64) / n
    lo, hi = math.atan(model.sigma_min), math.atan(model.sigma_max)
    return _append_zero(torch.tan(frac * lo + (1 - frac) * hi))


#: The published 10-step Align Your Steps noise levels (Sabour et al. 2024, NVIDIA's
#: "how to" page), 11 values from sigma_max to sigma_min.  SD 2.x has no table of its
#: own; like A1111 (which only tells SDXL apart) it uses the SD 1.5 one.
AYS_SIGMAS = {
    "sd1": (14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029),
    "sdxl": (14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029),
}


def loglinear_resample(levels: torch.Tensor, n: int) -> torch.Tensor:
    """``n`` values spread like ``levels`` (decreasing, positive): log-sigma linearly
    interpolated over a uniform 0..1 position axis."""
    ys = levels.log().flip(0)  # increasing, as interpolation wants
    pos = torch.linspace(0, 1, n, dtype=torch.float64) * (len(levels) - 1)
    low = pos.floor().long().clamp(max=len(levels) - 2)
    w = pos - low
    return ((1 - w) * ys[low] + w * ys[low + 1]).exp().flip(0)


def align_your_steps(n: int, model: ModelSchedule) -> torch.Tensor:
    """Align Your Steps (Sabour, Fidler & Kreis 2024): the published table for the
    model's family, log-linearly resampled to ``n`` values, then 0.

    As in A1111 v1.10.1 the table is used as it stands only when ``n`` equals its
    length (11 steps); at 10 steps its 11 values are resampled to 10.  (ComfyUI
    instead uses the table itself at 10 steps with its last value replaced by 0.)"""
    table = torch.tensor(AYS_SIGMAS["sdxl" if model.family == "sdxl" else "sd1"], dtype=torch.float64)
    levels = table if n == len(table) else loglinear_resample(table, n)
    return _append_zero(levels)


def beta(n: int, model: ModelSchedule, alpha: float = 0.6, beta: float = 0.6) -> torch.Tensor:
    """A1111 v1.10.1's "Beta" schedule, after Lee et al., "Beta Sampling is All You
    Need" (2024): the Beta(alpha, beta) quantiles of 1 -> 0 in n even steps, mapped
    linearly onto [sigma_min, sigma_max].  (A1111's dev branch and ComfyUI place the
    quantiles on the timestep axis instead, as the paper does; results differ.)"""
    from scipy import stats  # heavy: only when this schedule is used

    q = torch.from_numpy(stats.beta.ppf(1 - torch.linspace(0, 1, n, dtype=torch.float64).numpy(), alpha, beta))
    return _append_zero(model.sigma_min + q * (model.sigma_max - model.sigma_min))


def ddim_timesteps(n: int, model: ModelSchedule) -> torch.Tensor:
    """DDIM's own grid (Song et al. 2021; AUTOMATIC1111's 'uniform' discretisation):
    every T//n-th timestep, offset by one, from the top, then 0.  Also the "DDIM"
    schedule.  When T is not a multiple of n, A1111's "DDIM" schedule keeps every
    stride point and so runs more than n steps; we keep exactly n (the lowest ones)."""
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
    "polyexponential": polyexponential,
    "sgm_uniform": sgm_uniform,
    "kl_optimal": kl_optimal,
    "align_your_steps": align_your_steps,
    "simple": simple,
    "normal": normal,
    "ddim": ddim_timesteps,
    "beta": beta,
}

#: name -> label shown in infotexts and menus, in menu order.  "automatic" is resolved
#: by the sampler registry to the sampler's preferred schedule.
SCHEDULE_LABELS = {
    "automatic": "Automatic",
    "uniform": "Uniform",
    "karras": "Karras",
    "exponential": "Exponential",
    "polyexponential": "Polyexponential",
    "sgm_uniform": "SGM Uniform",
    "kl_optimal": "KL Optimal",
    "align_your_steps": "Align Your Steps",
    "simple": "Simple",
    "normal": "Normal",
    "ddim": "DDIM",
    "beta": "Beta",
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
