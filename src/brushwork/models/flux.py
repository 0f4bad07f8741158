"""Flux.1 transformer files: detection from shapes, the key map, strict loading.

Black Forest Labs publish the transformer on its own (``flux1-dev.safetensors``:
``double_blocks.N.img_attn.qkv.weight`` ...); ComfyUI and civitai all-in-one files
store the same keys under ``model.diffusion_model.``.  The network is diffusers'
``FluxTransformer2DModel``; this module maps each of its parameters to the file's
tensor it comes from, so the loader fills it strictly (every parameter from the
file, every file tensor of the transformer used), in any stored precision (fp32,
bf16, fp16, fp8 e4m3fn/e5m2: cast as each tensor is read).

The map is one table, BFL key -> the diffusers parameters it holds, concatenated
along the first dimension (a fused q/k/v holds three; a single block's
``linear1`` holds q, k, v and the MLP's input).  Reading takes slices of it, the
test writer (:func:`bfl_state`) concatenates, so both directions are one fact.
The final layer's modulation is stored as (shift, scale) and diffusers' as
(scale, shift): those halves are swapped.

Everything except the network build is pure (shapes in, names out).
"""
from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Callable, Mapping, Optional

import torch

from .convert import Source
from .errors import UnsupportedModel

Shapes = Mapping[str, tuple[int, ...]]

#: where the transformer's keys may sit: ComfyUI / civitai single files, a bare
#: ``diffusion_model.`` export, and BFL's own transformer-only files
PREFIXES = ("model.diffusion_model.", "diffusion_model.", "")
#: the file's top-level names of the transformer (used to find leftovers)
TOP_NAMES = ("img_in.", "txt_in.", "time_in.", "vector_in.", "guidance_in.", "double_blocks.", "single_blocks.", "final_layer.")
MARKER = "double_blocks.0.img_attn.qkv.weight"
#: the final layer's modulation, stored (shift, scale); diffusers keeps (scale, shift)
SWAPPED = ("final_layer.adaLN_modulation.1.weight", "final_layer.adaLN_modulation.1.bias")


@dataclass(frozen=True)
class FluxSpec:
    """A Flux transformer's shape, read from its tensors."""

    prefix: str
    hidden: int  # 3072 for Flux.1
    head_dim: int  # 128
    double: int  # 19 double-stream blocks
    single: int  # 38 single-stream blocks
    in_channels: int  # 64: 16 latent channels in 2x2 patches
    context: int  # 4096: T5-XXL's width
    pooled: int  # 768: CLIP-L's pooled output
    mlp: int  # 12288
    guidance: bool  # dev (guidance-distilled) has a guidance embedding; schnell none

    family = "flux"
    # what the engine asks of every model (as of detect.ModelSpec), answered for Flux
    prediction = "flow"
    resolution = 1024
    inpainting = False
    vae_decode = "plain"
    ema = False
    notes: tuple = ()
    text_encoders: tuple = ()  # CLIP-L and T5 are not CLIP chunks: no clip skip, no SD embeddings
    defaults = MappingProxyType({})

    @property
    def vae(self):
        """The autoencoder as the engine sees it: 16 latent channels, Flux's scale."""
        from .detect import VAEConfig

        return VAEConfig(3, 3, 16, (128, 256, 512, 512), 2, 32, True, VAE_SCALE)

    @property
    def variant(self) -> str:
        return "dev" if self.guidance else "schnell"

    @property
    def heads(self) -> int:
        return self.hidden // self.head_dim

    @property
    def label(self) -> str:
        return f"Flux.1 {self.variant}"

    def rope_axes(self) -> tuple[int, int, int]:
        """Rotary dimensions per position axis (index, row, column): (16, 56, 56) for
        the 128-wide heads of Flux.1; other widths in the same proportion."""
        first = self.head_dim // 8
        rest = (self.head_dim - first) // 2
        axes = (first, rest, self.head_dim - first - rest)
        if any(a % 2 for a in axes):
            raise UnsupportedModel(f"a Flux transformer with {self.head_dim}-wide attention heads has no even split into rotary axes; the file is not a Flux.1 model Brushwork knows.")
        return axes

    def diffusers_config(self) -> dict:
        return dict(
            patch_size=1, in_channels=self.in_channels, num_layers=self.double, num_single_layers=self.single, attention_head_dim=self.head_dim,
            num_attention_heads=self.heads, joint_attention_dim=self.context, pooled_projection_dim=self.pooled, guidance_embeds=self.guidance,
            axes_dims_rope=self.rope_axes(),
        )


