"""HTTP routing and validation with a fake engine (fast: no networks run).

The fake engine makes flat-colour images at the requested size, reports one
progress call per step (sleeping ``delay`` each) and obeys interrupt/skip the way
the real engine does; the studio, store and routes are the real ones.
"""
from __future__ import annotations

import base64
import io
import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from brushwork.engine import GeneratedImage, GenerationRequest, Progress, RequestError
from brushwork.infotext import GenerationParams, format_infotext
from brushwork.paths import DataHome
from brushwork.server.app import create_app
from brushwork.server.security import BindError, Credentials, check_bind
from brushwork.server.store import JobStore
from brushwork.server.studio import FairQueue, Studio
from job_wait import ENDED, wait_job


@dataclass
class FakeModel:
    path: Path
    name: str
    short_hash: str = "0123456789"
    spec: object = None


@dataclass
class FakePlacement:
    label: str = "fake (float32)"


@dataclass
class FakeEngine:
    home: DataHome
    delay: float = 0.0
    model: FakeModel | None = None
    placement: FakePlacement = field(default_factory=FakePlacement)
    loads: list[str] = field(default_factory=list)
    runs: list[tuple[str, str]] = field(default_factory=list)  # (model, prompt) in run order
    seen: list[GenerationRequest] = field(default_factory=list)  # every request run, as the engine got it
    gate: threading.Event | None = None  # when set, jobs wait for it before starting

    def load(self, path=None):
        path = Path(path) if path else sorted((self.home.root / "models" / "checkpoints").glob("*.safetensors"))[0]
        if "broken" in path.name:
            raise RequestError(f"{path.name} is not a checkpoint")
        self.model = FakeModel(path, path.stem)
        self.loads.append(path.stem)
        return self.model

    def txt2img(self, req: GenerationRequest, progress=None, control=None):
        return [img for batch in self.batches(req, progress, control) for img in batch]

    def batches(self, req: GenerationRequest, progress=None, control=None):
        """Like Engine.batches: each batch's images as soon as it is done."""
        if self.gate is not None:
            self.gate.wait(10)
        if req.cfg_scale == 29.5:
            raise RequestError("512x512 with batch size 16 needs about 99 GiB of working memory")
        steps = req.steps or 4
        w, h = req.width or 64, req.height or 64
        self.runs.append((self.model.name, req.prompt))
        self.seen.append(req)
        for b in range(req.batch_count):
            complete = True
            for i in range(steps):
                if progress:
                    progress(Progress(b * steps + i + 1, steps * req.batch_count, 0.01 * (i + 1), torch.zeros(1, 4, h // 8, w // 8)))
                time.sleep(self.delay)
                if control and (control.interrupted or control.skipped):
                    complete = False
                    control.skipped = False
                    break
            if control and control.cancelled:
                return
            batch = []
            for k in range(req.batch_size):
                seed = req.seed + b * req.batch_size + k
                params = GenerationParams(prompt=req.prompt, negative_prompt=req.negative_prompt, steps=steps, sampler="Euler", schedule="Automatic", cfg_scale=float(req.cfg_scale or 7), seed=seed, width=w, height=h, model_name=self.model.name, model_hash=self.model.short_hash)
                batch.append(GeneratedImage(Image.new("RGB", (w, h), (seed % 256, 0, 0)), seed, params, format_infotext(params), complete))
            yield batch
            if control and control.interrupted:
                return

    def preview(self, latents, index=0):
        return Image.new("RGB", (32, 32), (0, 128, 0))


@pytest.fixture
def home(tmp_path):
    h = DataHome(tmp_path / "home")
    h.create()
    for name in ("alpha", "beta"):
        (h.checkpoint_dirs[0] / f"{name}.safetensors").write_bytes(b"not read by the fake engine")
    (h.lora_dirs[0] / "balloon.safetensors").write_bytes(b"x")
    return h


@pytest.fixture
def studio(home):
    s = Studio(FakeEngine(home), JobStore(home.root / "db.sqlite3"), preview_every=2)
    yield s
    s.close()
    s.store.close()


@pytest.fixture
def client(studio):
    with TestClient(create_app(studio, web=False), raise_server_exceptions=False) as c:
        yield c


def wait_state(client, job_id, states=ENDED, timeout=10.0):
    return wait_job(client, job_id, timeout, states)


# ---------------------------------------------------------------- native API


def test_submit_returns_at_once_then_the_job_finishes_with_its_images(client, studio):
    studio.engine.delay = 0.01
    r = client.post("/api/v1/jobs", json={"prompt": "a lake", "seed": 7, "steps": 3, "batch_size": 2, "width": 64, "height": 64})
    assert r.status_code == 202
    job = r.json()
    assert job["state"] in ("queued", "running") and job["request"]["seed"] == 7 and job["total"] == 3
    done = wait_state(client, job["id"])
    assert done["state"] == "done" and [i["seed"] for i in done["images"]] == [7, 8]
    png = client.get(done["images"][0]["url"])
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    img = Image.open(io.BytesIO(png.content))
    assert img.size == (64, 64) and img.getpixel((0, 0)) == (7, 0, 0)
    assert "Seed: 7" in img.info["parameters"]
    # recorded: history lists it, newest first
    listed = client.get("/api/v1/images?limit=5").json()
    assert [i["seed"] for i in listed] == [8, 7]


def test_random_seed_is_fixed_at_submission(client):
    job = client.post("/api/v1/jobs", json={"prompt": "x", "steps": 1}).json()
    assert 0 <= job["request"]["seed"] < 2**32
    done = wait_state(client, job["id"])
    assert done["images"][0]["seed"] == job["request"]["seed"]


@pytest.mark.parametrize(
    "body, field, words",
    [
        ({"steps": "abc"}, "steps", "valid integer"),
        ({"steps": 0}, "steps", "steps must be a whole number from 1 to 150; got 0."),
        ({"steps": 151}, "steps", "from 1 to 150; got 151."),
        ({"width": 500}, "width", "width must be a multiple of 8 (the VAE works on 8x8 pixel blocks); got 500. Try 496 or 504."),
        ({"width": 8192}, "width", "width must be between 64 and 4096 pixels; got 8192."),
        ({"cfg_scale": -1}, "cfg_scale", "CFG scale must be between 0 and 30; got -1."),
        ({"seed": 2**40}, "seed", "seed must be -1 (random) or between 0 and 4294967295"),
        ({"batch_size": 64}, "batch_size", "batch size must be from 1 to 16; got 64."),
        ({"prompt": 5}, "prompt", "valid string"),
        ({"stpes": 20}, "stpes", "Extra inputs are not permitted"),
    ],
)
def test_wrong_types_and_out_of_range_values_are_422_with_a_readable_message(client, body, field, words):
    r = client.post("/api/v1/jobs", json=body)
    assert r.status_code == 422
    data = r.json()
    assert words in data["message"] and words in data["detail"][0]["msg"]  # range errors in the engine's (and CLI's) words
    assert data["detail"][0]["loc"][-1] == field


def test_malformed_json_is_422_and_the_server_keeps_serving(client):
    r = client.post("/api/v1/jobs", content=b'{"prompt": "x",', headers={"content-type": "application/json"})
    assert r.status_code == 422 and "JSON" in r.json()["message"]
    assert client.get("/api/v1/status").status_code == 200


@pytest.mark.parametrize(
    "body, status, words",
    [
        ({"sampler": "Eulr"}, 400, "Euler"),
        ({"schedule": "karas"}, 400, "Karras"),
        ({"prompt": "a <lora:baloon:1>"}, 400, "Did you mean balloon"),
        ({"prompt": "a <lora:balloon:abc>"}, 400, "not a number"),
        ({"model": "gamma"}, 404, "No checkpoint called 'gamma'"),
        ({"model": "../../etc/passwd"}, 404, "No checkpoint called"),
        ({"model": "/etc/hosts"}, 404, "No checkpoint called"),
    ],
)
def test_unknown_names_are_4xx_that_say_what_to_fix(client, body, status, words):
    r = client.post("/api/v1/jobs", json={"prompt": "x", **body})
    assert r.status_code == status, r.text
    assert words in r.json()["detail"]


def test_paths_never_leave_the_data_home(client, studio, tmp_path):
    assert client.get("/api/v1/images/..%2F..%2Fetc%2Fpasswd").status_code in (404, 422)
    assert client.get("/api/v1/images/999").status_code == 404
    # even a tampered database row cannot point outside the home
    job = wait_state(client, client.post("/api/v1/jobs", json={"prompt": "x", "steps": 1, "seed": 1}).json()["id"])
    studio.store._db.execute("UPDATE images SET path = ? WHERE id = ?", ("../../outside.png", job["images"][0]["id"]))
    (tmp_path / "outside.png").write_bytes(b"secret")
    r = client.get(job["images"][0]["url"])
    assert r.status_code == 404 and "outside the data home" in r.json()["detail"]
    assert client.get("/static/../pyproject.toml").status_code == 404


def test_a_failed_job_reports_why_and_other_jobs_are_unaffected(client):
    bad = client.post("/api/v1/jobs", json={"prompt": "x", "cfg_scale": 29.5, "steps": 1}).json()
    good = client.post("/api/v1/jobs", json={"prompt": "y", "steps": 1}).json()
    bad, good = wait_state(client, bad["id"]), wait_state(client, good["id"])
    assert bad["state"] == "failed" and bad["error_kind"] == "request" and "GiB" in bad["error"]
    assert good["state"] == "done" and len(good["images"]) == 1


def test_cancel_a_queued_job_and_a_running_one(client, studio):
    studio.engine.delay = 0.05
    running = client.post("/api/v1/jobs", json={"prompt": "long", "steps": 100}).json()
    queued = client.post("/api/v1/jobs", json={"prompt": "next", "steps": 2}).json()
    wait_state(client, running["id"], states=("running",))
    c = client.post(f"/api/v1/jobs/{queued['id']}/cancel")
    assert c.status_code == 200 and c.json()["state"] == "cancelled"
    client.post(f"/api/v1/jobs/{running['id']}/cancel")
    done = wait_state(client, running["id"])
    assert done["state"] == "cancelled" and done["step"] < 100
    assert client.post(f"/api/v1/jobs/{running['id']}/cancel").status_code == 409
    assert client.post("/api/v1/jobs/nope/cancel").status_code == 404
    assert [p for _, p in studio.engine.runs] == ["long"]


def test_events_stream_in_order_with_previews(client, studio):
    studio.engine.delay = 0.005
    job = client.post("/api/v1/jobs", json={"prompt": "x", "steps": 6, "seed": 3}).json()
    events = []
    with client.stream("GET", f"/api/v1/jobs/{job['id']}/events") as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        kind = None
        for line in r.iter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                events.append((kind, json.loads(line[6:])))
    kinds = [k for k, _ in events]
    assert kinds[0] == "state" and kinds[-1] == "done" and "image" in kinds
    steps = [d["step"] for k, d in events if k == "progress"]
    assert steps == [1, 2, 3, 4, 5, 6]
    previews = [d["step"] for k, d in events if k == "progress" and "preview" in d]
    assert previews == [2, 4, 6]
    first = next(d for k, d in events if k == "progress" and "preview" in d)
    assert first["preview"].startswith("data:image/jpeg;base64,")
    assert events[-1][1]["state"] == "done" and events[-1][1]["images"][0]["seed"] == 3
    # a late subscriber still learns the outcome
    with client.stream("GET", f"/api/v1/jobs/{job['id']}/events") as r:
        text = "".join(r.iter_text())
    assert "event: done" in text


def test_fair_queue_alternates_between_clients():
    q = FairQueue()
    for i in range(3):
        q.push("a", f"a{i}")
    q.push("b", "b0")
    q.push("b", "b1")
    q.push("c", "load", priority=True)
    assert q.order() == ["load", "a0", "b0", "a1", "b1", "a2"]
    assert [q.pop() for _ in range(6)] == ["load", "a0", "b0", "a1", "b1", "a2"]
    assert q.pop() is None


def test_two_clients_share_the_worker_fairly(client, studio):
    gate = studio.engine.gate = threading.Event()
    ids = [client.post("/api/v1/jobs", json={"prompt": f"a{i}", "steps": 1}, headers={"X-Brushwork-Client": "alice"}).json()["id"] for i in range(3)]
    ids += [client.post("/api/v1/jobs", json={"prompt": f"b{i}", "steps": 1}, headers={"X-Brushwork-Client": "bob"}).json()["id"] for i in range(2)]
    gate.set()
    for i in ids:
        wait_state(client, i)
    # a0 was already running when bob arrived; then the turns alternate
    assert [p for _, p in studio.engine.runs] == ["a0", "a1", "b0", "a2", "b1"]


def test_model_switch_runs_between_jobs_and_each_job_keeps_its_model(client, studio):
    studio.engine.delay = 0.02
    first = client.post("/api/v1/jobs", json={"prompt": "on alpha", "steps": 5}).json()
    assert first["model"] == "alpha"
    switch = client.post("/api/v1/models/current", json={"name": "beta.safetensors"})
    assert switch.status_code == 202 and switch.json()["kind"] == "load"
    second = client.post("/api/v1/jobs", json={"prompt": "on beta", "steps": 1}).json()
    assert second["model"] == "beta"
    wait_state(client, first["id"]), wait_state(client, second["id"])
    assert studio.engine.runs == [("alpha", "on alpha"), ("beta", "on beta")]
    assert [m["name"] for m in client.get("/api/v1/models").json() if m["current"]] == ["beta"]
    assert client.post("/api/v1/models/current", json={"name": "gamma"}).status_code == 404


def test_form_options_give_ranges_defaults_and_presets(client):
    o = client.get("/api/v1/options").json()
    assert o["ranges"]["steps"] == {"min": 1, "max": 150, "step": 1, "hint": o["ranges"]["steps"]["hint"]}
    assert "DPM++ 2M" in o["samplers"] and "Karras" in o["schedules"]
    assert {"width": 512, "height": 512} in o["size_presets"]
    loras = client.get("/api/v1/loras").json()
    assert loras[0]["name"] == "balloon" and loras[0]["insert"] == "<lora:balloon:1>"


def test_png_info_reads_parameters_and_refuses_non_images(client):
    job = wait_state(client, client.post("/api/v1/jobs", json={"prompt": "a lake", "steps": 2, "seed": 11}).json()["id"])
    png = client.get(job["images"][0]["url"]).content
    r = client.post("/api/v1/png-info", json={"image": base64.b64encode(png).decode()})
    assert r.status_code == 200 and r.json()["parameters"]["Seed"] == "11" and r.json()["parameters"]["Prompt"] == "a lake"
    r = client.post("/api/v1/png-info", json={"image": base64.b64encode(b"hello").decode()})
    assert r.status_code == 400 and "not a readable" in r.json()["detail"]
    r = client.post("/api/v1/png-info", json={"image": "%%%"})
    assert r.status_code == 400 and "base64" in r.json()["detail"]


# ---------------------------------------------------------------- safety


def test_oversized_bodies_are_refused_before_reading(studio):
    app = create_app(studio, max_body=1000, web=False)
    with TestClient(app) as c:
        r = c.post("/api/v1/png-info", json={"image": "A" * 5000})
        assert r.status_code == 413 and "limit" in r.json()["detail"]
        assert c.get("/api/v1/status").status_code == 200


def test_credentials_protect_every_route(studio):
    creds = Credentials.parse("ann:s3cret", "t" * 20)
    with TestClient(create_app(studio, creds, web=False)) as c:
        for path in ("/api/v1/status", "/sdapi/v1/loras", "/sdapi/v1/sd-models", "/docs"):
            r = c.get(path)
            assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Basic")
        assert c.get("/api/v1/status", auth=("ann", "wrong")).status_code == 401
        assert c.get("/api/v1/status", auth=("ann", "s3cret")).status_code == 200
        assert c.get("/api/v1/status", headers={"Authorization": "Bearer " + "t" * 20}).status_code == 200
        assert c.get("/api/v1/status", headers={"Authorization": "Bearer nope"}).status_code == 401


def test_listening_beyond_loopback_needs_credentials_or_insecure():
    check_bind("127.0.0.1", Credentials(), False)
    check_bind("::1", Credentials(), False)
    with pytest.raises(BindError, match="--auth user:password"):
        check_bind("0.0.0.0", Credentials(), False)
    check_bind("0.0.0.0", Credentials.parse("a:b", None), False)
    check_bind("0.0.0.0", Credentials(), True)
    with pytest.raises(BindError, match="user:password"):
        Credentials.parse("nocolon", None)
    with pytest.raises(BindError, match="16 characters"):
        Credentials.parse(None, "short")


def test_cors_is_off_unless_configured(studio):
    with TestClient(create_app(studio, web=False)) as c:
        r = c.get("/api/v1/status", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in r.headers
    with TestClient(create_app(studio, cors_origins=["https://mine.example"], web=False)) as c:
        r = c.get("/api/v1/status", headers={"Origin": "https://mine.example"})
        assert r.headers["access-control-allow-origin"] == "https://mine.example"


# ---------------------------------------------------------------- restart


def test_restart_resumes_queued_jobs_and_fails_the_interrupted_one(home):
    engine = FakeEngine(home, delay=0.05)
    store = JobStore(home.root / "db.sqlite3")
    studio = Studio(engine, store)
    running = studio.submit(GenerationRequest(prompt="long", steps=200))
    queued = [studio.submit(GenerationRequest(prompt=f"q{i}", steps=1)) for i in range(3)]
    deadline = time.monotonic() + 5
    while store.job(running.id).state != "running" and time.monotonic() < deadline:
        time.sleep(0.01)
    studio.close()
    store.close()
    assert JobStore(home.root / "db.sqlite3").job(queued[0].id).state == "queued"

    engine2 = FakeEngine(home)
    store2 = JobStore(home.root / "db.sqlite3")
    studio2 = Studio(engine2, store2)
    try:
        for q in queued:
            studio2.wait(q.id, timeout=10)
        states = {j.id: j.state for j in store2.jobs(10)}
        assert states[running.id] == "failed"
        assert "server" in store2.job(running.id).error and "submit it again" in store2.job(running.id).error
        assert all(states[q.id] == "done" for q in queued)
        assert [p for _, p in engine2.runs] == ["q0", "q1", "q2"]
        assert all(len(store2.images_of(q.id)) == 1 for q in queued)
    finally:
        studio2.close()
        store2.close()


def test_serve_refuses_an_open_address_without_a_password(tmp_path, capsys):
    from brushwork.cli import main

    assert main(["serve", "--host", "0.0.0.0", "--home", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "refusing to listen on 0.0.0.0" in err and "--auth user:password" in err
    assert main(["serve", "--port", "70000", "--home", str(tmp_path)]) == 2
    assert "--port must be from 1 to 65535" in capsys.readouterr().err
