"""Tests for the procedural demo dataset and its colour checker."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest

from brushwork.demo import colour
from brushwork.demo.scenes import SIZE, Scene, attribute_words, caption, dataset, make_example, random_scene, render

N = 200


@pytest.fixture(scope="module")
def examples():
    return list(dataset(7, N))


def _scenes(seed: int, n: int) -> list[Scene]:
    rng = np.random.default_rng(seed)
    return [random_scene(rng) for _ in range(n)]


def _rate(pairs, fn) -> float:
    return float(np.mean([fn(a, b) for a, b in pairs]))


def _matched(base: list[Scene], key_a: dict, key_b: dict, measure, seed: int = 0):
    """Measure pairs of renders of the same scenes differing only in some fields."""
    out = []
    for i, sc in enumerate(base):
        a = render(dataclasses.replace(sc, **key_a), np.random.default_rng(seed + i))
        b = render(dataclasses.replace(sc, **key_b), np.random.default_rng(seed + i))
        out.append((measure(a), measure(b)))
    return out


def test_determinism_and_shapes():
    img1, cap1, sc1 = make_example(123)
    img2, cap2, sc2 = make_example(123)
    assert img1.shape == (SIZE, SIZE, 3) and img1.dtype == np.uint8
    assert np.array_equal(img1, img2) and cap1 == cap2 and sc1 == sc2
    img3, _, _ = make_example(124)
    assert not np.array_equal(img1, img3)
    a = [c for _, c, _ in dataset(3, 5)]
    b = [c for _, c, _ in dataset(3, 5)]
    assert a == b
    assert not all(np.array_equal(x[0], y[0]) for x, y in zip(dataset(3, 3), dataset(4, 3)))


def test_scene_frequencies():
    scenes = _scenes(11, 2000)
    times = {t: sum(s.time == t for s in scenes) / 2000 for t in ("sunrise", "day", "sunset", "night")}
    assert all(0.2 < v < 0.3 for v in times.values())
    assert 0.33 < np.mean([s.water is not None for s in scenes]) < 0.47
    assert not any(s.forest for s in scenes if s.terrain == "desert")
    assert not any(s.clouds for s in scenes if s.time == "night")
    assert 0.18 < np.mean([s.haze for s in scenes]) < 0.32


def test_captions_only_mention_present_things(examples):
    empty = 0
    for _, cap, sc in examples:
        words = cap.lower()
        empty += cap == ""
        if "snow" in words:
            assert sc.terrain == "snowy mountains"
        if re.search(r"\b(lake)\b", words):
            assert sc.water == "lake"
        if re.search(r"\b(sea|ocean|coast)\b", words):
            assert sc.water == "sea"
        if "mountain" in words or "peaks" in words:
            assert sc.terrain in ("mountains", "snowy mountains")
        if "hills" in words:
            assert sc.terrain == "hills"
        if "desert" in words or "dunes" in words or "sand" in words:
            assert sc.terrain == "desert"
        if "cloud" in words:
            assert sc.clouds
        if "forest" in words or "trees" in words:
            assert sc.forest
        if re.search(r"\b(misty|foggy|mist|fog|hazy)\b", words):
            assert sc.haze
        if re.search(r"\b(night|moonlit|starry)\b", words):
            assert sc.time == "night"
        if re.search(r"\b(sunset|dusk|evening)\b", words):
            assert sc.time == "sunset"
        if re.search(r"\b(sunrise|dawn|morning)\b", words):
            assert sc.time == "sunrise"
        if re.search(r"\b(day|daytime|midday|blue sky)\b", words):
            assert sc.time == "day"
    assert 0.04 <= empty / len(examples) <= 0.18


def test_caption_rate_of_empty_and_variety():
    rng = np.random.default_rng(5)
    sc = _scenes(5, 1)[0]
    caps = [caption(sc, rng) for _ in range(1000)]
    assert 0.07 < caps.count("") / 1000 < 0.13
    assert len(set(caps)) > 300


def test_relations_on_matched_pairs():
    base = _scenes(21, 90)
    night_day = _matched(base, {"time": "night"}, {"time": "day"}, colour.sky_brightness)
    assert _rate(night_day, lambda n, d: n < d) >= 0.95
    sunset_day = _matched(base, {"time": "sunset"}, {"time": "day"}, colour.sky_warmth)
    assert _rate(sunset_day, lambda s, d: s > d) >= 0.95
    sunrise_day = _matched(base, {"time": "sunrise"}, {"time": "day"}, colour.sky_warmth)
    assert _rate(sunrise_day, lambda s, d: s > d) >= 0.95
    snow_hills = _matched(
        base, {"terrain": "snowy mountains", "peaks": ((0.3, 0.3, 0.5), (0.75, 0.25, 0.4))}, {"terrain": "hills"},
        colour.near_white_fraction,
    )
    assert _rate(snow_hills, lambda s, h: s > h) >= 0.95
    desert_hills = _matched(base, {"terrain": "desert", "forest": False}, {"terrain": "hills"}, colour.sand_score)
    assert _rate(desert_hills, lambda d, h: d > h) >= 0.95
    hills_desert = _matched(base, {"terrain": "hills"}, {"terrain": "desert", "forest": False}, colour.greenness)
    assert _rate(hills_desert, lambda h, d: h > d) >= 0.95
    lake_dry = _matched(
        base, {"water": "lake", "water_top": 0.77}, {"water": None}, colour.bottom_blueness
    )
    assert _rate(lake_dry, lambda w, d: w > d) >= 0.95


def test_adherence_of_ground_truth(examples):
    scores = [colour.adherence(img, attribute_words(sc)) for img, _, sc in examples]
    assert np.mean(scores) >= 0.97
    assert colour.adherence(examples[0][0], []) == 1.0
    with pytest.raises(ValueError):
        colour.adherence(examples[0][0], ["volcano"])


def test_adherence_detects_wrong_prompt():
    # A day render judged against "night" fails; a desert render fails "snowy".
    sc = dataclasses.replace(_scenes(3, 1)[0], time="day", terrain="desert", haze=False, water=None, forest=False)
    img = render(sc, np.random.default_rng(0))
    assert colour.adherence(img, ["day", "desert"]) == 1.0
    assert colour.adherence(img, ["night", "snowy", "water"]) == 0.0


def test_colour_measures_are_size_independent():
    img, _, _ = make_example(42)
    big = np.repeat(np.repeat(img, 2, axis=0), 2, axis=1)
    for fn in (colour.sky_brightness, colour.sky_warmth, colour.near_white_fraction,
               colour.sand_score, colour.bottom_blueness, colour.greenness):
        assert fn(big) == pytest.approx(fn(img), abs=1e-3 + 1e-3 * abs(fn(img)))
