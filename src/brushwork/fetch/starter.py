"""The starter list (:mod:`.starter_data`) as entries, and which of them are installed."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .kinds import kind_folders
from .sources import KINDS, normalize_sha256


@dataclass(frozen=True)
class StarterEntry:
    name: str  # what to type: brushwork pull NAME
    label: str
    source: str  # a SOURCE pull accepts
    file_name: str  # the name the file gets (what "installed" looks for)
    kind: str
    family: str  # sd1 | sd2 | sdxl
    size: int  # approximate bytes
    sha256: Optional[str] = None  # pinned from a public source, or None


def _entry(raw: dict) -> StarterEntry:
    entry = StarterEntry(raw["name"], raw["label"], raw["source"], raw["file_name"], raw["kind"], raw["family"], int(raw["size"]),
                         normalize_sha256(raw.get("sha256")))
    if entry.kind not in KINDS:
        raise ValueError(f"starter entry {entry.name}: unknown kind {entry.kind!r}")
    if raw.get("sha256") is not None and entry.sha256 is None:
        raise ValueError(f"starter entry {entry.name}: sha256 is not 64 hex digits")
    return entry


def starter_list() -> list[StarterEntry]:
    """The shipped starter entries, in listing order."""
    from .starter_data import STARTERS

    return [_entry(raw) for raw in STARTERS]


def find_starter(name: str) -> Optional[StarterEntry]:
    lowered = name.strip().lower()
    return next((e for e in starter_list() if e.name.lower() == lowered), None)


def _files(folders: list[Path]) -> list[Path]:
    out = []
    for folder in folders:
        if folder.is_dir():
            out.extend(p for p in sorted(folder.rglob("*")) if p.is_file())
    return out


def installed_path(home, entry: StarterEntry, files: Optional[list[Path]] = None) -> Optional[Path]:
    """Where ``entry`` is installed: a file of its name in its kind's folders, or one
    whose sha256 the hash cache already knows to be the pinned one (no hashing here)."""
    files = _files(kind_folders(home, entry.kind)) if files is None else files
    for p in files:
        if p.name == entry.file_name:
            return p
    if entry.sha256:
        from ..hashing import HashCache

        cache = HashCache(Path(home.root) / "cache" / "hashes.json")
        for p in files:
            for kind in ("checkpoint", "pull"):
                if cache.cached_sha256(p, kind=kind) == entry.sha256:
                    return p
    return None


def starter_status(home) -> list[tuple[StarterEntry, Optional[Path]]]:
    """Each starter entry with the path it is installed at, or None."""
    by_kind: dict[str, list[Path]] = {}
    out = []
    for entry in starter_list():
        if entry.kind not in by_kind:
            by_kind[entry.kind] = _files(kind_folders(home, entry.kind))
        out.append((entry, installed_path(home, entry, by_kind[entry.kind])))
    return out
