"""Parity with diffusers: its own pipeline on a tiny checkpoint (same initial noise),
and its schedulers against our sampler functions on a toy model.

diffusers is only a reference here; it is not in Brushwork's generation path.
"""
import math
from dataclasses import replace

import pytest
import torch

from brushwork.engine import GenerationRequest, initial_noise
from brushwork.sampling.registry import resolve_sampler
from brushwork.sampling.samplers import sample_ddim, sample_dpmpp_2m_sde, sample_dpmpp_2m_sde_heun, sample_dpmpp_3m_sde
from brushwork.sampling.schedules import ModelSchedule, ddim_timesteps
from brushwork.sampling.timestep import sample_plms, sample_unipc

PROMPT, STEPS, CFG, SEED = "a photo of a cat", 8, 7.0, 3
#: max |difference| over max |latent|
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def setup(engines):
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

    from brushwork.conditioning import tokenizer

    eng = engines("sd1")
    n = eng.model.networks
    sched = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1, timestep_spacing="linspace")
    pipe = StableDiffusionPipeline(n.vae, n.text_encoders[0], tokenizer(), n.unet, sched, None, None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    req = eng.complete(GenerationRequest(PROMPT, seed=SEED, steps=STEPS, cfg_scale=CFG, width=64, height=64))
    noise, _ = initial_noise([SEED], (4, 8, 8))
    return eng, pipe, req, noise


def ours(eng, req, sampler_name, noise):
    info, sched = resolve_sampler(sampler_name)
    return eng.sample(replace(req, sampler=sampler_name, schedule=None), info, sched, [SEED], eng._encode(req), noise=noise)


def theirs(pipe, latents):
    return pipe(prompt=PROMPT, negative_prompt="", num_inference_steps=STEPS, guidance_scale=CFG, latents=latents, output_type="latent", height=64, width=64).images


def rel_err(a, b):
    return float((a - b).abs().max() / b.abs().max())


def test_euler_matches_diffusers_euler(setup):
    eng, pipe, req, noise = setup
    from diffusers import EulerDiscreteScheduler

    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    err = rel_err(ours(eng, req, "Euler", noise), theirs(pipe, noise.clone()))
    assert err < TOLERANCE


def test_dpmpp_2m_karras_matches_diffusers_dpmsolver(setup, monkeypatch):
    """diffusers' DPMSolverMultistepScheduler differs from the k-diffusion form in two
    documented conventions, which the test aligns before comparing:
    it starts from unit-variance latents (x_T = noise, not noise * sigma_max / sqrt(1 + sigma_max²)),
    and it calls the UNet at timesteps rounded to integers.  Without the alignment the
    two differ by about 0.25% (the start scale), which the last assertion checks."""
    eng, pipe, req, noise = setup
    from diffusers import DPMSolverMultistepScheduler

    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config, use_karras_sigmas=True)
    smax = eng.model.schedule.sigma_max
    ref = theirs(pipe, noise.clone() * smax / (1 + smax**2) ** 0.5)
    unrounded = ours(eng, req, "DPM++ 2M Karras", noise)
    real = ModelSchedule.sigma_to_t
    monkeypatch.setattr(ModelSchedule, "sigma_to_t", lambda self, s: real(self, s).round())
    assert rel_err(ours(eng, req, "DPM++ 2M Karras", noise), ref) < TOLERANCE
    assert rel_err(unrounded, ref) < 5e-3


# ---------------------------------------------------------------- scheduler-level parity
# Our sampler functions against diffusers' schedulers, stepped by hand with the same
# toy noise predictor, the same sigma grid and (for SDE samplers) the same noise.
# diffusers works on variance-preserving latents x_vp = x / sqrt(1 + sigma²) and keeps
# its noise schedule in float32, so the grids below are built from its own numbers and
# the comparison allows float32-sized differences.

