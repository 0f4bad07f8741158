"""The server's memory: every job and every image, in SQLite in the data home.

One file (``HOME/brushwork.sqlite3``), WAL mode, one connection guarded by a lock
(the server has one worker thread and a few request threads; SQLite serialises
writes anyway).  History survives restarts: :meth:`JobStore.recover` runs at
start-up, puts jobs that were waiting back in the queue and marks jobs that were
running when the server stopped as failed, with a message saying so.

Nothing is lost to a full disk or a damaged file:

* At start the file is checked (``PRAGMA quick_check``).  A damaged file, or one
  that is empty although it exists, stops the start with :class:`HistoryDamaged`,
  which says what is wrong and how to recover (``brushwork history rebuild``
  re-indexes the pictures from their infotexts); it never starts empty over it.
* When the disk is full, a new job is refused (:class:`StorageFull`, a 507), but
  changes to jobs already accepted (finished, failed, cancelled) and their image
  records are kept in memory, shown by every read, and written as soon as there
  is space again (:meth:`JobStore.flush`), so no job is left "running" forever.
"""
from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    client TEXT NOT NULL,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    request TEXT NOT NULL,
    model TEXT,
    model_hash TEXT,
    submitted REAL NOT NULL,
    started REAL,
    finished REAL,
    step INTEGER NOT NULL DEFAULT 0,
    total INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    error_kind TEXT,
    warnings TEXT
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state);
CREATE TABLE IF NOT EXISTS images (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL REFERENCES jobs(id),
    idx INTEGER NOT NULL,
    path TEXT NOT NULL,
    seed INTEGER NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    prompt TEXT NOT NULL,
    negative_prompt TEXT NOT NULL,
    infotext TEXT NOT NULL,
    model TEXT,
    model_hash TEXT,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS images_job ON images(job_id);
"""

#: job states; the last four are final
QUEUED, RUNNING, DONE, FAILED, CANCELLED, INTERRUPTED = "queued", "running", "done", "failed", "cancelled", "interrupted"
FINAL = frozenset({DONE, FAILED, CANCELLED, INTERRUPTED})


@dataclass
class JobRecord:
    id: str
    seq: int
    client: str
    kind: str
    state: str
    request: dict[str, Any]
    model: Optional[str]
    model_hash: Optional[str]
    submitted: float
    started: Optional[float]
    finished: Optional[float]
    step: int
    total: int
    error: Optional[str]
    error_kind: Optional[str]
    warnings: list[str] = field(default_factory=list)

    @property
    def final(self) -> bool:
        return self.state in FINAL


@dataclass
class ImageRecord:
    id: int
    job_id: str
    idx: int
    path: str  # relative to the data home
    seed: int
    width: int
    height: int
    prompt: str
    negative_prompt: str
    infotext: str
    model: Optional[str]
    model_hash: Optional[str]
    created: float


log = logging.getLogger(__name__)

RECOVERY_HINT = "Your pictures are safe in the outputs folder; run `brushwork history rebuild` to move this file aside and re-index them from their infotexts."


class StorageFull(OSError):
    """The disk holding the data home is full (or failing): nothing new can be recorded."""


class HistoryDamaged(RuntimeError):
    """The history database cannot be used as it is; the message says how to recover."""


def new_job_id() -> str:
    return uuid.uuid4().hex[:16]


def _is_disk_error(exc: sqlite3.Error) -> bool:
    return getattr(exc, "sqlite_errorname", "") in ("SQLITE_FULL", "SQLITE_IOERR") or "disk" in str(exc).lower()


def _has_pictures(folder: Optional[Path]) -> bool:
    return folder is None or (folder.is_dir() and next(folder.rglob("*.png"), None) is not None)


def check_database(path: Path, outputs: Optional[Path] = None) -> None:
    """Raise :class:`HistoryDamaged` if ``path`` exists but cannot be used as a history.

    An empty (0-byte) file is fine only when there are no pictures in ``outputs``
    (None: unknown), since then nothing was listed in it."""
    if not path.exists():
        return
    if path.stat().st_size == 0 and not Path(f"{path}-wal").exists():
        if not _has_pictures(outputs):
            return
        raise HistoryDamaged(f"the history database {path.name} is empty (0 bytes) although there are pictures in the outputs folder: the jobs it listed are gone, so Brushwork will not start over it. {RECOVERY_HINT}")
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            result = db.execute("PRAGMA quick_check").fetchone()[0]
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        finally:
            db.close()
    except sqlite3.DatabaseError as exc:
        raise HistoryDamaged(f"the history database {path.name} is damaged ({exc}). {RECOVERY_HINT}") from None
    if result != "ok":
        raise HistoryDamaged(f"the history database {path.name} is damaged (SQLite's check says: {str(result)[:200]}). {RECOVERY_HINT}")
    if tables and not {"jobs", "images"} <= tables:
        raise HistoryDamaged(f"{path.name} is an SQLite file but not Brushwork's history (tables: {', '.join(sorted(tables))[:200]}). Move it away to start a new history.")


class JobStore:
    def __init__(self, path: Path, check: bool = True, outputs: Optional[Path] = None):
        path.parent.mkdir(parents=True, exist_ok=True)
        if check:
            check_database(path, outputs)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(SCHEMA)
        except sqlite3.DatabaseError as exc:
            self._db.close()
            if isinstance(exc, sqlite3.OperationalError) and _is_disk_error(exc):
                raise StorageFull(f"cannot open the history database {path.name}: the disk is full ({exc}); free some space and start again") from None
            raise HistoryDamaged(f"the history database {path.name} cannot be opened ({exc}). {RECOVERY_HINT}") from None
        # changes that could not be written yet (disk full): shown by reads, written by flush()
        self._pending_jobs: dict[str, dict[str, Any]] = {}
        self._pending_images: dict[int, ImageRecord] = {}
        self._next_image_id = (self._db.execute("SELECT MAX(id) FROM images").fetchone()[0] or 0) + 1

    def close(self) -> None:
        self.flush()
        with self._lock:
            self._db.close()

    # ------------------------------------------------------------ writing

    def _write(self, sql: str, args: tuple | list) -> sqlite3.Cursor:
        """One write (caller holds the lock); a full disk becomes :class:`StorageFull`."""
        try:
            return self._db.execute(sql, args)
        except sqlite3.OperationalError as exc:
            if _is_disk_error(exc):
                raise StorageFull(f"the disk holding the data home is full ({exc}); free some space") from None
            raise

    @property
    def unsaved(self) -> int:
        """How many changes wait for disk space."""
        return len(self._pending_jobs) + len(self._pending_images)

    def flush(self) -> bool:
        """Write what a full disk held back; True when nothing is left waiting."""
        with self._lock:
            return self._flush_locked()

    def _flush_locked(self) -> bool:
        try:
            for job_id, fields in list(self._pending_jobs.items()):
                self._update_locked(job_id, fields)
                del self._pending_jobs[job_id]
            for image_id, rec in list(self._pending_images.items()):
                self._insert_image_locked(rec)
                del self._pending_images[image_id]
        except StorageFull:
            return False
        if not self.unsaved:
            log.info("the history database caught up after the disk was full")
        return True

    # ------------------------------------------------------------ jobs

    def add_job(self, client: str, kind: str, request: dict, model: Optional[str], total: int) -> JobRecord:
        """Record a new job; raises :class:`StorageFull` when it cannot be recorded
        (a job that is not on disk would be lost at the next restart)."""
        job_id = new_job_id()
        now = time.time()
        with self._lock:
            self._flush_locked()
            self._write(
                "INSERT INTO jobs (id, client, kind, state, request, model, submitted, total) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (job_id, client, kind, QUEUED, json.dumps(request), model, now, total),
            )
        job = self.job(job_id)
        assert job is not None
        return job

    def _with_pending(self, row: sqlite3.Row) -> JobRecord:
        job = _job(row)
        fields = self._pending_jobs.get(job.id)
        if fields:
            for k, v in fields.items():
                setattr(job, k, json.loads(v) if k == "warnings" else v)
        return job

    def job(self, job_id: str) -> Optional[JobRecord]:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
            return self._with_pending(row) if row else None

    def jobs(self, limit: int = 50, before_seq: Optional[int] = None, states: Optional[tuple[str, ...]] = None) -> list[JobRecord]:
        sql, args = "SELECT * FROM jobs WHERE 1=1", []
        if before_seq is not None:
            sql += " AND seq < ?"
            args.append(before_seq)
        if states:
            sql += f" AND state IN ({','.join('?' * len(states))})"
            args.extend(states)
        sql += " ORDER BY seq DESC LIMIT ?"
        args.append(limit)
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
            jobs = [self._with_pending(r) for r in rows]
        # a state held back by a full disk must not hide the job from a state filter
        return [j for j in jobs if not states or j.state in states]

    def queued_in_order(self) -> list[JobRecord]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM jobs WHERE state = ? ORDER BY seq", (QUEUED,)).fetchall()
        return [_job(r) for r in rows]

    def update_job(self, job_id: str, **fields: Any) -> None:
        """Change a job; never fails for a full disk: the change is then kept in
        memory (and shown) until :meth:`flush` can write it."""
        if "warnings" in fields:
            fields["warnings"] = json.dumps(fields["warnings"])
        with self._lock:
            if job_id in self._pending_jobs or not self._flush_locked():
                self._pending_jobs.setdefault(job_id, {}).update(fields)
                return
            try:
                self._update_locked(job_id, fields)
            except StorageFull as exc:
                log.warning("%s; job %s's change is kept in memory until there is space", exc, job_id)
                self._pending_jobs.setdefault(job_id, {}).update(fields)

    def _update_locked(self, job_id: str, fields: dict[str, Any]) -> None:
        cols = ", ".join(f"{k} = ?" for k in fields)
        self._write(f"UPDATE jobs SET {cols} WHERE id = ?", (*fields.values(), job_id))

    def recover(self, requeue_running: bool = False) -> tuple[int, int]:
        """After a restart: (jobs put back in the queue, jobs marked failed).  Jobs that
        were running are failed, or with ``requeue_running`` (a cluster's server, whose
        workers make the rest of a job's pictures) queued again in their old place."""
        now = time.time()
        with self._lock:
            if requeue_running:
                self._write("UPDATE jobs SET state = ?, started = NULL WHERE state = ?", (QUEUED, RUNNING))
                failed = 0
            else:
                failed = self._write(
                    "UPDATE jobs SET state = ?, finished = ?, error = ?, error_kind = ? WHERE state = ?",
                    (FAILED, now, "the server stopped while this job was running; submit it again", "stopped", RUNNING),
                ).rowcount
            queued = self._db.execute("SELECT COUNT(*) FROM jobs WHERE state = ?", (QUEUED,)).fetchone()[0]
        return queued, failed

    def counts(self) -> dict[str, int]:
        with self._lock:
            counts = {r[0]: r[1] for r in self._db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state")}
            for job_id, fields in self._pending_jobs.items():
                if "state" in fields:
                    row = self._db.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
                    if row is not None and row[0] != fields["state"]:
                        counts[row[0]] -= 1
                        counts[fields["state"]] = counts.get(fields["state"], 0) + 1
        return {k: v for k, v in counts.items() if v}

    # ------------------------------------------------------------ images

    def add_image(self, job_id: str, idx: int, path: str, seed: int, width: int, height: int, prompt: str, negative_prompt: str, infotext: str, model: Optional[str], model_hash: Optional[str], created: Optional[float] = None) -> ImageRecord:
        """Record a saved picture.  Ids are given here, so a record held back by a
        full disk already has the id it will keep."""
        with self._lock:
            rec = ImageRecord(self._next_image_id, job_id, idx, path, seed, width, height, prompt, negative_prompt, infotext, model, model_hash, time.time() if created is None else created)
            self._next_image_id += 1
            try:
                if not self._flush_locked():
                    raise StorageFull("the disk is still full")
                self._insert_image_locked(rec)
            except StorageFull as exc:
                log.warning("%s; the record of %s is kept in memory until there is space", exc, path)
                self._pending_images[rec.id] = rec
        return rec

    def _insert_image_locked(self, rec: ImageRecord) -> None:
        cols = list(ImageRecord.__dataclass_fields__)
        self._write(f"INSERT INTO images ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})", [getattr(rec, c) for c in cols])

    def image(self, image_id: int) -> Optional[ImageRecord]:
        with self._lock:
            if image_id in self._pending_images:
                return self._pending_images[image_id]
            row = self._db.execute("SELECT * FROM images WHERE id = ?", (image_id,)).fetchone()
        return _image(row) if row else None

    def images_of(self, job_id: str) -> list[ImageRecord]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM images WHERE job_id = ? ORDER BY idx", (job_id,)).fetchall()
            pending = [r for r in self._pending_images.values() if r.job_id == job_id]
        return sorted([_image(r) for r in rows] + pending, key=lambda r: r.idx)

    def image_paths(self) -> set[str]:
        """Every recorded picture's path (relative to the data home)."""
        with self._lock:
            paths = {r[0] for r in self._db.execute("SELECT path FROM images")}
            return paths | {r.path for r in self._pending_images.values()}

    def images_of_jobs(self, job_ids: list[str]) -> dict[str, list[ImageRecord]]:
        """Images of many jobs in one query (for job listings)."""
        if not job_ids:
            return {}
        with self._lock:
            rows = self._db.execute(f"SELECT * FROM images WHERE job_id IN ({','.join('?' * len(job_ids))}) ORDER BY job_id, idx", job_ids).fetchall()
            wanted = set(job_ids)
            pending = [r for r in self._pending_images.values() if r.job_id in wanted]
        out: dict[str, list[ImageRecord]] = {}
        for rec in sorted([_image(r) for r in rows] + pending, key=lambda r: (r.job_id, r.idx)):
            out.setdefault(rec.job_id, []).append(rec)
        return out

    def images(self, limit: int = 100, before_id: Optional[int] = None) -> list[ImageRecord]:
        sql, args = "SELECT * FROM images", []
        if before_id is not None:
            sql += " WHERE id < ?"
            args.append(before_id)
        sql += " ORDER BY id DESC LIMIT ?"
        args.append(limit)
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
            pending = [r for r in self._pending_images.values() if before_id is None or r.id < before_id]
        merged = sorted([_image(r) for r in rows] + pending, key=lambda r: r.id, reverse=True)
        return merged[:limit]


def _job(row: sqlite3.Row) -> JobRecord:
    d = dict(row)
    d["request"] = json.loads(d["request"])
    d["warnings"] = json.loads(d["warnings"]) if d["warnings"] else []
    return JobRecord(**d)


def _image(row: sqlite3.Row) -> ImageRecord:
    return ImageRecord(**dict(row))
