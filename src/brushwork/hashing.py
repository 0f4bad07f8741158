"""File hashes compatible with AUTOMATIC1111 v1.10.1, plus a disk cache.

Hashes are how infotexts name models ("Model hash", "Lora hashes"), so they
must match A1111 exactly or pasted parameters would not find the right
files.  Hashing multi-gigabyte checkpoints takes seconds to minutes, hence
the JSON cache keyed by path and validated by mtime and size.
Torch-free.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable

__all__ = [
    "HashCache",
    "SafetensorsHeaderError",
    "addnet_hash",
    "legacy_model_hash",
    "model_hash",
    "read_safetensors_header",
    "sha256_file",
]

log = logging.getLogger(__name__)

BLOCK_SIZE = 1 << 20
LEGACY_OFFSET = 0x100000
LEGACY_LENGTH = 0x10000
MODEL_HASH_LENGTH = 10
LEGACY_HASH_LENGTH = 8
ADDNET_HASH_LENGTH = 12
_HEADER_LENGTH_BYTES = 8
_MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit


class SafetensorsHeaderError(ValueError):
    """A ``.safetensors`` file has a header that cannot be read."""


def _hash_stream(handle: Any, block: int) -> str:
    """sha256 of everything left in an open binary file, read in blocks."""
    digest = hashlib.sha256()
    for chunk in iter(lambda: handle.read(block), b""):
        digest.update(chunk)
    return digest.hexdigest()


def _check_block(block: int) -> None:
    """Reject block sizes that would loop forever or read nothing."""
    if block <= 0:
        raise ValueError(f"block size must be a positive number of bytes, got {block}")


def sha256_file(path: Path | str, block: int = BLOCK_SIZE) -> str:
    """Full hex sha256 of a file, streamed so huge checkpoints fit in memory."""
    _check_block(block)
    with open(path, "rb") as handle:
        return _hash_stream(handle, block)


def model_hash(path: Path | str) -> str:
    """A1111's "Model hash": the first 10 hex digits of the file's sha256."""
    return sha256_file(path)[:MODEL_HASH_LENGTH]


def legacy_model_hash(path: Path | str) -> str:
    """A1111's old 8-hex checkpoint hash, still found in older infotexts.

    It hashes only the 64 KiB starting at 1 MiB; a shorter file simply
    contributes fewer (possibly zero) bytes, as in A1111.
    """
    with open(path, "rb") as handle:
        handle.seek(LEGACY_OFFSET)
        data = handle.read(LEGACY_LENGTH)
    return hashlib.sha256(data).hexdigest()[:LEGACY_HASH_LENGTH]


def _header_length(handle: Any, path: Path | str, file_size: int) -> int:
    """Read and sanity-check the 8-byte little-endian header length."""
    raw = handle.read(_HEADER_LENGTH_BYTES)
    name = Path(path).name
    if len(raw) < _HEADER_LENGTH_BYTES:
        raise SafetensorsHeaderError(
            f"{name} is too short to be a .safetensors file ({len(raw)} bytes, under 8); "
            "it is empty or the download is incomplete"
        )
    (length,) = struct.unpack("<Q", raw)
    if length > min(file_size - _HEADER_LENGTH_BYTES, _MAX_HEADER_BYTES):
        raise SafetensorsHeaderError(
            f"{name} claims a {length}-byte header, larger than the file allows; "
            "it is truncated or not a .safetensors file at all"
        )
    return length


def read_safetensors_header(path: Path | str) -> dict[str, Any]:
    """Return the JSON header of a ``.safetensors`` file without reading tensors.

    The header must be a JSON object, and its ``__metadata__`` (if any) an object
    of strings, as the format defines; anything else raises
    :class:`SafetensorsHeaderError`, never another exception."""
    name = Path(path).name
    with open(path, "rb") as handle:
        length = _header_length(handle, path, os.fstat(handle.fileno()).st_size)
        raw = handle.read(length)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SafetensorsHeaderError(
            f"{name} has a header that is not valid UTF-8 JSON ({exc}); "
            "it is not a valid .safetensors file"
        ) from None
    except RecursionError:
        raise SafetensorsHeaderError(f"{name} has a header nested too deeply to read; it is not a valid .safetensors file") from None
    if not isinstance(header, dict):
        raise SafetensorsHeaderError(f"{name} has a header that is a JSON {_json_kind(header)}, not an object; it is not a .safetensors file")
    problem = _metadata_problem(header.get("__metadata__"))
    if problem:
        raise SafetensorsHeaderError(f"{name} has malformed metadata: {problem}; the file is damaged or was written by a broken tool")
    return header


def _json_kind(value: Any) -> str:
    """The JSON name of a decoded value's type, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return {str: "string", list: "array", dict: "object"}.get(type(value), type(value).__name__)


def _metadata_problem(metadata: Any) -> str | None:
    """Why a header's ``__metadata__`` is not an object of strings (None: it is, or absent)."""
    if metadata is None:
        return None
    if not isinstance(metadata, dict):
        return f"__metadata__ is a JSON {_json_kind(metadata)}, not an object of strings"
    for key, value in metadata.items():
        if not isinstance(value, str):
            return f"the value of {key[:60]!r} is a JSON {_json_kind(value)}, where the format requires a string"
    return None


