"""Existing installs used in place: the model folders of an AUTOMATIC1111/Forge or
ComfyUI install (or of a ComfyUI ``extra_model_paths.yaml``), linked into the data
home without copying anything.

``brushwork models link PATH`` detects the layout, and stores the link in
``HOME/links.json`` (hand-editable)::

    {"version": 1,
     "links": [
       {"path": "/home/me/stable-diffusion-webui", "layout": "a1111",
        "folders": {"checkpoints": ["/home/me/stable-diffusion-webui/models/Stable-diffusion"],
                    "loras": ["/home/me/stable-diffusion-webui/models/Lora", "..."]}}]}

Kinds are ``checkpoints``, ``loras``, ``vae``, ``embeddings`` and ``upscalers``.  An
entry written by hand may give only ``path`` (the layout is then detected when the
file is read) or only ``folders`` (any folders at all; relative ones are taken from
the data home).  :class:`brushwork.paths.DataHome` lists the linked folders after
Brushwork's own, so every lookup (checkpoints, LoRAs, embeddings, VAEs, upscalers)
sees them; folders that do not exist (an unplugged drive) are skipped.  Nothing
inside a linked install is ever written, moved or removed.
"""
from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

log = logging.getLogger(__name__)

KINDS = ("checkpoints", "loras", "vae", "embeddings", "upscalers", "text_encoders")
KIND_LABELS = {"checkpoints": "checkpoints", "loras": "LoRAs", "vae": "VAEs", "embeddings": "embeddings", "upscalers": "upscalers", "text_encoders": "text encoders"}
LAYOUT_LABELS = {"a1111": "AUTOMATIC1111/Forge install", "comfyui": "ComfyUI install", "comfyui-yaml": "ComfyUI extra_model_paths.yaml", "folders": "set of folders"}
FILE_VERSION = 1

#: AUTOMATIC1111's (and Forge's, SD.Next's) folders below the webui folder
A1111_FOLDERS = {
    "checkpoints": ("models/Stable-diffusion",),
    "loras": ("models/Lora", "models/LyCORIS"),
    "vae": ("models/VAE",),
    "embeddings": ("embeddings", "models/embeddings"),
    "upscalers": ("models/ESRGAN", "models/RealESRGAN", "models/SwinIR", "models/DAT", "models/HAT"),
    "text_encoders": ("models/text_encoder",),  # Forge's, for Flux's clip_l and t5xxl
}
#: ComfyUI's folders below its install folder
COMFYUI_FOLDERS = {
    "checkpoints": ("models/checkpoints", "models/diffusion_models", "models/unet"),
    "loras": ("models/loras",),
    "vae": ("models/vae",),
    "embeddings": ("models/embeddings",),
    "upscalers": ("models/upscale_models",),
    "text_encoders": ("models/text_encoders", "models/clip"),
}
#: extra_model_paths.yaml's keys for the kinds Brushwork uses (the others are ignored)
COMFYUI_KEYS = {"checkpoints": "checkpoints", "diffusion_models": "checkpoints", "unet": "checkpoints", "loras": "loras", "vae": "vae", "embeddings": "embeddings", "upscale_models": "upscalers",
                "text_encoders": "text_encoders", "clip": "text_encoders"}
EXTRA_PATHS_FILE = "extra_model_paths.yaml"

WHAT_TO_LINK = (
    "brushwork models link takes the folder of an AUTOMATIC1111 or Forge webui (the one holding models/Stable-diffusion), "
    "of a ComfyUI install (holding models/checkpoints), or a ComfyUI extra_model_paths.yaml file."
)


class LinkError(ValueError):
    """A path that cannot be linked, or a links file that cannot be read or written;
    the message says what was wrong and what to do."""


@dataclass(frozen=True)
class Link:
    path: Path  # what was linked: the install's folder, or the yaml file
    layout: str  # "a1111" | "comfyui" | "comfyui-yaml" | "folders" (written by hand)
    folders: dict = field(default_factory=dict)  # kind -> tuple of folders (existing or not)

    @property
    def label(self) -> str:
        return LAYOUT_LABELS.get(self.layout, self.layout)

    def existing(self, kind: str) -> list[Path]:
        return [f for f in self.folders.get(kind, ()) if f.is_dir()]


# ------------------------------------------------------------------ detecting a layout


def _candidates(root: Path, table: dict) -> dict:
    return {kind: tuple(root / rel for rel in table[kind]) for kind in KINDS}