SCHED_TOLERANCE = 1e-5  # max |difference| over max |result|
TRAINING = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
_W = torch.randn(4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 0.3


def toy_eps(x_vp, sigma):
    """A smooth, nonlinear noise predictor of the VP latent and the noise level."""
    s = float(sigma)
    return torch.tanh(torch.einsum("bchw,cd->bdhw", x_vp, _W)) * (0.5 + 0.4 * math.tanh(s - 1)) + 0.1 * x_vp * s / (1 + s)


def toy_denoiser(x, sigma):
    """The same model as our samplers see it: D(x, sigma) = x - sigma * eps(x_vp, sigma)."""
    s = torch.as_tensor(sigma, dtype=torch.float64)
    return x - s * toy_eps(x / (1 + s**2) ** 0.5, s)


X_T = torch.randn(2, 4, 6, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def to_ours(x_vp, sigma):
    return x_vp * (1 + float(sigma) ** 2) ** 0.5


def to_vp(x, sigma):
    return x / (1 + float(sigma) ** 2) ** 0.5


def sched_err(ours_out, theirs_out):
    return float((ours_out - theirs_out).abs().max() / theirs_out.abs().max())


def step_by_sigmas(sched, steps, noises=None):
    """diffusers' loop for schedulers that keep a sigma per step (UniPC, DPM-Solver)."""
    sched.set_timesteps(steps)
    sigmas = torch.as_tensor(sched.sigmas, dtype=torch.float64)
    x = X_T.clone()
    for i, t in enumerate(sched.timesteps):
        extra = {} if noises is None else {"variance_noise": noises[i]}
        x = sched.step(toy_eps(x, sigmas[i]), t, x, **extra).prev_sample
    return x, sigmas


def step_by_alphas(sched, steps):
    """diffusers' loop for DDIM / PNDM, which index their float32 alphas by timestep;
    returns the result and the same model schedule in our form."""
    sched.set_timesteps(steps)
    abar = sched.alphas_cumprod.double()
    table = ((1 - abar) / abar) ** 0.5
    x = X_T.clone()
    for t in sched.timesteps:
        x = sched.step(toy_eps(x, table[t]), t, x).prev_sample
    return x, ModelSchedule(table)


@pytest.mark.parametrize("variant", ["bh1", "bh2"])
def test_unipc_matches_diffusers_unipc(variant):
    """A1111's UniPC settings: multistep, data prediction, order 3, lower order at the
    end, variant bh1 (and bh2).  10 steps, where diffusers lowers the order of the last
    two steps exactly like A1111 (from 15 steps on it keeps order 3 for the second-to-
    last).  diffusers' bh1 cannot step to sigma 0 (its B(h) = h is infinite there), so
    bh1 is compared on a grid ending at sigma_min, bh2 on one ending at 0."""
    from diffusers import UniPCMultistepScheduler

    final = "sigma_min" if variant == "bh1" else "zero"
    sched = UniPCMultistepScheduler(**TRAINING, solver_order=3, solver_type=variant, predict_x0=True, lower_order_final=True, final_sigmas_type=final)
    ref, sigmas = step_by_sigmas(sched, 10)
    ours = sample_unipc(toy_denoiser, to_ours(X_T, sigmas[0]), sigmas, order=3, variant=variant)
    assert sched_err(to_vp(ours, sigmas[-1]), ref) < SCHED_TOLERANCE


def test_ddim_matches_diffusers_ddim():
    """DDIM (eta 0) on DDIM's own grid: diffusers' "leading" spacing with steps_offset 1
    gives timesteps 901, 801, ..., 1 for 10 steps, and set_alpha_to_one makes the last
    step land on sigma 0, as ours does."""
    from diffusers import DDIMScheduler

    sched = DDIMScheduler(**TRAINING, timestep_spacing="leading", steps_offset=1, set_alpha_to_one=True, clip_sample=False)
    ref, model = step_by_alphas(sched, 10)
    grid = ddim_timesteps(10, model)
    assert torch.equal(grid[:-1], model.sigmas[sched.timesteps])
    assert sched_err(sample_ddim(toy_denoiser, to_ours(X_T, grid[0]), grid), ref) < SCHED_TOLERANCE


def test_plms_matches_diffusers_pndm_without_runge_kutta():
    """PLMS is diffusers' PNDMScheduler with skip_prk_steps: a pseudo improved-Euler
    first step, then Adams-Bashforth on the noise predictions, on DDIM's grid."""
    from diffusers import PNDMScheduler

    sched = PNDMScheduler(**TRAINING, skip_prk_steps=True, set_alpha_to_one=True, steps_offset=1, timestep_spacing="leading")
    ref, model = step_by_alphas(sched, 10)
    grid = ddim_timesteps(10, model)
    assert sched_err(sample_plms(toy_denoiser, to_ours(X_T, grid[0]), grid), ref) < SCHED_TOLERANCE


def dpmsolver(algorithm, order, solver_type, steps=16):
    """16 steps, exponential sigmas: from 15 steps on diffusers keeps the full order up
    to the step before the last, as k-diffusion does; the last step goes to 0."""
    from diffusers import DPMSolverMultistepScheduler

    sched = DPMSolverMultistepScheduler(**TRAINING, algorithm_type=algorithm, solver_order=order, solver_type=solver_type, use_exponential_sigmas=True, lower_order_final=True, final_sigmas_type="zero")
    g = torch.Generator().manual_seed(5)
    noises = [torch.randn(X_T.shape, generator=g, dtype=torch.float64) for _ in range(steps)]
    ref, sigmas = step_by_sigmas(sched, steps, noises)
    by_sigma = {float(sigmas[i]): noises[i] for i in range(steps)}
    return ref, sigmas, lambda sigma, sigma_next: by_sigma[float(sigma)]


@pytest.mark.parametrize("heun", [False, True])
def test_dpmpp_2m_sde_and_its_heun_form_match_diffusers_sde_dpmsolver(heun):
    ref, sigmas, noise = dpmsolver("sde-dpmsolver++", 2, "heun" if heun else "midpoint")
    fn = sample_dpmpp_2m_sde_heun if heun else sample_dpmpp_2m_sde
    assert sched_err(fn(toy_denoiser, to_ours(X_T, sigmas[0]), sigmas, noise=noise), ref) < SCHED_TOLERANCE


def test_dpmpp_3m_sde_at_eta_0_matches_diffusers_third_order_dpmsolver():
    """k-diffusion's 3M warms up with the "heun" second-order step, hence solver_type."""
    ref, sigmas, _ = dpmsolver("dpmsolver++", 3, "heun")
    ours = sample_dpmpp_3m_sde(toy_denoiser, to_ours(X_T, sigmas[0]), sigmas, eta=0.0)
    assert sched_err(ours, ref) < SCHED_TOLERANCE


def test_dpmpp_3m_sde_matches_diffusers_sde_dpmsolver_once_its_third_order_term_is_fixed(monkeypatch):
    """diffusers 0.42's third-order "sde-dpmsolver++" update weights D2 by
    (1 - e^-2h - 2h)/(2h)² - 1/2, which tends to -1 for small steps; the ODE branch and
    k-diffusion's 3M SDE (what A1111 runs) use + 1/2, a weight that vanishes like h/6.
    With that one sign changed in diffusers' own code the two agree; unchanged they
    differ by far more than rounding (checked too)."""
    import inspect
    import textwrap

    import diffusers.schedulers.scheduling_dpmsolver_multistep as dpm_module

    method = dpm_module.DPMSolverMultistepScheduler.multistep_dpm_solver_third_order_update
    wrong = "((1.0 - torch.exp(-2.0 * h) - 2.0 * h) / (2.0 * h) ** 2 - 0.5)"
    source = textwrap.dedent(inspect.getsource(method))
    ours_first = None
    if wrong in source:
        ref_unfixed, sigmas, noise = dpmsolver("sde-dpmsolver++", 3, "heun")
        ours_first = sample_dpmpp_3m_sde(toy_denoiser, to_ours(X_T, sigmas[0]), sigmas, noise=noise)
        assert sched_err(ours_first, ref_unfixed) > 0.1
        namespace = dict(vars(dpm_module))
        exec(source.replace(wrong, wrong.replace("- 0.5)", "+ 0.5)")), namespace)  # noqa: S102  (test-only patch of the reference)
        monkeypatch.setattr(dpm_module.DPMSolverMultistepScheduler, "multistep_dpm_solver_third_order_update", namespace[method.__name__])
    ref, sigmas, noise = dpmsolver("sde-dpmsolver++", 3, "heun")
    ours = sample_dpmpp_3m_sde(toy_denoiser, to_ours(X_T, sigmas[0]), sigmas, noise=noise)
    assert sched_err(ours, ref) < SCHED_TOLERANCE
