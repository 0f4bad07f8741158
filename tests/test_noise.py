"""Noise sources (CPU, GPU, NV), ENSD and Brownian-tree noise (brushwork.noise), and
how the engine, the infotext and ``generate --from`` use them."""
import math
import subprocess
import sys
import warnings
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image, PngImagePlugin

from brushwork import GenerationRequest, RequestError
from brushwork.cli import _request_from_image, main
from brushwork.infotext import InfotextError, noise_settings, params_from_infotext
from brushwork.noise import BrownianNoise, PhiloxGenerator, box_muller, cuda_threads, initial_noise, make_generator, noise_source, philox4x32, philox_randn
from brushwork.sampling.registry import SAMPLERS

ROOT = Path(__file__).resolve().parents[1]
BASE = GenerationRequest("a lighthouse at dusk", seed=42, steps=3, width=64, height=64)
FAST = ["--steps", "3", "-W", "64", "-H", "64", "-q"]


def pixels(img):
    return np.asarray(img.image, dtype=np.int16)


# ----------------------------------------------------------------- Philox4x32


# Random123's known-answer vectors (tests/kat_vectors of github.com/DEShawResearch/random123,
# the "philox4x32 7" and "philox4x32 10" lines): counter words, key words -> output words.
KAT = [
    (10, (0x00000000, 0x00000000, 0x00000000, 0x00000000), (0x00000000, 0x00000000), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    (10, (0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF), (0xFFFFFFFF, 0xFFFFFFFF), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    (10, (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0), (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
    (7, (0x00000000, 0x00000000, 0x00000000, 0x00000000), (0x00000000, 0x00000000), (0x5F6FB709, 0x0D893F64, 0x4F121F81, 0x4F730A48)),
    (7, (0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF), (0xFFFFFFFF, 0xFFFFFFFF), (0x5207DDC2, 0x45165E59, 0x4D8EE751, 0x8C52F662)),
    (7, (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0), (0x4DFCCABA, 0x190A87F0, 0xC47362BA, 0xB6B5242A)),
]


@pytest.mark.parametrize("rounds, counter, key, expected", KAT)
def test_philox4x32_known_answers_of_random123(rounds, counter, key, expected):
    assert tuple(int(w) for w in philox4x32(counter, key, rounds)) == expected


def test_philox4x32_is_vectorised_over_counters():
    counters = np.array([k[1] for k in KAT[:3]], dtype=np.uint64).T  # (4, 3)
    keys = np.array([k[2] for k in KAT[:3]], dtype=np.uint64).T
    out = philox4x32(counters, keys)
    assert [tuple(int(w) for w in out[:, i]) for i in range(3)] == [k[3] for k in KAT[:3]]


# ----------------------------------------------------------------- NV: reference numbers


def test_first_nv_value_for_seed_0_derived_by_hand():
    """The first normal of seed 0, step by step from the algorithm:

    1. torch's generator after manual_seed(0) has offset 0; element 0 is thread 0,
       so the Philox counter is (offset, 0, element, 0) = (0, 0, 0, 0) and the key is
       the seed's halves (0, 0).
    2. Philox4x32-10 of that is Random123's first known answer:
       x = 0x6627e8d5 = 1713891541, y = 0xe169c58d = 3781805453.
    3. u = x * 2^-32 + 2^-33 = 0.3990464707603678
       v = y * c + c/2 with c = float32(2pi) * 2^-32, float32(2pi) = 6.2831854820251465,
         = 5.532471724151337
    4. sqrt(-2 ln u) = 1.3554906128801154, sin v = -0.6821607071923381,
       their product -0.9246624350748753, rounded to float32: -0.9246624112129211.
    """
    x, y = (int(w) for w in philox4x32((0, 0, 0, 0), (0, 0))[:2])
    assert (x, y) == (0x6627E8D5, 0xE169C58D) == (1713891541, 3781805453)
    u = x * 2**-32 + 2**-33
    c = 6.2831854820251465 * 2**-32
    v = y * c + c / 2
    assert math.isclose(u, 0.3990464707603678, rel_tol=1e-15) and math.isclose(v, 5.532471724151337, rel_tol=1e-15)
    value = math.sqrt(-2 * math.log(u)) * math.sin(v)
    assert math.isclose(value, -0.9246624350748753, rel_tol=1e-15)
    assert float(np.float32(value)) == -0.9246624112129211
    assert PhiloxGenerator(0).randn((1,)).item() == -0.9246624112129211


# AUTOMATIC1111's own NV generator (modules/rng_philox.py of AUTOMATIC1111/stable-diffusion-webui),
# run for seed 0: Generator(0).randn((3, 4)), then .randn((2, 3)).  Ours must give these bit for bit.
A1111_SEED0_FIRST = [-0.9246624112, -0.4253439605, -2.6438457966, 0.1451838762, -0.1208665073, -0.5797256827, -0.6228513122, -0.3283871412, -1.0745420456, -0.3631440997, -1.6710504293, 2.2655050755]
A1111_SEED0_SECOND = [0.1808258891, -0.5522627234, 0.9238134027, -0.7349703312, 1.3799946308, 0.8676307201]
# The docstring of that file states the "expected output" of Generator(seed=0).randn(shape=(3, 4)):
A1111_DOCSTRING_SEED0 = [-0.92466259, -0.42534415, -2.6438457, 0.14518388, -0.12086647, -0.57972564, -0.62285122, -0.32838709, -1.07454231, -0.36314407, -1.67105067, 2.26550497]
# torch on an NVIDIA GPU, printed to 4 decimals in flashinfer's documentation (flashinfer-ai/flashinfer,
# flashinfer/logits_processor/processors.py, the Sample example): torch.manual_seed(42); torch.randn(2, 5, device="cuda")
CUDA_SEED42_2x5 = [0.1940, 2.1614, -0.1721, 0.8491, -1.9244, 0.6530, -0.6494, -0.8175, 0.5280, -1.2753]


def test_nv_matches_automatic1111s_generator_bit_for_bit():
    g = PhiloxGenerator(0)
    assert np.array_equal(g.randn((3, 4)).numpy(), np.float32(A1111_SEED0_FIRST).reshape(3, 4))
    assert np.array_equal(g.randn((2, 3)).numpy(), np.float32(A1111_SEED0_SECOND).reshape(2, 3))


def test_nv_matches_the_published_gpu_numbers():
    """A1111's docstring numbers are most likely the GPU's own (float32 logf, fast __sincosf), which
    differ from the float64 emulation by a few float32 units in the last place."""
    assert np.abs(PhiloxGenerator(0).randn((12,)).numpy() - np.float32(A1111_DOCSTRING_SEED0)).max() < 4e-7
    assert np.abs(PhiloxGenerator(42).randn((2, 5)).numpy().ravel() - np.float32(CUDA_SEED42_2x5)).max() <= 5e-5


def test_nv_offset_moves_on_by_one_block_per_draw():
    """Draw k of a generator uses counter word 0 = k (torch's offset 4k): the second
    draw's element i is the sine of Philox((1, 0, i, 0), key)."""
    seed = 12345678901  # more than 32 bits: the key is (low, high) = (seed & 0xffffffff, seed >> 32)
    g = PhiloxGenerator(seed)
    g.randn((7,))
    second = g.randn((5,)).numpy()
    assert g.offset == 2
    idx = np.arange(5)
    x, y = philox4x32((1, 0, idx, 0), (seed & 0xFFFFFFFF, seed >> 32))[:2]
    expected, _ = box_muller(x, y)
    assert np.array_equal(second, expected.astype(np.float32))
    assert np.array_equal(PhiloxGenerator(seed, offset=1).randn((5,)).numpy(), second)


@pytest.mark.parametrize("shape", [(1,), (3,), (5, 7), (1, 3, 5), (4, 9, 9)])
def test_any_element_count_is_a_prefix_of_the_same_stream(shape):
    """One Philox block per element, so n need not be a multiple of 4 and the first n
    numbers do not depend on how many are drawn."""
    n = math.prod(shape)
    small = PhiloxGenerator(7).randn(shape).numpy().ravel()
    assert np.array_equal(small, PhiloxGenerator(7).randn((400,)).numpy()[:n])


def test_tensors_larger_than_the_gpu_wrap_around_its_threads():
    """A GPU of 1 multiprocessor x 256 threads makes 1001 normals in one pass of 256
    threads: element k*256 + t is output k of thread t (sin, cos of (x, y), then of (z, w))."""
    assert cuda_threads(1001, 1, 256) == 256 and cuda_threads(1001, 108, 2048) == 1024 and cuda_threads(10**6, 108, 2048) == 108 * 2048
    seed, offset = 5, 3
    g = PhiloxGenerator(seed, offset=offset, gpu=(1, 256))
    out = g.randn((1001,)).numpy()
    assert g.offset == offset + 1

    def output(block, thread, k):
        x, y, z, w = philox4x32((block, 0, thread, 0), (seed, 0))
        s, c = box_muller(*(np.array([x]), np.array([y])) if k < 2 else (np.array([z]), np.array([w])))
        return np.float32((s if k % 2 == 0 else c)[0])

    assert out[44] == output(offset, 44, 0) and out[300] == output(offset, 44, 1)
    assert out[600] == output(offset, 88, 2) and out[1000] == output(offset, 232, 3)
    values, blocks = philox_randn(seed, offset, 2100, threads=256)  # three passes of 4 x 256
    assert blocks == 3 and values[2050] == output(offset + 2, 2, 0)
    assert np.array_equal(PhiloxGenerator(seed, gpu=(108, 2048)).randn((1001,)).numpy(), PhiloxGenerator(seed).randn((1001,)).numpy())


# ----------------------------------------------------------------- sources and ENSD

SEEDS, SHAPE = [3, 4], (4, 8, 8)


def test_cpu_source_is_torchs_cpu_generator():
    noise, gens = initial_noise(SEEDS, SHAPE, "CPU")
    step = noise_source(gens, SHAPE, torch.device("cpu"), torch.float32)(torch.tensor(5.0), torch.tensor(3.0))
    for i, seed in enumerate(SEEDS):
        g = torch.Generator("cpu").manual_seed(seed)
        assert torch.equal(noise[i], torch.randn(SHAPE, generator=g))
        assert torch.equal(step[i], torch.randn(SHAPE, generator=g))  # the step noise continues the same generator


def test_gpu_source_off_cuda_is_the_nv_emulation():
    gpu, _ = initial_noise(SEEDS, SHAPE, "GPU", device="cpu")
    nv, _ = initial_noise(SEEDS, SHAPE, "NV")
    assert torch.equal(gpu, nv)
    assert torch.equal(nv[1], PhiloxGenerator(4).randn(SHAPE))
    assert not torch.equal(nv, initial_noise(SEEDS, SHAPE, "CPU")[0])


@pytest.mark.parametrize("source", ["CPU", "NV"])
def test_ensd_reseeds_only_the_step_noise(source):
    """As A1111's ImageRNG: the starting noise is the seed's first draw either way; with
    ENSD the step noise is drawn from fresh generators seeded seed + ENSD."""
    plain, plain_gens = initial_noise(SEEDS, SHAPE, source)
    delta, delta_gens = initial_noise(SEEDS, SHAPE, source, ensd=31337)
    assert torch.equal(plain, delta)
    cpu = torch.device("cpu")
    steps = [noise_source(delta_gens, SHAPE, cpu, torch.float32)() for _ in range(2)]
    fresh = [make_generator(source, s + 31337) for s in SEEDS]
    for step in steps:
        assert torch.equal(step, torch.stack([g.randn(SHAPE) for g in fresh]))
    continued = [make_generator(source, s) for s in SEEDS]
    [g.randn(SHAPE) for g in continued]  # past the starting noise
    assert torch.equal(noise_source(plain_gens, SHAPE, cpu, torch.float32)(), torch.stack([g.randn(SHAPE) for g in continued]))


def with_flags(key: str, **flags):
    """A registry sampler with the noise flags set (until the registry carries them)."""
    return SimpleNamespace(**{**vars(SAMPLERS[key]), **flags})


def test_infotext_writes_ensd_only_for_ensd_samplers_and_rng_only_when_not_gpu(engines):
    eng = engines("sd1")
    req = eng.complete(replace(BASE, rng="NV", ensd=31337, sampler="Euler a"))
    text = eng._params(req, with_flags("euler_a", uses_ensd=True), "automatic", 42).extra
    assert list(text.items())[:2] == [("ENSD", 31337), ("RNG", "NV")]
    assert "ENSD" not in eng._params(req, with_flags("dpmpp_2m", uses_ensd=False), "automatic", 42).extra
    assert "ENSD" not in eng._params(replace(req, ensd=0), with_flags("euler_a", uses_ensd=True), "automatic", 42).extra
    assert "RNG" not in eng._params(replace(req, rng="GPU"), with_flags("euler_a", uses_ensd=True), "automatic", 42).extra
    for key, info in SAMPLERS.items():  # the registry's flags are A1111's (reference e.1)
        assert getattr(info, "uses_ensd", False) == (key in {"euler_a", "dpm2_a", "dpmpp_2s_a", "dpm_fast", "dpm_adaptive"})
        assert getattr(info, "brownian", False) == (key in {"dpmpp_sde", "dpmpp_2m_sde", "dpmpp_2m_sde_heun", "dpmpp_3m_sde"})


def test_ensd_and_rng_keys_sit_after_the_base_keys_in_a1111_order(engines):
    (img,) = engines("sd1").txt2img(replace(BASE, rng="NV", ensd=31337, sampler="Euler a"))
    assert "Model: tiny-sd1, " in img.infotext and ", RNG: NV, Version: " in img.infotext
    if getattr(SAMPLERS["euler_a"], "uses_ensd", False):
        assert "Model: tiny-sd1, ENSD: 31337, RNG: NV, Version: " in img.infotext


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(rng="cuda"), "rng .* must be one of CPU, GPU, NV; got 'cuda'"),
        (dict(ensd=-1), "ENSD .* from 0 to 4294967295; got -1"),
        (dict(ensd=1.5), "ENSD .* whole number"),
    ],
)
def test_bad_noise_settings_are_refused(engines, change, message):
    with pytest.raises(RequestError, match=message):
        engines("sd1").complete(replace(BASE, **change))


# ----------------------------------------------------------------- Brownian-tree noise

SIGMAS = torch.tensor([14.6146, 6.0, 2.5, 1.0, 0.4, 0.0292, 0.0], dtype=torch.float64)


def test_brownian_noise_is_standard_normal_per_step():
    tree = BrownianNoise([1], (4, 16, 16), SIGMAS, source="CPU")
    for s, s_next in zip(SIGMAS[:-2], SIGMAS[1:-1]):
        n = tree(s, s_next)
        assert n.shape == (1, 4, 16, 16) and n.dtype == torch.float32
        assert abs(float(n.mean())) < 0.15 and abs(float(n.std()) - 1) < 0.1


@pytest.mark.parametrize("source", ["CPU", "NV"])
def test_brownian_noise_is_reproducible_and_per_image(source):
    batch = BrownianNoise([5, 6], SHAPE, SIGMAS, source=source)
    alone = BrownianNoise([6], SHAPE, SIGMAS, source=source)
    again = BrownianNoise([5, 6], SHAPE, SIGMAS, source=source)
    for s, s_next in [(SIGMAS[0], SIGMAS[1]), (SIGMAS[2], SIGMAS[3]), (1.7, 0.9)]:
        b = batch(s, s_next)
        assert torch.equal(b[1], alone(s, s_next)[0])  # image 1 does not depend on image 0
        assert torch.equal(b, again(s, s_next))
        assert not torch.allclose(b[0], b[1])


def test_brownian_increments_add_up():
    tree = BrownianNoise([9], SHAPE, SIGMAS, source="NV")
    a, b, c = 0.4, 1.7, 6.0
    w_ac, w_ab, w_bc = tree.increment(a, c), tree.increment(a, b), tree.increment(b, c)
    assert torch.allclose(w_ac, w_ab + w_bc, atol=1e-5)
    assert torch.equal(tree.increment(c, a), -w_ac)
    # the normalised step noise: (W(sigma_next) - W(sigma)) / sqrt|sigma_next - sigma|
    assert torch.allclose(tree(c, a), -w_ac / math.sqrt(c - a), atol=1e-6)


def test_brownian_tree_draws_with_the_noise_source_and_leaves_torchsde_alone():
    """The tree's top increment W(t_max) - W(t_min) is torchsde's first node draw, seeded
    from the image seed by numpy's SeedSequence; it comes from our source (as A1111's
    randn_local), while a tree made outside ours still draws with torch's own generator."""
    import torchsde

    seed_w = int(np.random.SeedSequence(entropy=11, pool_size=24).generate_state(3)[0])
    tree = BrownianNoise([11], SHAPE, SIGMAS, source="NV")
    span = math.sqrt(tree.t_max - tree.t_min)
    top = tree.increment(tree.t_min, tree.t_max)[0]
    assert torch.allclose(top, PhiloxGenerator(seed_w).randn(SHAPE) * span, rtol=1e-6, atol=1e-6)
    cpu_top = BrownianNoise([11], SHAPE, SIGMAS, source="CPU").increment(tree.t_min, tree.t_max)[0]
    assert torch.allclose(cpu_top, torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed_w)) * span, rtol=1e-6, atol=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = torchsde.BrownianTree(0.0, torch.zeros(SHAPE), 1.0, entropy=11)(0.0, 1.0)
    assert torch.equal(plain, torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed_w)))


