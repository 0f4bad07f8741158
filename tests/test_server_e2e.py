"""A real ``brushwork serve`` on the tiny checkpoints, over loopback HTTP.

The server runs in a thread (uvicorn on 127.0.0.1, a free port) with the real
engine; clients are ``httpx`` and the ``webuiapi`` package from PyPI, which is
how AUTOMATIC1111 users script their generations.
"""
from __future__ import annotations

import base64
import io
import json
import shutil
import socket
import threading
import time

import httpx
import pytest
from PIL import Image

from brushwork.server import ServeOptions, build, serve_in_thread
from job_wait import wait_job


@pytest.fixture(scope="module")
def server(tiny_home, tmp_path_factory):
    home = tmp_path_factory.mktemp("serve-home")
    shutil.copytree(tiny_home / "models", home / "models")
    app, studio = build(ServeOptions(home=str(home), model="tiny-sd1", device="cpu", preview_every=2))
    with serve_in_thread(app) as url:
        yield url, studio, int(url.rsplit(":", 1)[1])
    studio.close()
    studio.store.close()


@pytest.fixture
def http(server):
    with httpx.Client(base_url=server[0], timeout=60) as c:
        yield c


def switch(http, name):
    r = http.post("/api/v1/models/current?wait=true", json={"name": name})
    assert r.status_code == 202, r.text


def events_of(http, job_id):
    out, kind = [], None
    with http.stream("GET", f"/api/v1/jobs/{job_id}/events") as r:
        for line in r.iter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                out.append((kind, json.loads(line[6:])))
    return out


def test_submit_stream_progress_and_fetch_the_image(http):
    switch(http, "tiny-sd1")
    job = http.post("/api/v1/jobs", json={"prompt": "a red (cube:1.2)", "seed": 42, "steps": 6, "width": 64, "height": 64}).json()
    events = events_of(http, job["id"])
    progress = [d for k, d in events if k == "progress"]
    assert [p["step"] for p in progress] == [1, 2, 3, 4, 5, 6] and all(p["total"] == 6 for p in progress)
    assert [p["step"] for p in progress if "preview" in p] == [2, 4, 6]
    preview = Image.open(io.BytesIO(base64.b64decode(progress[1]["preview"].split(",", 1)[1])))
    assert preview.format == "JPEG" and preview.size[0] >= 8
    done = events[-1][1]
    assert events[-1][0] == "done" and done["state"] == "done"
    img = Image.open(io.BytesIO(http.get(done["images"][0]["url"]).content))
    assert img.size == (64, 64) and "Seed: 42" in img.info["parameters"] and "Model: tiny-sd1" in img.info["parameters"]
    # the same request again gives the same pixels (the seed is the composition)
    again = wait_job(http, http.post("/api/v1/jobs", json={"prompt": "a red (cube:1.2)", "seed": 42, "steps": 6, "width": 64, "height": 64}).json()["id"])
    img2 = Image.open(io.BytesIO(http.get(again["images"][0]["url"]).content))
    assert img2.tobytes() == img.tobytes()


def test_cancel_mid_run_keeps_serving(http):
    switch(http, "tiny-sd1")
    job = http.post("/api/v1/jobs", json={"prompt": "slow", "steps": 150, "width": 128, "height": 128, "batch_count": 3}).json()
    with http.stream("GET", f"/api/v1/jobs/{job['id']}/events") as r:
        for line in r.iter_lines():
            if line.startswith("event: progress"):
                break
    assert http.post(f"/api/v1/jobs/{job['id']}/cancel").status_code == 200
    done = wait_job(http, job["id"])
    assert done["state"] == "cancelled" and len(done["images"]) <= 1 and done["step"] < 450
    ok = wait_job(http, http.post("/api/v1/jobs", json={"prompt": "after", "steps": 2, "width": 64, "height": 64}).json()["id"])
    assert ok["state"] == "done"


def test_two_clients_queued_and_a_model_switch_between_jobs(http, server):
    switch(http, "tiny-sd1")
    a = [http.post("/api/v1/jobs", json={"prompt": f"a{i}", "steps": 3, "width": 64, "height": 64}, headers={"X-Brushwork-Client": "alice"}).json() for i in range(2)]
    r = http.post("/api/v1/models/current", json={"name": "tiny-sdxl"})
    assert r.status_code == 202
    b = http.post("/api/v1/jobs", json={"prompt": "b0", "steps": 3, "width": 64, "height": 64}, headers={"X-Brushwork-Client": "bob"}).json()
    jobs = [wait_job(http, j["id"]) for j in a + [b]]
    assert [j["state"] for j in jobs] == ["done"] * 3
    assert [j["model"] for j in jobs] == ["tiny-sd1", "tiny-sd1", "tiny-sdxl"]
    assert "Model: tiny-sdxl" in jobs[2]["images"][0]["infotext"]
    assert http.get("/api/v1/status").json()["loaded_model"] == "tiny-sdxl"
    switch(http, "tiny-sd1")