def _addnet_digest(path: Path | str, block: int = BLOCK_SIZE) -> str:
    """Full sha256 of the tensor data, i.e. everything after the header.

    Skipping the header makes the hash stable when only metadata changes,
    which is why A1111 (after the sd-scripts "addnet" convention) uses it.
    """
    with open(path, "rb") as handle:
        length = _header_length(handle, path, os.fstat(handle.fileno()).st_size)
        handle.seek(_HEADER_LENGTH_BYTES + length)
        return _hash_stream(handle, block)


def _stored_addnet_hash(path: Path | str) -> str | None:
    """The trainer-recorded ``sshs_model_hash`` from the metadata, if any."""
    metadata = read_safetensors_header(path).get("__metadata__")
    if isinstance(metadata, dict):
        value = metadata.get("sshs_model_hash")
        if isinstance(value, str) and value.strip():
            return value.strip()[:ADDNET_HASH_LENGTH]
    return None


def _is_safetensors(path: Path | str) -> bool:
    return Path(path).suffix.lower() == ".safetensors"


def addnet_hash(path: Path | str) -> str:
    """The 12-hex hash A1111 writes in "Lora hashes".

    For ``.safetensors`` files: ``sshs_model_hash`` from the metadata when
    present, else the sha256 of the data after the header.  Other formats
    (``.pt``, ``.ckpt``) use the whole-file sha256.
    """
    if not _is_safetensors(path):
        return sha256_file(path)[:ADDNET_HASH_LENGTH]
    stored = _stored_addnet_hash(path)
    if stored:
        return stored
    return _addnet_digest(path)[:ADDNET_HASH_LENGTH]


def _valid_entry(entry: Any, mtime: float, size: int) -> str | None:
    """The cached hash when ``entry`` still describes the file, else None."""
    if not isinstance(entry, dict):
        return None
    digest = entry.get("sha256")
    if entry.get("mtime") != mtime or entry.get("size") != size:
        return None
    return digest if isinstance(digest, str) and digest else None


class HashCache:
    """A JSON cache of file hashes, e.g. at ``<home>/cache/hashes.json``.

    Entries are keyed ``<kind>/<absolute path>`` and hold ``mtime``, ``size``
    and ``sha256``; a change in either stat value means the file was replaced
    and the hash is recomputed.  The cache is an optimisation only: a corrupt
    or unwritable cache file is logged and otherwise ignored.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._entries: dict[str, Any] | None = None
        self._lock = threading.Lock()

    def _load(self) -> dict[str, Any]:
        """Read the cache file once; start empty when it is missing or bad."""
        if self._entries is not None:
            return self._entries
        entries: dict[str, Any] = {}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            data = {}
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            log.warning("ignoring unreadable hash cache %s (%s); it will be rebuilt", self.path, exc)
            data = {}
        if isinstance(data, dict):
            entries = data
        else:
            log.warning("ignoring hash cache %s: expected a JSON object; it will be rebuilt", self.path)
        self._entries = entries
        return entries

    def _save(self) -> None:
        """Write the cache atomically so readers never see half a file."""
        entries = self._load()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            handle, temp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        except OSError as exc:
            log.warning("cannot write hash cache %s (%s); hashes will be recomputed next time", self.path, exc)
            return
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as stream:
                json.dump(entries, stream, indent=1, sort_keys=True)
            os.replace(temp, self.path)
        except OSError as exc:
            Path(temp).unlink(missing_ok=True)
            log.warning("cannot write hash cache %s (%s); hashes will be recomputed next time", self.path, exc)

    def _lookup(self, kind: str, path: Path | str, compute: Callable[[Path], str]) -> str:
        """Return a cached value for ``kind``/``path`` or compute and store it."""
        absolute = Path(path).resolve()
        stat = absolute.stat()
        key = f"{kind}/{absolute}"
        with self._lock:
            cached = _valid_entry(self._load().get(key), stat.st_mtime, stat.st_size)
        if cached:
            return cached
        digest = compute(absolute)
        with self._lock:
            self._load()[key] = {"mtime": stat.st_mtime, "size": stat.st_size, "sha256": digest}
            self._save()
        return digest

    def cached_sha256(self, path: Path | str, kind: str = "checkpoint") -> str | None:
        """The hash if the cache has a valid entry, without reading the file (for listings)."""
        absolute = Path(path).resolve()
        try:
            stat = absolute.stat()
        except OSError:
            return None
        with self._lock:
            return _valid_entry(self._load().get(f"{kind}/{absolute}"), stat.st_mtime, stat.st_size)

    def get_sha256(self, path: Path | str, kind: str = "checkpoint") -> str:
        """Full hex sha256 of ``path``, from the cache when still valid."""
        return self._lookup(kind, path, lambda p: sha256_file(p))

    def get_addnet_hash(self, path: Path | str) -> str:
        """Cached form of :func:`addnet_hash` for LoRA files (12 hex).

        The metadata override is read from the small header each time (it is
        cheap); only the expensive data hash is cached, under kind "addnet".
        """
        if not _is_safetensors(path):
            return self.get_sha256(path, kind="lora")[:ADDNET_HASH_LENGTH]
        stored = _stored_addnet_hash(path)
        if stored:
            return stored
        return self._lookup("addnet", path, _addnet_digest)[:ADDNET_HASH_LENGTH]
