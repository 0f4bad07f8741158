"""Tiny random-weight upscaler files in the real key layouts (the names and shapes
the released ESRGAN, Real-ESRGAN and SwinIR files use), for the tests.

Every builder returns a plain ``{name: tensor}`` state dict; :func:`save` writes it
as .pth (``torch.save``, optionally nested under ``params_ema`` as BasicSR does)
or .safetensors.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import torch

GC = 32  # the growth channels of ESRGAN's dense blocks (fixed in the released models)


class _Weights:
    """Deterministic random weights, scaled so activations stay moderate."""

    def __init__(self, seed: int) -> None:
        self.g = torch.Generator().manual_seed(seed)

    def conv(self, sd: dict, name: str, cout: int, cin: int, k: int = 3, gain: float = 1.0, bias: float = 0.02) -> None:
        std = gain / math.sqrt(cin * k * k)
        sd[f"{name}.weight"] = torch.randn(cout, cin, k, k, generator=self.g) * std
        sd[f"{name}.bias"] = torch.randn(cout, generator=self.g) * bias

    def linear(self, sd: dict, name: str, cout: int, cin: int, gain: float = 1.0) -> None:
        sd[f"{name}.weight"] = torch.randn(cout, cin, generator=self.g) * (gain / math.sqrt(cin))
        sd[f"{name}.bias"] = torch.randn(cout, generator=self.g) * 0.02

    def norm(self, sd: dict, name: str, c: int) -> None:
        sd[f"{name}.weight"] = 1 + 0.1 * torch.randn(c, generator=self.g)
        sd[f"{name}.bias"] = 0.05 * torch.randn(c, generator=self.g)

    def vector(self, c: int, mean: float, std: float) -> torch.Tensor:
        return mean + std * torch.randn(c, generator=self.g)


def _last_bias(sd: dict, name: str) -> None:
    sd[f"{name}.bias"] = sd[f"{name}.bias"] + 0.5  # pictures around mid-grey, not clipped


def _dense_blocks(w, sd: dict, nf: int, blocks: int, key: str) -> None:
    """ESRGAN's residual-in-residual dense blocks: 3 dense blocks of 5 convs per block,
    named by ``key`` (with {b}, {r}, {j}); conv j sees nf + (j - 1) * GC channels."""
    for b in range(blocks):
        for r in (1, 2, 3):
            for j in range(1, 6):
                w.conv(sd, key.format(b=b, r=r, j=j), nf if j == 5 else GC, nf + (j - 1) * GC, gain=0.5)


def esrgan_old(nf: int = 8, blocks: int = 1, scale: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    """ESRGAN in the original key style: ``model.0`` first conv, ``model.1.sub.N.RDBk.convj.0``
    dense blocks, ``model.1.sub.<blocks>`` trunk conv, then per 2x an upconv at ``model.3``,
    ``model.6`` ..., and the HR and last convs two and four indices after the last one."""
    assert scale in (1, 2, 4, 8)
    w = _Weights(seed)
    sd: dict[str, torch.Tensor] = {}
    w.conv(sd, "model.0", nf, 3)
    _dense_blocks(w, sd, nf, blocks, "model.1.sub.{b}.RDB{r}.conv{j}.0")
    w.conv(sd, f"model.1.sub.{blocks}", nf, nf, gain=0.5)
    ups = int(math.log2(scale))
    for i in range(1, ups + 1):
        w.conv(sd, f"model.{3 * i}", nf, nf)
    w.conv(sd, f"model.{3 * ups + 2}", nf, nf)
    w.conv(sd, f"model.{3 * ups + 4}", 3, nf, gain=0.5)
    _last_bias(sd, f"model.{3 * ups + 4}")
    return sd


def esrgan_new(nf: int = 8, blocks: int = 1, seed: int = 1) -> dict[str, torch.Tensor]:
    """ESRGAN 4x in BasicSR's (Real-ESRGAN's) key style: ``conv_first``,
    ``body.N.rdbk.convj``, ``conv_body``, ``conv_up1``, ``conv_up2``, ``conv_hr``, ``conv_last``."""
    w = _Weights(seed)
    sd: dict[str, torch.Tensor] = {}
    w.conv(sd, "conv_first", nf, 3)
    _dense_blocks(w, sd, nf, blocks, "body.{b}.rdb{r}.conv{j}")
    w.conv(sd, "conv_body", nf, nf, gain=0.5)
    w.conv(sd, "conv_up1", nf, nf)
    w.conv(sd, "conv_up2", nf, nf)
    w.conv(sd, "conv_hr", nf, nf)
    w.conv(sd, "conv_last", 3, nf, gain=0.5)
    _last_bias(sd, "conv_last")
    return sd


def compact(nf: int = 8, convs: int = 2, scale: int = 4, seed: int = 2) -> dict[str, torch.Tensor]:
    """Real-ESRGAN's SRVGGNetCompact: ``body.0`` conv, then PReLU / conv pairs (a PReLU's
    ``body.N.weight`` has shape (nf,)), the last conv giving 3*scale**2 channels.
    realesr-general-x4v3 is ``compact(64, 32, 4)``."""
    w = _Weights(seed)
    sd: dict[str, torch.Tensor] = {}
    w.conv(sd, "body.0", nf, 3)
    sd["body.1.weight"] = w.vector(nf, 0.25, 0.05)
    for i in range(convs):
        w.conv(sd, f"body.{2 * i + 2}", nf, nf)
        sd[f"body.{2 * i + 3}.weight"] = w.vector(nf, 0.25, 0.05)
    last = 2 * convs + 2
    w.conv(sd, f"body.{last}", 3 * scale * scale, nf, gain=0.5)
    return sd


def _relative_position_index(ws: int) -> torch.Tensor:
    """Index into the (2ws-1)**2 bias table for every pair of positions in a window."""
    ys, xs = torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij")
    pos = torch.stack([ys.flatten(), xs.flatten()])  # 2, ws*ws
    rel = pos[:, :, None] - pos[:, None, :] + (ws - 1)  # 2, N, N in [0, 2ws-2]
    return (rel[0] * (2 * ws - 1) + rel[1]).to(torch.int64)


def _shift_mask(size: int, ws: int) -> torch.Tensor:
    """The attention mask of a shifted-window block for a size x size input:
    0 between positions of the same region, -100 between different ones."""
    shift = ws // 2
    region = torch.zeros(size, size)
    label = 0
    bands = ((0, size - ws), (size - ws, size - shift), (size - shift, size))
    for y0, y1 in bands:
        for x0, x1 in bands:
            region[y0:y1, x0:x1] = label
            label += 1
    n = size // ws
    windows = region.view(n, ws, n, ws).permute(0, 2, 1, 3).reshape(n * n, ws * ws)
    diff = windows[:, None, :] - windows[:, :, None]
    return torch.where(diff != 0, torch.tensor(-100.0), torch.tensor(0.0))


def swinir(embed: int = 12, depth: int = 2, heads: int = 2, window: int = 4, img_size: int = 16,
           mlp_ratio: int = 2, scale: int = 4, num_feat: int = 64, seed: int = 3) -> dict[str, torch.Tensor]:
    """Classical SwinIR (pixelshuffle upsampler, one residual Swin group): ``conv_first``,
    ``patch_embed.norm``, ``layers.0.residual_group.blocks.N.{norm1, attn.*, norm2, mlp.*}``
    with the position-index buffers and the shifted blocks' ``attn_mask``,
    ``layers.0.conv``, ``norm``, ``conv_after_body``, ``conv_before_upsample.0``,
    ``upsample.0/2``, ``conv_last``."""
    w = _Weights(seed)
    sd: dict[str, torch.Tensor] = {}
    w.conv(sd, "conv_first", embed, 3)
    w.norm(sd, "patch_embed.norm", embed)
    for b in range(depth):
        p = f"layers.0.residual_group.blocks.{b}"
        if b % 2 == 1:
            sd[f"{p}.attn_mask"] = _shift_mask(img_size, window)
        w.norm(sd, f"{p}.norm1", embed)
        sd[f"{p}.attn.relative_position_bias_table"] = 0.02 * torch.randn((2 * window - 1) ** 2, heads, generator=w.g)
        sd[f"{p}.attn.relative_position_index"] = _relative_position_index(window)
        w.linear(sd, f"{p}.attn.qkv", 3 * embed, embed)
        w.linear(sd, f"{p}.attn.proj", embed, embed, gain=0.5)
        w.norm(sd, f"{p}.norm2", embed)
        w.linear(sd, f"{p}.mlp.fc1", mlp_ratio * embed, embed)
        w.linear(sd, f"{p}.mlp.fc2", embed, mlp_ratio * embed, gain=0.5)
    w.conv(sd, "layers.0.conv", embed, embed, gain=0.5)
    w.norm(sd, "norm", embed)
    w.conv(sd, "conv_after_body", embed, embed, gain=0.5)
    w.conv(sd, "conv_before_upsample.0", num_feat, embed)
    for i in range(int(math.log2(scale))):
        w.conv(sd, f"upsample.{2 * i}", 4 * num_feat, num_feat)
    w.conv(sd, "conv_last", 3, num_feat, gain=0.5)
    _last_bias(sd, "conv_last")
    return sd


def save(sd: dict[str, torch.Tensor], path: Path, wrap: Optional[str] = None) -> Path:
    """Write ``sd`` to ``path``: .safetensors, else ``torch.save`` (nested under
    ``wrap``, e.g. "params_ema", if given)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    else:
        torch.save({wrap: sd} if wrap else sd, str(path))
    return path
