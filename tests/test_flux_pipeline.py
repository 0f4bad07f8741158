"""Flux text features and a whole generation, ours against diffusers' FluxPipeline on the
same tiny random networks (CLIP-L, T5, transformer, 16-channel autoencoder), tokenizers
and noise: the prompt's features, then the decoded pixels."""
from __future__ import annotations

import pytest
import torch

from brushwork.flux_prompt import T5_TOKENS, encode_flux_prompt, t5_windows
from brushwork.sampling import flow
from brushwork.sampling.samplers import sample_euler
from brushwork.vae import decode_latent

from test_flux_model import tiny_transformer

PROMPT = "a red sports car on a mountain road at sunset, film photo"


@pytest.fixture(scope="module")
def parts():
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    torch.manual_seed(0)
    clip = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=40, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                        max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)).eval()
    t5 = T5EncoderModel(T5Config(vocab_size=32128, d_model=48, d_kv=8, d_ff=64, num_layers=2, num_heads=2, feed_forward_proj="gated-gelu")).eval()
    vae = AutoencoderKL(block_out_channels=(32,) * 4, down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=16,
                        norm_num_groups=32, layers_per_block=1, use_quant_conv=False, use_post_quant_conv=False, scaling_factor=0.3611, shift_factor=0.1159).eval()
    return clip, t5, vae, tiny_transformer(True)


def pipeline(parts, guidance: bool = True):
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

    from brushwork.conditioning import tokenizer as clip_tokenizer
    from brushwork.models.flux_text import t5_tokenizer

    clip, t5, vae, transformer = parts
    scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)
    pipe = FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=clip, tokenizer=clip_tokenizer(), text_encoder_2=t5, tokenizer_2=t5_tokenizer(), transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_the_prompt_features_are_flux_pipelines(parts):
    clip, t5, _, _ = parts
    pipe = pipeline(parts)
    embeds, pooled, _ = pipe.encode_prompt(prompt=PROMPT, prompt_2=None, max_sequence_length=512)
    ours = encode_flux_prompt("dev", [clip, t5], PROMPT, torch.device("cpu"))
    assert ours.context.shape == embeds.shape == (1, 512, 48) and ours.pooled.shape == pooled.shape == (1, 40)
    # the same ids; the pipeline runs T5 with autograd on, which picks another attention kernel (2e-5 apart)
    assert torch.allclose(ours.context, embeds.float(), atol=1e-4, rtol=0) and torch.equal(ours.pooled, pooled.float())
    schnell = encode_flux_prompt("schnell", [clip, t5], PROMPT, torch.device("cpu"))
    assert schnell.context.shape == (1, T5_TOKENS["schnell"], 48)


def test_emphasis_and_long_prompts(parts):
    clip, t5, _, _ = parts
    plain = encode_flux_prompt("dev", [clip, t5], PROMPT, torch.device("cpu"))
    loud = encode_flux_prompt("dev", [clip, t5], PROMPT.replace("red sports car", "(red sports car:1.4)"), torch.device("cpu"))
    assert torch.equal(loud.pooled, plain.pooled)  # CLIP-L sees the plain text
    assert not torch.allclose(loud.context, plain.context)
    ids, weights = t5_windows([("a red sports car", 1.4), (" on a road", 1.0)], 512)
    n = int((ids[0] != 0).sum())  # the tokens and </s>
    assert ids[0, n - 1] == 1 and weights[0, : n - 1].max() == pytest.approx(1.4) and weights[0, n - 2] == 1.0
    long_text = ", ".join(["a red sports car on a winding mountain road"] * 60)  # about 600 tokens
    ids, _ = t5_windows([(long_text, 1.0)], 512)
    assert ids.shape == (2, 512) and ids[0, -1] == 1  # not cut off: a second window, each ending in </s>
    feats = encode_flux_prompt("dev", [clip, t5], long_text, torch.device("cpu"))
    assert feats.context.shape == (1, 1024, 48)


def test_a_whole_generation_matches_flux_pipeline_pixels(parts):
    """Text features, 6 Euler steps on the shifted schedule with distilled guidance 3.5,
    unpacking and the shifted decode: the same picture as FluxPipeline's."""
    clip, t5, vae, transformer = parts
    pipe = pipeline(parts)
    side, steps = 64, 6  # 8x8 latents
    gen = torch.Generator().manual_seed(42)
    noise = torch.randn(1, 16, side // 8, side // 8, generator=gen)
    packed = flow.pack(noise)
    theirs = pipe(prompt=PROMPT, latents=packed.clone(), height=side, width=side, num_inference_steps=steps, guidance_scale=3.5, output_type="pt", max_sequence_length=512).images
    text = encode_flux_prompt("dev", [clip, t5], PROMPT, torch.device("cpu"))
    h = w = side // 8
    denoise = flow.FlowDenoiser(transformer, text, h, w, guidance=3.5)
    sigmas = flow.flux_sigmas(steps, flow.patches(side, side))

    def unpacked_denoise(x, sigma):  # the samplers see (B, 16, h, w); the network packed tokens
        return flow.unpack(denoise(flow.pack(x), sigma), h, w)

    latents = sample_euler(unpacked_denoise, noise, sigmas)
    with torch.no_grad():
        ours = (decode_latent(vae, latents, tiled=False) / 2 + 0.5).clamp(0, 1)
    assert ours.shape == theirs.shape == (1, 3, side, side)
    diff = (ours - theirs.float()).abs().max().item()
    print(f"largest pixel difference to FluxPipeline: {diff:.2e}")
    assert diff < 2e-4  # well under one level of 8-bit pixels
