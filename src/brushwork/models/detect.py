"""Recognise a checkpoint from its tensor names and shapes alone.

Two stages (the idea ComfyUI uses): first read the architecture off the shapes
(:func:`derive_unet`, :func:`derive_vae`, :func:`derive_text_encoder`), then
decide the family from which text encoders are present and the UNet's context
width.  No weights are read, except one small tensor for the SD 2.x
v-prediction heuristic.

What shapes cannot tell, and the convention Brushwork uses (also in docs/models.md):

* Attention heads.  SD 1.x uses 8 heads at every level; SD 2.x and SDXL use heads
  of 64 channels.  Same-layout models of other widths follow their family:
  8 heads (SD 1.x, when the width divides by 8, else 1), or width // 64 heads
  (at least 1) for SD 2.x / SDXL.  Text encoders use width // 64 heads (at least 1).
* Group-norm groups: 32, or the largest number <= 32 dividing every width.
* Text-encoder activation: quick-GELU for OpenAI-CLIP-layout encoders (SD 1.x,
  SDXL's first), GELU for OpenCLIP-layout ones (SD 2.x, SDXL's second).
* The VAE latent scale: 0.18215 for SD 1.x/2.x, 0.13025 for SDXL, unless the file's
  metadata sets ``brushwork.vae_scaling_factor``.
* SD 2.x prediction type: a ``v_pred`` marker key or ``modelspec.prediction_type``
  metadata decide; otherwise ComfyUI's heuristic on the spread of one norm bias.
* Native resolution: SD 1.x 512, SD 2.x 768 (v) / 512 (eps), SDXL 1024, unless the
  metadata gives ``modelspec.resolution``.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional

from .errors import UnsupportedModel

Shapes = Mapping[str, tuple[int, ...]]

UNET = "model.diffusion_model."
VAE = "first_stage_model."
TE_SD1 = "cond_stage_model.transformer."
TE_SD2 = "cond_stage_model.model."
TE_XL1 = "conditioner.embedders.0.transformer."
TE_XL2 = "conditioner.embedders.1.model."

FAMILY_LABELS = {"sd1": "SD 1.x", "sd2": "SD 2.x", "sdxl": "SDXL", "flux": "Flux.1"}


@dataclass(frozen=True)
class UNetConfig:
    in_channels: int
    out_channels: int
    widths: tuple[int, ...]  # channels per level
    layers_per_block: int
    attention_levels: tuple[bool, ...]
    transformer_depth: tuple[int, ...]  # per level (0 where no attention)
    mid_transformer_depth: int
    context_dim: int
    linear_projection: bool
    heads: tuple[int, ...]
    norm_groups: int
    adm_in_channels: Optional[int] = None  # SDXL's size/pooled-text conditioning
    addition_time_embed_dim: Optional[int] = None

    def diffusers_kwargs(self, sample_size: int, upcast_attention: bool) -> dict:
        down = ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in self.attention_levels]
        up = ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(self.attention_levels)]
        kw = dict(
            sample_size=sample_size,
            in_channels=self.in_channels,
            out_channels=self.out_channels,
            down_block_types=tuple(down),
            up_block_types=tuple(up),
            block_out_channels=self.widths,
            layers_per_block=self.layers_per_block,
            cross_attention_dim=self.context_dim,
            attention_head_dim=self.heads,
            transformer_layers_per_block=tuple(max(d, 1) for d in self.transformer_depth),
            use_linear_projection=self.linear_projection,
            norm_num_groups=self.norm_groups,
            upcast_attention=upcast_attention,
        )
        if self.mid_transformer_depth:
            kw["mid_block_type"] = "UNetMidBlock2DCrossAttn"
        if self.adm_in_channels is not None:
            kw.update(
                addition_embed_type="text_time",
                addition_time_embed_dim=self.addition_time_embed_dim,
                projection_class_embeddings_input_dim=self.adm_in_channels,
            )
        return kw


@dataclass(frozen=True)
class VAEConfig:
    in_channels: int
    out_channels: int
    latent_channels: int
    widths: tuple[int, ...]
    layers_per_block: int
    norm_groups: int
    mid_attention: bool
    scaling_factor: float

    def diffusers_kwargs(self, sample_size: int) -> dict:
        n = len(self.widths)
        return dict(
            in_channels=self.in_channels,
            out_channels=self.out_channels,
            latent_channels=self.latent_channels,
            block_out_channels=self.widths,
            down_block_types=("DownEncoderBlock2D",) * n,
            up_block_types=("UpDecoderBlock2D",) * n,
            layers_per_block=self.layers_per_block,
            norm_num_groups=self.norm_groups,
            mid_block_add_attention=self.mid_attention,
            scaling_factor=self.scaling_factor,
            sample_size=sample_size,
        )


@dataclass(frozen=True)
class TextEncoderConfig:
    prefix: str
    layout: str  # "hf" (OpenAI CLIP as in transformers) or "openclip"
    vocab_size: int
    width: int
    layers: int
    intermediate: int
    max_positions: int
    heads: int
    projection_dim: Optional[int] = None  # SDXL's second encoder: pooled projection

    @property
    def activation(self) -> str:
        return "quick_gelu" if self.layout == "hf" else "gelu"

    @property
    def pad_token_id(self) -> int:
        """OpenAI CLIP pads with the end token; OpenCLIP pads with token 0 ("!")."""
        return 49407 if self.layout == "hf" else 0

    def transformers_kwargs(self) -> dict:
        kw = dict(
            vocab_size=self.vocab_size,
            hidden_size=self.width,
            intermediate_size=self.intermediate,
            num_hidden_layers=self.layers,
            num_attention_heads=self.heads,
            max_position_embeddings=self.max_positions,
            hidden_act=self.activation,
            layer_norm_eps=1e-5,
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=self.pad_token_id,
        )
        if self.projection_dim is not None:
            kw["projection_dim"] = self.projection_dim
        return kw


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to build and run a checkpoint."""

    family: str  # "sd1" | "sd2" | "sdxl"
    prediction: str  # "epsilon" | "v_prediction"
    resolution: int
    unet: UNetConfig
    vae: VAEConfig
    text_encoders: tuple[TextEncoderConfig, ...]
    ema: bool = False  # the file also holds EMA UNet weights
    notes: tuple[str, ...] = field(default_factory=tuple, compare=False)
    #: generation defaults the model's author chose (metadata ``brushwork.defaults``)
    defaults: dict = field(default_factory=dict, compare=False)
    #: how its own VAE decodes: "plain", or "mirrored-halves" for the demo decoder's
    #: frame-bound corner speck (vae.decode_mirrored_halves; metadata ``brushwork.vae_decode``)
    vae_decode: str = field(default="plain", compare=False)

    @property
    def inpainting(self) -> bool:
        """A dedicated inpainting checkpoint: its UNet also takes the mask and the
        masked picture's latents (4 + 1 + 4 = 9 input channels)."""
        return self.unet.in_channels == self.vae.latent_channels * 2 + 1

    @property
    def label(self) -> str:
        label = FAMILY_LABELS[self.family]
        if self.family == "sd2":
            label += " (v-prediction)" if self.prediction == "v_prediction" else " (epsilon)"
        if self.inpainting:
            label += " inpainting"
        return label


