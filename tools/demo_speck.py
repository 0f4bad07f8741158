"""Before/after crops of the demo model's corner speck (issue #13 item 16).

    python tools/demo_speck.py --before OLD.safetensors --after NEW.safetensors
    python tools/demo_speck.py --mirrored-halves     # the shipped fix: before plain, after mirrored halves
    python tools/demo_speck.py --diagnose            # where the speck comes from

Pictures are sampled once (UNet and text encoder are the same in both files; the
refinement only changes the VAE decoder), and the same latents are decoded by the
"before" and the "after" decoder, so the crops differ only by the decoder
(``--mirrored-halves``: by the way the same decoder is run, plainly before and as
``vae.decode_mirrored_halves`` after, as the engine now decodes the demo model).  Each
image is a row of 48x48 crops around the speck (x 0-47, y 80-127), enlarged 4x
(nearest neighbour), for six prompt/seed pairs, then one tile with the mean
residual (picture minus its median background) of all pictures, amplified 4x
around mid-grey: the speck is the blob the scenes do not average away.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

PROMPTS = [
    "cinematic landscape, great mountain",
    "cinematic landscape, great mountain, night",
    "desert dunes, sunset",
    "snowy mountains, lake, day",
    "green hills, forest, sunrise",
    "misty mountains, sea",
    "starry night, desert",
    "day, green hills",
]
CROP, ZOOM = 48, 4


def sample_latents(eng, prompts=PROMPTS, per_prompt: int = 4, seed: int = 300):
    """Latents of ``per_prompt`` pictures per prompt, sampled with the loaded model."""
    from brushwork import GenerationRequest

    lats = []
    orig = eng.decode
    eng.decode = lambda lat, control=None: (lats.append(lat.float().clone()), orig(lat[:1], control) * len(lat))[1]
    try:
        for k, p in enumerate(prompts):
            eng.txt2img(GenerationRequest(p, seed=seed + 10 * k, batch_size=per_prompt))
    finally:
        eng.decode = orig
    return torch.cat(lats)


@torch.no_grad()
def decode_with(path: Path, latents: torch.Tensor, how: str = "plain") -> np.ndarray:
    """Decode ``latents`` (already scaled as the engine's) with the VAE of ``path``, uint8
    (N, H, W, 3); ``how``: "plain" or "mirrored-halves"."""
    from brushwork.models.load import load_checkpoint
    from brushwork.vae import decode_as

    _, nets = load_checkpoint(Path(path), torch.float32, torch.device("cpu"))
    out = [decode_as(nets.vae, lat[None], how) for lat in latents]
    return ((torch.cat(out).clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def crop_strip(images: np.ndarray, n: int = 6) -> Image.Image:
    from brushwork.demo.decoder_fix import mean_residual

    h = images.shape[1]
    pick = np.linspace(0, len(images) - 1, n).round().astype(int)
    tiles = [images[i, h - CROP :, :CROP] for i in pick]
    res = mean_residual(images)[h - CROP :, :CROP]
    tiles.append(np.clip(res * 4 + 128, 0, 255).astype(np.uint8))
    gap = np.full((CROP, 2, 3), 255, np.uint8)
    row = np.concatenate([t for tile in tiles for t in (tile, gap)][:-1], 1)
    img = Image.fromarray(row)
    return img.resize((img.width * ZOOM, img.height * ZOOM), Image.NEAREST)


def diagnose(path: Path, latents: torch.Tensor) -> None:
    """The elimination behind docs: scenes, round trips, flipped latents."""
    from brushwork.demo.decoder_fix import speck_report
    from brushwork.demo.scenes import make_example
    from brushwork.models.load import load_checkpoint

    _, nets = load_checkpoint(Path(path), torch.float32, torch.device("cpu"))
    vae = nets.vae
    scenes = np.stack([make_example(s)[0] for s in range(64)])
    with torch.no_grad():
        x = torch.from_numpy(scenes).permute(0, 3, 1, 2).float() / 127.5 - 1
        rec = ((vae.decode(vae.encode(x).latent_dist.mean).sample.clamp(-1, 1) + 1) * 127.5).round().permute(0, 2, 3, 1).numpy()
    gen = decode_with(path, latents)
    flipped = decode_with(path, latents.flip(-1))[:, :, ::-1]
    rows = [("training scenes", scenes), ("VAE round trip of the scenes", rec), ("generated pictures", gen), ("latents flipped, pictures flipped back", flipped)]
    print(f"{'':42s} speck  mirror  border  interior")
    for name, imgs in rows:
        r = speck_report(imgs)
        print(f"{name:42s} {r['speck']:5.2f}  {r['mirror']:6.2f}  {r['border']:6.2f}  {r['interior']:7.2f}")


def main(argv: list[str] | None = None) -> int:
    from brushwork import Engine
    from brushwork.catalog import PACKAGED_DEMO
    from brushwork.demo.decoder_fix import speck_report

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--before", type=Path, default=PACKAGED_DEMO)
    p.add_argument("--after", type=Path, default=None)
    p.add_argument("--out-dir", type=Path, default=Path("docs"))
    p.add_argument("--mirrored-halves", action="store_true", help="after: the --before file decoded as mirrored halves")
    p.add_argument("--diagnose", action="store_true")
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as home:
        eng = Engine(home, device="cpu")
        eng.load(a.before)
        latents = sample_latents(eng)
    if a.diagnose:
        diagnose(a.before, latents)
        return 0
    a.out_dir.mkdir(parents=True, exist_ok=True)
    runs = [("before", a.before, "plain"), ("after", a.after, "plain")]
    if a.mirrored_halves:
        runs[1] = ("after", a.before, "mirrored-halves")
    for name, path, how in runs:
        if path is None:
            continue
        imgs = decode_with(path, latents, how)
        r = speck_report(imgs)
        print(f"{name}: {path.name} ({how}): speck {r['speck']:.2f} (mirror spot {r['mirror']:.2f}), border band {r['border']:.2f}, interior {r['interior']:.2f}")
        out = a.out_dir / f"demo-speck-{name}.png"
        crop_strip(imgs).save(out)
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
