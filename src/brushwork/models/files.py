"""Reading checkpoint files: names, shapes and tensors, without trusting the file.

* ``.safetensors``: the header is parsed and validated by us (so a truncated or
  damaged file gets a clear message instead of a crash deep in a library), then the
  tensors are read lazily, one at a time, from a memory map.  Loading a model never
  holds the whole file in RAM as a second copy.
* ``.ckpt`` / ``.pt``: PyTorch zip pickles, read with ``weights_only`` unpickling,
  and, for old files that pickled training-framework objects, with our own
  unpickler that only builds tensors and plain containers and replaces every other
  class with an inert placeholder.  No code from a pickle ever runs.
"""
from __future__ import annotations

import logging
import math
import mmap
import os
import pickle
import struct
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Mapping

import torch

from ..hashing import SafetensorsHeaderError
from ..hashing import read_safetensors_header as read_raw_header
from .errors import CorruptCheckpoint, ModelFileError, UnsafePickle

log = logging.getLogger(__name__)

SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")


@dataclass(frozen=True)
class TensorInfo:
    dtype: str
    shape: tuple[int, ...]
    start: int = 0  # byte range inside the data section (safetensors only)
    end: int = 0


@dataclass
class TensorFile:
    """A lazily readable checkpoint: names and shapes up front, tensors on demand."""

    path: Path
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str] = field(default_factory=dict)
    _read: Callable[[str, torch.dtype | None], torch.Tensor] | None = None
    _close: Callable[[], None] | None = None

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: v.shape for k, v in self.tensors.items()}

    def get(self, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        """A tensor that owns its memory, cast to ``dtype`` if it is floating point."""
        if name not in self.tensors:
            raise KeyError(name)
        assert self._read is not None
        return self._read(name, dtype)

    def close(self) -> None:
        if self._close is not None:
            self._close()
            self._close = None

    def __enter__(self) -> "TensorFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_safetensors_header(path: Path) -> tuple[dict[str, TensorInfo], dict[str, str], int]:
    """(tensors, metadata, data_start) from a safetensors file, with every tensor's
    dtype, shape and byte range checked against the file (a truncated download or
    a damaged header fails here, with the reason)."""
    size = path.stat().st_size
    name = path.name
    if size < 8:
        raise CorruptCheckpoint(f"{name} is only {size} bytes: it is empty or truncated. Download it again.")
    try:
        header = read_raw_header(path)
    except SafetensorsHeaderError as exc:
        raise CorruptCheckpoint(not_a_tensor_file(path) or f"{exc}. Download it again.") from None
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
    metadata = header.pop("__metadata__", None) or {}
    data_len = size - 8 - header_len
    tensors = {key: _tensor_info(name, key, entry, data_len) for key, entry in header.items()}
    return tensors, dict(metadata), 8 + header_len


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _tensor_info(name: str, key: str, entry, data_len: int) -> TensorInfo:
    """One header entry, validated: a known dtype, a shape of counts, and a byte
    range inside the data section whose length fits the shape."""
    def malformed(why: str) -> CorruptCheckpoint:
        return CorruptCheckpoint(f"{name}: the header entry for tensor {key[:120]!r} is malformed ({why}); the file is damaged. Download it again.")

    if not isinstance(entry, dict):
        raise malformed("not an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in SAFETENSORS_DTYPES:
        raise CorruptCheckpoint(f"{name}: tensor {key[:120]!r} has dtype {dtype!r}, which Brushwork cannot read (known: {', '.join(SAFETENSORS_DTYPES)}).")
    if not isinstance(shape, list) or not all(_is_count(n) for n in shape):
        raise malformed(f"shape {str(shape)[:60]} is not a list of whole numbers")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_count(n) for n in offsets):
        raise malformed(f"data_offsets {str(offsets)[:60]} are not two whole numbers")
    start, end = offsets
    if end > data_len or start > end:
        raise CorruptCheckpoint(
            f"{name} is truncated: tensor {key[:120]!r} ends at byte {end} of the data but the file holds only {data_len} bytes "
            "of data. The download was probably interrupted; download it again."
        )
    need = math.prod(shape) * SAFETENSORS_DTYPES[dtype].itemsize
    if end - start != need:
        raise malformed(f"shape {shape} in {dtype} needs {need} bytes, the offsets give {end - start}")
    return TensorInfo(dtype, tuple(shape), start, end)


def _cast_copy(t: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    target = dtype if dtype is not None and t.is_floating_point() else t.dtype
    return t.to(target, copy=True)


def open_safetensors(path: Path) -> TensorFile:
    """Memory-map the file and hand out tensors one by one.

    Each tensor is copied (and cast) out of the map, then its pages are released
    with ``madvise(DONTNEED)``: the file's pages never pile up in the process's
    resident memory next to the model being built from them.
    """
    tensors, metadata, data_start = read_safetensors_header(path)
    handle = open(path, "rb")
    size = path.stat().st_size
    mm = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_COPY) if size else None
    page = mmap.PAGESIZE

    def read(name: str, dtype: torch.dtype | None) -> torch.Tensor:
        info = tensors[name]
        torch_dtype = SAFETENSORS_DTYPES[info.dtype]
        count = info.end - info.start
        if count == 0 or mm is None:
            return torch.empty(info.shape, dtype=dtype if dtype is not None and torch_dtype.is_floating_point else torch_dtype)
        offset = data_start + info.start
        view = torch.frombuffer(mm, dtype=torch.uint8, count=count, offset=offset)
        out = _cast_copy(view.view(torch_dtype).reshape(info.shape), dtype)
        del view
        lo = offset // page * page
        if hasattr(mm, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
            mm.madvise(mmap.MADV_DONTNEED, lo, offset + count - lo)
        return out

    def close() -> None:
        if mm is not None:
            mm.close()
        handle.close()

    return TensorFile(path, tensors, metadata, read, close)


class _Inert:
    """Stands in for any class a legacy pickle names that is not a tensor or a plain
    container (e.g. a training callback).  It accepts and ignores everything."""

    def __init__(self, *args, **kwargs) -> None:
        pass

    def __setstate__(self, state) -> None:
        pass


_ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_parameter_with_state"),
    ("torch", "Size"),
    ("torch", "device"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "slice"),
    ("builtins", "bytearray"),
    ("builtins", "complex"),
}
_ALLOWED_STORAGES = {"FloatStorage", "HalfStorage", "BFloat16Storage", "DoubleStorage", "LongStorage", "IntStorage", "ShortStorage", "CharStorage", "ByteStorage", "BoolStorage"}
_DANGEROUS_MODULES = ("os", "posix", "nt", "subprocess", "builtins", "sys", "shutil", "socket", "importlib", "runpy", "pty", "webbrowser", "ctypes")


class _SafeUnpickler(pickle.Unpickler):
    """Builds tensors and plain containers only.  A global that could run code
    (``os.system``, ``builtins.eval`` ...) stops the load with :class:`UnsafePickle`;
    any other class becomes :class:`_Inert`."""

    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        if module == "torch" and name in _ALLOWED_STORAGES:
            return super().find_class(module, name)
        if module.split(".")[0] in _DANGEROUS_MODULES or module.startswith("torch"):
            raise UnsafePickle(
                f"this file asks to call {module}.{name} while loading, which a model checkpoint never needs. "
                "It may be malicious; it was not loaded. Prefer .safetensors files."
            )
        return _Inert


class _SafePickleModule:
    """A stand-in for the ``pickle`` module, for ``torch.load(pickle_module=...)``."""

    Unpickler = _SafeUnpickler
    load = staticmethod(lambda f, **kw: _SafeUnpickler(f, **kw).load())
    __name__ = "brushwork_safe_pickle"


def _torch_load(path: Path, weights_only: bool):
    # PyTorch memory-maps only its zip format; files saved before PyTorch 1.6 are read whole
    kwargs = dict(map_location="cpu", mmap=zipfile.is_zipfile(path))
    if weights_only:
        return torch.load(str(path), weights_only=True, **kwargs)
    return torch.load(str(path), weights_only=False, pickle_module=_SafePickleModule, **kwargs)


def _flatten_tensors(obj) -> dict[str, torch.Tensor]:
    if not isinstance(obj, Mapping):
        raise CorruptCheckpoint(f"the file holds a value of type {type(obj).__name__}, not a dictionary of tensors")
    if "state_dict" in obj:
        obj = obj["state_dict"]
        if not isinstance(obj, Mapping):
            raise CorruptCheckpoint(f"its 'state_dict' is of type {type(obj).__name__}, not a dictionary of tensors")
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:  # BasicSR / Real-ESRGAN upscalers nest theirs: {"params_ema": {...}}
        tensors = {f"{k}.{n}": v for k, inner in obj.items() if isinstance(inner, Mapping) for n, v in inner.items() if isinstance(v, torch.Tensor)}
    return tensors


def open_pickle(path: Path) -> TensorFile:
    """Read a .ckpt/.pt file without running code from it."""
    if path.stat().st_size == 0:
        raise CorruptCheckpoint(f"{path.name} is empty (0 bytes). Download it again.")
    what = not_a_tensor_file(path)
    if what:
        raise CorruptCheckpoint(what)
    try:
        try:
            obj = _torch_load(path, weights_only=True)
        except pickle.UnpicklingError:
            # weights_only refused a class (typically a Lightning callback); retry with
            # our unpickler, which builds tensors and ignores everything else.
            obj = _torch_load(path, weights_only=False)
    except UnsafePickle as exc:
        raise UnsafePickle(f"{path.name}: {exc}") from None
    except (RuntimeError, EOFError, ValueError, pickle.UnpicklingError, OSError) as exc:
        what = not_a_tensor_file(path)
        if what:
            raise CorruptCheckpoint(what) from None
        raise CorruptCheckpoint(
            f"{path.name} could not be read as a PyTorch checkpoint ({str(exc).splitlines()[0][:200]}). "
            "It is probably truncated or damaged; download it again."
        ) from None
    try:
        tensors = _flatten_tensors(obj)
    except CorruptCheckpoint as exc:
        raise CorruptCheckpoint(f"{path.name}: {exc}") from None
    infos = {k: TensorInfo(str(v.dtype).replace("torch.", ""), tuple(v.shape)) for k, v in tensors.items()}
    return TensorFile(path, infos, {}, lambda name, dtype: _cast_copy(tensors[name], dtype), tensors.clear)


_MODEL_HINT = "A checkpoint is a .safetensors (or .ckpt) model file, usually 2-7 GB; pass one of those (see: brushwork models)."


def describe_content(path: Path) -> str | None:
    """What ``path`` holds when it is plainly not a tensor file (a text file, a web
    page, a Git LFS pointer, an image, an archive), from its first bytes; else None."""
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError:
        return None
    if not head:
        return None
    stripped = head.lstrip().lower()
    if head.startswith(b"version https://git-lfs"):
        return "a Git LFS pointer (a small text file standing in for the model): run 'git lfs pull' in its repository, or download the file itself"
    if stripped.startswith((b"<!doctype html", b"<html", b"<?xml", b"<head")):
        return "a web page (HTML): the download saved a page (a login, error or redirect page) instead of the model. Download the file itself"
    if head.startswith(b"\x89PNG") or head.startswith(b"\xff\xd8\xff") or head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "an image, not a model. To see the parameters stored in a picture, use: brushwork info IMAGE"
    if path.suffix.lower() == ".safetensors" and head.startswith(b"PK\x03\x04"):
        return "a ZIP archive (perhaps a PyTorch .ckpt renamed to .safetensors): give it its real suffix (.ckpt), or unpack it"
    if head.startswith((b"PK\x03\x04", b"\x80")) or b"\x00" in head:
        return None  # a zip or pickle (a .ckpt), or binary: let the readers say what is wrong
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        text = head[: exc.start].decode("utf-8") if exc.start > len(head) - 4 else None
    if text and all(c.isprintable() or c in "\r\n\t" for c in text):
        first = text.strip().splitlines()[0][:40] if text.strip() else ""
        return (f"a text file (it starts with {first!r})" if first else "a text file") + f". {_MODEL_HINT}"
    return None


def not_a_tensor_file(path: str | os.PathLike) -> str | None:
    """A one-line message for a file that is plainly no model at all (see
    :func:`describe_content`), or None."""
    path = Path(path)
    what = describe_content(path)
    if what is None:
        return None
    return f"{path.name} is not a model file despite its {path.suffix} suffix: it is {what.rstrip('.')}."


def open_tensor_file(path: str | os.PathLike) -> TensorFile:
    """Open a checkpoint-like file by its suffix, with clear errors for everything else."""
    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"{path} does not exist.")
    if path.is_dir():
        raise ModelFileError(
            f"{path} is a folder. Brushwork loads single-file checkpoints (.safetensors or .ckpt); "
            "pass the file inside it."
        )
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        with damage_reported(path, "tensor file"):
            return open_safetensors(path)
    if suffix in (".ckpt", ".pt", ".pth", ".bin"):
        with damage_reported(path, "tensor file"):
            return open_pickle(path)
    if suffix == ".gguf":
        from .gguf_file import open_gguf

        return open_gguf(path)
    raise ModelFileError(not_a_checkpoint_message(path))