# ---------------------------------------------------------------- small helpers


def _indices(shapes: Shapes, pattern: str) -> list[int]:
    rx = re.compile(pattern)
    return sorted({int(m.group(1)) for k in shapes if (m := rx.match(k))})


def _need(shapes: Shapes, key: str, what: str, ndim: int) -> tuple[int, ...]:
    if key not in shapes:
        raise UnsupportedModel(f"the {what} is incomplete: tensor {key!r} is missing. The file is damaged or not a Stable Diffusion checkpoint.")
    return _dims(shapes[key], key, what, ndim)


def _dims(shape: tuple[int, ...], key: str, what: str, ndim: int) -> tuple[int, ...]:
    """``shape``, checked to have the ``ndim`` dimensions the layer needs."""
    if len(shape) != ndim:
        raise UnsupportedModel(f"the {what} tensor {key!r} has shape {tuple(shape)}, but that layer needs {ndim} dimensions; the file is damaged.")
    return shape


def norm_groups(widths: tuple[int, ...] | list[int]) -> int:
    g = math.gcd(*widths)
    return max(d for d in range(1, 33) if g % d == 0)


# ---------------------------------------------------------------- architecture from shapes


def derive_unet(shapes: Shapes, family: str) -> UNetConfig:
    p = UNET
    conv_in = _need(shapes, p + "input_blocks.0.0.weight", "UNet", 4)
    out = _need(shapes, p + "out.2.weight", "UNet", 4)
    n_inputs = len(_indices(shapes, re.escape(p) + r"input_blocks\.(\d+)\."))
    downsamplers = _indices(shapes, re.escape(p) + r"input_blocks\.(\d+)\.0\.op\.weight")
    levels = len(downsamplers) + 1
    if n_inputs % levels:
        raise UnsupportedModel(f"the UNet's block layout is unusual ({n_inputs} input blocks over {levels} levels); it is not a Stable Diffusion UNet.")
    per_level = n_inputs // levels  # resnets + downsampler, except the first entry is conv_in
    layers = per_level - 1
    widths, attn, depth = [], [], []
    for lvl in range(levels):
        first = 1 + lvl * per_level
        widths.append(_need(shapes, f"{p}input_blocks.{first}.0.out_layers.3.weight", "UNet", 4)[0])
        blocks = _indices(shapes, re.escape(f"{p}input_blocks.{first}.1.transformer_blocks.") + r"(\d+)\.")
        attn.append(bool(blocks))
        depth.append(len(blocks))
    mid_depth = len(_indices(shapes, re.escape(p + "middle_block.1.transformer_blocks.") + r"(\d+)\."))
    to_k = [k for k in shapes if k.startswith(p) and k.endswith("attn2.to_k.weight")]
    if not to_k:
        raise UnsupportedModel("the UNet has no cross-attention layers, so it cannot follow a prompt; it is not a Stable Diffusion checkpoint.")
    context = _dims(shapes[to_k[0]], to_k[0], "UNet", 2)[1]
    proj_in = [k for k in shapes if k.startswith(p) and k.endswith(".proj_in.weight")]
    if not proj_in:
        raise UnsupportedModel("the UNet's attention blocks have no 'proj_in' layers; the file is damaged or not a Stable Diffusion checkpoint.")
    linear = len(shapes[proj_in[0]]) == 2
    if family == "sd1":
        heads = tuple(8 if w % 8 == 0 else 1 for w in widths)
    else:
        heads = tuple(max(1, w // 64) for w in widths)
    adm = shapes.get(p + "label_emb.0.0.weight")
    adm_in = _dims(adm, p + "label_emb.0.0.weight", "UNet", 2)[1] if adm else None
    return UNetConfig(
        in_channels=conv_in[1],
        out_channels=out[0],
        widths=tuple(widths),
        layers_per_block=layers,
        attention_levels=tuple(attn),
        transformer_depth=tuple(depth),
        mid_transformer_depth=mid_depth,
        context_dim=context,
        linear_projection=linear,
        heads=heads,
        norm_groups=norm_groups(widths),
        adm_in_channels=adm_in,
    )


def derive_vae(shapes: Shapes, scaling_factor: float) -> VAEConfig:
    p = VAE
    conv_in = _need(shapes, p + "encoder.conv_in.weight", "VAE", 4)
    conv_out = _need(shapes, p + "decoder.conv_out.weight", "VAE", 4)
    quant = _need(shapes, p + "quant_conv.weight", "VAE", 4)
    levels = _indices(shapes, re.escape(p + "encoder.down.") + r"(\d+)\.")
    widths = tuple(_need(shapes, f"{p}encoder.down.{i}.block.0.conv2.weight", "VAE", 4)[0] for i in levels)
    layers = len(_indices(shapes, re.escape(p + "encoder.down.0.block.") + r"(\d+)\."))
    return VAEConfig(
        in_channels=conv_in[1],
        out_channels=conv_out[0],
        latent_channels=quant[0] // 2,
        widths=widths,
        layers_per_block=layers,
        norm_groups=norm_groups(widths),
        mid_attention=(p + "encoder.mid.attn_1.q.weight") in shapes,
        scaling_factor=scaling_factor,
    )


def derive_text_encoder(shapes: Shapes, prefix: str, layout: str, with_projection: bool = False) -> TextEncoderConfig:
    what = "text encoder"
    if layout == "hf":
        base = prefix + "text_model." if any(k.startswith(prefix + "text_model.") for k in shapes) else prefix
        tok = _need(shapes, base + "embeddings.token_embedding.weight", what, 2)
        pos = _need(shapes, base + "embeddings.position_embedding.weight", what, 2)
        layers = _indices(shapes, re.escape(base + "encoder.layers.") + r"(\d+)\.")
        fc1 = _need(shapes, base + "encoder.layers.0.mlp.fc1.weight", what, 2)
        proj = None
    else:
        tok = _need(shapes, prefix + "token_embedding.weight", what, 2)
        pos = _need(shapes, prefix + "positional_embedding", what, 2)
        layers = _indices(shapes, re.escape(prefix + "transformer.resblocks.") + r"(\d+)\.")
        fc1 = _need(shapes, prefix + "transformer.resblocks.0.mlp.c_fc.weight", what, 2)
        proj = _need(shapes, prefix + "text_projection", what, 2)[1] if with_projection else None
    width = tok[1]
    return TextEncoderConfig(
        prefix=prefix,
        layout=layout,
        vocab_size=tok[0],
        width=width,
        layers=len(layers),
        intermediate=fc1[0],
        max_positions=pos[0],
        heads=max(1, width // 64),
        projection_dim=proj,
    )


# ---------------------------------------------------------------- family decision


def _has_prefix(shapes: Shapes, prefix: str) -> bool:
    return any(k.startswith(prefix) for k in shapes)


def reject_other_kinds(shapes: Shapes) -> None:
    """Clear errors for the tensor files people most often pass by mistake."""
    keys = list(shapes)
    n = len(keys)

    def share(pred: Callable[[str], bool]) -> float:
        return sum(1 for k in keys if pred(k)) / max(n, 1)

    if n == 0:
        raise UnsupportedModel("the file holds no tensors at all.")
    if share(lambda k: k.startswith(("lora_unet_", "lora_te", "lycoris_")) or ".lora_" in k or "lora_A" in k or ".hada_" in k or ".lokr_" in k) > 0.5:
        raise UnsupportedModel("this is a LoRA, not a checkpoint: a LoRA changes a checkpoint of its family. Put it in models/loras in the data home and add <lora:NAME:0.8> to a prompt (see: brushwork loras); pass a checkpoint as --model.")
    if any("x_embedder.proj.weight" in k for k in keys) or any("joint_blocks.0." in k for k in keys):
        raise UnsupportedModel("this is a Stable Diffusion 3 (MMDiT) model, which Brushwork does not support yet; it runs SD 1.x, SD 2.x and SDXL checkpoints.")
    if any("double_blocks.0.img_attn" in k for k in keys):
        raise UnsupportedModel("this is a Flux.1 model, not a Stable Diffusion checkpoint: Brushwork runs Flux transformers from .safetensors or .gguf files with their ae, clip_l and t5xxl parts (brushwork models lists the model and the parts found).")
    if _has_prefix(shapes, "conditioner.embedders.0.model.") and not _has_prefix(shapes, TE_XL1):
        raise UnsupportedModel("this is an SDXL refiner checkpoint. It only refines images from an SDXL base model, which Brushwork does not support yet; use an SDXL base checkpoint.")
    vae_like = share(lambda k: k.startswith(("encoder.", "decoder.", "quant_conv", "post_quant_conv", VAE)))
    if vae_like > 0.9:
        raise UnsupportedModel("this is a VAE file, not a checkpoint. Put it in models/vae; it does not generate images on its own.")
    if share(lambda k: k.startswith(("string_to_param", "emb_params", "clip_l", "clip_g"))) > 0.5 or (n <= 2 and any(k in ("emb_params", "string_to_param.*") for k in keys)):
        raise UnsupportedModel("this is a textual-inversion embedding, not a checkpoint. Put it in models/embeddings.")
    if not _has_prefix(shapes, UNET):
        if any(k.startswith(("down_blocks.", "conv_in.", "time_embedding.")) for k in keys):
            raise UnsupportedModel("this is a UNet in diffusers layout on its own. Brushwork loads single-file checkpoints in the original layout (UNet, VAE and text encoder in one file).")
        raise UnsupportedModel("no Stable Diffusion UNet was found in the file (no 'model.diffusion_model.' tensors). It is not a checkpoint Brushwork can use.")


def _sd2_prediction(shapes: Shapes, metadata: Mapping[str, str], read_tensor: Optional[Callable]) -> tuple[str, str]:
    if "v_pred" in shapes:
        return "v_prediction", "a v_pred marker key"
    pt = metadata.get("modelspec.prediction_type", "").lower()
    if pt in ("v", "v_prediction", "v-prediction"):
        return "v_prediction", "modelspec.prediction_type metadata"
    if pt in ("epsilon", "eps"):
        return "epsilon", "modelspec.prediction_type metadata"
    key = UNET + "output_blocks.11.1.transformer_blocks.0.norm1.bias"
    if read_tensor is not None and key in shapes:
        std = float(read_tensor(key).float().std())
        return ("v_prediction" if std > 0.09 else "epsilon"), f"the norm-bias heuristic (std {std:.3f})"
    return "v_prediction", "the default for SD 2.x (most SD 2.x checkpoints are 768 v-prediction)"


def detect(shapes: Shapes, metadata: Optional[Mapping[str, str]] = None, read_tensor: Optional[Callable] = None, name: str = "the file") -> ModelSpec:
    """Model spec from tensor names/shapes (and, for SD 2.x, one small tensor)."""
    metadata = metadata or {}
    try:
        reject_other_kinds(shapes)
    except UnsupportedModel as exc:
        raise UnsupportedModel(f"{name}: {exc}") from None
    try:
        return _detect_family(shapes, metadata, read_tensor)
    except UnsupportedModel as exc:
        raise UnsupportedModel(f"{name}: {exc}") from None


def _detect_family(shapes: Shapes, metadata: Mapping[str, str], read_tensor: Optional[Callable]) -> ModelSpec:
    if _has_prefix(shapes, TE_XL1) and _has_prefix(shapes, TE_XL2):
        family = "sdxl"
        encoders = (derive_text_encoder(shapes, TE_XL1, "hf"), derive_text_encoder(shapes, TE_XL2, "openclip", with_projection=True))
    elif _has_prefix(shapes, TE_SD2):
        family = "sd2"
        encoders = (derive_text_encoder(shapes, TE_SD2, "openclip"),)
    elif _has_prefix(shapes, TE_SD1):
        family = "sd1"
        encoders = (derive_text_encoder(shapes, TE_SD1, "hf"),)
    else:
        raise UnsupportedModel("it has a UNet but no text encoder (no 'cond_stage_model.' or 'conditioner.' tensors); Brushwork needs a full single-file checkpoint.")
    if not _has_prefix(shapes, VAE):
        raise UnsupportedModel("it has no VAE ('first_stage_model.' tensors); Brushwork needs a full single-file checkpoint with its VAE.")

    unet = derive_unet(shapes, family)
    if unet.in_channels == 8:
        raise UnsupportedModel("this is an InstructPix2Pix checkpoint (8 input channels), which Brushwork does not support yet.")
    context = sum(e.width for e in encoders) if family == "sdxl" else encoders[0].width
    if unet.context_dim != context:
        raise UnsupportedModel(f"its UNet expects text features of width {unet.context_dim} but its text encoder gives {context}; the file mixes parts of different models.")

    if family == "sdxl":
        if unet.adm_in_channels is None:
            raise UnsupportedModel("it looks like SDXL but has no size conditioning ('label_emb'); it is not an SDXL base checkpoint.")
        pooled = encoders[1].projection_dim or 0
        extra = unet.adm_in_channels - pooled
        if extra <= 0 or extra % 6:
            raise UnsupportedModel(f"its SDXL size conditioning has an unexpected width {unet.adm_in_channels}.")
        unet = _replace(unet, addition_time_embed_dim=extra // 6)
        prediction, why = ("v_prediction", "a v_pred marker key") if "v_pred" in shapes else ("epsilon", "the SDXL default")
        scale, resolution = 0.13025, 1024
    elif family == "sd2":
        prediction, why = _sd2_prediction(shapes, metadata, read_tensor)
        scale, resolution = 0.18215, 768 if prediction == "v_prediction" else 512
    else:
        prediction, why = ("v_prediction", "a v_pred marker key") if "v_pred" in shapes else ("epsilon", "the SD 1.x default")
        scale, resolution = 0.18215, 512

    scale = _metadata_scale(metadata, scale)
    resolution = _metadata_resolution(metadata, resolution)
    vae = derive_vae(shapes, scale)
    factor = 2 ** (len(vae.widths) - 1)
    if unet.in_channels not in (vae.latent_channels, 2 * vae.latent_channels + 1):
        raise UnsupportedModel(f"its VAE makes {vae.latent_channels}-channel latents but its UNet takes {unet.in_channels} (an inpainting UNet would take {2 * vae.latent_channels + 1}); the file mixes parts of different models.")
    if factor != 8:
        raise UnsupportedModel(f"its VAE downscales by {factor}, not 8 as Stable Diffusion does.")
    ema = any(k.startswith("model_ema.") and k != "model_ema.decay" and k != "model_ema.num_updates" for k in shapes)
    return ModelSpec(family, prediction, resolution, unet, vae, encoders, ema, (f"prediction type from {why}",), _metadata_defaults(metadata), _metadata_vae_decode(metadata))


DEFAULT_KEYS = {"width": int, "height": int, "steps": int, "cfg_scale": float, "sampler": str, "schedule": str}


def _metadata_defaults(metadata: Mapping[str, str]) -> dict:
    """Generation defaults stored by the model's author; unknown or malformed entries are ignored."""
    try:
        raw = json.loads(metadata.get("brushwork.defaults", "{}"))
    except ValueError:
        return {}
    if not isinstance(raw, dict):
        return {}
    out = {}
    for key, kind in DEFAULT_KEYS.items():
        if key in raw:
            try:
                out[key] = kind(raw[key])
            except (TypeError, ValueError):
                continue
    return out


VAE_DECODES = ("plain", "mirrored-halves")


def _metadata_vae_decode(metadata: Mapping[str, str]) -> str:
    """``brushwork.vae_decode`` when it names a known way; a demo model trained before
    that key existed (its training record has the demo trainer's VAE stage and no
    later decoder refinement) decodes its mirrored halves; anything else plainly."""
    named = metadata.get("brushwork.vae_decode")
    if named in VAE_DECODES:
        return named
    try:
        training = json.loads(metadata.get("brushwork.training", "{}") or "{}")
    except ValueError:
        return "plain"
    config = training.get("config") if isinstance(training, dict) else None
    if isinstance(config, dict) and "vae_steps" in config and "decoder_refine" not in training:
        return "mirrored-halves"
    return "plain"


def _metadata_scale(metadata: Mapping[str, str], default: float) -> float:
    """``brushwork.vae_scaling_factor`` when it is a positive finite number, else the family's."""
    try:
        value = float(metadata.get("brushwork.vae_scaling_factor", default))
    except (TypeError, ValueError):
        return default
    return value if math.isfinite(value) and value > 0 else default


def _metadata_resolution(metadata: Mapping[str, str], default: int) -> int:
    res = metadata.get("modelspec.resolution", "")
    m = re.fullmatch(r"\s*(\d+)\s*x\s*(\d+)\s*", res)
    return int(m.group(1)) if m else default


def _replace(cfg, **changes):
    from dataclasses import replace

    return replace(cfg, **changes)
