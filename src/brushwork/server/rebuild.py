"""``brushwork history rebuild``: the history re-made from the pictures themselves.

Every picture Brushwork saves carries its full parameters (the infotext), so the
history database can always be re-made from the outputs folder.  A damaged or
empty database is first moved aside (renamed, never deleted: it may still be
worth a look with other tools); a healthy one is kept and only gains the
pictures it does not list yet (for example those saved while the disk was full).
"""
from __future__ import annotations

import datetime as _dt
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from PIL import Image, UnidentifiedImageError

from ..infotext import InfotextError, params_from_infotext
from ..outputs import NotAnImageError, find_input, read_infotext
from ..paths import DataHome
from ..refine import INIT_HASH_KEY, MASK_HASH_KEY, OUTPAINT_KEY, STRENGTH_KEY, refine_fields
from .store import DONE, HistoryDamaged, JobStore, check_database

log = logging.getLogger(__name__)

DATABASE_NAME = "brushwork.sqlite3"
REBUILD_CLIENT = "rebuild"


@dataclass
class RebuildReport:
    database: Path
    moved_aside: Optional[Path] = None
    reason: Optional[str] = None
    added: int = 0
    already_listed: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, why)

    def lines(self) -> list[str]:
        out = []
        if self.moved_aside is not None:
            out.append(f"moved the unusable database aside to {self.moved_aside.name} ({self.reason})")
        out.append(f"{self.added} picture(s) re-indexed into {self.database.name}; {self.already_listed} were listed already")
        for path, why in self.skipped[:20]:
            out.append(f"skipped {path}: {why}")
        if len(self.skipped) > 20:
            out.append(f"... and {len(self.skipped) - 20} more skipped")
        return out


def move_aside(path: Path) -> Path:
    """Rename the database (and its WAL/SHM companions) to ``NAME.damaged-TIMESTAMP``."""
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    target = path.with_name(f"{path.name}.damaged-{stamp}")
    n = 1
    while target.exists():
        target = path.with_name(f"{path.name}.damaged-{stamp}-{n}")
        n += 1
    for suffix in ("-wal", "-shm"):
        companion = Path(f"{path}{suffix}")
        if companion.exists():
            companion.rename(Path(f"{target}{suffix}"))
    path.rename(target)
    return target


def _request_of(params, home: DataHome) -> tuple[str, dict]:
    """The job kind and request a picture's parameters describe (the native request's
    fields); a refined picture names its init image and mask in HOME/inputs when they
    are still there."""
    request = {
        "prompt": params.prompt, "negative_prompt": params.negative_prompt, "seed": params.seed, "steps": params.steps,
        "cfg_scale": params.cfg_scale, "sampler": params.sampler, "schedule": params.schedule, "width": params.width,
        "height": params.height, "batch_size": 1, "batch_count": 1, "clip_skip": params.clip_skip,
    }
    extra = params.extra
    if INIT_HASH_KEY not in extra or STRENGTH_KEY not in extra:
        return "txt2img", request
    try:
        request.update(refine_fields(extra))
    except ValueError:
        pass  # unreadable refine keys: the picture is still listed
    for name, key in (("init_image", INIT_HASH_KEY), ("mask", MASK_HASH_KEY)):
        found = find_input(home.inputs, str(extra.get(key, ""))) if extra.get(key) else []
        if found:
            request[name] = found[0].relative_to(home.root).as_posix()
    inpaint = "Mask blur" in extra or OUTPAINT_KEY in extra
    return ("inpaint" if inpaint else "img2img"), request


def _index_one(store: JobStore, home: DataHome, png: Path) -> Optional[str]:
    """Add one picture; returns why it was skipped, or None."""
    try:
        text = read_infotext(png)
        with Image.open(png) as im:
            width, height = im.size
    except (NotAnImageError, UnidentifiedImageError, OSError) as exc:
        return f"not a readable image ({exc})"
    if not text:
        return "no parameters stored in it"
    try:
        params = params_from_infotext(text)
    except InfotextError as exc:
        return f"its parameters cannot be read ({exc})"
    created = png.stat().st_mtime
    rel = png.resolve().relative_to(home.root.resolve()).as_posix()
    kind, request = _request_of(params, home)
    job = store.add_job(REBUILD_CLIENT, kind, request, params.model_name, params.steps)
    store.update_job(job.id, state=DONE, started=created, finished=created, step=params.steps, model_hash=params.model_hash)
    store.add_image(job.id, 0, rel, params.seed, width, height, params.prompt, params.negative_prompt, text, params.model_name, params.model_hash, created=created)
    return None


def rebuild_history(home: DataHome, database: Optional[Path] = None) -> RebuildReport:
    path = database or home.root / DATABASE_NAME
    report = RebuildReport(path)
    try:
        check_database(path, home.outputs)
    except HistoryDamaged as exc:
        report.reason = str(exc).split(". ", 1)[0]
        report.moved_aside = move_aside(path)
    store = JobStore(path, outputs=home.outputs)
    try:
        listed = store.image_paths()
        pictures = sorted(home.outputs.rglob("*.png"), key=lambda p: (p.stat().st_mtime, p.as_posix())) if home.outputs.is_dir() else []
        t0 = time.perf_counter()
        for png in pictures:
            rel = png.resolve().relative_to(home.root.resolve()).as_posix()
            if rel in listed:
                report.already_listed += 1
                continue
            why = _index_one(store, home, png)
            if why is None:
                report.added += 1
            else:
                report.skipped.append((rel, why))
        log.info("history rebuild: %d added in %.1fs", report.added, time.perf_counter() - t0)
    finally:
        store.close()
    return report
