"""The Models page's routes on a real server (tiny checkpoints, real engine):
installed models of every kind, removal to the trash, a model's saved defaults
(winning over metadata and family, applied to jobs and /options, surviving a restart),
and pulls from a real local server speaking civitai's and Hugging Face's protocols."""
from __future__ import annotations

import shutil
import time

import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import save_file


@pytest.fixture
def served(tiny_home, tmp_path):
    from brushwork.server import ServeOptions, build

    home = tmp_path / "home"
    shutil.copytree(tiny_home / "models", home / "models")
    made = []

    def start():
        app, studio = build(ServeOptions(home=str(home), model="tiny-sd1", device="cpu"))
        made.append(studio)
        return TestClient(app, headers={"host": "127.0.0.1"}), studio

    yield home, start
    for studio in made:
        studio.close()
        studio.store.close()


def tiny_lora(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(4, 2), "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(2, 4)}, str(path))
    return path


def test_installed_lists_every_kind_and_remove_goes_to_the_trash(served):
    home, start = served
    lora = tiny_lora(home / "models" / "loras" / "ink.safetensors")
    lora.with_name("ink.preview.png").write_bytes(b"\x89PNG")
    client, studio = start()
    data = client.get("/api/v1/models/installed").json()
    rows = {(m["kind"], m["name"]): m for m in data["models"]}
    ck = rows[("checkpoint", "tiny-sd1")]
    assert ck["current"] is True and ck["where"] == "own" and ck["removable"] and ck["size"] > 0 and ck["path"] == "models/checkpoints/tiny-sd1.safetensors"
    assert rows[("checkpoint", "demo")]["where"] == "built-in" and not rows[("checkpoint", "demo")]["removable"]
    assert rows[("lora", "ink")]["removable"] and data["trash"] == "trash" and data["folders"]["lora"] == "models/loras"
    # removal asks for confirmation, refuses the model in use, then moves file and sidecar
    r = client.post("/api/v1/models/remove", json={"kind": "lora", "name": "ink"})
    assert r.status_code == 400 and "confirm" in r.json()["detail"] and lora.exists()
    r = client.post("/api/v1/models/remove", json={"kind": "checkpoint", "name": "tiny-sd1", "confirm": True})
    assert r.status_code == 409 and "in use" in r.json()["detail"]
    r = client.post("/api/v1/models/remove", json={"kind": "checkpoint", "name": "demo", "confirm": True})
    assert r.status_code == 409 and "built into" in r.json()["detail"]
    r = client.post("/api/v1/models/remove", json={"kind": "lora", "name": "ink", "confirm": True})
    assert r.status_code == 200, r.text
    moved = r.json()["moved"]
    assert len(moved) == 2 and all(m.startswith("trash/") and "/lora/" in m for m in moved)
    assert not lora.exists() and not lora.with_name("ink.preview.png").exists()
    assert all((home / m).is_file() for m in moved)
    assert ("lora", "ink") not in {(m["kind"], m["name"]) for m in client.get("/api/v1/models/installed").json()["models"]}
    r = client.post("/api/v1/models/remove", json={"kind": "lora", "name": "ink", "confirm": True})
    assert r.status_code == 404 and "no lora called" in r.json()["detail"]


def test_saved_defaults_win_apply_to_jobs_and_survive_a_restart(served):
    home, start = served
    client, studio = start()
    before = client.get("/api/v1/models/defaults", params={"model": "tiny-sd1"}).json()
    assert before["saved"] == {} and set(before["sources"].values()) <= {"family", "metadata"}
    family_steps = before["values"]["steps"]
    r = client.put("/api/v1/models/defaults", json={"model": "tiny-sd1", "steps": 3, "cfg_scale": 4.5, "sampler": "Euler a", "width": 72, "height": 64, "clip_skip": 2})
    assert r.status_code == 200, r.text
    view = r.json()
    # a sampler saved without a schedule keeps its own automatic one
    assert view["saved"] == {"steps": 3, "cfg_scale": 4.5, "sampler": "Euler a", "schedule": "Automatic", "width": 72, "height": 64, "clip_skip": 2}
    assert view["sources"]["steps"] == "saved" and view["sources"]["cfg_scale"] == "saved"
    opts = client.get("/api/v1/options").json()
    assert (opts["defaults"]["steps"], opts["defaults"]["cfg_scale"], opts["defaults"]["sampler"], opts["defaults"]["width"], opts["defaults"]["clip_skip"]) == (3, 4.5, "Euler a", 72, 2)
    assert opts["default_sources"]["steps"] == "saved" and opts["native_size"]["width"] == before["values"]["width"]  # the native size stays the checkpoint's
    # a job that leaves them unset runs with them; a job's own values still win
    job = client.post("/api/v1/jobs", json={"prompt": "a cat", "seed": 1}).json()
    done = studio.wait(job["id"], timeout=120)
    assert done.state == "done", done.error
    image = client.get(f"/api/v1/jobs/{job['id']}").json()["images"][0]
    assert (image["width"], image["height"]) == (72, 64)
    assert "Steps: 3," in image["infotext"] and "Sampler: Euler a," in image["infotext"] and "CFG scale: 4.5," in image["infotext"] and "Clip skip: 2" in image["infotext"]
    job = client.post("/api/v1/jobs", json={"prompt": "a cat", "seed": 1, "steps": 2, "width": 64}).json()
    image = (studio.wait(job["id"], timeout=120), client.get(f"/api/v1/jobs/{job['id']}").json()["images"][0])[1]
    assert "Steps: 2," in image["infotext"] and image["width"] == 64
    # bad values are refused with the field named; null removes one field
    r = client.put("/api/v1/models/defaults", json={"model": "tiny-sd1", "sampler": "Eular"})
    assert r.status_code == 400 and "Eular" in r.json()["detail"]
    r = client.put("/api/v1/models/defaults", json={"model": "tiny-sd1", "clip_skip": None})
    assert "clip_skip" not in r.json()["saved"] and r.json()["saved"]["steps"] == 3
    # the installed list shows them; a restart keeps them
    rows = {m["name"]: m for m in client.get("/api/v1/models/installed", params={"kind": "checkpoint"}).json()["models"]}
    assert rows["tiny-sd1"]["saved_defaults"]["steps"] == 3 and rows["tiny-sd2"]["saved_defaults"] == {}
    studio.close()
    studio.store.close()
    client2, studio2 = start()
    again = client2.get("/api/v1/models/defaults", params={"model": "tiny-sd1"}).json()
    assert again["saved"]["steps"] == 3 and client2.get("/api/v1/options").json()["defaults"]["steps"] == 3
    cleared = client2.delete("/api/v1/models/defaults", params={"model": "tiny-sd1"}).json()
    assert cleared["saved"] == {} and cleared["values"]["steps"] == family_steps
    r = client2.get("/api/v1/models/defaults", params={"model": "nope"})
    assert r.status_code == 404 and "tiny-sd1" in r.json()["detail"]


def test_pull_over_http_with_events_a_token_message_and_no_token_shown(served, monkeypatch):
    import json as _json

    from fake_model_servers import FakeHF, HFFile, HFRepo, tiny_lora as lora_bytes

    home, start = served
    data = lora_bytes(seed=3)
    with FakeHF() as hf:
        hf.add("ann/ink-lora", HFRepo({"ink.safetensors": HFFile(data)}, gated=True, granted=("hf_good",)))
        monkeypatch.setenv("HF_ENDPOINT", hf.url)
        monkeypatch.delenv("HF_TOKEN", raising=False)
        client, studio = start()
        r = client.post("/api/v1/models/pull", json={"source": "no such thing"})
        assert r.status_code == 400 and r.json()["field"] == "source" and "hf://" in r.json()["detail"]
        # gated without a token: fails, saying which token and where to get one
        d = client.post("/api/v1/models/pull", json={"source": "hf://ann/ink-lora/ink.safetensors"}).json()
        failed = studio.downloads.wait(d["id"], timeout=30).view()
        assert failed["state"] == "failed" and failed["error_kind"] == "token" and "HF_TOKEN" in failed["error"]
        # with the token for this pull: done, into models/loras, the token nowhere in what is shown
        d = client.post("/api/v1/models/pull", json={"source": "hf://ann/ink-lora/ink.safetensors", "token": "hf_good"}).json()
        assert d["state"] in ("queued", "running")
        with client.stream("GET", f"/api/v1/downloads/{d['id']}/events") as s:
            events = [line for line in s.iter_lines() if line.startswith("event: ")]
        assert events[0] == "event: state" and events[-1] == "event: done"
        done = client.get(f"/api/v1/downloads/{d['id']}").json()
        assert done["state"] == "done" and done["path"] == "models/loras/ink.safetensors" and done["model_kind"] == "lora" and done["name"] == "ink"
        assert (home / "models" / "loras" / "ink.safetensors").read_bytes() == data
        shown = _json.dumps(client.get("/api/v1/downloads").json())
        assert "hf_good" not in shown
        assert any(s.headers.get("authorization") == "Bearer hf_good" for s in hf.requests(path_start="/ann"))
        assert all("authorization" not in s.headers for s in hf.cdn.requests())  # never sent on to the CDN
        # the LoRA list has it now
        assert "ink" in [x["name"] for x in client.get("/api/v1/loras").json()]
