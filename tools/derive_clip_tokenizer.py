"""Derive the CLIP tokenizer files that ship inside Brushwork.

OpenAI's CLIP tokenizer is a byte-level BPE whose only data is the merge list in
``bpe_simple_vocab_16e6.txt.gz``.  open_clip_torch ships that file in its wheel.
This script turns it into the ``vocab.json`` + ``merges.txt`` pair that the
tokenizer classes of ``transformers`` read, so Brushwork needs no network and no
runtime dependency on open_clip.

Run once (the outputs are committed):

    pip download --no-deps open_clip_torch==3.3.0 -d /tmp/oc
    python tools/derive_clip_tokenizer.py /tmp/oc/open_clip_torch-3.3.0-py3-none-any.whl

The vocabulary is rebuilt the way the original tokenizer builds it: the 256
printable stand-ins for the bytes, the same with the end-of-word marker, one token
per merge (in merge order), then the two special tokens.  That order fixes the ids,
e.g. "a photo of a cat" -> 49406 320 1125 539 320 2368 49407.
"""
from __future__ import annotations

import gzip
import json
import sys
import zipfile
from pathlib import Path

N_MERGES = 49152 - 256 - 2
OUT_DIR = Path(__file__).resolve().parent.parent / "src" / "brushwork" / "assets" / "clip_tokenizer"


def byte_symbols() -> list[str]:
    """The 256 printable characters that stand for the 256 byte values, in byte order."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    # The vocabulary lists the printable bytes first, then the remapped ones.
    ordered = printable + [b for b in range(256) if b not in printable]
    return [table[b] for b in ordered]


def read_merges(wheel: Path) -> list[tuple[str, str]]:
    with zipfile.ZipFile(wheel) as zf:
        name = next(n for n in zf.namelist() if n.endswith("bpe_simple_vocab_16e6.txt.gz"))
        text = gzip.decompress(zf.read(name)).decode("utf-8")
    lines = text.split("\n")[1 : N_MERGES + 1]
    return [tuple(line.split()) for line in lines]  # type: ignore[misc]


def build_vocab(merges: list[tuple[str, str]]) -> dict[str, int]:
    symbols = byte_symbols()
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {tok: i for i, tok in enumerate(tokens)}


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__)
        return 2
    merges = read_merges(Path(argv[1]))
    vocab = build_vocab(merges)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    (OUT_DIR / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    body = "\n".join(" ".join(m) for m in merges)
    (OUT_DIR / "merges.txt").write_text("#version: 0.2\n" + body + "\n", encoding="utf-8")
    print(f"wrote {len(vocab)} tokens and {len(merges)} merges to {OUT_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