def flux_prefix(shapes: Shapes) -> Optional[str]:
    """The prefix the file's Flux transformer sits under, or None when it has none."""
    for prefix in PREFIXES:
        if prefix + MARKER in shapes:
            return prefix
    return None


def _count(shapes: Shapes, head: str) -> int:
    import re

    from .detect import _indices

    seen = set(_indices(shapes, re.escape(head) + r"(\d+)\."))
    if seen != set(range(len(seen))):
        missing = sorted(set(range(max(seen) + 1)) - seen)
        raise UnsupportedModel(f"the Flux transformer's {head.rsplit('.', 2)[-2]} are numbered with gaps (block {missing[0]} is missing); the file is damaged or incomplete. Download it again.")
    return len(seen)


def _shape(shapes: Shapes, key: str, ndim: int) -> tuple[int, ...]:
    if key not in shapes:
        raise UnsupportedModel(f"the Flux transformer has no tensor {key!r}; the file is damaged or not in the original (Black Forest Labs) layout.")
    shape = tuple(shapes[key])
    if len(shape) != ndim:
        raise UnsupportedModel(f"the Flux tensor {key!r} has shape {shape}, not {ndim}-dimensional; the file is damaged.")
    return shape


def detect_flux(shapes: Shapes) -> Optional[FluxSpec]:
    """The Flux transformer in a file's tensor table, or None when there is none."""
    prefix = flux_prefix(shapes)
    if prefix is None:
        return None
    p = prefix
    hidden, in_channels = _shape(shapes, p + "img_in.weight", 2)
    _, context = _shape(shapes, p + "txt_in.weight", 2)
    _, pooled = _shape(shapes, p + "vector_in.in_layer.weight", 2)
    (head_dim,) = _shape(shapes, p + "double_blocks.0.img_attn.norm.query_norm.scale", 1)
    mlp, _ = _shape(shapes, p + "double_blocks.0.img_mlp.0.weight", 2)
    if hidden % head_dim:
        raise UnsupportedModel(f"the Flux transformer's width {hidden} is not a whole number of {head_dim}-wide heads; the file is damaged.")
    return FluxSpec(
        prefix=p, hidden=hidden, head_dim=head_dim, double=_count(shapes, p + "double_blocks."), single=_count(shapes, p + "single_blocks."),
        in_channels=in_channels, context=context, pooled=pooled, mlp=mlp, guidance=p + "guidance_in.in_layer.weight" in shapes,
    )


def _linear(bfl: str, diffusers: str) -> dict[str, tuple[str, ...]]:
    return {f"{bfl}.weight": (f"{diffusers}.weight",), f"{bfl}.bias": (f"{diffusers}.bias",)}


def _fused(bfl: str, parts: tuple[str, ...], bias: bool = True) -> dict[str, tuple[str, ...]]:
    out = {f"{bfl}.weight": tuple(f"{d}.weight" for d in parts)}
    if bias:
        out[f"{bfl}.bias"] = tuple(f"{d}.bias" for d in parts)
    return out


