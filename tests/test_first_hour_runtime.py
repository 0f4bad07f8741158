"""Issue #13 items 7 and 8: CPU threads on a busy machine, and `serve` on a busy port."""
from __future__ import annotations

import http.server
import math
import socket
import threading

import pytest

from brushwork import runtime
from brushwork.cli import main
from brushwork.devices import DeviceError

FAST = ["--steps", "1", "-W", "64", "-H", "64", "-q"]


@pytest.fixture
def torch_threads(monkeypatch):
    """Record what reaches torch instead of changing this process's thread pools."""
    import torch

    calls = []
    monkeypatch.setattr(torch, "set_num_threads", lambda n: calls.append(n))
    monkeypatch.setattr(torch, "set_num_interop_threads", lambda n: None)
    monkeypatch.setattr(runtime, "_auto_choice", None)
    monkeypatch.delenv(runtime.THREADS_ENV, raising=False)
    return calls


# ---------------------------------------------------------------- choose_threads


@pytest.mark.parametrize(
    "cores, load, expected",
    [
        (2, 0.0, 2),  # an idle machine: every core
        (2, 0.3, 2),
        (2, 1.0, 1),  # one other busy program on two cores
        (2, 1.6, 1),
        (2, 7.0, 1),  # never below one
        (8, 2.4, 6),  # rounded to the nearest free core
        (8, 2.6, 5),
        (16, 0.49, 16),
        (4, -1.0, 4),  # nonsense load: treated as idle
        (4, math.nan, 4),
        (0, 0.0, 1),  # nonsense core count: one thread
        (1, 0.0, 1),
    ],
)
def test_choose_threads(cores, load, expected):
    assert runtime.choose_threads(cores, load) == expected


def test_flag_beats_setting_beats_the_automatic_choice():
    env = {runtime.THREADS_ENV: "3"}
    assert runtime.resolve_threads("2", env, cores=4, load=0).threads == 2
    assert runtime.resolve_threads("2", env, cores=4, load=0).source == "--threads"
    assert runtime.resolve_threads(None, env, cores=4, load=0) == runtime.ThreadChoice(3, 4, 0.0, runtime.THREADS_ENV)
    assert runtime.resolve_threads("auto", {runtime.THREADS_ENV: "0"}, cores=4, load=3.0).threads == 1
    assert runtime.resolve_threads(None, {}, cores=4, load=3.0).source == "auto"


@pytest.mark.parametrize("bad", ["two", "-1", "1.5"])
def test_a_bad_thread_count_is_a_user_error(bad):
    with pytest.raises(DeviceError, match="--threads"):
        runtime.resolve_threads(bad, {}, cores=2, load=0)
    with pytest.raises(DeviceError, match=runtime.THREADS_ENV):
        runtime.resolve_threads(None, {runtime.THREADS_ENV: bad}, cores=2, load=0)


def test_the_note_only_when_fewer_threads_than_cores():
    assert runtime.ThreadChoice(2, 2, 0.1, "auto").note() is None
    assert runtime.ThreadChoice(1, 2, 1.2, "auto").note() == "using 1 of 2 CPU threads: the others are busy; --threads N to change"
    assert "set by --threads" in runtime.ThreadChoice(1, 2, 0.0, "--threads").note()


# ---------------------------------------------------------------- generate --threads


def test_threads_flag_reaches_torch(home, capsys, torch_threads):
    assert main(["generate", "a cat", "--seed", "1", "--model", "tiny-sd1", "--home", str(home), "--threads", "1", "--device", "cpu", *FAST]) == 0
    assert torch_threads == [1]


def test_the_setting_reaches_torch(home, capsys, torch_threads, monkeypatch):
    monkeypatch.setenv(runtime.THREADS_ENV, "3")
    assert main(["generate", "a cat", "--seed", "1", "--model", "tiny-sd1", "--home", str(home), "--device", "cpu", *FAST]) == 0
    assert torch_threads == [3]


def test_busy_cores_are_left_alone_and_the_header_says_so(home, capsys, torch_threads, monkeypatch):
    monkeypatch.setattr(runtime, "usable_cores", lambda: 2)
    monkeypatch.setattr(runtime, "recent_load", lambda: 1.1)
    args = ["generate", "a cat", "--seed", "1", "--model", "tiny-sd1", "--home", str(home), "--device", "cpu", "--steps", "1", "-W", "64", "-H", "64"]
    assert main(args) == 0
    assert torch_threads == [1]
    assert "using 1 of 2 CPU threads: the others are busy; --threads N to change" in capsys.readouterr().err

    monkeypatch.setattr(runtime, "_auto_choice", None)
    monkeypatch.setattr(runtime, "recent_load", lambda: 0.2)
    assert main(args) == 0
    assert torch_threads == [1, 2]
    assert "CPU threads" not in capsys.readouterr().err  # all cores: nothing to say


def test_a_bad_threads_value_is_one_line(home, capsys, torch_threads):
    assert main(["generate", "a cat", "--model", "tiny-sd1", "--home", str(home), "--threads", "many", "--device", "cpu", *FAST]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --threads") and "Traceback" not in err


# ---------------------------------------------------------------- serve on a busy port


@pytest.fixture
def busy_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def _no_build(opts):
    raise AssertionError("the engine must not be built when the port is busy")


def test_serve_on_a_busy_port_names_a_free_one(busy_port, tmp_path, capsys, monkeypatch):
    import brushwork.server as server

    monkeypatch.setattr(server, "build", _no_build)
    code = main(["serve", "--home", str(tmp_path), "--port", str(busy_port)])
    out = capsys.readouterr()
    assert code == 2
    assert "serving" not in out.out and "Traceback" not in out.err
    assert out.err.startswith(f"error: port {busy_port} is in use")
    assert "pid" in out.err or "another program" in out.err
    free = int(out.err.split("Use --port ")[1].split(",")[0])
    assert free > busy_port and server._try_bind("127.0.0.1", free) is None
    assert "AUTOMATIC1111 and Fooocus" not in out.err  # only said for 7860


def test_who_holds_the_port_falls_back_when_the_system_will_not_say(busy_port, monkeypatch):
    import psutil

    import brushwork.server as server

    def denied(kind="inet"):
        raise psutil.AccessDenied()

    monkeypatch.setattr(psutil, "net_connections", denied)
    with pytest.raises(server.PortInUse, match=f"port {busy_port} on 127.0.0.1 is already in use by another program"):
        server.check_port("127.0.0.1", busy_port)


def test_an_automatic1111_compatible_server_is_recognised(monkeypatch):
    import brushwork.server as server

    class A1111(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/sdapi/v1/options" else 404)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), A1111)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        port = httpd.server_address[1]
        with pytest.raises(server.PortInUse) as info:
            server.check_port("127.0.0.1", port)
        assert "an AUTOMATIC1111-compatible server (maybe another Brushwork) answers there" in str(info.value)
        assert f"Use --port {port + 1}" in str(info.value) or "Use --port" in str(info.value)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def test_7860_mentions_the_other_studios(monkeypatch):
    import brushwork.server as server

    monkeypatch.setattr(server, "_try_bind", lambda host, port: OSError(98, "Address already in use") if port == 7860 else None)
    monkeypatch.setattr(server, "port_user", lambda port: "python3 (pid 1234)")
    monkeypatch.setattr(server, "what_answers", lambda host, port: None)
    with pytest.raises(server.PortInUse) as info:
        server.check_port("127.0.0.1", 7860)
    assert str(info.value) == "port 7860 is in use by python3 (pid 1234). 7860 is also the default port of AUTOMATIC1111 and Fooocus. Use --port 7861, which is free (or stop the other program)."
