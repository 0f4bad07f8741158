"""AUTOMATIC1111's remaining samplers and schedules, checked against closed forms.

The analytic model is the one of test_samplers.py: every latent element is
x0 ~ N(0, s²), so the ideal denoiser is D(x, sigma) = x s² / (s² + sigma²) and the
probability-flow ODE carries x from sigma_a to x * sqrt(s² + sigma_b²) / sqrt(s² + sigma_a²).

Convergence orders are measured on the ODE part of the path: either on grids that
end at a positive sigma (compared with the exact solution there), or on grids
ending in 0 whose last step is "return the denoised estimate", compared with that
same final rule applied to the exact state (so the fixed error of that last step,
about sigma_min²/2s², does not hide the solver's own order).
"""
import math

import pytest
import torch

from brushwork.sampling import registry, schedules
from brushwork.sampling import samplers as S
from brushwork.sampling.denoiser import make_denoiser, step_locator
from brushwork.sampling.dpm_solver import fast_orders, sample_dpm_adaptive, sample_dpm_fast
from brushwork.sampling.restart import restart_plan, sample_restart
from brushwork.sampling.timestep import CFGPP_SCALE_DIVISOR, sample_ddim_cfgpp, sample_plms, sample_unipc

S_DATA = 0.5
MODEL = schedules.scaled_linear_schedule()
X = torch.tensor([1.0, -0.5, 2.0], dtype=torch.float64)  # the samplers are linear here: 3 values suffice


def ideal(x, sigma):
    return x * S_DATA**2 / (S_DATA**2 + sigma**2)


def flow(x, sigma_from, sigma_to):
    """The exact probability-flow ODE solution."""
    return x * math.sqrt(S_DATA**2 + float(sigma_to) ** 2) / math.sqrt(S_DATA**2 + float(sigma_from) ** 2)


def log_grid(n, hi=MODEL.sigma_max, lo=MODEL.sigma_min):
    """n steps evenly spaced in log-sigma from hi to lo (no final 0)."""
    return torch.linspace(math.log(hi), math.log(lo), n + 1, dtype=torch.float64).exp()


def error_to_positive(fn, sigmas):
    x = X * sigmas[0]
    ref = flow(x, sigmas[0], sigmas[-1])
    return float(((fn(ideal, x, sigmas) - ref) / ref).abs().max())


def error_to_zero(fn, sigmas):
    x = X * sigmas[0]
    ref = ideal(flow(x, sigmas[0], sigmas[-2]), sigmas[-2])
    return float(((fn(ideal, x, sigmas) - ref) / ref).abs().max())


def observed_order(errors, ns):
    return [math.log(errors[i] / errors[i + 1]) / math.log(ns[i + 1] / ns[i]) for i in range(len(ns) - 1)]


def never(sigma, sigma_next):
    raise AssertionError("a deterministic run drew noise")


# ------------------------------------------------------------ deterministic orders

ORDER_CASES = [
    # (name, sampler, error function, grid, step counts, expected order)
    ("DPM++ 2M SDE Heun, eta 0", lambda d, x, s: S.sample_dpmpp_2m_sde_heun(d, x, s, eta=0.0, noise=never), error_to_zero, lambda n: schedules.exponential(n, MODEL), (40, 80), 2.0),
    # The published DPM-Solver++(3M) update (k-diffusion, DPM-Solver, diffusers) weights
    # its second divided difference by -phi3(h) ~ h/6 where the Taylor term needs h/3, so
    # it converges at second order (with a smaller constant than 2M, checked below).
    ("DPM++ 3M SDE, eta 0", lambda d, x, s: S.sample_dpmpp_3m_sde(d, x, s, eta=0.0, noise=never), error_to_zero, lambda n: schedules.exponential(n, MODEL), (80, 160), 2.0),
    ("PLMS", sample_plms, error_to_positive, log_grid, (40, 80), 2.0),
    # UniPC-p with the UniC corrector is of order p + 1 (Zhao et al. 2023, Theorem 3.3)
    ("UniPC order 2 (bh1)", lambda d, x, s: sample_unipc(d, x, s, order=2, lower_order_final=False), error_to_positive, log_grid, (40, 80), 3.0),
    ("UniPC order 3 (bh1)", lambda d, x, s: sample_unipc(d, x, s, order=3, lower_order_final=False), error_to_positive, log_grid, (80, 160), 4.0),
    ("UniPC order 3 (bh2)", lambda d, x, s: sample_unipc(d, x, s, order=3, variant="bh2", lower_order_final=False), error_to_positive, log_grid, (80, 160), 4.0),
]