def _merge(*parts: dict) -> dict:
    out: dict = {}
    for part in parts:
        for kind in KINDS:
            seen = out.setdefault(kind, ())
            out[kind] = seen + tuple(p for p in part.get(kind, ()) if p not in seen)
    return {k: v for k, v in out.items() if v}


def _lines(value: Any) -> list[str]:
    """A yaml value's paths: a "|" block (one per line), a plain string, or a list."""
    items = value if isinstance(value, list) else str(value).splitlines() if isinstance(value, (str, int, float)) else []
    return [s.strip() for s in map(str, items) if s.strip() and not s.strip().startswith("#")]


def _expand(text: str) -> Path:
    return Path(os.path.expandvars(os.path.expanduser(text)))


def parse_extra_model_paths(yaml_file: Path) -> dict:
    """The folders a ComfyUI ``extra_model_paths.yaml`` names, by kind.

    Its top-level sections each have an optional ``base_path`` (``~`` and environment
    variables expanded; relative: from the yaml file's folder) and keys such as
    ``checkpoints`` or ``loras`` whose value is a path or a ``|`` block of several,
    each relative to ``base_path``.  Keys of other kinds (controlnet, clip ...) are ignored."""
    try:
        import yaml
    except ImportError:  # pragma: no cover - pyyaml comes with transformers
        raise LinkError("reading extra_model_paths.yaml needs the pyyaml package: pip install pyyaml") from None
    try:
        data = yaml.safe_load(Path(yaml_file).read_text(encoding="utf-8"))
    except OSError as exc:
        raise LinkError(f"cannot read {yaml_file} ({exc.strerror or exc}).") from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        raise LinkError(f"{yaml_file} is not valid YAML{at}; fix it (ComfyUI would refuse it too), then link again.") from None
    if not isinstance(data, dict):
        raise LinkError(f"{yaml_file} holds no sections; ComfyUI's format is a section name, then base_path and keys such as checkpoints: models/checkpoints.")
    here = Path(yaml_file).resolve().parent
    found: dict = {}
    for section in data.values():
        if not isinstance(section, dict):
            continue
        base = section.get("base_path")
        base_dir = here
        if isinstance(base, str) and base.strip():
            base_dir = _expand(base.strip())
            base_dir = base_dir if base_dir.is_absolute() else here / base_dir
        for key, value in section.items():
            kind = COMFYUI_KEYS.get(str(key))
            if kind is None:
                continue
            for line in _lines(value):
                target = _expand(line)
                folder = target if target.is_absolute() else base_dir / target
                folder = Path(os.path.normpath(folder))
                if folder not in found.setdefault(kind, ()):
                    found[kind] = found[kind] + (folder,)
    return found


def _near_miss(p: Path) -> Optional[str]:
    """A hint when ``p`` lies inside an install (a models folder or one of its kinds)."""
    for up in (p.parent.parent, p.parent):
        if ((up / "models" / "Stable-diffusion").is_dir() or (up / "models" / "checkpoints").is_dir()):
            kind = "AUTOMATIC1111/Forge" if (up / "models" / "Stable-diffusion").is_dir() else "ComfyUI"
            return f"{p} is a folder inside the {kind} install at {up}; link the install itself: brushwork models link {up}"
    return None


def detect(path: str | os.PathLike, home=None) -> Link:
    """What ``path`` is: an AUTOMATIC1111/Forge webui folder, a ComfyUI folder (with
    its extra_model_paths.yaml if it has one; the portable build's outer folder
    works too) or an extra_model_paths.yaml file.  Anything else is a LinkError that
    says what to give instead."""
    p = Path(path).expanduser()
    if not p.exists():
        raise LinkError(f"{path} does not exist. {WHAT_TO_LINK}")
    p = p.resolve()
    if home is not None and p == Path(home.root).resolve():
        raise LinkError(f"{p} is Brushwork's own data home; its folders are read already. {WHAT_TO_LINK}")
    if p.is_file():
        if p.suffix.lower() not in (".yaml", ".yml"):
            raise LinkError(f"{p} is a file, not an install's folder. {WHAT_TO_LINK} To use one checkpoint file, pass it to generate: --model {p}")
        folders = parse_extra_model_paths(p)
        if not folders:
            raise LinkError(f"{p} names no checkpoints, loras, vae, embeddings or upscale_models folders, so there is nothing to link. "
                            "ComfyUI's format: a section, its base_path, then e.g. checkpoints: models/Stable-diffusion")
        return Link(p, "comfyui-yaml", folders)
    if (p / "models" / "Stable-diffusion").is_dir():
        return Link(p, "a1111", _candidates(p, A1111_FOLDERS))
    for root in (p, p / "ComfyUI"):  # the portable build keeps ComfyUI one folder down
        if (root / "models" / "checkpoints").is_dir():
            own = _candidates(root, COMFYUI_FOLDERS)
            extra = root / EXTRA_PATHS_FILE
            return Link(root, "comfyui", _merge(own, parse_extra_model_paths(extra)) if extra.is_file() else own)
    hint = _near_miss(p)
    if hint:
        raise LinkError(hint)
    from .models.files import iter_checkpoint_files

    loose = next(iter_checkpoint_files(p), None) is not None
    more = (" It holds checkpoint files directly: to use such a plain folder, add it to HOME/links.json by hand "
            f'({{"path": "{p}", "folders": {{"checkpoints": ["{p}"]}}}}, docs/models.md), or pass a file with --model.') if loose else ""
    raise LinkError(f"{p} is not an AUTOMATIC1111, Forge or ComfyUI install (no models/Stable-diffusion or models/checkpoints folder in it). {WHAT_TO_LINK}{more}")


