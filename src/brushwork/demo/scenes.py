"""Procedural captioned landscapes for training the tiny demo model.

Every scene is a bold, smooth colour layout (sky gradient, sun or moon,
soft clouds, one kind of terrain, optional water, forest and haze) so that a
small diffusion model can learn the mapping from caption words to colours in
a short CPU training run.  Only numpy is used; a 128x128 render takes about a
millisecond.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

SIZE = 128

TIMES = ("sunrise", "day", "sunset", "night")
TERRAINS = ("mountains", "snowy mountains", "hills", "desert")
WATERS = (None, "lake", "sea")

# Pixel-centre coordinates in [0, 1]; row vector X, column vector Y.
_X = ((np.arange(SIZE, dtype=np.float32) + 0.5) / SIZE)[None, :]
_Y = ((np.arange(SIZE, dtype=np.float32) + 0.5) / SIZE)[:, None]
_X1 = _X[0]
_Y1 = _Y[:, 0]


@dataclass(frozen=True)
class Scene:
    """Everything needed to draw (and caption) one landscape.

    Positions are fractions of the image size: x from the left, y from the
    top.  ``horizon`` is the row where the ground meets the sky.
    """

    time: str
    terrain: str
    water: str | None = None
    clouds: bool = False
    forest: bool = False
    haze: bool = False
    horizon: float = 0.55
    # Peaks (mountains) or crests (hills/dunes): (x centre, height, half width).
    peaks: tuple[tuple[float, float, float], ...] = ()
    phase: float = 0.0
    sun: tuple[float, float] = (0.5, 0.2)
    cloud_blobs: tuple[tuple[float, float, float, float], ...] = ()
    water_top: float = 0.78
    coast_left: bool = True
    coast_width: tuple[float, float] = (0.2, 0.35)
    trees: tuple[tuple[float, float, float], ...] = ()


def random_scene(rng: np.random.Generator) -> Scene:
    """Draw a random scene with the attribute frequencies of the dataset."""
    time = TIMES[int(rng.integers(4))]
    terrain = TERRAINS[int(rng.integers(4))]
    u = rng.random()
    water = None if u < 0.6 else ("lake" if u < 0.8 else "sea")
    clouds = bool(time != "night" and rng.random() < 0.45)
    forest = bool(terrain != "desert" and rng.random() < 0.3)
    haze = bool(rng.random() < 0.25)
    horizon = float(rng.uniform(0.47, 0.62))

    if terrain in ("mountains", "snowy mountains"):
        n = int(rng.integers(2, 5))
        xs = np.sort(rng.uniform(0.0, 1.0, n))
        hs = rng.uniform(0.16, 0.3, n)
        hs[int(rng.integers(n))] = rng.uniform(0.28, 0.36)  # one great peak
        ws = hs * rng.uniform(1.3, 2.2, n)
        peaks = tuple((float(x), float(h), float(w)) for x, h, w in zip(xs, hs, ws))
    elif terrain == "hills":
        peaks = tuple(
            (float(rng.uniform(0, 1)), float(rng.uniform(0.05, 0.12)), float(rng.uniform(0.25, 0.45)))
            for _ in range(int(rng.integers(2, 4)))
        )
    else:  # desert dunes
        peaks = tuple(
            (float(rng.uniform(0, 1)), float(rng.uniform(0.03, 0.08)), float(rng.uniform(0.2, 0.4)))
            for _ in range(int(rng.integers(2, 4)))
        )

    if time == "day":
        sun = (float(rng.uniform(0.12, 0.88)), float(rng.uniform(0.09, 0.2)))
    elif time == "night":
        sun = (float(rng.uniform(0.1, 0.9)), float(rng.uniform(0.08, 0.18)))
    else:
        sun = (float(rng.uniform(0.15, 0.85)), float(horizon - rng.uniform(0.1, 0.18)))

    blobs: list[tuple[float, float, float, float]] = []
    if clouds:
        for _ in range(int(rng.integers(2, 5))):
            cx, cy = rng.uniform(0.0, 1.0), rng.uniform(0.07, 0.24)
            for _ in range(int(rng.integers(2, 5))):
                blobs.append(
                    (
                        float(cx + rng.uniform(-0.09, 0.09)),
                        float(cy + rng.uniform(-0.025, 0.02)),
                        float(rng.uniform(0.06, 0.12)),
                        float(rng.uniform(0.025, 0.04)),
                    )
                )

    water_top = float(rng.uniform(0.74, 0.8)) if water == "lake" else horizon
    coast_width = (float(rng.uniform(0.05, 0.15)), float(rng.uniform(0.2, 0.32)))

    trees: list[tuple[float, float, float]] = []
    if forest:
        lowest = (water_top - 0.01) if water == "lake" else 0.97
        n_rows = int(rng.integers(2, 4)) if water != "sea" else 1
        x0 = rng.uniform(0.0, 0.45)
        x1 = min(1.05, x0 + rng.uniform(0.45, 0.9))
        for r in range(n_rows):
            base = horizon + 0.06 + r * 0.075 + rng.uniform(-0.01, 0.01)
            if water == "sea":
                base = horizon + 0.005
            if base > lowest:
                break
            height = 0.075 + 0.025 * r
            x = x0
            while x < x1:
                trees.append((float(x), float(base), float(height * rng.uniform(0.85, 1.15))))
                x += height * rng.uniform(0.45, 0.65)

    return Scene(
        time=time,
        terrain=terrain,
        water=water,
        clouds=clouds,
        forest=forest,
        haze=haze,
        horizon=horizon,
        peaks=peaks,
        phase=float(rng.uniform(0, 2 * np.pi)),
        sun=sun,
        cloud_blobs=tuple(blobs),
        water_top=water_top,
        coast_left=bool(rng.random() < 0.5),
        coast_width=coast_width,
        trees=tuple(trees),
    )


# --------------------------------------------------------------------- palette
def _c(*rgb: float) -> np.ndarray:
    return np.array(rgb, dtype=np.float32)


# Sky gradient stops (top, middle, horizon).
_SKY = {
    "day": (_c(55, 115, 205), _c(100, 160, 228), _c(175, 210, 240)),
    "sunset": (_c(150, 60, 85), _c(235, 105, 50), _c(255, 175, 70)),
    "sunrise": (_c(172, 172, 218), _c(245, 165, 182), _c(255, 200, 150)),
    "night": (_c(4, 6, 18), _c(10, 14, 36), _c(24, 32, 62)),
}
_SUN = {
    "day": _c(255, 252, 225),
    "sunset": _c(255, 85, 30),
    "sunrise": _c(255, 175, 110),
    "night": _c(235, 235, 215),  # moon
}
_CLOUD = {
    "day": (_c(250, 250, 252), _c(185, 190, 205)),
    "sunset": (_c(255, 170, 110), _c(170, 80, 80)),
    "sunrise": (_c(255, 205, 215), _c(200, 150, 175)),
    "night": (_c(70, 72, 85), _c(35, 36, 48)),
}
# Multiplicative light colour on the terrain.
_LIGHT = {
    "day": _c(1.0, 1.0, 1.0),
    "sunset": _c(1.12, 0.86, 0.7),
    "sunrise": _c(1.08, 0.93, 0.9),
    "night": _c(0.33, 0.3, 0.31),
}
_SNOW = {
    "day": _c(242, 245, 250),
    "sunset": _c(250, 232, 218),
    "sunrise": _c(250, 234, 238),
    "night": _c(195, 200, 220),
}
_DEEP_WATER = {
    "day": _c(25, 75, 165),
    "sunset": _c(15, 45, 168),
    "sunrise": _c(40, 70, 160),
    "night": _c(6, 14, 52),
}
_FOG = {
    "day": _c(218, 222, 228),
    "sunset": _c(228, 205, 192),
    "sunrise": _c(236, 215, 215),
    "night": _c(90, 95, 110),
}
_ROCK_LIT = _c(128, 136, 156)
_ROCK_SHADE = _c(88, 96, 118)
_MOUNTAIN_GROUND = _c(90, 96, 108)
_HILL_FAR = _c(110, 165, 100)
_HILL_NEAR = _c(72, 150, 55)
_SAND_LIT = _c(232, 202, 140)
_SAND_SHADE = _c(196, 158, 102)
_TREE = _c(22, 66, 34)


def _sky_colour(time: str, t: np.ndarray) -> np.ndarray:
    """Sky colour for t in [0, 1] (0 = top of the image, 1 = horizon)."""
    top, mid, hor = _SKY[time]
    t = np.clip(t, 0.0, 1.0)[..., None]
    a = np.clip(t * 2.0, 0.0, 1.0)
    b = np.clip(t * 2.0 - 1.0, 0.0, 1.0)
    return top + (mid - top) * a + (hor - mid) * b


def _profile(peaks, x: np.ndarray, sharp: bool) -> np.ndarray:
    """Height above the horizon (fraction of the image) for each column."""
    h = np.zeros_like(x)
    for px, ph, pw in peaks:
        d = np.abs(x - px) / pw
        if sharp:
            bump = ph * np.clip(1.0 - d, 0.0, None)
        else:
            bump = ph * np.exp(-3.0 * d * d)
        np.maximum(h, bump, out=h)
    return h


def render(scene: Scene, rng: np.random.Generator | None = None) -> np.ndarray:
    """Draw ``scene`` as a uint8 (SIZE, SIZE, 3) RGB array."""
    if rng is None:
        rng = np.random.default_rng(0)
    time, hz = scene.time, scene.horizon
    X, Y = _X, _Y

    # --- sky: vertical gradient
    img = np.broadcast_to(_sky_colour(time, _Y1 / hz)[:, None, :], (SIZE, SIZE, 3)).copy()

    # --- sun or moon with a soft glow
    sx, sy = scene.sun
    gx = np.exp(-((_X1 - sx) ** 2) / 0.02)
    gy = np.exp(-((_Y1 - sy) ** 2) / 0.02)
    glow = (gy[:, None] * gx[None, :])[..., None]
    sun_col = _SUN[time]
    if time == "night":
        n_stars = int(rng.integers(18, 30))
        ys = rng.integers(0, int(hz * SIZE * 0.8), n_stars)
        xs = rng.integers(0, SIZE - 1, n_stars)
        for y, x, big in zip(ys, xs, rng.random(n_stars) < 0.35):
            s = 2 if big else 1
            img[y : y + s, x : x + s] = 225.0
        img += glow * 12.0
        radius = 0.045
    else:
        strength = 0.35 if time == "day" else 0.3
        img += glow * (sun_col - img) * strength
        radius = 0.055 if time == "day" else 0.07
    d = np.sqrt((X - sx) ** 2 + (Y - sy) ** 2)
    disc = np.clip((radius - d) * SIZE * 0.7, 0.0, 1.0)[..., None]
    img += disc * (sun_col - img)

    # --- clouds: separable gaussian blobs
    if scene.cloud_blobs:
        dens = np.zeros((SIZE, SIZE), np.float32)
        for cx, cy, wx, wy in scene.cloud_blobs:
            dens += np.exp(-((_Y1 - cy) ** 2) / (wy * wy))[:, None] * np.exp(-((_X1 - cx) ** 2) / (wx * wx))[None, :]
        alpha = np.clip(dens * 1.4, 0.0, 0.92)[..., None]
        lit, shade = _CLOUD[time]
        # Underside of each cloud a little darker: compare with density just above.
        above = np.vstack([dens[:1], dens[:-1]])
        under = np.clip((dens - above) * -8.0 + 0.5, 0.0, 1.0)[..., None]
        col = lit + (shade - lit) * under * 0.6
        img += alpha * (col - img)

    light = _LIGHT[time]
    land = np.zeros((SIZE, SIZE), bool)  # everything that is not sky

    # --- terrain
    if scene.terrain in ("mountains", "snowy mountains"):
        jag = 0.012 * np.sin(_X1 * 41.0 + scene.phase) + 0.008 * np.sin(_X1 * 97.0 + 2.0 * scene.phase)
        smooth = _profile(scene.peaks, _X1, sharp=True)
        prof = np.where(smooth > 0.02, smooth + jag, smooth)
        top = hz - prof  # surface row of the range
        rock = Y >= top[None, :]
        slope = np.gradient(smooth)
        lit = (slope > 0)[None, :]  # light comes from the left
        side = np.where(lit, 1.0, -1.0) * np.clip(1.0 - (Y - top[None, :]) / 0.14, 0.0, 1.0)
        mid, half = (_ROCK_LIT + _ROCK_SHADE) / 2, (_ROCK_LIT - _ROCK_SHADE) / 2
        col = mid + half * side[..., None]
        # a little darker towards the base
        elev = (hz - Y) / max(p[1] for p in scene.peaks)
        col = col * (0.88 + 0.14 * np.clip(elev, 0, 1))[..., None]
        if scene.terrain == "snowy mountains":
            tallest = max(p[1] for p in scene.peaks)
            line = hz - tallest * 0.55 + 0.015 * np.sin(_X1 * 53.0 + scene.phase)
            snow = (Y < line[None, :]) & rock
            snow_col = np.where(lit[..., None], _SNOW[time], _SNOW[time] * 0.9)
            col = np.where(snow[..., None], snow_col / light, col)
        ground = _MOUNTAIN_GROUND * (0.9 + 0.25 * (Y - hz))[..., None]
        below = Y >= hz
        col = np.where(below[..., None], ground, col)
        img = np.where(rock[..., None], col * light, img)
        land |= rock
    elif scene.terrain == "hills":
        far = hz - _profile(scene.peaks[::2] or scene.peaks, _X1, sharp=False) - 0.02
        far_mask = Y >= far[None, :]
        shade_far = (0.95 + 0.5 * (Y - far[None, :]))[..., None]
        img = np.where(far_mask[..., None], _HILL_FAR * np.clip(shade_far, 0.8, 1.1) * light, img)
        near_prof = 0.05 + 0.04 * np.sin(_X1 * 5.0 + scene.phase) + _profile(scene.peaks[1::2], _X1, sharp=False) * 0.6
        near = hz + 0.04 - near_prof
        near_mask = Y >= near[None, :]
        shade = np.clip(1.1 - 0.6 * (Y - near[None, :]), 0.8, 1.1)[..., None]
        img = np.where(near_mask[..., None], _HILL_NEAR * shade * light, img)
        land |= far_mask
    else:  # desert
        far = hz - _profile(scene.peaks, _X1, sharp=False)
        far_mask = Y >= far[None, :]
        bands = 0.5 + 0.5 * np.sin(_X * 7.0 + Y * 26.0 + scene.phase + 1.5 * np.sin(_X * 4.0))
        col = _SAND_SHADE + (_SAND_LIT - _SAND_SHADE) * bands[..., None]
        img = np.where(far_mask[..., None], col * light, img)
        land |= far_mask

    # --- forest: rows of triangular trees
    for tx, base, h in scene.trees:
        y0 = max(int((base - h) * SIZE), 0)
        y1 = min(int(base * SIZE) + 1, SIZE)
        x0 = max(int((tx - h * 0.4) * SIZE), 0)
        x1 = min(int((tx + h * 0.4) * SIZE) + 1, SIZE)
        if y0 >= y1 or x0 >= x1:
            continue
        yy = _Y1[y0:y1, None]
        xx = _X1[None, x0:x1]
        half = (yy - (base - h)) / h * (h * 0.36)
        tri = (np.abs(xx - tx) <= half) & (yy <= base)
        shade = np.where(xx < tx, 1.15, 0.85)
        patch = img[y0:y1, x0:x1]
        tree_col = _TREE[None, None, :] * shade[..., None] * light
        img[y0:y1, x0:x1] = np.where(tri[..., None], tree_col, patch)

    # --- water: mirror of the sky gradient, tinted deep blue
    if scene.water is not None:
        if scene.water == "lake":
            top = scene.water_top + 0.035 * ((_X1 - 0.5) * 2.0) ** 2
            water = Y >= top[None, :]
        else:
            top = np.full_like(_X1, hz)
            f = np.clip((Y - hz) / (1.0 - hz), 0.0, 1.0)
            a, b = scene.coast_width
            edge = a + (b - a) * f
            coast = (X < edge) if scene.coast_left else (X > 1.0 - edge)
            water = (Y >= hz) & ~coast
        depth = np.clip((Y - top[None, :]) / (1.0 - top[None, :] + 1e-3), 0.0, 1.0)
        refl = _sky_colour(time, 1.0 - 0.8 * depth)
        ripple = (1.0 + 0.05 * np.sin(Y * 140.0 + 0.6 * np.sin(X * 9.0)))[..., None]
        wcol = (0.27 * refl + 0.73 * _DEEP_WATER[time]) * ripple
        img = np.where(water[..., None], wcol, img)
        land |= water

    # --- haze: blend the lower scene towards fog
    if scene.haze:
        ramp = np.clip((Y - (hz - 0.25)) / 0.25, 0.0, 1.0)
        amount = np.where(land, 1.0, ramp) * (0.48 - 0.12 * np.clip((Y - hz) / (1 - hz), 0, 1))
        if time == "night":
            amount = amount * 0.55
        img += amount[..., None] * (_FOG[time] - img)

    img += rng.normal(0.0, 1.5, size=(SIZE, SIZE, 1)).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


# -------------------------------------------------------------------- captions
_TIME_WORDS = {
    "day": ("day", "daytime", "midday", "sunny day", "blue sky"),
    "sunset": ("sunset", "dusk", "evening"),
    "sunrise": ("sunrise", "dawn", "early morning"),
    "night": ("night", "at night", "starry night", "moonlit night"),
}
_TERRAIN_WORDS = {
    "mountains": ("mountains", "mountain", "great mountain", "tall mountains", "rocky peaks"),
    "snowy mountains": ("snowy mountains", "snow-capped peaks", "snowy peaks", "mountains with snow"),
    "hills": ("green hills", "rolling hills", "grassy hills", "hills"),
    "desert": ("desert dunes", "sand dunes", "desert"),
}
_WATER_WORDS = {
    "lake": ("a lake", "lake", "calm lake"),
    "sea": ("the sea", "sea", "ocean", "coast"),
}
_CLOUD_WORDS = ("clouds", "cloudy sky")
_FOREST_WORDS = ("forest", "pine forest", "trees")
_HAZE_WORDS = ("misty", "foggy", "mist", "fog", "hazy")
_MOOD_WORDS = ("cinematic", "great", "tall", "beautiful", "epic", "landscape", "scenery")
_PREFIXES = ("a photo of", "an image of")
_SUFFIXES = ("highly detailed", "4k", "wallpaper", "masterpiece")


def _pick(rng: np.random.Generator, options) -> str:
    return options[int(rng.integers(len(options)))]


def caption(scene: Scene, rng: np.random.Generator) -> str:
    """A varied prompt describing ``scene``; "" for about 10% of calls.

    Only attributes present in the picture are ever named; each one is
    mentioned with probability ~0.8 (time of day ~0.85).
    """
    if rng.random() < 0.1:
        return ""
    phrases: list[str] = []
    if rng.random() < 0.85:
        phrases.append(_pick(rng, _TIME_WORDS[scene.time]))
    if rng.random() < 0.8:
        terrain = scene.terrain
        words = _TERRAIN_WORDS[terrain]
        phrases.append(_pick(rng, words))
    if scene.water and rng.random() < 0.8:
        words = _WATER_WORDS[scene.water]
        if scene.water == "lake" and scene.terrain in ("mountains", "snowy mountains"):
            words = words + ("mountain lake",)
        phrases.append(_pick(rng, words))
    if scene.clouds and rng.random() < 0.8:
        phrases.append(_pick(rng, _CLOUD_WORDS))
    if scene.forest and rng.random() < 0.8:
        phrases.append(_pick(rng, _FOREST_WORDS))
    if scene.haze and rng.random() < 0.8:
        phrases.append(_pick(rng, _HAZE_WORDS))
    for _ in range(int(rng.integers(0, 3))):
        phrases.append(_pick(rng, _MOOD_WORDS))
    phrases = list(dict.fromkeys(phrases))
    rng.shuffle(phrases)

    text = ""
    for i, p in enumerate(phrases):
        if i == 0:
            text = p
        else:
            u = rng.random()
            sep = ", " if u < 0.6 else (" " if u < 0.85 else " with ")
            text += sep + p
    if text and rng.random() < 0.25:
        text = _pick(rng, _PREFIXES) + " " + text
    for _ in range(int(rng.integers(0, 3)) if rng.random() < 0.4 else 0):
        text = (text + ", " if text else "") + _pick(rng, _SUFFIXES)
    return text


def attribute_words(scene: Scene) -> list[str]:
    """Keys for :func:`brushwork.demo.colour.adherence` that ``scene`` has."""
    words = [scene.time]
    words.append({"snowy mountains": "snowy", "hills": "hills", "desert": "desert"}.get(scene.terrain, "mountains"))
    if scene.water:
        words.append("water")
    return [w for w in words if w != "mountains"]


def make_example(seed: int) -> tuple[np.ndarray, str, Scene]:
    """Image, caption and scene for ``seed`` (deterministic)."""
    rng = np.random.default_rng(seed)
    scene = random_scene(rng)
    img = render(scene, rng)
    return img, caption(scene, rng), scene


def dataset(seed: int, n: int) -> Iterator[tuple[np.ndarray, str, Scene]]:
    """Yield ``n`` examples; the same ``seed`` always gives the same dataset."""
    for i in range(n):
        yield make_example(seed * 1_000_003 + i)
