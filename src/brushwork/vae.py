"""Latents -> pixels: the VAE decode, interruptible and tiled for large pictures.

A decode is one long call into the VAE's decoder.  Two things make it safe to
run on any size:

* **Checkpoints inside the decoder.**  ``stop_points`` registers a pre-forward
  hook on every block of a network (resnets, attention, up-samplers); each hook
  asks ``should_stop()`` and raises :class:`Cancelled` when it says so.  A
  cancelled job therefore stops within one block, not after the whole decode.
  The same hooks work on the UNet, so a single sampling step of a huge picture
  is interruptible too.
* **Tiles.**  Latents larger than ``TILE`` on a side are decoded in overlapping
  tiles that are blended with linear ramps.  Working memory is then that of one
  tile, and a cancel is also noticed between tiles.  Pictures up to
  ``TILE * 8`` pixels on each side are decoded whole, exactly as before.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Callable, Iterator, Optional

import torch

log = logging.getLogger(__name__)

#: latent tile side (x8 = pixels) and the overlap between neighbouring tiles
TILE, OVERLAP = 96, 16
#: module class names that get a stop point (diffusers' building blocks)
_STOP_BLOCKS = ("ResnetBlock2D", "Attention", "Upsample2D", "Downsample2D", "Transformer2DModel", "BasicTransformerBlock")

StopCheck = Callable[[], bool]


class Cancelled(Exception):
    """Raised inside a network when the job was cancelled."""


@contextlib.contextmanager
def stop_points(module: torch.nn.Module, should_stop: Optional[StopCheck]) -> Iterator[None]:
    """While active, every block of ``module`` first checks ``should_stop()``."""
    if should_stop is None:
        yield
        return

    def check(_mod, _args):
        if should_stop():
            raise Cancelled()

    handles = [m.register_forward_pre_hook(check) for m in module.modules() if type(m).__name__ in _STOP_BLOCKS]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def tile_starts(size: int, tile: int = TILE, overlap: int = OVERLAP) -> list[int]:
    """Start offsets of tiles of ``tile`` covering ``size`` with at least ``overlap`` shared."""
    if size <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, size - tile, stride))
    starts.append(size - tile)
    return starts


def ramp(length: int, start_fade: int, end_fade: int) -> torch.Tensor:
    """Blend weights along one axis: rising over ``start_fade``, falling over ``end_fade``."""
    w = torch.ones(length)
    if start_fade:
        w[:start_fade] = torch.linspace(0, 1, start_fade + 2)[1:-1]
    if end_fade:
        w[length - end_fade:] = torch.linspace(1, 0, end_fade + 2)[1:-1]
    return w


def _decode_whole(vae, latent: torch.Tensor) -> torch.Tensor:
    dtype = next(vae.parameters()).dtype
    scaled = (latent / vae.config.scaling_factor).to(dtype)
    return vae.decode(scaled).sample


def _decode_tiled(vae, latent: torch.Tensor, should_stop: Optional[StopCheck], tile: int, overlap: int) -> torch.Tensor:
    _, _, h, w = latent.shape
    out: Optional[torch.Tensor] = None
    weight: Optional[torch.Tensor] = None
    ys, xs = tile_starts(h, tile, overlap), tile_starts(w, tile, overlap)
    for iy, y in enumerate(ys):
        for ix, x in enumerate(xs):
            if should_stop is not None and should_stop():
                raise Cancelled()
            th, tw = min(tile, h), min(tile, w)
            part = _decode_whole(vae, latent[:, :, y:y + th, x:x + tw]).float()
            if out is None:
                out = torch.zeros(part.shape[0], part.shape[1], h * 8, w * 8, device=part.device)
                weight = torch.zeros(1, 1, h * 8, w * 8, device=part.device)
            # fade only towards a neighbour: borders of the picture keep full weight
            fy = ((ys[iy - 1] + th - y) * 8 if iy else 0, (y + th - ys[iy + 1]) * 8 if iy + 1 < len(ys) else 0)
            fx = ((xs[ix - 1] + tw - x) * 8 if ix else 0, (x + tw - xs[ix + 1]) * 8 if ix + 1 < len(xs) else 0)
            wy = ramp(th * 8, *fy).to(part.device)
            wx = ramp(tw * 8, *fx).to(part.device)
            mask = (wy[:, None] * wx[None, :])[None, None]
            out[:, :, y * 8:(y + th) * 8, x * 8:(x + tw) * 8] += part * mask
            weight[:, :, y * 8:(y + th) * 8, x * 8:(x + tw) * 8] += mask
    assert out is not None and weight is not None
    return out / weight


def decode_latent(vae, latent: torch.Tensor, should_stop: Optional[StopCheck] = None, tile: int = TILE, overlap: int = OVERLAP) -> torch.Tensor:
    """One latent (1, C, h, w) -> pixels (1, 3, 8h, 8w) in [-1, 1]-ish; raises :class:`Cancelled`."""
    with stop_points(vae, should_stop):
        if latent.shape[-1] <= tile and latent.shape[-2] <= tile:
            return _decode_whole(vae, latent)
        return _decode_tiled(vae, latent, should_stop, tile, overlap)


def decode_checked(vae, latent: torch.Tensor, should_stop: Optional[StopCheck] = None) -> tuple[torch.Tensor, bool]:
    """:func:`decode_latent`, retried in float32 when half precision overflows.

    Returns (pixels, switched): ``switched`` tells the caller the VAE now stays in
    float32 (the retry moves its weights)."""
    pixels = decode_latent(vae, latent, should_stop)
    if torch.isfinite(pixels).all() or next(vae.parameters()).dtype == torch.float32:
        return pixels, False
    log.warning("the VAE produced NaNs in half precision; switching it to float32")
    vae.to(torch.float32)
    return decode_latent(vae, latent, should_stop), True
