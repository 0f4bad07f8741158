"""What a new user stumbles on in the first hour (issue #13, items 4, 5, 11, 14, 15):
errors before the model loads, clip skip against the encoder's depth, one set of
messages for the CLI and the API, file errors that say what the file is, --help."""
from __future__ import annotations

import io
import shutil

import pytest
from fastapi.testclient import TestClient

from brushwork.cli import main
from brushwork.engine import MAX_BATCH_COUNT, Engine, GenerationRequest, RequestError

FAST = ["--steps", "2", "-W", "64", "-H", "64"]


def run(capsys, *args):
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


# ------------------------------------------------------------ item 4


@pytest.mark.parametrize(
    "args, message",
    [
        (["--sampler", "Eular a"], "error: Unknown sampler 'Eular a'. Did you mean 'Euler a', 'Euler'?"),
        (["--steps", "0"], "error: steps must be a whole number from 1 to 150; got 0. 20-30 is typical."),
        (["--cfg", "50"], "error: CFG scale must be between 0 and 30; got 50.0. 4-7 is typical."),
        (["-W", "1001"], "error: width must be a multiple of 8 (the VAE works on 8x8 pixel blocks); got 1001. Try 1000 or 1008."),
        (["--schedule", "Karas"], "error: Unknown schedule 'Karas'. Did you mean 'Karras'?"),
        (["--batch-count", str(MAX_BATCH_COUNT + 1)], f"error: batch count must be from 1 to {MAX_BATCH_COUNT}; got {MAX_BATCH_COUNT + 1}."),
    ],
)
def test_item4_bad_settings_are_reported_before_any_model_loads(home, capsys, monkeypatch, args, message):
    def no_load(self, model=None):
        pytest.fail("the model was loaded before the request was checked")

    monkeypatch.setattr(Engine, "load", no_load)
    code, out, err = run(capsys, "generate", "a lighthouse", "--model", "tiny-sd1", "--home", str(home), *args)
    assert code == 2 and out == ""
    assert err.strip().splitlines()[-1].startswith(message)


# ------------------------------------------------------------ item 5


def test_item5_clip_skip_is_checked_against_the_text_encoders_depth(engines, home, capsys):
    # the tiny checkpoints' encoders have 3 layers: SD 1.x reads the last (1) to the first (3);
    # SD 2.x and SDXL start one layer earlier, so 2 is their deepest
    with pytest.raises(RequestError) as exc:
        engines("sd1").complete(GenerationRequest("x", clip_skip=4))
    assert str(exc.value) == "clip skip 4 is too deep for tiny-sd1.safetensors: its text encoder has 3 layers, so clip skip can be from 1 to 3 (1 = the last layer, the default)."
    assert engines("sd1").complete(GenerationRequest("x", clip_skip=3)).clip_skip == 3
    with pytest.raises(RequestError, match="its text encoder has 3 layers, so clip skip can be from 1 to 2 "):
        engines("sd2").complete(GenerationRequest("x", clip_skip=3))
    code, _, err = run(capsys, "generate", "x", "--clip-skip", "4", "--model", "tiny-sd1", "--home", str(home), "-q", *FAST)
    assert code == 2 and err.strip().endswith("so clip skip can be from 1 to 3 (1 = the last layer, the default).")


# ------------------------------------------------------------ item 11


@pytest.fixture
def client(tmp_path):
    from test_server_api import FakeEngine

    from brushwork.paths import DataHome
    from brushwork.server.app import create_app
    from brushwork.server.store import JobStore
    from brushwork.server.studio import Studio

    h = DataHome(tmp_path / "apihome")
    h.create()
    (h.checkpoint_dirs[0] / "alpha.safetensors").write_bytes(b"not read by the fake engine")
    studio = Studio(FakeEngine(h), JobStore(h.root / "db.sqlite3"))
    with TestClient(create_app(studio, web=False), raise_server_exceptions=False) as c:
        yield c
    studio.close()
    studio.store.close()


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("width", 1001, "width must be a multiple of 8 (the VAE works on 8x8 pixel blocks); got 1001. Try 1000 or 1008."),
        ("height", 8192, "height must be between 64 and 4096 pixels; got 8192."),
        ("steps", 0, "steps must be a whole number from 1 to 150; got 0. 20-30 is typical."),
        ("cfg_scale", 50, "CFG scale must be between 0 and 30; got 50. 4-7 is typical."),
        ("seed", -2, "seed must be -1 (random) or between 0 and 4294967295; got -2."),
        ("batch_count", MAX_BATCH_COUNT + 1, f"batch count must be from 1 to {MAX_BATCH_COUNT}; got {MAX_BATCH_COUNT + 1}."),
    ],
)
def test_item11_the_native_api_words_range_errors_as_the_engine_does(client, home, capsys, monkeypatch, field, value, message):
    r = client.post("/api/v1/jobs", json={"prompt": "x", field: value})
    assert r.status_code == 422
    data = r.json()
    assert data["detail"][0]["loc"] == ["body", field]
    assert data["detail"][0]["msg"] == message and data["message"] == message
    flag = {"width": "-W", "height": "-H", "steps": "--steps", "cfg_scale": "--cfg", "seed": "--seed", "batch_count": "--batch-count"}[field]
    monkeypatch.setattr(Engine, "load", lambda self, model=None: pytest.fail("loaded"))
    code, _, err = run(capsys, "generate", "x", flag, str(value), "--home", str(home))
    assert code == 2 and err.strip() == f"error: {message}".replace("got 50.", "got 50.0.")


