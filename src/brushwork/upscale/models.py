"""Upscaler model files: reading them safely, recognising them through spandrel,
and keeping the one in use loaded.

spandrel (and through it torchvision) is imported here, lazily, inside
:func:`import_spandrel` only: nothing in Brushwork imports it at module import, so a
missing or mismatched spandrel/torchvision never breaks anything but the model
upscalers themselves.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

import torch

from ..models.errors import ModelFileError
from ..models.files import open_tensor_file

log = logging.getLogger(__name__)

#: suffixes of the files looked at in the upscaler folders
UPSCALER_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin", ".safetensors")
#: dicts that training code nests the weights in, named as prefixes by the reader ("state_dict"
#: it takes off itself; "model" is left alone: old-style ESRGAN keys start with "model.")
_WRAPPERS = ("params_ema", "params", "model_state_dict", "net_g", "generator")

SPANDREL_HELP = (
    "upscaler model files need the optional 'spandrel' package with a torchvision that matches the "
    "installed torch exactly (e.g. pip install torch==2.14.1 torchvision==0.29.1 spandrel, or for a "
    "CPU-only machine with internet: pip install torch torchvision --index-url "
    "https://download.pytorch.org/whl/cpu, then pip install spandrel; or pip install -e '.[upscalers]'). "
    "The Lanczos and Nearest upscalers (and the latent hires modes) work without it."
)


class UpscalerError(ValueError):
    """An upscaler could not be found, loaded or run; the message says what to do."""


@dataclass(frozen=True)
class UpscalerInfo:
    name: str  # builtins: "None", "Lanczos", "Nearest"; model files: the file stem
    kind: str  # "builtin" or "model"
    path: Optional[Path] = None
    architecture: Optional[str] = None  # spandrel's architecture name
    scale: Optional[int] = None  # the model's native scale (builtins: None)


_spandrel_lock = threading.Lock()
_spandrel_failure: Optional[str] = None


def import_spandrel():
    """The spandrel module, or :class:`UpscalerError` with how to install it.

    Any failure counts (ImportError, but also a RuntimeError such as torchvision's
    ``operator torchvision::nms does not exist`` when torch and torchvision do not
    match, or an OSError from a broken shared library)."""
    global _spandrel_failure
    with _spandrel_lock:
        try:
            import spandrel  # noqa: PLC0415 - lazy on purpose
        except BaseException as exc:  # noqa: BLE001 - any import failure means "not usable"
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            first = (str(exc).strip().splitlines() or [""])[0][:200]
            _spandrel_failure = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
            log.debug("import spandrel failed", exc_info=True)
            raise UpscalerError(f"spandrel could not be imported ({_spandrel_failure}): {SPANDREL_HELP}") from None
        if spandrel is None:  # a None entry in sys.modules blocks it
            raise UpscalerError(f"spandrel could not be imported (it is blocked): {SPANDREL_HELP}")
        return spandrel


def _unwrap(flat: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The network's own names from a file's flat tensors: the reader names the
    tensors of a nested dict ``wrapper.name`` (BasicSR's ``params_ema`` / ``params``
    and the like; the first wrapper found in :data:`_WRAPPERS` order wins), and a
    common ``module.`` (DataParallel) prefix is stripped."""
    out = dict(flat)
    for wrapper in _WRAPPERS:
        prefix = wrapper + "."
        inside = {k[len(prefix):]: v for k, v in out.items() if k.startswith(prefix)}
        if inside:
            out = inside
            break
    if out and all(k.startswith("module.") for k in out):
        out = {k[len("module."):]: v for k, v in out.items()}
    return out


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of an upscaler file, never running code from it (Brushwork's own
    reader; BasicSR/Real-ESRGAN files nest theirs under ``params_ema`` or ``params``,
    which the reader prefixes and :func:`_unwrap` takes off)."""
    with open_tensor_file(path) as tf:
        sd = {name: tf.get(name) for name in tf.tensors}
    sd = _unwrap(sd)
    if not sd:
        raise ModelFileError(f"{path.name} holds no tensors.")
    return sd


@dataclass
class Loaded:
    """A recognised model file: its description and spandrel's descriptor."""

    info: UpscalerInfo
    descriptor: Any  # spandrel.ImageModelDescriptor
    key: tuple
    fp32_only: bool = False  # its fp16 output overflowed once: float32 from then on
    rounded: bool = False  # its weights were cast to float16 (a cast back would not restore them)

    def place(self, device: torch.device, dtype: torch.dtype) -> None:
        """Put the network on ``device`` in ``dtype``.  Going back to float32 after
        float16 re-reads the file: the float16 weights lost precision (or overflowed)."""
        d = self.descriptor
        if dtype != torch.float16 and self.rounded:
            assert self.info.path is not None
            self.descriptor = d = load_descriptor(self.info.path)[1]
            self.rounded = False
        if d.dtype != dtype or d.device != device:
            d.to(device=device, dtype=dtype)
        if dtype == torch.float16:
            self.rounded = True


