"""Shared fixtures: tiny random-weight checkpoints in the original single-file layout,
written once per session and read back through the real loader."""
from __future__ import annotations

import socket
import shutil
from pathlib import Path

import pytest

FAMILIES = {"sd1": "epsilon", "sd2": "v_prediction", "sdxl": "epsilon"}


class NetworkBlocked(RuntimeError):
    pass


@pytest.fixture(autouse=True, scope="session")
def no_network():
    """No test may touch the network: any connection beyond this machine fails loudly.
    (Loopback stays open: the server tests talk to a real server on 127.0.0.1.)"""
    real_connect = socket.socket.connect
    real_create = socket.create_connection

    def loopback(address) -> bool:
        host = address[0] if isinstance(address, tuple) else address
        return host in ("127.0.0.1", "::1", "localhost")

    def refuse(self, address):
        if self.family == socket.AF_UNIX or loopback(address):
            return real_connect(self, address)
        raise NetworkBlocked(f"a test tried to connect to {address}")

    mp = pytest.MonkeyPatch()
    mp.setattr(socket.socket, "connect", refuse)

    def refuse_create(address, *args, **kwargs):
        if loopback(address):
            return real_create(address, *args, **kwargs)
        raise NetworkBlocked(f"a test tried to connect to {address}")

    mp.setattr(socket, "create_connection", refuse_create)
    yield
    mp.undo()


@pytest.fixture(scope="session")
def tiny_home(tmp_path_factory) -> Path:
    """A data home with tiny SD 1.x, SD 2.x (v) and SDXL checkpoints."""
    from brushwork.models import families, save

    home = tmp_path_factory.mktemp("home")
    for fam, pred in FAMILIES.items():
        spec = families.tiny(fam, pred)
        save.save_checkpoint(home / "models" / "checkpoints" / f"tiny-{fam}.safetensors", spec, save.random_networks(spec, seed=0))
    return home


@pytest.fixture
def home(tiny_home, tmp_path) -> Path:
    """A private copy of the tiny home, so outputs and settings do not leak between
    tests (files with other needs define their own ``home``)."""
    dst = tmp_path / "home"
    shutil.copytree(tiny_home / "models", dst / "models")
    return dst


@pytest.fixture(scope="session")
def engines(tiny_home):
    """One loaded engine per family (loading is cheap, but sharing keeps the suite fast)."""
    from brushwork import Engine

    cache = {}

    def get(family: str):
        if family not in cache:
            eng = Engine(tiny_home, device="cpu")
            eng.load(f"tiny-{family}")
            cache[family] = eng
        return cache[family]

    return get
