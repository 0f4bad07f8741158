"""Issue #13 items 2, 3 and 9: where models go, a new checkpoint taking over from
the demo, and sizes the model was not trained at (CLI and /api/v1/options)."""
from __future__ import annotations

import os
import shutil

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from brushwork.catalog import PACKAGED_DEMO, default_choice, inspect_checkpoint, remember_last_model
from brushwork.cli import main
from brushwork.paths import DataHome

pytestmark = pytest.mark.skipif(not PACKAGED_DEMO.is_file(), reason="the demo model is not built (python -m brushwork.demo.train)")

ONE_STEP = ["--steps", "1", "--sampler", "Euler", "--seed", "1", "-q", "--device", "cpu"]
HINT_512 = "This model was trained at 512x512; far larger or smaller sizes give repeated or broken pictures."


def run(capsys, *args):
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def model_of(stdout: str) -> str:
    """The Model: field of the picture a generate run printed."""
    path = stdout.strip().splitlines()[0].split("  seed ")[0]
    text = Image.open(path).text["parameters"]
    return text.split("Model: ")[1].split(",")[0]


def add(home, tiny_home, name: str, mtime: float | None = None):
    dst = home / "models" / "checkpoints" / f"{name}.safetensors"
    shutil.copyfile(tiny_home / "models" / "checkpoints" / f"{name}.safetensors", dst)
    if mtime is not None:
        os.utime(dst, (mtime, mtime))
    return dst


def test_first_run_creates_the_folders_and_models_shows_them(tmp_path, capsys):
    home = tmp_path / "fresh"
    code, out, err = run(capsys, "models", "--home", str(home), "--no-hash")
    assert code == 0
    ck, lo = home / "models" / "checkpoints", home / "models" / "loras"
    assert ck.is_dir() and lo.is_dir() and (home / "outputs").is_dir()
    assert err == f"created the data folder {home}: checkpoints go in {ck}, LoRAs in {lo}, pictures in {home / 'outputs'}\n"
    lines = out.splitlines()
    assert lines[1].startswith("demo ") and lines[1].endswith("  (built-in demo)")
    assert f"Checkpoints folder: {ck}" in lines
    assert f"LoRA folder:        {lo}" in lines
    assert lines[-1] == "No checkpoints of your own yet: put a .safetensors or .ckpt file (SD 1.x, SD 2.x or SDXL, from civitai or Hugging Face) into the checkpoints folder."
    code, out, err = run(capsys, "models", "--home", str(home), "--no-hash")
    assert err == ""  # only the first run says so


def test_demo_first_then_a_new_checkpoint_takes_over_and_stays(tmp_path, tiny_home, capsys):
    home = tmp_path / "h"
    ck = home / "models" / "checkpoints"
    code, out, err = run(capsys, "generate", "a house", "--home", str(home), "-W", "128", "-H", "128", *ONE_STEP)
    assert code == 0 and model_of(out) == "demo"
    assert err.splitlines() == [
        f"created the data folder {home}: checkpoints go in {ck}, LoRAs in {home / 'models' / 'loras'}, pictures in {home / 'outputs'}",
        "using the built-in demo model: 128 px pictures of simple scenes, for trying Brushwork out. For real pictures put a "
        f".safetensors or .ckpt checkpoint (SD 1.x, SD 2.x or SDXL, from civitai or Hugging Face) into {ck}",
    ]

    add(home, tiny_home, "tiny-sd1")
    code, out, err = run(capsys, "generate", "a house", "--home", str(home), "-W", "512", "-H", "512", "--steps", "1", *ONE_STEP[2:])
    assert code == 0 and model_of(out) == "tiny-sd1"
    assert err.splitlines() == [f"using your new checkpoint tiny-sd1.safetensors (found in {ck}); --model picks another"]

    # the user's own checkpoint was the last used: one added later does not take it over
    add(home, tiny_home, "tiny-sd2", mtime=2e9)
    code, out, err = run(capsys, "generate", "a house", "--home", str(home), "-W", "64", "-H", "64", *ONE_STEP)
    assert code == 0 and model_of(out) == "tiny-sd1"
    assert err.splitlines() == [f"warning: 64x64 is far from this model's size. {HINT_512}"]


def test_several_new_checkpoints_the_newest_wins_and_an_asked_for_demo_is_kept(tmp_path, tiny_home):
    home = DataHome(tmp_path / "h")
    home.create()
    remember_last_model(home, PACKAGED_DEMO)  # a run on the demo, nothing else there yet
    add(home.root, tiny_home, "tiny-sd1", mtime=1e9)
    newest = add(home.root, tiny_home, "tiny-sdxl", mtime=1.5e9)
    add(home.root, tiny_home, "tiny-sd2", mtime=1.2e9)
    choice = default_choice(home)
    assert choice.candidates[0] == newest and [p.name for p in choice.new] == ["tiny-sdxl.safetensors", "tiny-sd2.safetensors", "tiny-sd1.safetensors"]
    assert choice.candidates[-1] == PACKAGED_DEMO
    remember_last_model(home, PACKAGED_DEMO)  # --model demo: asked for, with all three there
    choice = default_choice(home)
    assert choice.candidates[0] == PACKAGED_DEMO and choice.new == []
    remember_last_model(home, newest)
    assert default_choice(home).candidates[0] == newest


# ---------------------------------------------------------------- the studio's options


@pytest.fixture
def options(tmp_path):
    from test_server_api import FakeEngine, FakeModel

    from brushwork.server.app import create_app
    from brushwork.server.store import JobStore
    from brushwork.server.studio import Studio

    made = []

    def get(path, name):
        home = DataHome(tmp_path / f"home-{len(made)}")
        home.create()
        engine = FakeEngine(home)
        engine.model = FakeModel(path, name, spec=inspect_checkpoint(path))
        studio = Studio(engine, JobStore(home.root / "db.sqlite3"))
        made.append(studio)
        with TestClient(create_app(studio, web=False)) as c:
            return c.get("/api/v1/options").json()

    yield get
    for s in made:
        s.close()
        s.store.close()


def test_options_for_the_demo_give_folders_and_128_px_presets(options):
    o = options(PACKAGED_DEMO, "demo")
    assert o["demo"] is True
    assert o["folders"] == {"checkpoints": "models/checkpoints", "loras": "models/loras", "upscalers": "models/upscalers"}
    assert o["defaults"]["width"] == 128 and o["defaults"]["height"] == 128
    assert o["size_presets"] == [{"width": 128, "height": 128}, {"width": 128, "height": 192}, {"width": 192, "height": 128}, {"width": 160, "height": 112}, {"width": 112, "height": 160}]
    assert o["native_size"] == {"width": 128, "height": 128, "hint": "This model was trained at 128x128; far larger or smaller sizes give repeated or broken pictures."}


def test_options_for_a_users_checkpoint(options, tiny_home):
    o = options(tiny_home / "models" / "checkpoints" / "tiny-sd1.safetensors", "tiny-sd1")
    assert o["demo"] is False and o["folders"]["checkpoints"] == "models/checkpoints"
    assert o["size_presets"][0] == {"width": 512, "height": 512} and {"width": 512, "height": 768} in o["size_presets"]
    assert o["native_size"]["hint"] == HINT_512
