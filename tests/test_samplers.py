"""Samplers against the closed-form ideal denoiser for Gaussian data (no weights).

If every element of x0 is N(0, s²) and x = x0 + sigma*eps, the ideal denoiser is
D(x, sigma) = x * s² / (s² + sigma²), and the probability-flow ODE carries x_T to
exactly x_T * s / sqrt(s² + sigma_T²).
"""
import math

import pytest
import torch

from brushwork.sampling import registry, schedules
from brushwork.sampling import samplers as S

S_DATA = 0.5
MODEL = schedules.scaled_linear_schedule()


def ideal(x, sigma):
    return x * S_DATA**2 / (S_DATA**2 + sigma**2)


def start(n=4096, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, generator=g, dtype=torch.float64)


def error(fn, steps):
    sigmas = schedules.karras(steps, MODEL)
    x_t = start() * sigmas[0]
    out = fn(ideal, x_t, sigmas)
    exact = x_t * S_DATA / math.sqrt(S_DATA**2 + float(sigmas[0]) ** 2)
    return float(((out - exact).abs() / exact.abs().clamp_min(1e-12)).max())


def test_reference_values_of_the_recipe():
    # published in shared/reference/code-style.md for this exact setting
    assert error(S.sample_euler, 10) == pytest.approx(1.71e-1, rel=0.02)
    assert error(S.sample_heun, 20) == pytest.approx(1.29e-2, rel=0.02)
    assert error(S.sample_dpmpp_2m, 40) == pytest.approx(1.61e-3, rel=0.02)


def test_euler_is_first_order():
    errs = [error(S.sample_euler, n) for n in (10, 20, 40, 80)]
    for a, b in zip(errs, errs[1:]):
        assert 1.8 <= a / b <= 2.3


@pytest.mark.parametrize("fn", [S.sample_heun, S.sample_dpmpp_2m, S.sample_dpm_2, S.sample_lms])
def test_second_order_samplers_converge_faster(fn):
    errs = [error(fn, n) for n in (10, 20, 40)]
    assert errs[0] / errs[1] >= 3.5
    assert errs[1] / errs[2] >= 3.5
    assert errs[2] < error(S.sample_euler, 40) / 10


def test_ddim_equals_euler_on_the_same_grid():
    sigmas = schedules.ddim_timesteps(10, MODEL)
    x = start() * sigmas[0]
    assert torch.equal(S.sample_ddim(ideal, x, sigmas), S.sample_euler(ideal, x, sigmas))


def noise_from(seed):
    g = torch.Generator().manual_seed(seed)
    return lambda sigma, sigma_next: torch.randn(65536, generator=g, dtype=torch.float64)


def final_std(fn, steps):
    sigmas = schedules.karras(steps, MODEL)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(65536, generator=g, dtype=torch.float64) * math.sqrt(S_DATA**2 + float(sigmas[0]) ** 2)
    return float(fn(ideal, x, sigmas, noise=noise_from(2)).std())


@pytest.mark.parametrize("fn", [S.sample_euler_ancestral, S.sample_dpmpp_2m_sde, S.sample_dpmpp_sde, S.sample_dpm_2_ancestral, S.sample_dpmpp_2s_ancestral])
def test_stochastic_samplers_reach_the_data_distribution(fn):
    """Started from N(0, s² + sigma_max²), the final spread approaches s as steps grow."""
    coarse, fine = final_std(fn, 30), final_std(fn, 300)
    assert abs(fine - S_DATA) < 0.01
    assert abs(fine - S_DATA) < abs(coarse - S_DATA)


def test_lcm_step_is_denoise_then_renoise():
    sigmas = torch.tensor([2.0, 1.0, 0.0], dtype=torch.float64)
    z = torch.full((4,), 0.5, dtype=torch.float64)
    x = torch.ones(4, dtype=torch.float64)
    out = S.sample_lcm(lambda xx, s: xx * 0.1, x, sigmas, noise=lambda s, s_next: z)
    # step 1: 0.1 * 1 + 1.0 * 0.5 = 0.6; step 2 (to sigma 0): 0.1 * 0.6, no noise
    assert torch.allclose(out, torch.full((4,), 0.06, dtype=torch.float64))


