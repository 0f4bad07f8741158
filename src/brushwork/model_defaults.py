"""A model's own defaults, set once by the user: steps, CFG, sampler, schedule, size
and clip skip that every request leaving a field unset gets for that checkpoint.

Where a default comes from, first match wins (docs/models.md):

1. ``saved``: what the user saved for this checkpoint (``brushwork models set``, the
   studio's Models page), kept in ``HOME/model-defaults.json``, never in the checkpoint;
2. ``metadata``: what the checkpoint's author stored in it (``brushwork.defaults``);
3. ``family``: the model family's (SD 1.x 512 px, 25 steps, CFG 7, DPM++ 2M Karras, clip skip 1).

The file (hand-editable, written atomically)::

    {"version": 1,
     "models": {"sd15/dreamshaper_8": {"sha256": "879db523...", "values": {"steps": 30, "cfg_scale": 5.0}}}}

Entries are keyed by the checkpoint's catalog name (its path below the checkpoint
folder, without suffix; the absolute path for a file outside the folders).  The
file's sha256 is stored as well when the hash cache knows it (it is never computed
here: a multi-GB file would stall the caller), and loading a checkpoint records it,
so a renamed or moved file still finds its defaults by hash.  A name match wins over
a hash match (a file replaced by a newer version under the same name keeps them).
"""
from __future__ import annotations

import json
import logging
import math
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from .models.detect import ModelSpec
from .paths import DataHome, write_json_atomically
from .request import MAX_CLIP_SKIP, MAX_SIDE, MAX_STEPS, MIN_SIDE, FamilyDefaults, GenerationRequest, RequestError, base_defaults, clip_skip_limit, family_defaults, validate_request

log = logging.getLogger(__name__)

SAVED_FIELDS = ("steps", "cfg_scale", "sampler", "schedule", "width", "height", "clip_skip")
SOURCES = ("saved", "metadata", "family")
FILE_VERSION = 1

#: how each field is named to a user (CLI flag or label)
FIELD_LABELS = {"steps": "steps", "cfg_scale": "CFG scale", "sampler": "sampler", "schedule": "schedule", "width": "width", "height": "height", "clip_skip": "clip skip"}

_lock = threading.Lock()


class ModelDefaultsError(RequestError):
    """A saved default that is not valid, or a defaults file that cannot be read or written;
    the message says what was wrong and what to do."""


def defaults_file(home: DataHome) -> Path:
    return home.root / "model-defaults.json"


# ------------------------------------------------------------------ names and hashes


def checkpoint_key(home: DataHome, checkpoint: Path) -> str:
    """The catalog name of ``checkpoint`` (as ``brushwork models`` lists it): its path
    below the first checkpoint folder holding it, without suffix; "demo" for the
    built-in demo; the absolute path for any other file."""
    from .catalog import DEMO_NAME, is_demo

    if is_demo(checkpoint):
        return DEMO_NAME
    path = Path(checkpoint)
    real = path.resolve()
    for folder in home.checkpoint_dirs:
        for p, f in ((path, folder), (real, folder.resolve())):
            try:
                return p.relative_to(f).with_suffix("").as_posix()
            except ValueError:
                continue
    return str(real)


def _known_sha256(home: DataHome, checkpoint: Path) -> Optional[str]:
    from .catalog import hash_cache

    try:
        return hash_cache(home).cached_sha256(checkpoint)
    except OSError:
        return None


# ------------------------------------------------------------------ the file


def _read(home: DataHome) -> dict:
    """The file's models table ({} when there is no file); a damaged file is an error
    that says how to fix it (reading for a generation uses :func:`_read_quietly`)."""
    path = defaults_file(home)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ModelDefaultsError(f"cannot read {path} ({exc.strerror or exc}); check its permissions.") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ModelDefaultsError(f"{path} is not valid JSON ({exc}); fix it by hand, or delete it to forget every model's saved defaults.") from None
    models = data.get("models") if isinstance(data, dict) else None
    if not isinstance(models, dict):
        raise ModelDefaultsError(f"{path} has no \"models\" object; it should look like {{\"version\": 1, \"models\": {{\"NAME\": {{\"values\": {{\"steps\": 30}}}}}}}}. Fix it, or delete it.")
    return {k: v for k, v in models.items() if isinstance(k, str) and isinstance(v, dict)}


def _read_quietly(home: DataHome) -> dict:
    try:
        return _read(home)
    except ModelDefaultsError as exc:
        log.warning("ignoring the saved model defaults: %s", exc)
        return {}


