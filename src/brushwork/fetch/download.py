"""Moving bytes: HTTP requests with a token bound to one host, and the resumable,
hashed, locked download into ``HOME/downloads/*.part``.

* A token is sent as ``Authorization: Bearer`` with ``add_unredirected_header`` and
  re-added only to redirects that stay on the same origin, so civitai's storage or
  Hugging Face's CDN never sees it.
* The download streams into a ``.part`` file in ``HOME/downloads`` (never in a model
  folder) through a small pool of reused 4 MiB buffers: one thread receives, another
  hashes (sha256, which releases the GIL) and writes, so memory stays flat.
* ``NAME.part.json`` beside it records what is being downloaded (URL without tokens,
  sha256, size, ETag), so a later run resumes with ``Range`` only the same remote file
  (``If-Range`` with a strong ETag as well); a server that ignores the range, or answers
  for different bytes, restarts from zero.  The kept bytes are re-hashed on resume.
* A lock file (``flock``) keeps two pulls of one file apart: the second is told
  :class:`AlreadyDownloading`.
"""
from __future__ import annotations

import errno
import hashlib
import http.client
import json
import logging
import os
import queue
import shutil
import socket
import struct
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional
from urllib.parse import urlsplit

from .sources import (
    AlreadyDownloading,
    Auth,
    Cancelled,
    NotEnoughSpace,
    PullError,
    PullPlan,
    SourceNotFound,
    host_of,
    origin,
    strip_token,
)

log = logging.getLogger(__name__)

CHUNK = 4 << 20  # bytes per read: large reads keep the per-call overhead negligible
DEPTH = 4  # buffers in flight between the receiving and the hashing/writing thread
RETRIES = 3  # reconnects after a dropped connection, within one pull
RETRY_WAIT = 0.5  # seconds, times the attempt number
TIMEOUT = 60.0  # seconds without data before a connection counts as dropped
RESERVE = 16 << 20  # bytes kept free on a disk beyond what a download needs
PROGRESS_EVERY = 0.25  # seconds between progress reports
FSYNC = True  # flush a finished download to disk before it is moved into place (a crash never leaves a torn model)
MAX_JSON = 32 << 20
MAX_HEADER = 100 << 20  # safetensors' own header limit
USER_AGENT = "brushwork-pull/0.1"


# ---------------------------------------------------------------- progress


@dataclass(frozen=True)
class PullProgress:
    file_name: str
    done: int  # bytes of the file on disk so far
    total: Optional[int]  # bytes, when known
    speed: float  # bytes per second over the last few seconds (0 while unknown)
    eta: Optional[float]  # seconds left, when total and speed are known
    phase: str  # resolving | downloading | verifying | done


class Reporter:
    """Calls ``callback`` with :class:`PullProgress`, at most every
    :data:`PROGRESS_EVERY` seconds while downloading (phase changes always)."""

    def __init__(self, callback: Optional[Callable[[PullProgress], None]], file_name: str = "") -> None:
        self.callback = callback
        self.file_name = file_name
        self.total: Optional[int] = None
        self.done = 0
        self.phase = ""
        self._last = 0.0
        self._window: list[tuple[float, int]] = []
        self._lock = threading.Lock()

    def _speed(self, now: float) -> float:
        self._window.append((now, self.done))
        while len(self._window) > 2 and now - self._window[0][0] > 3.0:
            self._window.pop(0)
        t0, d0 = self._window[0]
        return (self.done - d0) / (now - t0) if now > t0 and self.done > d0 else 0.0

    def report(self, phase: str, done: Optional[int] = None, force: bool = False) -> None:
        with self._lock:
            self._report(phase, done, force)

    def _report(self, phase: str, done: Optional[int], force: bool) -> None:
        if done is not None:
            self.done = done
        now = time.monotonic()
        changed = phase != self.phase
        self.phase = phase
        if self.callback is None:
            return
        if not (changed or force or now - self._last >= PROGRESS_EVERY):
            return
        self._last = now
        speed = self._speed(now) if phase == "downloading" else 0.0
        eta = (self.total - self.done) / speed if speed > 0 and self.total else None
        self.callback(PullProgress(self.file_name, self.done, self.total, speed, eta, phase))

    def reset_speed(self) -> None:
        self._window.clear()


