"""Existing AUTOMATIC1111/Forge and ComfyUI installs used in place: detected, linked in
HOME/links.json, listed and generated with, never copied or changed."""
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from brushwork import Engine
from brushwork.cli import main
from brushwork.engine import GenerationRequest
from brushwork.links import LinkError, add_link, detect, linked_folders, parse_extra_model_paths, read_links, remove_link
from brushwork.paths import DataHome

LORA_KEY = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"


def run(capsys, *args):
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def tiny_lora(path: Path) -> Path:
    """A LoRA that fits the tiny SD 1.x checkpoint (one attention projection)."""
    g = torch.Generator().manual_seed(3)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({f"{LORA_KEY}.lora_down.weight": torch.randn(4, 32, generator=g) * 0.1, f"{LORA_KEY}.lora_up.weight": torch.randn(32, 4, generator=g) * 0.1},
              str(path), metadata={"ss_base_model_version": "sd_v1"})
    return path


def snapshot(root: Path) -> dict:
    """Every file below ``root`` with its size and mtime: a linked install must never change."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


@pytest.fixture
def webui(tiny_home, tmp_path) -> Path:
    """An AUTOMATIC1111 webui folder with a checkpoint (in a subfolder), a LoRA, a LyCORIS, an embedding."""
    root = tmp_path / "stable-diffusion-webui"
    ck = root / "models" / "Stable-diffusion" / "sd15"
    ck.mkdir(parents=True)
    shutil.copy(tiny_home / "models" / "checkpoints" / "tiny-sd1.safetensors", ck / "webui-model.safetensors")
    (root / "models" / "Stable-diffusion" / "Put Stable Diffusion checkpoints here.txt").write_text("")
    tiny_lora(root / "models" / "Lora" / "linkedlora.safetensors")
    tiny_lora(root / "models" / "LyCORIS" / "lyco.safetensors")
    (root / "models" / "VAE").mkdir(parents=True)
    (root / "embeddings").mkdir()
    (root / "embeddings" / "easyneg.pt").write_bytes(b"x")
    (root / "webui.py").write_text("")
    return root


@pytest.fixture
def fresh(tmp_path) -> DataHome:
    return DataHome.resolve(tmp_path / "bwhome")


def test_an_a1111_folder_is_detected_with_its_folders(webui):
    link = detect(webui)
    assert link.layout == "a1111" and link.path == webui.resolve()
    assert link.existing("checkpoints") == [webui / "models" / "Stable-diffusion"]
    assert link.existing("loras") == [webui / "models" / "Lora", webui / "models" / "LyCORIS"]
    assert link.existing("embeddings") == [webui / "embeddings"] and link.existing("vae") == [webui / "models" / "VAE"]
    assert link.existing("upscalers") == []  # A1111's ESRGAN folder is not there yet; it would count once made
    assert webui / "models" / "ESRGAN" in link.folders["upscalers"]


def test_linking_an_a1111_install_lists_it_and_generates_without_copying(webui, fresh, capsys):
    before = snapshot(webui)
    code, out, err = run(capsys, "models", "link", str(webui), "--home", str(fresh.root))
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == f"linked the AUTOMATIC1111/Forge install at {webui} (nothing there is copied or changed):"
    counts = {line.split()[0]: line.split()[1:] for line in lines[1:6]}
    assert counts["checkpoints"] == ["1", str(webui / "models" / "Stable-diffusion")]
    assert counts["LoRAs"] == ["2", f"{webui / 'models' / 'Lora'},", str(webui / "models" / "LyCORIS")]
    assert counts["embeddings"] == ["1", str(webui / "embeddings")]
    assert counts["upscalers"] == ["0", "(no", "such", "folder)"]
    stored = json.loads((fresh.root / "links.json").read_text())
    assert stored["version"] == 1 and stored["links"][0]["path"] == str(webui) and stored["links"][0]["layout"] == "a1111"

    # Brushwork's own folders first, then the linked ones
    own = ("checkpoints", "Stable-diffusion", "diffusion_models", "unet")  # the last two: ComfyUI's names for transformer-only files (Flux)
    assert fresh.checkpoint_dirs[:4] == [fresh.root / "models" / n for n in own]
    assert fresh.checkpoint_dirs[4:] == [webui / "models" / "Stable-diffusion"]
    assert fresh.lora_dirs[2:] == [webui / "models" / "Lora", webui / "models" / "LyCORIS"]
    assert fresh.embedding_dirs[2:] == [webui / "embeddings"]

    code, out, _ = run(capsys, "models", "--home", str(fresh.root), "--no-hash")
    row = next(line for line in out.splitlines() if line.startswith("sd15/webui-model"))
    assert "SD 1.x" in row and row.endswith(f"(linked: {webui})")
    assert f"Linked:             {webui} (AUTOMATIC1111/Forge install)" in out
    code, out, _ = run(capsys, "loras", "--home", str(fresh.root))
    rows = {line.split()[0]: line for line in out.splitlines()[1:] if line.strip()}
    assert rows["linkedlora"].endswith(f"(linked: {webui})") and "SD 1.x" in rows["linkedlora"] and "lyco" in rows

    engine = Engine(fresh, device="cpu")
    loaded = engine.load("sd15/webui-model")
    assert loaded.path == webui / "models" / "Stable-diffusion" / "sd15" / "webui-model.safetensors"
    [img] = engine.txt2img(GenerationRequest("a barn <lora:linkedlora:1>", seed=3, steps=1, width=64, height=64))
    assert img.image.size == (64, 64)
    assert "Model: webui-model," in img.infotext and "Lora hashes: \"linkedlora: " in img.infotext
    assert snapshot(webui) == before  # nothing copied into, changed in or added to the install
    assert list((fresh.root / "models" / "checkpoints").iterdir()) == []  # nor copied into the home
    assert not any(p.suffix == ".safetensors" for p in fresh.root.rglob("*"))


def test_create_makes_only_brushworks_own_folders(webui, fresh):
    add_link(fresh, webui)
    shutil.rmtree(webui / "models" / "VAE")
    before = snapshot(webui)
    fresh.create()
    assert (fresh.root / "models" / "checkpoints").is_dir() and (fresh.root / "models" / "vae").is_dir()
    assert snapshot(webui) == before and not (webui / "models" / "VAE").exists()


def test_a_vanished_install_is_skipped_without_a_crash(webui, fresh, capsys):
    add_link(fresh, webui)
    moved = webui.with_name("gone")
    webui.rename(moved)
    assert fresh.checkpoint_dirs == fresh.own_dirs("checkpoints") and fresh.lora_dirs == fresh.own_dirs("loras")
    code, out, _ = run(capsys, "models", "--home", str(fresh.root), "--no-hash")
    assert code == 0 and "webui-model" not in out
    assert f"Linked:             {webui} (AUTOMATIC1111/Forge install) - not found now: brushwork models unlink it, or reconnect its drive" in out
    moved.rename(webui)  # the drive is back
    assert fresh.checkpoint_dirs[-1] == webui / "models" / "Stable-diffusion"


def test_unlink(webui, fresh, capsys):
    add_link(fresh, webui)
    code, out, _ = run(capsys, "models", "unlink", str(webui), "--home", str(fresh.root))
    assert code == 0 and out.startswith(f"unlinked {webui}; its files are untouched")
    assert read_links(fresh) == [] and fresh.checkpoint_dirs == fresh.own_dirs("checkpoints")
    assert (webui / "models" / "Stable-diffusion" / "sd15" / "webui-model.safetensors").is_file()
    code, _, err = run(capsys, "models", "unlink", str(webui), "--home", str(fresh.root))
    assert code == 2 and f"error: {webui} is not linked. Nothing is linked." in err


def test_linking_twice_refreshes_and_the_links_are_listed(webui, fresh, capsys):
    assert add_link(fresh, webui)[1] is False
    (webui / "models" / "ESRGAN").mkdir()
    code, out, _ = run(capsys, "models", "link", str(webui), "--home", str(fresh.root))
    assert code == 0 and out.startswith("refreshed the link to the AUTOMATIC1111/Forge install")
    assert len(read_links(fresh)) == 1 and fresh.upscaler_dirs[-1] == webui / "models" / "ESRGAN"
    code, out, _ = run(capsys, "models", "link", "--home", str(fresh.root))
    assert code == 0 and out.splitlines()[0] == f"{webui} (AUTOMATIC1111/Forge install)"


COMFY_YAML = """\
#Rename this to extra_model_paths.yaml and ComfyUI will load it
a111:
    base_path: {webui}

    checkpoints: models/Stable-diffusion
    configs: models/Stable-diffusion
    vae: models/VAE
    loras: |
         models/Lora
         models/LyCORIS
    upscale_models: |
                  models/ESRGAN
                  models/RealESRGAN
                  models/SwinIR
    embeddings: embeddings
    hypernetworks: models/hypernetworks
    controlnet: models/ControlNet

