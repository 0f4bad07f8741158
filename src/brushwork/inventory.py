"""Every model file the data home holds, of every kind, and taking one away.

The Models page lists checkpoints, LoRAs, embeddings, VAEs and upscaler files with
their family, size and (known) hash; where each lives (Brushwork's own folders, a
linked AUTOMATIC1111/ComfyUI install, or the package); and removes a file by moving
it, with its sidecar files, into ``HOME/trash`` — never deleting it.  Files of a
linked install and built-in ones are never moved: Brushwork does not change what
it does not own.
"""
from __future__ import annotations

import datetime as _dt
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .paths import DataHome, files_by_stem

log = logging.getLogger(__name__)

KINDS = ("checkpoint", "lora", "embedding", "vae", "upscaler")
VAE_SUFFIXES = (".safetensors", ".pt", ".ckpt", ".bin")
#: files that describe a model and go wherever it goes (A1111's Civitai Helper and
#: extra-networks conventions): NAME.civitai.info, NAME.preview.png, NAME.json, NAME.txt ...
SIDECAR_SUFFIXES = (".civitai.info", ".preview.png", ".preview.jpg", ".preview.jpeg", ".preview.webp", ".json", ".txt", ".yaml", ".png", ".jpg", ".webp")


class InventoryError(ValueError):
    """A model that cannot be removed (or found); the message says why and what to do."""


@dataclass(frozen=True)
class InstalledModel:
    kind: str
    name: str  # what a prompt or --model uses: the checkpoint name, the LoRA/embedding stem
    path: Path
    size: int
    family: Optional[str]
    sha256: Optional[str]  # when already known (the hash cache); never computed here
    where: str  # "own" | "linked" | "built-in"

    @property
    def removable(self) -> bool:
        return self.where == "own"


def where_is(home: DataHome, path: Path) -> str:
    """Whose file ``path`` is: Brushwork's own (inside the data home), the package's
    (built-in), or a linked install's."""
    real = Path(path).resolve()
    package = Path(__file__).resolve().parent
    if real.is_relative_to(package):
        return "built-in"
    if real.is_relative_to(home.root.resolve()):
        return "own"
    return "linked"


def _files(home: DataHome, kind: str) -> list[tuple[str, Path]]:
    if kind == "checkpoint":
        from .catalog import list_checkpoints

        return [(e.name, e.path) for e in list_checkpoints(home)]
    if kind == "lora":
        from .lora import lora_files

        return [(p.stem, p) for p in lora_files(home).values()]
    if kind == "embedding":
        from .embeddings import embedding_files

        return [(p.stem, p) for p in embedding_files(home).values()]
    if kind == "vae":
        return [(p.stem, p) for p in files_by_stem(home.vae_dirs, VAE_SUFFIXES).values()]
    if kind == "upscaler":
        from .upscale.models import UPSCALER_SUFFIXES

        return [(p.stem, p) for p in files_by_stem(home.upscaler_dirs, UPSCALER_SUFFIXES, fold_case=True).values()]
    raise InventoryError(f"unknown model kind {kind!r}; use one of {', '.join(KINDS)}")


def _family(home: DataHome, kind: str, path: Path) -> Optional[str]:
    from .models.errors import ModelFileError

    try:
        if kind == "checkpoint":
            from .catalog import checkpoint_label

            return checkpoint_label(home, path)
        if kind == "lora":
            from .lora import listed_metadata, lora_family
            from .models.detect import FAMILY_LABELS

            fam = lora_family(listed_metadata(path))
            return FAMILY_LABELS.get(fam) if fam else None
    except ModelFileError as exc:
        return f"unusable: {str(exc).split(': ', 1)[-1][:80]}"
    except OSError:
        return None
    return None


def installed_models(home: DataHome, kinds: tuple[str, ...] = KINDS, with_family: bool = True) -> list[InstalledModel]:
    """The model files of ``kinds``, each kind in its listing order.  Reads headers
    (for the family) but never hashes a file: ``sha256`` is what the cache knows."""
    from .catalog import hash_cache

    cache = hash_cache(home)
    out: list[InstalledModel] = []
    for kind in kinds:
        for name, path in _files(home, kind):
            try:
                size = path.stat().st_size
            except OSError:
                continue  # vanished while listing
            out.append(InstalledModel(kind, name, path, size, _family(home, kind, path) if with_family else None, cache.cached_sha256(path), where_is(home, path)))
    return out


def find_installed(home: DataHome, kind: str, name: str) -> InstalledModel:
    listed = installed_models(home, (kind,), with_family=False)
    for m in listed:
        if name in (m.name, m.path.name):
            return m
    names = ", ".join(m.name for m in listed) or "none"
    raise InventoryError(f"no {kind} called {name!r}; the {kind}s found are: {names}")


def sidecars(path: Path) -> list[Path]:
    """The files beside a model that describe it (its preview, civitai info, A1111 user
    metadata, ...): NAME.<suffix> for the known sidecar suffixes."""
    stem = path.name[: -len(path.suffix)] if path.suffix else path.name
    found = []
    for suffix in SIDECAR_SUFFIXES:
        p = path.with_name(stem + suffix)
        if p.is_file() and p != path:
            found.append(p)
    return found


def trash_folder(home: DataHome) -> Path:
    return home.root / "trash"


def _free_name(folder: Path, name: str) -> Path:
    target = folder / name
    n = 2
    while target.exists():
        stem, dot, suffix = name.rpartition(".") if "." in name else (name, "", "")
        target = folder / f"{stem} ({n}){dot}{suffix}"
        n += 1
    return target


def move_to_trash(home: DataHome, model: InstalledModel, today: Optional[_dt.date] = None) -> list[Path]:
    """Move ``model``'s file and its sidecars to ``HOME/trash/DATE/KIND/`` (never
    overwriting anything there); returns where they went.  Built-in files and those of
    a linked install are refused with a message."""
    if model.where == "built-in":
        raise InventoryError(f"{model.name} is built into Brushwork and cannot be removed.")
    if model.where == "linked":
        raise InventoryError(
            f"{model.path} belongs to a linked install, which Brushwork never changes; remove it there, or unlink that folder (brushwork models unlink PATH)."
        )
    folder = trash_folder(home) / (today or _dt.date.today()).isoformat() / model.kind
    folder.mkdir(parents=True, exist_ok=True)
    moved = []
    main_target = _free_name(folder, model.path.name)
    stem_from = model.path.name[: -len(model.path.suffix)] if model.path.suffix else model.path.name
    stem_to = main_target.name[: -len(model.path.suffix)] if model.path.suffix else main_target.name
    shutil.move(str(model.path), str(main_target))
    moved.append(main_target)
    for extra in sidecars(model.path):
        target = _free_name(folder, stem_to + extra.name[len(stem_from):])
        try:
            shutil.move(str(extra), str(target))
            moved.append(target)
        except OSError as exc:  # the model itself is already away; a stuck sidecar is only noise
            log.warning("could not move %s to the trash: %s", extra.name, exc)
    log.info("moved %s to %s", model.path.name, main_target)
    return moved
