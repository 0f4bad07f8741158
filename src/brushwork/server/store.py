"""The server's memory: every job and every image, in SQLite in the data home.

One file (``HOME/brushwork.sqlite3``), WAL mode, one connection guarded by a lock
(the server has one worker thread and a few request threads; SQLite serialises
writes anyway).  History survives restarts: :meth:`JobStore.recover` runs at
start-up, puts jobs that were waiting back in the queue and marks jobs that were
running when the server stopped as failed, with a message saying so.
"""
from __future__ import annotations

import json
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


def new_job_id() -> str:
    return uuid.uuid4().hex[:16]


class JobStore:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ------------------------------------------------------------ jobs

    def add_job(self, client: str, kind: str, request: dict, model: Optional[str], total: int) -> JobRecord:
        job_id = new_job_id()
        now = time.time()
        with self._lock:
            self._db.execute(
                "INSERT INTO jobs (id, client, kind, state, request, model, submitted, total) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (job_id, client, kind, QUEUED, json.dumps(request), model, now, total),
            )
        job = self.job(job_id)
        assert job is not None
        return job

    def job(self, job_id: str) -> Optional[JobRecord]:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _job(row) if row else None

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
        return [_job(r) for r in rows]

    def queued_in_order(self) -> list[JobRecord]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM jobs WHERE state = ? ORDER BY seq", (QUEUED,)).fetchall()
        return [_job(r) for r in rows]

    def update_job(self, job_id: str, **fields: Any) -> None:
        if "warnings" in fields:
            fields["warnings"] = json.dumps(fields["warnings"])
        cols = ", ".join(f"{k} = ?" for k in fields)
        with self._lock:
            self._db.execute(f"UPDATE jobs SET {cols} WHERE id = ?", (*fields.values(), job_id))

    def recover(self) -> tuple[int, int]:
        """After a restart: (jobs put back in the queue, jobs marked failed)."""
        now = time.time()
        with self._lock:
            failed = self._db.execute(
                "UPDATE jobs SET state = ?, finished = ?, error = ?, error_kind = ? WHERE state = ?",
                (FAILED, now, "the server stopped while this job was running; submit it again", "stopped", RUNNING),
            ).rowcount
            queued = self._db.execute("SELECT COUNT(*) FROM jobs WHERE state = ?", (QUEUED,)).fetchone()[0]
        return queued, failed

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()
        return {r[0]: r[1] for r in rows}

    # ------------------------------------------------------------ images

    def add_image(self, job_id: str, idx: int, path: str, seed: int, width: int, height: int, prompt: str, negative_prompt: str, infotext: str, model: Optional[str], model_hash: Optional[str]) -> ImageRecord:
        with self._lock:
            cur = self._db.execute(
                "INSERT INTO images (job_id, idx, path, seed, width, height, prompt, negative_prompt, infotext, model, model_hash, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (job_id, idx, path, seed, width, height, prompt, negative_prompt, infotext, model, model_hash, time.time()),
            )
            row = self._db.execute("SELECT * FROM images WHERE id = ?", (cur.lastrowid,)).fetchone()
        return _image(row)

    def image(self, image_id: int) -> Optional[ImageRecord]:
        with self._lock:
            row = self._db.execute("SELECT * FROM images WHERE id = ?", (image_id,)).fetchone()
        return _image(row) if row else None

    def images_of(self, job_id: str) -> list[ImageRecord]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM images WHERE job_id = ? ORDER BY idx", (job_id,)).fetchall()
        return [_image(r) for r in rows]

    def images_of_jobs(self, job_ids: list[str]) -> dict[str, list[ImageRecord]]:
        """Images of many jobs in one query (for job listings)."""
        if not job_ids:
            return {}
        with self._lock:
            rows = self._db.execute(f"SELECT * FROM images WHERE job_id IN ({','.join('?' * len(job_ids))}) ORDER BY job_id, idx", job_ids).fetchall()
        out: dict[str, list[ImageRecord]] = {}
        for r in rows:
            out.setdefault(r["job_id"], []).append(_image(r))
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
        return [_image(r) for r in rows]


def _job(row: sqlite3.Row) -> JobRecord:
    d = dict(row)
    d["request"] = json.loads(d["request"])
    d["warnings"] = json.loads(d["warnings"]) if d["warnings"] else []
    return JobRecord(**d)


def _image(row: sqlite3.Row) -> ImageRecord:
    return ImageRecord(**dict(row))