@pytest.mark.parametrize("name, fn, err, grid, ns, order", ORDER_CASES, ids=[c[0] for c in ORDER_CASES])
def test_deterministic_samplers_converge_at_their_order(name, fn, err, grid, ns, order):
    errors = [err(fn, grid(n)) for n in ns]
    (measured,) = observed_order(errors, ns)
    assert abs(measured - order) < 0.3, (errors, measured)


def test_dpm_fast_is_third_order_in_its_evaluation_budget():
    """Budgets of 3m - 1 evaluations: m - 1 third-order steps and a second-order one."""
    budgets = (29, 59, 119)
    fn = lambda d, x, s: sample_dpm_fast(d, x, s, eta=0.0, noise=never)  # noqa: E731
    errors = []
    for n in budgets:  # the budget is len(sigmas) - 1; it stops at the smallest positive sigma
        grid = schedules.exponential(n, MODEL)
        x = X * grid[0]
        ref = flow(x, grid[0], grid[-2])
        errors.append(float(((fn(ideal, x, grid) - ref) / ref).abs().max()))
    orders = observed_order(errors, [len(fast_orders(n)) for n in budgets])
    assert all(2.8 < o < 3.6 for o in orders), (errors, orders)


def test_dpmpp_3m_beats_2m_and_unipc_defaults_beat_both():
    grid = schedules.exponential(80, MODEL)
    e_2m = error_to_zero(S.sample_dpmpp_2m, grid)
    e_3m = error_to_zero(lambda d, x, s: S.sample_dpmpp_3m_sde(d, x, s, eta=0.0), grid)
    assert e_3m < 0.5 * e_2m
    # A1111's UniPC settings (order 3, bh1, lower order at the end, to sigma 0), 20 steps
    grid20 = schedules.exponential(20, MODEL)
    assert error_to_zero(sample_unipc, grid20) < error_to_zero(S.sample_dpmpp_2m, grid20) / 10


def test_dpm_adaptive_error_follows_its_tolerance():
    grid = schedules.exponential(20, MODEL)
    calls = []

    def counted(x, sigma):
        calls.append(float(sigma))
        return ideal(x, sigma)

    results = []
    for rtol, atol in [(0.05, 0.0078), (5e-4, 7.8e-4), (5e-6, 7.8e-6)]:
        calls.clear()
        reports = []
        x = X * grid[0]
        out = sample_dpm_adaptive(counted, x, grid, eta=0.0, rtol=rtol, atol=atol, callback=lambda i, xx, d: reports.append(i))
        ref = flow(x, grid[0], grid[-2])
        results.append((float(((out - ref) / ref).abs().max()), len(calls)))
        assert reports == list(range(20))  # one report per requested step, whatever it did
        assert max(calls) == pytest.approx(MODEL.sigma_max) and min(calls) > MODEL.sigma_min
    errors, nfes = zip(*results)
    assert errors[0] < 0.05 and errors[1] < 2e-3 and errors[2] < 2e-5
    assert errors[0] > errors[1] > errors[2] and nfes[0] < nfes[1] < nfes[2]


def test_restart_below_20_steps_is_heun_and_its_plan_from_20_steps():
    x = X * MODEL.sigma_max
    grid = schedules.karras(12, MODEL)
    assert torch.equal(sample_restart(ideal, x, grid), S.sample_heun(ideal, x, grid))
    for steps, restarts, restart_steps in [(20, 1, 9), (40, 2, 10)]:
        plan = restart_plan(schedules.karras(steps, MODEL))
        jumps = [(a, b) for a, b in plan if b > a]
        assert len(plan) - len(jumps) == steps  # Heun steps: the requested count
        assert len(jumps) == restarts
        main = schedules.karras(steps - restarts * restart_steps, MODEL)  # the main pass
        lo, hi = float(jumps[0][0]), float(jumps[0][1])
        assert lo == float(main[int((main - 0.1).abs().argmin())]) and hi == pytest.approx(float(main[int((main - 2).abs().argmin())]))


