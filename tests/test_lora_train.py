"""brushwork train-lora: a kohya-format LoRA from a folder of captioned images."""

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from brushwork.cli import main
from brushwork.hashing import read_safetensors_header
from brushwork.lora import LoraStack


@pytest.fixture
def dataset(tmp_path):
    folder = tmp_path / "balloon"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(folder / f"img{i}.png")
        (folder / f"img{i}.txt").write_text("hot air balloon, sky" if i else "hot air balloon")
    (folder / "notes.md").write_text("ignored")
    return folder


def test_train_lora_writes_a_kohya_file_that_loads_back(home, dataset, capsys):
    code = main(["train-lora", str(dataset), "--model", "tiny-sd1", "--steps", "3", "--size", "64", "--home", str(home)])
    assert code == 0
    out = home / "models" / "loras" / "balloon.safetensors"
    assert str(out) in capsys.readouterr().out
    tensors = load_file(str(out))
    assert any(k.startswith("lora_unet_") and k.endswith(".lora_down.weight") for k in tensors)
    assert all(k.startswith("lora_unet_") for k in tensors)
    meta = read_safetensors_header(out)["__metadata__"]
    assert meta["ss_base_model_version"] == "sd_v1" and '"hot air balloon": 3' in meta["ss_tag_frequency"]
    from brushwork import Engine

    eng = Engine(home, device="cpu")
    m = eng.load("tiny-sd1")
    before = {k: v.clone() for k, v in m.networks.unet.state_dict().items()}
    stack = LoraStack()
    changed = stack.apply(m.spec, m.networks.unet, m.networks.text_encoders, out)
    assert changed == len([k for k in tensors if k.endswith(".lora_down.weight")])
    assert any(not torch.equal(v, before[k]) for k, v in m.networks.unet.state_dict().items())
    stack.restore()
    # training left the checkpoint's own weights untouched
    assert all(torch.equal(v, before[k]) for k, v in m.networks.unet.state_dict().items())


def test_locon_and_text_encoder_training_write_loadable_keys(home, dataset, tmp_path):
    out = tmp_path / "locon.safetensors"
    code = main(["train-lora", str(dataset), "--model", "tiny-sd1", "--steps", "2", "--size", "64", "--conv-rank", "2", "--train-text-encoder", "--flip", "--out", str(out), "--home", str(home)])
    assert code == 0
    tensors = load_file(str(out))
    conv = [k for k in tensors if "_resnets_" in k and k.endswith("conv1.lora_down.weight")]
    assert conv and all(tensors[k].shape[0] == 2 and tensors[k].dim() == 4 and tensors[k].shape[-1] == 3 for k in conv)
    assert all(tensors[k.replace("lora_down", "lora_up")].shape[-2:] == (1, 1) for k in conv)
    te = [k for k in tensors if k.startswith("lora_te_text_model_encoder_layers_") and k.endswith(".lora_down.weight")]
    assert any("self_attn_q_proj" in k for k in te) and any("mlp_fc1" in k for k in te)
    meta = read_safetensors_header(out)["__metadata__"]
    assert '"conv_dim": "2"' in meta["ss_network_args"]
    from brushwork import Engine

    eng = Engine(home, device="cpu")
    m = eng.load("tiny-sd1")
    te_before = {k: v.clone() for k, v in m.networks.text_encoders[0].state_dict().items()}
    unet_before = {k: v.clone() for k, v in m.networks.unet.state_dict().items()}
    stack = LoraStack()
    changed = stack.apply(m.spec, m.networks.unet, m.networks.text_encoders, out)
    # every module in the file found its layer (up weights are non-zero after 2 Adam steps)
    assert changed == len([k for k in tensors if k.endswith(".lora_down.weight")])
    conv_key = next(k for k in unet_before if "resnets.0.conv1.weight" in k)
    assert not torch.equal(m.networks.unet.state_dict()[conv_key], unet_before[conv_key])
    assert any(not torch.equal(v, te_before[k]) for k, v in m.networks.text_encoders[0].state_dict().items())
    stack.restore()
    assert all(torch.equal(v, te_before[k]) for k, v in m.networks.text_encoders[0].state_dict().items())


def test_sdxl_lora_training_writes_original_layout_names_that_load_back(home, dataset, tmp_path, capsys):
    out = tmp_path / "xl.safetensors"
    assert main(["train-lora", str(dataset), "--model", "tiny-sdxl", "--steps", "2", "--size", "64", "--conv-rank", "2", "--out", str(out), "--home", str(home)]) == 0
    tensors = load_file(str(out))
    downs = [k for k in tensors if k.endswith(".lora_down.weight")]
    assert downs and all(k.startswith(("lora_unet_input_blocks_", "lora_unet_middle_block_", "lora_unet_output_blocks_")) for k in downs)
    assert any("_transformer_blocks_0_attn2_to_k." in k for k in downs) and any("_in_layers_2." in k for k in downs)
    assert read_safetensors_header(out)["__metadata__"]["ss_base_model_version"] == "sdxl_base_v1-0"
    from brushwork import Engine

    m = Engine(home, device="cpu").load("tiny-sdxl")
    before = {k: v.clone() for k, v in m.networks.unet.state_dict().items()}
    stack = LoraStack()
    assert stack.apply(m.spec, m.networks.unet, m.networks.text_encoders, out) == len(downs)
    stack.restore()
    assert all(torch.equal(v, before[k]) for k, v in m.networks.unet.state_dict().items())
    assert main(["train-lora", str(dataset), "--model", "tiny-sdxl", "--train-text-encoder", "--out", str(tmp_path / "no.safetensors"), "--home", str(home)]) == 2
    assert "for SDXL, train the UNet only" in capsys.readouterr().err


def test_train_lora_refuses_to_overwrite_and_explains_bad_datasets(home, dataset, tmp_path, capsys):
    out = tmp_path / "mine.safetensors"
    out.write_bytes(b"keep")
    assert main(["train-lora", str(dataset), "--model", "tiny-sd1", "--out", str(out), "--home", str(home)]) == 2
    assert out.read_bytes() == b"keep" and "already exists" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["train-lora", str(empty), "--model", "tiny-sd1", "--home", str(home)]) == 2
    assert "has no images" in capsys.readouterr().err
