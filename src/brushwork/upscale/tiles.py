"""Running an upscaler network over a picture in tiles.

Each tile is cut out with a halo of ``halo`` input pixels on every side that has a
neighbour, run through the network, and only the tile's own part of the output is
kept and written into one full-size float32 output on the CPU.  Where the halo
covers the network's receptive field, tiled equals untiled (up to float rounding).

The tile size comes from a working-memory estimate per input pixel (the widest
layer's channels at low resolution, the upsampled stages at ``scale**2`` the
pixels, a safety factor), the largest that fits the memory budget.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from ..vae import Cancelled, tile_spans
from .models import UpscalerError

#: the smallest tile side chosen automatically
MIN_TILE = 32
#: the default halo in input pixels (on each side that has a neighbour)
DEFAULT_HALO = 16
_SAFETY = 2.0


def widest_channels(model: torch.nn.Module) -> int:
    """The largest output-channel / feature count among the model's weights."""
    widest = 3
    for p in model.parameters():
        if p.dim() >= 2:
            widest = max(widest, int(p.shape[0]), int(p.shape[1]))
    return widest


def bytes_per_input_pixel(model: torch.nn.Module, scale: int, element_bytes: int = 4) -> int:
    """Estimated peak working memory per input pixel while the network runs: a few
    activations of the widest width at input resolution (concatenations, residuals)
    and, for the upsampling stages, activations at ``scale**2`` times the pixels.
    When the last convolution gives ``3 * scale**2`` channels, the network works at
    input resolution and ends in a pixel shuffle (Real-ESRGAN Compact, SwinIR's
    lightweight models): only that output is at full size.  Otherwise the last
    convolution's input width is taken to run at full size (ESRGAN, classical SwinIR)."""
    c = widest_channels(model)
    convs = [p for p in model.parameters() if p.dim() == 4]
    low = 6 * c
    high = 0
    if scale > 1 and convs:
        last = convs[-1]
        if int(last.shape[0]) == 3 * scale * scale:
            high = 2 * 3 * scale * scale
        else:
            high = 3 * int(last.shape[1]) * scale * scale
    io = 3 * (1 + scale * scale) * 2  # the tile in, its output (and a copy)
    return int(math.ceil(_SAFETY * element_bytes * (low + high + io)))


def round_down(value: int, multiple: int) -> int:
    return max(multiple, value // multiple * multiple)


def choose_tile(height: int, width: int, per_pixel: int, budget: int, halo: int, multiple_of: int = 1) -> Optional[int]:
    """None when the whole picture fits in ``budget`` bytes, else the largest tile
    side (a multiple of ``multiple_of``, at least :data:`MIN_TILE`) whose tile plus
    halo fits."""
    if height * width * per_pixel <= budget:
        return None
    side = int(math.isqrt(max(budget, 0) // max(per_pixel, 1))) - 2 * halo
    step = max(1, multiple_of)
    side = round_down(max(side, MIN_TILE), step)
    if side < MIN_TILE:
        side += step * math.ceil((MIN_TILE - side) / step)
    return side


def pad_to_requirements(x: torch.Tensor, minimum: int = 0, multiple_of: int = 1, square: bool = False) -> torch.Tensor:
    """``x`` padded on the right and bottom (edge pixels repeated) so that its sides
    are at least ``minimum``, multiples of ``multiple_of`` and, if ``square``, equal."""
    h, w = x.shape[-2:]
    m = max(1, multiple_of)
    th = -(-max(h, minimum) // m) * m
    tw = -(-max(w, minimum) // m) * m
    if square:
        th = tw = max(th, tw)
    if (th, tw) == (h, w):
        return x
    return F.pad(x, (0, tw - w, 0, th - h), mode="replicate")


def run_tiled(
    run: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    scale: int,
    tile: Optional[int],
    halo: int = DEFAULT_HALO,
    minimum: int = 0,
    multiple_of: int = 1,
    square: bool = False,
    should_stop: Optional[Callable[[], bool]] = None,
) -> torch.Tensor:
    """``run`` over ``image`` (1, C, H, W; float32 on the CPU) in tiles of ``tile``
    input pixels (None: whole), each with its halo; returns the (1, C', H*scale,
    W*scale) float32 CPU output.  ``run`` takes a CPU float32 piece and returns the
    network's output for it (any device or dtype).  ``should_stop`` is asked before
    each tile; True raises :class:`brushwork.vae.Cancelled`."""
    _, _, h, w = image.shape
    if tile is None or tile <= 0:
        tile = max(h, w)
    tile = max(1, int(tile))
    halo = max(0, int(halo))
    out: Optional[torch.Tensor] = None
    for y0, y1 in tile_spans(h, tile):
        for x0, x1 in tile_spans(w, tile):
            if should_stop is not None and should_stop():
                raise Cancelled()
            hy0, hy1 = max(0, y0 - halo), min(h, y1 + halo)
            hx0, hx1 = max(0, x0 - halo), min(w, x1 + halo)
            piece = image[:, :, hy0:hy1, hx0:hx1]
            ph, pw = piece.shape[-2:]
            result = run(pad_to_requirements(piece, minimum, multiple_of, square))
            if result.shape[-2] < ph * scale or result.shape[-1] < pw * scale:
                raise UpscalerError(f"the upscaler network returned {tuple(result.shape[-2:])} pixels for a {ph}x{pw} piece at scale {scale}; the model file does not match the architecture spandrel detected. Use another upscaler.")
            if out is None:
                out = torch.empty((1, result.shape[1], h * scale, w * scale), dtype=torch.float32)
            own = result[:, :, (y0 - hy0) * scale:(y1 - hy0) * scale, (x0 - hx0) * scale:(x1 - hx0) * scale]
            out[:, :, y0 * scale:y1 * scale, x0 * scale:x1 * scale] = own.to(device="cpu", dtype=torch.float32)
            del result, own
    assert out is not None
    return out
