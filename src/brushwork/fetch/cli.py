"""The command line of ``brushwork pull`` and ``brushwork models --starter``.

The main CLI adds ``--home`` and calls :func:`add_pull_arguments` / :func:`cmd_pull`.
"""
from __future__ import annotations

import argparse
import sys
import threading
from typing import Optional

from .download import human_size
from .sources import ACCEPTED_FORMS, KINDS, Cancelled, PullError

PULL_EPILOG = f"""\
SOURCE is one of:
{ACCEPTED_FORMS}

Files go to the data home's folder for their kind (models/checkpoints, models/loras,
models/embeddings, models/vae, models/upscalers); unfinished downloads wait in
HOME/downloads and continue when the same pull runs again.
Tokens: CIVITAI_TOKEN (https://civitai.com/user/account) and HF_TOKEN
(https://huggingface.co/settings/tokens), or --token.  Mirrors: BRUSHWORK_CIVITAI_URL, HF_ENDPOINT.
See docs/downloads.md."""


def add_pull_arguments(parser: argparse.ArgumentParser) -> None:
    """SOURCE, --kind and --token (the caller adds --home)."""
    parser.add_argument("source", metavar="SOURCE", help="civitai link or AIR, Hugging Face link or hf://..., a file URL, or a starter-list name")
    parser.add_argument("--kind", choices=KINDS, help="what the file is, when the source does not say or says wrongly (decides the folder)")
    parser.add_argument("--token", help="access token for civitai or Hugging Face (default: $CIVITAI_TOKEN / $HF_TOKEN)")
    parser.epilog = parser.epilog or PULL_EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter


class _Bar:
    """A tqdm bar on stderr, made once the size is known."""

    def __init__(self) -> None:
        self.bar = None
        self.phase = ""
        self.lock = threading.Lock()

    def __call__(self, p) -> None:
        with self.lock:
            if p.phase != self.phase:
                self._phase(p)
            if self.bar is not None and p.phase in ("downloading", "verifying"):
                self.bar.n = p.done
                self.bar.refresh()

    def _phase(self, p) -> None:
        from tqdm import tqdm

        self.phase = p.phase
        if p.phase == "resolving":
            print(f"looking up {p.file_name} ...", file=sys.stderr)
            return
        if p.phase in ("downloading", "verifying") and self.bar is None:
            self.bar = tqdm(total=p.total, initial=p.done, unit="B", unit_scale=True, unit_divisor=1024,
                            desc=p.file_name[:40], file=sys.stderr, dynamic_ncols=True, smoothing=0.1)
        if self.bar is not None:
            self.bar.set_postfix_str("checking the kept part" if p.phase == "verifying" and p.done < (p.total or 0) else "")

    def close(self) -> None:
        with self.lock:
            if self.bar is not None:
                self.bar.close()
                self.bar = None


def usage_line(result) -> str:
    """How to use what was pulled."""
    name = result.path.stem
    if result.kind == "lora":
        words = f"; trigger words: {', '.join(result.trigger_words)}" if result.trigger_words else ""
        return f"use it as <lora:{name}:0.8> in a prompt{words}"
    if result.kind == "checkpoint":
        return f'use it with: brushwork generate "a prompt" --model {name}'
    if result.kind == "embedding":
        words = f" (trigger words: {', '.join(result.trigger_words)})" if result.trigger_words else ""
        return f"write {name} in a prompt or the negative prompt to use it{words}"
    if result.kind == "upscaler":
        return f"use it with: brushwork upscale PICTURE --upscaler {name}"
    return "it is in the VAE folder"


def describe(result) -> list[str]:
    from .kinds import KIND_LABELS

    labels = {"sd1": "SD 1.x", "sd2": "SD 2.x", "sdxl": "SDXL"}
    what = KIND_LABELS.get(result.kind, result.kind)
    fam = f", {labels[result.family]}" if result.family in labels else ""
    lines = []
    if result.already_installed:
        lines.append(f"already installed: {result.path} ({what}{fam}, {human_size(result.size)}); nothing was downloaded")
    else:
        lines.append(f"saved {result.path} ({what}{fam}, {human_size(result.size)}, sha256 {result.sha256[:12]}...)")
        if result.renamed_from_clash:
            lines.append(f"note: a different file was already called {result.planned_name}; "
                         f"this one was saved as {result.path.name} (nothing was overwritten)")
        if result.resumed_from:
            lines.append(f"continued a download that had {human_size(result.resumed_from)} already")
    if result.sidecars:
        lines.append("with " + ", ".join(p.name for p in result.sidecars))
    lines.append(usage_line(result))
    return lines


def run_pull(home, source: str, token: Optional[str], kind: Optional[str]):
    """``pull`` in a worker thread, so Ctrl+C stops it cleanly between chunks."""
    from . import pull

    cancel = threading.Event()
    bar = _Bar()
    box: dict = {}

    def work() -> None:
        try:
            box["result"] = pull(home, source, token=token, kind=kind, progress=bar, cancel=cancel)
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            box["error"] = exc

    worker = threading.Thread(target=work, name="brushwork-pull", daemon=True)
    worker.start()
    try:
        while worker.is_alive():
            worker.join(0.2)
    except KeyboardInterrupt:
        cancel.set()
        worker.join()
    finally:
        bar.close()
    if "error" in box:
        raise box["error"]
    return box["result"]


def cmd_pull(args) -> int:
    """``brushwork pull SOURCE``: 0 when the file is in place, 1 on a PullError, 130 when stopped."""
    from ..paths import DataHome

    home = DataHome.resolve(getattr(args, "home", None))
    try:
        result = run_pull(home, args.source, getattr(args, "token", None), getattr(args, "kind", None))
    except Cancelled as exc:
        print(f"brushwork pull: {exc}", file=sys.stderr)
        return 130
    except PullError as exc:
        print(f"brushwork pull: {exc}", file=sys.stderr)
        return 1
    for line in describe(result):
        print(line)
    return 0


def starter_lines(home) -> list[str]:
    """The table for ``brushwork models --starter``."""
    from .starter import starter_status

    labels = {"sd1": "SD 1.x", "sd2": "SD 2.x", "sdxl": "SDXL"}
    rows = starter_status(home)
    name_w = max(len("NAME"), *(len(e.name) for e, _ in rows))
    lines = [f"{'NAME':<{name_w}}  {'KIND':<10}  {'FAMILY':<6}  {'SIZE':>9}  {'STATUS':<13}  SOURCE"]
    for entry, path in rows:
        status = "installed" if path else "not installed"
        lines.append(f"{entry.name:<{name_w}}  {entry.kind:<10}  {labels.get(entry.family, entry.family):<6}  "
                     f"{'~' + human_size(entry.size):>9}  {status:<13}  {entry.source}")
        lines.append(f"{'':<{name_w}}  {entry.label}" + (f"  [{path}]" if path else ""))
    lines.append("")
    lines.append("Install one with: brushwork pull NAME   (e.g. brushwork pull sd15)")
    return lines