def test_a1111_txt2img_progress_and_interrupt(http, server):
    switch(http, "tiny-sd1")
    r = http.post("/sdapi/v1/txt2img", json={"prompt": "a lake", "seed": 9, "steps": 4, "width": 64, "height": 64, "batch_size": 2, "sampler_name": "Euler a", "unknown_field": 1})
    assert r.status_code == 200, r.text
    data = r.json()
    assert isinstance(data["info"], str)
    info = json.loads(data["info"])
    assert info["all_seeds"] == [9, 10] and len(data["images"]) == 2 and info["sd_model_name"] == "tiny-sd1"
    img = Image.open(io.BytesIO(base64.b64decode(data["images"][1])))
    assert img.info["parameters"] == info["infotexts"][1] and "Sampler: Euler a" in img.info["parameters"]
    assert data["parameters"]["steps"] == 4 and data["parameters"]["seed"] == 9
    # errors say what to fix instead of falling back or failing with a 500
    r = http.post("/sdapi/v1/txt2img", json={"sampler_name": "Eulr", "steps": 2, "width": 64, "height": 64})
    assert r.status_code == 400 and "Euler" in r.json()["detail"] and r.json()["error"] == {"type": "BadRequest", "message": r.json()["detail"], "code": 400}
    r = http.post("/sdapi/v1/txt2img", json={"enable_hr": True, "hr_scale": 0.5, "width": 64, "height": 64})
    assert r.status_code == 400 and "hires scale must be from 1" in r.json()["detail"]
    r = http.post("/sdapi/v1/txt2img", json={"steps": "many"})
    assert r.status_code == 422
    r = http.post("/sdapi/v1/txt2img", json={"override_settings": {"sd_model_checkpoint": "nope"}, "steps": 1, "width": 64, "height": 64})
    assert r.status_code == 404 and "No checkpoint called 'nope'" in r.json()["detail"]
    assert http.get("/sdapi/v1/progress").json()["state"]["job_count"] == 0

    # interrupt: the blocked txt2img call returns 200 with partly denoised images
    result = {}

    def call():
        result["r"] = httpx.post(server[0] + "/sdapi/v1/txt2img", json={"prompt": "long", "steps": 150, "width": 128, "height": 128, "n_iter": 3, "seed": 1}, timeout=120)

    t = threading.Thread(target=call)
    t.start()
    seen = None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        p = http.get("/sdapi/v1/progress").json()
        if p["state"]["sampling_step"] >= 2:
            seen = p
            break
        time.sleep(0.02)
    assert seen is not None and seen["state"]["job_count"] == 3 and 0 < seen["progress"] < 0.5 and seen["eta_relative"] > 0
    assert seen["current_image"] is not None
    assert http.post("/sdapi/v1/interrupt").json() == {}
    t.join(60)
    r = result["r"]
    assert r.status_code == 200
    info = json.loads(r.json()["info"])
    assert len(r.json()["images"]) == 1 and info["interrupted"] is True


def test_a1111_listings_options_and_png_info(http, server):
    models = http.get("/sdapi/v1/sd-models").json()
    assert {m["model_name"] for m in models} >= {"tiny-sd1", "tiny-sd2", "tiny-sdxl"}
    assert all(set(m) == {"title", "model_name", "hash", "sha256", "filename", "config"} for m in models)
    samplers = http.get("/sdapi/v1/samplers").json()
    assert {"name": "DPM++ 2M", "aliases": ["k_dpmpp_2m"], "options": {"scheduler": "karras"}} in samplers
    assert {s["name"] for s in http.get("/sdapi/v1/schedulers").json()} >= {"karras", "exponential", "uniform"}
    loras = http.get("/sdapi/v1/loras").json()
    assert [l["name"] for l in loras] == ["balloon"]  # the demo LoRA ships with the package
    assert loras[0]["alias"] == "balloon" and loras[0]["metadata"]["ss_base_model_version"] == "sd_v1"
    opts = http.get("/sdapi/v1/options").json()
    assert opts["sd_model_checkpoint"].startswith("tiny-sd1.safetensors [") and opts["CLIP_stop_at_last_layers"] == 1
    # unknown settings are ignored with a log line, as AUTOMATIC1111 clients expect (issue 12.1)
    r = http.post("/sdapi/v1/options", json={"not_a_setting": 1})
    assert r.status_code == 200 and r.json() is None and r.headers["x-brushwork-ignored-settings"] == "not_a_setting"
    r = http.post("/sdapi/v1/options", json={"sd_model_checkpoint": "tiny-sd9"})
    assert r.status_code == 404 and "tiny-sd1" in r.json()["detail"]
    mem = http.get("/sdapi/v1/memory").json()
    assert mem["ram"]["total"] > mem["ram"]["free"] > 0
    job = wait_job(http, http.post("/api/v1/jobs", json={"prompt": "info me", "seed": 3, "steps": 2, "width": 64, "height": 64}).json()["id"])
    png = http.get(job["images"][0]["url"]).content
    r = http.post("/sdapi/v1/png-info", json={"image": "data:image/png;base64," + base64.b64encode(png).decode()})
    assert r.json()["info"].startswith("info me") and r.json()["parameters"]["Seed"] == "3"
    r = http.post("/sdapi/v1/png-info", json={"image": base64.b64encode(b"GIF89a nonsense").decode()})
    assert r.status_code == 400 and r.json()["error"]["type"] == "BadRequest"


