"""Flux.1 transformer files and flow sampling, on tiny random transformers written in
the real Black Forest Labs layout (the real key names, a few double and single blocks)."""
from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors.torch import save_file

from brushwork.conditioning import TextConditioning
from brushwork.models.errors import CorruptCheckpoint, UnsupportedModel
from brushwork.models.files import open_tensor_file
from brushwork.models.flux import FluxSpec, bfl_state, build_flux_transformer, detect_flux
from brushwork.sampling import flow
from brushwork.sampling.samplers import sample_euler

def tiny_config(heads: int = 2) -> dict:
    return dict(in_channels=64, num_layers=2, num_single_layers=2, attention_head_dim=32, num_attention_heads=heads,
                joint_attention_dim=48, pooled_projection_dim=40, axes_dims_rope=(4, 14, 14))


def tiny_transformer(guidance: bool = True, seed: int = 0, heads: int = 2):
    from diffusers import FluxTransformer2DModel

    model = FluxTransformer2DModel(**tiny_config(heads), guidance_embeds=guidance)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * (0.3 if p.ndim == 1 else 0.08 * (64 / p.shape[1]) ** 0.5))
    return model.eval()


def spec_of(guidance: bool = True, prefix: str = "", heads: int = 2) -> FluxSpec:
    return FluxSpec(prefix=prefix, hidden=32 * heads, head_dim=32, double=2, single=2, in_channels=64, context=48, pooled=40, mlp=128 * heads, guidance=guidance)


def write(path, model, prefix="", dtype=None, extra=None, guidance=True):
    state = bfl_state(spec_of(guidance, prefix), model.state_dict())
    if dtype is not None:
        state = {k: v.to(dtype) for k, v in state.items()}
    state.update(extra or {})
    save_file(state, str(path))
    return path


def header_dtypes(path) -> set[str]:
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        head = json.loads(f.read(n))
    return {v["dtype"] for k, v in head.items() if k != "__metadata__"}


def load(path, dtype=torch.float32):
    tf = open_tensor_file(path)
    try:
        spec = detect_flux(tf.shapes())
        return spec, build_flux_transformer(spec, tf, dtype, torch.device("cpu"))
    finally:
        tf.close()


