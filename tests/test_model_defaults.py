"""A model's own defaults: saved once, used by every request that leaves a field out,
after the request's own values and before the checkpoint's metadata and the family's."""
import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from brushwork import Engine
from brushwork.catalog import hash_cache, inspect_checkpoint
from brushwork.cli import main
from brushwork.model_defaults import (
    SAVED_FIELDS, ModelDefaultsError, checkpoint_key, clear_defaults, defaults_file, effective_defaults, save_defaults, saved_defaults,
)
from brushwork.paths import DataHome
from brushwork.request import FamilyDefaults, GenerationRequest, RequestError, with_defaults

FAST = ["--steps", "1", "-W", "64", "-H", "64", "-q"]


def run(capsys, *args):
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def h(home) -> DataHome:
    return DataHome.resolve(home)


def ckpt(h: DataHome, name: str = "tiny-sd1") -> Path:
    return h.root / "models" / "checkpoints" / f"{name}.safetensors"


def with_metadata_defaults(h: DataHome, defaults: dict, name: str = "authored") -> Path:
    """A tiny SD 1.x checkpoint whose author stored generation defaults in it."""
    from brushwork.models import families, save

    spec = families.tiny("sd1")
    path = h.root / "models" / "checkpoints" / f"{name}.safetensors"
    save.save_checkpoint(path, spec, save.random_networks(spec, seed=1), metadata={"brushwork.defaults": json.dumps(defaults)})
    return path


# ------------------------------------------------------------------ saving


def test_save_merges_none_removes_and_clear_forgets(h):
    path = ckpt(h)
    assert saved_defaults(h, path) == {}
    assert save_defaults(h, path, {"steps": 30, "cfg_scale": 5}) == {"steps": 30, "cfg_scale": 5.0}
    assert save_defaults(h, path, {"width": 768, "height": 512, "clip_skip": 2}) == {"steps": 30, "cfg_scale": 5.0, "width": 768, "height": 512, "clip_skip": 2}
    assert save_defaults(h, path, {"steps": None, "clip_skip": None}) == {"cfg_scale": 5.0, "width": 768, "height": 512}
    assert saved_defaults(h, path) == {"cfg_scale": 5.0, "width": 768, "height": 512}
    assert saved_defaults(h, ckpt(h, "tiny-sd2")) == {}  # per model
    data = json.loads(defaults_file(h).read_text())
    assert data["version"] == 1 and list(data["models"]) == ["tiny-sd1"]
    assert [p.name for p in h.root.iterdir() if p.name.endswith(".tmp")] == []  # written atomically, nothing left behind
    clear_defaults(h, path)
    assert saved_defaults(h, path) == {} and json.loads(defaults_file(h).read_text())["models"] == {}
    clear_defaults(h, path)  # nothing to clear is no error


def test_the_checkpoint_file_is_never_changed(h):
    path = ckpt(h)
    before = (path.read_bytes(), path.stat().st_mtime_ns)
    save_defaults(h, path, {"steps": 9})
    assert (path.read_bytes(), path.stat().st_mtime_ns) == before
    assert defaults_file(h) == h.root / "model-defaults.json"


def test_names_are_made_canonical(h):
    path = ckpt(h)
    assert save_defaults(h, path, {"sampler": "dpm++ 2m karras"}) == {"sampler": "DPM++ 2M", "schedule": "Karras"}
    assert save_defaults(h, path, {"schedule": "exponential"})["schedule"] == "Exponential"
    # a sampler saved alone gets its own preferred schedule, as a request naming only a sampler does
    assert save_defaults(h, path, {"sampler": "k_euler_a"}) == {"sampler": "Euler a", "schedule": "Automatic"}
    assert save_defaults(h, path, {"sampler": "Euler", "schedule": "SGM Uniform"}) == {"sampler": "Euler", "schedule": "SGM Uniform"}


