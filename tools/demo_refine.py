#!/usr/bin/env python
"""The before/after pairs in docs/refine.md, made with the built-in demo model by the
commands printed (and shown in the doc):

    python tools/demo_refine.py [--out docs]

1. img2img: a day scene turned into a sunset (strength 0.65: the mountains and the
   lake stay where they are, the light changes).
2. inpaint: a lake painted into a field of green hills (an oval mask, strength 1).

Each picture is made by the real ``brushwork`` command line in a scratch data home;
the sheets show before | (mask) | after at 2x, nearest-neighbour.
"""
from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image, ImageDraw

COMMANDS = {
    "day": ["generate", "a lake in the mountains, day", "--seed", "0"],
    "sunset": ["img2img", "{day}", "a lake in the mountains at sunset", "--strength", "0.65", "--seed", "0"],
    "hills": ["generate", "green hills, day", "--seed", "1"],
    "lake": ["img2img", "{hills}", "a lake, green hills, day", "--mask", "{mask}", "--strength", "1", "--seed", "1"],
}


def brushwork(home: Path, args: list[str]) -> Path:
    cmd = [sys.executable, "-m", "brushwork.cli", *args, "--home", str(home), "-q"]
    print("$ brushwork " + " ".join(shlex.quote(a) for a in args))
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return Path(out.strip().splitlines()[-1].split("  seed ")[0])


def sheet(images: list[Image.Image], scale: int = 2, gap: int = 8) -> Image.Image:
    w, h = images[0].width * scale, images[0].height * scale
    out = Image.new("RGB", (len(images) * w + (len(images) - 1) * gap, h), "white")
    for i, im in enumerate(images):
        out.paste(im.convert("RGB").resize((w, h), Image.Resampling.NEAREST), (i * (w + gap), 0))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="docs", help="folder for refine-img2img.png and refine-inpaint.png")
    args = ap.parse_args()
    out = Path(args.out)
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        mask = Path(tmp) / "lake-mask.png"
        m = Image.new("L", (128, 128), 0)
        ImageDraw.Draw(m).ellipse((20, 86, 108, 120), fill=255)
        m.save(mask)
        paths: dict[str, Path] = {"mask": mask}
        for name, cmd in COMMANDS.items():
            paths[name] = brushwork(home, [a.format(**{k: str(v) for k, v in paths.items()}) for a in cmd])
        pictures = {k: Image.open(v) for k, v in paths.items()}
        sheet([pictures["day"], pictures["sunset"]]).save(out / "refine-img2img.png")
        sheet([pictures["hills"], pictures["mask"], pictures["lake"]]).save(out / "refine-inpaint.png")
    print(f"wrote {out / 'refine-img2img.png'} and {out / 'refine-inpaint.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
