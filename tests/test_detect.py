"""Architecture detection from names and shapes only (shape stand-ins, no weights)."""
import pytest
import torch

from brushwork.models import families, save
from brushwork.models.detect import detect
from brushwork.models.errors import UnsupportedModel


def shapes_of(spec):
    nets = save.random_networks(spec, device="meta")
    return {k: tuple(v.shape) for k, v in save.ldm_state_dict(spec, nets).items()}


@pytest.fixture(scope="module")
def real_shapes():
    return {name: shapes_of(fn()) for name, fn in families.REFERENCE.items()}


def test_real_sd15_shapes(real_shapes):
    spec = detect(real_shapes["sd15"])
    assert spec == families.sd15()
    assert (spec.family, spec.prediction, spec.resolution) == ("sd1", "epsilon", 512)
    assert spec.unet.heads == (8, 8, 8, 8) and spec.unet.context_dim == 768 and not spec.unet.linear_projection


def test_real_sd21_shapes_v_and_eps_told_apart(real_shapes):
    v = detect(real_shapes["sd21_v"], {"modelspec.prediction_type": "v"})
    assert v == families.sd21_v() and v.resolution == 768 and v.label == "SD 2.x (v-prediction)"
    eps = detect(real_shapes["sd21_v"], {"modelspec.prediction_type": "epsilon"})
    assert (eps.prediction, eps.resolution) == ("epsilon", 512)
    assert eps.unet.heads == (5, 10, 20, 20)


def test_sd2_prediction_heuristic_reads_one_norm_bias(real_shapes):
    key = "model.diffusion_model.output_blocks.11.1.transformer_blocks.0.norm1.bias"
    g = torch.Generator().manual_seed(0)
    wide = lambda k: torch.randn(320, generator=g) * 0.2  # noqa: E731
    narrow = lambda k: torch.randn(320, generator=g) * 0.01  # noqa: E731
    assert detect(real_shapes["sd21_v"], {}, wide).prediction == "v_prediction"
    assert detect(real_shapes["sd21_v"], {}, narrow).prediction == "epsilon"
    marked = dict(real_shapes["sd21_v"], v_pred=())
    assert detect(marked, {}, narrow).prediction == "v_prediction"
    assert key in real_shapes["sd21_v"]


def test_real_sdxl_shapes(real_shapes):
    spec = detect(real_shapes["sdxl_base"])
    assert spec == families.sdxl_base()
    assert spec.unet.transformer_depth == (0, 2, 10) and spec.unet.adm_in_channels == 2816
    assert spec.unet.addition_time_embed_dim == 256 and spec.vae.scaling_factor == 0.13025
    assert [e.width for e in spec.text_encoders] == [768, 1280]


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_tiny_widths_are_inferred_from_shapes(family):
    spec = families.tiny(family, "v_prediction" if family == "sd2" else "epsilon")
    meta = {"modelspec.prediction_type": "v"} if family == "sd2" else {}
    assert detect(shapes_of(spec), meta) == spec


def test_ema_copy_is_noticed(real_shapes):
    shapes = dict(real_shapes["sd15"])
    shapes["model_ema.diffusion_modelinput_blocks00weight"] = (320, 4, 3, 3)
    assert detect(shapes).ema and not detect(real_shapes["sd15"]).ema


def _with(shapes, **extra):
    out = dict(shapes)
    out.update(extra)
    return out


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda s: {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": (4, 320), "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": (320, 4)}, "this is a LoRA"),
        (lambda s: {"model.diffusion_model.x_embedder.proj.weight": (1536, 16, 2, 2), "model.diffusion_model.joint_blocks.0.context_block.attn.qkv.weight": (4608, 1536)}, "Stable Diffusion 3"),
        (lambda s: {"double_blocks.0.img_attn.norm.key_norm.scale": (128,), "img_in.weight": (3072, 64)}, "Flux"),
        (lambda s: {k: v for k, v in s["sdxl_base"].items() if not k.startswith("conditioner.embedders.0.") and not k.startswith("conditioner.embedders.1.")} | {"conditioner.embedders.0.model.ln_final.weight": (1280,)}, "SDXL refiner"),
        (lambda s: {k.removeprefix("first_stage_model."): v for k, v in s["sd15"].items() if k.startswith("first_stage_model.")}, "VAE file"),
        (lambda s: {"emb_params": (2, 768)}, "textual-inversion embedding"),
        (lambda s: _with(s["sd15"], **{"model.diffusion_model.input_blocks.0.0.weight": (320, 8, 3, 3)}), "InstructPix2Pix"),
        (lambda s: _with(s["sd15"], **{"model.diffusion_model.input_blocks.0.0.weight": (320, 7, 3, 3)}), "an inpainting UNet would take 9"),
        (lambda s: {k: v for k, v in s["sd15"].items() if not k.startswith("first_stage_model.")}, "no VAE"),
        (lambda s: {k: v for k, v in s["sd15"].items() if not k.startswith("cond_stage_model.")}, "no text encoder"),
        (lambda s: {"conv_in.weight": (320, 4, 3, 3), "down_blocks.0.resnets.0.conv1.weight": (320, 320, 3, 3)}, "diffusers layout"),
        (lambda s: {}, "no tensors"),
        (lambda s: {"foo.weight": (3, 3)}, "no Stable Diffusion UNet"),
    ],
)
def test_other_files_get_a_clear_error(real_shapes, make, expected):
    with pytest.raises(UnsupportedModel, match=expected):
        detect(make(real_shapes), name="some.safetensors")


@pytest.mark.parametrize("name, family", [("sd15", "SD 1.x inpainting"), ("sd21_v", "SD 2.x (v-prediction) inpainting"), ("sdxl_base", "SDXL inpainting")])
def test_inpainting_checkpoints_are_recognised_from_their_9_channel_unet(real_shapes, name, family):
    """sd-v1-5-inpainting, SD 2 inpainting and SDXL inpainting: the UNet's first
    convolution takes 4 latent + 1 mask + 4 masked-picture channels."""
    key = "model.diffusion_model.input_blocks.0.0.weight"
    shapes = dict(real_shapes[name])
    out = shapes[key][0]
    spec = detect(_with(shapes, **{key: (out, 9, 3, 3)}))
    assert spec.inpainting and spec.unet.in_channels == 9 and spec.vae.latent_channels == 4
    assert spec.label == family
    assert not detect(real_shapes[name]).inpainting


def test_mixed_parts_are_refused(real_shapes):
    shapes = dict(real_shapes["sd15"])
    for k in [k for k in shapes if k.startswith("cond_stage_model.")]:
        del shapes[k]
    shapes.update({k: v for k, v in real_shapes["sd21_v"].items() if k.startswith("cond_stage_model.")})
    with pytest.raises(UnsupportedModel, match="width 768 but its text encoder gives 1024"):
        detect(shapes)