def test_brownian_noise_needs_the_steps_sigmas():
    with pytest.raises(TypeError, match=r"noise\(sigma, sigma_next\)"):
        BrownianNoise([1], SHAPE, SIGMAS)()


def _toy_sde(denoise, x, sigmas, *, noise=None, callback=None):
    """A one-line SDE step that asks for noise between the step's sigmas."""
    for i in range(len(sigmas) - 1):
        denoised = denoise(x, sigmas[i])
        x = denoised + noise(sigmas[i], sigmas[i + 1]) * sigmas[i + 1] if sigmas[i + 1] > 0 else denoised
        if callback is not None:
            callback(i, x, denoised)
    return x


def test_engine_gives_brownian_samplers_tree_noise_per_image_seed(engines):
    """A sampler flagged brownian gets one tree per image seed: image 43 is the same
    alone or second in a batch, and ENSD (which re-seeds generators, not trees) changes nothing."""
    eng = engines("sd1")
    info = with_flags("dpmpp_2m_sde", brownian=True, uses_ensd=False, fn=_toy_sde)
    req = eng.complete(replace(BASE, sampler="DPM++ 2M SDE", rng="NV"))
    plan = eng._encode(req)
    batch = eng.sample(req, info, "automatic", [42, 43], plan)
    alone = eng.sample(req, info, "automatic", [43], plan)
    assert float((batch[1] - alone[0]).abs().max() / alone.abs().max()) < 1e-5  # batched-kernel rounding only
    assert torch.equal(eng.sample(replace(req, ensd=31337), info, "automatic", [43], plan), alone)
    assert float((eng.sample(replace(req, rng="CPU"), info, "automatic", [43], plan) - alone).abs().max() / alone.abs().max()) > 1e-2


