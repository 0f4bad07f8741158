"""Tests for A1111-compatible file hashes and the hash cache."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct

import pytest

from brushwork import hashing
from brushwork.hashing import (
    HashCache,
    SafetensorsHeaderError,
    addnet_hash,
    legacy_model_hash,
    model_hash,
    read_safetensors_header,
    sha256_file,
)

ABC_SHA256 = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def _write_safetensors(path, data: bytes, metadata: dict[str, str] | None = None) -> bytes:
    """Write a tiny safetensors file by hand: u64 length, JSON header, raw data."""
    header: dict = {"w": {"dtype": "F32", "shape": [len(data) // 4], "data_offsets": [0, len(data)]}}
    if metadata is not None:
        header["__metadata__"] = metadata
    blob = json.dumps(header).encode("utf-8")
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + data)
    return data


def test_sha256_of_small_file(tmp_path):
    path = tmp_path / "abc.bin"
    path.write_bytes(b"abc")
    assert sha256_file(path) == ABC_SHA256
    assert sha256_file(path, block=1) == ABC_SHA256
    assert model_hash(path) == "ba7816bf8f"


def test_sha256_rejects_bad_block(tmp_path):
    path = tmp_path / "abc.bin"
    path.write_bytes(b"abc")
    with pytest.raises(ValueError, match="block size"):
        sha256_file(path, block=0)


def test_legacy_hash_reads_64k_at_1mib(tmp_path):
    window = bytes(range(256)) * 256  # exactly 0x10000 bytes
    path = tmp_path / "model.ckpt"
    path.write_bytes(b"\x01" * 0x100000 + window + b"tail that is ignored")
    assert legacy_model_hash(path) == hashlib.sha256(window).hexdigest()[:8]
    small = tmp_path / "small.ckpt"
    small.write_bytes(b"short")
    assert legacy_model_hash(small) == EMPTY_SHA256[:8] == "e3b0c442"


def test_addnet_hash_skips_header(tmp_path):
    data = bytes(range(16))
    first = tmp_path / "a.safetensors"
    second = tmp_path / "b.safetensors"
    _write_safetensors(first, data, {"ss_network_dim": "4"})
    _write_safetensors(second, data, {"ss_network_dim": "8", "note": "different"})
    expected = hashlib.sha256(data).hexdigest()[:12]
    assert addnet_hash(first) == expected
    assert addnet_hash(second) == expected
    assert sha256_file(first) != sha256_file(second)


def test_addnet_hash_prefers_sshs_model_hash(tmp_path):
    path = tmp_path / "lora.SAFETENSORS"
    _write_safetensors(path, b"\x00" * 8, {"sshs_model_hash": "ABCDEF0123456789"})
    assert addnet_hash(path) == "ABCDEF012345"
    assert read_safetensors_header(path)["__metadata__"]["sshs_model_hash"] == "ABCDEF0123456789"


def test_addnet_hash_of_other_formats_is_whole_file(tmp_path):
    path = tmp_path / "lora.pt"
    path.write_bytes(b"abc")
    assert addnet_hash(path) == ABC_SHA256[:12]


def test_broken_safetensors_header(tmp_path):
    short = tmp_path / "short.safetensors"
    short.write_bytes(b"\x01\x02")
    with pytest.raises(SafetensorsHeaderError, match="too short"):
        addnet_hash(short)
    huge = tmp_path / "huge.safetensors"
    huge.write_bytes(struct.pack("<Q", 10_000) + b"{}")
    with pytest.raises(SafetensorsHeaderError, match="10000-byte header"):
        addnet_hash(huge)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(struct.pack("<Q", 3) + b"{x}")
    with pytest.raises(SafetensorsHeaderError, match="not valid UTF-8 JSON"):
        read_safetensors_header(garbage)


@pytest.fixture
def counted(monkeypatch):
    """Count calls to sha256_file while still computing real hashes."""
    calls: list[str] = []
    real = hashing.sha256_file

    def counting(path, block=hashing.BLOCK_SIZE):
        calls.append(str(path))
        return real(path, block)

    monkeypatch.setattr(hashing, "sha256_file", counting)
    return calls


def test_cache_hit_does_not_reread(tmp_path, counted):
    model = tmp_path / "model.safetensors"
    model.write_bytes(b"abc")
    cache_file = tmp_path / "home" / "cache" / "hashes.json"
    cache = HashCache(cache_file)
    assert cache.get_sha256(model) == ABC_SHA256
    assert cache.get_sha256(model) == ABC_SHA256
    assert len(counted) == 1
    # A fresh cache object reads the stored entry from disk.
    assert HashCache(cache_file).get_sha256(model) == ABC_SHA256
    assert len(counted) == 1
    stored = json.loads(cache_file.read_text())
    entry = stored[f"checkpoint/{model.resolve()}"]
    assert entry["sha256"] == ABC_SHA256
    assert entry["size"] == 3
    assert entry["mtime"] == model.stat().st_mtime
    assert [p.name for p in cache_file.parent.iterdir()] == ["hashes.json"]


def test_cache_kinds_are_separate(tmp_path, counted):
    model = tmp_path / "x.bin"
    model.write_bytes(b"abc")
    cache = HashCache(tmp_path / "hashes.json")
    cache.get_sha256(model, kind="checkpoint")
    cache.get_sha256(model, kind="vae")
    assert len(counted) == 2


def test_new_mtime_or_size_invalidates(tmp_path, counted):
    model = tmp_path / "model.ckpt"
    model.write_bytes(b"abc")
    cache = HashCache(tmp_path / "hashes.json")
    assert cache.get_sha256(model) == ABC_SHA256
    stat = model.stat()
    os.utime(model, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    assert cache.get_sha256(model) == ABC_SHA256
    assert len(counted) == 2
    # Same mtime but different size (content replaced, mtime restored).
    mtime_ns = model.stat().st_mtime_ns
    model.write_bytes(b"")
    os.utime(model, ns=(mtime_ns, mtime_ns))
    assert cache.get_sha256(model) == EMPTY_SHA256
    assert len(counted) == 3


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '{"checkpoint/x": 5}'])
def test_corrupt_cache_file_recovers(tmp_path, counted, caplog, content):
    model = tmp_path / "model.ckpt"
    model.write_bytes(b"abc")
    cache_file = tmp_path / "hashes.json"
    cache_file.write_text(content)
    with caplog.at_level(logging.WARNING, logger="brushwork.hashing"):
        assert HashCache(cache_file).get_sha256(model) == ABC_SHA256
    if content != '{"checkpoint/x": 5}':
        assert "hash cache" in caplog.text
    assert json.loads(cache_file.read_text())[f"checkpoint/{model.resolve()}"]["sha256"] == ABC_SHA256


def test_unwritable_cache_still_returns_hash(tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    model = tmp_path / "m.bin"
    model.write_bytes(b"abc")
    with caplog.at_level(logging.WARNING, logger="brushwork.hashing"):
        assert HashCache(blocker / "hashes.json").get_sha256(model) == ABC_SHA256
    assert "cannot write hash cache" in caplog.text


def test_cached_addnet_hash(tmp_path, monkeypatch):
    data = b"\x01\x02\x03\x04" * 4
    lora = tmp_path / "style.safetensors"
    _write_safetensors(lora, data, {"ss_network_dim": "4"})
    calls: list[str] = []
    real = hashing._addnet_digest

    def counting(path, block=hashing.BLOCK_SIZE):
        calls.append(str(path))
        return real(path, block)

    monkeypatch.setattr(hashing, "_addnet_digest", counting)
    cache_file = tmp_path / "hashes.json"
    expected = hashlib.sha256(data).hexdigest()[:12]
    assert HashCache(cache_file).get_addnet_hash(lora) == expected
    assert HashCache(cache_file).get_addnet_hash(lora) == expected
    assert len(calls) == 1
    stored = json.loads(cache_file.read_text())
    assert stored[f"addnet/{lora.resolve()}"]["sha256"] == hashlib.sha256(data).hexdigest()
