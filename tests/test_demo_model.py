"""The shipped demo model: it draws what the prompt says, on a CPU, in seconds.

Each relation is measured over SEEDS seeds with a colour-statistics checker
(brushwork.demo.colour); the issue asks that each holds in at least 90% of seeds.
The measured rates are printed (pytest -s) and recorded in docs/demo-model.md.
"""
import numpy as np
import pytest

from brushwork import Engine, GenerationRequest
from brushwork.catalog import PACKAGED_DEMO
from brushwork.demo import colour

pytestmark = pytest.mark.skipif(not PACKAGED_DEMO.is_file(), reason="the demo model is not built (python -m brushwork.demo.train)")

SEEDS = list(range(20))
REQUIRED_RATE = 0.9


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    eng = Engine(tmp_path_factory.mktemp("empty-home"), device="cpu")
    eng.load()  # no user checkpoints: the demo is the default
    return eng


def images(eng, prompt, seeds=SEEDS, **kw):
    """One image per seed (batched four at a time; per-image noise keeps them independent)."""
    out = []
    for i in range(0, len(seeds), 4):
        chunk = seeds[i : i + 4]
        req = GenerationRequest(prompt, seed=chunk[0], batch_size=len(chunk), **kw)
        out += [np.asarray(img.image) for img in eng.txt2img(req)]
    return out


def rate(pairs, holds):
    results = [holds(a, b) for a, b in pairs]
    return sum(results) / len(results)


def test_demo_is_the_default_and_listed(demo):
    assert demo.model.path == PACKAGED_DEMO and demo.model.name == "demo"
    assert demo.model.spec.family == "sd1"
    req = demo.complete(GenerationRequest("x"))
    assert (req.width, req.height) == (128, 128)
    assert PACKAGED_DEMO.stat().st_size <= 30 * 2**20


@pytest.mark.parametrize(
    "a, b, measure, relation",
    [
        ("cinematic landscape, great mountain, night", "cinematic landscape, great mountain, day", colour.sky_brightness, "lower"),
        ("cinematic landscape, great mountain, sunset", "cinematic landscape, great mountain, day", colour.sky_warmth, "higher"),
        ("snowy mountains, landscape", "green hills, landscape", colour.near_white_fraction, "higher"),
        ("desert dunes, landscape", "green hills, landscape", colour.sand_score, "higher"),
        ("cinematic landscape, great mountain, day, lake", "cinematic landscape, great mountain, day", colour.bottom_blueness, "higher"),
    ],
)
def test_prompt_words_change_the_picture(demo, a, b, measure, relation, capsys):
    pairs = list(zip(images(demo, a), images(demo, b)))
    cmp = (lambda x, y: measure(x) < measure(y)) if relation == "lower" else (lambda x, y: measure(x) > measure(y))
    r = rate(pairs, cmp)
    with capsys.disabled():
        print(f"\n{measure.__name__}: '{a}' {relation} than '{b}' in {r:.0%} of {len(pairs)} seeds")
    assert r >= REQUIRED_RATE


def test_desert_has_a_sand_coloured_lower_half(demo):
    imgs = images(demo, "desert dunes, landscape")
    r = sum(colour.sand_score(i) > colour.DESERT_MIN_SAND for i in imgs) / len(imgs)
    assert r >= REQUIRED_RATE


def test_cfg_7_follows_the_prompt_better_than_cfg_1(demo, capsys):
    """Three-attribute prompts: at CFG 1 some attribute is often lost, at CFG 7 rarely."""
    prompts = [("sunset, snowy mountains, lake", ["sunset", "snowy", "water"]), ("night, desert dunes, sea", ["night", "desert", "water"]),
               ("sunrise, green hills, lake", ["sunrise", "hills", "water"]), ("day, snowy mountains", ["day", "snowy"])]
    seeds = SEEDS[:8]

    def mean_adherence(cfg):
        scores = [colour.adherence(img, words) for p, words in prompts for img in images(demo, p, seeds, cfg_scale=cfg)]
        return float(np.mean(scores))

    low, high = mean_adherence(1.0), mean_adherence(7.0)
    with capsys.disabled():
        print(f"\nmean adherence over {len(prompts)} prompts x {len(seeds)} seeds: CFG 1 {low:.3f}, CFG 7 {high:.3f}")
    assert high > low and high >= 0.95


def test_more_steps_converge(demo):
    def dist(a, b):
        return float(np.abs(a.astype(np.float32) - b.astype(np.float32)).mean())

    for seed in (0, 1, 2):
        ref, s20, s4 = (images(demo, "cinematic landscape, great mountain", [seed], steps=n)[0] for n in (100, 20, 4))
        assert dist(s20, ref) < dist(s4, ref)


def test_seeds_matter_and_repeat(demo):
    a, b = images(demo, "cinematic landscape, great mountain", [5]), images(demo, "cinematic landscape, great mountain", [5])
    c = images(demo, "cinematic landscape, great mountain", [6])
    assert np.array_equal(a[0], b[0])
    assert np.abs(a[0].astype(int) - c[0].astype(int)).mean() > 3
