"""Draw a contact sheet of the demo model: prompts down, seeds across.

    python tools/demo_contact_sheet.py docs/demo-contact-sheet.png
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from PIL import Image, ImageDraw

PROMPTS = [
    "cinematic landscape, great mountain",
    "cinematic landscape, great mountain, night",
    "cinematic landscape, great mountain, sunset",
    "snowy mountains, lake, day",
    "green hills, forest, sunrise",
    "desert dunes, sunset",
    "misty mountains, sea",
    "starry night, desert",
]
SEEDS = [0, 1, 2, 3, 4, 5]
LABEL_W = 260


def main(out: str) -> int:
    from brushwork import Engine, GenerationRequest

    with tempfile.TemporaryDirectory() as home:
        eng = Engine(home, device="cpu")
        eng.load()
        size = eng.complete(GenerationRequest("x")).width
        sheet = Image.new("RGB", (LABEL_W + size * len(SEEDS), 20 + size * len(PROMPTS)), "white")
        draw = ImageDraw.Draw(sheet)
        for j, seed in enumerate(SEEDS):
            draw.text((LABEL_W + j * size + 4, 4), f"seed {seed}", fill="black")
        for i, prompt in enumerate(PROMPTS):
            y = 20 + i * size
            draw.text((6, y + size // 2 - 6), prompt, fill="black")
            imgs = eng.txt2img(GenerationRequest(prompt, seed=SEEDS[0], batch_size=len(SEEDS)))
            for j, img in enumerate(imgs):
                sheet.paste(img.image, (LABEL_W + j * size, y))
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1] if len(sys.argv) > 1 else "docs/demo-contact-sheet.png"))