# ---------------------------------------------------------------- HTTP


class _TokenRedirects(urllib.request.HTTPRedirectHandler):
    """Follows redirects; the token goes again only to the origin it belongs to.
    ``same_origin_only``: redirects to another origin are not followed (the 3xx
    response is returned as an HTTPError, headers intact)."""

    def __init__(self, auth: Optional[Auth], same_origin_only: bool) -> None:
        self.auth = auth
        self.same_origin_only = same_origin_only

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if self.same_origin_only and origin(newurl) != origin(req.full_url):
            return None
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and self.auth is not None and self.auth.token and origin(newurl) == self.auth.origin:
            new.add_unredirected_header("Authorization", f"Bearer {self.auth.token}")
        return new


def open_url(url: str, *, auth: Optional[Auth] = None, method: str = "GET", headers: Optional[dict] = None,
             follow: bool = True, same_origin_only: bool = False, timeout: float = TIMEOUT):
    """The response for ``url`` (an ``http.client.HTTPResponse`` with ``.url``).

    HTTP errors come back as :class:`urllib.error.HTTPError` (the caller explains
    them); no connection at all is a :class:`PullError` naming the host."""
    req = urllib.request.Request(url, method=method)
    req.add_header("User-Agent", USER_AGENT)
    for key, value in (headers or {}).items():
        req.add_header(key, value)
    if auth is not None and auth.token and origin(url) == auth.origin:
        req.add_unredirected_header("Authorization", f"Bearer {auth.token}")
    handlers = [_TokenRedirects(auth, same_origin_only or not follow)]
    opener = urllib.request.build_opener(*handlers)
    try:
        return opener.open(req, timeout=timeout)
    except urllib.error.HTTPError:
        raise
    except urllib.error.URLError as exc:
        reason = getattr(exc, "reason", exc)
        raise PullError(f"Could not reach {host_of(url)} ({reason}). Check your connection and try again.") from None
    except (socket.timeout, TimeoutError):
        raise PullError(f"{host_of(url)} did not answer within {timeout:.0f} s. Try again later.") from None
    except (ConnectionError, http.client.HTTPException) as exc:
        raise PullError(f"The connection to {host_of(url)} failed ({type(exc).__name__}: {exc}). Try again.") from None


def read_body(resp, limit: int = MAX_JSON) -> bytes:
    data = resp.read(limit + 1)
    if len(data) > limit:
        raise PullError(f"{host_of(resp.url)} sent more than {limit >> 20} MiB where a short answer was expected.")
    return data


def error_body(exc: urllib.error.HTTPError, limit: int = 64 << 10) -> bytes:
    """The body of an error response (up to ``limit`` bytes), or b""."""
    try:
        return exc.read(limit) or b""
    except (OSError, http.client.HTTPException, ValueError):
        return b""


def error_message(body: bytes) -> str:
    """The ``message``/``error`` text of a JSON error body, shortened ("" if none)."""
    try:
        data = json.loads(body.decode("utf-8", "replace"))
    except ValueError:
        return ""
    if isinstance(data, dict):
        for key in ("message", "error"):
            if isinstance(data.get(key), str) and data[key].strip():
                return data[key].strip()[:300]
    return ""


def get_json(url: str, *, auth: Optional[Auth], explain: Callable[[urllib.error.HTTPError, str], PullError]) -> dict:
    """GET ``url`` as a JSON object; HTTP errors become ``explain(error, url)``."""
    try:
        with open_url(url, auth=auth, headers={"Accept": "application/json"}) as resp:
            body = read_body(resp)
    except urllib.error.HTTPError as exc:
        with exc:
            raise explain(exc, url) from None
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise PullError(f"{host_of(url)} answered {strip_token(url)} with something that is not JSON; is the base URL right?") from None
    if not isinstance(data, dict):
        raise PullError(f"{host_of(url)} answered {strip_token(url)} with a JSON {type(data).__name__}, not an object.")
    return data


