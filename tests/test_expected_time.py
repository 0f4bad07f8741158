"""Issue #13 item 6: before a long job the CLI says how long it will take, and the
studio shows the estimate next to Generate; both from the device's measured speed."""
import shutil

from fastapi.testclient import TestClient

from brushwork import budget
from brushwork.cli import main
from brushwork.engine import Engine, GenerationRequest


def test_cli_announces_a_long_job_with_the_measured_estimate(home, capsys, monkeypatch):
    # pin the device speed so that this tiny job counts as long (the probe is what
    # a real machine would measure; pinned here so the test does not depend on it)
    monkeypatch.setattr(budget.THROUGHPUT, "rate", lambda device, dtype: 1e8)
    assert main(["generate", "a hill", "--seed", "1", "--steps", "4", "-W", "512", "-H", "512", "--model", "tiny-sd1", "--home", str(home)]) == 0
    err = capsys.readouterr().err
    line = next(l for l in err.splitlines() if l.startswith("expect about"))
    assert line.endswith("for 1 image(s) on cpu (float32) (from this device's measured speed); fewer steps or a smaller size is faster")


def test_small_jobs_are_not_announced(home, capsys):
    assert main(["generate", "a hill", "--seed", "1", "--steps", "2", "-W", "64", "-H", "64", "--model", "tiny-sd1", "--home", str(home)]) == 0
    assert "expect about" not in capsys.readouterr().err


def test_expected_time_grows_with_steps_and_size_and_needs_no_load(tiny_home):
    eng = Engine(tiny_home, device="cpu")
    assert eng.expected_time(GenerationRequest(prompt="x")) is None  # nothing loaded: nothing is loaded for it
    eng.load("tiny-sd1")
    small = eng.expected_time(GenerationRequest(prompt="x", steps=10, width=64, height=64))
    more_steps = eng.expected_time(GenerationRequest(prompt="x", steps=20, width=64, height=64))
    bigger = eng.expected_time(GenerationRequest(prompt="x", steps=10, width=128, height=128))
    heun = eng.expected_time(GenerationRequest(prompt="x", steps=10, width=64, height=64, sampler="Heun"))
    assert small.flops < more_steps.flops < 2.01 * small.flops
    assert bigger.flops > 3 * small.flops
    assert heun.flops > 1.8 * small.flops  # two model calls a step
    assert eng.expected_time(GenerationRequest(prompt="x", steps=0)) is None  # invalid: no estimate


def test_the_estimate_route_answers_for_the_current_model(tiny_home, tmp_path):
    from brushwork.server.app import create_app
    from brushwork.server.store import JobStore
    from brushwork.server.studio import Studio

    dst = tmp_path / "h"
    shutil.copytree(tiny_home / "models", dst / "models")
    eng = Engine(dst, device="cpu")
    eng.load("tiny-sd1")
    studio = Studio(eng, JobStore(dst / "db.sqlite3"))
    try:
        with TestClient(create_app(studio, web=False)) as c:
            r = c.post("/api/v1/estimate", json={"prompt": "x", "steps": 10, "width": 64, "height": 64}).json()["estimate"]
            assert r["device"] == "cpu (float32)" and r["seconds"] >= 0 and r["long"] is False and r["text"].endswith(" s")
            assert c.post("/api/v1/estimate", json={"steps": 0}).status_code == 422
    finally:
        studio.close()
