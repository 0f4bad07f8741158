"""Every installed model of every kind, and removing one: to the data home's trash
with its sidecars, never deleted; built-in and linked files are refused."""
from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from safetensors.torch import save_file
import torch

from brushwork.inventory import InventoryError, find_installed, installed_models, move_to_trash, sidecars, where_is
from brushwork.paths import DataHome


def tiny_lora(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(4, 2), "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(2, 4)}, str(path))
    return path


def test_every_kind_is_listed_with_size_and_owner(home):
    h = DataHome.resolve(home)
    tiny_lora(h.lora_dirs[0] / "ink.safetensors")
    (h.vae_dirs[0]).mkdir(parents=True, exist_ok=True)
    save_file({"encoder.conv_in.weight": torch.zeros(1)}, str(h.vae_dirs[0] / "fix.safetensors"))
    rows = installed_models(h)
    kinds = {(m.kind, m.name): m for m in rows}
    assert ("checkpoint", "tiny-sd1") in kinds and ("lora", "ink") in kinds and ("vae", "fix") in kinds
    assert kinds[("checkpoint", "tiny-sd1")].family.startswith("SD 1")
    assert kinds[("checkpoint", "tiny-sd1")].size == (h.checkpoint_dirs[0] / "tiny-sd1.safetensors").stat().st_size
    assert kinds[("checkpoint", "tiny-sd1")].where == "own" and kinds[("checkpoint", "tiny-sd1")].removable
    demo = [m for m in rows if m.kind == "checkpoint" and m.name == "demo"]
    assert demo and demo[0].where == "built-in" and not demo[0].removable


def test_remove_moves_the_file_and_its_sidecars_to_the_trash(home):
    h = DataHome.resolve(home)
    lora = tiny_lora(h.lora_dirs[0] / "ink.safetensors")
    info = lora.with_name("ink.civitai.info")
    info.write_text('{"id": 1}')
    preview = lora.with_name("ink.preview.png")
    preview.write_bytes(b"\x89PNG fake")
    other = lora.with_name("inkwell.safetensors")  # a neighbour with a longer name is not a sidecar
    other.write_bytes(lora.read_bytes())
    assert sorted(p.name for p in sidecars(lora)) == ["ink.civitai.info", "ink.preview.png"]
    original = lora.read_bytes()
    moved = move_to_trash(h, find_installed(h, "lora", "ink"), today=dt.date(2026, 12, 2))
    trash = h.root / "trash" / "2026-12-02" / "lora"
    assert sorted(p.name for p in moved) == ["ink.civitai.info", "ink.preview.png", "ink.safetensors"]
    assert all(p.parent == trash for p in moved)
    assert (trash / "ink.safetensors").read_bytes() == original
    assert not lora.exists() and not info.exists() and not preview.exists() and other.exists()
    # a second file of the same name later: never overwrites what is in the trash
    tiny_lora(h.lora_dirs[0] / "ink.safetensors")
    again = move_to_trash(h, find_installed(h, "lora", "ink"), today=dt.date(2026, 12, 2))
    assert again[0].name == "ink (2).safetensors" and (trash / "ink.safetensors").read_bytes() == original


def test_built_in_and_linked_files_are_never_moved(home, tmp_path):
    h = DataHome.resolve(home)
    demo = find_installed(h, "checkpoint", "demo")
    with pytest.raises(InventoryError, match="built into Brushwork"):
        move_to_trash(h, demo)
    assert demo.path.is_file()
    outside = tmp_path / "elsewhere" / "x.safetensors"
    outside.parent.mkdir()
    outside.write_bytes(b"x")
    assert where_is(h, outside) == "linked"
    from brushwork.inventory import InstalledModel

    with pytest.raises(InventoryError, match="linked install"):
        move_to_trash(h, InstalledModel("checkpoint", "x", outside, 1, None, None, "linked"))
    assert outside.is_file()


def test_unknown_names_list_what_there_is(home):
    h = DataHome.resolve(home)
    with pytest.raises(InventoryError, match="tiny-sd1"):
        find_installed(h, "checkpoint", "nope")