# ------------------------------------------------------------------ the links file


def links_file(home) -> Path:
    return Path(home.root) / "links.json"


def _folder(text: Any, home) -> Optional[Path]:
    if not isinstance(text, str) or not text.strip():
        return None
    p = _expand(text.strip())
    return p if p.is_absolute() else Path(home.root) / p


def _link_from_entry(entry: Any, home) -> Optional[Link]:
    if isinstance(entry, str):
        entry = {"path": entry}
    if not isinstance(entry, dict):
        return None
    path = _folder(entry.get("path"), home)
    folders = entry.get("folders")
    if isinstance(folders, dict):
        table = {}
        for kind in KINDS:
            items = folders.get(kind)
            items = [items] if isinstance(items, str) else items if isinstance(items, list) else []
            table[kind] = tuple(f for f in (_folder(i, home) for i in items) if f is not None)
        return Link(path or Path(home.root), str(entry.get("layout") or "folders"), {k: v for k, v in table.items() if v})
    if path is None:
        return None
    try:
        return detect(path, home)
    except LinkError as exc:  # an install that has gone away: kept, with no folders
        log.info("linked %s: %s", path, exc)
        return Link(path, str(entry.get("layout") or "missing"), {})


def _parse(text: str, home) -> list[Link]:
    path = links_file(home)
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise LinkError(f"{path} is not valid JSON ({exc}); fix it by hand, or delete it to drop every link (nothing in the linked installs is touched).") from None
    entries = data.get("links") if isinstance(data, dict) else data if isinstance(data, list) else None
    if not isinstance(entries, list):
        raise LinkError(f"{path} has no \"links\" list; it should look like {{\"version\": 1, \"links\": [{{\"path\": \"/path/to/stable-diffusion-webui\"}}]}}.")
    return [link for link in (_link_from_entry(e, home) for e in entries) if link is not None]


_cache: dict[str, tuple[tuple, Any]] = {}
_cache_lock = threading.Lock()
_write_lock = threading.Lock()


def read_links(home) -> list[Link]:
    """The links of the data home (none when there is no links file).  A damaged file
    is a LinkError; the parsed file is kept while it does not change."""
    path = links_file(home)
    try:
        st = path.stat()
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise LinkError(f"cannot read {path} ({exc.strerror or exc}).") from None
    key = (st.st_mtime_ns, st.st_size, st.st_ino)
    with _cache_lock:
        known = _cache.get(str(path))
    if known is not None and known[0] == key:
        if isinstance(known[1], LinkError):
            raise known[1]
        return list(known[1])
    try:
        result: Any = _parse(path.read_text(encoding="utf-8"), home)
    except LinkError as exc:
        result = exc
    except OSError as exc:
        result = LinkError(f"cannot read {path} ({exc.strerror or exc}).")
    with _cache_lock:
        _cache[str(path)] = (key, result)
    if isinstance(result, LinkError):
        log.warning("ignoring the linked installs: %s", result)
        raise result
    return list(result)


def linked_folders(home, kind: str) -> list[Path]:
    """The existing folders of ``kind`` in every linked install, in link order; never
    raises (a damaged links file was warned about and counts as no links)."""
    try:
        links = read_links(home)
    except LinkError:
        return []
    out: list[Path] = []
    for link in links:
        for folder in link.existing(kind):
            if folder not in out:
                out.append(folder)
    return out


def _entry(link: Link) -> dict:
    return {"path": str(link.path), "layout": link.layout, "folders": {k: [str(f) for f in v] for k, v in link.folders.items()}}


