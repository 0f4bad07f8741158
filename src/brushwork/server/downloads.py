"""Model downloads for the server (``POST /api/v1/models/pull``): each pull runs in a
thread of its own, beside the generation worker (a download is network and disk, not
the engine), with live progress events the web page's Models page shows.

A download is kept in memory only (it is no picture-making job of the history); its
file, once complete and verified, is in the model folder, and a pull cut short keeps
its ``.part`` under ``HOME/downloads`` so the next pull of the same source resumes.
Tokens sent with a pull are used for that pull and never stored, shown or logged.
"""
from __future__ import annotations

import logging
import re
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable, Optional

from .studio import NotFound, follow_events

log = logging.getLogger(__name__)

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
#: downloads at once; more wait their turn (a few big files at once only share the line)
MAX_RUNNING = 2
#: finished downloads remembered for the page
KEEP_FINISHED = 50
#: a token in a URL's query (civitai accepts ?token=...): never shown back
_TOKEN_IN_URL = re.compile(r"([?&](?:token|access_token|api_key)=)[^&#\s]*", re.I)


def without_tokens(text: str) -> str:
    """``text`` with any token query value in URLs blanked out."""
    return _TOKEN_IN_URL.sub(r"\1***", text)


@dataclass
class DownloadEvent:
    seq: int
    kind: str  # "state" | "progress" | "done"
    data: dict


@dataclass
class Download:
    id: str
    source: str  # as sent, with tokens blanked
    kind: Optional[str]
    client: str
    state: str = QUEUED
    file_name: Optional[str] = None
    done_bytes: int = 0
    total_bytes: Optional[int] = None
    speed: Optional[float] = None  # bytes/s
    eta: Optional[float] = None  # seconds
    phase: str = "queued"
    path: Optional[str] = None  # where the file landed, relative to the data home
    model_kind: Optional[str] = None
    name: Optional[str] = None  # what to call it: --model NAME, <lora:NAME:1>
    already_installed: bool = False
    resumed_from: int = 0
    error: Optional[str] = None
    error_kind: Optional[str] = None  # "token" | "hash" | "space" | "busy" | "source" | "request" | "network" | "internal"
    submitted: float = field(default_factory=time.time)
    finished: Optional[float] = None
    events: list[DownloadEvent] = field(default_factory=list)
    cancel: threading.Event = field(default_factory=threading.Event)
    token: Optional[str] = field(default=None, repr=False)  # dropped when the pull ends
    raw_source: Optional[str] = field(default=None, repr=False)  # as sent (a token in it too); dropped when the pull ends

    @property
    def final(self) -> bool:
        return self.state in (DONE, FAILED, CANCELLED)

    def view(self) -> dict[str, Any]:
        return {"id": self.id, "source": self.source, "kind": self.kind, "state": self.state, "phase": self.phase, "file_name": self.file_name,
                "done_bytes": self.done_bytes, "total_bytes": self.total_bytes, "speed": self.speed, "eta": self.eta, "path": self.path,
                "model_kind": self.model_kind, "name": self.name, "already_installed": self.already_installed, "resumed_from": self.resumed_from,
                "error": self.error, "error_kind": self.error_kind, "submitted": self.submitted, "finished": self.finished,
                "events": f"/api/v1/downloads/{self.id}/events"}


def error_kind(exc: BaseException) -> str:
    """Which kind of failure a pull's exception is, for the page (a token box, a retry...)."""
    try:
        from .. import fetch
    except ImportError:
        fetch = None
    for cls, kind in (("TokenNeeded", "token"), ("HashMismatch", "hash"), ("NotEnoughSpace", "space"), ("AlreadyDownloading", "busy"), ("SourceNotFound", "source")):
        if isinstance(exc, getattr(fetch, cls, ())):
            return kind
    if isinstance(exc, getattr(fetch, "PullError", ())):
        return "request"
    if isinstance(exc, OSError):
        return "network"
    return "internal"