# ----------------------------------------------------------------- engine, infotext, --from


def test_engine_noise_source_changes_the_image_and_is_reproducible(engines):
    eng = engines("sd1")
    nv, nv_again, cpu, gpu = (eng.txt2img(replace(BASE, rng=r))[0] for r in ("NV", "NV", "CPU", "GPU"))
    assert np.array_equal(pixels(nv), pixels(nv_again))
    assert np.abs(pixels(nv) - pixels(cpu)).mean() > 5
    assert np.array_equal(pixels(gpu), pixels(nv))  # GPU off CUDA is the NV emulation
    assert ", RNG: NV, " in nv.infotext and ", RNG: CPU, " in cpu.infotext and "RNG" not in gpu.infotext


def test_ensd_changes_ancestral_images_only(engines):
    eng = engines("sd1")
    a, b = (eng.txt2img(replace(BASE, sampler="Euler a", ensd=e))[0] for e in (0, 31337))
    assert np.abs(pixels(a) - pixels(b)).mean() > 1
    c, d = (eng.txt2img(replace(BASE, sampler="DPM++ 2M", ensd=e))[0] for e in (0, 31337))
    assert np.array_equal(pixels(c), pixels(d))


def _generate(capsys, *args) -> str:
    assert main(["generate", *args]) == 0
    return capsys.readouterr().out.split("  seed ")[0]