def _raw_entries(home) -> list:
    path = links_file(home)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise LinkError(f"cannot read {path} ({exc.strerror or exc}).") from None
    _parse(text, home)  # refuses a damaged file before it is rewritten
    data = json.loads(text)
    return list(data.get("links") if isinstance(data, dict) else data)


def _same(entry: Any, target: Path, home) -> bool:
    raw = entry.get("path") if isinstance(entry, dict) else entry if isinstance(entry, str) else None
    p = _folder(raw, home)
    if p is None:
        return False
    try:
        return p.resolve() == target or p == target
    except OSError:
        return p == target


def _write(home, entries: list) -> None:
    from .paths import write_json_atomically  # paths.py reads this module's links

    path = links_file(home)
    try:
        write_json_atomically(path, {"version": FILE_VERSION, "links": entries})
    except OSError as exc:
        raise LinkError(f"cannot write {path} ({exc.strerror or exc}); check that the data home is writable and the disk is not full.") from None


def add_link(home, path: str | os.PathLike) -> tuple[Link, bool]:
    """Link the install at ``path`` (detected as :func:`detect` does); linking it
    again refreshes its folders.  Returns (the link, whether it was linked before)."""
    link = detect(path, home)
    with _write_lock:
        entries = _raw_entries(home)
        before = [e for e in entries if _same(e, link.path, home)]
        entries = [e for e in entries if not _same(e, link.path, home)] + [_entry(link)]
        _write(home, entries)
    return link, bool(before)


def remove_link(home, path: str | os.PathLike) -> Link:
    """Forget the link to ``path`` (the install itself is not touched)."""
    p = Path(path).expanduser()
    target = p.resolve() if p.exists() else Path(os.path.abspath(p))
    with _write_lock:
        entries = _raw_entries(home)
        keep = [e for e in entries if not (_same(e, target, home) or _same(e, p, home))]
        if len(keep) == len(entries):
            linked = [str(link.path) for link in read_links(home)]
            where = f" The links are: {', '.join(linked)}." if linked else " Nothing is linked."
            raise LinkError(f"{path} is not linked.{where} (brushwork models link lists them.)")
        gone = [e for e in entries if e not in keep][0]
        _write(home, keep)
    return _link_from_entry(gone, home) or Link(target, "missing", {})


# ------------------------------------------------------------------ what a link holds


def kind_suffixes(kind: str) -> tuple[str, ...]:
    from .embeddings import SUFFIXES as EMBEDDING_SUFFIXES
    from .lora import LORA_SUFFIXES
    from .upscale.models import UPSCALER_SUFFIXES

    return {"checkpoints": (".safetensors", ".ckpt"), "loras": LORA_SUFFIXES, "vae": (".safetensors", ".pt", ".ckpt", ".bin"),
            "embeddings": EMBEDDING_SUFFIXES, "upscalers": UPSCALER_SUFFIXES}[kind]


def count_files(folder: Path, kind: str) -> int:
    """Model files of ``kind`` below ``folder`` (recursive; 0 when it is missing)."""
    if kind == "checkpoints":
        from .models.files import iter_checkpoint_files

        return sum(1 for _ in iter_checkpoint_files(folder))
    if not folder.is_dir():
        return 0
    suffixes = kind_suffixes(kind)
    try:
        return sum(1 for p in folder.rglob("*") if p.suffix.lower() in suffixes and p.is_file())
    except OSError:
        return 0


def link_counts(link: Link) -> dict:
    """kind -> (files found, the existing folders)."""
    out = {}
    for kind in KINDS:
        folders = link.existing(kind)
        out[kind] = (sum(count_files(f, kind) for f in folders), folders)
    return out


def describe(link: Link) -> list[str]:
    """Lines saying what a link holds: per kind, the files found and where."""
    lines = []
    for kind, (n, folders) in link_counts(link).items():
        where = ", ".join(str(f) for f in folders) if folders else "(no such folder)"
        lines.append(f"  {KIND_LABELS[kind]:<12} {n:>5}  {where}")
    return lines


def linked_install_of(home, path: Path) -> Optional[Link]:
    """The link whose folders hold ``path``, if any (for marking listings)."""
    try:
        links = read_links(home)
    except LinkError:
        return None
    real = Path(path).resolve()
    for link in links:
        for folders in link.folders.values():
            for f in folders:
                try:
                    if real.is_relative_to(f.resolve()) or Path(path).is_relative_to(f):
                        return link
                except OSError:
                    continue
    return None
