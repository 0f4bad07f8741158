"""Reading a VAE file on its own (``models/vae``: ``sdxl_vae.safetensors``,
``vae-ft-mse-840000-ema-pruned.safetensors``, a diffusers
``diffusion_pytorch_model.safetensors``) into the checkpoint's VAE architecture.

Three layouts are read, found from the key names:

* **original** (what AUTOMATIC1111's ``models/VAE`` holds): ``encoder.down.0.block.0...``;
* **prefixed**: the same under ``first_stage_model.`` (a VAE cut out of a checkpoint);
* **diffusers**: ``encoder.down_blocks.0.resnets.0...`` (also the older attention
  names ``query``/``key``/``value``/``proj_attn``).

Loading is as strict as a checkpoint's (every weight accounted for, shapes checked,
no NaN), and a file made for another architecture (a 16-channel SD3/Flux VAE, a
checkpoint instead of a VAE) is refused with what it is.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from .convert import Source, vae_source
from .detect import VAE, ModelSpec
from .errors import CorruptCheckpoint, UnsupportedModel
from .files import TensorFile, damage_reported, open_tensor_file

log = logging.getLogger(__name__)

_PARTS = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")
#: diffusers' old attention names -> today's
_OLD_ATTENTION = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}


def vae_layout(keys) -> str:
    """"original", "prefixed" or "diffusers" from the tensor names; a file that is no
    VAE raises :class:`UnsupportedModel` saying what it looks like."""
    keys = list(keys)
    if any(k.startswith("model.diffusion_model.") for k in keys):
        raise UnsupportedModel("this is a whole checkpoint, not a VAE file; put it in models/checkpoints (its own VAE is used with it)")
    if any(k.startswith(VAE + "encoder.") for k in keys):
        return "prefixed"
    if any(k.startswith("encoder.down_blocks.") for k in keys):
        return "diffusers"
    if any(k.startswith("encoder.down.") for k in keys):
        return "original"
    if any(k.startswith(("lora_", "lora_unet_", "lora_te")) or ".lora_" in k for k in keys):
        raise UnsupportedModel("this is a LoRA, not a VAE; put it in models/loras and use it as <lora:NAME:1> in a prompt")
    raise UnsupportedModel("this is not a VAE file (it has no encoder.* / decoder.* weights of an SD-style autoencoder)")


def _view(tf: TensorFile, layout: str) -> TensorFile:
    """``tf`` with its VAE tensors under the checkpoint's ``first_stage_model.`` names
    (original layout) or as they are (prefixed, diffusers); other tensors left out."""
    if layout == "prefixed":
        keys = {k: v for k, v in tf.tensors.items() if k.startswith(VAE)}
        return TensorFile(tf.path, keys, tf.metadata, lambda name, dtype: tf.get(name, dtype))
    if layout == "original":
        keys = {VAE + k: v for k, v in tf.tensors.items() if k.startswith(_PARTS)}
        return TensorFile(tf.path, keys, tf.metadata, lambda name, dtype: tf.get(name[len(VAE):], dtype))
    keys = {k: v for k, v in tf.tensors.items() if k.startswith(_PARTS)}
    return TensorFile(tf.path, keys, tf.metadata, lambda name, dtype: tf.get(name, dtype))


def _ignored(tf: TensorFile, view: TensorFile, layout: str) -> list[str]:
    own = set(view.tensors) if layout != "original" else {k[len(VAE):] for k in view.tensors}
    return [k for k in tf.tensors if k not in own]


def _diffusers_source(tensors: dict) -> callable:
    def source(name: str) -> Source:
        if name in tensors:
            return Source(name)
        for new, old in _OLD_ATTENTION.items():  # diffusers before 0.14 named the mid attention so
            if f".{new}." in name:
                return Source(name.replace(f".{new}.", f".{old}."), lambda t: t.reshape(t.shape[0], t.shape[1]) if t.ndim == 4 else t)
        return Source(name)

    return source


def check_fits(tf: TensorFile, layout: str, spec: ModelSpec, name: str) -> None:
    """Refuse a VAE of another architecture before building anything: its latent
    channels (4 for SD 1.x/2.x/SDXL) and first width must be the checkpoint's."""
    conv = {"diffusers": "decoder.conv_in.weight", "original": "decoder.conv_in.weight", "prefixed": VAE + "decoder.conv_in.weight"}[layout]
    info = tf.tensors.get(conv)
    if info is None or len(info.shape) != 4:
        raise CorruptCheckpoint(f"{name} has no decoder.conv_in weight: the VAE file is incomplete. Download it again.")
    latent = info.shape[1]
    if latent != spec.vae.latent_channels:
        raise UnsupportedModel(
            f"{name} is a VAE for {latent}-channel latents (an SD3/Flux-style autoencoder), but {spec.label} uses "
            f"{spec.vae.latent_channels}; pick a VAE made for {spec.label} (for SDXL: sdxl_vae or sdxl-vae-fp16-fix; for SD 1.x: vae-ft-mse-840000)"
        )
    width = info.shape[0]
    if width != spec.vae.widths[-1]:
        raise UnsupportedModel(f"{name} is a VAE of another size (decoder width {width}, the checkpoint's is {spec.vae.widths[-1]}); pick a VAE made for {spec.label}")


def load_vae_file(path: Path, spec: ModelSpec, dtype: torch.dtype, device: torch.device) -> torch.nn.Module:
    """A diffusers ``AutoencoderKL`` of ``spec``'s VAE architecture with the weights of
    the VAE file ``path``.  Every failure is a one-line ModelFileError naming the file."""
    from diffusers import AutoencoderKL

    from .load import _fill

    with damage_reported(path):
        with open_tensor_file(path) as tf:
            layout = vae_layout(tf.tensors)
            check_fits(tf, layout, spec, path.name)
            view = _view(tf, layout)
            skipped = _ignored(tf, view, layout)
            if skipped:
                log.info("%s: %d tensor(s) that are no part of the VAE are not used, e.g. %s", path.name, len(skipped), skipped[:3])
            with torch.device("meta"):
                vae = AutoencoderKL(**spec.vae.diffusers_kwargs(spec.resolution))
            levels = len(spec.vae.widths)
            if layout == "diffusers":
                _fill(vae, "VAE", _diffusers_source(view.tensors), view, dtype, device, _PARTS)
            else:
                _fill(vae, "VAE", lambda n: vae_source(n, levels), view, dtype, device, [VAE])
            return vae.eval().requires_grad_(False)