def not_a_checkpoint_message(path: Path) -> str:
    """For a file whose suffix is no checkpoint's: what it is, and what to pass."""
    what = describe_content(path)
    if what:
        return f"{path.name} is not a checkpoint file: it is {what.rstrip('.')}."
    return f"{path.name} is not a checkpoint file (it ends in {path.suffix or 'no suffix'}). {_MODEL_HINT}"


def iter_checkpoint_files(folder: Path) -> Iterator[Path]:
    """Checkpoint files below ``folder`` (recursive), skipping VAE side files."""
    if not folder.is_dir():
        return
    for p in sorted(folder.rglob("*")):
        name = p.name.lower()
        if p.is_file() and name.endswith((".safetensors", ".ckpt", ".gguf")) and not name.endswith((".vae.safetensors", ".vae.ckpt")):
            yield p


def _first_line(exc: BaseException, limit: int = 160) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:limit]}" if text else type(exc).__name__


@contextmanager
def damage_reported(path: str | os.PathLike, what: str = "checkpoint", error: type[ModelFileError] = CorruptCheckpoint) -> Iterator[None]:
    """Turn any failure while reading, recognising or building from ``path`` into a
    one-line :class:`ModelFileError` that names the file (not its folder).

    Our own ``ModelFileError`` messages pass through unchanged; a failure deep in
    torch, diffusers or the pickle reader (``TypeError``, ``RecursionError``, a
    ``load_state_dict`` report ...) means the file is not what it claims to be.
    Running out of memory is not the file's fault and is re-raised as it is."""
    name = Path(path).name
    try:
        yield
    except ModelFileError:
        raise
    except (MemoryError, torch.OutOfMemoryError):
        raise
    except OSError as exc:
        raise error(f"{name} could not be read ({exc.strerror or exc}). Check that the file is complete and readable.") from None
    except Exception as exc:  # noqa: BLE001 - every other failure means a damaged file
        log.debug("reading %s failed", path, exc_info=True)
        raise error(f"{name} is damaged or not a {what} ({_first_line(exc)}). Download it again or remove it.") from None