def inputs(b=1, h=8, w=8, seed=1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(b, h * w // 4, 64, generator=gen)
    ctx = torch.randn(1, 7, 48, generator=gen)
    pooled = torch.randn(1, 40, generator=gen)
    return x, TextConditioning(ctx, pooled)


@pytest.fixture(scope="module")
def dev():
    return tiny_transformer(True)


@pytest.mark.parametrize("prefix", ["", "model.diffusion_model."])
def test_detection_reads_the_shape_and_the_variant(tmp_path, dev, prefix):
    spec, _ = load(write(tmp_path / "f.safetensors", dev, prefix))
    assert spec == spec_of(True, prefix) and spec.variant == "dev" and spec.heads == 2 and spec.rope_axes() == (4, 14, 14)
    schnell = detect_flux({k.removeprefix(prefix): v for k, v in open_tensor_file(tmp_path / "f.safetensors").shapes().items() if "guidance_in" not in k})
    assert schnell.variant == "schnell" and schnell.prefix == ""
    assert detect_flux({"model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3)}) is None


def test_full_size_flux_shapes_give_the_published_architecture():
    h = 3072
    shapes = {"img_in.weight": (h, 64), "txt_in.weight": (h, 4096), "vector_in.in_layer.weight": (h, 768), "guidance_in.in_layer.weight": (h, 256),
              "double_blocks.0.img_attn.norm.query_norm.scale": (128,), "double_blocks.0.img_mlp.0.weight": (4 * h, h)}
    shapes.update({f"double_blocks.{i}.img_attn.qkv.weight": (3 * h, h) for i in range(19)})
    shapes.update({f"single_blocks.{i}.linear1.weight": (3 * h + 4 * h, h) for i in range(38)})
    spec = detect_flux(shapes)
    cfg = spec.diffusers_config()
    assert (spec.double, spec.single, spec.heads, spec.label) == (19, 38, 24, "Flux.1 dev")
    assert cfg["axes_dims_rope"] == (16, 56, 56) and cfg["joint_attention_dim"] == 4096 and cfg["pooled_projection_dim"] == 768
    del shapes["double_blocks.7.img_attn.qkv.weight"]
    with pytest.raises(UnsupportedModel, match="block 7 is missing"):
        detect_flux(shapes)


def test_loading_is_exact(tmp_path, dev):
    """The round trip through a file in the BFL layout: the same tensors, the same output."""
    path = write(tmp_path / "f.safetensors", dev, "model.diffusion_model.")
    _, ours = load(path)
    source = dev.state_dict()
    assert set(ours.state_dict()) == set(source)
    for name, t in ours.state_dict().items():
        assert torch.equal(t, source[name]), name
    x, text = inputs()
    sig = torch.tensor(0.7)
    a = flow.FlowDenoiser(dev, text, 8, 8, guidance=3.5)(x, sig)
    b = flow.FlowDenoiser(ours, text, 8, 8, guidance=3.5)(x, sig)
    assert torch.equal(a, b)


def test_the_key_map_agrees_with_diffusers_own_converter_at_full_size():
    """Our table against an independent one (diffusers' single-file converter, which
    knows only the full 3072 width): every parameter of a full-width Flux dev with two
    blocks of each kind, as one column of distinct numbers (both only slice and join rows)."""
    from diffusers import FluxTransformer2DModel
    from diffusers.loaders.single_file_utils import convert_flux_transformer_checkpoint_to_diffusers

    from brushwork.models.flux import flux_sources

    spec = FluxSpec(prefix="model.diffusion_model.", hidden=3072, head_dim=128, double=2, single=2, in_channels=64, context=4096, pooled=768, mlp=12288, guidance=True)
    with torch.device("meta"):
        shapes = {n: p.shape for n, p in FluxTransformer2DModel(**spec.diffusers_config()).named_parameters()}
    gen = torch.Generator().manual_seed(0)
    state = {n: torch.randn((shape[0],) if len(shape) == 1 else (shape[0], 1), generator=gen) for n, shape in shapes.items()}
    stored = bfl_state(spec, state)
    theirs = convert_flux_transformer_checkpoint_to_diffusers(dict(stored))
    assert set(theirs) == set(state)
    sources = flux_sources(spec)
    for name, expected in state.items():
        src = sources[name]
        ours = stored[src.key] if src.transform is None else src.transform(stored[src.key])
        assert torch.equal(theirs[name], expected), name
        assert torch.equal(ours, expected), name


@pytest.mark.parametrize("dtype,stored,tol", [(torch.bfloat16, "BF16", 0.05), (torch.float16, "F16", 0.01), (torch.float8_e4m3fn, "F8_E4M3", 0.35), (torch.float8_e5m2, "F8_E5M2", 0.6)])
def test_16_and_8_bit_files_load_as_their_rounded_weights(tmp_path, dev, dtype, stored, tol):
    path = write(tmp_path / "f.safetensors", dev, dtype=dtype)
    assert header_dtypes(path) == {stored}
    _, ours = load(path)
    source = dev.state_dict()
    for name, t in ours.state_dict().items():
        assert t.dtype == torch.float32
        assert torch.equal(t, source[name].to(dtype).float()), name  # exactly the stored number, widened
    x, text = inputs()
    ref = flow.FlowDenoiser(dev, text, 8, 8, guidance=3.5)(x, torch.tensor(0.5))
    got = flow.FlowDenoiser(ours, text, 8, 8, guidance=3.5)(x, torch.tensor(0.5))
    err = (got - ref).abs().max().item()
    assert 0 < err < tol * ref.abs().max().item()


def test_loading_is_strict_and_names_the_tensor(tmp_path, dev):
    state = bfl_state(spec_of(), dev.state_dict())
    missing = {k: v for k, v in state.items() if k != "double_blocks.1.txt_attn.proj.weight"}
    save_file(missing, str(tmp_path / "missing.safetensors"))
    with pytest.raises(CorruptCheckpoint, match=r"double_blocks\.1\.txt_attn\.proj\.weight.*missing"):
        load(tmp_path / "missing.safetensors")
    extra = dict(state, **{"double_blocks.0.img_attn.extra.weight": torch.zeros(4)})
    save_file(extra, str(tmp_path / "extra.safetensors"))
    with pytest.raises(CorruptCheckpoint, match=r"double_blocks\.0\.img_attn\.extra\.weight"):
        load(tmp_path / "extra.safetensors")
    wrong = dict(state, **{"final_layer.linear.weight": torch.zeros(64, 32)})
    save_file(wrong, str(tmp_path / "wrong.safetensors"))
    with pytest.raises(CorruptCheckpoint, match=r"final_layer\.linear\.weight.*shape \(64, 32\)"):
        load(tmp_path / "wrong.safetensors")


def test_the_shifted_schedule_matches_the_published_formula_and_diffusers():
    from diffusers import FlowMatchEulerDiscreteScheduler

    # 1024x1024: 4096 patches, mu = 1.15; the second of 20 levels is 0.95 before the shift
    sig = flow.flux_sigmas(20, flow.patches(1024, 1024))
    assert flow.patches(1024, 1024) == 4096 and flow.shift_mu(4096) == pytest.approx(1.15) and flow.shift_mu(256) == pytest.approx(0.5)
    assert sig[0].item() == 1.0 and sig[-1].item() == 0.0 and len(sig) == 21
    assert sig[1].item() == pytest.approx(0.983608, abs=1e-6)  # e^1.15 / (e^1.15 + 1/0.95 - 1)
    assert sig[-2].item() == pytest.approx(0.142529, abs=1e-6)  # the last level, 1/20, shifted
    assert torch.all(sig[1:] < sig[:-1])
    dev_scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)
    for steps, side in ((20, 1024), (8, 512), (28, 768)):
        n = flow.patches(side, side)
        dev_scheduler.set_timesteps(sigmas=torch.linspace(1, 1 / steps, steps).numpy(), mu=flow.shift_mu(n))
        assert torch.allclose(dev_scheduler.sigmas, flow.flux_sigmas(steps, n), atol=1e-6)
    schnell = flow.flux_sigmas(4, 4096, shift=False)
    assert torch.allclose(schnell, torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0]))


def test_packing_is_flux_own_and_reversible():
    from diffusers import FluxPipeline

    lat = torch.randn(2, 16, 6, 10)
    packed = flow.pack(lat)
    assert packed.shape == (2, 15, 64)
    assert torch.equal(packed, FluxPipeline._pack_latents(lat, 2, 16, 6, 10))
    assert torch.equal(flow.unpack(packed, 6, 10), lat)
    assert torch.equal(flow.image_ids(6, 10), FluxPipeline._prepare_latent_image_ids(1, 3, 5, "cpu", torch.float32))


@pytest.mark.parametrize("guidance,true_cfg", [(True, 1.0), (True, 3.0), (False, 1.0)])
def test_one_denoising_run_matches_diffusers_flux_pipeline(dev, guidance, true_cfg):
    """Euler over the shifted schedule with our loader's network vs FluxPipeline on the
    same weights, noise and text features (dev: distilled guidance 3.5, with and without
    real CFG on a negative prompt; schnell: no guidance, no shift)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

    net = dev if guidance else tiny_transformer(False, seed=3)
    h = w = 8  # latents (128x128 pixels)
    x, text = inputs(h=h, w=w, seed=5)
    _, negative = inputs(h=h, w=w, seed=6)
    steps = 6
    scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=guidance, base_shift=0.5, max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)
    pipe = FluxPipeline(scheduler=scheduler, vae=None, text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None, transformer=net)
    pipe.set_progress_bar_config(disable=True)
    extra = dict(negative_prompt_embeds=negative.context, negative_pooled_prompt_embeds=negative.pooled, true_cfg_scale=true_cfg) if true_cfg > 1 else {}
    theirs = pipe(prompt_embeds=text.context, pooled_prompt_embeds=text.pooled, latents=x.clone(), height=h * 8, width=w * 8, num_inference_steps=steps,
                  guidance_scale=3.5, output_type="latent", **extra).images
    denoise = flow.FlowDenoiser(net, text, h, w, guidance=3.5 if guidance else None, negative=negative if true_cfg > 1 else None, cfg_scale=true_cfg)
    ours = sample_euler(denoise, x, flow.flux_sigmas(steps, h * w // 4, shift=guidance))
    assert denoise.calls == steps * (2 if true_cfg > 1 else 1)
    assert theirs.shape == ours.shape
    assert (ours - theirs).abs().max().item() < 1e-4 * max(1.0, theirs.abs().max().item())
    assert not torch.allclose(ours, x, atol=1e-2)  # it moved


@pytest.mark.parametrize("prefix", ["", "vae."])
def test_the_16_channel_autoencoder_loads_from_bfl_and_all_in_one_layouts(tmp_path, prefix):
    from diffusers import AutoencoderKL

    from brushwork.models.flux import VAE_SCALE, VAE_SHIFT, build_flux_vae, derive_flux_vae, flux_vae_prefix
    from brushwork.models.save import vae_ldm_state

    torch.manual_seed(0)
    ref = AutoencoderKL(block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        latent_channels=16, norm_num_groups=32, layers_per_block=1, use_quant_conv=False, use_post_quant_conv=False).eval()
    state = vae_ldm_state(ref, 2, prefix)
    assert prefix + "decoder.mid.attn_1.q.weight" in state and not any("quant_conv" in k for k in state)
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "ae.safetensors"))
    tf = open_tensor_file(tmp_path / "ae.safetensors")
    try:
        assert flux_vae_prefix(tf.shapes()) == prefix
        cfg = derive_flux_vae(tf.shapes(), prefix)
        assert (cfg.latent_channels, cfg.widths, cfg.layers_per_block) == (16, (32, 64), 1)
        vae = build_flux_vae(tf, prefix, torch.float32, torch.device("cpu"))
    finally:
        tf.close()
    assert vae.config.scaling_factor == VAE_SCALE and vae.config.shift_factor == VAE_SHIFT
    z = torch.randn(1, 16, 4, 4, generator=torch.Generator().manual_seed(2))
    from brushwork.vae import decode_latent, encode_image, unscaled

    with torch.no_grad():
        expected = ref.decode(z / VAE_SCALE + VAE_SHIFT).sample
        assert torch.equal(vae.decode(unscaled(vae, z)).sample, expected)
        # the engine's decode applies the shift too, whole and streamed in tiles
        assert torch.allclose(decode_latent(vae, z, tiled=False), expected, atol=1e-6)
        assert torch.allclose(decode_latent(vae, z, tiled=True, tile=2), expected, atol=1e-4)
        pixels = expected.clamp(-1, 1)
        mean = ref.encode(pixels).latent_dist.mean
        assert torch.allclose(encode_image(vae, pixels, tiled=False), (mean - VAE_SHIFT) * VAE_SCALE, atol=1e-6)
    sd_vae = {"first_stage_model.decoder.conv_in.weight": (512, 4, 3, 3)}
    assert flux_vae_prefix(sd_vae) is None