def _write(home: DataHome, models: dict) -> None:
    path = defaults_file(home)
    try:
        write_json_atomically(path, {"version": FILE_VERSION, "models": models}, sort_keys=True)
    except OSError as exc:
        raise ModelDefaultsError(f"cannot save model defaults to {path} ({exc.strerror or exc}); check that the data home is writable and the disk is not full (--home picks another).") from None


def _find(models: dict, key: str, sha: Optional[str]) -> Optional[str]:
    """The key of the entry for a checkpoint: its name, else an entry with its hash."""
    if key in models:
        return key
    if sha:
        for k, entry in models.items():
            if entry.get("sha256") == sha:
                return k
    return None


def _entry_key(home: DataHome, models: dict, checkpoint: Path) -> tuple[str, Optional[str]]:
    """(the checkpoint's own key, the key of its stored entry or None)."""
    key = checkpoint_key(home, checkpoint)
    if key in models:
        return key, key
    has_hashes = any(e.get("sha256") for e in models.values())
    sha = _known_sha256(home, checkpoint) if has_hashes else None
    return key, _find(models, key, sha)


# ------------------------------------------------------------------ checking values


def _whole(field: str, value: Any, lo: int, hi: int, hint: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (isinstance(value, float) and not value.is_integer()):
        raise ModelDefaultsError(f"{FIELD_LABELS[field]} must be a whole number from {lo} to {hi}; got {value!r}.{hint}")
    return int(value)


def check_values(values: dict) -> dict:
    """``values`` checked with the limits every request has, names made canonical
    (sampler and schedule as AUTOMATIC1111 labels them); None values are kept (they
    mean "remove").  A sampler name that carries a schedule ("DPM++ 2M Karras") sets
    the schedule too; a sampler saved alone gets "Automatic" (its own preference)
    unless a schedule is given with it."""
    from .sampling.registry import UnknownSamplerError, resolve_sampler, resolve_schedule
    from .sampling.schedules import SCHEDULE_LABELS

    unknown = [k for k in values if k not in SAVED_FIELDS]
    if unknown:
        raise ModelDefaultsError(f"{', '.join(map(repr, unknown))} cannot be saved as a model default; the fields are {', '.join(SAVED_FIELDS)}.")
    out: dict = {}
    for field, value in values.items():
        if value is None:
            out[field] = None
        elif field == "steps":
            out[field] = _whole(field, value, 1, MAX_STEPS, " 20-30 is typical.")
        elif field in ("width", "height"):
            out[field] = _whole(field, value, MIN_SIDE, MAX_SIDE, " It must be a multiple of 8.")
        elif field == "clip_skip":
            out[field] = _whole(field, value, 1, MAX_CLIP_SKIP, " 1 (the last layer) is usual; 2 is common for anime models.")
        elif field == "cfg_scale":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ModelDefaultsError(f"CFG scale must be a number from 0 to 30; got {value!r}. 4-7 is typical.")
            out[field] = float(value)
        else:  # sampler, schedule
            if not isinstance(value, str) or not value.strip():
                raise ModelDefaultsError(f"{field} must be a name, e.g. {'DPM++ 2M' if field == 'sampler' else 'Karras'}; got {value!r}. See: brushwork samplers")
            out[field] = value.strip()
    fields = {k: v for k, v in out.items() if v is not None and k not in ("sampler", "schedule")}
    try:
        validate_request(GenerationRequest(**fields))  # the requests' own range checks and messages
        if out.get("schedule") is not None:
            out["schedule"] = SCHEDULE_LABELS[resolve_schedule(out["schedule"])]
        if out.get("sampler") is not None:
            info, schedule = resolve_sampler(out["sampler"], out.get("schedule"))
            out["sampler"] = info.label
            if out.get("schedule") is None:
                out["schedule"] = SCHEDULE_LABELS[schedule]
    except UnknownSamplerError as exc:
        raise ModelDefaultsError(f"{exc} (brushwork samplers lists them.)") from None
    except ModelDefaultsError:
        raise
    except RequestError as exc:
        raise ModelDefaultsError(str(exc)) from None
    return out


def check_clip_skip(spec: ModelSpec, clip_skip: Optional[int], name: str) -> None:
    """A clip skip deeper than the model's text encoder is refused when saved, not
    first when generating."""
    if clip_skip is None:
        return
    most = clip_skip_limit(spec)
    if clip_skip > most:
        allowed = "only 1" if most <= 1 else f"from 1 to {most}"
        raise ModelDefaultsError(f"clip skip {clip_skip} is too deep for {name}: its text encoder allows {allowed} (1 = the last layer).")


def _clean(values: Any) -> dict:
    """The valid saved values of a stored entry (a bad hand edit is a warning, not a stop)."""
    if not isinstance(values, dict):
        return {}
    out = {}
    for field in SAVED_FIELDS:
        if field in values and values[field] is not None:
            try:
                out.update({k: v for k, v in check_values({field: values[field]}).items() if k == field})
            except ModelDefaultsError as exc:
                log.warning("ignoring the saved default %s=%r (%s); fix it with brushwork models set, or --unset %s", field, values[field], exc, field)
    return out


# ------------------------------------------------------------------ the API


def saved_defaults(home: DataHome, checkpoint: Path) -> dict:
    """Only what the user saved for ``checkpoint`` (field -> value), {} when nothing."""
    models = _read_quietly(home)
    if not models:
        return {}
    _, found = _entry_key(home, models, checkpoint)
    return _clean(models[found].get("values")) if found is not None else {}


def save_defaults(home: DataHome, checkpoint: Path, values: dict, spec: Optional[ModelSpec] = None) -> dict:
    """Merge ``values`` into ``checkpoint``'s saved defaults (a value of None removes
    that field) and return what is saved now.  Every value is checked first, with the
    limits of a request; with ``spec``, clip skip against the model's text encoder too.
    Nothing is written when a value is refused."""
    checked = check_values(dict(values))
    if spec is not None:
        check_clip_skip(spec, checked.get("clip_skip"), Path(checkpoint).name)
    with _lock:
        models = _read(home)
        key, found = _entry_key(home, models, checkpoint)
        entry = dict(models.pop(found)) if found is not None else {}
        merged = {**_clean(entry.get("values")), **checked}
        merged = {k: merged[k] for k in SAVED_FIELDS if merged.get(k) is not None}
        if merged:
            entry["values"] = merged
            sha = _known_sha256(home, checkpoint) or entry.get("sha256")
            if sha:
                entry["sha256"] = sha
            entry["file"] = Path(checkpoint).name
            models[key] = entry  # a renamed file's entry moves to its new name
        if merged or found is not None:
            _write(home, models)
    return merged


def clear_defaults(home: DataHome, checkpoint: Path) -> None:
    """Forget everything saved for ``checkpoint`` (nothing to forget is no error)."""
    with _lock:
        models = _read(home)
        _, found = _entry_key(home, models, checkpoint)
        if found is not None:
            del models[found]
            _write(home, models)


def note_hash(home: DataHome, checkpoint: Path, sha256: str) -> None:
    """Record a loaded checkpoint's hash in its saved entry (found by name), so the
    file still finds its defaults after a rename.  Writes only when something changes;
    an unwritable home only loses this convenience."""
    path = defaults_file(home)
    if not path.is_file():
        return
    with _lock:
        models = _read_quietly(home)
        key = checkpoint_key(home, checkpoint)
        entry = models.get(key)
        if entry is None or entry.get("sha256") == sha256:
            return
        entry["sha256"] = sha256
        try:
            _write(home, models)
        except ModelDefaultsError as exc:
            log.info("%s", exc)


@dataclass(frozen=True)
class EffectiveDefaults:
    """The defaults a request on this checkpoint gets: ``values`` holds every field of
    SAVED_FIELDS, ``sources`` says for each whether it is "saved", "metadata" or "family"."""

    values: dict
    sources: dict

    def as_family_defaults(self) -> FamilyDefaults:
        return FamilyDefaults(**{k: self.values[k] for k in SAVED_FIELDS})


def effective_defaults(home: DataHome, checkpoint: Path, spec: ModelSpec) -> EffectiveDefaults:
    """The user's saved defaults, then the checkpoint's metadata, then the family's."""
    saved = saved_defaults(home, checkpoint)
    family = base_defaults(spec)
    native = family_defaults(spec)
    values, sources = {}, {}
    for field in SAVED_FIELDS:
        if field in saved:
            values[field], sources[field] = saved[field], "saved"
        elif field in spec.defaults and getattr(native, field) is not None:
            values[field], sources[field] = getattr(native, field), "metadata"
        else:
            values[field], sources[field] = getattr(family, field), "family"
    return EffectiveDefaults(values, sources)
