"""brushwork pull when things go wrong: dropped connections and resuming, servers
that ignore Range, files that change, wrong hashes, full disks, two pulls at once,
Ctrl+C (cancel).  All against real local servers."""
from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import subprocess
import sys
import threading
import time
from collections import namedtuple
from pathlib import Path
from types import SimpleNamespace

import pytest

import fake_model_servers as fake
from brushwork.fetch import AlreadyDownloading, Cancelled, HashMismatch, NotEnoughSpace, PullError, download, pull
from brushwork.paths import DataHome


@pytest.fixture
def net(monkeypatch):
    civitai, hf, files = fake.FakeCivitai(), fake.FakeHF(), fake.FileServer()
    monkeypatch.setenv("BRUSHWORK_CIVITAI_URL", civitai.url)
    monkeypatch.setenv("HF_ENDPOINT", hf.url)
    for name in ("CIVITAI_TOKEN", "HF_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(download, "RETRY_WAIT", 0.01)
    yield SimpleNamespace(civitai=civitai, hf=hf, files=files)
    for server in (civitai, hf, files):
        server.close()


@pytest.fixture
def dh(tmp_path) -> DataHome:
    return DataHome(tmp_path / "home")


@pytest.fixture(scope="module")
def ckpt_bytes(tiny_home) -> bytes:
    return (tiny_home / "models" / "checkpoints" / "tiny-sd1.safetensors").read_bytes()


@pytest.fixture(scope="module")
def lora_bytes() -> bytes:
    return fake.tiny_lora(seed=2, width=128, layers=8)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def civitai_lora(net, data: bytes, published: str | None = None) -> str:
    f = fake.CivitaiFile(901, "add_detail.safetensors", data, published_sha256=published)
    net.civitai.add(fake.CivitaiModel(58390, "Detail Tweaker", "LORA", [fake.CivitaiVersion(62833, "v1", [f])]))
    return "storage/model/62833/901"


def blob(net, key="model/62833/901") -> fake.Blob:
    return net.civitai.storage.blobs[key]


def model_gets(net) -> list:
    return net.civitai.storage.requests("GET", "/files/model/")


def downloads(dh) -> list[str]:
    folder = Path(dh.root) / "downloads"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# ---------------------------------------------------------------- dropped connections


def test_dropped_connection_is_resumed_within_the_pull(net, dh, lora_bytes):
    civitai_lora(net, lora_bytes)
    blob(net).drop_after, blob(net).drops_left = 10_000, 1
    result = pull(dh, "https://civitai.com/models/58390")
    assert result.sha256 == sha(lora_bytes) and result.path.read_bytes() == lora_bytes
    assert result.resumed_from == 10_000
    gets = model_gets(net)
    assert len(gets) == 2 and "range" not in gets[0].headers and gets[1].headers["range"] == "bytes=10000-"
    assert downloads(dh) == []


def test_dropped_connection_then_pull_again_resumes(net, dh, lora_bytes, monkeypatch):
    monkeypatch.setattr(download, "RETRIES", 0)
    civitai_lora(net, lora_bytes)
    blob(net).drop_after, blob(net).drops_left = 10_000, 1
    with pytest.raises(PullError) as err:
        pull(dh, "https://civitai.com/models/58390")
    assert "run the same pull again to continue" in str(err.value)
    part = Path(dh.root) / "downloads" / f"add_detail.safetensors.{sha(lora_bytes)[:16]}.part"
    assert part.stat().st_size == 10_000
    record = json.loads(part.with_name(part.name + ".json").read_text())
    assert record["sha256"] == sha(lora_bytes) and record["size"] == len(lora_bytes)
    assert not dh.lora_dirs[0].exists() or not any(dh.lora_dirs[0].iterdir())  # nothing partial in the model folder
    result = pull(dh, "https://civitai.com/models/58390")
    assert result.resumed_from == 10_000 and result.sha256 == sha(lora_bytes)
    assert model_gets(net)[-1].headers["range"] == "bytes=10000-"
    assert downloads(dh) == []


def test_server_ignoring_range_restarts_from_zero(net, dh, lora_bytes, monkeypatch):
    monkeypatch.setattr(download, "RETRIES", 0)
    civitai_lora(net, lora_bytes)
    b = blob(net)
    b.drop_after, b.drops_left, b.ignore_range = 10_000, 1, True
    with pytest.raises(PullError):
        pull(dh, "https://civitai.com/models/58390")
    result = pull(dh, "https://civitai.com/models/58390")
    assert result.resumed_from == 0 and result.path.read_bytes() == lora_bytes
    assert model_gets(net)[-1].headers["range"] == "bytes=10000-"  # asked, but got a 200: started over


def test_changed_remote_file_is_not_spliced(net, dh, lora_bytes, monkeypatch):
    monkeypatch.setattr(download, "RETRIES", 0)
    url = net.files.add("lora.safetensors", lora_bytes, etag='"v1"')
    b = net.files.blobs["/lora.safetensors"]
    b.drop_after, b.drops_left = 10_000, 1
    with pytest.raises(PullError):
        pull(dh, url)
    new = fake.tiny_lora(seed=3, width=128, layers=8)
    assert len(new) == len(lora_bytes)
    net.files.blobs["/lora.safetensors"] = fake.Blob(data=new, etag='"v2"')
    result = pull(dh, url)
    assert result.path.read_bytes() == new and result.resumed_from == 0
    last = net.files.requests("GET")[-1]
    assert "range" not in last.headers  # a different ETag: the kept part was dropped, not continued
    assert downloads(dh) == []


def test_complete_part_from_an_interrupted_run_is_verified_and_installed(net, dh, lora_bytes):
    civitai_lora(net, lora_bytes)
    from brushwork.fetch import resolve

    plan = resolve("https://civitai.com/models/58390")
    folder = Path(dh.root) / "downloads"
    folder.mkdir(parents=True)
    part = folder / f"add_detail.safetensors.{sha(lora_bytes)[:16]}.part"
    part.write_bytes(lora_bytes)
    part.with_name(part.name + ".json").write_text(json.dumps({"url": plan.display_url, "sha256": plan.sha256, "size": plan.size, "etag": None}))
    result = pull(dh, "https://civitai.com/models/58390")
    assert result.resumed_from == 0 and result.path.read_bytes() == lora_bytes  # the server answered 416: all was there
    assert model_gets(net)[-1].headers["range"] == f"bytes={len(lora_bytes)}-"


# ---------------------------------------------------------------- hashes


def test_wrong_published_hash_keeps_nothing(net, dh, lora_bytes):
    civitai_lora(net, lora_bytes, published="AB" * 32)
    with pytest.raises(HashMismatch) as err:
        pull(dh, "https://civitai.com/models/58390")
    msg = str(err.value)
    assert "add_detail.safetensors" in msg and sha(lora_bytes) in msg and "ab" * 32 in msg
    assert downloads(dh) == []
    assert not dh.lora_dirs[0].exists() or not any(dh.lora_dirs[0].iterdir())


# ---------------------------------------------------------------- disk space


def test_not_enough_space_is_refused_before_downloading(net, dh, ckpt_bytes, monkeypatch):
    url = net.files.add("big.safetensors", ckpt_bytes)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(download.shutil, "disk_usage", lambda p: usage(10 << 30, 10 << 30, 1 << 20))
    with pytest.raises(NotEnoughSpace) as err:
        pull(dh, url)
    assert "needs 5.1 MB more, but only 1.0 MB is free" in str(err.value) and "Free some space" in str(err.value)
    assert all("range" in r.headers and r.headers["range"] == "bytes=0-65535" for r in net.files.requests("GET"))  # only the header probe


DISK_FULL_CHILD = r"""
import resource, signal, sys
from types import SimpleNamespace
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
limit = int(sys.argv[3])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
from brushwork.fetch import cli
sys.exit(cli.cmd_pull(SimpleNamespace(home=sys.argv[1], source=sys.argv[2], token=None, kind=None)))
"""


@pytest.mark.skipif(not hasattr(os, "fork") or sys.platform == "darwin", reason="RLIMIT_FSIZE disk-full simulation needs Linux")
def test_full_disk_mid_download_leaves_nothing_in_the_model_folder(net, dh, ckpt_bytes):
    url = net.files.add("tiny.safetensors", ckpt_bytes)
    limit = 1 << 20
    proc = subprocess.run([sys.executable, "-c", DISK_FULL_CHILD, str(dh.root), url, str(limit)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert "file size limit was reached" in proc.stderr and "Nothing was put in the model folder" in proc.stderr
    assert not dh.checkpoint_dirs[0].exists() or not any(dh.checkpoint_dirs[0].iterdir())
    parts = list((Path(dh.root) / "downloads").glob("*.part"))
    kept = parts[0].stat().st_size
    assert len(parts) == 1 and 0 < kept <= limit
    result = pull(dh, url)  # room again: it continues
    assert result.resumed_from == kept and result.path.read_bytes() == ckpt_bytes


def test_disk_full_while_writing_is_reported(tmp_path):
    class Full:
        written = 0

        def __call__(self, view):
            if self.written > 100:
                raise OSError(errno.ENOSPC, "No space left on device")
            self.written += len(view)
            return len(view)

    digest = hashlib.sha256()
    with pytest.raises(OSError) as err:
        download.pump(io.BytesIO(b"x" * 10_000).readinto, Full(), digest, limit=None, cancel=None, on_bytes=lambda n: None, chunk=64)
    assert err.value.errno == errno.ENOSPC


def test_pump_hashes_and_writes_in_order():
    data = os.urandom(300_000)
    out = io.BytesIO()
    digest = hashlib.sha256()
    n = download.pump(io.BytesIO(data).readinto, out.write, digest, limit=len(data), cancel=None, on_bytes=lambda n: None, chunk=4096, depth=3)
    assert n == len(data) and out.getvalue() == data and digest.hexdigest() == sha(data)


# ---------------------------------------------------------------- two pulls, cancel


def test_two_concurrent_pulls_of_one_file_do_not_clash(net, dh, ckpt_bytes, monkeypatch):
    monkeypatch.setattr(download, "CHUNK", 64 << 10)
    url = net.files.add("tiny.safetensors", ckpt_bytes, delay=0.01)
    box = {}
    first = threading.Thread(target=lambda: box.setdefault("result", pull(dh, url)))
    first.start()
    deadline = time.monotonic() + 20
    while not [r for r in net.files.requests("GET") if "bytes=0-65535" != r.headers.get("range")] and time.monotonic() < deadline:
        time.sleep(0.01)
    with pytest.raises(AlreadyDownloading) as err:
        pull(dh, url)
    assert "already being downloaded by another brushwork pull" in str(err.value) and str(os.getpid()) in str(err.value)
    first.join(30)
    assert box["result"].path.read_bytes() == ckpt_bytes
    again = pull(dh, url)
    assert again.already_installed
    assert sorted(p.name for p in dh.checkpoint_dirs[0].iterdir()) == ["tiny.json", "tiny.safetensors"]
    assert downloads(dh) == []


def test_cancel_keeps_the_part_for_the_next_run(net, dh, ckpt_bytes, monkeypatch):
    monkeypatch.setattr(download, "CHUNK", 64 << 10)
    monkeypatch.setattr(download, "PROGRESS_EVERY", 0.0)
    url = net.files.add("tiny.safetensors", ckpt_bytes, delay=0.002)
    stop = threading.Event()

    def progress(p):
        if p.phase == "downloading" and p.done >= 1 << 20:
            stop.set()

    with pytest.raises(Cancelled) as err:
        pull(dh, url, progress=progress, cancel=stop)
    assert "run the same pull again to continue" in str(err.value)
    parts = list((Path(dh.root) / "downloads").glob("*.part"))
    kept = parts[0].stat().st_size
    assert len(parts) == 1 and kept >= 1 << 20 and kept < len(ckpt_bytes)
    result = pull(dh, url)
    assert result.resumed_from == kept and result.path.read_bytes() == ckpt_bytes


def test_move_across_disks_copies_then_links(net, dh, lora_bytes, monkeypatch):
    monkeypatch.setattr(download, "same_device", lambda a, b: False)
    civitai_lora(net, lora_bytes)
    result = pull(dh, "https://civitai.com/models/58390")
    assert result.path.read_bytes() == lora_bytes
    assert not [p for p in dh.lora_dirs[0].iterdir() if p.name.startswith(".")]
    assert downloads(dh) == []