def test_dpm_fast_spends_exactly_its_budget_and_reports_each_evaluation():
    for n in (1, 2, 3, 4, 9, 10, 20):
        assert sum(fast_orders(n)) == n
    calls, reports = [], []
    grid = schedules.exponential(10, MODEL)
    sample_dpm_fast(lambda x, s: calls.append(s) or ideal(x, s), X * grid[0], grid, eta=0.0, callback=lambda i, x, d: reports.append(i))
    assert len(calls) == 10 and reports == list(range(10))
    assert float(max(calls)) == pytest.approx(MODEL.sigma_max) and float(min(calls)) > MODEL.sigma_min


@pytest.mark.parametrize("fn, calls_for_10", [(sample_unipc, 10), (sample_plms, 11), (sample_ddim_cfgpp, 10)])
def test_timestep_samplers_call_the_model_once_per_step(fn, calls_for_10):
    """UniPC's corrector reuses the next step's evaluation; PLMS's first step is Heun."""
    denoise = TwoGaussians(0.0, 0.0, 7.0)
    grid = schedules.ddim_timesteps(10, MODEL)
    reports = []
    fn(denoise, X * grid[0], grid, callback=lambda i, x, d: reports.append(i))
    assert len(denoise.calls) == calls_for_10 and reports == list(range(10))


# ------------------------------------------------------------ stochastic samplers


def noise_from(seed, n):
    g = torch.Generator().manual_seed(seed)
    return lambda sigma, sigma_next: torch.randn(n, generator=g, dtype=torch.float64)


