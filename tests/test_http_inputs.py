"""The HTTP layer's answers to hostile or broken input (issue 11), one test per fault.

Each test failed before its fix.  They run against the real routes with the fake
engine of test_server_api.py; the ones about connections and the event loop use a
real uvicorn server on 127.0.0.1.  The helpers here (server, requests, PNG files
written chunk by chunk) are shared with test_bad_inputs.py.
"""
from __future__ import annotations

import base64
import http.client
import json
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import pytest
from test_server_api import client, home, studio, wait_state  # noqa: F401 - fixtures

from brushwork.server import a1111, serve_in_thread
from brushwork.server import app as app_module
from brushwork.server.app import create_app
from brushwork.server.schemas import MAX_INFOTEXT_CHARS

TESTS = Path(__file__).parent
SMALL = {"steps": 1, "width": 64, "height": 64}


# ---------------------------------------------------------------- helpers


@pytest.fixture
def server(studio):
    """(host, port) of a real uvicorn server over ``studio``."""
    with serve_in_thread(create_app(studio, web=False)) as url:
        host, port = url.rsplit("//", 1)[1].split(":")
        yield host, int(port)


def send(conn: http.client.HTTPConnection, method: str, path: str, body=None, headers=None) -> tuple[int, object]:
    """One request on ``conn``: (status, parsed JSON or text)."""
    if isinstance(body, (dict, list)):
        body, headers = json.dumps(body).encode(), {"Content-Type": "application/json", **(headers or {})}
    conn.request(method, path, body=body, headers=headers or {})
    r = conn.getresponse()
    data = r.read()
    try:
        return r.status, json.loads(data)
    except ValueError:
        return r.status, data.decode("utf-8", "replace")


def message(data) -> str:
    """The readable part of an error answer (``detail`` or ``message``), "" if none."""
    if isinstance(data, dict):
        for key in ("message", "detail"):
            if isinstance(data.get(key), str) and data[key].strip():
                return data[key]
    return ""


def status_latencies(host: str, port: int, busy: threading.Thread, every: float = 0.05) -> list[float]:
    """Seconds each GET /api/v1/status took while ``busy`` runs (at least one call)."""
    conn = http.client.HTTPConnection(host, port, timeout=10)
    out = []
    try:
        while True:
            t0 = time.perf_counter()
            code, _ = send(conn, "GET", "/api/v1/status")
            out.append(time.perf_counter() - t0)
            assert code == 200
            if not busy.is_alive():
                return out
            time.sleep(every)
    finally:
        conn.close()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)) & 0xFFFFFFFF)


def text_chunk(key: str, text: str) -> bytes:
    return png_chunk(b"tEXt", key.encode("latin-1") + b"\0" + text.encode("latin-1"))


