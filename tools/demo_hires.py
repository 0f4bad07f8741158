#!/usr/bin/env python
"""The 128 px -> 256 px hires-fix pair in docs/hires.md, made with the built-in demo
model by the real ``brushwork`` command line in a scratch data home:

    python tools/demo_hires.py [--out docs]

Left: the 128 px picture (shown at 256 px, nearest-neighbour, so its pixels are
seen); right: the same seed with the hires fix (Lanczos 2x, then 10 steps of
img2img at strength 0.3 at 256 px).
"""
from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

PROMPT = "a lake in the mountains, day"
COMMANDS = {
    "small": ["generate", PROMPT, "--seed", "0"],
    "hires": ["generate", PROMPT, "--seed", "0", "--hires", "--hires-upscaler", "Lanczos", "--hires-strength", "0.3"],
}


def brushwork(home: Path, args: list[str]) -> Path:
    print("$ brushwork " + " ".join(shlex.quote(a) for a in args))
    out = subprocess.run([sys.executable, "-m", "brushwork.cli", *args, "--home", str(home), "-q"], check=True, capture_output=True, text=True).stdout
    return Path(out.strip().splitlines()[-1].split("  seed ")[0])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="docs", help="folder for hires-demo.png")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        small, hires = (Image.open(brushwork(home, COMMANDS[k])).convert("RGB") for k in ("small", "hires"))
        assert small.size == (128, 128) and hires.size == (256, 256), (small.size, hires.size)
        sheet = Image.new("RGB", (2 * 256 + 8, 256), "white")
        sheet.paste(small.resize((256, 256), Image.Resampling.NEAREST), (0, 0))
        sheet.paste(hires, (264, 0))
        path = Path(args.out) / "hires-demo.png"
        sheet.save(path, optimize=True)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
