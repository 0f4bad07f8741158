"""Key maps from the original (CompVis/SGM) single-file layout to the module names of
diffusers' UNet/VAE and transformers' CLIP text models.

Each ``*_source`` function takes one parameter name of the *target* module and
returns where it lives in the checkpoint, plus a transform when the layout differs
(1x1 convs stored for linear layers, OpenCLIP's fused q/k/v, a transposed
projection).  The loader walks the target's own parameter list, so every target
tensor must be found (strict loading) and every checkpoint tensor of the
component must be used; both are checked in :mod:`.load`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from .detect import UNET, VAE, UNetConfig

Transform = Optional[Callable[[torch.Tensor], torch.Tensor]]


@dataclass(frozen=True)
class Source:
    key: str
    transform: Transform = None


# ------------------------------------------------------------------ UNet

_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1", "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}


def _resnet_part(rest: str) -> str:
    part, _, tail = rest.partition(".")
    return f"{_RESNET[part]}.{tail}"


def unet_source(name: str, cfg: UNetConfig) -> Source:
    """Checkpoint key for a diffusers UNet2DConditionModel parameter."""
    per = cfg.layers_per_block + 1  # input/output blocks per level
    fixed = {
        "conv_in.": "input_blocks.0.0.",
        "time_embedding.linear_1.": "time_embed.0.",
        "time_embedding.linear_2.": "time_embed.2.",
        "add_embedding.linear_1.": "label_emb.0.0.",
        "add_embedding.linear_2.": "label_emb.0.2.",
        "conv_norm_out.": "out.0.",
        "conv_out.": "out.2.",
    }
    for head, ldm in fixed.items():
        if name.startswith(head):
            return Source(UNET + ldm + name[len(head):])
    m = re.match(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", name)
    if m:
        lvl, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        idx = 1 + lvl * per + j
        return Source(f"{UNET}input_blocks.{idx}.0.{_resnet_part(rest)}" if kind == "resnets" else f"{UNET}input_blocks.{idx}.1.{rest}")
    m = re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", name)
    if m:
        return Source(f"{UNET}input_blocks.{(int(m[1]) + 1) * per}.0.op.{m[2]}")
    m = re.match(r"mid_block\.(resnets|attentions)\.(\d+)\.(.*)", name)
    if m:
        kind, j, rest = m[1], int(m[2]), m[3]
        return Source(f"{UNET}middle_block.{2 * j}.{_resnet_part(rest)}" if kind == "resnets" else f"{UNET}middle_block.1.{rest}")
    m = re.match(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", name)
    if m:
        lvl, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        idx = lvl * per + j
        return Source(f"{UNET}output_blocks.{idx}.0.{_resnet_part(rest)}" if kind == "resnets" else f"{UNET}output_blocks.{idx}.1.{rest}")
    m = re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", name)
    if m:
        lvl = int(m[1])
        has_attn = list(reversed(cfg.attention_levels))[lvl]
        return Source(f"{UNET}output_blocks.{lvl * per + per - 1}.{2 if has_attn else 1}.conv.{m[2]}")
    raise KeyError(f"no checkpoint key is known for UNet parameter {name!r}")


# ------------------------------------------------------------------ VAE

_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _conv1x1_to_linear(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], t.shape[1]) if t.ndim == 4 else t


def vae_source(name: str, levels: int) -> Source:
    """Checkpoint key for a diffusers AutoencoderKL parameter."""
    if name.startswith(("quant_conv.", "post_quant_conv.")):
        return Source(VAE + name)
    side, _, rest = name.partition(".")
    simple = {"conv_in.": "conv_in.", "conv_out.": "conv_out.", "conv_norm_out.": "norm_out."}
    for head, ldm in simple.items():
        if rest.startswith(head):
            return Source(f"{VAE}{side}.{ldm}{rest[len(head):]}")
    m = re.match(r"(down|up)_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", rest)
    if m:
        lvl = int(m[2]) if m[1] == "down" else levels - 1 - int(m[2])
        tail = m[4].replace("conv_shortcut.", "nin_shortcut.")
        return Source(f"{VAE}{side}.{m[1]}.{lvl}.block.{m[3]}.{tail}")
    m = re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", rest)
    if m:
        return Source(f"{VAE}{side}.down.{m[1]}.downsample.conv.{m[2]}")
    m = re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", rest)
    if m:
        return Source(f"{VAE}{side}.up.{levels - 1 - int(m[1])}.upsample.conv.{m[2]}")
    m = re.match(r"mid_block\.resnets\.(\d+)\.(.*)", rest)
    if m:
        return Source(f"{VAE}{side}.mid.block_{int(m[1]) + 1}.{m[2]}")
    m = re.match(r"mid_block\.attentions\.0\.(group_norm|to_q|to_k|to_v|to_out\.0)\.(.*)", rest)
    if m:
        return Source(f"{VAE}{side}.mid.attn_1.{_VAE_ATTN[m[1]]}.{m[2]}", _conv1x1_to_linear)
    raise KeyError(f"no checkpoint key is known for VAE parameter {name!r}")


# ------------------------------------------------------------------ text encoders


def _core_name(name: str) -> str:
    """transformers 4 nests CLIPTextModel's layers under ``text_model.``, 5 does not."""
    return name.removeprefix("text_model.")


