"""Build the networks for a detected checkpoint and load its weights strictly.

The networks are diffusers' ``UNet2DConditionModel`` and ``AutoencoderKL`` and
transformers' CLIP text models, created on the ``meta`` device (no memory, no
random init) and then filled tensor by tensor straight from the file: each tensor
is read, cast to the target dtype and placed, so peak memory is the model plus one
tensor.  Loading is strict both ways: every parameter must come from the file with
the right shape, and every file tensor of a component must be used.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional

import torch

from .convert import Source, ema_key, hf_clip_source, is_ignored, openclip_source, unet_source, vae_source
from .detect import UNET, VAE, ModelSpec, TextEncoderConfig, detect
from .errors import CorruptCheckpoint
from .files import TensorFile, damage_reported, open_tensor_file

log = logging.getLogger(__name__)

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in Brushwork ever downloads
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")


@dataclass
class Networks:
    unet: torch.nn.Module
    vae: torch.nn.Module
    text_encoders: list[torch.nn.Module]


def _fill(module: torch.nn.Module, what: str, source_of: Callable[[str], Source], tf: TensorFile, dtype: torch.dtype, device: torch.device, prefixes: Iterable[str],
          take: Optional[Callable[[str, Source], Optional[torch.Tensor]]] = None) -> None:
    """Load every parameter and persistent buffer of ``module`` from ``tf``.

    ``take(name, source)``: a stand-in for a parameter the caller keeps in another form
    (a quantized weight, dequantized per layer at run time), or None to read it here."""
    used: set[str] = set()
    state: dict[str, torch.Tensor] = {}
    finite: dict[str, torch.Tensor] = {}  # file key -> 0-d bool on the device (one sync per module)
    targets = dict(module.named_parameters())
    targets.update({n: b for n, b in module.named_buffers() if n in module.state_dict()})
    for name, target in targets.items():
        try:
            src = source_of(name)
        except KeyError as exc:
            raise CorruptCheckpoint(f"internal key map has no entry for {what} parameter {name!r}: {exc}") from None
        if src.key not in tf.tensors:
            raise CorruptCheckpoint(f"the {what} is incomplete: tensor {src.key!r} (for {name}) is missing from {tf.path.name}. The file is damaged or not in the original layout.")
        taken = take(name, src) if take is not None else None
        if taken is not None:
            if tuple(taken.shape) != tuple(target.shape):
                raise CorruptCheckpoint(f"{tf.path.name}: tensor {src.key!r} has shape {tuple(taken.shape)} but the {what} needs {tuple(target.shape)}; the file mixes parts of different models.")
            state[name] = taken
            used.add(src.key)
            continue
        tensor = tf.get(src.key, dtype)
        if src.transform is not None:
            tensor = src.transform(tensor).contiguous()
            if tensor.untyped_storage().nbytes() > tensor.numel() * tensor.element_size():
                tensor = tensor.clone()  # a slice (one third of a fused q/k/v) must not keep the whole tensor alive
        if tuple(tensor.shape) != tuple(target.shape):
            raise CorruptCheckpoint(f"{tf.path.name}: tensor {src.key!r} has shape {tuple(tensor.shape)} but the {what} needs {tuple(target.shape)}; the file mixes parts of different models.")
        if tensor.layout != torch.strided or tensor.is_floating_point() != target.is_floating_point():
            stored = f"{tensor.dtype}" if tensor.layout == torch.strided else f"a {tensor.layout} tensor"
            raise CorruptCheckpoint(f"{tf.path.name}: tensor {src.key!r} is stored as {stored}, but the {what} needs plain {target.dtype} numbers there; the file is damaged.")
        state[name] = tensor.to(device)
        if tensor.is_floating_point():
            finite[src.key] = all_finite(state[name])
        used.add(src.key)
    _check_finite(finite, tf.path.name)
    leftovers = [k for k in tf.tensors if k.startswith(tuple(prefixes)) and k not in used and not is_ignored(k)]
    if leftovers:
        raise CorruptCheckpoint(
            f"{tf.path.name} has {len(leftovers)} {what} tensor(s) that do not fit the detected architecture, e.g. {leftovers[:3]}; "
            "the model is of a kind Brushwork does not support, or the file is damaged."
        )
    module.load_state_dict(state, strict=True, assign=True)
    _materialise_meta_buffers(module, device)


def all_finite(t: torch.Tensor) -> torch.Tensor:
    """0-d bool on ``t``'s device: no NaN or infinity anywhere in ``t``.

    The smallest and largest values are finite exactly when every value is (NaN
    propagates through min/max), so one fast reduction pass does it, without
    the bool copy of the tensor ``isfinite(t).all()`` makes (about 20x slower on CPU)."""
    if t.numel() == 0:
        return torch.ones((), dtype=torch.bool, device=t.device)
    lo, hi = torch.aminmax(t)
    return torch.isfinite(lo) & torch.isfinite(hi)


def _check_finite(finite: dict[str, torch.Tensor], file_name: str) -> None:
    """Raise naming the first tensor that holds NaN or infinity (such weights turn
    every image black or into noise)."""
    if not finite or bool(torch.stack(list(finite.values())).all()):
        return
    key = next(k for k, ok in finite.items() if not bool(ok))
    raise CorruptCheckpoint(f"{file_name}: {key} contains NaN or infinite values; the file is damaged (or was saved from a diverged training run). Download it again or use another checkpoint.")


def _materialise_meta_buffers(module: torch.nn.Module, device: torch.device) -> None:
    """Non-persistent buffers are not in checkpoints; rebuild those left on ``meta``."""
    for mod_name, mod in module.named_modules():
        for buf_name, buf in list(mod.named_buffers(recurse=False)):
            if buf.device.type != "meta":
                continue
            if buf_name == "position_ids":
                mod.register_buffer(buf_name, torch.arange(buf.shape[-1], device=device).expand(1, -1), persistent=False)
            else:
                raise CorruptCheckpoint(f"internal: buffer {mod_name}.{buf_name} was not initialised")


def build_unet(spec: ModelSpec, tf: TensorFile, dtype: torch.dtype, device: torch.device, use_ema: bool = False) -> torch.nn.Module:
    from diffusers import UNet2DConditionModel

    kwargs = spec.unet.diffusers_kwargs(spec.resolution // 8, upcast_attention=spec.family == "sd2")
    with torch.device("meta"):
        unet = UNet2DConditionModel(**kwargs)

    def source(name: str) -> Source:
        src = unet_source(name, spec.unet)
        if use_ema:
            return Source(ema_key(src.key), src.transform)
        return src

    prefixes = ["model_ema."] if use_ema else [UNET]
    _fill(unet, "UNet", source, tf, dtype, device, prefixes)
    return unet.eval().requires_grad_(False)


def build_vae(spec: ModelSpec, tf: TensorFile, dtype: torch.dtype, device: torch.device) -> torch.nn.Module:
    from diffusers import AutoencoderKL

    with torch.device("meta"):
        vae = AutoencoderKL(**spec.vae.diffusers_kwargs(spec.resolution))
    levels = len(spec.vae.widths)
    _fill(vae, "VAE", lambda n: vae_source(n, levels), tf, dtype, device, [VAE])
    return vae.eval().requires_grad_(False)


def build_text_encoder(cfg: TextEncoderConfig, tf: TensorFile, dtype: torch.dtype, device: torch.device) -> torch.nn.Module:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(**cfg.transformers_kwargs())
    config._attn_implementation = "sdpa"
    cls = CLIPTextModelWithProjection if cfg.projection_dim is not None else CLIPTextModel
    with torch.device("meta"):
        model = cls(config)
    if cfg.layout == "hf":
        has_text_model = any(k.startswith(cfg.prefix + "text_model.") for k in tf.tensors)
        source = lambda n: hf_clip_source(n, cfg.prefix, has_text_model)  # noqa: E731
    else:
        source = lambda n: openclip_source(n, cfg.prefix)  # noqa: E731
    _fill(model, "text encoder", source, tf, dtype, device, [cfg.prefix])
    return model.eval().requires_grad_(False)


@dataclass(frozen=True)
class Placing:
    """Where and in what dtype each network is built (a memory plan's choice): the
    UNet, the text encoders and the VAE may each go elsewhere."""

    dtype: torch.dtype
    device: torch.device
    encoder_dtype: torch.dtype | None = None
    encoder_device: torch.device | None = None
    vae_device: torch.device | None = None


def build_networks(spec: ModelSpec, tf: TensorFile, dtype: torch.dtype, device: torch.device, vae_dtype: torch.dtype | None = None, use_ema: bool = False,
                   placing: Placing | None = None) -> Networks:
    if use_ema and not spec.ema:
        raise CorruptCheckpoint(f"{tf.path.name} has no EMA weights ('model_ema.' tensors); load it without the EMA option.")
    placing = placing or Placing(dtype, device)
    unet = build_unet(spec, tf, placing.dtype, placing.device, use_ema)
    vae = build_vae(spec, tf, vae_dtype or dtype, placing.vae_device or placing.device)
    encoders = [build_text_encoder(cfg, tf, placing.encoder_dtype or placing.dtype, placing.encoder_device or placing.device) for cfg in spec.text_encoders]
    return Networks(unet, vae, encoders)


def load_checkpoint(path: Path, dtype: torch.dtype, device: torch.device, vae_dtype: torch.dtype | None = None, use_ema: bool = False,
                    placing_for: Callable[[ModelSpec, dict], Placing] | None = None) -> tuple[ModelSpec, Networks]:
    """Open, recognise and build a checkpoint file: (spec, networks).  ``placing_for``,
    given the detected spec and the file's tensor table, may choose other dtypes and
    devices per network (a memory plan: 16-bit weights at rest, text encoders on the CPU).

    Every failure is a one-line :class:`~.errors.ModelFileError` naming the file:
    a damaged or foreign file never surfaces as a raw Python error."""
    with damage_reported(path):
        with open_tensor_file(path) as tf:
            spec = detect(tf.shapes(), tf.metadata, tf.get, name=path.name)
            placing = None if placing_for is None else placing_for(spec, tf.tensors)
            return spec, build_networks(spec, tf, dtype, device, vae_dtype=vae_dtype or dtype, use_ema=use_ema, placing=placing)


def load_text_encoders(path: Path, spec: ModelSpec, dtype: torch.dtype, device: torch.device) -> list[torch.nn.Module]:
    """Read only the text encoders of an already detected checkpoint again (strictly,
    as :func:`load_checkpoint` does)."""
    with damage_reported(path):
        with open_tensor_file(path) as tf:
            return [build_text_encoder(cfg, tf, dtype, device) for cfg in spec.text_encoders]
