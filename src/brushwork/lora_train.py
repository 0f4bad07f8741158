"""``brushwork train-lora``: teach a checkpoint a concept from a folder of images.

The dataset follows kohya's convention: ``photo1.png`` with its caption in
``photo1.txt`` beside it.  Low-rank adapters (down/up pairs) are trained on the
UNet's transformer layers (optionally its 3x3 convs, LoCon, and the text
encoder's projections) with the usual diffusion loss while the checkpoint stays
frozen, and written as a kohya-format LoRA (``lora_unet_*``/``lora_te_*`` keys
with ``alpha``; SDXL UNet modules in the original layout's names, as kohya does;
kohya metadata: base model, tag frequencies, output name, network args), so
Brushwork, AUTOMATIC1111 and ComfyUI all load it.  SD 1.x, SD 2.x and SDXL
(UNet only for SDXL); CPU or CUDA.
"""
from __future__ import annotations

import json
import math
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
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


class LoraModule(torch.nn.Module):
    """A frozen linear or conv layer plus a trainable low-rank update, scaled by alpha / rank.

    Linear: ``W x + up(down(x))``.  Conv (kohya's LoCon): ``down`` is a conv with the
    layer's kernel, stride and padding into ``rank`` channels, ``up`` a 1x1 conv.
    """

    def __init__(self, base: torch.nn.Module, rank: int, alpha: float, generator: torch.Generator):
        super().__init__()
        self.base = base
        w = base.weight
        down_shape = (rank, *w.shape[1:])
        up_shape = (w.shape[0], rank) + ((1, 1) if w.dim() == 4 else ())
        fan_in = math.prod(w.shape[1:])
        self.down = torch.nn.Parameter(torch.randn(down_shape, generator=generator, dtype=torch.float32) / math.sqrt(fan_in))
        self.up = torch.nn.Parameter(torch.zeros(up_shape, dtype=torch.float32))
        self.scale = alpha / rank
        self.alpha = alpha

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.base, torch.nn.Conv2d):
            b = self.base
            h = F.conv2d(x, self.down, None, b.stride, b.padding, b.dilation)
            return b(x) + F.conv2d(h, self.up) * self.scale
        return self.base(x) + F.linear(F.linear(x, self.down), self.up) * self.scale


def targets(unet: torch.nn.Module, text_encoder: Optional[torch.nn.Module], conv: bool, original_names=None) -> dict[str, tuple[torch.nn.Module, str, torch.nn.Module]]:
    """The layers kohya trains: kohya key -> (parent, child name, layer).

    UNet: every linear and 1x1 conv in the transformer blocks; with ``conv``, also
    the 3x3 convs of the resnets, down- and upsamplers (LoCon).  Text encoder: the
    attention and MLP projections.  ``original_names`` (a UNetConfig) names the UNet
    modules in the original checkpoint layout, as kohya does for SDXL.
    """
    from .models import convert
    from .models.detect import UNET

    found: dict[str, tuple[torch.nn.Module, str, torch.nn.Module]] = {}

    def visit(root: torch.nn.Module, want, key) -> None:
        for name, mod in root.named_modules():
            for child_name, child in mod.named_children():
                full = f"{name}.{child_name}" if name else child_name
                if want(full, child):
                    found[key(full).replace(".", "_")] = (mod, child_name, child)

    def unet_layer(full: str, child: torch.nn.Module) -> bool:
        if ".attentions." in f".{full}" and (isinstance(child, torch.nn.Linear) or (isinstance(child, torch.nn.Conv2d) and child.kernel_size == (1, 1))):
            return True
        return conv and isinstance(child, torch.nn.Conv2d) and any(p in f".{full}" for p in (".resnets.", ".downsamplers.", ".upsamplers."))

    def unet_key(full: str) -> str:
        if original_names is None:
            return "lora_unet_" + full
        # SDXL: kohya names UNet modules in the original (ldm) layout
        return "lora_unet_" + convert.unet_source(full + ".weight", original_names).key.removeprefix(UNET).removesuffix(".weight")

    def te_key(full: str) -> str:  # kohya counts names from HF's CLIPTextModel (text_model.*)
        return "lora_te_" + (full if full.startswith("text_model.") else "text_model." + full)

    visit(unet, unet_layer, unet_key)
    if text_encoder is not None:
        visit(text_encoder, lambda full, child: isinstance(child, torch.nn.Linear) and ("self_attn." in full or "mlp." in full), te_key)
    return found


def inject(layers: dict[str, tuple[torch.nn.Module, str, torch.nn.Module]], rank: int, alpha: float, conv_rank: int, conv_alpha: float, seed: int) -> dict[str, LoraModule]:
    g = torch.Generator().manual_seed(seed)
    wrapped: dict[str, LoraModule] = {}
    for key, (parent, child_name, child) in layers.items():
        is_3x3 = isinstance(child, torch.nn.Conv2d) and child.kernel_size != (1, 1)
        wrapper = LoraModule(child, conv_rank if is_3x3 else rank, conv_alpha if is_3x3 else alpha, g)
        setattr(parent, child_name, wrapper)
        wrapped[key] = wrapper
    return wrapped


def restore(layers: dict[str, tuple[torch.nn.Module, str, torch.nn.Module]]) -> None:
    for parent, child_name, child in layers.values():
        setattr(parent, child_name, child)