def test_stochastic_sampler_without_noise_source_says_so():
    with pytest.raises(ValueError, match="needs a noise source"):
        S.sample_euler_ancestral(ideal, start(), schedules.karras(3, MODEL))


def test_samplers_do_not_modify_their_input_and_report_each_step():
    sigmas = schedules.karras(5, MODEL)
    x = start() * sigmas[0]
    before = x.clone()
    seen = []
    S.sample_dpmpp_2m(ideal, x, sigmas, callback=lambda i, xx, d: seen.append(i))
    assert torch.equal(x, before)
    assert seen == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("name", ["uniform", "karras", "exponential", "sgm_uniform", "simple"])
def test_schedules_are_decreasing_and_end_in_zero(name):
    sig = schedules.make_sigmas(name, 12, MODEL)
    assert sig.shape == (13,)
    assert sig[-1] == 0
    assert torch.all(sig[:-2] > sig[1:-1])
    assert float(sig[0]) == pytest.approx(MODEL.sigma_max, rel=1e-6 if name != "simple" else 1e-6)


def test_schedule_endpoints_and_model_sigmas():
    assert MODEL.sigma_max == pytest.approx(14.6146, abs=1e-3)
    assert MODEL.sigma_min == pytest.approx(0.0292, abs=1e-3)
    k = schedules.karras(10, MODEL)
    assert float(k[-2]) == pytest.approx(MODEL.sigma_min)
    t = MODEL.sigma_to_t(torch.tensor([MODEL.sigma_max, MODEL.sigma_min, float(MODEL.sigmas[500])]))
    assert torch.allclose(t, torch.tensor([999.0, 0.0, 500.0], dtype=torch.float64), atol=1e-6)


def test_discard_penultimate_for_dpm2():
    info, sched = registry.resolve_sampler("DPM2")
    sig = registry.sampling_sigmas(info, sched, 10, MODEL)
    full = schedules.karras(11, MODEL)
    assert sig.shape == (11,)
    assert torch.equal(sig, torch.cat([full[:-2], full[-1:]]))


@pytest.mark.parametrize(
    "text, sampler, schedule",
    [
        ("DPM++ 2M", "DPM++ 2M", "automatic"),
        ("DPM++ 2M Karras", "DPM++ 2M", "karras"),
        ("DPM++ 2M SDE Exponential", "DPM++ 2M SDE", "exponential"),
        ("Euler a", "Euler a", "automatic"),
        ("k_euler_a", "Euler a", "automatic"),
        ("euler_a", "Euler a", "automatic"),
        ("dpm++ 2m sgm uniform", "DPM++ 2M", "sgm_uniform"),
        ("LCM", "LCM", "automatic"),
    ],
)
def test_sampler_names(text, sampler, schedule):
    info, sched = registry.resolve_sampler(text)
    assert (info.label, sched) == (sampler, schedule)


def test_explicit_schedule_beats_the_name_suffix_only_when_given():
    assert registry.resolve_sampler("DPM++ 2M Karras", "Exponential")[1] == "exponential"
    assert registry.resolve_sampler("Euler", "SGMUniform")[1] == "sgm_uniform"


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(registry.UnknownSamplerError) as e:
        registry.resolve_sampler("DPM++ 2N")
    msg = str(e.value)
    assert "Did you mean 'DPM++ 2M'" in msg and "Euler a" in msg and "LCM" in msg
    with pytest.raises(registry.UnknownSamplerError, match="Valid schedules: Automatic, Uniform, Karras"):
        registry.resolve_sampler("Euler", "Karas")


def test_required_samplers_and_schedules_exist():
    assert {"Euler", "Euler a", "Heun", "LMS", "DPM2", "DPM++ 2M", "DPM++ 2M SDE", "DPM++ SDE", "DDIM", "LCM"} <= set(registry.labels())
    assert set(schedules.SCHEDULE_LABELS.values()) >= {"Automatic", "Uniform", "Karras", "Exponential", "SGM Uniform", "Simple"}


def test_infotext_schedule_label_resolves_automatic_like_a1111():
    info, sched = registry.resolve_sampler("DPM++ 2M")
    assert registry.schedule_label(info, sched) == "Karras"
    info, sched = registry.resolve_sampler("Euler")
    assert registry.schedule_label(info, sched) == "Uniform"