class Downloads:
    """The server's downloads: started, watched, cancelled.  ``pull`` is
    :func:`brushwork.fetch.pull` (replaceable in tests); ``public`` turns a path or a
    message into what clients may see (the data home cut out)."""

    def __init__(self, home, pull: Optional[Callable] = None, public_path: Callable = lambda p: str(p), public_text: Callable = lambda t: t, name_of: Optional[Callable] = None, on_done: Optional[Callable] = None):
        self.home = home
        self._pull = pull
        self._public_path = public_path
        self._public_text = public_text
        self._name_of = name_of or (lambda path, kind: path.stem)
        self._on_done = on_done
        self._cv = threading.Condition()
        self._items: OrderedDict[str, Download] = OrderedDict()
        self._seq = time.time_ns() // 1000
        self._running = 0
        self._waiting: list[str] = []
        self._closing = False

    # ------------------------------------------------------------ clients

    def start(self, source: str, kind: Optional[str] = None, token: Optional[str] = None, client: str = "local") -> Download:
        item = Download(uuid.uuid4().hex[:12], without_tokens(source.strip()), kind, client, token=token or None, raw_source=source.strip())
        with self._cv:
            if self._closing:
                raise RuntimeError("the server is stopping; pull again after it restarts")
            self._items[item.id] = item
            self._trim()
            self._emit(item, "state", {"state": QUEUED})
            self._waiting.append(item.id)
            self._next()
        return item

    def get(self, download_id: str) -> Download:
        with self._cv:
            item = self._items.get(download_id)
        if item is None:
            raise NotFound(f"no download {download_id}; GET /api/v1/downloads lists them")
        return item

    def list(self) -> list[Download]:
        with self._cv:
            return list(reversed(self._items.values()))

    def cancel(self, download_id: str) -> Download:
        """Stop a download: what arrived stays in its ``.part`` for a later pull to resume."""
        item = self.get(download_id)
        with self._cv:
            if item.final:
                return item
            item.cancel.set()
            if item.id in self._waiting:
                self._waiting.remove(item.id)
                self._end(item, CANCELLED)
        return item

    def wait(self, download_id: str, timeout: Optional[float] = None) -> Download:
        item = self.get(download_id)
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cv:
            while not item.final:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                self._cv.wait(timeout=0.5 if left is None else min(left, 0.5))
        return item

    def close(self, timeout: float = 10.0) -> None:
        with self._cv:
            self._closing = True
            for item in self._items.values():
                if not item.final:
                    item.cancel.set()
            self._waiting.clear()
            end = time.monotonic() + timeout
            while self._running and time.monotonic() < end:
                self._cv.wait(timeout=0.2)

    def events_after(self, download_id: str, after: int) -> list[DownloadEvent]:
        item = self.get(download_id)
        with self._cv:
            fresh = [e for e in item.events if e.seq > after]
            if not fresh and item.final:  # asked from past the end: the outcome once more, so no stream hangs
                return [DownloadEvent(after + 1, "done", item.view())]
            return fresh

    async def stream(self, download_id: str, after: int = 0, heartbeat: float = 15.0, poll: float = 0.1) -> AsyncIterator[Optional[DownloadEvent]]:
        """The download's events from ``after`` on, ending with ``done`` (None: a heartbeat)."""
        async for e in follow_events(lambda seq: self.events_after(download_id, seq), after, heartbeat, poll):
            yield e

    # ------------------------------------------------------------ work

    def _trim(self) -> None:
        done = [k for k, v in self._items.items() if v.final]
        for k in done[: max(0, len(done) - KEEP_FINISHED)]:
            self._items.pop(k)

    def _emit(self, item: Download, kind: str, data: dict) -> None:
        self._seq += 1
        item.events.append(DownloadEvent(self._seq, kind, data))
        if kind == "progress" and len(item.events) > 200:
            keep = {e.seq: e for e in [e for e in item.events if e.kind != "progress"] + item.events[-50:]}
            item.events = [keep[s] for s in sorted(keep)]
        self._cv.notify_all()

    def _next(self) -> None:
        while self._waiting and self._running < MAX_RUNNING and not self._closing:
            item = self._items[self._waiting.pop(0)]
            self._running += 1
            item.state, item.phase = RUNNING, "resolving"
            self._emit(item, "state", {"state": RUNNING})
            threading.Thread(target=self._run, args=(item,), name=f"brushwork-pull-{item.id}", daemon=True).start()

    def _progress(self, item: Download) -> Callable:
        def progress(p) -> None:
            with self._cv:
                item.file_name = getattr(p, "file_name", None) or item.file_name
                item.done_bytes = int(p.done or 0)
                item.total_bytes = p.total
                item.speed = getattr(p, "speed", None)
                item.eta = getattr(p, "eta", None)
                item.phase = getattr(p, "phase", item.phase)
                self._emit(item, "progress", {"phase": item.phase, "file_name": item.file_name, "done_bytes": item.done_bytes, "total_bytes": item.total_bytes,
                                              "speed": item.speed, "eta": item.eta})
        return progress

    def _run(self, item: Download) -> None:
        try:
            pull = self._pull
            if pull is None:
                from ..fetch import pull
            result = pull(self.home, item.raw_source or item.source, token=item.token, kind=item.kind, progress=self._progress(item), cancel=item.cancel)
        except BaseException as exc:  # noqa: BLE001 - a download thread must always end its record
            cancelled = item.cancel.is_set() or type(exc).__name__ == "Cancelled"
            with self._cv:
                if cancelled:
                    self._end(item, CANCELLED)
                else:
                    kind = error_kind(exc)
                    if kind == "internal":
                        log.exception("download %s failed", item.id)
                    message = str(exc) if kind != "internal" else f"{type(exc).__name__}: {exc}"
                    self._end(item, FAILED, error=self._public_text(without_tokens(message)), error_kind=kind)
            return
        finally:
            item.token = item.raw_source = None
        with self._cv:
            item.path = self._public_path(result.path)
            item.model_kind = result.kind
            item.file_name = result.path.name
            item.name = self._name_of(result.path, result.kind)
            item.already_installed = bool(getattr(result, "already_installed", False))
            item.resumed_from = int(getattr(result, "resumed_from", 0) or 0)
            item.done_bytes = item.total_bytes = int(getattr(result, "size", 0) or result.path.stat().st_size)
            item.phase = "done"
            self._end(item, DONE)
        if self._on_done is not None:
            try:
                self._on_done(result)
            except Exception:  # noqa: BLE001 - a refresh hook never fails a finished download
                log.debug("after-download hook failed", exc_info=True)

    def _end(self, item: Download, state: str, error: Optional[str] = None, error_kind: Optional[str] = None) -> None:
        """(caller holds the lock)"""
        was_running = item.state == RUNNING
        item.state, item.error, item.error_kind, item.finished = state, error, error_kind, time.time()
        if state != DONE:
            item.phase = state
        self._emit(item, "done", item.view())
        if was_running:
            self._running -= 1
            self._next()