def ztxt_bomb(key: str, size: int) -> bytes:
    """A zTXt chunk of ``size`` zero bytes, compressed (about 1000:1)."""
    packer = zlib.compressobj(9)
    block = b"\0" * (1 << 20)
    data = b"".join(packer.compress(block) for _ in range(size // len(block))) + packer.flush()
    return png_chunk(b"zTXt", key.encode() + b"\0\0" + data)


def png_file(width: int = 8, height: int = 8, before: tuple[bytes, ...] = (), after: tuple[bytes, ...] = ()) -> bytes:
    """A 1-bit greyscale PNG of zeros, written chunk by chunk: a 13000x13000 one is
    a few kilobytes on disk and 169 MB once a decoder expands it."""
    packer = zlib.compressobj(9)
    row = b"\0" * (1 + (width + 7) // 8)
    pixels = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + b"".join(before) + png_chunk(b"IDAT", pixels) + b"".join(after) + png_chunk(b"IEND", b"")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# ---------------------------------------------------------------- item 1: infotext


def test_the_infotext_field_is_capped_at_the_boundary(client):
    r = client.post("/sdapi/v1/txt2img", json={**SMALL, "infotext": "a," * (MAX_INFOTEXT_CHARS // 2 + 1)})
    assert r.status_code == 422
    assert r.json()["message"].startswith("infotext: String should have at most") and str(MAX_INFOTEXT_CHARS) in r.json()["message"]


def test_the_infotext_is_parsed_off_the_event_loop(server, monkeypatch):
    """A slow parse (here: made slow on purpose) must not stall other requests."""
    real = a1111.parse_infotext

    def slow(text):
        time.sleep(1.5)
        return real(text)

    monkeypatch.setattr(a1111, "parse_infotext", slow)
    host, port = server
    result = {}

    def post():
        conn = http.client.HTTPConnection(host, port, timeout=30)
        result["answer"] = send(conn, "POST", "/sdapi/v1/txt2img", {"infotext": "a cat\nSteps: 1, Sampler: Euler, Size: 64x64"})

    busy = threading.Thread(target=post)
    busy.start()
    latencies = status_latencies(host, port, busy)
    busy.join()
    assert result["answer"][0] == 200, result
    assert len(latencies) >= 5 and max(latencies) < 0.5, latencies


def test_png_text_is_capped_after_decompression(client):
    bomb = png_file(before=(ztxt_bomb("parameters", 64 << 20),))
    assert len(bomb) < 200_000  # 64 MiB of text in a small request
    r = client.post("/api/v1/png-info", json={"image": b64(bomb)})
    assert r.status_code == 400
    assert "'parameters' text is longer than 1 MiB" in r.json()["detail"]
    # a bomb in another chunk is left out; the parameters are still read
    params = "a cat\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 5, Size: 8x8"
    mixed = png_file(before=(ztxt_bomb("comment", 64 << 20), text_chunk("parameters", params)))
    r = client.post("/sdapi/v1/png-info", json={"image": b64(mixed)})
    assert r.status_code == 200 and r.json()["info"] == params and "comment" not in r.json()["items"]


# ---------------------------------------------------------------- item 9: png-info memory

_RSS_PROBE = """
import base64, json, resource, sys
sys.path.insert(0, sys.argv[1])
from fastapi.testclient import TestClient
from test_server_api import FakeEngine
from brushwork.paths import DataHome
from brushwork.server.app import create_app
from brushwork.server.store import JobStore
from brushwork.server.studio import Studio

home = DataHome.resolve(sys.argv[2]); home.create()
(home.checkpoint_dirs[0] / "alpha.safetensors").write_bytes(b"x")
studio = Studio(FakeEngine(home), JobStore(home.root / "db.sqlite3"))
big = base64.b64encode(open(sys.argv[3], "rb").read()).decode()
small = base64.b64encode(open(sys.argv[4], "rb").read()).decode()
out = {}
with TestClient(create_app(studio, web=False), raise_server_exceptions=False) as c:
    for route in ("/api/v1/png-info", "/sdapi/v1/png-info"):
        c.post(route, json={"image": small})  # warm up: imports, first-call costs
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for route in ("/api/v1/png-info", "/sdapi/v1/png-info"):
        r = c.post(route, json={"image": big})
        out[route] = [r.status_code, r.json()]
    out["growth_mb"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
studio.close()
print(json.dumps(out))
"""


def test_png_info_reads_a_huge_canvas_without_decoding_it(tmp_path):
    params = "a lighthouse\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 42, Size: 13000x13000"
    big = png_file(13000, 13000, before=(text_chunk("Title", "before the pixels"),), after=(text_chunk("parameters", params), png_chunk(b"iTXt", b"Note\0\0\0\0\0after the pixels")))
    assert len(big) < 100_000
    (tmp_path / "big.png").write_bytes(big)
    (tmp_path / "small.png").write_bytes(png_file(before=(text_chunk("parameters", params),)))
    run = subprocess.run([sys.executable, "-c", _RSS_PROBE, str(TESTS), str(tmp_path / "home"), str(tmp_path / "big.png"), str(tmp_path / "small.png")], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    print(f"png-info of a 13000x13000 PNG: peak RSS grew {out['growth_mb']:.1f} MB")
    native, compat = out["/api/v1/png-info"], out["/sdapi/v1/png-info"]
    assert native[0] == 200 and native[1]["infotext"] == params and native[1]["parameters"]["Seed"] == "42"
    assert native[1]["items"] == {"Title": "before the pixels", "Note": "after the pixels"}
    assert compat[0] == 200 and compat[1]["info"] == params and compat[1]["parameters"]["Size-1"] == "13000"
    assert out["growth_mb"] < 50


def test_full_image_decodes_run_at_most_two_at_a_time(monkeypatch):
    lock, state = threading.Lock(), {"now": 0, "most": 0}

    class SlowImage:
        def load(self):
            with lock:
                state["now"] += 1
                state["most"] = max(state["most"], state["now"])
            time.sleep(0.1)
            with lock:
                state["now"] -= 1

    monkeypatch.setattr(app_module.Image, "open", lambda fp: SlowImage())
    threads = [threading.Thread(target=app_module.decode_image, args=(b64(png_file()),)) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert state["most"] == 2


# ---------------------------------------------------------------- item 10.1: bodies that are not JSON


@pytest.mark.parametrize(
    "path, body, content_type, status, words",
    [
        ("/api/v1/jobs", b'{"prompt": "x"}', "text/plain", 415, "Content-Type: application/json (the request had Content-Type text/plain)"),
        ("/api/v1/jobs", b"prompt=x", "application/x-www-form-urlencoded", 415, "Content-Type: application/json"),
        ("/api/v1/jobs", b'{"prompt": "x"}', None, 415, "no Content-Type"),
        ("/api/v1/png-info", b"\x89PNG\r\n", "image/png", 415, "Content-Type image/png"),
        ("/sdapi/v1/txt2img", b'{"prompt": "x"}', "text/plain", 415, "Content-Type: application/json"),
        ("/sdapi/v1/options", b"{}", "text/plain", 415, "Content-Type: application/json"),
        ("/api/v1/jobs", b'{"prompt": "\xff\xfe"}', "application/json", 422, "not UTF-8 text"),
        ("/api/v1/jobs", b"[" * 100_000, "application/json", 422, "nests lists/objects too deeply"),
        ("/api/v1/jobs", b'{"prompt": "x",', "application/json", 422, "JSON decode error"),
        ("/sdapi/v1/txt2img", b'{"comments": ' + b'{"a": ' * 100 + b"1" + b"}" * 100 + b"}", "application/json", 422, "more than 32 levels"),
    ],
)
def test_bodies_that_are_not_json_are_4xx_and_the_connection_stays_open(server, path, body, content_type, status, words):
    conn = http.client.HTTPConnection(*server, timeout=10)
    code, data = send(conn, "POST", path, body, {"Content-Type": content_type} if content_type else {})
    assert code == status, data
    assert words in message(data)
    assert send(conn, "GET", "/api/v1/status")[0] == 200  # same connection


def test_a1111_routes_read_json_sent_without_a_content_type(server):
    """AUTOMATIC1111 (an older FastAPI) did; scripts that post ``data=json.dumps(...)`` rely on it."""
    conn = http.client.HTTPConnection(*server, timeout=30)
    code, data = send(conn, "POST", "/sdapi/v1/txt2img", json.dumps({**SMALL, "seed": 3}).encode())
    assert code == 200 and json.loads(data["info"])["all_seeds"] == [3]


def test_an_unexpected_error_is_a_500_that_keeps_the_connection(server, studio, monkeypatch):
    def broken():
        raise RuntimeError("the queue is on fire")

    conn = http.client.HTTPConnection(*server, timeout=10)
    monkeypatch.setattr(studio, "queue", broken)
    code, data = send(conn, "GET", "/api/v1/status")
    assert code == 500 and "RuntimeError: the queue is on fire" in data["detail"] and "keeps running" in data["detail"]
    monkeypatch.undo()
    assert send(conn, "GET", "/api/v1/status")[0] == 200  # same connection


# ---------------------------------------------------------------- item 10.2: values inside an infotext


@pytest.mark.parametrize(
    "infotext, words",
    [
        ("a cat\nSteps: 99999, Sampler: Euler, Size: 64x64", ["infotext: Steps '99999'", "from 1 to 150"]),
        ("a cat\nSteps: 1, Sampler: Euler, Size: 5x5", ["infotext: Size '5x5' (width)", "from 64 to 4096 (rounded down to a multiple of 8)"]),
        # 64x65 is no error on /sdapi any more: it is rounded down like AUTOMATIC1111 (issue 12.5)
        ("a cat\nSteps: 1, Sampler: Euler, Size: 64x5000", ["infotext: Size '64x5000' (height)", "from 64 to 4096"]),
        ("a cat\nSteps: 1, CFG scale: 31, Size: 64x64", ["infotext: CFG scale '31'", "from 0 to 30"]),
        ("a cat\nSteps: 1, CFG scale: inf, Size: 64x64", ["infotext: CFG scale 'inf'", "from 0 to 30"]),
        ("a cat\nSteps: 1, Seed: -7, Size: 64x64", ["infotext: Seed '-7'", "from -1 to"]),
        ("a cat\nSteps: 1, Clip skip: 99, Size: 64x64", ["infotext: Clip skip 99", "from 1 to 12"]),
        ("a cat\nSteps: 1, Sampler: Euler, Seed: abc", ["infotext: Seed 'abc' is not a valid int"]),
    ],
)
def test_out_of_range_values_in_an_infotext_name_the_key_value_and_range(client, infotext, words):
    r = client.post("/sdapi/v1/txt2img", json={"infotext": infotext})
    assert r.status_code == 400, r.text
    for w in words:
        assert w in r.json()["detail"]


# ---------------------------------------------------------------- item 10.3: ids


@pytest.mark.parametrize("path", ["/api/v1/images/99999999999999999999", "/api/v1/images/99999999999999999999/thumb", "/api/v1/images?before=99999999999999999999", "/api/v1/jobs?before=99999999999999999999", "/api/v1/images/-1"])
def test_ids_beyond_what_the_database_holds_are_422(client, path):
    r = client.get(path)
    assert r.status_code == 422 and ("less than or equal to 9223372036854775807" in r.json()["message"] or "greater than or equal to 0" in r.json()["message"])


def test_unknown_job_states_are_named_with_the_known_ones(client):
    r = client.get("/api/v1/jobs?state=done,bogus")
    assert r.status_code == 400 and "unknown job state 'bogus'" in r.json()["detail"] and "queued, running, done" in r.json()["detail"]
    assert client.get("/api/v1/jobs?state=done,failed").status_code == 200


def test_a_last_event_id_that_is_not_plain_digits_is_ignored(server, studio):
    from brushwork.engine import GenerationRequest

    job = studio.wait(studio.submit(GenerationRequest(prompt="x", steps=1)).id, timeout=10)
    for value in ("\u00b2", "-1", "1e9", "9" * 40):  # "²".isdigit() is True, int("²") fails
        conn = http.client.HTTPConnection(*server, timeout=10)
        conn.request("GET", f"/api/v1/jobs/{job.id}/events", headers={"Last-Event-ID": value})
        r = conn.getresponse()
        assert r.status == 200 and b"event: done" in r.read(), value
        conn.close()


def test_not_found_messages_keep_their_quotes(client):
    assert client.get("/api/v1/jobs/nope").json()["detail"] == "no job 'nope'"


# ---------------------------------------------------------------- item 10.4: non-finite numbers


def _strict_json(text: str):
    def refuse(name):
        raise ValueError(f"{name} is not JSON")

    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize(
    "path, body, field",
    [
        ("/sdapi/v1/txt2img", b'{"denoising_strength": NaN}', "denoising_strength"),
        ("/sdapi/v1/txt2img", b'{"cfg_scale": Infinity}', "cfg_scale"),
        ("/sdapi/v1/txt2img", b'{"hr_scale": -Infinity}', "hr_scale"),
        ("/api/v1/jobs", b'{"cfg_scale": Infinity}', "cfg_scale"),
    ],
)
def test_non_finite_numbers_are_refused_at_validation(client, path, body, field):
    r = client.post(path, content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and r.json()["message"].startswith(f"{field}: Input should be a finite number")


def test_txt2img_answers_strict_json_even_when_free_form_fields_hold_nan(client):
    body = b'{"steps": 1, "width": 64, "height": 64, "override_settings": {"x": NaN}, "comments": {"y": [Infinity]}}'
    r = client.post("/sdapi/v1/txt2img", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 200
    data = _strict_json(r.text)
    info = _strict_json(data["info"])
    assert info["steps"] == 1 and data["parameters"]["override_settings"] == {"x": None} and data["parameters"]["comments"] == {"y": [None]}


# ---------------------------------------------------------------- item 10.5: absolute paths


def test_clients_see_paths_relative_to_the_data_home(client, home):  # noqa: F811
    root = str(home.root)
    models = client.get("/sdapi/v1/sd-models").json()
    assert {m["filename"] for m in models} >= {"models/checkpoints/alpha.safetensors", "models/checkpoints/beta.safetensors"}
    assert client.get("/sdapi/v1/loras").json()[0]["path"] == "models/loras/balloon.safetensors"
    r = client.post("/api/v1/jobs", json={"prompt": "a <lora:nothing:1>"})
    assert r.status_code == 400 and "LoRA files go in models/loras." in r.json()["detail"]
    r = client.post("/sdapi/v1/txt2img", json={"prompt": "a <lora:nothing:1>"})
    assert r.status_code == 400 and "models/loras" in r.json()["detail"]
    for path in ("/sdapi/v1/sd-models", "/sdapi/v1/loras", "/api/v1/models", "/api/v1/loras", "/sdapi/v1/options"):
        assert root not in client.get(path).text, path


def test_job_errors_and_warnings_do_not_show_the_data_home(client, studio, home, monkeypatch):  # noqa: F811
    def fail(path=None):
        raise ValueError(f"cannot read {home.root / 'models' / 'vae' / 'x.safetensors'}")

    monkeypatch.setattr(studio.engine, "load", fail)
    job = wait_state(client, client.post("/api/v1/jobs", json={"prompt": "x", "steps": 1}).json()["id"])
    assert job["state"] == "failed" and job["error"] == "cannot read models/vae/x.safetensors"
    with client.stream("GET", f"/api/v1/jobs/{job['id']}/events") as r:
        text = "".join(r.iter_text())
    assert "cannot read models/vae/x.safetensors" in text and str(home.root) not in text
