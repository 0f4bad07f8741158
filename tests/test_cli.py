"""The command line, driven through ``brushwork.cli.main`` as a user would type it."""
import hashlib
import shutil

import numpy as np
import pytest
from PIL import Image

from brushwork.cli import main

FAST = ["--steps", "3", "-W", "64", "-H", "64", "-q"]


def run(capsys, *args):
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def saved_paths(stdout):
    return [line.split("  seed ")[0] for line in stdout.strip().splitlines()]


def test_generate_prints_paths_and_seeds_and_writes_pngs_with_infotext(home, capsys):
    code, out, _ = run(capsys, "generate", "a lighthouse", "-n", "fog", "--seed", "7", "--batch-size", "2", "--model", "tiny-sd1", "--home", str(home), *FAST)
    assert code == 0
    paths = saved_paths(out)
    assert [p.rsplit("/", 1)[1] for p in paths] == ["00000-7.png", "00001-8.png"]
    assert out.strip().splitlines()[1].endswith("seed 8")
    text = Image.open(paths[0]).text["parameters"]
    assert text.startswith("a lighthouse\nNegative prompt: fog\nSteps: 3, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7.0, Seed: 7, Size: 64x64")


def test_progress_bar_shows_rate_and_eta(home, capsys):
    code, _, err = run(capsys, "generate", "x", "--seed", "1", "--model", "tiny-sd1", "--home", str(home), "--steps", "3", "-W", "64", "-H", "64")
    assert code == 0
    assert "3/3" in err and "it/s" in err and "<00:00" in err


def test_nothing_is_ever_overwritten(home, capsys):
    out_dir = home / "mine"
    out_dir.mkdir()
    precious = out_dir / "00000-7.png"
    precious.write_bytes(b"my own picture")
    code, out, _ = run(capsys, "generate", "x", "--seed", "7", "--model", "tiny-sd1", "--out", str(out_dir), "--home", str(home), *FAST)
    assert code == 0
    assert precious.read_bytes() == b"my own picture"
    assert saved_paths(out)[0].endswith("00001-7.png")


def test_info_and_from_recreate_the_same_pixels(home, capsys):
    _, out, _ = run(capsys, "generate", "a red barn, (sunset:1.2)", "--seed", "11", "--sampler", "Euler a", "--cfg", "5.5", "--model", "tiny-sdxl", "--home", str(home), *FAST)
    first = saved_paths(out)[0]
    code, info, _ = run(capsys, "info", first)
    assert code == 0
    assert "Prompt:" in info and "a red barn, (sunset:1.2)" in info and "Sampler:         Euler a" in info and "CFG scale:       5.5" in info
    code, out2, _ = run(capsys, "generate", "--from", first, "--home", str(home), "-q")
    assert code == 0
    second = saved_paths(out2)[0]
    assert second != first
    assert np.array_equal(np.asarray(Image.open(first)), np.asarray(Image.open(second)))
    assert Image.open(first).text["parameters"] == Image.open(second).text["parameters"]


def test_from_with_an_override(home, capsys):
    _, out, _ = run(capsys, "generate", "a barn", "--seed", "3", "--model", "tiny-sd1", "--home", str(home), *FAST)
    _, out2, _ = run(capsys, "generate", "--from", saved_paths(out)[0], "--seed", "4", "--home", str(home), "-q")
    assert "Seed: 4" in Image.open(saved_paths(out2)[0]).text["parameters"]


def test_from_an_image_whose_model_is_missing(home, capsys, tmp_path):
    img = tmp_path / "other.png"
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a cat\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 512x512, Model hash: 0123456789, Model: someModel_v2")
    Image.new("RGB", (8, 8)).save(img, pnginfo=info)
    code, _, err = run(capsys, "generate", "--from", str(img), "--home", str(home))
    assert code == 2
    assert "made with someModel_v2 [0123456789], which is not among your checkpoints" in err


def test_models_lists_family_size_and_hash(home, capsys):
    code, out, _ = run(capsys, "models", "--home", str(home))
    assert code == 0
    lines = out.strip().splitlines()
    assert lines[0].split() == ["NAME", "FAMILY", "SIZE", "HASH"]
    digest = hashlib.sha256((home / "models/checkpoints/tiny-sd2.safetensors").read_bytes()).hexdigest()[:10]
    row = next(line for line in lines if line.startswith("tiny-sd2"))
    assert "SD 2.x (v-prediction)" in row and row.endswith(digest) and "MB" in row


def test_models_with_an_unusable_file_still_lists_the_rest(home, capsys):
    (home / "models/checkpoints/broken.safetensors").write_bytes(b"\x00" * 3)
    code, out, _ = run(capsys, "models", "--home", str(home), "--no-hash")
    assert code == 0
    assert "unusable" in next(line for line in out.splitlines() if line.startswith("broken"))
    assert "tiny-sd1" in out


