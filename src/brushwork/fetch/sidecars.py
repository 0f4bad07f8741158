"""Files beside a model that describe it, in the conventions other tools read.

Written after a pull (never over a file that is already there):

* ``NAME.civitai.info``: civitai's model-version JSON, pretty-printed (the
  convention of the A1111 "Civitai Helper" extension, which tools such as
  A1111's extra-networks pages and ComfyUI managers read);
* ``NAME.preview.png``: the version's first picture, converted to PNG (A1111 shows
  ``NAME.preview.png`` as the card's image); a preview that fails is skipped;
* ``NAME.json``: A1111's extra-networks user metadata, with the keys its editor
  uses: ``"activation text"`` (trigger words), ``"sd version"`` (``SD1``/``SD2``/
  ``SDXL``), ``"notes"`` (where the file came from).  civitai sends no recommended
  weight, so ``"preferred weight"`` is left for the user.

:func:`model_info` reads them back (the user's ``NAME.json`` first).
"""
from __future__ import annotations

import io
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from .kinds import SD_VERSION
from .sources import PullPlan, strip_token

log = logging.getLogger(__name__)

PREVIEW_SUFFIXES = (".preview.png", ".png", ".preview.jpg", ".jpg", ".preview.jpeg", ".jpeg", ".preview.webp", ".webp")
PREVIEW_MAX_BYTES = 20 << 20
PREVIEW_MAX_SIDE = 1024
NOTES_PREFIX = "Downloaded with brushwork pull from "


def info_path(model: Path) -> Path:
    return model.with_name(model.stem + ".civitai.info")


def preview_path(model: Path) -> Path:
    return model.with_name(model.stem + ".preview.png")


def user_metadata_path(model: Path) -> Path:
    return model.with_name(model.stem + ".json")


def without_tokens(value: Any) -> Any:
    """``value`` (JSON) with ``token=`` query parameters removed from every string."""
    if isinstance(value, dict):
        return {k: without_tokens(v) for k, v in value.items()}
    if isinstance(value, list):
        return [without_tokens(v) for v in value]
    if isinstance(value, str) and "token=" in value.lower() and "://" in value:
        return strip_token(value)
    return value


def _write_new(path: Path, data: bytes) -> bool:
    """Create ``path`` with ``data`` unless it exists (then nothing is written)."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_bytes(data)
        os.link(tmp, path)
    except FileExistsError:
        return False
    except OSError as exc:
        if path.exists():
            return False
        try:
            os.replace(tmp, path)  # no hard links on this file system
            return True
        except OSError:
            log.warning("could not write %s (%s)", path, exc)
            return False
    finally:
        tmp.unlink(missing_ok=True)
    return True


def user_metadata(plan: PullPlan, family: Optional[str]) -> dict:
    """A1111's user-metadata keys we can fill for ``plan`` (no invented values)."""
    data: dict[str, Any] = {}
    if plan.kind in ("lora", "embedding"):
        if plan.trigger_words:
            data["activation text"] = ", ".join(plan.trigger_words)
        if family in SD_VERSION:
            data["sd version"] = SD_VERSION[family]
    source = plan.page_url or plan.display_url
    if source:
        data["notes"] = NOTES_PREFIX + strip_token(source)
    return data


def preview_png(data: bytes) -> bytes:
    """Picture bytes (JPEG, PNG, WebP ...) as PNG, at most 1024 px on a side."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        im.load()
        out = im.convert("RGBA" if "A" in im.getbands() else "RGB")
    out.thumbnail((PREVIEW_MAX_SIDE, PREVIEW_MAX_SIDE))
    buf = io.BytesIO()
    out.save(buf, format="PNG")
    return buf.getvalue()


def fetch_bytes(url: str, limit: int = PREVIEW_MAX_BYTES) -> bytes:
    """A small file (a preview picture), no token sent."""
    from .download import open_url, read_body

    with open_url(url, timeout=30) as resp:
        return read_body(resp, limit)


def write_sidecars(model: Path, plan: PullPlan, family: Optional[str] = None, fetch: Callable[[str], bytes] = fetch_bytes) -> list[Path]:
    """Write the sidecar files for a pulled ``model`` that do not exist yet; returns
    the ones written.  Never raises for a preview that cannot be fetched or read."""
    written: list[Path] = []
    if plan.info:
        text = json.dumps(without_tokens(plan.info), indent=4, ensure_ascii=False) + "\n"
        if _write_new(info_path(model), text.encode("utf-8")):
            written.append(info_path(model))
    if plan.preview_url and not any(model.with_name(model.stem + s).exists() for s in PREVIEW_SUFFIXES):
        try:
            png = preview_png(fetch(plan.preview_url))
        except Exception as exc:  # noqa: BLE001 - a preview is a nicety, never a failed pull
            log.warning("no preview for %s: %s", model.name, str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__)
        else:
            if _write_new(preview_path(model), png):
                written.append(preview_path(model))
    meta = user_metadata(plan, family)
    if meta and _write_new(user_metadata_path(model), (json.dumps(meta, indent=4, ensure_ascii=False) + "\n").encode("utf-8")):
        written.append(user_metadata_path(model))
    return written


# ---------------------------------------------------------------- reading


@dataclass(frozen=True)
class ModelInfo:
    trigger_words: list[str] = field(default_factory=list)
    base_model: Optional[str] = None  # civitai's baseModel ("SD 1.5") or A1111's sd version ("SD1")
    weight: Optional[float] = None  # the user's "preferred weight"
    preview: Optional[Path] = None
    source_url: Optional[str] = None


def _json_file(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return {}
    return data if isinstance(data, dict) else {}


def _words(value) -> list[str]:
    if isinstance(value, str):
        return [w.strip() for w in value.split(",") if w.strip()]
    if isinstance(value, list):
        return [w.strip() for w in value if isinstance(w, str) and w.strip()]
    return []


def _weight(value) -> Optional[float]:
    if isinstance(value, bool):
        return None
    try:
        w = float(value)
    except (TypeError, ValueError):
        return None
    return w if w == w and w not in (0.0, float("inf"), float("-inf")) else None


def model_info(path: Path) -> ModelInfo:
    """What the sidecar files beside ``path`` say about it (all fields optional;
    unreadable sidecars count as absent)."""
    path = Path(path)
    user = _json_file(user_metadata_path(path))
    info = _json_file(info_path(path))
    trained = _words(info.get("trainedWords"))
    activation = user.get("activation text")
    if isinstance(activation, str) and activation.strip() and activation.strip() != ", ".join(trained):
        words = _words(activation)
    else:
        words = trained
    base = info.get("baseModel") if isinstance(info.get("baseModel"), str) else None
    sd_version = user.get("sd version")
    if base is None and isinstance(sd_version, str) and sd_version not in ("", "Unknown"):
        base = sd_version
    preview = next((p for p in (path.with_name(path.stem + s) for s in PREVIEW_SUFFIXES) if p.is_file()), None)
    source = None
    if isinstance(info.get("modelId"), int) and isinstance(info.get("id"), int):
        source = f"https://civitai.com/models/{info['modelId']}?modelVersionId={info['id']}"
    notes = user.get("notes")
    if source is None and isinstance(notes, str):
        for line in notes.splitlines():
            if line.startswith(NOTES_PREFIX):
                source = line[len(NOTES_PREFIX):].strip() or None
    return ModelInfo(words, base, _weight(user.get("preferred weight")), preview, source)