def generic_http_error(exc: urllib.error.HTTPError, url: str, auth: Optional[Auth] = None) -> PullError:
    """Messages for a plain URL's HTTP errors."""
    shown = strip_token(url)
    if exc.code == 404:
        return SourceNotFound(f"{shown} does not exist (HTTP 404). Check the link.")
    if exc.code in (401, 403):
        from .sources import TokenNeeded

        if auth is not None and auth.token:
            return TokenNeeded(f"{host_of(url)} refused the token given with --token (HTTP {exc.code}) for {shown}.")
        return TokenNeeded(f"{shown} needs authorisation (HTTP {exc.code}); pass a token with --token if the site gives you one.")
    return PullError(f"{host_of(url)} answered HTTP {exc.code} ({exc.reason}) for {shown}. Try again later.")


# ---------------------------------------------------------------- safetensors header over HTTP


@dataclass(frozen=True)
class RemoteHead:
    """What a first ranged GET tells about a remote file."""

    header: Optional[dict]  # the safetensors JSON header, None if the file is no safetensors
    size: Optional[int]
    file_name: Optional[str]  # from Content-Disposition
    etag: Optional[str]
    final_url: str


def _total_from(resp) -> Optional[int]:
    rng = resp.headers.get("Content-Range", "")
    if resp.status == 206 and "/" in rng:
        total = rng.rsplit("/", 1)[1].strip()
        return int(total) if total.isdigit() else None
    length = resp.headers.get("Content-Length")
    return int(length) if resp.status == 200 and length and length.isdigit() else None


def _read_exact(resp, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        piece = resp.read(min(n - len(out), 1 << 20))
        if not piece:
            break
        out += piece
    return bytes(out)


def remote_head(url: str, *, auth: Optional[Auth], explain: Callable[[urllib.error.HTTPError, str], PullError], probe: int = 64 << 10) -> RemoteHead:
    """The safetensors header of a remote file, read with HTTP ``Range`` (8-byte length,
    then the JSON), plus its size, Content-Disposition name and ETag.  A server that
    ignores ``Range`` is read only as far as needed and the connection closed."""
    from .sources import disposition_file_name

    try:
        resp = open_url(url, auth=auth, headers={"Range": f"bytes=0-{probe - 1}", "Accept-Encoding": "identity"})
    except urllib.error.HTTPError as exc:
        with exc:
            raise explain(exc, url) from None
    with resp:
        size = _total_from(resp)
        name = disposition_file_name(resp.headers.get("Content-Disposition"))
        etag = resp.headers.get("ETag")
        final = resp.url
        first = _read_exact(resp, probe if resp.status == 206 else 8)
        if len(first) < 8:
            return RemoteHead(None, size, name, etag, final)
        (length,) = struct.unpack("<Q", first[:8])
        if length < 2 or length > MAX_HEADER or (size is not None and 8 + length > size):
            return RemoteHead(None, size, name, etag, final)
        if resp.status == 200:
            raw = _read_exact(resp, length)
        else:
            raw = first[8 : 8 + length]
    if len(raw) < length and resp.status == 206:
        try:
            more = open_url(final, headers={"Range": f"bytes={8 + len(raw)}-{8 + length - 1}", "Accept-Encoding": "identity"})
        except urllib.error.HTTPError as exc:
            with exc:
                raise explain(exc, url) from None
        with more:
            raw += _read_exact(more, length - len(raw))
    if len(raw) < length or not raw.lstrip().startswith(b"{"):
        return RemoteHead(None, size, name, etag, final)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return RemoteHead(None, size, name, etag, final)
    return RemoteHead(header if isinstance(header, dict) else None, size, name, etag, final)


# ---------------------------------------------------------------- disk


def downloads_dir(home) -> Path:
    """``HOME/downloads``: unfinished downloads (``.part``) and their records."""
    return Path(home.root) / "downloads"


def _existing_parent(path: Path) -> Path:
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def human_size(n: Optional[float]) -> str:
    if n is None:
        return "?"
    for unit, scale in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}" if unit == "GB" else f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"


def check_space(folder: Path, needed: int, what: str) -> None:
    """:class:`NotEnoughSpace` unless the disk holding ``folder`` has ``needed`` bytes
    (plus a small reserve) free."""
    if needed <= 0:
        return
    free = shutil.disk_usage(_existing_parent(folder)).free
    if free < needed + RESERVE:
        raise NotEnoughSpace(
            f"Not enough disk space for {what}: it needs {human_size(needed)} more, but only {human_size(free)} is free "
            f"on the disk holding {folder}. Free some space (or use another data home with --home) and run the same pull again."
        )


