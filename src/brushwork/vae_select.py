"""Which VAE decodes (and encodes) a picture: the checkpoint's own, or a VAE file.

AUTOMATIC1111's ``sd_vae`` choices, with the same names:

* ``Automatic`` (the default, also ``None`` in a request): a VAE file made for this
  checkpoint if there is one (``STEM.vae.safetensors`` / ``.pt`` / ``.ckpt`` beside
  it, or a file called ``STEM`` / ``STEM.vae`` in ``models/vae``), else its own;
* ``None``: always the checkpoint's own VAE;
* a file in ``models/vae`` (A1111's ``models/VAE``, linked installs' VAE folders),
  by file name, stem or name relative to its folder.

A picture made with a VAE file says so in its infotext (``VAE hash``, ``VAE``: the
file's short sha256 and its name, as A1111 writes them), so ``--from`` picks it again.
"""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Optional

from .paths import DataHome
from .request import RequestError

VAE_AUTOMATIC, VAE_NONE = "Automatic", "None"
VAE_SUFFIXES = (".safetensors", ".pt", ".ckpt")


class VaeNotFound(RequestError):
    """A VAE name that is not in the VAE folders; the message lists those there."""


def vae_files(home: DataHome) -> dict[str, Path]:
    """VAE files by their name relative to their folder (``sdxl_vae.safetensors``,
    ``sub/x.pt``); the first folder wins a clash."""
    found: dict[str, Path] = {}
    for folder in home.vae_dirs:
        if not folder.is_dir():
            continue
        for p in sorted(folder.rglob("*")):
            if p.is_file() and p.suffix.lower() in VAE_SUFFIXES:
                found.setdefault(p.relative_to(folder).as_posix(), p)
    return found


def vae_names(home: DataHome) -> list[str]:
    """What a client may choose: Automatic, None, then every VAE file."""
    return [VAE_AUTOMATIC, VAE_NONE, *vae_files(home)]


def _stem(name: str) -> str:
    base = name.rsplit("/", 1)[-1]
    for suffix in VAE_SUFFIXES:
        if base.lower().endswith(suffix):
            base = base[: -len(suffix)]
    return base


def automatic_vae(home: DataHome, checkpoint: Path) -> Optional[Path]:
    """The VAE file made for ``checkpoint`` (A1111's Automatic), if any."""
    stem = checkpoint.name[: -len(checkpoint.suffix)] if checkpoint.suffix else checkpoint.name
    for suffix in VAE_SUFFIXES:
        beside = checkpoint.with_name(f"{stem}.vae{suffix}")
        if beside.is_file():
            return beside
    for name, path in vae_files(home).items():
        if _stem(name) in (stem, f"{stem}.vae"):
            return path
    return None


def resolve_vae(home: DataHome, choice: Optional[str], checkpoint: Path) -> Optional[Path]:
    """The VAE file ``choice`` means for ``checkpoint`` (None: the checkpoint's own)."""
    if choice is None or choice.strip() == "" or choice.strip().lower() == VAE_AUTOMATIC.lower():
        return automatic_vae(home, checkpoint)
    q = choice.strip()
    if q.lower() == VAE_NONE.lower():
        return None
    files = vae_files(home)
    for name, path in files.items():
        if q in (name, path.name, _stem(name), path.stem):
            return path
    lowered = q.lower()
    for name, path in files.items():
        if lowered in (name.lower(), path.name.lower(), _stem(name).lower()):
            return path
    by_stem = {_stem(name): name for name in files}
    close = [by_stem.get(c, c) for c in difflib.get_close_matches(_stem(q), [*by_stem, *files], n=3, cutoff=0.5)]
    close = list(dict.fromkeys(close))
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    there = f"The VAE files found: {', '.join(files)}." if files else f"There are no VAE files yet: put one into {home.vae_dirs[0]}."
    raise VaeNotFound(f"no VAE called {choice!r}.{hint} Use {VAE_AUTOMATIC} (a VAE made for the checkpoint, else its own), {VAE_NONE} (the checkpoint's own) or a file name. {there}")


def check_vae_name(home: DataHome, choice: Optional[str]) -> None:
    """Refuse an unknown VAE name before any model is loaded (Automatic and None are
    always fine)."""
    if choice is not None and choice.strip().lower() not in ("", VAE_AUTOMATIC.lower(), VAE_NONE.lower()):
        resolve_vae(home, choice, Path(""))


def vae_infotext(path: Optional[Path], sha256: Optional[str]) -> dict[str, str]:
    """The infotext entries of a picture decoded with the VAE file ``path``: none for
    the checkpoint's own VAE."""
    if path is None:
        return {}
    out = {}
    if sha256:
        out["VAE hash"] = sha256[:10]
    out["VAE"] = path.name
    return out