def test_item11_an_empty_prompt_warns_that_the_image_is_unconditional(home, capsys, caplog):
    code, out, _ = run(capsys, "generate", "", "--seed", "1", "--model", "tiny-sd1", "--home", str(home), "-q", *FAST)
    assert code == 0 and out.count("seed 1") == 1
    warning = "the prompt is empty: the image is unconditional (the model draws whatever it likes). Give a prompt to say what to draw."
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"].count(warning) == 1  # printed as WARNING: ... once


# ------------------------------------------------------------ item 14

HINT = "A checkpoint is a .safetensors (or .ckpt) model file, usually 2-7 GB; pass one of those (see: brushwork models)."


def test_item14_files_that_are_no_checkpoint_say_what_they_are(home, capsys, tmp_path, monkeypatch):
    from brushwork.lora import PACKAGED_LORAS

    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("hello world, my prompts\n")
    (tmp_path / "notes.ckpt").write_text("hello world, my prompts\n")
    (tmp_path / "notes.safetensors").write_text("this is some text file content")
    (tmp_path / "page.safetensors").write_text("<!DOCTYPE html><html><body>Sign in</body></html>")
    (tmp_path / "models").mkdir()
    shutil.copy(home / "models" / "checkpoints" / "tiny-sd1.safetensors", tmp_path / "models")
    cases = {
        "notes.txt": f"error: notes.txt is not a checkpoint file: it is a text file (it starts with 'hello world, my prompts'). {HINT}",
        "notes.ckpt": f"error: notes.ckpt is not a model file despite its .ckpt suffix: it is a text file (it starts with 'hello world, my prompts'). {HINT}",
        "notes.safetensors": f"error: notes.safetensors is not a model file despite its .safetensors suffix: it is a text file (it starts with 'this is some text file content'). {HINT}",
        "page.safetensors": "error: page.safetensors is not a model file despite its .safetensors suffix: it is a web page (HTML): the download saved a page (a login, error or redirect page) instead of the model. Download the file itself.",
        "models": "error: models is a folder, not a checkpoint file; Brushwork loads single-file checkpoints (.safetensors or .ckpt). It holds tiny-sd1.safetensors: pass one of them, e.g. --model models/tiny-sd1.safetensors.",
        str(PACKAGED_LORAS / "balloon.safetensors"): "error: balloon.safetensors: this is a LoRA, not a checkpoint: a LoRA changes a checkpoint of its family. Put it in models/loras in the data home and add <lora:NAME:0.8> to a prompt (see: brushwork loras); pass a checkpoint as --model.",
    }
    for model, message in cases.items():
        code, _, err = run(capsys, "generate", "x", "--model", model, "--home", str(home), "-q", *FAST)
        assert (code, err.strip().splitlines()[-1]) == (2, message)
        assert "\n" not in err.strip() and "LoRA support is coming" not in err and "claims a" not in err and "mmap" not in err


def test_item14_info_on_a_folder_and_into_a_closed_pipe(home, capsys, tmp_path, monkeypatch):
    _, out, _ = run(capsys, "generate", "a barn", "--seed", "5", "--model", "tiny-sd1", "--out", str(tmp_path / "pics"), "--home", str(home), "-q", *FAST)
    code, _, err = run(capsys, "info", str(tmp_path / "pics"))
    assert code == 2 and err.strip() == f"error: {tmp_path / 'pics'} is a folder; brushwork info reads the parameters stored in one picture, e.g. brushwork info {tmp_path / 'pics' / '00000-5.png'}"
    code, _, err = run(capsys, "info", str(tmp_path / "nothing.png"))
    assert code == 2 and "does not exist" in err

    class ClosedPipe(io.StringIO):
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr("sys.stdout", ClosedPipe())
    assert main(["info", out.split("  seed ")[0]]) == 0  # `brushwork info X | head`: no traceback


# ------------------------------------------------------------ item 15


def test_item15_help_has_examples_and_defaults_and_the_header_names_schedule_and_loras(home, capsys):
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    text = capsys.readouterr().out
    assert "examples:\n  brushwork generate \"a lighthouse at dusk\"\n" in text
    assert "<lora:NAME:0.8> in the prompt applies the LoRA NAME at weight 0.8" in text and "HOME/outputs/DATE" in text
    for command, words in [("models", "Pass a NAME or HASH"), ("loras", "<lora:NAME:0.8>"), ("info", "brushwork generate --from IMAGE"), ("samplers", "automatic schedule"), ("train-lora", "(default: 400)"), ("serve", "(default 7860")]:
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert words in " ".join(capsys.readouterr().out.split()), command
    code, _, err = run(capsys, "generate", "a cat <lora:balloon:0.8>", "--seed", "1", "--model", "tiny-sd1", "--home", str(home), *FAST)
    assert code == 0
    assert "tiny-sd1.safetensors (SD 1.x) on cpu (float32): 64x64, 2 steps, DPM++ 2M Karras, CFG 7.0, LoRA balloon:0.8\n" in err
