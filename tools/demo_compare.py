#!/usr/bin/env python
"""The three comparisons of docs/compare.md, made with the built-in demo model by one
``brushwork compare`` command each (printed, and shown in the doc):

    python tools/demo_compare.py [--out docs]

1. model vs model: the demo with and without its balloon LoRA (Prompt S/R on the
   LoRA's weight), same prompt and seed;
2. a row of sampling-step counts;
3. a row of CFG scales.
"""
from __future__ import annotations

import argparse
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

FIGURES = {
    "compare-lora.png": ["compare", "a landscape with a hot air balloon <lora:balloon:0>", "--x", "Prompt S/R: <lora:balloon:0>,<lora:balloon:1>", "--y", "Seed: 1,2"],
    "compare-steps.png": ["compare", "cinematic landscape, great mountain", "--x", "Steps: 2,5,10,20,40", "--seed", "3"],
    "compare-cfg.png": ["compare", "cinematic landscape, great mountain", "--x", "CFG Scale: 1,3,7,12,20", "--seed", "3"],
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="docs")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for name, cmd in FIGURES.items():
            print("$ brushwork " + " ".join(shlex.quote(a) for a in cmd))
            out = subprocess.run([sys.executable, "-m", "brushwork.cli", *cmd, "--home", tmp, "-q", "--no-cells"], check=True, capture_output=True, text=True).stdout
            grid = Path(out.strip().splitlines()[-1].split("  grid ")[0])
            shutil.copy(grid, Path(args.out) / name)
    print(f"wrote {', '.join(FIGURES)} into {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
