"""Finding checkpoints in the data home and resolving what the user typed.

``--model`` may be a path, a file name, a stem, a name relative to the checkpoint
folder, or a model hash (10 hex, full sha256, or A1111's legacy 8-hex hash, as old
infotexts carry).  Unknown names get the closest matches in the message.
"""
from __future__ import annotations

import difflib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, TypeVar

from .hashing import HashCache, legacy_model_hash
from .models.detect import ModelSpec, detect
from .models.errors import CheckpointNotFound, ModelFileError
from .models.files import damage_reported, iter_checkpoint_files, open_tensor_file, read_safetensors_header
from .paths import DataHome

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class CheckpointEntry:
    path: Path
    name: str  # path relative to its folder, without suffix (A1111's model name)

    @property
    def stem(self) -> str:
        return self.path.stem


#: the demo model that ships inside the package (trained by brushwork.demo.train)
PACKAGED_DEMO = Path(__file__).resolve().parent / "assets" / "demo" / "demo.safetensors"
DEMO_NAME = "demo"


def list_checkpoints(home: DataHome) -> list[CheckpointEntry]:
    """The user's checkpoints in name order, then the built-in demo model."""
    entries = user_checkpoints(home)
    if PACKAGED_DEMO.is_file() and not any(e.name == DEMO_NAME for e in entries):
        entries.append(CheckpointEntry(PACKAGED_DEMO, DEMO_NAME))
    return entries


def user_checkpoints(home: DataHome) -> list[CheckpointEntry]:
    entries: list[CheckpointEntry] = []
    seen: set[Path] = set()
    for folder in home.checkpoint_dirs:
        for path in iter_checkpoint_files(folder):
            real = path.resolve()
            if real in seen:
                continue
            seen.add(real)
            rel = path.relative_to(folder).with_suffix("")
            entries.append(CheckpointEntry(path, rel.as_posix()))
    return entries


def hash_cache(home: DataHome) -> HashCache:
    return HashCache(home.cache / "hashes.json")


def no_checkpoint_message(home: DataHome) -> str:
    return (
        "No checkpoint found. Brushwork needs a Stable Diffusion checkpoint (.safetensors or .ckpt: SD 1.x, SD 2.x or SDXL).\n"
        f"  Put one into {home.checkpoint_dirs[0]}\n"
        "  or pass a file directly: brushwork generate \"a prompt\" --model /path/to/model.safetensors\n"
        "  (for example v1-5-pruned-emaonly.safetensors, or any SD 1.x/SDXL model from civitai)."
    )


def find_checkpoint(home: DataHome, query: Optional[str]) -> Path:
    """The checkpoint file meant by ``query`` (None: the default one)."""
    entries = list_checkpoints(home)
    if query is None:
        if not entries:
            raise CheckpointNotFound(no_checkpoint_message(home))
        return default_checkpoint(home, entries)
    as_path = Path(query).expanduser()
    if as_path.suffix.lower() in (".safetensors", ".ckpt", ".pt", ".pth") or "/" in query or "\\" in query:
        if as_path.is_file():
            return as_path.resolve()
        if as_path.is_dir():
            raise CheckpointNotFound(_folder_message(query, as_path))
    try:
        return find_listed_checkpoint(home, query, entries)
    except CheckpointNotFound:
        if as_path.is_dir():
            raise CheckpointNotFound(_folder_message(query, as_path)) from None
        if as_path.is_file():  # a file that exists, but with no checkpoint's suffix
            from .models.files import not_a_checkpoint_message

            raise CheckpointNotFound(not_a_checkpoint_message(as_path)) from None
        raise


def _folder_message(query: str, folder: Path) -> str:
    from .models.files import iter_checkpoint_files

    inside = [p.name for p in iter_checkpoint_files(folder) if p.parent == folder][:3]
    hint = f" It holds {', '.join(inside)}: pass one of them, e.g. --model {folder / inside[0]}." if inside else " It holds no .safetensors or .ckpt file."
    return f"{query} is a folder, not a checkpoint file; Brushwork loads single-file checkpoints (.safetensors or .ckpt).{hint}"