def bfl_table(spec: FluxSpec) -> dict[str, tuple[str, ...]]:
    """BFL key (without the file's prefix) -> the diffusers parameters it holds,
    concatenated along the first dimension in this order."""
    t: dict[str, tuple[str, ...]] = {}
    t.update(_linear("img_in", "x_embedder"))
    t.update(_linear("txt_in", "context_embedder"))
    embedders = [("time_in", "timestep_embedder"), ("vector_in", "text_embedder")] + ([("guidance_in", "guidance_embedder")] if spec.guidance else [])
    for bfl, ours in embedders:
        t.update(_linear(f"{bfl}.in_layer", f"time_text_embed.{ours}.linear_1"))
        t.update(_linear(f"{bfl}.out_layer", f"time_text_embed.{ours}.linear_2"))
    for i in range(spec.double):
        b, d = f"double_blocks.{i}", f"transformer_blocks.{i}"
        for stream, mod, q, k, v, out, ff, qn, kn in (
            ("img", "norm1", "to_q", "to_k", "to_v", "to_out.0", "ff", "norm_q", "norm_k"),
            ("txt", "norm1_context", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out", "ff_context", "norm_added_q", "norm_added_k"),
        ):
            t.update(_linear(f"{b}.{stream}_mod.lin", f"{d}.{mod}.linear"))
            t.update(_fused(f"{b}.{stream}_attn.qkv", (f"{d}.attn.{q}", f"{d}.attn.{k}", f"{d}.attn.{v}")))
            t[f"{b}.{stream}_attn.norm.query_norm.scale"] = (f"{d}.attn.{qn}.weight",)
            t[f"{b}.{stream}_attn.norm.key_norm.scale"] = (f"{d}.attn.{kn}.weight",)
            t.update(_linear(f"{b}.{stream}_attn.proj", f"{d}.attn.{out}"))
            t.update(_linear(f"{b}.{stream}_mlp.0", f"{d}.{ff}.net.0.proj"))
            t.update(_linear(f"{b}.{stream}_mlp.2", f"{d}.{ff}.net.2"))
    for i in range(spec.single):
        b, d = f"single_blocks.{i}", f"single_transformer_blocks.{i}"
        t.update(_fused(f"{b}.linear1", (f"{d}.attn.to_q", f"{d}.attn.to_k", f"{d}.attn.to_v", f"{d}.proj_mlp")))
        t.update(_linear(f"{b}.linear2", f"{d}.proj_out"))
        t[f"{b}.norm.query_norm.scale"] = (f"{d}.attn.norm_q.weight",)
        t[f"{b}.norm.key_norm.scale"] = (f"{d}.attn.norm_k.weight",)
        t.update(_linear(f"{b}.modulation.lin", f"{d}.norm.linear"))
    t.update(_linear("final_layer.adaLN_modulation.1", "norm_out.linear"))
    t.update(_linear("final_layer.linear", "proj_out"))
    return t


#: XLabs' Flux LoRAs name the double blocks' attention by stream (1: image, 2: text)
_XLABS = {"qkv_lora1": "img_attn.qkv", "qkv_lora2": "txt_attn.qkv", "proj_lora1": "img_attn.proj", "proj_lora2": "txt_attn.proj"}


def flux_lora_names(spec: FluxSpec) -> dict[str, list[tuple[str, Optional[tuple[int, int]]]]]:
    """Every name a Flux LoRA may give a layer -> [(diffusers module, rows of the update or
    None)]: kohya's (``lora_unet_double_blocks_0_img_attn_qkv``) and ComfyUI's
    (``diffusion_model.double_blocks.0.img_attn.qkv``) name the file's fused layers, whose
    update is split by rows; diffusers / PEFT / ai-toolkit's name diffusers' own layers
    (``transformer.transformer_blocks.0.attn.to_q``); XLabs' name the double blocks'
    attention (``double_blocks.0.processor.qkv_lora1``)."""
    out: dict[str, list[tuple[str, Optional[tuple[int, int]]]]] = {}
    for bfl, parts in bfl_table(spec).items():
        if not bfl.endswith(".weight") or bfl in SWAPPED:
            continue  # biases and norms are not adapted; the final modulation's halves are swapped
        module = bfl.removesuffix(".weight")
        targets = [(name.removesuffix(".weight"), rows) for name, rows in _row_ranges(spec, parts)]
        out["lora_unet_" + module.replace(".", "_")] = targets
        out["diffusion_model." + module] = targets
        for name, _ in targets:
            out["transformer." + name] = [(name, None)]
    for i in range(spec.double):
        for xlabs, module in _XLABS.items():
            out[f"double_blocks.{i}.processor.{xlabs}"] = out[f"diffusion_model.double_blocks.{i}.{module}"]
    return out


def _row_ranges(spec: FluxSpec, parts: tuple[str, ...]) -> list[tuple[str, Optional[tuple[int, int]]]]:
    """Each diffusers parameter a file tensor holds, with its rows (start, count) of it;
    None for a tensor that holds one parameter whole."""
    if len(parts) == 1:
        return [(parts[0], None)]
    out, start = [], 0
    for name in parts:
        rows = spec.mlp if name.rsplit(".", 2)[-2] == "proj_mlp" else spec.hidden
        out.append((name, (start, rows)))
        start += rows
    return out


def _swap_halves(t: torch.Tensor) -> torch.Tensor:
    first, second = t.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


def _slice(start: int, rows: int) -> Callable[[torch.Tensor], torch.Tensor]:
    def take(t: torch.Tensor) -> torch.Tensor:
        return t[start:start + rows]

    return take


def flux_sources(spec: FluxSpec) -> dict[str, Source]:
    """Diffusers parameter name -> where it comes from in the file (prefix included)."""
    out: dict[str, Source] = {}
    for bfl, parts in bfl_table(spec).items():
        key = spec.prefix + bfl
        if bfl in SWAPPED:
            out[parts[0]] = Source(key, _swap_halves)
            continue
        for name, rows in _row_ranges(spec, parts):
            out[name] = Source(key, None if rows is None else _slice(*rows))
    return out


def bfl_state(spec: FluxSpec, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A diffusers ``FluxTransformer2DModel`` state dict in the BFL file layout (with
    ``spec.prefix``): how the tests write transformer files as users have them."""
    out = {}
    for bfl, parts in bfl_table(spec).items():
        tensor = torch.cat([state[n] for n in parts], dim=0) if len(parts) > 1 else state[parts[0]]
        out[spec.prefix + bfl] = _swap_halves(tensor) if bfl in SWAPPED else tensor.clone()
    return out


def build_flux_transformer(spec: FluxSpec, tf, dtype: torch.dtype, device: torch.device) -> torch.nn.Module:
    """diffusers' ``FluxTransformer2DModel`` for ``spec``, filled strictly from ``tf``
    (a :class:`~brushwork.models.files.TensorFile`), each tensor cast to ``dtype``."""
    from diffusers import FluxTransformer2DModel

    from .load import _fill

    with torch.device("meta"):
        model = FluxTransformer2DModel(**spec.diffusers_config())
    sources = flux_sources(spec)
    quantized = getattr(tf, "quantized", None) or {}
    linear_weights = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    kept: dict = {}

    def take(name: str, src: Source):
        """A GGUF file's quantized linear weight stays quantized (gguf_file.keep_quantized)."""
        q = quantized.get(src.key)
        if q is None or name not in linear_weights:
            return None
        kept[name] = q.map_rows(src.transform)
        return kept[name].stand_in(dtype)

    _fill(model, "Flux transformer", sources.__getitem__, tf, dtype, device, [spec.prefix + n for n in TOP_NAMES], take=take if quantized else None)
    if kept:
        from .gguf_file import keep_quantized

        keep_quantized(model, kept, dtype, device)
    return model.eval().requires_grad_(False)


# ------------------------------------------------------------------ the autoencoder ("ae")

#: Flux.1's 16-channel autoencoder: latents = (posterior - shift) * scale
VAE_SCALE, VAE_SHIFT = 0.3611, 0.1159
#: where the autoencoder's keys may sit: BFL's ``ae.safetensors`` (no prefix),
#: ComfyUI / Forge all-in-one files (``vae.``), old-style single files
VAE_PREFIXES = ("vae.", "first_stage_model.", "")


def flux_vae_prefix(shapes: Shapes) -> Optional[str]:
    """The prefix of a 16-channel (Flux-style) autoencoder in the file, or None."""
    for prefix in VAE_PREFIXES:
        shape = shapes.get(prefix + "decoder.conv_in.weight")
        if shape is not None and len(shape) == 4 and shape[1] == 16:
            return prefix
    return None


def derive_flux_vae(shapes: Shapes, prefix: str):
    """The autoencoder's architecture from its tensors (Flux's has no quant convs)."""
    import re

    from .detect import VAEConfig, _indices, norm_groups

    def need(key: str) -> tuple[int, ...]:
        return _shape(shapes, prefix + key, 4)

    def indices(head: str) -> list[int]:
        return _indices(shapes, re.escape(prefix + head) + r"(\d+)\.")

    levels = indices("encoder.down.")
    if not levels:
        raise UnsupportedModel("the Flux autoencoder has no encoder.down.* tensors; the file is damaged or not in the original layout.")
    widths = tuple(need(f"encoder.down.{i}.block.0.conv2.weight")[0] for i in levels)
    layers = len(indices("encoder.down.0.block."))
    return VAEConfig(
        in_channels=need("encoder.conv_in.weight")[1], out_channels=need("decoder.conv_out.weight")[0], latent_channels=need("encoder.conv_out.weight")[0] // 2,
        widths=widths, layers_per_block=layers, norm_groups=norm_groups(widths), mid_attention=(prefix + "encoder.mid.attn_1.q.weight") in shapes, scaling_factor=VAE_SCALE,
    )


def build_flux_vae(tf, prefix: str, dtype: torch.dtype, device: torch.device) -> torch.nn.Module:
    """diffusers' ``AutoencoderKL`` (16 latent channels, no quant convs, Flux's scale and
    shift) filled strictly from ``tf``'s autoencoder under ``prefix``."""
    from diffusers import AutoencoderKL

    from .convert import vae_source
    from .detect import VAE
    from .load import _fill

    cfg = derive_flux_vae(tf.shapes(), prefix)
    with torch.device("meta"):
        vae = AutoencoderKL(**cfg.diffusers_kwargs(1024), use_quant_conv=False, use_post_quant_conv=False, shift_factor=VAE_SHIFT)
    levels = len(cfg.widths)

    def source(name: str) -> Source:
        src = vae_source(name, levels)
        return Source(prefix + src.key[len(VAE):], src.transform)

    _fill(vae, "Flux autoencoder", source, tf, dtype, device, [prefix + "encoder.", prefix + "decoder."])
    return vae.eval().requires_grad_(False)