@pytest.fixture
def one_thread():
    """These runs are long loops of small vector operations, where a second thread
    only adds synchronisation (and, on a busy machine, long waits)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def final_moments(fn, grid, n=131072):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, generator=g, dtype=torch.float64) * math.sqrt(S_DATA**2 + float(grid[0]) ** 2)
    out = fn(ideal, x, grid, noise=noise_from(2, n))
    return float(out.mean()), float(out.std())


STOCHASTIC = [
    ("DPM++ 3M SDE", S.sample_dpmpp_3m_sde, lambda n: schedules.exponential(n, MODEL), 0.0),
    ("DPM++ 2M SDE Heun", S.sample_dpmpp_2m_sde_heun, lambda n: schedules.exponential(n, MODEL), 0.0),
    ("Restart", sample_restart, lambda n: schedules.karras(n, MODEL), 0.0),
    # DPM fast / adaptive stop at sigma_min: the spread there is sqrt(s² + sigma_min²)
    ("DPM fast", sample_dpm_fast, lambda n: schedules.exponential(n, MODEL), MODEL.sigma_min),
    ("DPM adaptive", sample_dpm_adaptive, lambda n: schedules.exponential(n, MODEL), MODEL.sigma_min),
]


@pytest.mark.parametrize("name, fn, grid, sigma_end", STOCHASTIC, ids=[c[0] for c in STOCHASTIC])
def test_stochastic_samplers_reach_the_data_distribution(name, fn, grid, sigma_end, one_thread):
    """Started from N(0, s² + sigma_max²), the final samples are N(0, s² + sigma_end²):
    mean 0 and the right spread (the sampling error of a spread over 131072 samples is
    about 0.001).  At 15 steps the SDE samplers are still visibly off (+0.017 and +0.034
    for 3M SDE and 2M SDE Heun), which bounds the coarse check."""
    target = math.sqrt(S_DATA**2 + sigma_end**2)
    coarse_mean, coarse = final_moments(fn, grid(15))
    fine_mean, fine = final_moments(fn, grid(100))
    assert abs(fine_mean) < 0.005 and abs(coarse_mean) < 0.005
    assert abs(fine - target) < 0.005
    assert abs(coarse - target) < 0.04


@pytest.mark.parametrize("fn", [S.sample_dpmpp_3m_sde, S.sample_dpmpp_2m_sde_heun, sample_dpm_fast, sample_dpm_adaptive])
def test_eta_zero_draws_no_noise_and_is_the_ode_solver(fn):
    grid = schedules.exponential(12, MODEL)
    x = X * grid[0]
    assert torch.equal(fn(ideal, x, grid, eta=0.0), fn(ideal, x, grid, eta=0.0, noise=never))
    with pytest.raises(ValueError, match="needs a noise source"):
        fn(ideal, x, grid)  # eta 1, A1111's default, is stochastic


def test_2m_sde_heun_differs_from_midpoint_only_in_the_correction():
    grid = schedules.exponential(10, MODEL)
    x = X * grid[0]
    heun = S.sample_dpmpp_2m_sde(ideal, x, grid, eta=0.0, solver_type="heun")
    assert torch.equal(heun, S.sample_dpmpp_2m_sde_heun(ideal, x, grid, eta=0.0))
    assert not torch.allclose(heun, S.sample_dpmpp_2m(ideal, x, grid))
    # one step with history by hand: x = (s1/s0) x0 + (1 - s1/s0) D1 + w (D1 - D0) / r
    s = torch.tensor([4.0, 2.0, 1.0, 0.0], dtype=torch.float64)
    x0 = torch.tensor([3.0], dtype=torch.float64)
    d0 = ideal(x0, s[0])
    x1 = 0.5 * x0 + 0.5 * d0
    d1 = ideal(x1, s[1])
    h = math.log(2)
    x2 = 0.5 * x1 + 0.5 * d1 + (1 - (1 - math.exp(-h)) / h) * (d1 - d0)  # r = h_last / h = 1
    out = S.sample_dpmpp_2m_sde_heun(ideal, x0, s, eta=0.0)
    assert out.item() == pytest.approx(ideal(x2, s[2]).item(), rel=1e-12)


def test_stochastic_samplers_pass_their_step_sigmas_to_the_noise_source():
    grid = schedules.exponential(6, MODEL)
    for fn in (S.sample_dpmpp_3m_sde, S.sample_dpmpp_2m_sde_heun, S.sample_euler_ancestral, S.sample_lcm):
        pairs = []
        fn(ideal, X * grid[0], grid, noise=lambda a, b: pairs.append((float(a), float(b))) or torch.zeros(3, dtype=torch.float64))
        assert pairs == [(float(grid[i]), float(grid[i + 1])) for i in range(5)]
    pairs = []
    S.sample_dpmpp_sde(ideal, X * grid[0], grid, noise=lambda a, b: pairs.append((float(a), float(b))) or torch.zeros(3, dtype=torch.float64))
    # two sub-steps per step: to the log-midpoint, then to the next sigma
    mids = [math.sqrt(float(grid[i]) * float(grid[i + 1])) for i in range(5)]
    expected = [v for i in range(5) for v in (float(grid[i]), mids[i], float(grid[i]), float(grid[i + 1]))]
    assert [v for pair in pairs for v in pair] == pytest.approx(expected, rel=1e-12)


# ------------------------------------------------------------ DDIM CFG++


class TwoGaussians:
    """Conditional and unconditional ideal denoisers for data N(mu_c, s²) and
    N(mu_u, s²), combined with CFG like the real denoiser (and counting calls)."""

    def __init__(self, mu_c, mu_u, cfg):
        self.mu_c, self.mu_u, self.cfg = mu_c, mu_u, cfg
        self.calls = []

    def _one(self, x, sigma, mu):
        return mu + (x - mu) * S_DATA**2 / (S_DATA**2 + sigma**2)

    def with_uncond(self, x, sigma, scale_factor=1.0):
        self.calls.append(sigma)
        cond, uncond = self._one(x, sigma, self.mu_c), self._one(x, sigma, self.mu_u)
        return uncond + (cond - uncond) * self.cfg * scale_factor, uncond

    def __call__(self, x, sigma):
        return self.with_uncond(x, sigma)[0]


def test_ddim_cfgpp_renoises_with_the_unconditional_noise():
    d = TwoGaussians(mu_c=1.0, mu_u=-1.0, cfg=6.25)
    sigmas = torch.tensor([2.0, 0.5, 0.0], dtype=torch.float64)
    x = torch.tensor([3.0], dtype=torch.float64)
    out = sample_ddim_cfgpp(d, x, sigmas)
    # step 1 by hand: w = s²/(s²+4) = 1/17; cfg 6.25 / 12.5 = 0.5
    w = 0.25 / 4.25
    uncond = -1 + (3 + 1) * w
    cond = 1 + (3 - 1) * w
    guided = uncond + 0.5 * (cond - uncond)
    x1 = guided + 0.5 * (3 - uncond) / 2.0
    w2 = 0.25 / 0.5
    uncond2, cond2 = -1 + (x1 + 1) * w2, 1 + (x1 - 1) * w2
    assert out.item() == pytest.approx(uncond2 + 0.5 * (cond2 - uncond2), rel=1e-12)


def test_ddim_cfgpp_without_guidance_is_ddim():
    grid = schedules.ddim_timesteps(10, MODEL)
    x = X * grid[0]
    same = TwoGaussians(0.0, 0.0, 7.0)  # cond == uncond: guidance has no effect
    assert torch.allclose(sample_ddim_cfgpp(same, x, grid), S.sample_ddim(ideal, x, grid), rtol=1e-12, atol=0)
    with pytest.raises(TypeError, match="with_uncond"):
        sample_ddim_cfgpp(ideal, x, grid)


def test_the_real_denoiser_exposes_the_unconditional_estimate():
    """make_denoiser's object: a plain call is the guided x0 (negative pass skipped at
    CFG 1), with_uncond always runs the negative pass and scales guidance as asked."""
    batches = []

    def net(x_in, t, conditioning):
        batches.append(x_in.shape[0])
        return x_in * conditioning.reshape(-1, 1)  # eps = c * x_in, one c per conditioning

    def batch_at(step, with_negative):
        return torch.tensor(([0.1] if with_negative else []) + [0.3, 0.6], dtype=torch.float64)

    x = torch.tensor([[1.0, 2.0]], dtype=torch.float64)
    sigma = torch.tensor(2.0, dtype=torch.float64)
    c_in = 1 / math.sqrt(5.0)

    def x0(c):
        return x - 2.0 * c * x * c_in

    d = make_denoiser(net, MODEL, "epsilon", batch_at, [0.5, 0.5], 7.0, step_locator(schedules.karras(4, MODEL)))
    guided = x0(0.1) + 0.5 * 7.0 * (x0(0.3) - x0(0.1)) + 0.5 * 7.0 * (x0(0.6) - x0(0.1))
    assert torch.allclose(d(x, sigma), guided)
    g, u = d.with_uncond(x, sigma, 1 / CFGPP_SCALE_DIVISOR)
    assert torch.allclose(u, x0(0.1)) and torch.allclose(g, x0(0.1) + (guided - x0(0.1)) / 12.5)
    assert batches == [3, 3]

    one = make_denoiser(net, MODEL, "epsilon", lambda s, neg: torch.tensor(([0.1] if neg else []) + [0.3], dtype=torch.float64), [1.0], 1.0, step_locator(schedules.karras(4, MODEL)))
    batches.clear()
    assert torch.allclose(one(x, sigma), x0(0.3))
    g, u = one.with_uncond(x, sigma)
    assert torch.allclose(g, x0(0.3)) and torch.allclose(u, x0(0.1))
    assert batches == [1, 2]


# ------------------------------------------------------------ schedules

ALL_SCHEDULES = [k for k in schedules.SCHEDULE_LABELS if k != "automatic"]


@pytest.mark.parametrize("name", ALL_SCHEDULES)
@pytest.mark.parametrize("steps", [1, 2, 7, 30])
def test_every_schedule_is_decreasing_ends_in_zero_and_stays_in_range(name, steps):
    for model in (MODEL, schedules.scaled_linear_schedule("sdxl")):
        sig = schedules.make_sigmas(name, steps, model)
        assert sig.shape == (steps + 1,) and sig.dtype == torch.float64
        assert sig[-1] == 0 and torch.all(sig[:-1] > sig[1:])
        # Align Your Steps' published 14.615 is the model's 14.6146 rounded up
        assert float(sig[0]) <= model.sigma_max * (1 + 1e-4)
        assert float(sig[-2]) >= model.sigma_min * 0.99  # (and its 0.029 rounds 0.02917 down)


def test_new_schedules_against_their_formulas():
    lo, hi = MODEL.sigma_min, MODEL.sigma_max
    # polyexponential: rho 1 is exponential; rho 2 puts the middle point at ramp 1/4
    assert torch.allclose(schedules.polyexponential(5, MODEL), schedules.exponential(5, MODEL), rtol=1e-12)
    p = schedules.polyexponential(3, MODEL, rho=2.0)
    assert p.tolist() == pytest.approx([hi, math.exp(math.log(lo) + 0.25 * (math.log(hi) - math.log(lo))), lo, 0.0], rel=1e-12)
    # KL optimal: evenly spaced in arctan, A1111's first n values
    k = schedules.kl_optimal(4, MODEL)
    expect = [math.tan((1 - i / 4) * math.atan(hi) + (i / 4) * math.atan(lo)) for i in range(4)]
    assert k.tolist() == pytest.approx(expect + [0.0], rel=1e-12)
    # Beta(0.6, 0.6) is symmetric: the middle of 3 quantiles is the median 1/2
    b = schedules.beta(3, MODEL)
    assert b.tolist() == pytest.approx([hi, (lo + hi) / 2, lo, 0.0], rel=1e-9)
    from scipy import stats

    assert float(schedules.beta(5, MODEL)[1]) == pytest.approx(lo + stats.beta.ppf(0.75, 0.6, 0.6) * (hi - lo), rel=1e-12)
    # Normal is Uniform over the model's own range; DDIM is DDIM's grid
    assert torch.allclose(schedules.normal(9, MODEL), schedules.uniform(9, MODEL), rtol=1e-9)
    d = schedules.make_sigmas("ddim", 10, MODEL)
    assert torch.equal(d, schedules.ddim_timesteps(10, MODEL))
    assert torch.equal(d[:-1], MODEL.sigmas[torch.arange(901, 0, -100)])


def test_align_your_steps_tables():
    sd15 = [14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029]
    sdxl = [14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029]
    # the table as it stands when the step count equals its length (A1111 v1.10.1)
    assert schedules.align_your_steps(11, MODEL).tolist() == sd15 + [0.0]
    assert schedules.align_your_steps(11, schedules.scaled_linear_schedule("sdxl")).tolist() == sdxl + [0.0]
    assert schedules.align_your_steps(11, schedules.scaled_linear_schedule("sd2")).tolist() == sd15 + [0.0]
    # at 10 steps A1111 resamples the 11 values to 10, log-linearly: value k sits at
    # table position k * 10 / 9
    ten = schedules.align_your_steps(10, MODEL)
    assert len(ten) == 11 and ten[-1] == 0 and ten[0] == pytest.approx(14.615) and ten[-2] == pytest.approx(0.029)
    w = 10 / 9 - 1
    assert float(ten[1]) == pytest.approx(math.exp((1 - w) * math.log(6.475) + w * math.log(3.861)), rel=1e-12)
    w = 50 / 9 - 5
    assert float(ten[5]) == pytest.approx(math.exp((1 - w) * math.log(1.396) + w * math.log(0.963)), rel=1e-12)
    # other step counts interpolate the same curve
    assert schedules.align_your_steps(21, MODEL)[:-1:2].tolist() == pytest.approx(sd15, rel=1e-12)


# ------------------------------------------------------------ the registry

A1111_SAMPLERS = [
    "DPM++ 2M", "DPM++ SDE", "DPM++ 2M SDE", "DPM++ 2M SDE Heun", "DPM++ 2S a", "DPM++ 3M SDE", "Euler a", "Euler", "LMS", "Heun",
    "DPM2", "DPM2 a", "DPM fast", "DPM adaptive", "Restart", "DDIM", "DDIM CFG++", "PLMS", "UniPC", "LCM",
]  # fmt: skip
A1111_ALIASES = {
    "k_dpmpp_2m": "DPM++ 2M", "k_dpmpp_sde": "DPM++ SDE", "k_dpmpp_2m_sde": "DPM++ 2M SDE", "k_dpmpp_2m_sde_heun": "DPM++ 2M SDE Heun",
    "k_dpmpp_2s_a": "DPM++ 2S a", "k_dpmpp_3m_sde": "DPM++ 3M SDE", "k_euler_a": "Euler a", "k_euler_ancestral": "Euler a", "k_euler": "Euler",
    "k_lms": "LMS", "k_heun": "Heun", "k_dpm_2": "DPM2", "k_dpm_2_a": "DPM2 a", "k_dpm_fast": "DPM fast", "k_dpm_ad": "DPM adaptive",
    "restart": "Restart", "ddim": "DDIM", "ddim_cfgpp": "DDIM CFG++", "plms": "PLMS", "unipc": "UniPC", "k_lcm": "LCM",
}  # fmt: skip
A1111_SCHEDULES = {
    "automatic": "Automatic", "uniform": "Uniform", "karras": "Karras", "exponential": "Exponential", "polyexponential": "Polyexponential",
    "sgm_uniform": "SGM Uniform", "kl_optimal": "KL Optimal", "align_your_steps": "Align Your Steps", "simple": "Simple", "normal": "Normal",
    "ddim": "DDIM", "beta": "Beta",
}  # fmt: skip


def test_every_a1111_sampler_and_schedule_in_a1111s_order():
    assert registry.labels() == A1111_SAMPLERS
    assert schedules.SCHEDULE_LABELS == A1111_SCHEDULES and list(schedules.SCHEDULE_LABELS) == list(A1111_SCHEDULES)


def test_every_name_alias_and_api_spelling_resolves():
    for label in A1111_SAMPLERS:
        assert registry.resolve_sampler(label)[0].label == label
        assert registry.resolve_sampler(label.lower())[0].label == label
        assert registry.resolve_sampler(label.upper())[0].label == label
    for alias, label in A1111_ALIASES.items():
        assert registry.resolve_sampler(alias)[0].label == label
    for name, label in A1111_SCHEDULES.items():
        assert registry.resolve_schedule(name) == name
        assert registry.resolve_schedule(label) == name
        assert registry.resolve_schedule(label.lower()) == name
    assert registry.resolve_schedule("SGMUniform") == "sgm_uniform"
    assert registry.resolve_schedule("align your steps") == "align_your_steps"


@pytest.mark.parametrize(
    "text, sampler, schedule",
    [
        ("DPM++ 2M SDE Heun Karras", "DPM++ 2M SDE Heun", "karras"),
        ("DPM++ 2M SDE Heun Exponential", "DPM++ 2M SDE Heun", "exponential"),
        ("DPM++ 3M SDE Karras", "DPM++ 3M SDE", "karras"),
        ("DPM++ 3M SDE Exponential", "DPM++ 3M SDE", "exponential"),
        ("DPM++ 2M Align Your Steps", "DPM++ 2M", "align_your_steps"),
        ("Euler KL Optimal", "Euler", "kl_optimal"),
        ("Euler a Beta", "Euler a", "beta"),
        ("Euler Normal", "Euler", "normal"),
        ("DPM++ 2M DDIM", "DPM++ 2M", "ddim"),
        ("Heun Polyexponential", "Heun", "polyexponential"),
        ("UniPC", "UniPC", "automatic"),
        ("DDIM", "DDIM", "automatic"),
        ("DDIM CFG++", "DDIM CFG++", "automatic"),
        ("Restart Karras", "Restart", "karras"),
        ("DPM adaptive", "DPM adaptive", "automatic"),
    ],
)
def test_legacy_combined_names(text, sampler, schedule):
    info, sched = registry.resolve_sampler(text)
    assert (info.label, sched) == (sampler, schedule)


def test_unknown_names_still_list_the_valid_ones():
    with pytest.raises(registry.UnknownSamplerError) as e:
        registry.resolve_sampler("UniPCC")
    assert "Did you mean 'UniPC'" in str(e.value) and "DPM adaptive" in str(e.value)
    with pytest.raises(registry.UnknownSamplerError, match="Valid schedules: .*Align Your Steps.*Beta"):
        registry.resolve_schedule("align-your-step")


def test_flags_as_in_a1111():
    by = {info.label: info for info in registry.SAMPLERS.values()}
    assert {k for k, i in by.items() if i.uses_ensd} == {"Euler a", "DPM++ 2S a", "DPM2 a", "DPM fast", "DPM adaptive"}
    assert {k for k, i in by.items() if i.brownian} == {"DPM++ SDE", "DPM++ 2M SDE", "DPM++ 2M SDE Heun", "DPM++ 3M SDE"}
    assert {k for k, i in by.items() if i.fixed_grid} == {"DDIM", "DDIM CFG++", "PLMS", "UniPC"}
    assert {k for k, i in by.items() if i.model_range} == {"DPM fast", "DPM adaptive"}
    assert {k for k, i in by.items() if i.discard_penultimate} == {"DPM2", "DPM2 a", "DPM++ 3M SDE"}
    assert {k for k, i in by.items() if i.calls_per_step == 2} == {"DPM++ SDE", "DPM++ 2S a", "Heun", "DPM2", "DPM2 a", "Restart"}
    defaults = {k: i.default_schedule for k, i in by.items() if not (i.fixed_grid or i.model_range)}
    assert {k for k, v in defaults.items() if v == "karras"} == {"DPM++ 2M", "DPM++ SDE", "DPM++ 2S a", "DPM2", "DPM2 a", "Restart"}
    assert {k for k, v in defaults.items() if v == "exponential"} == {"DPM++ 2M SDE", "DPM++ 2M SDE Heun", "DPM++ 3M SDE"}


@pytest.mark.parametrize("label", A1111_SAMPLERS)
def test_stochastic_flag_matches_whether_the_sampler_draws_noise(label):
    info, sched = registry.resolve_sampler(label)
    grid = registry.sampling_sigmas(info, sched, 24, MODEL)
    drawn = []
    denoise = TwoGaussians(0.2, 0.0, 3.0)
    out = info.fn(denoise, X * grid[0], grid, noise=lambda a, b: drawn.append(1) or torch.zeros(3, dtype=torch.float64))
    assert torch.isfinite(out).all()
    assert bool(drawn) == info.stochastic
    if not info.stochastic:
        info.fn(denoise, X * grid[0], grid)  # needs no noise source


def test_sampling_sigmas_for_samplers_that_ignore_the_schedule():
    fast, _ = registry.resolve_sampler("DPM fast")
    for sched in ("karras", "align_your_steps", "simple"):
        assert torch.equal(registry.sampling_sigmas(fast, sched, 15, MODEL), schedules.exponential(15, MODEL))
    assert registry.schedule_label(fast, "karras") == "Automatic"
    unipc, _ = registry.resolve_sampler("UniPC")
    assert torch.equal(registry.sampling_sigmas(unipc, "karras", 20, MODEL), schedules.ddim_timesteps(20, MODEL))
    three_m, _ = registry.resolve_sampler("DPM++ 3M SDE")
    full = schedules.exponential(21, MODEL)
    assert torch.equal(registry.sampling_sigmas(three_m, "automatic", 20, MODEL), torch.cat([full[:-2], full[-1:]]))
    assert registry.schedule_label(three_m, "automatic") == "Exponential"


# ------------------------------------------------------------ through the engine

NEW = ["DPM++ 2M SDE Heun", "DPM++ 3M SDE", "DPM fast", "DPM adaptive", "Restart", "DDIM CFG++", "PLMS", "UniPC"]


@pytest.mark.parametrize("sampler", NEW)
def test_new_samplers_run_on_a_real_network_with_one_progress_report_per_step(engines, sampler):
    import numpy as np

    from brushwork import GenerationRequest

    req = GenerationRequest("a lighthouse at dusk", negative_prompt="blurry", seed=42, steps=3, width=64, height=64, sampler=sampler)
    seen = []
    (img,) = engines("sd1").txt2img(req, progress=lambda p: seen.append(p.step))
    assert seen == [1, 2, 3]
    assert np.asarray(img.image, dtype=np.int16).std() > 1
    assert f"Sampler: {sampler}," in img.infotext