def _arch_name(descriptor) -> str:
    arch = descriptor.architecture
    return str(getattr(arch, "name", None) or getattr(arch, "id", None) or type(descriptor.model).__name__)


def load_descriptor(path: Path):
    """(UpscalerInfo, descriptor) for a model file on the CPU, or UpscalerError /
    ModelFileError saying why it is not a usable upscaler."""
    spandrel = import_spandrel()
    sd = read_state_dict(path)
    try:
        descriptor = spandrel.ModelLoader(torch.device("cpu")).load_from_state_dict(sd)
    except spandrel.UnsupportedModelError:
        raise UpscalerError(f"{path.name} is not an upscaler model spandrel knows (its layout matches none of spandrel's architectures); remove it or move it out of the upscaler folders.") from None
    except (MemoryError, torch.OutOfMemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - a recognised layout with the wrong shapes
        first = (str(exc).strip().splitlines() or [""])[0][:160]
        raise UpscalerError(f"{path.name} looks like an upscaler but spandrel could not build it ({type(exc).__name__}: {first}); it is probably damaged or a variant spandrel does not support.") from None
    arch = _arch_name(descriptor)
    if not isinstance(descriptor, spandrel.ImageModelDescriptor):
        raise UpscalerError(f"{path.name} is a {getattr(descriptor, 'purpose', 'other')} model ({arch}), not an upscaler; it was skipped.")
    if descriptor.purpose == "FaceSR":
        raise UpscalerError(f"{path.name} is a face-restoration model ({arch}), not an upscaler; it was skipped.")
    if descriptor.input_channels != 3 or descriptor.output_channels != 3:
        raise UpscalerError(f"{path.name} ({arch}) works on {descriptor.input_channels}-channel pictures, not RGB; it was skipped.")
    descriptor.model.eval()
    info = UpscalerInfo(path.stem, "model", path, arch, int(descriptor.scale))
    return info, descriptor


def file_key(path: Path) -> tuple:
    st = path.stat()
    return (str(path), st.st_size, st.st_mtime_ns)


_cache_lock = threading.Lock()
_loaded: Optional[Loaded] = None


def cached_model(info: UpscalerInfo) -> Loaded:
    """The loaded model for ``info`` (one model is kept; a changed file reloads)."""
    global _loaded
    if info.path is None:
        raise UpscalerError(f"{info.name} is a built-in upscaler, not a model file.")
    try:
        key = file_key(info.path)
    except OSError:
        raise UpscalerError(f"the upscaler file {info.path} is gone; see the list of upscalers for what is there now.") from None
    with _cache_lock:
        if _loaded is not None and _loaded.key == key:
            return _loaded
        _loaded = None  # free the old one before building the next
        try:
            new_info, descriptor = load_descriptor(info.path)
        except ModelFileError as exc:
            raise UpscalerError(f"the upscaler {info.name} could not be loaded: {exc}") from None
        _loaded = Loaded(new_info, descriptor, key)
        return _loaded


def forget_loaded() -> None:
    """Drop the kept model (frees its memory)."""
    global _loaded
    with _cache_lock:
        _loaded = None
