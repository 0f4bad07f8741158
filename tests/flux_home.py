"""A tiny Flux.1 model in a data home, in the files users have: the BFL transformer
(or one all-in-one file), BFL's ae.safetensors, clip_l and t5xxl in
models/text_encoders; random weights, the real layouts and tokenizers' vocabularies."""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from brushwork.models.flux import bfl_state
from brushwork.models.save import vae_ldm_state

from test_flux_model import spec_of, tiny_transformer

CONTEXT, POOLED = 48, 40  # the tiny transformer's T5 and CLIP-L widths


def _state(model) -> dict:
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def tiny_parts(guidance: bool = True):
    """(transformer state in BFL keys, ae, clip_l, t5) tensors of a tiny random Flux model."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    torch.manual_seed(0)
    clip = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=POOLED, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                        max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407))
    clip_sd = {k if k.startswith("text_model.") else "text_model." + k: v for k, v in _state(clip).items() if not k.endswith("position_ids")}
    t5 = T5EncoderModel(T5Config(vocab_size=32128, d_model=CONTEXT, d_kv=8, d_ff=64, num_layers=2, num_heads=2, feed_forward_proj="gated-gelu"))
    t5_sd = {k: v for k, v in _state(t5).items() if k != "encoder.embed_tokens.weight"}
    vae = AutoencoderKL(block_out_channels=(32,) * 4, down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=16,
                        norm_num_groups=32, layers_per_block=1, use_quant_conv=False, use_post_quant_conv=False)
    ae = {k: v.contiguous() for k, v in vae_ldm_state(vae, 4, "").items()}
    transformer = bfl_state(spec_of(guidance), tiny_transformer(guidance).state_dict())
    return transformer, ae, clip_sd, t5_sd


def put(path: Path, state: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
    return path


def make_flux_home(root: Path, guidance: bool = True, all_in_one: bool = False, name: str | None = None) -> Path:
    """Write the model into ``root`` (a data home); returns the transformer's file."""
    transformer, ae, clip, t5 = tiny_parts(guidance)
    name = name or ("flux1-dev" if guidance else "flux1-schnell")
    if all_in_one:
        state = {"model.diffusion_model." + k: v for k, v in transformer.items()}
        state.update({"vae." + k: v for k, v in ae.items()})
        state.update({"text_encoders.clip_l.transformer." + k: v for k, v in clip.items()})
        state.update({"text_encoders.t5xxl.transformer." + k: v.half() for k, v in t5.items()})
        return put(root / "models" / "checkpoints" / f"{name}.safetensors", state)
    put(root / "models" / "vae" / "ae.safetensors", ae)
    put(root / "models" / "text_encoders" / "clip_l.safetensors", clip)
    put(root / "models" / "text_encoders" / "t5xxl_fp16.safetensors", {k: v.half() for k, v in t5.items()})
    return put(root / "models" / "checkpoints" / f"{name}.safetensors", transformer)
