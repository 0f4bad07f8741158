"""The server's download manager (server/downloads.py) with a stand-in pull: runs
pulls beside the generation worker, at most two at once, reports progress, cancels,
ends every download with a done event, and never shows or keeps a token."""
from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

from brushwork.server.downloads import MAX_RUNNING, Downloads, without_tokens


@dataclass
class P:
    file_name: str
    done: int
    total: int
    speed: float = 1000.0
    eta: float = 1.0
    phase: str = "downloading"


@dataclass
class R:
    path: Path
    kind: str = "lora"
    size: int = 10
    already_installed: bool = False
    resumed_from: int = 0


class FakePull:
    """Each call blocks until released; records what it was given."""

    def __init__(self, tmp_path: Path):
        self.tmp = tmp_path
        self.calls: list[dict] = []
        self.release: dict[str, threading.Event] = {}
        self.running = 0
        self.most = 0
        self.lock = threading.Lock()

    def __call__(self, home, source, *, token=None, kind=None, progress=None, cancel=None):
        with self.lock:
            self.calls.append({"source": source, "token": token, "kind": kind})
            self.running += 1
            self.most = max(self.most, self.running)
            gate = self.release.setdefault(source, threading.Event())
        try:
            progress(P("x.safetensors", 5, 10))
            while not gate.wait(0.02):
                if cancel.is_set():
                    raise type("Cancelled", (Exception,), {})("cancelled")
            if source == "bad":
                from brushwork import fetch

                raise getattr(fetch, "TokenNeeded", PermissionError)(f"civitai refused it: set CIVITAI_TOKEN (was {token})")
            path = self.tmp / f"{source}.safetensors"
            path.write_bytes(b"0123456789")
            return R(path)
        finally:
            with self.lock:
                self.running -= 1


@pytest.fixture
def manager(tmp_path):
    fake = FakePull(tmp_path)
    d = Downloads(tmp_path, pull=fake, public_path=lambda p: Path(p).name)
    yield d, fake
    for gate in fake.release.values():
        gate.set()
    d.close()


def test_a_download_reports_progress_and_ends_done(manager):
    d, fake = manager
    item = d.start("a", kind="lora")
    fake.release.setdefault("a", threading.Event()).set()
    done = d.wait(item.id, timeout=5)
    assert done.state == "done" and done.path == "a.safetensors" and done.name == "a" and done.total_bytes == 10
    kinds = [e.kind for e in done.events]
    assert kinds[0] == "state" and "progress" in kinds and kinds[-1] == "done"
    progress = next(e.data for e in done.events if e.kind == "progress")
    assert progress["done_bytes"] == 5 and progress["total_bytes"] == 10 and progress["speed"] == 1000.0
    assert fake.calls == [{"source": "a", "token": None, "kind": "lora"}]


def test_at_most_two_run_at_once_and_the_rest_wait(manager):
    d, fake = manager
    items = [d.start(s) for s in "abcd"]
    for _ in range(100):
        if fake.running == MAX_RUNNING:
            break
        threading.Event().wait(0.02)
    assert [i.state for i in items] == ["running", "running", "queued", "queued"]
    for s in "abcd":
        fake.release.setdefault(s, threading.Event()).set()
    assert all(d.wait(i.id, timeout=5).state == "done" for i in items)
    assert fake.most == MAX_RUNNING


def test_cancel_running_and_queued(manager):
    d, fake = manager
    running = [d.start(s) for s in "ab"]
    queued = d.start("c")
    assert d.cancel(queued.id).state == "cancelled"
    d.cancel(running[0].id)
    assert d.wait(running[0].id, timeout=5).state == "cancelled"
    fake.release.setdefault("b", threading.Event()).set()
    assert d.wait(running[1].id, timeout=5).state == "done"
    assert [c["source"] for c in fake.calls] == ["a", "b"]  # the cancelled queued one never started


def test_a_failure_says_why_and_the_token_is_never_shown_or_kept(manager):
    d, fake = manager
    item = d.start("bad", token="sekrit-123")
    fake.release.setdefault("bad", threading.Event()).set()
    done = d.wait(item.id, timeout=5)
    assert done.state == "failed" and "CIVITAI_TOKEN" in done.error
    assert fake.calls[0]["token"] == "sekrit-123"  # the pull got it ...
    assert done.token is None and done.raw_source is None  # ... and it is gone afterwards
    # a token pasted inside a URL is blanked in what the server shows
    url = d.start("https://civitai.com/api/download/models/1?type=Model&token=abc123def")
    assert "abc123def" not in url.source and url.source.endswith("token=***")
    assert "abc123def" not in str(url.view())
    d.cancel(url.id)


def test_the_event_stream_ends_with_done(manager):
    d, fake = manager
    item = d.start("s")
    fake.release.setdefault("s", threading.Event()).set()

    async def collect():
        return [e.kind async for e in d.stream(item.id) if e is not None]

    kinds = asyncio.run(asyncio.wait_for(collect(), 5))
    assert kinds[-1] == "done" and "progress" in kinds
    # asked again from past the end: the outcome once more, so a reconnect never hangs
    last = d.get(item.id).events[-1].seq
    assert [e.kind for e in d.events_after(item.id, last + 100)] == ["done"]


def test_without_tokens():
    assert without_tokens("https://x/y?token=abc&type=Model") == "https://x/y?token=***&type=Model"
    assert without_tokens("https://x/y?a=1&access_token=z") == "https://x/y?a=1&access_token=***"
    assert without_tokens("hf://a/b/c.safetensors") == "hf://a/b/c.safetensors"