def find_listed_checkpoint(home: DataHome, query: str, entries: Optional[list[CheckpointEntry]] = None) -> Path:
    """Like :func:`find_checkpoint` but only among the listed checkpoints: never a path.

    This is what requests from the network use, so no name can reach a file outside
    the checkpoint folders.  Also accepts AUTOMATIC1111's titles, ``name.safetensors [hash]``.
    """
    entries = list_checkpoints(home) if entries is None else entries
    q = query.strip()
    if q.endswith("]") and " [" in q:
        q = q.rsplit(" [", 1)[0].strip()
    for e in entries:
        if q in (e.name, e.stem, e.path.name, f"{e.name}{e.path.suffix}"):
            return e.path
    lowered = q.lower()
    for e in entries:
        if lowered in (e.name.lower(), e.stem.lower(), e.path.name.lower()):
            return e.path
    if _looks_like_hash(q):
        found = _find_by_known_hash(home, q.lower(), entries)
        if found is not None:
            return found
    names = [e.name for e in entries]
    close = difflib.get_close_matches(q, names, n=3, cutoff=0.4)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    where = f"Checkpoints found: {', '.join(names)}." if names else no_checkpoint_message(home)
    raise CheckpointNotFound(f"No checkpoint called {query!r} (and no such file).{hint}{_unknown_hash_hint(q)} {where}")


def _find_by_known_hash(home: DataHome, q: str, entries: list[CheckpointEntry]) -> Optional[Path]:
    """The checkpoint whose hash starts with ``q``, among hashes already known.

    Only the hash cache is consulted (plus A1111's legacy 8-hex hash, which reads
    64 KiB): hashing every unhashed multi-GB file would stall the request that asked."""
    cache = hash_cache(home)
    for e in entries:
        if len(q) == 8 and _legacy_hash_or_none(e.path) == q:
            return e.path
        sha = cache.cached_sha256(e.path)
        if len(q) >= 10 and sha is not None and sha.startswith(q):
            return e.path
    return None


def _legacy_hash_or_none(path: Path) -> Optional[str]:
    try:
        return legacy_model_hash(path)
    except OSError:
        return None


def _unknown_hash_hint(q: str) -> str:
    if not _looks_like_hash(q) or len(q) == 8:
        return ""
    return (
        f" If {q} is a model hash: that hash is not known yet. Brushwork only knows the hashes of checkpoints it has "
        "loaded or listed; run `brushwork models` once to compute them all (large files take a while), then try again."
    )


def _looks_like_hash(q: str) -> bool:
    return len(q) in (8, 10, 12, 64) and all(c in "0123456789abcdefABCDEF" for c in q)


def _settings_path(home: DataHome) -> Path:
    return home.root / "settings.json"


