"""``brushwork train-lora``: teach a checkpoint a concept from a folder of images.

The dataset follows kohya's convention: ``photo1.png`` with its caption in
``photo1.txt`` beside it.  Low-rank adapters (down/up pairs) are trained on the
UNet's attention projections with the usual diffusion loss while the checkpoint
stays frozen, and written as a kohya-format LoRA (``lora_unet_*`` keys with
``alpha``, and kohya metadata: base model, tag frequencies, output name), so
Brushwork, AUTOMATIC1111 and ComfyUI all load it.  CPU or CUDA.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
TARGETS = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0")
BASE_VERSION = {"sd1": "sd_v1", "sd2": "sd_v2_768_v", "sdxl": "sdxl_base_v1-0"}


class DatasetError(ValueError):
    pass


def read_dataset(folder: Path, size: int) -> tuple[torch.Tensor, list[str]]:
    """Images (N, 3, size, size) in [-1, 1] and their captions (kohya convention)."""
    if not folder.is_dir():
        raise DatasetError(f"{folder} is not a folder. Give a folder of images with same-named .txt captions.")
    images, captions = [], []
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        cap = path.with_suffix(".txt")
        caption = cap.read_text(encoding="utf-8").strip() if cap.exists() else ""
        try:
            img = Image.open(path).convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
        except OSError as exc:
            raise DatasetError(f"{path.name} could not be read as an image ({exc}).") from None
        images.append(torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float() / 127.5 - 1)
        captions.append(caption)
    if not images:
        raise DatasetError(f"{folder} has no images ({', '.join(IMAGE_SUFFIXES)}).")
    return torch.stack(images), captions


class LoraLinear(torch.nn.Module):
    """A frozen linear layer plus a trainable low-rank update: W x + up(down(x)) * alpha / rank."""

    def __init__(self, base: torch.nn.Linear, rank: int, alpha: float, generator: torch.Generator):
        super().__init__()
        self.base = base
        self.down = torch.nn.Parameter(torch.randn(rank, base.in_features, generator=generator) / rank)
        self.up = torch.nn.Parameter(torch.zeros(base.out_features, rank))
        self.scale = alpha / rank
        self.alpha = alpha

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + F.linear(F.linear(x, self.down), self.up) * self.scale


def inject(unet: torch.nn.Module, rank: int, alpha: float, seed: int) -> dict[str, LoraLinear]:
    g = torch.Generator().manual_seed(seed)
    wrapped: dict[str, LoraLinear] = {}
    for name, mod in list(unet.named_modules()):
        for child_name, child in list(mod.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            if isinstance(child, torch.nn.Linear) and full.endswith(TARGETS):
                wrapper = LoraLinear(child, rank, alpha, g)
                setattr(mod, child_name, wrapper)
                wrapped[full] = wrapper
    return wrapped


def restore(unet: torch.nn.Module, wrapped: dict[str, LoraLinear]) -> None:
    for full, wrapper in wrapped.items():
        parent_name, _, child_name = full.rpartition(".")
        parent = unet.get_submodule(parent_name) if parent_name else unet
        if child_name.isdigit():
            parent[int(child_name)] = wrapper.base
        else:
            setattr(parent, child_name, wrapper.base)


@dataclass
class LoraTrainConfig:
    steps: int = 400
    rank: int = 4
    alpha: float = 4.0
    lr: float = 1e-3
    batch: int = 4
    seed: int = 0
    size: Optional[int] = None  # default: the checkpoint's native size


def train_lora(engine, dataset: Path, out: Path, cfg: LoraTrainConfig, progress: Optional[Callable[[int, int, float], None]] = None, overwrite: bool = False) -> Path:
    """Train a LoRA for the engine's loaded checkpoint and write it to ``out``."""
    from safetensors.torch import save_file

    from .conditioning import encode_prompt, pad_context
    from .sampling.schedules import scaled_linear_alphas_cumprod

    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; choose another --out or pass --overwrite.")
    m = engine._require_model()
    if m.spec.family == "sdxl":
        raise DatasetError("training LoRAs for SDXL checkpoints is not supported yet; use an SD 1.x or SD 2.x checkpoint.")
    size = cfg.size or m.spec.resolution
    pixels, captions = read_dataset(dataset, size)
    device, dtype = engine.placement.device, torch.float32
    net = m.networks
    torch.manual_seed(cfg.seed)
    with torch.no_grad():
        vae = net.vae
        latents = torch.cat([vae.encode(pixels[i : i + 4].to(device, vae.dtype)).latent_dist.mean.float() for i in range(0, len(pixels), 4)]) * vae.config.scaling_factor
        encoded = [encode_prompt(m.spec, net.text_encoders, c, 1, device).context.float() for c in captions]
        empty = encode_prompt(m.spec, net.text_encoders, "", 1, device).context.float()
        longest = max(c.shape[1] for c in encoded)
        contexts = torch.cat([pad_context(c, longest, empty) for c in encoded])
    unet = net.unet
    original_dtype = next(unet.parameters()).dtype
    unet.to(dtype)
    wrapped = inject(unet, cfg.rank, cfg.alpha, cfg.seed)
    params = [p for w in wrapped.values() for p in (w.down, w.up)]
    for w in wrapped.values():
        w.down.data = w.down.data.to(device)
        w.up.data = w.up.data.to(device)
    opt = torch.optim.AdamW(params, lr=cfg.lr)
    abar = scaled_linear_alphas_cumprod().float().to(device)
    gen = torch.Generator().manual_seed(cfg.seed)
    t0 = time.monotonic()
    try:
        with torch.enable_grad():
            for step in range(cfg.steps):
                idx = torch.randint(0, len(latents), (min(cfg.batch, len(latents)),), generator=gen)
                x0 = latents[idx]
                ctx = contexts[idx]
                t = torch.randint(0, 1000, (len(idx),), generator=gen).to(device)
                eps = torch.randn(x0.shape, generator=gen).to(device)
                a = abar[t].view(-1, 1, 1, 1)
                xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
                pred = unet(xt, t, encoder_hidden_states=ctx).sample
                target = eps if m.spec.prediction == "epsilon" else a.sqrt() * eps - (1 - a).sqrt() * x0
                loss = F.mse_loss(pred.float(), target)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if progress is not None:
                    progress(step + 1, cfg.steps, loss.item())
        tensors = {}
        for name, w in wrapped.items():
            key = "lora_unet_" + name.replace(".", "_")
            tensors[f"{key}.lora_down.weight"] = w.down.detach().cpu().contiguous().to(torch.float16)
            tensors[f"{key}.lora_up.weight"] = w.up.detach().cpu().contiguous().to(torch.float16)
            tensors[f"{key}.alpha"] = torch.tensor(float(w.alpha), dtype=torch.float16)
    finally:
        restore(unet, wrapped)
        unet.to(original_dtype)
    freq: dict[str, int] = {}
    for c in captions:
        for tag in (t.strip() for t in c.split(",")):
            if tag:
                freq[tag] = freq.get(tag, 0) + 1
    metadata = {
        "ss_base_model_version": BASE_VERSION[m.spec.family],
        "ss_v2": str(m.spec.family == "sd2"),
        "ss_output_name": out.stem,
        "ss_network_dim": str(cfg.rank),
        "ss_network_alpha": str(cfg.alpha),
        "ss_tag_frequency": json.dumps({dataset.name: freq}),
        "ss_sd_model_name": m.path.name,
        "ss_steps": str(cfg.steps),
        "brushwork.training": json.dumps({"steps": cfg.steps, "rank": cfg.rank, "lr": cfg.lr, "batch": cfg.batch, "seed": cfg.seed, "size": size, "seconds": round(time.monotonic() - t0, 1)}),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    save_file(tensors, str(tmp), metadata=metadata)
    tmp.replace(out)
    return out