def same_device(a: Path, b: Path) -> bool:
    try:
        return os.stat(_existing_parent(a)).st_dev == os.stat(_existing_parent(b)).st_dev
    except OSError:
        return False


def _full_disk(exc: OSError) -> bool:
    return exc.errno in (errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", -1))


def disk_full_error(exc: OSError, where: Path, done: int, total: Optional[int], kept: bool) -> NotEnoughSpace:
    why = "the file size limit was reached" if exc.errno == errno.EFBIG else "the disk is full"
    keep = (f" The {human_size(done)} downloaded so far are kept in {where}; free some space and run the same pull "
            "again to continue.") if kept else ""
    return NotEnoughSpace(f"Writing {where.name} failed: {why} ({human_size(done)} of {human_size(total)} written).{keep} "
                          "Nothing was put in the model folder.")


# ---------------------------------------------------------------- the lock


class PartLock:
    """An exclusive lock on ``path`` (created if missing), held by this process.

    The file is removed on release while still locked; a waiting opener that got
    the removed file notices (the inode no longer matches) and tries again."""

    def __init__(self, path: Path, what: str) -> None:
        self.path = Path(path)
        self.what = what
        self.fd: Optional[int] = None

    def __enter__(self) -> "PartLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(100):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            if not _try_lock(fd):
                other = _read_pid(fd)
                os.close(fd)
                by = f" (by process {other})" if other else ""
                raise AlreadyDownloading(
                    f"{self.what} is already being downloaded by another brushwork pull{by}. Wait for it to finish "
                    f"(it is saved in {self.path.parent}); running the same pull afterwards says it is installed."
                )
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                os.ftruncate(fd, 0)
                os.write(fd, str(os.getpid()).encode())
                self.fd = fd
                return self
            os.close(fd)
        raise PullError(f"Could not lock {self.path}; remove it if no other pull is running.")

    def __exit__(self, *exc) -> None:
        if self.fd is None:
            return
        try:
            self.path.unlink()
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None


def _try_lock(fd: int) -> bool:
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError as exc:  # a file system without locks: go on unlocked rather than fail
        log.warning("cannot lock %s (%s); concurrent pulls of one file are not detected here", fd, exc)
        return True


def _read_pid(fd: int) -> Optional[int]:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 32).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


# ---------------------------------------------------------------- the transfer


class _Dropped(Exception):
    """The connection ended before the file did."""


def _write_all(write, view: memoryview) -> None:
    while len(view):
        n = write(view)
        if n is None or n <= 0:
            raise OSError(errno.EIO, "write made no progress")
        view = view[n:]


def pump(read_into: Callable[[memoryview], int], write: Callable[[memoryview], int], digest, *,
         limit: Optional[int], cancel: Optional[threading.Event], on_bytes: Callable[[int], None],
         chunk: Optional[int] = None, depth: Optional[int] = None) -> int:
    """Copy up to ``limit`` bytes (None: until EOF) from ``read_into`` to ``write``,
    hashing them in order.  Three stages run at once on ``depth`` reused
    ``chunk``-byte buffers: receiving (the calling thread), hashing and writing (a
    thread each; sha256 and file writes release the GIL).  A buffer is reused once
    both have finished with it.  Returns the bytes written; the first error of any
    stage is raised after all of them stopped."""
    chunk = chunk or CHUNK
    free: "queue.Queue[bytearray]" = queue.Queue()
    for _ in range(depth or DEPTH):
        free.put(bytearray(chunk))
    to_hash: "queue.Queue[Optional[tuple[bytearray, int]]]" = queue.Queue()
    to_write: "queue.Queue[Optional[tuple[bytearray, int]]]" = queue.Queue()
    failed: list[BaseException] = []
    written = [0]
    pending: dict[int, int] = {}  # id(buffer) -> stages still using it
    lock = threading.Lock()

    def release(buf: bytearray) -> None:
        with lock:
            pending[id(buf)] -= 1
            done = pending[id(buf)] == 0
        if done:
            free.put(buf)

    def stage(inbox, work) -> None:
        while True:
            item = inbox.get()
            if item is None:
                return
            buf, n = item
            try:
                if not failed:
                    work(memoryview(buf)[:n], n)
            except BaseException as exc:  # noqa: BLE001 - handed to the receiving thread
                failed.append(exc)
            finally:
                release(buf)

    def hash_one(view: memoryview, n: int) -> None:
        digest.update(view)

    def write_one(view: memoryview, n: int) -> None:
        _write_all(write, view)
        written[0] += n
        on_bytes(written[0])

    workers = [threading.Thread(target=stage, args=(to_hash, hash_one), name="brushwork-pull-hash", daemon=True),
               threading.Thread(target=stage, args=(to_write, write_one), name="brushwork-pull-write", daemon=True)]
    for w in workers:
        w.start()
    received = 0
    try:
        while limit is None or received < limit:
            if cancel is not None and cancel.is_set():
                raise Cancelled("stopped")
            if failed:
                break
            buf = free.get()
            want = chunk if limit is None else min(chunk, limit - received)
            try:
                n = read_into(memoryview(buf)[:want])
            except BaseException:
                free.put(buf)
                raise
            if not n:
                free.put(buf)
                break
            received += n
            with lock:
                pending[id(buf)] = 2
            to_hash.put((buf, n))
            to_write.put((buf, n))
    finally:
        to_hash.put(None)
        to_write.put(None)
        for w in workers:
            w.join()
    if failed:
        raise failed[0]
    return written[0]