def test_the_webuiapi_client_from_pypi_works(server):
    import webuiapi

    _, studio, port = server
    api = webuiapi.WebUIApi(host="127.0.0.1", port=port, sampler="Euler a", steps=3)
    titles = api.util_get_model_names()
    assert any(t.startswith("tiny-sd1.safetensors") for t in titles)
    assert "DPM++ 2M" in api.util_get_sampler_names()
    api.util_set_model("tiny-sd2")
    assert api.util_get_current_model().startswith("tiny-sd2.safetensors")
    result = api.txt2img(prompt="a tiny lighthouse", negative_prompt="blurry", seed=123, width=64, height=64, cfg_scale=5)
    assert result.image.size == (64, 64)
    assert result.info["all_seeds"] == [123] and result.info["sd_model_name"] == "tiny-sd2"
    assert "Model: tiny-sd2" in result.image.info["parameters"] and "Negative prompt: blurry" in result.image.info["parameters"]
    assert api.get_progress()["state"]["job_count"] == 0
    # webuiapi's fuzzy matching can pick a neighbour ("tiny-sd1" ~ "tiny-sd2 [..1..]"); an exact title is exact
    api.util_set_model(next(t for t in api.util_get_model_names() if t.startswith("tiny-sd1.")))
    assert studio.engine.model.name == "tiny-sd1"


def test_stopping_the_server_process_with_jobs_queued_loses_none(tiny_home, tmp_path):
    """A real `brushwork serve` process: SIGTERM while one job runs and three wait; after
    a restart the waiting ones run and the interrupted one is reported failed."""
    import signal
    import subprocess
    import sys

    home = tmp_path / "home"
    shutil.copytree(tiny_home / "models", home / "models")

    def start():
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        proc = subprocess.Popen([sys.executable, "-m", "brushwork.cli", "serve", "--home", str(home), "--model", "tiny-sd1", "--device", "cpu", "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/api/v1/status", timeout=1).status_code == 200:
                    return proc, f"http://127.0.0.1:{port}"
            except httpx.HTTPError:
                time.sleep(0.2)
        proc.kill()
        raise AssertionError("brushwork serve did not start: " + (proc.stdout.read() if proc.stdout else ""))

    proc, url = start()
    with httpx.Client(base_url=url, timeout=30) as c:
        running = c.post("/api/v1/jobs", json={"prompt": "long", "steps": 150, "width": 128, "height": 128, "batch_count": 20}).json()["id"]
        waiting = [c.post("/api/v1/jobs", json={"prompt": f"w{i}", "steps": 2, "width": 64, "height": 64, "seed": i}).json()["id"] for i in range(3)]
        deadline = time.monotonic() + 30
        while c.get(f"/api/v1/jobs/{running}").json()["state"] != "running" and time.monotonic() < deadline:
            time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0

    proc, url = start()
    try:
        with httpx.Client(base_url=url, timeout=30) as c:
            for job_id in waiting:
                job = wait_job(c, job_id)
                assert job["state"] == "done" and len(job["images"]) == 1
            stopped = c.get(f"/api/v1/jobs/{running}").json()
            assert stopped["state"] == "failed" and "submit it again" in stopped["error"]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def test_many_listeners_hold_no_threads(http, server):
    """60 event streams plus 45 blocked AUTOMATIC1111 txt2img calls (more than the 40
    worker threads FastAPI has for plain endpoints) and the server still answers."""
    switch(http, "tiny-sd1")
    job = http.post("/api/v1/jobs", json={"prompt": "watched", "steps": 150, "width": 128, "height": 128, "batch_count": 10}).json()
    ended, finished_calls = [], []

    def listen():
        with httpx.stream("GET", f"{server[0]}/api/v1/jobs/{job['id']}/events", timeout=120) as r:
            for line in r.iter_lines():
                if line == "event: done":
                    ended.append(1)
                    return

    def a1111():
        r = httpx.post(server[0] + "/sdapi/v1/txt2img", json={"prompt": "queued", "steps": 1, "width": 64, "height": 64}, timeout=120)
        finished_calls.append(r.status_code)

    threads = [threading.Thread(target=listen) for _ in range(60)] + [threading.Thread(target=a1111) for _ in range(45)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while len(server[1].queue()) < 46 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(server[1].queue()) == 46  # the watched job and 45 waiting txt2img calls
    status = http.get("/api/v1/status", timeout=10)
    assert status.status_code == 200 and status.json()["running"] == job["id"]
    assert http.get("/sdapi/v1/progress", timeout=10).json()["state"]["job_count"] == 10
    http.post(f"/api/v1/jobs/{job['id']}/cancel")
    for t in threads:
        t.join(120)
    assert len(ended) == 60 and finished_calls == [200] * 45
