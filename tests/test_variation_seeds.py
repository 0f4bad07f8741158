"""Variation seeds and seed resize (brushwork.noise): slerp, variation_noise, batch_seeds."""
import random

import pytest
import torch

from brushwork import RequestError
from brushwork.noise import (
    VARIATION_LINEAR_ABOVE,
    PhiloxGenerator,
    batch_seeds,
    initial_noise,
    make_generator,
    noise_source,
    randn_local,
    resized_noise_shape,
    slerp,
    variation_noise,
)

SHAPE = (4, 8, 8)
SEEDS = [7, 7, 7]
SUBSEEDS = [100, 101, 102]
SOURCES = ["CPU", "GPU", "NV"]  # GPU off CUDA is the NV emulation
CPU = torch.device("cpu")


def steps(gens, shape=SHAPE, n=2):
    draw = noise_source(gens, shape, CPU, torch.float32)
    return [draw() for _ in range(n)]


# ----------------------------------------------------------------- slerp


def test_slerp_ends_are_exact():
    low, high = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1)), torch.randn(SHAPE, generator=torch.Generator().manual_seed(2))
    assert torch.equal(slerp(1.0, low, high), high)
    assert torch.equal(slerp(0.0, low, high), low)


def test_slerp_keeps_unit_variance_where_lerp_shrinks_it():
    g = torch.Generator().manual_seed(3)
    low, high = torch.randn((4, 64, 64), generator=g), torch.randn((4, 64, 64), generator=g)
    mixed = slerp(0.5, low, high)
    assert abs(mixed.std().item() - 1.0) < 0.03
    assert abs((0.5 * low + 0.5 * high).std().item() - 0.7071) < 0.03  # what plain lerp would give


def test_slerp_normalises_along_the_height():
    """The cosine is per (channel, column): scaling one column of ``high`` leaves the
    angle there and so the weights unchanged, only ``high``'s own values scale."""
    g = torch.Generator().manual_seed(4)
    low, high = torch.randn(SHAPE, generator=g), torch.randn(SHAPE, generator=g)
    scaled = high.clone()
    scaled[:, :, 3] *= 2
    a, b = slerp(0.3, low, high), slerp(0.3, low, scaled)
    keep = [c for c in range(SHAPE[2]) if c != 3]
    assert torch.allclose(a[:, :, keep], b[:, :, keep], atol=0, rtol=0)
    omega = torch.acos(((low / low.norm(dim=1, keepdim=True)) * (high / high.norm(dim=1, keepdim=True))).sum(1))
    w_low, w_high = torch.sin(0.7 * omega) / torch.sin(omega), torch.sin(0.3 * omega) / torch.sin(omega)
    assert torch.allclose(a, w_low[:, None] * low + w_high[:, None] * high, atol=1e-6)


def test_slerp_linear_branch_has_the_reversed_weights():
    low = torch.randn(SHAPE, generator=torch.Generator().manual_seed(5))
    high = 2 * low  # parallel: every cosine is 1 > 0.9995
    assert VARIATION_LINEAR_ABOVE == 0.9995
    out = slerp(0.25, low, high)
    assert torch.allclose(out, 0.25 * low + 0.75 * high)  # = 1.75 low, not 0.75 low + 0.25 high
    assert torch.allclose(out, 1.75 * low)
    assert torch.equal(slerp(0.4, low, low), low * 0.4 + low * 0.6)  # identical inputs


def test_slerp_takes_a_batch_image_by_image():
    g = torch.Generator().manual_seed(6)
    low, high = torch.randn((3,) + SHAPE, generator=g), torch.randn((3,) + SHAPE, generator=g)
    high[1] = 3 * low[1]  # image 1 takes the linear branch on its own
    out = slerp(0.2, low, high)
    for i in range(3):
        assert torch.equal(out[i], slerp(0.2, low[i], high[i]))
    assert torch.allclose(out[1], 0.2 * low[1] + 0.8 * high[1])
    with pytest.raises(ValueError):
        slerp(0.5, low, high[:2])


# ----------------------------------------------------------------- variation_noise