@dataclass(frozen=True)
class Downloaded:
    sha256: str
    size: int
    resumed_from: int


def _part_record(plan: PullPlan) -> dict:
    return {"url": plan.display_url, "sha256": plan.sha256, "size": plan.size, "etag": plan.etag, "file_name": plan.file_name}


def _read_record(path: Path) -> Optional[dict]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_record(path: Path, record: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=1), encoding="utf-8")
    os.replace(tmp, path)


def _same_remote(old: Optional[dict], plan: PullPlan) -> bool:
    """Whether a kept ``.part`` belongs to the file ``plan`` describes."""
    if old is None:
        return False
    if plan.sha256 or old.get("sha256"):
        return old.get("sha256") == plan.sha256
    for key in ("size", "etag"):
        if old.get(key) is not None and getattr(plan, key) is not None and old.get(key) != getattr(plan, key):
            return False
    return old.get("url") == plan.display_url


def _strong_etag(etag: Optional[str]) -> Optional[str]:
    return etag if etag and not etag.startswith("W/") and etag.startswith('"') else None


def _content_range_start(value: str) -> Optional[tuple[int, Optional[int]]]:
    # "bytes 100-199/1000"
    try:
        unit, rest = value.split(" ", 1)
        span, total = rest.split("/", 1)
        start = int(span.split("-", 1)[0])
    except ValueError:
        return None
    if unit.strip().lower() != "bytes":
        return None
    return start, (int(total) if total.strip().isdigit() else None)


def _hash_kept(part: Path, digest, cancel: Optional[threading.Event], reporter: Reporter) -> int:
    """Feed the kept bytes of ``part`` to ``digest``; returns their count."""
    done = 0
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    with open(part, "rb", buffering=0) as f:
        while True:
            if cancel is not None and cancel.is_set():
                raise Cancelled(f"Stopped while checking the {human_size(done)} kept in {part}; they are still there, "
                                "run the same pull again to continue.")
            n = f.readinto(view)
            if not n:
                return done
            digest.update(view[:n])
            done += n
            reporter.report("verifying", done)


def fetch_part(plan: PullPlan, part: Path, *, explain: Callable[[urllib.error.HTTPError, str], PullError],
             reporter: Reporter, cancel: Optional[threading.Event] = None, target_dir: Optional[Path] = None,
             login_error: Optional[Callable[[], PullError]] = None) -> Downloaded:
    """Download ``plan.url`` into ``part`` (resuming what is kept there when it is
    the same remote file) and return its sha256.  The caller holds the lock."""
    record_path = part.with_name(part.name + ".json")
    if part.exists() and not _same_remote(_read_record(record_path), plan):
        log.info("discarding %s: it belongs to another version of the file", part)
        part.unlink()
    if plan.size is not None and part.exists() and part.stat().st_size > plan.size:
        part.unlink()
    part.parent.mkdir(parents=True, exist_ok=True)
    _write_record(record_path, _part_record(plan))
    try:
        return _fetch(plan, part, explain, reporter, cancel, target_dir, login_error)
    finally:
        if not part.exists():  # nothing was received: leave no record behind
            record_path.unlink(missing_ok=True)