def hf_clip_source(name: str, prefix: str, has_text_model: bool) -> Source:
    """OpenAI-CLIP-layout encoders are stored with transformers' own names, usually
    under ``text_model.`` (very old files omit it)."""
    if name == "text_projection.weight":
        raise KeyError("the OpenAI-CLIP-layout text encoder has no projection")
    return Source(prefix + ("text_model." if has_text_model else "") + _core_name(name))


def _qkv_part(index: int) -> Callable[[torch.Tensor], torch.Tensor]:
    def take(t: torch.Tensor) -> torch.Tensor:
        return t.chunk(3, dim=0)[index]

    return take


def _transpose(t: torch.Tensor) -> torch.Tensor:
    return t.t().contiguous()


def openclip_source(name: str, prefix: str) -> Source:
    """OpenCLIP-layout encoders (SD 2.x, SDXL's second) under transformers' names."""
    table = {
        "embeddings.token_embedding.weight": Source(prefix + "token_embedding.weight"),
        "embeddings.position_embedding.weight": Source(prefix + "positional_embedding"),
        "final_layer_norm.weight": Source(prefix + "ln_final.weight"),
        "final_layer_norm.bias": Source(prefix + "ln_final.bias"),
        "text_projection.weight": Source(prefix + "text_projection", _transpose),
    }
    name = _core_name(name)
    if name in table:
        return table[name]
    m = re.match(r"encoder\.layers\.(\d+)\.(.*)", name)
    if not m:
        raise KeyError(f"no checkpoint key is known for text-encoder parameter {name!r}")
    block, rest = f"{prefix}transformer.resblocks.{m[1]}.", m[2]
    simple = {
        "layer_norm1.": "ln_1.",
        "layer_norm2.": "ln_2.",
        "mlp.fc1.": "mlp.c_fc.",
        "mlp.fc2.": "mlp.c_proj.",
        "self_attn.out_proj.": "attn.out_proj.",
    }
    for head, ldm in simple.items():
        if rest.startswith(head):
            return Source(block + ldm + rest[len(head):])
    m2 = re.match(r"self_attn\.(q|k|v)_proj\.(weight|bias)", rest)
    if m2:
        fused = "in_proj_weight" if m2[2] == "weight" else "in_proj_bias"
        return Source(block + "attn." + fused, _qkv_part("qkv".index(m2[1])))
    raise KeyError(f"no checkpoint key is known for text-encoder parameter {name!r}")


#: checkpoint keys inside a component's prefix that carry no weights we need
IGNORED_KEY_PATTERNS = (
    re.compile(r".*position_ids$"),  # a buffer transformers rebuilds itself
    re.compile(r".*\.logit_scale$"),  # CLIP's training temperature
    re.compile(r".*\.attn_mask$"),
    re.compile(r"^model_ema\.(decay|num_updates)$"),  # EMA bookkeeping, not weights
)


def is_ignored(key: str) -> bool:
    return any(p.match(key) for p in IGNORED_KEY_PATTERNS)


def ema_key(unet_key: str) -> str:
    """Where a full (training) checkpoint keeps the EMA copy of a UNet weight:
    ``model.diffusion_model.a.b.c`` -> ``model_ema.diffusion_modelabc`` (dots dropped)."""
    return "model_ema." + unet_key.removeprefix("model.").replace(".", "")