@pytest.mark.parametrize("source", SOURCES)
def test_strength_zero_is_initial_noise_and_its_generators(source):
    for ensd in (0, 31337):
        plain, plain_gens = initial_noise([7, 8, 9], SHAPE, source, ensd)
        varied, varied_gens = variation_noise([7, 8, 9], SUBSEEDS, 0.0, SHAPE, source, ensd)
        assert torch.equal(plain, varied)
        for a, b in zip(steps(plain_gens), steps(varied_gens)):
            assert torch.equal(a, b)


@pytest.mark.parametrize("source", SOURCES)
def test_strength_one_is_the_subseed_noise(source):
    noise, _ = variation_noise(SEEDS, SUBSEEDS, 1.0, SHAPE, source)
    for i, sub in enumerate(SUBSEEDS):
        assert torch.equal(noise[i], randn_local(source, sub, SHAPE))
    seed_noise = randn_local(source, 7, SHAPE)
    assert not torch.equal(noise[0], seed_noise)


@pytest.mark.parametrize("source", SOURCES)
def test_variation_is_the_slerp_of_seed_and_subseed(source):
    noise, gens = variation_noise(SEEDS, SUBSEEDS, 0.3, SHAPE, source)
    seed_noise = randn_local(source, 7, SHAPE)
    for i, sub in enumerate(SUBSEEDS):
        assert torch.equal(noise[i], slerp(0.3, seed_noise, randn_local(source, sub, SHAPE)))
    assert not torch.equal(noise[0], noise[1])  # same seed, different subseeds
    # the step noise continues the main seed's generator, untouched by the subseed
    continued = [make_generator(source, s) for s in SEEDS]
    [g.randn(SHAPE) for g in continued]
    assert torch.equal(steps(gens, n=1)[0], torch.stack([g.randn(SHAPE) for g in continued]))


@pytest.mark.parametrize("source", SOURCES)
def test_ensd_reseeds_from_the_main_seed(source):
    _, gens = variation_noise(SEEDS, SUBSEEDS, 0.5, SHAPE, source, ensd=31337)
    fresh = [make_generator(source, s + 31337) for s in SEEDS]
    for step in steps(gens):
        assert torch.equal(step, torch.stack([g.randn(SHAPE) for g in fresh]))


def test_nv_variation_is_deterministic_and_gpu_off_cuda_matches_it():
    a, _ = variation_noise(SEEDS, SUBSEEDS, 0.6, SHAPE, "NV", resize_from=(48, 80))
    b, _ = variation_noise(SEEDS, SUBSEEDS, 0.6, SHAPE, "NV", resize_from=(48, 80))
    gpu, _ = variation_noise(SEEDS, SUBSEEDS, 0.6, SHAPE, "GPU", device="cpu", resize_from=(48, 80))
    assert torch.equal(a, b) and torch.equal(a, gpu)
    assert torch.equal(randn_local("NV", 100, SHAPE), PhiloxGenerator(100).randn(SHAPE))
    cpu, _ = variation_noise(SEEDS, SUBSEEDS, 0.6, SHAPE, "CPU", resize_from=(48, 80))
    assert not torch.equal(a, cpu)


def test_subseeds_must_match_the_seeds():
    with pytest.raises(ValueError):
        variation_noise(SEEDS, SUBSEEDS[:2], 0.5, SHAPE)
    noise, _ = variation_noise(SEEDS, None, 0.5, SHAPE)  # no subseeds: no variation
    assert torch.equal(noise, initial_noise(SEEDS, SHAPE)[0])


# ----------------------------------------------------------------- seed resize


def test_resized_noise_shape():
    assert resized_noise_shape(SHAPE, None) == SHAPE
    assert resized_noise_shape(SHAPE, (0, 512)) == SHAPE  # 0 means off
    assert resized_noise_shape((4, 64, 96), (512, 768)) == (4, 96, 64)  # (width, height) in pixels
    assert resized_noise_shape(SHAPE, (70, 41)) == (4, 5, 8)