def _fetch(plan: PullPlan, part: Path, explain, reporter: Reporter, cancel, target_dir, login_error) -> Downloaded:
    digest = hashlib.sha256()
    offset = part.stat().st_size if part.exists() else 0
    reporter.total = plan.size
    if offset:
        offset = _hash_kept(part, digest, cancel, reporter)
    resumed_from = 0
    attempt = 0
    host = host_of(plan.url)
    while True:
        headers = {"Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
            if _strong_etag(plan.etag):
                headers["If-Range"] = plan.etag
        try:
            resp = open_url(plan.url, auth=plan.auth, headers=headers)
        except urllib.error.HTTPError as exc:
            with exc:
                if exc.code == 416 and offset and plan.size == offset:
                    break  # everything is here already
                if exc.code == 416:
                    part.unlink(missing_ok=True)
                    digest, offset = hashlib.sha256(), 0
                    continue
                if exc.code >= 500 and attempt < RETRIES:
                    attempt += 1
                    time.sleep(RETRY_WAIT * attempt)
                    continue
                raise explain(exc, plan.url) from None
        except PullError:
            if attempt >= RETRIES:
                raise
            attempt += 1
            time.sleep(RETRY_WAIT * attempt)
            continue
        with resp:
            _refuse_web_page(resp, plan, login_error)
            if offset and resp.status == 206:
                start_total = _content_range_start(resp.headers.get("Content-Range", ""))
                if start_total is None or start_total[0] != offset:
                    resp.close()
                    part.unlink(missing_ok=True)
                    digest, offset = hashlib.sha256(), 0
                    continue
                total = start_total[1]
                resumed_from = offset
            elif offset:  # 200: the server ignored the range or the file changed: start over
                log.info("%s did not resume (HTTP %s); downloading from the start", host, resp.status)
                part.unlink(missing_ok=True)
                digest, offset = hashlib.sha256(), 0
                total = _total_from(resp)
            else:
                total = _total_from(resp)
            total = total if total is not None else plan.size
            reporter.total = total
            remaining = None if total is None else total - offset
            if remaining is not None:
                check_space(part.parent, remaining, plan.file_name)
                if target_dir is not None and not same_device(part.parent, target_dir):
                    check_space(target_dir, total, plan.file_name)
            reporter.reset_speed()
            reporter.report("downloading", offset, force=True)
            try:
                offset = _receive(resp, part, digest, offset, remaining, cancel, reporter, total)
            except _Dropped:
                offset = part.stat().st_size
                if attempt >= RETRIES:
                    raise PullError(
                        f"The connection to {host} dropped {attempt + 1} times while downloading {plan.file_name}. "
                        f"{human_size(offset)} of {human_size(total)} are kept in {part.parent}; run the same pull again to continue."
                    ) from None
                attempt += 1
                log.info("connection to %s dropped at %d bytes; resuming (attempt %d)", host, offset, attempt)
                time.sleep(RETRY_WAIT * attempt)
                continue
        break
    reporter.report("verifying", offset, force=True)
    return Downloaded(digest.hexdigest(), offset, resumed_from)


def _refuse_web_page(resp, plan: PullPlan, login_error: Optional[Callable[[], PullError]]) -> None:
    kind = resp.headers.get("Content-Type", "").lower()
    if kind.startswith("text/html") and not plan.file_name.lower().endswith((".html", ".htm")):
        final = strip_token(resp.url)
        from .sources import TokenNeeded

        if "reason=download-auth" in final or "/login" in urlsplit(final).path:
            if login_error is not None:
                raise login_error()
            raise TokenNeeded(f"{plan.label} needs a login to download (the site sent its login page instead of the file).")
        raise PullError(f"{host_of(final)} sent a web page instead of {plan.file_name} ({final}). Open the link in a browser to see why.")


#: while downloading, bytes written between background flushes to disk (FSYNC only)
FLUSH_STEP = 64 << 20


class _Flusher:
    """Flushes a file being written to disk in the background, every
    :data:`FLUSH_STEP` bytes, so the final fsync has little left to wait for: the
    disk works while the network does instead of after it.  Its errors are left to
    that final fsync, which reports them."""

    def __init__(self, fd: int) -> None:
        self.fd, self.asked, self.flushed = fd, 0, 0
        self.wake, self.done = threading.Event(), False
        self.thread = threading.Thread(target=self._run, name="brushwork-pull-flush", daemon=True)
        self.thread.start()

    def wrote(self, n: int) -> None:
        if n - self.asked >= FLUSH_STEP:
            self.asked = n
            self.wake.set()

    def _run(self) -> None:
        while True:
            self.wake.wait()
            self.wake.clear()
            if self.done:
                return
            try:
                os.fdatasync(self.fd)
            except OSError:
                pass

    def stop(self) -> None:
        self.done = True
        self.wake.set()
        self.thread.join()


def _receive(resp, part: Path, digest, offset: int, remaining: Optional[int], cancel, reporter: Reporter, total: Optional[int]) -> int:
    """Append the body of ``resp`` to ``part``; returns the new size.  :class:`_Dropped`
    when the connection ends early; the file is flushed to disk when complete."""
    with open(part, "ab", buffering=0) as fh:
        flusher = _Flusher(fh.fileno()) if FSYNC and hasattr(os, "fdatasync") else None

        def on_bytes(n: int) -> None:
            reporter.report("downloading", offset + n)
            if flusher is not None:
                flusher.wrote(n)

        try:
            try:
                got = pump(resp.readinto, fh.write, digest, limit=remaining, cancel=cancel, on_bytes=on_bytes)
            finally:
                if flusher is not None:
                    flusher.stop()
        except Cancelled:
            raise Cancelled(
                f"Stopped. {human_size(part.stat().st_size)} of {human_size(total)} of {part.name.split('.part')[0]} are kept "
                f"in {part.parent}; run the same pull again to continue."
            ) from None
        except OSError as exc:
            if _full_disk(exc):
                raise disk_full_error(exc, part, part.stat().st_size, total, kept=True) from None
            if isinstance(exc, (ConnectionError, socket.timeout, TimeoutError)):
                raise _Dropped() from None
            raise
        except http.client.HTTPException:
            raise _Dropped() from None
        if remaining is not None and got < remaining:
            raise _Dropped()
        try:
            if FSYNC:
                os.fsync(fh.fileno())
        except OSError as exc:
            if _full_disk(exc):
                raise disk_full_error(exc, part, part.stat().st_size, total, kept=True) from None
            raise
    return offset + got


# ---------------------------------------------------------------- into place


def link_into_place(src: Path, folder: Path, names: Iterable[str]) -> Path:
    """Put ``src`` into ``folder`` under the first of ``names`` that is free, never
    replacing an existing file (``os.link`` fails rather than overwrite), and remove
    ``src``.  Across disks the file is first copied to a hidden name in ``folder``.
    On failure ``src`` is kept (the download is not lost)."""
    folder.mkdir(parents=True, exist_ok=True)
    source = src if same_device(src, folder) else _copy_near(src, folder)
    try:
        for name in names:
            target = folder / name
            try:
                os.link(source, target)
            except FileExistsError:
                continue
            except OSError as exc:
                if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS, errno.EXDEV):
                    raise
                if target.exists():  # no hard links on this file system: rename onto a free name
                    continue
                os.replace(source, target)
            src.unlink(missing_ok=True)
            source.unlink(missing_ok=True)
            return target
        raise PullError(f"No free file name found in {folder}.")
    finally:
        if source != src:
            source.unlink(missing_ok=True)


def _copy_near(src: Path, folder: Path) -> Path:
    temp = folder / f".{src.name}.copying"
    try:
        with open(src, "rb") as fin, open(temp, "wb") as fout:
            shutil.copyfileobj(fin, fout, CHUNK)
            fout.flush()
            os.fsync(fout.fileno())
    except OSError as exc:
        temp.unlink(missing_ok=True)
        if _full_disk(exc):
            raise disk_full_error(exc, folder / src.name, 0, src.stat().st_size, kept=False) from None
        raise
    return temp