def read_settings(home: DataHome) -> dict:
    try:
        return json.loads(_settings_path(home).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def remember_last_model(home: DataHome, path: Path) -> None:
    """Store the last checkpoint used, so it becomes the default next time.

    The user's checkpoints present at that moment count as seen from then on
    (:func:`default_choice`): only files added later take over the default."""
    settings = read_settings(home)
    settings["last_checkpoint"] = str(path)
    try:
        home.root.mkdir(parents=True, exist_ok=True)
        tmp = _settings_path(home).with_suffix(".tmp")
        tmp.write_text(json.dumps(settings, indent=2), encoding="utf-8")
        tmp.replace(_settings_path(home))
    except OSError:
        pass  # a read-only home only loses this convenience
    mark_seen(home, [e.path for e in user_checkpoints(home)])


def _seen_path(home: DataHome) -> Path:
    return home.cache / "seen-checkpoints.json"


def seen_checkpoints(home: DataHome) -> Optional[set[str]]:
    """The checkpoint files present when a model was last loaded (None: no record yet)."""
    try:
        data = json.loads(_seen_path(home).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return set()
    return {p for p in data if isinstance(p, str)} if isinstance(data, list) else set()


def mark_seen(home: DataHome, paths: list[Path]) -> None:
    seen = (seen_checkpoints(home) or set()) | {str(p) for p in paths}
    target = _seen_path(home)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".tmp")
        tmp.write_text(json.dumps(sorted(seen), indent=1), encoding="utf-8")
        tmp.replace(target)
    except OSError:
        pass


def is_demo(path: Path) -> bool:
    """Whether ``path`` is the built-in demo model shipped in the package."""
    try:
        return Path(path).resolve() == PACKAGED_DEMO
    except OSError:
        return False


@dataclass(frozen=True)
class DefaultChoice:
    """The order the default checkpoint is tried in, and which of them are new."""

    candidates: list[Path]
    new: list[Path]  # the user's checkpoints never seen before, newest first

    def is_new(self, path: Path) -> bool:
        return path in self.new


def default_choice(home: DataHome, entries: Optional[list[CheckpointEntry]] = None) -> DefaultChoice:
    """How the default checkpoint is chosen when the user names none:

    1. the last one used, if it is one of the user's own checkpoints (an explicit
       choice is never lost);
    2. else a checkpoint of the user's that appeared since a model was last loaded
       (the newest by mtime when there are several; without any record yet, name order);
    3. else the last one used (the demo, when it was asked for);
    4. else the user's in name order, then the built-in demo model (listed last).
    """
    entries = list_checkpoints(home) if entries is None else entries
    last = read_settings(home).get("last_checkpoint")
    last_path = next((e.path for e in entries if isinstance(last, str) and str(e.path) == last), None)
    own = [e for e in entries if not is_demo(e.path)]
    seen = seen_checkpoints(home)
    if last_path is not None and not is_demo(last_path):
        first = [last_path]
        new: list[Path] = []
    else:
        unseen = [e for e in own if seen is None or str(e.path) not in seen]
        if seen is not None:
            unseen.sort(key=lambda e: -_mtime(e.path))  # stable: name order among equal times
        new = [e.path for e in unseen]
        first = new + ([last_path] if last_path is not None else [])
    return DefaultChoice(first + [e.path for e in entries if e.path not in first], new)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def default_candidates(home: DataHome, entries: list[CheckpointEntry]) -> list[Path]:
    """The order a default checkpoint is tried in (see :func:`default_choice`)."""
    return default_choice(home, entries).candidates


def default_checkpoint(home: DataHome, entries: list[CheckpointEntry]) -> Path:
    """The preferred default checkpoint (see :func:`default_choice`)."""
    return default_candidates(home, entries)[0]


def load_default(home: DataHome, load: Callable[[Path], T]) -> T:
    """``load`` the default checkpoint when the user named none.

    A file that cannot be used (``load`` raises :class:`ModelFileError`) is skipped
    with a warning naming it and why, and the next candidate is tried, down to the
    built-in demo model: one damaged download never keeps Brushwork from starting."""
    entries = list_checkpoints(home)
    if not entries:
        raise CheckpointNotFound(no_checkpoint_message(home))
    problems = []
    for path in default_candidates(home, entries):
        try:
            return load(path)
        except ModelFileError as exc:
            log.warning("skipping checkpoint %s: %s", path.name, exc)
            problems.append(str(exc))
    raise CheckpointNotFound(
        "None of the checkpoints can be used:\n  " + "\n  ".join(problems)
        + f"\nReplace or remove the damaged files in {home.checkpoint_dirs[0]}, or pass --model with a working checkpoint."
    )


def header_shapes(path: Path) -> Optional[dict]:
    """A tensor file's names and shapes from its header (GGUF: its tensor table), or None
    when it is not a readable tensor file."""
    try:
        if path.suffix.lower() == ".safetensors":
            tensors, _, _ = read_safetensors_header(path)
            return {k: v.shape for k, v in tensors.items()}
        if path.suffix.lower() == ".gguf":
            with open_tensor_file(path) as tf:
                return tf.shapes()
    except (ModelFileError, OSError, ValueError):
        return None
    return None


def flux_parts(home: DataHome, path: Path):
    """The parts of a Flux model whose transformer is ``path`` (models/flux_parts.py), or
    None when the file holds no Flux transformer."""
    from .models.flux import detect_flux
    from .models.flux_parts import find_parts

    shapes = header_shapes(path)
    spec = detect_flux(shapes) if shapes else None
    if spec is None:
        return None
    return find_parts(path, shapes, spec, {"vae": home.vae_dirs, "text_encoders": home.text_encoder_dirs}, header_shapes)


def checkpoint_label(home: DataHome, path: Path) -> str:
    """What a listing shows for a checkpoint: its family, and for Flux which parts were
    found (a damaged file raises :class:`ModelFileError`)."""
    from .models.errors import UnsupportedModel

    try:
        return inspect_checkpoint(path).label
    except UnsupportedModel:  # not SD: a Flux transformer? (read again only then)
        parts = flux_parts(home, path) if path.suffix.lower() in (".safetensors", ".gguf") else None
        if parts is None:
            raise
        return parts.summary()


def inspect_checkpoint(path: Path) -> ModelSpec:
    """Detect a checkpoint's family from its header (safetensors: no weights read).
    A damaged file raises a one-line :class:`ModelFileError`, never another error."""
    with damage_reported(path):
        if path.suffix.lower() == ".safetensors":
            tensors, metadata, _ = read_safetensors_header(path)
            shapes = {k: v.shape for k, v in tensors.items()}

            def read(name: str):
                with open_tensor_file(path) as tf:
                    return tf.get(name)

            return detect(shapes, metadata, read, name=path.name)
        with open_tensor_file(path) as tf:
            return detect(tf.shapes(), tf.metadata, tf.get, name=path.name)


@dataclass(frozen=True)
class CheckpointSummary:
    entry: CheckpointEntry
    size_bytes: int
    family: str  # label, or "unrecognised: ..." for files that cannot be used
    model_hash: Optional[str]


def summarize(home: DataHome, with_hash: bool = True) -> list[CheckpointSummary]:
    cache = hash_cache(home)
    out = []
    for e in list_checkpoints(home):
        try:
            family = checkpoint_label(home, e.path)
        except ModelFileError as exc:
            family = f"unusable: {str(exc).split(': ', 1)[-1][:80]}"
        h = cache.get_sha256(e.path)[:10] if with_hash else None
        out.append(CheckpointSummary(e, e.path.stat().st_size, family, h))
    return out


# ------------------------------------------------------------------ native sizes

#: sizes whose pixel count is outside this factor of the native one draw badly
FAR_FROM_NATIVE = (0.5, 2.0)


def far_from_native(native: tuple[int, int], size: tuple[int, int]) -> bool:
    """Whether ``size`` has under half or over twice the native pixel count."""
    ratio = (size[0] * size[1]) / max(1, native[0] * native[1])
    return ratio < FAR_FROM_NATIVE[0] or ratio > FAR_FROM_NATIVE[1]


def native_size_hint(native: tuple[int, int]) -> str:
    return f"This model was trained at {native[0]}x{native[1]}; far larger or smaller sizes give repeated or broken pictures."


def native_presets(family_presets: list[tuple[int, int]], native: tuple[int, int], min_side: int = 64) -> list[tuple[int, int]]:
    """The family's aspect-ratio presets scaled to the model's native pixel count
    (the first preset is the family's square native size), multiples of 8, the
    native size first; presets far from native are left out."""
    base_w, base_h = family_presets[0]
    scale = ((native[0] * native[1]) / (base_w * base_h)) ** 0.5
    out = [native]
    for w, h in family_presets:
        size = (max(min_side, round(w * scale / 8) * 8), max(min_side, round(h * scale / 8) * 8))
        if size not in out and not far_from_native(native, size):
            out.append(size)
    return out
