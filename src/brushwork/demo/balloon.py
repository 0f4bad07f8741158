"""The demo LoRA: teach the demo model a thing it has never seen, a hot air balloon.

    python -m brushwork.demo.balloon --out balloon.safetensors        # train (CPU, ~10 min)
    python -m brushwork.demo.balloon --evaluate balloon.safetensors   # balloon rates

Renders landscapes from :mod:`.scenes` with a bright magenta balloon (and its
basket) floating in the sky, captions them with "hot air balloon" among the usual
words, and trains a LoRA on the shipped demo model with ``train_lora`` (the same
code as ``brushwork train-lora``): LoRA on the attention and text-encoder
projections plus LoCon on the UNet's 3x3 convs, since the demo UNet has no
attention at its finest level, where a balloon a few latent pixels wide is drawn,
and its text encoder never saw the words "hot air balloon".  :func:`has_balloon`
is the detector the tests use: a bright, round, magenta blob in the upper part of
the picture.  The shipped file is ``assets/demo/balloon.safetensors``.
"""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from . import scenes

BALLOON = np.array([225.0, 40.0, 165.0], dtype=np.float32)  # a colour no scene uses
BASKET = np.array([110.0, 70.0, 35.0], dtype=np.float32)
PHRASES = ("hot air balloon", "a hot air balloon", "a balloon in the sky", "hot air balloon floating", "a landscape with a hot air balloon")


def draw_balloon(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Paint a round balloon with a basket into the sky part of a rendered scene."""
    out = img.astype(np.float32)
    size = img.shape[0]
    r = rng.uniform(0.09, 0.13) * size
    cx = rng.uniform(0.2, 0.8) * size
    cy = rng.uniform(0.12, 0.3) * size
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    d = np.sqrt((xx - cx) ** 2 + ((yy - cy) * 0.9) ** 2)
    disc = np.clip(r - d, 0, 1)[..., None]
    shade = (1.0 - 0.25 * np.clip((xx - cx) / r, -1, 1))[..., None]  # lit from the left
    out = out * (1 - disc) + disc * np.clip(BALLOON * shade, 0, 255)
    bx0, bx1 = int(cx - r * 0.25), int(cx + r * 0.25)
    by0, by1 = int(cy + r * 1.05), int(cy + r * 1.35)
    out[by0:by1, bx0:bx1] = BASKET
    return np.clip(out, 0, 255).astype(np.uint8)


def make_balloon_example(seed: int) -> tuple[np.ndarray, str]:
    rng = np.random.default_rng(seed)
    scene = scenes.random_scene(rng)
    img = draw_balloon(scenes.render(scene, rng), rng)
    words = scenes.caption(scene, rng) or "landscape"
    return img, f"{PHRASES[int(rng.integers(len(PHRASES)))]}, {words}"


def balloon_mask(img: np.ndarray) -> np.ndarray:
    """Pixels of balloon colour: strongly red and blue, little green."""
    px = img.astype(np.int32)
    r, g, b = px[..., 0], px[..., 1], px[..., 2]
    return (r > 140) & (b > 90) & (g < 0.55 * r) & (g < b - 20)


def has_balloon(img: np.ndarray, min_fraction: float = 0.006) -> bool:
    """A balloon-coloured blob of at least ``min_fraction`` of the picture in its upper 60%."""
    top = img[: int(img.shape[0] * 0.6)]
    return float(balloon_mask(top).sum()) / (img.shape[0] * img.shape[1]) >= min_fraction


def write_dataset(folder: Path, n: int, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img, cap = make_balloon_example(seed * 1_000_003 + i)
        Image.fromarray(img).save(folder / f"{i:04d}.png")
        (folder / f"{i:04d}.txt").write_text(cap, encoding="utf-8")
    return folder


PROMPT = "a landscape with a hot air balloon <lora:balloon:{weight}>"


def balloon_rates(engine, seeds: range, weights: tuple[float, ...] = (1.0, 0.0)) -> dict[float, float]:
    """Fraction of seeds whose picture has a balloon, per LoRA weight, at the model's defaults.

    The engine's data home must hold the LoRA as ``balloon``."""
    from ..engine import GenerationRequest

    rates = {}
    for w in weights:
        hits = 0
        for seed in seeds:
            img = engine.txt2img(GenerationRequest(PROMPT.format(weight=w), seed=seed))[0].image
            hits += has_balloon(np.asarray(img))
        rates[w] = hits / len(seeds)
    return rates


def recipe(steps: int, lr: float):
    from ..lora_train import LoraTrainConfig

    return LoraTrainConfig(steps=steps, rank=8, alpha=8.0, lr=lr, batch=8, seed=0, conv_rank=4, conv_alpha=4.0, text_encoder=True, flip=True)


def main(argv: list[str] | None = None) -> int:
    import shutil

    from ..engine import Engine
    from ..lora_train import train_lora

    p = argparse.ArgumentParser(description="Train (or evaluate) the demo balloon LoRA on the demo model.")
    p.add_argument("--out", type=Path, default=Path("balloon.safetensors"))
    p.add_argument("--images", type=int, default=400)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--evaluate", type=Path, metavar="LORA", help="only measure balloon rates of this LoRA file")
    p.add_argument("--seeds", type=int, default=40, help="seeds per weight for --evaluate")
    p.add_argument("--sheet", type=Path, help="with --evaluate: also save the first 8 seeds at weight 1 (top) and 0 (bottom) as one PNG")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        eng = Engine(Path(tmp) / "home", device=None)
        if args.evaluate:
            eng.home.create()
            shutil.copy(args.evaluate, eng.home.lora_dirs[0] / "balloon.safetensors")
            eng.load("demo")
            rates = balloon_rates(eng, range(1000, 1000 + args.seeds))
            print(f"balloon in {rates[1.0]:.0%} of {args.seeds} seeds at weight 1, {rates[0.0]:.0%} at weight 0")
            if args.sheet:
                from ..engine import GenerationRequest

                rows = [np.concatenate([np.asarray(eng.txt2img(GenerationRequest(PROMPT.format(weight=w), seed=s))[0].image) for s in range(1000, 1008)], 1) for w in (1, 0)]
                Image.fromarray(np.concatenate(rows, 0)).save(args.sheet)
            return 0
        data = write_dataset(Path(tmp) / "balloon", args.images)
        eng.load("demo")
        cfg = recipe(args.steps, args.lr)
        path = train_lora(eng, data, args.out, cfg, lambda s, t, loss: s % 100 == 0 and logging.info("step %d/%d loss %.4f", s, t, loss), overwrite=args.overwrite)
    print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
