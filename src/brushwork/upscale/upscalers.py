"""Image upscalers: the built-in resizes and AUTOMATIC1111/ComfyUI model files.

Model files (ESRGAN, Real-ESRGAN, SwinIR, DAT, HAT ...) are recognised and run
through the optional spandrel package; see docs/upscalers.md.
"""
from __future__ import annotations

import difflib
import logging
import threading
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np
import torch
from PIL import Image

from ..devices import free_memory_bytes
from ..models.errors import ModelFileError
from ..paths import DataHome, files_by_stem
from .models import UPSCALER_SUFFIXES, UpscalerError, UpscalerInfo, cached_model, file_key, import_spandrel, load_descriptor
from .tiles import DEFAULT_HALO, bytes_per_input_pixel, choose_tile, run_tiled

log = logging.getLogger(__name__)

BUILTIN_UPSCALERS = ("None", "Lanczos", "Nearest")
_BUILTINS = tuple(UpscalerInfo(n, "builtin") for n in BUILTIN_UPSCALERS)
#: passes of the model at most (AUTOMATIC1111's limit)
MAX_PASSES = 3

# (path, size, mtime_ns) -> UpscalerInfo, or the problem line of a skipped file
_descriptions: dict[tuple, Union[UpscalerInfo, str]] = {}
_descriptions_lock = threading.Lock()


def _model_files(home: DataHome) -> list[Path]:
    """Candidate files, the first folder (then name order) winning a stem clash."""
    return list(files_by_stem(home.upscaler_dirs, UPSCALER_SUFFIXES, fold_case=True).values())