@pytest.mark.parametrize("values, words", [
    ({"steps": 0}, "steps must be a whole number from 1 to 150; got 0"),
    ({"steps": 12.5}, "steps must be a whole number from 1 to 150; got 12.5"),
    ({"width": 100}, "width must be a multiple of 8 (the VAE works on 8x8 pixel blocks); got 100. Try 96 or 104."),
    ({"height": 8192}, "height must be between 64 and 4096 pixels; got 8192."),
    ({"cfg_scale": 31}, "CFG scale must be between 0 and 30; got 31"),
    ({"cfg_scale": "high"}, "CFG scale must be a number from 0 to 30; got 'high'"),
    ({"clip_skip": 13}, "clip skip must be from 1 to 12; got 13. 1 (the last layer) is the default"),
    ({"clip_skip": "2"}, "clip skip must be a whole number from 1 to 12; got '2'"),
    ({"sampler": "Eular a"}, "Unknown sampler 'Eular a'. Did you mean 'Euler a'"),
    ({"schedule": "karas"}, "Unknown schedule 'karas'. Did you mean 'Karras'"),
    ({"seed": 3}, "'seed' cannot be saved as a model default; the fields are steps, cfg_scale, sampler, schedule, width, height, clip_skip."),
])
def test_values_are_checked_with_the_request_limits_and_nothing_is_written(h, values, words):
    save_defaults(h, ckpt(h), {"steps": 20})
    before = defaults_file(h).read_text()
    with pytest.raises(ModelDefaultsError) as exc:
        save_defaults(h, ckpt(h), {"cfg_scale": 4, **values})
    assert words in str(exc.value)
    assert isinstance(exc.value, RequestError)  # every client shows it as a request error
    assert defaults_file(h).read_text() == before


def test_clip_skip_is_checked_against_the_model_when_its_spec_is_given(h):
    spec = inspect_checkpoint(ckpt(h, "tiny-sd2"))  # 3 text-encoder layers, SD 2.x: clip skip up to 2
    assert save_defaults(h, ckpt(h, "tiny-sd2"), {"clip_skip": 2}, spec=spec) == {"clip_skip": 2}
    with pytest.raises(ModelDefaultsError, match="clip skip 3 is too deep for tiny-sd2.safetensors: its text encoder allows from 1 to 2"):
        save_defaults(h, ckpt(h, "tiny-sd2"), {"clip_skip": 3}, spec=spec)


def test_a_damaged_file_is_ignored_for_generating_but_never_overwritten(h, caplog):
    defaults_file(h).parent.mkdir(parents=True, exist_ok=True)
    defaults_file(h).write_text("{not json")
    assert saved_defaults(h, ckpt(h)) == {}
    assert "ignoring the saved model defaults" in caplog.text
    with pytest.raises(ModelDefaultsError, match="is not valid JSON .*fix it by hand, or delete it"):
        save_defaults(h, ckpt(h), {"steps": 3})
    assert defaults_file(h).read_text() == "{not json"


def test_a_bad_hand_edit_drops_only_that_value(h, caplog):
    defaults_file(h).write_text(json.dumps({"version": 1, "models": {"tiny-sd1": {"values": {"steps": 999, "cfg_scale": 4.5, "sampler": "nope"}}}}))
    assert saved_defaults(h, ckpt(h)) == {"cfg_scale": 4.5}
    assert "steps=999" in caplog.text and "sampler='nope'" in caplog.text


# ------------------------------------------------------------------ names and hashes


def test_keys_are_catalog_names(h, tmp_path):
    sub = h.root / "models" / "checkpoints" / "xl"
    sub.mkdir()
    moved = shutil.copy(ckpt(h, "tiny-sdxl"), sub / "mine.safetensors")
    assert checkpoint_key(h, Path(moved)) == "xl/mine"
    outside = shutil.copy(ckpt(h), tmp_path / "loose.safetensors")
    assert checkpoint_key(h, Path(outside)) == str(Path(outside).resolve())
    from brushwork.catalog import PACKAGED_DEMO

    assert checkpoint_key(h, PACKAGED_DEMO) == "demo"


def test_a_renamed_file_keeps_its_defaults_by_hash(h):
    path = ckpt(h)
    sha = hash_cache(h).get_sha256(path)  # known, as after any load or listing
    save_defaults(h, path, {"steps": 33})
    assert json.loads(defaults_file(h).read_text())["models"]["tiny-sd1"]["sha256"] == sha
    renamed = path.with_name("tiny-renamed.safetensors")
    path.rename(renamed)
    hash_cache(h).get_sha256(renamed)
    assert saved_defaults(h, renamed) == {"steps": 33}
    assert save_defaults(h, renamed, {"cfg_scale": 3}) == {"steps": 33, "cfg_scale": 3.0}
    assert list(json.loads(defaults_file(h).read_text())["models"]) == ["tiny-renamed"]  # moved to the new name


