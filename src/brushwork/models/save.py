"""Writing networks back into the original single-file layout.

The inverse of :mod:`.load`: walks each network's parameters, asks the same key
maps where they live in a checkpoint, and undoes the layout transforms.  Used to
make test checkpoints, the benchmark checkpoint and the demo model, so all of
them are read back through exactly the loader that civitai files use.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch

from . import convert
from .detect import ModelSpec
from .load import Networks


def random_networks(spec: ModelSpec, seed: int = 0, device: str | torch.device = "cpu") -> Networks:
    """Networks of ``spec``'s architecture with seeded random weights (``device="meta"``
    gives shape-only stand-ins that cost no memory)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    with torch.device(device):
        unet = UNet2DConditionModel(**spec.unet.diffusers_kwargs(spec.resolution // 8, upcast_attention=spec.family == "sd2"))
        vae = AutoencoderKL(**spec.vae.diffusers_kwargs(spec.resolution))
        encoders = []
        for cfg in spec.text_encoders:
            cls = CLIPTextModelWithProjection if cfg.projection_dim is not None else CLIPTextModel
            encoders.append(cls(CLIPTextConfig(**cfg.transformers_kwargs())))
    if str(device) != "meta":
        _randomize_zero_inits(unet)
    return Networks(unet.eval(), vae.eval(), [e.eval() for e in encoders])


def _randomize_zero_inits(module: torch.nn.Module) -> None:
    """Give every all-zero weight small random values, so no branch of a random
    test model is silently dead (and a wrong key map cannot hide behind zeros)."""
    with torch.no_grad():
        for p in module.parameters():
            if p.ndim > 1 and not p.any():
                p.normal_(0, 0.02)


def vae_ldm_state(vae: torch.nn.Module, levels: int, prefix: str = convert.VAE) -> dict[str, torch.Tensor]:
    """A diffusers AutoencoderKL's weights under their original-layout keys, after ``prefix``
    (a checkpoint's ``first_stage_model.``; "" for a VAE file of its own)."""
    out = {}
    for name, t in vae.state_dict().items():
        src = convert.vae_source(name, levels)
        out[prefix + src.key[len(convert.VAE):]] = t[:, :, None, None] if src.transform is convert._conv1x1_to_linear and t.ndim == 2 else t
    return out


def ldm_state_dict(spec: ModelSpec, networks: Networks) -> dict[str, torch.Tensor]:
    """All weights of ``networks`` under their original-layout checkpoint keys."""
    out: dict[str, torch.Tensor] = {}
    for name, t in networks.unet.state_dict().items():
        out[convert.unet_source(name, spec.unet).key] = t
    out.update(vae_ldm_state(networks.vae, len(spec.vae.widths)))
    for cfg, enc in zip(spec.text_encoders, networks.text_encoders):
        fused: dict[str, list] = {}
        for name, t in enc.state_dict().items():
            if name.endswith("position_ids"):
                continue
            if cfg.layout == "hf":
                out[convert.hf_clip_source(name, cfg.prefix, True).key] = t
                continue
            src = convert.openclip_source(name, cfg.prefix)
            if src.transform is convert._transpose:
                out[src.key] = t.t().contiguous()
            elif src.transform is not None:  # one third of a fused q/k/v
                part = "qkv".index(name.split("self_attn.")[1][0])
                fused.setdefault(src.key, [None, None, None])[part] = t
            else:
                out[src.key] = t
        for key, parts in fused.items():
            out[key] = torch.cat(parts, dim=0)
        if cfg.layout == "openclip":
            out[cfg.prefix + "logit_scale"] = torch.tensor(4.6052)
    return out


def save_checkpoint(path: str | Path, spec: ModelSpec, networks: Networks, dtype: torch.dtype = torch.float16, metadata: Optional[dict[str, str]] = None, overwrite: bool = False) -> Path:
    """Write a single-file ``.safetensors`` checkpoint in the original key layout."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; refusing to overwrite it. Choose another name or delete it first.")
    state = {k: (v.to(dtype) if v.is_floating_point() else v).contiguous() for k, v in ldm_state_dict(spec, networks).items()}
    meta = {"brushwork.family": spec.family, "modelspec.prediction_type": "v" if spec.prediction == "v_prediction" else "epsilon"}
    meta.update(metadata or {})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    save_file(state, str(tmp), metadata={k: str(v) for k, v in meta.items()})
    tmp.replace(path)
    return path


def spec_summary(spec: ModelSpec) -> str:
    return json.dumps({"family": spec.family, "prediction": spec.prediction, "unet_widths": spec.unet.widths}, sort_keys=True)
