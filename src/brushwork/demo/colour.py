"""Colour statistics for checking demo-model images against their prompts.

All measures work on uint8 RGB arrays of shape (H, W, 3) of any size: the
image regions are given as fractions of the height, so 128 px and 256 px
renders of the same scene give about the same numbers.

The thresholds below were chosen from ground-truth renders of
:mod:`brushwork.demo.scenes` so that at least 97% of scenes pass every check
their attributes imply (see ``tests/test_demo_scenes.py``).
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

# Thresholds used by :func:`adherence`.
NIGHT_MAX_BRIGHTNESS = 50.0  # night: sky_brightness below this
DAY_MIN_BRIGHTNESS = 90.0  # day: sky_brightness above this ...
DAY_MAX_WARMTH = -40.0  # ... and sky_warmth below this (blue sky)
SUNSET_MIN_WARMTH = 60.0  # sunset: sky_warmth above this
SUNRISE_MIN_WARMTH = 0.0  # sunrise: sky_warmth above this ...
SUNRISE_MIN_BRIGHTNESS = 90.0  # ... and sky_brightness above this
SNOW_MIN_WHITE = 0.03  # snowy: near_white_fraction above this
HILLS_MIN_GREEN = 0.12  # hills: greenness above this
DESERT_MIN_SAND = 0.1  # desert: sand_score above this
WATER_MIN_BLUE = 10.0  # water: bottom_blueness above this

ADHERENCE_KEYS = ("day", "night", "sunset", "sunrise", "snowy", "hills", "desert", "water")


def _rows(img: np.ndarray, start: float, stop: float) -> np.ndarray:
    """Rows from ``start`` to ``stop`` (fractions of the height) as float32."""
    img = np.asarray(img)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB array, got shape {img.shape}")
    h = img.shape[0]
    a = int(round(start * h))
    b = max(int(round(stop * h)), a + 1)
    return img[a:b].astype(np.float32)


def _luma(px: np.ndarray) -> np.ndarray:
    return 0.299 * px[..., 0] + 0.587 * px[..., 1] + 0.114 * px[..., 2]


def sky_brightness(img: np.ndarray) -> float:
    """Mean luminance (0-255, Rec. 601 weights) of the top 30% of rows.

    Low for night skies (about 10-20), high for day and sunrise skies.
    """
    return float(_luma(_rows(img, 0.0, 0.3)).mean())


def sky_warmth(img: np.ndarray) -> float:
    """Mean red minus blue (-255..255) over the top 40% of rows.

    Strongly positive for sunset skies, mildly positive for sunrise, negative
    for blue day skies and around zero or below at night.
    """
    px = _rows(img, 0.0, 0.4)
    return float((px[..., 0] - px[..., 2]).mean())


def near_white_fraction(img: np.ndarray) -> float:
    """Fraction of pale, unsaturated pixels in rows 25%-65% (where peaks are).

    A pixel counts when its darkest channel is at least 140 and its channels
    differ by at most 40 - snow caps, including tinted or moonlit snow.  High
    for snowy mountains, near zero for green hills and rock.
    """
    px = _rows(img, 0.25, 0.65)
    lo = px.min(axis=-1)
    hi = px.max(axis=-1)
    return float(((lo >= 140.0) & (hi - lo <= 40.0)).mean())


def sand_score(img: np.ndarray) -> float:
    """Fraction of sand-coloured pixels in the lower half of the image.

    Sand is yellow-orange whatever the light: R > G > B with R - G > 5% of
    R, R - B > 15% of R, G - B > 10% of R and R > 40.  Catches sand in
    daylight, at sunset, in haze and (dimly) at night; green grass, grey
    rock and blue water fail.
    """
    px = _rows(img, 0.5, 1.0)
    r, g, b = px[..., 0], px[..., 1], px[..., 2]
    sand = (r > 40.0) & (g > b) & (r - g > 0.05 * r) & (r - b > 0.15 * r) & (g - b > 0.1 * r)
    return float(sand.mean())


def bottom_blueness(img: np.ndarray) -> float:
    """Mean of B - (R + G) / 2 over the bottom 20% of rows.

    Positive where water covers the bottom of the image, negative for sand,
    grass and warm-lit ground.
    """
    px = _rows(img, 0.8, 1.0)
    return float((px[..., 2] - 0.5 * (px[..., 0] + px[..., 1])).mean())


def greenness(img: np.ndarray) -> float:
    """Fraction of green-dominant pixels in the lower half of the image.

    A pixel counts when G > max(R, B) + 4 - grass and trees in any
    light.  High for green hills, low for desert, rock and water.
    """
    px = _rows(img, 0.5, 1.0)
    r, g, b = px[..., 0], px[..., 1], px[..., 2]
    return float((g > np.maximum(r, b) + 4.0).mean())


def checks(img: np.ndarray, scene_words: Iterable[str]) -> dict[str, bool]:
    """Pass/fail of each check implied by ``scene_words`` (keys of ADHERENCE_KEYS)."""
    out: dict[str, bool] = {}
    cache: dict[str, float] = {}

    def m(name: str, fn) -> float:
        if name not in cache:
            cache[name] = fn(img)
        return cache[name]

    for word in scene_words:
        if word == "night":
            out[word] = m("b", sky_brightness) < NIGHT_MAX_BRIGHTNESS
        elif word == "day":
            out[word] = m("b", sky_brightness) > DAY_MIN_BRIGHTNESS and m("w", sky_warmth) < DAY_MAX_WARMTH
        elif word == "sunset":
            out[word] = m("w", sky_warmth) > SUNSET_MIN_WARMTH
        elif word == "sunrise":
            out[word] = m("w", sky_warmth) > SUNRISE_MIN_WARMTH and m("b", sky_brightness) > SUNRISE_MIN_BRIGHTNESS
        elif word == "snowy":
            out[word] = m("n", near_white_fraction) > SNOW_MIN_WHITE
        elif word == "hills":
            out[word] = m("g", greenness) > HILLS_MIN_GREEN
        elif word == "desert":
            out[word] = m("s", sand_score) > DESERT_MIN_SAND
        elif word == "water":
            out[word] = m("u", bottom_blueness) > WATER_MIN_BLUE
        else:
            raise ValueError(f"unknown attribute word {word!r}; expected one of {ADHERENCE_KEYS}")
    return out


def adherence(img: np.ndarray, scene_words: Iterable[str]) -> float:
    """Fraction (0-1) of the colour checks implied by ``scene_words`` that pass.

    ``scene_words`` holds attribute keys: "day", "night", "sunset",
    "sunrise", "snowy", "hills", "desert", "water".  With no words there is
    nothing to contradict and the result is 1.0.
    """
    result = checks(img, scene_words)
    if not result:
        return 1.0
    return sum(result.values()) / len(result)