def test_loading_records_the_hash_so_a_later_rename_still_matches(h):
    path = ckpt(h)
    save_defaults(h, path, {"steps": 7})  # hash not known yet: saved by name only
    assert "sha256" not in json.loads(defaults_file(h).read_text())["models"]["tiny-sd1"]
    loaded = Engine(h, device="cpu").load("tiny-sd1")
    assert json.loads(defaults_file(h).read_text())["models"]["tiny-sd1"]["sha256"] == loaded.sha256
    renamed = path.with_name("other-name.safetensors")
    path.rename(renamed)
    hash_cache(h).get_sha256(renamed)
    assert saved_defaults(h, renamed) == {"steps": 7}


# ------------------------------------------------------------------ precedence


def test_saved_then_metadata_then_family(h):
    path = with_metadata_defaults(h, {"steps": 12, "sampler": "Euler", "width": 384})
    spec = inspect_checkpoint(path)
    eff = effective_defaults(h, path, spec)
    assert eff.values == {"steps": 12, "cfg_scale": 7.0, "sampler": "Euler", "schedule": "Karras", "width": 384, "height": 512, "clip_skip": 1}
    assert eff.sources == {"steps": "metadata", "cfg_scale": "family", "sampler": "metadata", "schedule": "family", "width": "metadata", "height": "family", "clip_skip": "family"}
    save_defaults(h, path, {"steps": 40, "cfg_scale": 4.5, "clip_skip": 2})
    eff = effective_defaults(h, path, spec)
    assert set(eff.values) == set(SAVED_FIELDS) == set(eff.sources)
    assert (eff.values["steps"], eff.sources["steps"]) == (40, "saved")
    assert (eff.values["cfg_scale"], eff.sources["cfg_scale"]) == (4.5, "saved")
    assert (eff.values["sampler"], eff.sources["sampler"]) == ("Euler", "metadata")
    assert (eff.values["clip_skip"], eff.sources["clip_skip"]) == (2, "saved")
    assert eff.as_family_defaults() == FamilyDefaults(width=384, height=512, steps=40, cfg_scale=4.5, sampler="Euler", schedule="Karras", clip_skip=2)


def test_the_hires_defaults_follow_the_checkpoints_own_size_not_a_saved_one():
    native = FamilyDefaults(512, 512)
    saved = replace(native, width=1024, height=1024)
    req = with_defaults(GenerationRequest("x", hires=True), saved, native=native)
    assert (req.width, req.hires_scale, req.hires_steps) == (1024, 2.0, 10)  # SD 1.x's hires defaults, at the saved size
    assert with_defaults(GenerationRequest("x", hires=True), saved).hires_scale != 2.0  # what would happen without native


# ------------------------------------------------------------------ the engine


def test_complete_uses_saved_defaults_and_the_request_still_wins(h):
    save_defaults(h, ckpt(h), {"steps": 3, "cfg_scale": 4.0, "sampler": "Euler a", "width": 64, "height": 96, "clip_skip": 2})
    engine = Engine(h, device="cpu")
    engine.load("tiny-sd1")
    req = engine.complete(GenerationRequest("x"))
    assert (req.steps, req.cfg_scale, req.sampler, req.schedule, req.width, req.height, req.clip_skip) == (3, 4.0, "Euler a", "Automatic", 64, 96, 2)
    own = engine.complete(GenerationRequest("x", steps=2, cfg_scale=6.0, sampler="DPM++ 2M", width=72, height=64, clip_skip=1))
    assert (own.steps, own.cfg_scale, own.sampler, own.schedule, own.width, own.height, own.clip_skip) == (2, 6.0, "DPM++ 2M", None, 72, 64, 1)
    # another model has its own (none saved: the family's)
    engine.load("tiny-sd2")
    other = engine.complete(GenerationRequest("x", width=64, height=64))
    assert (other.steps, other.cfg_scale, other.clip_skip) == (25, 7.0, 1)


def test_a_generation_is_made_with_the_saved_defaults_and_says_so(h):
    save_defaults(h, ckpt(h), {"steps": 2, "cfg_scale": 3.5, "width": 64, "height": 64, "clip_skip": 2})
    engine = Engine(h, device="cpu")
    engine.load("tiny-sd1")
    [img] = engine.txt2img(GenerationRequest("a barn", seed=5))
    assert img.image.size == (64, 64)
    assert "Steps: 2," in img.infotext and "CFG scale: 3.5," in img.infotext and "Clip skip: 2" in img.infotext
    est = engine.expected_time(GenerationRequest("a barn"))
    assert est is not None