def test_generate_with_rng_nv_and_from_recreate_the_same_pixels(home, capsys):
    first = _generate(capsys, "a red barn", "--seed", "11", "--sampler", "Euler a", "--rng", "nv", "--model", "tiny-sd1", "--home", str(home), *FAST)
    text = Image.open(first).text["parameters"]
    assert ", RNG: NV, " in text
    second = _generate(capsys, "--from", first, "--home", str(home), "-q")
    assert second != first
    assert np.array_equal(np.asarray(Image.open(first)), np.asarray(Image.open(second)))
    assert Image.open(second).text["parameters"] == text


def test_from_honours_ensd_written_in_the_infotext(home, capsys):
    if not getattr(SAMPLERS["euler_a"], "uses_ensd", False):
        pytest.skip("the sampler registry does not flag the ENSD samplers yet, so ENSD is not written")
    first = _generate(capsys, "a red barn", "--seed", "11", "--sampler", "Euler a", "--ensd", "31337", "--model", "tiny-sd1", "--home", str(home), *FAST)
    assert ", ENSD: 31337, RNG: CPU, " in Image.open(first).text["parameters"]
    second = _generate(capsys, "--from", first, "--home", str(home), "-q")
    assert np.array_equal(np.asarray(Image.open(first)), np.asarray(Image.open(second)))


def _png_with(path, parameters):
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", parameters)
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    return str(path)


def test_an_infotext_without_rng_is_read_as_gpu(tmp_path):
    base = "a cat\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 512x512"
    req, _ = _request_from_image(_png_with(tmp_path / "a.png", base))
    assert (req.rng, req.ensd) == ("GPU", 0)
    req, _ = _request_from_image(_png_with(tmp_path / "b.png", base + ", ENSD: 31337, RNG: NV"))
    assert (req.rng, req.ensd) == ("NV", 31337)
    assert noise_settings(params_from_infotext(base + ", RNG: cpu")) == ("CPU", 0)
    with pytest.raises(InfotextError, match="'RNG' = 'Quantum'"):
        noise_settings(params_from_infotext(base + ", RNG: Quantum"))


def test_the_cuda_check_script_says_so_without_cuda():
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: run benchmarks/check_cuda_randn.py itself")
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "check_cuda_randn.py")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "no CUDA device" in done.stdout
