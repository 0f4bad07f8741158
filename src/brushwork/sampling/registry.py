"""Sampler and schedule names, as users and AUTOMATIC1111 clients write them.

A *sampler choice* is the pair (sampler, schedule).  Users type display names
("DPM++ 2M"), legacy combined names ("DPM++ 2M Karras"), A1111's aliases
("k_dpmpp_2m") or our lower-case keys; all resolve here.  Unknown names raise
:class:`UnknownSamplerError` listing the valid ones: we never silently fall back
(A1111 does; see docs/compatibility.md).
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Callable

import torch

from . import samplers as S
from .dpm_solver import sample_dpm_adaptive, sample_dpm_fast
from .restart import sample_restart
from .schedules import SCHEDULE_ALIASES, SCHEDULE_LABELS, ModelSchedule, ddim_timesteps, exponential, make_sigmas
from .timestep import sample_ddim_cfgpp, sample_plms, sample_unipc


@dataclass(frozen=True)
class SamplerInfo:
    key: str
    label: str  # A1111 display name
    fn: Callable
    aliases: tuple[str, ...] = ()
    default_schedule: str = "uniform"  # what "Automatic" means for this sampler
    discard_penultimate: bool = False
    stochastic: bool = False  # calls noise(sigma, sigma_next); the engine then supplies a source
    fixed_grid: bool = False  # ignores the schedule: runs on DDIM's timestep grid (A1111's timestep samplers)
    model_range: bool = False  # ignores the schedule: own steps over the model's sigma range (DPM fast/adaptive)
    #: model calls per step (per sample and CFG pass).  Exact for all but DPM adaptive,
    #: whose 3 calls are per *attempted* step and whose attempts its error control decides.
    calls_per_step: int = 1
    uses_ensd: bool = False  # A1111 re-seeds its step noise with seed + ENSD
    brownian: bool = False  # A1111 draws its step noise from a Brownian tree over the sigma range


#: In A1111's order (shared/reference/a1111-compat.md e.1); keys are our lower-case names.
SAMPLERS: dict[str, SamplerInfo] = {
    info.key: info
    for info in [
        SamplerInfo("dpmpp_2m", "DPM++ 2M", S.sample_dpmpp_2m, ("k_dpmpp_2m",), "karras"),
        SamplerInfo("dpmpp_sde", "DPM++ SDE", S.sample_dpmpp_sde, ("k_dpmpp_sde",), "karras", stochastic=True, calls_per_step=2, brownian=True),
        SamplerInfo("dpmpp_2m_sde", "DPM++ 2M SDE", S.sample_dpmpp_2m_sde, ("k_dpmpp_2m_sde",), "exponential", stochastic=True, brownian=True),
        SamplerInfo("dpmpp_2m_sde_heun", "DPM++ 2M SDE Heun", S.sample_dpmpp_2m_sde_heun, ("k_dpmpp_2m_sde_heun",), "exponential", stochastic=True, brownian=True),
        SamplerInfo("dpmpp_2s_a", "DPM++ 2S a", S.sample_dpmpp_2s_ancestral, ("k_dpmpp_2s_a",), "karras", stochastic=True, calls_per_step=2, uses_ensd=True),
        SamplerInfo("dpmpp_3m_sde", "DPM++ 3M SDE", S.sample_dpmpp_3m_sde, ("k_dpmpp_3m_sde",), "exponential", discard_penultimate=True, stochastic=True, brownian=True),
        SamplerInfo("euler_a", "Euler a", S.sample_euler_ancestral, ("k_euler_a", "k_euler_ancestral"), stochastic=True, uses_ensd=True),
        SamplerInfo("euler", "Euler", S.sample_euler, ("k_euler",)),
        SamplerInfo("lms", "LMS", S.sample_lms, ("k_lms",)),
        SamplerInfo("heun", "Heun", S.sample_heun, ("k_heun",), calls_per_step=2),
        SamplerInfo("dpm2", "DPM2", S.sample_dpm_2, ("k_dpm_2",), "karras", discard_penultimate=True, calls_per_step=2),
        SamplerInfo("dpm2_a", "DPM2 a", S.sample_dpm_2_ancestral, ("k_dpm_2_a",), "karras", discard_penultimate=True, stochastic=True, calls_per_step=2, uses_ensd=True),
        SamplerInfo("dpm_fast", "DPM fast", sample_dpm_fast, ("k_dpm_fast",), model_range=True, stochastic=True, uses_ensd=True),
        SamplerInfo("dpm_adaptive", "DPM adaptive", sample_dpm_adaptive, ("k_dpm_ad",), model_range=True, stochastic=True, calls_per_step=3, uses_ensd=True),
        SamplerInfo("restart", "Restart", sample_restart, ("restart",), "karras", stochastic=True, calls_per_step=2),
        SamplerInfo("ddim", "DDIM", S.sample_ddim, ("ddim",), fixed_grid=True),
        SamplerInfo("ddim_cfgpp", "DDIM CFG++", sample_ddim_cfgpp, ("ddim_cfgpp",), fixed_grid=True),
        SamplerInfo("plms", "PLMS", sample_plms, ("plms",), fixed_grid=True),
        SamplerInfo("unipc", "UniPC", sample_unipc, ("unipc",), fixed_grid=True),
        SamplerInfo("lcm", "LCM", S.sample_lcm, ("k_lcm",), stochastic=True),
    ]
}


class UnknownSamplerError(ValueError):
    """A sampler or schedule name that we do not know."""


def _norm(name: str) -> str:
    return " ".join(name.strip().lower().replace("_", " ").split())


def _sampler_lookup() -> dict[str, str]:
    table: dict[str, str] = {}
    for info in SAMPLERS.values():
        for spelling in (info.key, info.label, *info.aliases):
            table[_norm(spelling)] = info.key
    return table


def _schedule_lookup() -> dict[str, str]:
    table = {_norm(k): k for k in SCHEDULE_LABELS}
    table.update({_norm(v): k for k, v in SCHEDULE_LABELS.items()})
    table.update({_norm(k): v for k, v in SCHEDULE_ALIASES.items()})
    return table


def _unknown(kind: str, name: str, valid: list[str]) -> UnknownSamplerError:
    close = difflib.get_close_matches(name, valid, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return UnknownSamplerError(f"Unknown {kind} {name!r}.{hint} Valid {kind}s: {', '.join(valid)}.")


def resolve_schedule(name: str | None) -> str:
    """Schedule key for a name or label; None and "" mean automatic."""
    if name is None or not name.strip():
        return "automatic"
    key = _schedule_lookup().get(_norm(name))
    if key is None:
        raise _unknown("schedule", name, list(SCHEDULE_LABELS.values()))
    return key


def resolve_sampler(name: str | None, schedule: str | None = None) -> tuple[SamplerInfo, str]:
    """(sampler, schedule key) for user input.

    A name that ends in a schedule label ("DPM++ 2M Karras") is split, as
    AUTOMATIC1111 does, unless an explicit non-automatic ``schedule`` is given.
    """
    sched = resolve_schedule(schedule)
    lookup = _sampler_lookup()
    if name is None or not name.strip():
        raise UnknownSamplerError(f"No sampler given. Valid samplers: {', '.join(labels())}.")
    key = lookup.get(_norm(name))
    if key is None:
        for label_key, label in sorted(SCHEDULE_LABELS.items(), key=lambda kv: -len(kv[1])):
            for suffix in {label, label_key, *[a for a, v in SCHEDULE_ALIASES.items() if v == label_key]}:
                if _norm(name).endswith(" " + _norm(suffix)):
                    head = _norm(name)[: -len(_norm(suffix)) - 1]
                    if head in lookup:
                        key = lookup[head]
                        if sched == "automatic":
                            sched = label_key
                        break
            if key is not None:
                break
    if key is None:
        raise _unknown("sampler", name, labels())
    return SAMPLERS[key], sched


def labels() -> list[str]:
    return [info.label for info in SAMPLERS.values()]


def effective_schedule(info: SamplerInfo, schedule: str) -> str:
    """The schedule actually used: "automatic" becomes the sampler's preference."""
    return info.default_schedule if schedule == "automatic" else schedule


def sampling_sigmas(info: SamplerInfo, schedule: str, steps: int, model: ModelSchedule) -> torch.Tensor:
    """The sigmas a sampler runs over for ``steps`` steps.

    The timestep samplers get DDIM's grid.  DPM fast / adaptive get the model's
    whole range, log-uniform: they take only its ends and length from it (and the
    engine its levels for progress and prompt editing)."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if info.fixed_grid:
        return ddim_timesteps(steps, model)
    if info.model_range:
        return exponential(steps, model)
    return make_sigmas(effective_schedule(info, schedule), steps, model, discard_penultimate=info.discard_penultimate)


def schedule_label(info: SamplerInfo, schedule: str) -> str:
    """The label written into the infotext's 'Schedule type' (resolved like A1111)."""
    if info.fixed_grid or info.model_range:
        return SCHEDULE_LABELS["automatic"]
    return SCHEDULE_LABELS[effective_schedule(info, schedule)]