def test_no_model_anywhere_explains_how_to_add_one(tmp_path, capsys, monkeypatch):
    import brushwork.catalog

    monkeypatch.setattr(brushwork.catalog, "PACKAGED_DEMO", tmp_path / "no-demo.safetensors")
    code, _, err = run(capsys, "generate", "a cat", "--home", str(tmp_path / "empty"))
    assert code == 2
    assert "No checkpoint found" in err and "models/checkpoints" in err and "--model" in err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--sampler", "Eular a"], "Unknown sampler 'Eular a'. Did you mean 'Euler a'"),
        (["--schedule", "karass"], "Unknown schedule 'karass'"),
        (["-W", "65"], "width must be a multiple of 8"),
        (["--steps", "500"], "steps must be a whole number from 1 to 150"),
        (["--model", "nope"], "No checkpoint called 'nope'"),
        (["--device", "tpu"], "unknown device 'tpu'"),
    ],
)
def test_bad_input_gives_one_clear_line(home, capsys, args, message):
    code, out, err = run(capsys, "generate", "x", "--model", "tiny-sd1", "--home", str(home), "-q", *args)
    assert code == 2 and out == ""
    assert err.startswith("error: ") and message in err
    assert "Traceback" not in err


def test_unwritable_output_folder_fails_before_any_work(home, capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = run(capsys, "generate", "x", "--model", "tiny-sd1", "--home", str(home), "--out", str(blocker / "sub"), *FAST)
    assert code == 2 and "cannot write images" in err and "--out" in err


def test_last_used_model_becomes_the_default(home, capsys):
    run(capsys, "generate", "x", "--model", "tiny-sdxl", "--home", str(home), *FAST)
    _, out, _ = run(capsys, "generate", "x", "--home", str(home), *FAST)
    assert "Model: tiny-sdxl" in Image.open(saved_paths(out)[0]).text["parameters"]


def test_samplers_command_lists_names(capsys):
    code, out, _ = run(capsys, "samplers")
    assert code == 0 and "DPM++ 2M" in out and "SGM Uniform" in out and "(Automatic schedule: Karras)" in out


def test_info_on_a_plain_image(tmp_path, capsys):
    p = tmp_path / "plain.png"
    Image.new("RGB", (4, 4)).save(p)
    code, _, err = run(capsys, "info", str(p))
    assert code == 1 and "no generation parameters" in err


@pytest.fixture
def packaged_demo(tiny_home, tmp_path, monkeypatch):
    """A stand-in for the packaged demo model (a tiny checkpoint named demo.safetensors)."""
    import brushwork.catalog

    demo = tmp_path / "pkg" / "demo.safetensors"
    demo.parent.mkdir()
    shutil.copy(tiny_home / "models/checkpoints/tiny-sd1.safetensors", demo)
    monkeypatch.setattr(brushwork.catalog, "PACKAGED_DEMO", demo)
    return demo


def test_the_packaged_demo_is_listed_and_used_when_nothing_else_is_there(packaged_demo, tmp_path, capsys):
    empty = tmp_path / "fresh-home"
    code, out, _ = run(capsys, "models", "--home", str(empty))
    assert code == 0 and out.splitlines()[1].startswith("demo ")
    code, out, _ = run(capsys, "generate", "a cat", "--seed", "1", "--home", str(empty), *FAST)
    assert code == 0 and "Model: demo," in Image.open(saved_paths(out)[0]).text["parameters"]
    assert saved_paths(out)[0].startswith(str(empty / "outputs"))


def test_a_users_own_checkpoint_wins_over_the_demo(packaged_demo, home, capsys):
    code, out, _ = run(capsys, "generate", "a cat", "--home", str(home), *FAST)
    assert "Model: tiny-sd1," in Image.open(saved_paths(out)[0]).text["parameters"]
    code, out, _ = run(capsys, "generate", "a cat", "--model", "demo", "--home", str(home), *FAST)
    assert "Model: demo," in Image.open(saved_paths(out)[0]).text["parameters"]


def test_loras_lists_family_hash_and_trigger_words(home, capsys):
    import json

    import torch
    from safetensors.torch import save_file

    from brushwork.hashing import addnet_hash

    folder = home / "models" / "Lora"  # A1111's folder name works too
    folder.mkdir(parents=True)
    meta = {"ss_base_model_version": "sdxl_base_v1-0", "ss_tag_frequency": json.dumps({"10_car": {"porsche 911": 20, "red car": 5, "road": 2}})}
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(2, 4), "lora_unet_x.lora_up.weight": torch.zeros(4, 2)}, str(folder / "porsche_911.safetensors"), metadata=meta)
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(2, 4)}, str(folder / "plain.safetensors"))
    code, out, _ = run(capsys, "loras", "--home", str(home))
    assert code == 0
    rows = {line.split()[0]: line for line in out.strip().splitlines()[1:]}
    assert "SDXL" in rows["porsche_911"] and addnet_hash(folder / "porsche_911.safetensors") in rows["porsche_911"]
    assert rows["porsche_911"].endswith("porsche 911, red car, road")
    assert "unknown" in rows["plain"] and rows["plain"].endswith("-")


def test_loras_with_none_says_where_to_put_them(tmp_path, capsys):
    code, out, _ = run(capsys, "loras", "--home", str(tmp_path))
    assert code == 0 and "No LoRAs of your own yet. Put .safetensors LoRA files into" in out
    assert "balloon" in out and "(built in, for the demo model)" in out
