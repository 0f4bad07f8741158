"""A VAE file on its own (models/vae) in each layout it comes in, read strictly into
the checkpoint's VAE architecture: the weights are the file's, bit for bit."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from brushwork.models import families, save
from brushwork.models.errors import ModelFileError
from brushwork.models.vae_file import load_vae_file, vae_layout


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    d = tmp_path_factory.mktemp("vae")
    spec = families.tiny("sd1")
    nets = save.random_networks(spec, seed=3)
    ckpt = save.save_checkpoint(d / "c.safetensors", spec, nets, dtype=torch.float32)
    tensors = load_file(str(ckpt))
    original = {k[len("first_stage_model."):]: v for k, v in tensors.items() if k.startswith("first_stage_model.")}
    save_file(original, str(d / "original.safetensors"))
    save_file({"first_stage_model." + k: v for k, v in original.items()}, str(d / "prefixed.safetensors"))
    save_file({k: v.contiguous() for k, v in nets.vae.state_dict().items()}, str(d / "diffusers.safetensors"))
    with_extra = dict(original, **{"model_ema.decay": torch.tensor(0.99)})
    save_file(with_extra, str(d / "extra.safetensors"))
    return d, spec, nets.vae.state_dict()


@pytest.mark.parametrize("layout", ["original", "prefixed", "diffusers", "extra"])
def test_each_layout_loads_the_files_weights_exactly(made, layout):
    d, spec, want = made
    vae = load_vae_file(d / f"{layout}.safetensors", spec, torch.float32, torch.device("cpu"))
    got = vae.state_dict()
    assert set(got) == set(want)
    assert all(torch.equal(got[k], want[k].to(torch.float32)) for k in want)
    assert vae_layout(load_file(str(d / f"{layout}.safetensors"))) == {"extra": "original"}.get(layout, layout)


def test_other_files_are_refused_with_what_they_are(made, tmp_path):
    d, spec, _ = made
    with pytest.raises(ModelFileError, match="whole checkpoint"):
        load_vae_file(d / "c.safetensors", spec, torch.float32, torch.device("cpu"))
    lora = tmp_path / "l.safetensors"
    save_file({"lora_unet_x.lora_up.weight": torch.zeros(2, 2)}, str(lora))
    with pytest.raises(ModelFileError, match="LoRA"):
        load_vae_file(lora, spec, torch.float32, torch.device("cpu"))
    # a 16-channel VAE (SD3/Flux style) for a 4-channel checkpoint
    original = load_file(str(d / "original.safetensors"))
    w = original["decoder.conv_in.weight"]
    original["decoder.conv_in.weight"] = torch.zeros(w.shape[0], 16, *w.shape[2:])
    wide = tmp_path / "flux_ae.safetensors"
    save_file(original, str(wide))
    with pytest.raises(ModelFileError, match="16-channel"):
        load_vae_file(wide, spec, torch.float32, torch.device("cpu"))
    # a missing weight: incomplete, named
    original = load_file(str(d / "original.safetensors"))
    original.pop("encoder.conv_out.bias")
    cut = tmp_path / "cut.safetensors"
    save_file(original, str(cut))
    with pytest.raises(ModelFileError, match="encoder.conv_out.bias"):
        load_vae_file(cut, spec, torch.float32, torch.device("cpu"))