def test_saved_defaults_survive_a_restart(h):
    save_defaults(h, ckpt(h), {"steps": 4, "width": 64, "height": 64})
    fresh = Engine(DataHome.resolve(h.root), device="cpu")  # a new engine knows nothing but the data home
    fresh.load("tiny-sd1")
    assert fresh.complete(GenerationRequest("x")).steps == 4
    env = {**os.environ, "BRUSHWORK_HOME": str(h.root)}
    out = subprocess.run([sys.executable, "-m", "brushwork.cli", "models", "show", "tiny-sd1"], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    rows = {line.split()[0]: line for line in out.stdout.splitlines()[1:]}
    assert rows["steps"].split()[1:] == ["4", "saved", "(brushwork", "models", "set)"]
    assert rows["width"].split()[1] == "64" and "family default" in rows["CFG"]


def test_a_saved_clip_skip_too_deep_for_the_model_says_where_it_comes_from(h):
    defaults_file(h).write_text(json.dumps({"version": 1, "models": {"tiny-sd1": {"values": {"clip_skip": 5}}}}))  # a hand edit
    engine = Engine(h, device="cpu")
    engine.load("tiny-sd1")
    with pytest.raises(RequestError) as exc:
        engine.complete(GenerationRequest("x", width=64, height=64))
    assert "clip skip 5 is too deep for tiny-sd1.safetensors" in str(exc.value)
    assert "It is this model's saved default: change it with brushwork models set tiny-sd1 --clip-skip N (or --unset clip_skip)." in str(exc.value)
    assert engine.complete(GenerationRequest("x", width=64, height=64, clip_skip=3)).clip_skip == 3  # the request's own value wins


def test_an_unset_clip_skip_is_one_everywhere(h):
    assert GenerationRequest().clip_skip is None
    engine = Engine(h, device="cpu")
    engine.load("tiny-sd1")
    [img] = engine.txt2img(GenerationRequest("x", seed=1, steps=1, width=64, height=64))
    assert img.params.clip_skip == 1 and "Clip skip" not in img.infotext


# ------------------------------------------------------------------ the command line


def test_cli_set_show_unset_and_clear(home, capsys):
    code, out, _ = run(capsys, "models", "set", "tiny-sd1", "--steps", "30", "--cfg", "5", "--sampler", "DPM++ 2M", "--schedule", "Karras", "--size", "768x512", "--clip-skip", "2", "--home", str(home))
    assert code == 0
    assert out.splitlines()[0] == f"saved as tiny-sd1's own defaults (in {home / 'model-defaults.json'}): steps 30, cfg_scale 5.0, sampler DPM++ 2M, schedule Karras, width 768, height 512, clip_skip 2"
    code, out, _ = run(capsys, "models", "show", "tiny-sd1", "--home", str(home))
    lines = out.splitlines()
    assert code == 0 and lines[0] == f"tiny-sd1 (SD 1.x): {home / 'models' / 'checkpoints' / 'tiny-sd1.safetensors'}"
    table = {line[2:12].strip(): [line[13:29].strip(), line[30:]] for line in lines[1:]}
    assert table == {"steps": ["30", "saved (brushwork models set)"], "CFG scale": ["5", "saved (brushwork models set)"], "sampler": ["DPM++ 2M", "saved (brushwork models set)"],
                     "schedule": ["Karras", "saved (brushwork models set)"], "width": ["768", "saved (brushwork models set)"], "height": ["512", "saved (brushwork models set)"],
                     "clip skip": ["2", "saved (brushwork models set)"]}
    code, out, _ = run(capsys, "models", "set", "tiny-sd1", "--unset", "clip-skip", "--unset", "size", "--home", str(home))
    assert code == 0 and "clip skip  1                family default" in out and "width      512              family default" in out
    code, out, _ = run(capsys, "models", "--home", str(home), "--no-hash")
    rows = {line.split()[0]: line for line in out.splitlines()[1:] if line.strip()}
    assert rows["tiny-sd1"].endswith("(saved defaults)") and "(saved defaults)" not in rows["tiny-sd2"]
    assert "1 model(s) with saved defaults" in out
    code, out, _ = run(capsys, "models", "set", "tiny-sd1", "--clear", "--home", str(home))
    assert code == 0 and "tiny-sd1 has no saved defaults now" in out and "saved" not in out.split("\n", 1)[1]


def test_cli_generate_uses_the_saved_defaults(home, capsys):
    from PIL import Image

    assert run(capsys, "models", "set", "tiny-sd1", "--steps", "2", "--size", "64x72", "--cfg", "4.5", "--home", str(home))[0] == 0
    code, out, _ = run(capsys, "generate", "a barn", "--seed", "1", "--model", "tiny-sd1", "-q", "--home", str(home))
    assert code == 0
    picture = Image.open(out.split("  seed ")[0])
    assert picture.size == (64, 72) and "Steps: 2," in picture.text["parameters"] and "CFG scale: 4.5," in picture.text["parameters"]


@pytest.mark.parametrize("args, words", [
    (["--size", "768by512"], "error: --size takes WIDTHxHEIGHT, e.g. 768x512; got '768by512'"),
    (["--size", "768x512", "-W", "64"], "error: give --size, or --width/--height, not both"),
    (["--unset", "seed"], "error: --unset takes one of cfg, clip-skip, height, sampler, schedule, size, steps, width; got 'seed'"),
    (["--steps", "4", "--unset", "steps"], "error: --unset steps and a new value for it at once"),
    ([], "error: say what to save, e.g. brushwork models set tiny-sd1 --steps 30"),
    (["--sampler", "Eular a"], "error: Unknown sampler 'Eular a'. Did you mean 'Euler a'"),
    (["--clip-skip", "4"], "error: clip skip 4 is too deep for tiny-sd1.safetensors: its text encoder allows from 1 to 3"),
    (["--steps", "500"], "error: steps must be a whole number from 1 to 150; got 500"),
])
def test_cli_set_refuses_with_a_message(home, capsys, args, words):
    code, _, err = run(capsys, "models", "set", "tiny-sd1", *args, "--home", str(home))
    assert code == 2 and words in err
    assert not (home / "model-defaults.json").exists()


def test_cli_set_an_unknown_model(home, capsys):
    code, _, err = run(capsys, "models", "set", "tiny-sd3", "--steps", "4", "--home", str(home))
    assert code == 2 and "No checkpoint called 'tiny-sd3'" in err and "Did you mean" in err


def test_cli_home_before_the_action_counts(home, capsys):
    code, out, _ = run(capsys, "models", "--home", str(home), "show", "tiny-sd2")
    assert code == 0 and out.startswith("tiny-sd2 (SD 2.x (v-prediction))") and "width      768              family default" in out


# ------------------------------------------------------------------ the other models actions' wiring


def test_starter_and_pull_go_to_the_downloader(home, capsys, monkeypatch):
    import types

    calls = []
    fake = types.ModuleType("brushwork.fetch.cli")
    fake.add_pull_arguments = lambda parser: parser.add_argument("source")
    fake.cmd_pull = lambda args: calls.append((args.source, args.home)) or 0
    fake.starter_lines = lambda h: [f"starter list for {h.root}", "sd15  checkpoint"]
    monkeypatch.setitem(sys.modules, "brushwork.fetch.cli", fake)
    code, out, _ = run(capsys, "models", "--starter", "--home", str(home))
    assert code == 0 and out.splitlines() == [f"starter list for {home}", "sd15  checkpoint"]
    assert run(capsys, "pull", "sd15", "--home", str(home))[0] == 0
    assert run(capsys, "models", "pull", "hf://a/b/c.safetensors")[0] == 0
    assert calls == [("sd15", str(home)), ("hf://a/b/c.safetensors", None)]


def test_loras_shows_base_model_and_weight_when_the_listing_has_them(home, capsys, monkeypatch):
    from dataclasses import dataclass

    import brushwork.lora

    @dataclass(frozen=True)
    class Row:
        name: str
        path: Path
        family: str
        addnet_hash: str
        triggers: list
        base_model: object = None
        weight: object = None

    rows = [Row("detail", home / "models" / "loras" / "detail.safetensors", "SD 1.x", "0123456789ab", ["sharp"], "SD 1.5", 0.8),
            Row("plain", home / "models" / "loras" / "plain.safetensors", "unknown", "ba9876543210", [])]
    monkeypatch.setattr(brushwork.lora, "summarize_loras", lambda h: rows)
    code, out, _ = run(capsys, "loras", "--home", str(home))
    lines = out.splitlines()
    assert code == 0 and lines[0].split() == ["NAME", "FAMILY", "BASE", "WEIGHT", "HASH", "TRIGGER", "WORDS"]
    assert lines[1].split() == ["detail", "SD", "1.x", "SD", "1.5", "0.8", "0123456789ab", "sharp"]
    assert lines[2].split() == ["plain", "unknown", "-", "-", "ba9876543210", "-"]