@pytest.mark.parametrize("source", SOURCES)
def test_resize_to_larger_pastes_the_old_noise_in_the_centre(source):
    new = (4, 12, 16)  # 96x128 pixels, resized from 64x64 (8x8 latent)
    noise, gens = variation_noise([7, 9], None, 0.0, new, source, resize_from=(64, 64))
    for i, seed in enumerate([7, 9]):
        old = randn_local(source, seed, (4, 8, 8))
        assert torch.equal(noise[i, :, 2:10, 4:12], old)  # offsets (12-8)//2 and (16-8)//2
        # the rest is the image generator's own first draw at the new size
        rest = randn_local(source, seed, new)
        mask = torch.ones(new, dtype=torch.bool)
        mask[:, 2:10, 4:12] = False
        assert torch.equal(noise[i][mask], rest[mask])
    # the generators are where a plain run leaves them: one draw of the new shape
    _, plain_gens = initial_noise([7, 9], new, source)
    for a, b in zip(steps(gens, new), steps(plain_gens, new)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("source", ["CPU", "NV"])
def test_resize_to_smaller_crops_the_centre(source):
    new = (4, 6, 5)
    noise, _ = variation_noise([3], None, 0.0, new, source, resize_from=(64, 80))  # old latent 10 x 8
    old = randn_local(source, 3, (4, 10, 8))
    # rows: shift (6-10)//2 = -2 -> old rows 2..7 (length 10 - 4 = 6) fill new rows 0..5
    assert torch.equal(noise[0, :, 0:6, 0:4], old[:, 2:8, 2:6])
    # columns: shift (5-8)//2 = -2 -> old columns 2..5 (length 8 - 4 = 4) fill new 0..3;
    # the odd difference leaves the new last column to the new noise
    assert torch.equal(noise[0, :, :, 4], randn_local(source, 3, new)[:, :, 4])


def test_resize_odd_growth_sits_towards_the_top_left():
    noise, _ = variation_noise([5], None, 0.0, (4, 9, 9), "CPU", resize_from=(48, 48))  # 6 -> 9: offset 1
    assert torch.equal(noise[0, :, 1:7, 1:7], randn_local("CPU", 5, (4, 6, 6)))


@pytest.mark.parametrize("source", SOURCES)
def test_resize_with_variation_slerps_at_the_old_size(source):
    new, old_shape = (4, 12, 12), (4, 8, 8)
    noise, gens = variation_noise(SEEDS, SUBSEEDS, 0.4, new, source, ensd=0, resize_from=(64, 64))
    for i, sub in enumerate(SUBSEEDS):
        mixed = slerp(0.4, randn_local(source, 7, old_shape), randn_local(source, sub, old_shape))
        assert torch.equal(noise[i, :, 2:10, 2:10], mixed)
        assert torch.equal(noise[i, :, 0, :], randn_local(source, 7, new)[:, 0, :])
    one, _ = variation_noise(SEEDS, SUBSEEDS, 1.0, new, source, resize_from=(64, 64))
    assert torch.equal(one[1, :, 2:10, 2:10], randn_local(source, 101, old_shape))
    _, plain_gens = initial_noise(SEEDS, new, source)
    for a, b in zip(steps(gens, new), steps(plain_gens, new)):
        assert torch.equal(a, b)


def test_resize_to_the_same_size_is_no_resize():
    a, _ = variation_noise(SEEDS, SUBSEEDS, 0.5, SHAPE, "CPU", resize_from=(64, 64))
    b, _ = variation_noise(SEEDS, SUBSEEDS, 0.5, SHAPE, "CPU")
    assert torch.equal(a, b)


# ----------------------------------------------------------------- batch seeds


def test_batch_seeds_rule():
    assert batch_seeds(10, 50, 0.0, 3) == ([10, 11, 12], [50, 51, 52])
    assert batch_seeds(10, 50, 0.25, 3) == ([10, 10, 10], [50, 51, 52])
    assert batch_seeds(10, 50, 1.0, 1) == ([10], [50])


def test_batch_seeds_random_subseed():
    seeds, subseeds = batch_seeds(10, -1, 0.5, 2, rng=random.Random(0))
    expected = random.Random(0).randint(0, 2**32 - 2)
    assert seeds == [10, 10] and subseeds == [expected, expected + 1]
    seeds, subseeds = batch_seeds(None, None, 0.5, 2, rng=random.Random(1))
    r = random.Random(1)
    first, second = r.randint(0, 2**32 - 2), r.randint(0, 2**32 - 2)
    assert seeds == [first, first] and subseeds == [second, second + 1]
    a = batch_seeds(1, -1, 0.5, 1)[1][0]
    assert 0 <= a <= 2**32 - 2
    with pytest.raises(RequestError):
        batch_seeds(1, -5, 0.5, 1)
