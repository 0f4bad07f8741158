"""A Flux model's parts found where users keep them: split files in Brushwork's, Forge's
and ComfyUI's folders, or one all-in-one file; listed once with what is missing."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from brushwork.catalog import checkpoint_label, flux_parts
from brushwork.inventory import installed_models
from brushwork.models.errors import ModelFileError
from brushwork.models.flux import bfl_state
from brushwork.models.save import vae_ldm_state
from brushwork.paths import DataHome

from test_flux_model import spec_of, tiny_transformer

CONTEXT, POOLED = 48, 40  # the tiny transformer's T5 and CLIP-L widths


def t5_state(width=CONTEXT, prefix=""):
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(0)
    model = T5EncoderModel(T5Config(vocab_size=64, d_model=width, d_kv=8, d_ff=64, num_layers=1, num_heads=2, feed_forward_proj="gated-gelu"))
    return {prefix + k: v.clone().contiguous() for k, v in model.state_dict().items()}


def clip_state(width=POOLED, prefix=""):
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    model = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=width, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=77))
    state = {k if k.startswith("text_model.") else "text_model." + k: v for k, v in model.state_dict().items() if not k.endswith("position_ids")}
    return {prefix + k: v.clone().contiguous() for k, v in state.items()}


def ae_state(prefix=""):
    from diffusers import AutoencoderKL

    vae = AutoencoderKL(block_out_channels=(32,), down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",), latent_channels=16,
                        norm_num_groups=32, layers_per_block=1, use_quant_conv=False, use_post_quant_conv=False)
    return {k: v.contiguous() for k, v in vae_ldm_state(vae, 1, prefix).items()}


@pytest.fixture(scope="module")
def transformer_state():
    return bfl_state(spec_of(), tiny_transformer(True).state_dict())


def put(path, state):
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
    return path


def test_split_files_in_brushwork_folders_are_found_and_listed_once(tmp_path, transformer_state):
    home = DataHome(tmp_path / "home")
    flux = put(home.root / "models/checkpoints/flux1-dev.safetensors", transformer_state)
    put(home.root / "models/vae/ae.safetensors", ae_state())
    put(home.root / "models/text_encoders/t5xxl_fp16.safetensors", t5_state())
    put(home.root / "models/text_encoders/t5xxl_wide.safetensors", t5_state(width=64))  # another model's T5: not taken
    put(home.root / "models/text_encoders/clip_l.safetensors", clip_state())
    parts = flux_parts(home, flux)
    assert parts.missing() == [] and not parts.all_in_one
    assert (parts.vae.path.name, parts.clip_l.path.name, parts.t5xxl.path.name) == ("ae.safetensors", "clip_l.safetensors", "t5xxl_fp16.safetensors")
    assert (parts.vae.prefix, parts.clip_l.prefix, parts.t5xxl.prefix) == ("", "", "")
    parts.require()  # nothing missing: no error
    label = "Flux.1 dev (vae: ae.safetensors, clip_l: clip_l.safetensors, t5xxl: t5xxl_fp16.safetensors)"
    assert checkpoint_label(home, flux) == label
    checkpoints = [m for m in installed_models(home, ("checkpoint",)) if m.name != "demo"]
    assert [(m.name, m.family) for m in checkpoints] == [("flux1-dev", label)]


def test_a_missing_part_is_named_with_the_file_to_get_and_where_it_goes(tmp_path, transformer_state):
    home = DataHome(tmp_path / "home")
    flux = put(home.root / "models/checkpoints/flux1-dev.safetensors", transformer_state)
    put(home.root / "models/vae/ae.safetensors", ae_state())
    put(home.root / "models/text_encoders/clip_l.safetensors", clip_state())
    parts = flux_parts(home, flux)
    assert parts.missing() == ["t5xxl"]
    assert checkpoint_label(home, flux) == "Flux.1 dev (vae: ae.safetensors, clip_l: clip_l.safetensors); missing t5xxl"
    with pytest.raises(ModelFileError, match=r"flux1-dev.safetensors is a Flux.1 dev transformer on its own.*t5xxl \(the T5-XXL text encoder\): put t5xxl_fp16.safetensors or t5xxl_fp8_e4m3fn.safetensors in models/text_encoders"):
        parts.require()


def test_comfyui_folder_names_and_a_schnell_transformer(tmp_path, transformer_state):
    home = DataHome(tmp_path / "home")
    schnell = {k: v for k, v in transformer_state.items() if not k.startswith("guidance_in.")}
    flux = put(home.root / "models/unet/flux1-schnell.safetensors", schnell)
    put(home.root / "models/vae/flux_ae.safetensors", ae_state())
    put(home.root / "models/clip/t5xxl_fp8_e4m3fn.safetensors", {k: v.to(torch.float8_e4m3fn) if v.ndim == 2 else v for k, v in t5_state().items()})
    put(home.root / "models/clip/clip_l.safetensors", clip_state())
    parts = flux_parts(home, flux)
    assert parts.spec.variant == "schnell" and parts.missing() == []
    assert parts.t5xxl.path.parent.name == "clip"


def test_an_all_in_one_checkpoint_holds_every_part(tmp_path, transformer_state):
    home = DataHome(tmp_path / "home")
    state = {"model.diffusion_model." + k: v for k, v in transformer_state.items()}
    state.update(ae_state("vae."))
    state.update(t5_state(prefix="text_encoders.t5xxl.transformer."))
    state.update(clip_state(prefix="text_encoders.clip_l.transformer."))
    flux = put(home.root / "models/checkpoints/flux-aio.safetensors", state)
    parts = flux_parts(home, flux)
    assert parts.all_in_one and parts.missing() == []
    assert (parts.vae.prefix, parts.clip_l.prefix, parts.t5xxl.prefix) == ("vae.", "text_encoders.clip_l.transformer.", "text_encoders.t5xxl.transformer.")
    assert checkpoint_label(home, flux) == "Flux.1 dev (all in one file)"


def test_an_sd_checkpoint_is_no_flux_model(tiny_home):
    home = DataHome(tiny_home)
    sd = next(p for p in (tiny_home / "models" / "checkpoints").iterdir() if p.suffix == ".safetensors")
    assert flux_parts(home, sd) is None


@pytest.mark.parametrize("layout", ["split", "all in one"])
def test_the_whole_model_loads_from_its_parts(tmp_path, layout):
    from brushwork.models.flux_load import load_flux

    source = tiny_transformer(True)
    transformer = bfl_state(spec_of(), source.state_dict())
    home = DataHome(tmp_path / "home")
    t5, clip, ae = t5_state(), clip_state(), ae_state()
    if layout == "split":
        flux = put(home.root / "models/checkpoints/flux1-dev.safetensors", transformer)
        put(home.root / "models/vae/ae.safetensors", ae)
        put(home.root / "models/text_encoders/t5xxl_fp16.safetensors", {k: v.half() for k, v in t5.items()})
        put(home.root / "models/text_encoders/clip_l.safetensors", clip)
    else:
        state = {"model.diffusion_model." + k: v for k, v in transformer.items()}
        state.update({"vae." + k: v for k, v in ae.items()})
        state.update({"text_encoders.t5xxl.transformer." + k: v.half() for k, v in t5.items()})
        state.update({"text_encoders.clip_l.transformer." + k: v for k, v in clip.items()})
        flux = put(home.root / "models/checkpoints/flux-aio.safetensors", state)
    nets = load_flux(flux_parts(home, flux), torch.float32, torch.device("cpu"))
    assert all(torch.equal(p, source.state_dict()[n]) for n, p in nets.unet.state_dict().items())
    assert torch.equal(nets.text_encoders[1].encoder.block[0].layer[0].SelfAttention.q.weight, t5["encoder.block.0.layer.0.SelfAttention.q.weight"].half().float())
    assert torch.equal(nets.text_encoders[0].get_input_embeddings().weight, clip["text_model.embeddings.token_embedding.weight"])
    assert nets.vae.config.latent_channels == 16 and nets.vae.config.shift_factor == pytest.approx(0.1159)


def test_loading_with_a_part_missing_names_it(tmp_path, transformer_state):
    from brushwork.models.flux_load import load_flux

    home = DataHome(tmp_path / "home")
    flux = put(home.root / "models/checkpoints/flux1-dev.safetensors", transformer_state)
    with pytest.raises(ModelFileError, match=r"ae \(the autoencoder\): put ae.safetensors in models/vae.*clip_l.*t5xxl"):
        load_flux(flux_parts(home, flux), torch.float32, torch.device("cpu"))


def test_brushwork_models_lists_the_split_model_once_and_generate_names_the_missing_part(tmp_path, transformer_state, capsys):
    from brushwork.cli import main

    home = tmp_path / "home"
    put(home / "models/checkpoints/flux1-dev.safetensors", transformer_state)
    put(home / "models/vae/ae.safetensors", ae_state())
    put(home / "models/text_encoders/clip_l.safetensors", clip_state())
    assert main(["models", "--home", str(home), "--no-hash"]) == 0
    lines = capsys.readouterr().out.splitlines()
    flux = [ln for ln in lines if ln.startswith("flux1-dev ")]
    assert len(flux) == 1 and "Flux.1 dev (vae: ae.safetensors, clip_l: clip_l.safetensors); missing t5xxl" in flux[0]
    assert not any(ln.startswith(("ae ", "clip_l ")) for ln in lines)  # the parts are not checkpoints
    assert lines[0].index("SIZE") > lines[0].index("FAMILY") + len("Flux.1 dev (vae: ae.safetensors, clip_l: clip_l.safetensors); missing t5xxl")
    assert main(["generate", "a car", "--model", "flux1-dev", "--home", str(home)]) != 0
    err = capsys.readouterr().err  # generating needs every part: the missing one is named with where it goes
    assert "flux1-dev.safetensors is a Flux.1 dev transformer on its own" in err and "t5xxl" in err and "models/text_encoders" in err and "clip_l" not in err.split("did not find")[1]
