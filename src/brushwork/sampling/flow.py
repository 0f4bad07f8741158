"""Rectified flow (Flux.1) behind the samplers' x0 contract.

A flow model sees ``x = (1 - sigma) * x0 + sigma * noise`` and predicts the velocity
``v = noise - x0``, so its clean estimate is ``x0 = x - sigma * v``.  For such an x0
the samplers' ODE ``dx/dsigma = (x - x0) / sigma`` is exactly ``v``: Euler, Heun,
DPM++ 2M and LMS integrate the flow unchanged.  Ancestral and SDE samplers add noise
as if ``x = x0 + sigma * noise`` and do not fit a flow model.

The sigmas are Flux's: ``steps`` evenly spaced levels from 1 down to ``1/steps``,
then a shift that depends on the picture's size (``mu`` grows linearly with the
number of 2x2 latent patches, from 0.5 at 256 patches to 1.15 at 4096, i.e. at
1024x1024) and a final 0.  Schnell samples without the shift.

Latents travel as Flux packs them: (B, 16, H/8, W/8) -> (B, H/16 * W/16, 64), each
token a 2x2 patch of 16 channels, with position ids (0, row, column).
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch

from ..conditioning import TextConditioning

#: the shift's two anchor points: (patches, mu)
BASE_SEQ, BASE_SHIFT = 256, 0.5
MAX_SEQ, MAX_SHIFT = 4096, 1.15
#: samplers that integrate the flow ODE without adding noise
FLOW_SAMPLERS = ("euler", "heun", "dpmpp_2m", "lms")


def shift_mu(patches: int) -> float:
    """Flux's resolution-dependent shift for a picture of ``patches`` 2x2 latent patches."""
    slope = (MAX_SHIFT - BASE_SHIFT) / (MAX_SEQ - BASE_SEQ)
    return BASE_SHIFT + slope * (patches - BASE_SEQ)


def time_shift(mu: float, sigma: torch.Tensor) -> torch.Tensor:
    """``e^mu / (e^mu + (1/sigma - 1))``: noise levels pushed towards 1 for large pictures."""
    return math.exp(mu) / (math.exp(mu) + (1 / sigma - 1))


def flux_sigmas(steps: int, patches: int, shift: bool = True) -> torch.Tensor:
    """``steps + 1`` decreasing noise levels in [0, 1] ending in 0 (float32)."""
    if steps < 1:
        raise ValueError(f"a Flux schedule needs at least 1 step, got {steps}")
    base = torch.linspace(1.0, 1.0 / steps, steps, dtype=torch.float64)
    levels = time_shift(shift_mu(patches), base) if shift else base
    return torch.cat([levels, levels.new_zeros(1)]).to(torch.float32)


def patches(height: int, width: int) -> int:
    """The number of 2x2 latent patches (transformer tokens) of a picture in pixels."""
    return (height // 16) * (width // 16)


def pack(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, h/2 * w/2, 4C): each token one 2x2 patch."""
    b, c, h, w = latents.shape
    if h % 2 or w % 2:
        raise ValueError(f"Flux latents need even sides, got {h}x{w} (pictures in multiples of 16 pixels)")
    x = latents.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """The inverse of :func:`pack` for latents of ``h`` x ``w``."""
    b, n, d = tokens.shape
    c = d // 4
    x = tokens.reshape(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c, h, w)


def image_ids(h: int, w: int, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """(h/2 * w/2, 3) position ids (0, row, column) of the packed tokens."""
    rows = torch.arange(h // 2, dtype=dtype, device=device)[:, None].expand(h // 2, w // 2)
    cols = torch.arange(w // 2, dtype=dtype, device=device)[None, :].expand(h // 2, w // 2)
    return torch.stack([torch.zeros_like(rows), rows, cols], dim=-1).reshape(-1, 3)


class FlowDenoiser:
    """``denoise(x, sigma) -> x0`` for a Flux transformer on packed latents.

    ``guidance``: dev's distilled guidance (the "Distilled CFG Scale", passed to the
    network; None for schnell). ``cfg_scale`` other than 1 with a ``negative`` prompt
    adds real classifier-free guidance: a second network call per step (a float, or
    one per image as a (B, 1, 1) tensor).  ``texts_at(sigma) -> (positive, negative)``
    picks the texts per step instead (prompt editing; negative None: no real CFG)."""

    def __init__(self, net: torch.nn.Module, positive: Optional[TextConditioning], h: int, w: int, guidance: Optional[float],
                 negative: Optional[TextConditioning] = None, cfg_scale=1.0,
                 texts_at: Optional[Callable[[torch.Tensor], tuple[TextConditioning, Optional[TextConditioning]]]] = None) -> None:
        self.net = net
        self.texts_at = texts_at if texts_at is not None else (lambda sigma: (positive, negative))
        self.cfg_scale = cfg_scale
        self.guidance = guidance
        self.img_ids = image_ids(h, w)
        self.dtype = next(net.parameters()).dtype  # the network's compute type
        self.calls = 0

    def _velocity(self, x: torch.Tensor, sigma: torch.Tensor, text: TextConditioning) -> torch.Tensor:
        b, dtype = x.shape[0], self.dtype
        ctx = text.context.expand(b, -1, -1).to(dtype)
        txt_ids = torch.zeros(ctx.shape[1], 3, dtype=dtype, device=x.device)
        guidance = None if self.guidance is None else torch.full((b,), float(self.guidance), dtype=torch.float32, device=x.device)
        self.calls += 1
        out = self.net(
            hidden_states=x.to(dtype), encoder_hidden_states=ctx, pooled_projections=text.pooled.expand(b, -1).to(dtype),
            timestep=sigma.reshape(1).expand(b).to(dtype), img_ids=self.img_ids.to(device=x.device, dtype=dtype), txt_ids=txt_ids,
            guidance=guidance, return_dict=False,
        )[0]
        return out.to(x.dtype)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        positive, negative = self.texts_at(sigma)
        v = self._velocity(x, sigma, positive)
        scale = self.cfg_scale
        if negative is not None and (bool((scale != 1).any()) if isinstance(scale, torch.Tensor) else scale != 1):
            uncond = self._velocity(x, sigma, negative)
            v = uncond + scale * (v - uncond)
        return x - sigma * v