def _describe(path: Path) -> Union[UpscalerInfo, str]:
    try:
        key = file_key(path)
    except OSError as exc:
        return f"{path}: could not be read ({exc.strerror or exc})."
    with _descriptions_lock:
        known = _descriptions.get(key)
    if known is not None:
        return known
    try:
        described: Union[UpscalerInfo, str] = load_descriptor(path)[0]
    except UpscalerError as exc:
        described = f"{path}: {exc}"
    except ModelFileError as exc:
        described = f"{path}: damaged or not a model file: {exc}"
    except (MemoryError, torch.OutOfMemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - never let one file break the list
        described = f"{path}: damaged or unreadable ({type(exc).__name__}: {str(exc)[:160]})."
    with _descriptions_lock:
        _descriptions[key] = described
    return described


def _scan(home: DataHome) -> tuple[list[UpscalerInfo], list[str]]:
    files = _model_files(home)
    if not files:  # nothing to describe: spandrel (a slow import) is not needed
        return [], []
    try:
        import_spandrel()
    except UpscalerError as exc:
        problems = [str(exc)]
        if files:
            problems.append(f"{len(files)} upscaler model file(s) in {', '.join(str(d) for d in home.upscaler_dirs if d.is_dir())} are not listed until spandrel is installed.")
        return [], problems
    models, problems = [], []
    for p in files:
        d = _describe(p)
        (models if isinstance(d, UpscalerInfo) else problems).append(d)
    models.sort(key=lambda i: i.name.lower())
    return models, problems


def list_upscalers(home: DataHome) -> list[UpscalerInfo]:
    """The built-ins, then every model file spandrel recognises below
    ``home.upscaler_dirs`` (recursive), sorted by name."""
    return list(_BUILTINS) + _scan(home)[0]


def upscaler_problems(home: DataHome) -> list[str]:
    """One line per file in the upscaler folders that was skipped, and why."""
    return _scan(home)[1]


def find_upscaler(home: DataHome, name: str) -> UpscalerInfo:
    """The upscaler called ``name`` (any case; a file name with its suffix works too)."""
    wanted = (name or "").strip()
    folded = wanted.lower()
    for b in _BUILTINS:
        if b.name.lower() == folded:
            return b
    models, problems = _scan(home)
    stem = Path(folded).stem if Path(folded).suffix.lower() in UPSCALER_SUFFIXES else folded
    for info in models:
        if info.name.lower() in (folded, stem) or (info.path is not None and info.path.name.lower() == folded):
            return info
    names = [i.name for i in _BUILTINS] + [i.name for i in models]
    close = difflib.get_close_matches(wanted, names, n=3, cutoff=0.5) or difflib.get_close_matches(folded, [n.lower() for n in names], n=3, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    skipped = next((p for p in problems if Path(p.split(": ", 1)[0]).stem.lower() == stem), None)
    if skipped:
        hint += f" A file of that name was skipped: {skipped}"
    folders = ", ".join(str(d) for d in home.upscaler_dirs)
    raise UpscalerError(
        f"unknown upscaler {name!r}.{hint} Available: {', '.join(names)}. "
        f"Model files (.pth, .safetensors ...) are looked for in: {folders}."
    )


def _resize(image: Image.Image, width: int, height: int, method) -> Image.Image:
    return image if image.size == (width, height) else image.resize((width, height), method)


def _to_tensor(image: Image.Image) -> torch.Tensor:
    a = np.asarray(image, dtype=np.uint8)
    return torch.from_numpy(a.copy()).permute(2, 0, 1).unsqueeze(0).to(torch.float32).div_(255.0)


def _to_image(t: torch.Tensor) -> Image.Image:
    a = t[0].clamp_(0, 1).mul_(255.0).round_().to(torch.uint8).permute(1, 2, 0).contiguous().numpy()
    return Image.fromarray(a, "RGB")


def _call_fn(descriptor) -> Callable[[torch.nn.Module, torch.Tensor], torch.Tensor]:
    # the raw network output (before spandrel clamps it), so an fp16 overflow shows as inf
    fn = getattr(descriptor, "_call_fn", None)
    return fn if callable(fn) else (lambda model, x: model(x))


def _model_pass(image: Image.Image, loaded, device: torch.device, *, memory_budget: Optional[int], tile: Optional[int],
                half: Optional[bool], halo: int, should_stop: Optional[Callable[[], bool]]) -> Image.Image:
    descriptor = loaded.descriptor
    scale = int(descriptor.scale)
    supports_half = bool(getattr(descriptor, "supports_half", False))
    use_half = (device.type == "cuda" and supports_half) if half is None else bool(half) and supports_half
    if loaded.fp32_only:
        use_half = False
    call = _call_fn(descriptor)
    req = descriptor.size_requirements
    x = _to_tensor(image)
    _, _, h, w = x.shape

    if tile is None:
        budget = memory_budget if memory_budget is not None else free_memory_bytes(device) // 2
        per_pixel = bytes_per_input_pixel(descriptor.model, scale, 2 if use_half else 4)
        tile = choose_tile(h, w, per_pixel, budget, halo, max(1, req.multiple_of))
        if tile is not None:
            log.info("upscaling %dx%d with %s in tiles of %d px (budget %d MiB)", w, h, loaded.info.name, tile, budget >> 20)

    state = {"half": use_half}

    def run(piece: torch.Tensor) -> torch.Tensor:
        if state["half"]:
            loaded.place(device, torch.float16)
            with torch.inference_mode():
                y = call(loaded.descriptor.model, piece.to(device=device, dtype=torch.float16))
                if bool(torch.isfinite(y).all()):
                    return y.float().clamp_(0, 1)
            log.warning("%s: float16 output overflowed (inf/NaN); running it in float32 from now on.", loaded.info.name)
            loaded.fp32_only = True
            state["half"] = False
            del y
        loaded.place(device, torch.float32)
        with torch.inference_mode():
            y = call(loaded.descriptor.model, piece.to(device=device, dtype=torch.float32))
            return y.float().clamp_(0, 1)

    out = run_tiled(run, x, scale, tile, halo, req.minimum, req.multiple_of, req.square, should_stop)
    del x
    return _to_image(out)


def upscale_image(image: Image.Image, width: int, height: int, upscaler: UpscalerInfo, device: Optional[torch.device] = None, *,
                  memory_budget: Optional[int] = None, tile: Optional[int] = None, half: Optional[bool] = None,
                  should_stop: Optional[Callable[[], bool]] = None, halo: int = DEFAULT_HALO) -> Image.Image:
    """``image`` as an RGB picture of exactly ``width`` x ``height``.

    "None" and "Lanczos" resize with Lanczos, "Nearest" with nearest neighbour.  A
    model runs on the picture (tiled when the whole does not fit ``memory_budget``,
    default half the device's free memory; ``tile`` forces a tile side), again while
    the result is smaller than the target (at most 3 passes), then the result is
    Lanczos-resized to exactly the target."""
    width, height = int(width), int(height)
    if width < 1 or height < 1:
        raise UpscalerError(f"the upscale target {width}x{height} is empty; give a width and height of at least 1 pixel.")
    rgb = image.convert("RGB") if image.mode != "RGB" else image
    if upscaler.kind == "builtin":
        if upscaler.name == "Nearest":
            return _resize(rgb, width, height, Image.Resampling.NEAREST)
        if upscaler.name in ("None", "Lanczos"):
            return _resize(rgb, width, height, Image.Resampling.LANCZOS)
        raise UpscalerError(f"unknown built-in upscaler {upscaler.name!r}; the built-ins are {', '.join(BUILTIN_UPSCALERS)}.")
    if upscaler.kind != "model":
        raise UpscalerError(f"upscaler {upscaler.name!r} has an unknown kind {upscaler.kind!r} (expected 'builtin' or 'model').")
    device = device or torch.device("cpu")
    loaded = cached_model(upscaler)
    current = rgb
    for _ in range(MAX_PASSES):
        before = current.size
        current = _model_pass(current, loaded, device, memory_budget=memory_budget, tile=tile, half=half, halo=halo, should_stop=should_stop)
        if current.size == before or (current.width >= width and current.height >= height):
            break
    return _resize(current, width, height, Image.Resampling.LANCZOS)