shared:
    base_path: ../shared-models
    is_default: true
    checkpoints: checkpoints/
    loras: loras
"""


@pytest.fixture
def comfy(tiny_home, tmp_path, webui) -> Path:
    root = tmp_path / "ComfyUI"
    for sub in ("checkpoints", "loras", "vae", "embeddings", "upscale_models", "controlnet"):
        (root / "models" / sub).mkdir(parents=True)
    shutil.copy(tiny_home / "models" / "checkpoints" / "tiny-sd2.safetensors", root / "models" / "checkpoints" / "comfy-model.safetensors")
    (root / "models" / "checkpoints" / "put_checkpoints_here").write_text("")
    (root / "main.py").write_text("")
    (tmp_path / "shared-models" / "checkpoints").mkdir(parents=True)
    shutil.copy(tiny_home / "models" / "checkpoints" / "tiny-sdxl.safetensors", tmp_path / "shared-models" / "checkpoints" / "shared-xl.safetensors")
    (root / "extra_model_paths.yaml").write_text(COMFY_YAML.format(webui=webui))
    return root


def test_extra_model_paths_yaml_is_read_like_comfyui(comfy, webui, tmp_path):
    found = parse_extra_model_paths(comfy / "extra_model_paths.yaml")
    assert found["checkpoints"] == (webui / "models" / "Stable-diffusion", tmp_path / "shared-models" / "checkpoints")
    assert found["loras"] == (webui / "models" / "Lora", webui / "models" / "LyCORIS", tmp_path / "shared-models" / "loras")
    assert found["upscalers"] == tuple(webui / "models" / n for n in ("ESRGAN", "RealESRGAN", "SwinIR"))
    assert found["embeddings"] == (webui / "embeddings",) and found["vae"] == (webui / "models" / "VAE",)
    assert set(found) == {"checkpoints", "loras", "vae", "embeddings", "upscalers"}  # controlnet, configs ... are not Brushwork's


def test_a_comfyui_folder_with_its_yaml(comfy, webui, tmp_path, fresh, capsys):
    code, out, err = run(capsys, "models", "link", str(comfy), "--home", str(fresh.root))
    assert code == 0, err
    assert out.splitlines()[0] == f"linked the ComfyUI install at {comfy} (nothing there is copied or changed):"
    assert out.splitlines()[1].split()[:2] == ["checkpoints", "3"]
    assert fresh.checkpoint_dirs[4:] == [comfy / "models" / "checkpoints", webui / "models" / "Stable-diffusion", tmp_path / "shared-models" / "checkpoints"]
    assert fresh.upscaler_dirs[-1] == comfy / "models" / "upscale_models"
    code, out, _ = run(capsys, "models", "--home", str(fresh.root), "--no-hash")
    names = [line.split()[0] for line in out.splitlines()[1:] if line.strip() and not line.startswith(("Checkpoints", "LoRA", "Linked"))]
    assert names[:3] == ["comfy-model", "sd15/webui-model", "shared-xl"]
    loaded = Engine(fresh, device="cpu").load("shared-xl")
    assert loaded.spec.family == "sdxl"


def test_the_yaml_file_itself_can_be_linked(comfy, webui, fresh, capsys):
    code, out, _ = run(capsys, "models", "link", str(comfy / "extra_model_paths.yaml"), "--home", str(fresh.root))
    assert code == 0 and out.startswith(f"linked the ComfyUI extra_model_paths.yaml at {comfy / 'extra_model_paths.yaml'}")
    assert comfy / "models" / "checkpoints" not in fresh.checkpoint_dirs  # only what the yaml names
    assert webui / "models" / "Stable-diffusion" in fresh.checkpoint_dirs


def test_the_portable_comfyui_folder_works_too(comfy, tmp_path):
    outer = tmp_path / "ComfyUI_windows_portable"
    outer.mkdir()
    comfy.rename(outer / "ComfyUI")
    assert detect(outer).path == outer / "ComfyUI"


@pytest.mark.parametrize("make, words", [
    (lambda t: t / "nowhere", "does not exist. brushwork models link takes the folder of an AUTOMATIC1111 or Forge webui (the one holding models/Stable-diffusion)"),
    (lambda t: (t / "empty").mkdir() or t / "empty", "is not an AUTOMATIC1111, Forge or ComfyUI install (no models/Stable-diffusion or models/checkpoints folder in it)"),
    (lambda t: (t / "notes.txt").write_text("x") and t / "notes.txt", "is a file, not an install's folder"),
    (lambda t: (t / "bad.yaml").write_text("a: [unclosed") and t / "bad.yaml", "is not valid YAML at line 1"),
    (lambda t: (t / "other.yaml").write_text("comfyui:\n  base_path: /x\n  controlnet: cn\n") and t / "other.yaml", "names no checkpoints, loras, vae, embeddings or upscale_models folders"),
])
def test_a_bogus_path_is_refused_with_what_to_give(tmp_path, fresh, capsys, make, words):
    path = make(tmp_path)
    code, _, err = run(capsys, "models", "link", str(path), "--home", str(fresh.root))
    assert code == 2 and err.startswith("error: ") and words in err
    assert not (fresh.root / "links.json").exists()


def test_a_folder_inside_an_install_points_at_the_install(webui, fresh):
    for inner in (webui / "models", webui / "models" / "Stable-diffusion"):
        with pytest.raises(LinkError) as exc:
            detect(inner)
        assert str(exc.value) == f"{inner} is a folder inside the AUTOMATIC1111/Forge install at {webui}; link the install itself: brushwork models link {webui}"


def test_a_plain_folder_of_checkpoints_gets_the_hand_edit_hint(tiny_home, tmp_path):
    loose = tmp_path / "loose"
    loose.mkdir()
    shutil.copy(tiny_home / "models" / "checkpoints" / "tiny-sd1.safetensors", loose)
    with pytest.raises(LinkError, match="It holds checkpoint files directly: to use such a plain folder, add it to HOME/links.json by hand"):
        detect(loose)


def test_the_data_home_itself_is_refused(fresh):
    fresh.create()
    with pytest.raises(LinkError, match="is Brushwork's own data home"):
        add_link(fresh, fresh.root)


def test_hand_written_entries(webui, tiny_home, tmp_path, fresh):
    plain = tmp_path / "my-models"
    plain.mkdir()
    shutil.copy(tiny_home / "models" / "checkpoints" / "tiny-sd2.safetensors", plain / "plain.safetensors")
    fresh.root.mkdir(parents=True)
    (fresh.root / "links.json").write_text(json.dumps({"links": [str(webui), {"folders": {"checkpoints": str(plain), "loras": ["relative-loras"]}}]}))
    (fresh.root / "relative-loras").mkdir()
    assert fresh.checkpoint_dirs[4:] == [webui / "models" / "Stable-diffusion", plain]  # a path alone is detected
    assert fresh.lora_dirs[-1] == fresh.root / "relative-loras"  # relative: from the data home
    assert Engine(fresh, device="cpu").load("plain").spec.family == "sd2"


def test_a_damaged_links_file_breaks_no_lookup(fresh, capsys):
    fresh.root.mkdir(parents=True)
    (fresh.root / "links.json").write_text("{oops")
    assert fresh.checkpoint_dirs == fresh.own_dirs("checkpoints")
    assert linked_folders(fresh, "loras") == []
    with pytest.raises(LinkError, match="is not valid JSON .*fix it by hand, or delete it"):
        read_links(fresh)
    code, _, err = run(capsys, "models", "link", "--home", str(fresh.root))
    assert code == 2 and "links.json is not valid JSON" in err
    assert (fresh.root / "links.json").read_text() == "{oops"  # never overwritten


def test_the_links_file_is_reread_when_it_changes(webui, fresh):
    add_link(fresh, webui)
    assert webui / "models" / "Stable-diffusion" in fresh.checkpoint_dirs
    remove_link(fresh, webui)
    assert webui / "models" / "Stable-diffusion" not in fresh.checkpoint_dirs
    # equal homes stay equal and hashable whatever their links
    assert DataHome.resolve(fresh.root) == fresh and hash(DataHome.resolve(fresh.root)) == hash(fresh)


def test_an_own_checkpoint_wins_a_name_clash(webui, fresh, tiny_home, capsys):
    fresh.create()
    own = fresh.root / "models" / "checkpoints" / "sd15"
    own.mkdir()
    shutil.copy(tiny_home / "models" / "checkpoints" / "tiny-sd2.safetensors", own / "webui-model.safetensors")
    code, _, err = run(capsys, "models", "link", str(webui), "--home", str(fresh.root))
    assert code == 0 and "note: sd15/webui-model: a checkpoint of yours has the same name, and yours is used for that name" in err
    assert Engine(fresh, device="cpu").load("sd15/webui-model").spec.family == "sd2"