@dataclass
class LoraTrainConfig:
    steps: int = 400
    rank: int = 4
    alpha: float = 4.0
    lr: float = 1e-3
    batch: int = 4
    seed: int = 0
    size: Optional[int] = None  # default: the checkpoint's native size
    conv_rank: int = 0  # > 0: also train the 3x3 convs (LoCon)
    conv_alpha: float = 1.0
    text_encoder: bool = False  # also train the text encoder's projections
    flip: bool = False  # random horizontal flips


def _batch_contexts(encoded: list[torch.Tensor], empty: torch.Tensor) -> torch.Tensor:
    """Stack per-caption contexts, padding the shorter ones with empty chunks."""
    from .conditioning import pad_context

    longest = max(c.shape[1] for c in encoded)
    return torch.cat([pad_context(c, longest, empty) for c in encoded])


def train_lora(engine, dataset: Path, out: Path, cfg: LoraTrainConfig, progress: Optional[Callable[[int, int, float], None]] = None, overwrite: bool = False) -> Path:
    """Train a LoRA for the engine's loaded checkpoint and write it to ``out``."""
    from safetensors.torch import save_file

    from .conditioning import encode_prompt
    from .sampling.schedules import scaled_linear_alphas_cumprod
    from .vae import scaled_latents

    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; choose another --out or pass --overwrite.")
    m = engine._require_model()
    sdxl = m.spec.family == "sdxl"
    if sdxl and cfg.text_encoder:
        raise DatasetError("--train-text-encoder works with SD 1.x and SD 2.x checkpoints; for SDXL, train the UNet only (leave it out).")
    size = cfg.size or m.spec.resolution
    pixels, captions = read_dataset(dataset, size)
    device, dtype = engine.placement.device, torch.float32
    net = m.networks
    torch.manual_seed(cfg.seed)
    with torch.no_grad():
        vae = net.vae
        latents = scaled_latents(vae, torch.cat([vae.encode(pixels[i : i + 4].to(device, vae.dtype)).latent_dist.mean.float() for i in range(0, len(pixels), 4)]))
        conds = [encode_prompt(m.spec, net.text_encoders, c, 1, device) for c in captions]
        empty = encode_prompt(m.spec, net.text_encoders, "", 1, device).context.float()
        contexts = _batch_contexts([c.context.float() for c in conds], empty)
        # SDXL's UNet also takes the pooled text embedding and the size it was asked for
        pooled = torch.cat([c.pooled.float() for c in conds]) if sdxl else None
        time_ids = torch.tensor([[size, size, 0, 0, size, size]], dtype=dtype, device=device) if sdxl else None
    unet, te = net.unet, net.text_encoders[0]
    original = {mod: next(mod.parameters()).dtype for mod in (unet, te)}
    for mod in original:
        mod.to(dtype)
    layers = targets(unet, te if cfg.text_encoder else None, conv=cfg.conv_rank > 0, original_names=m.spec.unet if sdxl else None)
    wrapped = inject(layers, cfg.rank, cfg.alpha, cfg.conv_rank, cfg.conv_alpha, cfg.seed)
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
                if cfg.flip:
                    flip = (torch.rand(len(idx), generator=gen) < 0.5).to(device)
                    x0 = torch.where(flip[:, None, None, None], x0.flip(-1), x0)
                if cfg.text_encoder:
                    ctx = _batch_contexts([encode_prompt(m.spec, net.text_encoders, captions[i], 1, device, grad=True).context.float() for i in idx.tolist()], empty)
                else:
                    ctx = contexts[idx]
                t = torch.randint(0, 1000, (len(idx),), generator=gen).to(device)
                eps = torch.randn(x0.shape, generator=gen).to(device)
                a = abar[t].view(-1, 1, 1, 1)
                xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
                added = {"text_embeds": pooled[idx], "time_ids": time_ids.expand(len(idx), -1)} if sdxl else None
                pred = unet(xt, t, encoder_hidden_states=ctx, added_cond_kwargs=added).sample
                target = eps if m.spec.prediction == "epsilon" else a.sqrt() * eps - (1 - a).sqrt() * x0
                loss = F.mse_loss(pred.float(), target)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if progress is not None:
                    progress(step + 1, cfg.steps, loss.item())
        tensors = {}
        for key, w in wrapped.items():
            tensors[f"{key}.lora_down.weight"] = w.down.detach().cpu().contiguous().to(torch.float16)
            tensors[f"{key}.lora_up.weight"] = w.up.detach().cpu().contiguous().to(torch.float16)
            tensors[f"{key}.alpha"] = torch.tensor(float(w.alpha), dtype=torch.float16)
    finally:
        restore(layers)
        for mod, dt in original.items():
            mod.to(dt)
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
        "ss_network_module": "networks.lora",
        "ss_network_args": json.dumps({"conv_dim": str(cfg.conv_rank), "conv_alpha": str(cfg.conv_alpha)} if cfg.conv_rank else {}),
        "ss_text_encoder_lr": str(cfg.lr if cfg.text_encoder else 0),
        "ss_tag_frequency": json.dumps({dataset.name: freq}),
        "ss_sd_model_name": m.path.name,
        "ss_steps": str(cfg.steps),
        "brushwork.training": json.dumps({**asdict(cfg), "size": size, "seconds": round(time.monotonic() - t0, 1)}),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    save_file(tensors, str(tmp), metadata=metadata)
    tmp.replace(out)
    return out
