"""Pixels <-> latents: the VAE encode and decode, interruptible and tiled for large pictures.

A VAE pass is one long call into the encoder or the decoder.  Three things make
it safe to run on any size:

* **Checkpoints inside the network.**  ``stop_points`` registers a pre-forward
  hook on every block of a network (resnets, attention, up/down-samplers); each
  hook asks ``should_stop()`` and raises :class:`Cancelled` when it says so.  A
  cancelled job therefore stops within one block, not after the whole pass.
  The same hooks work on the UNet, so a single sampling step of a huge picture
  is interruptible too.
* **Tiles, chosen by memory.**  A pass runs on the whole frame unless
  :func:`vae_pass_bytes` (an estimate of its working memory) would not fit in
  the device's free memory (:func:`use_tiles`); then it is *streamed*: the
  network runs layer by layer, every intermediate activation of the whole frame
  is held in a buffer in host memory (:class:`_Frame`), and each layer is
  computed tile by tile on the VAE's device, so that device only ever holds one
  tile's working set (:func:`tile_pass_bytes`).  A cancel is also noticed
  between tiles.
* **Exact tiles.**  A streamed pass does the same arithmetic as the whole pass,
  only scheduled in tiles, so it equals the whole pass to float rounding:

  - a convolution's tile reads its input tile plus the halo the kernel needs
    (1 pixel for a 3x3), clamped at the picture's border, and is padded with
    zeros only where it touches that border (the network's own zero padding);
    1x1 convolutions need no halo; the encoder's stride-2 down-samplers read
    rows and columns ``2y .. 2y+2`` of their (0, 1, 0, 1)-padded input; the
    decoder's up-samplers read the half-resolution tile plus halo, repeat it
    2x (nearest) and convolve;
  - a GroupNorm normalises every tile with the statistics of the *whole* frame:
    per-(sample, channel) sums and sums of squares (float64) are gathered while
    the previous layer writes its tiles, and reduced to per-(sample, group)
    mean and variance before the norm's first tile;
  - the mid block's self-attention (one attention over all latent positions)
    runs whole, at latent resolution (1/64 of the pixels), with diffusers'
    memory-efficient attention; its resnets are streamed like the others.

  Measured on the demo VAE: tiled decode equals whole decode to 0-1 levels
  (0..255), tiled encode to ~1e-6 relative (tests/test_vae_tiling.py).
  A whole-frame pass is still preferred when it fits: it moves no activations
  between devices and is faster.

On a CPU the "host" buffers and the "device" are the same memory: streaming then
bounds the *peak working* memory of each layer (one tile's temporaries instead
of a whole frame's), not the total, since the full-frame activations (two or
three at a time) are still held.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Callable, Iterator, Optional

import numpy as np
import torch
import torch.nn.functional as F

from . import devices

log = logging.getLogger(__name__)

#: default latent tile side (x8 = pixels); at a stage of the network at 1/k of the
#: picture's resolution a tile is ``TILE * 8 / k`` pixels of that stage
TILE = 96
#: smallest latent tile the automatic choice shrinks to when even a tile would not fit
MIN_TILE = 32
#: a pass may use at most this share of the free memory
SAFETY = 0.5
#: pixels over which a mirrored-halves decode crosses from one half to the other
MIRROR_RAMP = 16
#: full-resolution tensors of the widest stage alive at once inside a block
#: (input, normalised, activated, convolved, residual)
LIVE_TENSORS = 5
#: latent-resolution tensors alive at once in the whole-frame mid-block attention of a
#: streamed pass (input, normalised, query, key, value, output)
MID_LIVE_TENSORS = 6
#: where a streamed pass keeps its full-frame activations
STORAGE = torch.device("cpu")
#: module class names that get a stop point (diffusers' building blocks)
_STOP_BLOCKS = ("ResnetBlock2D", "Attention", "Upsample2D", "Downsample2D", "Transformer2DModel", "BasicTransformerBlock", "FluxTransformerBlock", "FluxSingleTransformerBlock")

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


# ---------------------------------------------------------------- memory: whole frame or tiles


def _vae_config(vae_or_config):
    return getattr(vae_or_config, "config", vae_or_config)


def _get(config, key, default=None):
    return config.get(key, default) if isinstance(config, dict) else getattr(config, key, default)


def _dtype_bytes(vae_or_config, dtype_bytes: Optional[int]) -> int:
    if dtype_bytes is not None:
        return dtype_bytes
    try:
        return next(vae_or_config.parameters()).element_size()
    except (AttributeError, StopIteration, TypeError):
        return 4


def _widest_activation(cfg, pixels: int, direction: str) -> int:
    """Elements of the widest activation (channels x pixels) of a pass over ``pixels``."""
    if direction not in ("encode", "decode"):
        raise ValueError(f"direction must be 'encode' or 'decode', not {direction!r}")
    chans = list(_get(cfg, "block_out_channels", (128, 256, 512, 512)))
    widest = 0
    for s in range(len(chans)):
        # at stage s (resolution 1/2^s) the blocks see their own width and, at the
        # stage's border, the width of the neighbouring stage (decoder: the up-sampler
        # of the coarser stage; encoder: the finer stage's output)
        neighbour = chans[s + 1] if direction == "decode" and s + 1 < len(chans) else chans[s - 1] if direction == "encode" and s else 0
        widest = max(widest, max(chans[s], neighbour) * (pixels >> (2 * s)))
    return widest


def vae_pass_bytes(vae_or_config, height: int, width: int, direction: str = "decode", dtype_bytes: Optional[int] = None) -> int:
    """Working memory (bytes) of one whole-frame VAE pass over a ``height`` x ``width``
    pixel picture, ``direction`` "encode" or "decode".

    Pure arithmetic over the config: the widest activation (channels x pixels of the
    stage where that product is largest, the full-resolution one for SD's VAEs) times
    ``LIVE_TENSORS`` tensors alive at once, plus the mid-block attention's token x token
    matrix (single head, as if materialised: the worst case).  ``dtype_bytes`` defaults
    to the VAE's parameter size when a VAE is given, else 4."""
    cfg = _vae_config(vae_or_config)
    widest = _widest_activation(cfg, height * width, direction)
    chans = list(_get(cfg, "block_out_channels", (128, 256, 512, 512)))
    tokens = (height * width) >> (2 * (len(chans) - 1))
    attention = tokens * tokens if _get(cfg, "mid_block_add_attention", True) else 0
    return int((widest * LIVE_TENSORS + attention) * _dtype_bytes(vae_or_config, dtype_bytes))


def tile_pass_bytes(vae_or_config, tile: int, height: int, width: int, direction: str = "decode", dtype_bytes: Optional[int] = None) -> int:
    """Working memory (bytes) on the VAE's device of a streamed pass in latent tiles of
    ``tile`` over a ``height`` x ``width`` picture: one tile's widest activation times
    ``LIVE_TENSORS``, or the mid block's whole-frame attention at latent resolution
    (``MID_LIVE_TENSORS`` tensors of the mid block's width, memory-efficient attention),
    whichever is larger.  The full-frame buffers are in host memory and not counted
    (on a CPU that is the same memory: see the module's docstring)."""
    cfg = _vae_config(vae_or_config)
    side_h, side_w = min(height, tile * 8), min(width, tile * 8)
    per_tile = _widest_activation(cfg, side_h * side_w, direction) * LIVE_TENSORS
    chans = list(_get(cfg, "block_out_channels", (128, 256, 512, 512)))
    tokens = (height * width) >> (2 * (len(chans) - 1))
    mid = chans[-1] * tokens * MID_LIVE_TENSORS if _get(cfg, "mid_block_add_attention", True) else 0
    return int(max(per_tile, mid) * _dtype_bytes(vae_or_config, dtype_bytes))


def streamed_decode_bytes(vae_or_config, height: int, width: int, host_is_device: bool, dtype_bytes: Optional[int] = None, tile: int = TILE) -> int:
    """Working memory of a streamed (tiled) decode as a memory plan counts it: one
    tile's working set on the device, plus, where host memory is the device's (a CPU),
    the three full-frame float32 activations the stream holds at once."""
    on_device = tile_pass_bytes(vae_or_config, tile, height, width, "decode", dtype_bytes)
    if not host_is_device:
        return on_device
    return on_device + 3 * _widest_activation(_vae_config(vae_or_config), height * width, "decode") * 4


def _device_of(vae) -> torch.device:
    try:
        return next(vae.parameters()).device
    except (AttributeError, StopIteration):
        return torch.device("cpu")


def use_tiles(vae, height: int, width: int, direction: str = "decode", device: Optional[torch.device] = None, free_bytes: Optional[int] = None, safety: float = SAFETY) -> bool:
    """Whether a ``height`` x ``width`` pixel pass should be streamed in tiles: when the
    whole-frame estimate exceeds ``safety`` x the free memory of the VAE's device."""
    if free_bytes is None:
        free_bytes = devices.free_memory_bytes(device if device is not None else _device_of(vae))
    return vae_pass_bytes(vae, height, width, direction) > safety * free_bytes


def fitting_tile(vae, direction: str = "decode", device: Optional[torch.device] = None, tile: int = TILE, safety: float = SAFETY, height: Optional[int] = None, width: Optional[int] = None) -> int:
    """``tile`` (latent units), halved while a streamed pass in such tiles would not fit
    (down to ``MIN_TILE``).  ``height`` x ``width`` is the picture (default: one tile's)."""
    free = devices.free_memory_bytes(device if device is not None else _device_of(vae))

    def need(t: int) -> int:
        return tile_pass_bytes(vae, t, height or t * 8, width or t * 8, direction)

    while tile > MIN_TILE and need(tile) > safety * free:
        tile = max(MIN_TILE, tile // 2)
    return tile


def _wants_tiles(vae, h: int, w: int, direction: str, tiled: Optional[bool], tile: Optional[int]) -> bool:
    """The choice for a latent-size ``h`` x ``w`` pass: forced by ``tiled``; an explicit
    ``tile`` alone asks for tiles where the latent is larger than it; else by memory."""
    if tiled is not None:
        return tiled
    if tile is not None:
        return h > tile or w > tile
    return use_tiles(vae, h * 8, w * 8, direction)


def _auto_tile(vae, tile: Optional[int], tiled: Optional[bool], direction: str, h: int, w: int) -> int:
    if tile is not None:
        return tile
    return fitting_tile(vae, direction, height=h * 8, width=w * 8) if tiled is None else TILE


# ---------------------------------------------------------------- the streaming executor


def tile_spans(size: int, side: int) -> list[tuple[int, int]]:
    """``[start, end)`` spans of ``side`` covering ``size`` without overlap; the last
    one is shorter when ``side`` does not divide ``size``."""
    side = max(1, side)
    return [(s, min(s + side, size)) for s in range(0, size, side)]


Span = tuple[int, int]


class _Frame:
    """One activation of the whole frame (N, C, H, W) in storage memory, with the
    per-(sample, channel) sum and sum of squares (float64) of what was written."""

    def __init__(self, data: torch.Tensor) -> None:
        self.data = data
        n, c = data.shape[:2]
        self.sums = torch.zeros(n, c, dtype=torch.float64)
        self.squares = torch.zeros(n, c, dtype=torch.float64)

    @classmethod
    def empty(cls, n: int, c: int, h: int, w: int, dtype: torch.dtype) -> "_Frame":
        return cls(torch.empty(n, c, h, w, dtype=dtype, device=STORAGE))

    @classmethod
    def of(cls, tensor: torch.Tensor, dtype: torch.dtype) -> "_Frame":
        """A frame holding ``tensor`` (any device), its statistics gathered."""
        frame = cls.empty(*tensor.shape, dtype)
        frame.write((0, tensor.shape[-2]), (0, tensor.shape[-1]), tensor.to(dtype))
        return frame

    @property
    def size(self) -> tuple[int, int]:
        return self.data.shape[-2], self.data.shape[-1]

    def write(self, rows: Span, cols: Span, part: torch.Tensor) -> None:
        self.data[:, :, rows[0]:rows[1], cols[0]:cols[1]].copy_(part)
        self.sums += part.sum(dim=(2, 3), dtype=torch.float64).to(STORAGE)
        self.squares += part.float().square().sum(dim=(2, 3), dtype=torch.float64).to(STORAGE)

    def group_affine(self, norm: torch.nn.GroupNorm) -> tuple[torch.Tensor, torch.Tensor]:
        """``norm`` over this whole frame as a per-(sample, channel) scale and shift
        (float64, (N, C)): ``norm(x) == x * scale + shift``."""
        n, c = self.sums.shape
        g = norm.num_groups
        count = float(self.data.shape[-2] * self.data.shape[-1] * (c // g))
        mean = self.sums.view(n, g, c // g).sum(-1) / count
        var = (self.squares.view(n, g, c // g).sum(-1) / count - mean * mean).clamp_min(0.0)
        rstd = (var + norm.eps).rsqrt()
        scale = rstd.repeat_interleave(c // g, dim=1)
        shift = -mean.repeat_interleave(c // g, dim=1) * scale
        if norm.affine:
            w, b = norm.weight.detach().to(STORAGE, torch.float64), norm.bias.detach().to(STORAGE, torch.float64)
            scale, shift = scale * w, shift * w + b
        return scale, shift


Reader = Callable[[Span, Span], torch.Tensor]


def _conv_tile(read: Reader, size: tuple[int, int], conv: torch.nn.Conv2d, pad: tuple[int, int, int, int], rows: Span, cols: Span) -> torch.Tensor:
    """Output ``rows`` x ``cols`` of ``conv`` over an input of ``size`` (H, W) zero-padded
    by ``pad`` (top, bottom, left, right), computed on the compute device.

    ``read(rows, cols)`` returns a region of the input there; the region this tile
    needs is clamped to the input and the rest (the picture's border only) filled
    with zeros, then convolved without padding."""
    (kh, kw), (sh, sw) = conv.kernel_size, conv.stride
    top, bottom, left, right = pad
    # the input rows and columns the tile needs, in the input's coordinates
    r0, r1 = rows[0] * sh - top, (rows[1] - 1) * sh + kh - top
    c0, c1 = cols[0] * sw - left, (cols[1] - 1) * sw + kw - left
    lo_r, hi_r, lo_c, hi_c = max(r0, 0), min(r1, size[0]), max(c0, 0), min(c1, size[1])
    x = read((lo_r, hi_r), (lo_c, hi_c))
    border = (lo_c - c0, c1 - hi_c, lo_r - r0, r1 - hi_r)
    if any(border):
        x = F.pad(x, border)
    return F.conv2d(x, conv.weight, conv.bias, stride=conv.stride, groups=conv.groups)


class _Streamer:
    """Runs a VAE's encoder or decoder layer by layer over full-frame buffers (host
    memory), each layer tile by tile on ``device``."""

    def __init__(self, device: torch.device, dtype: torch.dtype, latent_size: tuple[int, int], tile: int, should_stop: Optional[StopCheck]) -> None:
        self.device, self.dtype = device, dtype
        self.latent_size, self.tile = latent_size, max(1, tile)
        self.should_stop = should_stop

    def check(self) -> None:
        if self.should_stop is not None and self.should_stop():
            raise Cancelled()

    def spans(self, h: int, w: int) -> tuple[list[Span], list[Span]]:
        """Tiles of a frame of ``h`` x ``w``: ``tile`` latent units, scaled to its resolution."""
        lh, lw = self.latent_size
        return tile_spans(h, self.tile * max(1, h // lh)), tile_spans(w, self.tile * max(1, w // lw))

    # -- reading

    def reader(self, frame: _Frame, norm: Optional[torch.nn.GroupNorm] = None, acts: tuple = (), up: int = 1) -> Reader:
        """Reads regions of ``frame`` onto the device: normalised with the whole frame's
        statistics by ``norm``, then through ``acts``, then (``up`` 2) repeated 2x nearest
        (regions are then in the up-sampled frame's coordinates)."""
        affine = None
        if norm is not None:
            scale, shift = frame.group_affine(norm)
            affine = (scale.float().to(self.device)[:, :, None, None], shift.float().to(self.device)[:, :, None, None])

        def read(rows: Span, cols: Span) -> torch.Tensor:
            if up == 1:
                (a, b), (c, d) = rows, cols
            else:
                a, b, c, d = rows[0] // up, (rows[1] - 1) // up + 1, cols[0] // up, (cols[1] - 1) // up + 1
            x = frame.data[:, :, a:b, c:d].to(self.device)
            if affine is not None:
                x = torch.addcmul(affine[1], x.float(), affine[0]).to(self.dtype)
            for act in acts:
                x = act(x)
            if up != 1:
                x = F.interpolate(x, scale_factor=float(up), mode="nearest")
                x = x[:, :, rows[0] - a * up:rows[1] - a * up, cols[0] - c * up:cols[1] - c * up]
            return x

        return read

    # -- layers

    def conv(self, frame: _Frame, conv: torch.nn.Module, read: Optional[Reader] = None, up: int = 1, extra: tuple[int, int, int, int] = (0, 0, 0, 0),
             residual: Optional[Callable[[Span, Span], torch.Tensor]] = None, divide: float = 1.0) -> _Frame:
        """``conv`` over ``frame`` (read through ``read``, at ``up`` x its size, padded by
        ``extra`` besides the conv's own padding), plus ``residual``, over ``divide``."""
        conv = _plain_conv(conv)
        read = read or self.reader(frame, up=up)
        h, w = frame.size[0] * up, frame.size[1] * up
        (ph, pw), (kh, kw), (sh, sw) = conv.padding, conv.kernel_size, conv.stride
        pad = (ph + extra[0], ph + extra[1], pw + extra[2], pw + extra[3])
        oh, ow = (h + pad[0] + pad[1] - kh) // sh + 1, (w + pad[2] + pad[3] - kw) // sw + 1
        out = _Frame.empty(frame.data.shape[0], conv.out_channels, oh, ow, self.dtype)
        row_spans, col_spans = self.spans(oh, ow)
        for rows in row_spans:
            for cols in col_spans:
                self.check()
                y = _conv_tile(read, (h, w), conv, pad, rows, cols)
                if residual is not None:
                    y = residual(rows, cols) + y
                if divide != 1.0:
                    y = y / divide
                out.write(rows, cols, y)
        return out

    def resnet(self, frame: _Frame, block) -> _Frame:
        """diffusers' ResnetBlock2D without a time embedding (the VAE's)."""
        if getattr(block, "upsample", None) is not None or getattr(block, "downsample", None) is not None or getattr(block, "time_emb_proj", None) is not None:
            raise NotImplementedError("streaming supports resnet blocks without resampling or time embedding (the VAE's)")
        if type(block).__name__ != "ResnetBlock2D" or getattr(block, "time_embedding_norm", "default") == "scale_shift":
            # without a time embedding every other time_embedding_norm is plain norm2
            raise NotImplementedError(f"streaming supports diffusers' ResnetBlock2D without scale-shift, not {type(block).__name__}")
        for norm in (block.norm1, block.norm2):
            if not isinstance(norm, torch.nn.GroupNorm):
                raise NotImplementedError(f"streaming supports GroupNorm, not {type(norm).__name__}")
        hidden = self.conv(frame, block.conv1, self.reader(frame, block.norm1, (block.nonlinearity,)))
        shortcut = block.conv_shortcut
        plain = self.reader(frame)

        def residual(rows: Span, cols: Span) -> torch.Tensor:
            if shortcut is None:
                return plain(rows, cols)
            sc = _plain_conv(shortcut)
            return _conv_tile(plain, frame.size, sc, (sc.padding[0],) * 2 + (sc.padding[1],) * 2, rows, cols)

        return self.conv(hidden, block.conv2, self.reader(hidden, block.norm2, (block.nonlinearity, block.dropout)), residual=residual, divide=float(block.output_scale_factor))

    def whole(self, frame: _Frame, module: torch.nn.Module) -> _Frame:
        """``module`` over the whole frame at once on the device (the mid block's attention)."""
        self.check()
        return _Frame.of(module(frame.data.to(self.device)), self.dtype)

    def mid(self, frame: _Frame, block) -> _Frame:
        """diffusers' UNetMidBlock2D: resnet, then (attention, resnet) pairs."""
        frame = self.resnet(frame, block.resnets[0])
        for attn, res in zip(block.attentions, block.resnets[1:]):
            if attn is not None:
                frame = self.whole(frame, attn)
            frame = self.resnet(frame, res)
        return frame

    def downsample(self, frame: _Frame, down) -> _Frame:
        if getattr(down, "norm", None) is not None or not down.use_conv:
            raise NotImplementedError("streaming supports convolutional down-samplers without a norm")
        extra = (0, 1, 0, 1) if down.padding == 0 else (0, 0, 0, 0)  # diffusers pads (0, 1, 0, 1): right and bottom
        return self.conv(frame, down.conv, extra=extra)

    def upsample(self, frame: _Frame, up) -> _Frame:
        if getattr(up, "norm", None) is not None or up.use_conv_transpose or not up.use_conv or not up.interpolate:
            raise NotImplementedError("streaming supports nearest 2x up-samplers with a convolution")
        conv = up.conv if up.name == "conv" else up.Conv2d_0
        return self.conv(frame, conv, self.reader(frame, up=2), up=2)

    def tail(self, frame: _Frame, norm, act, conv) -> _Frame:
        """conv_norm_out -> conv_act -> conv_out."""
        if not isinstance(norm, torch.nn.GroupNorm):
            raise NotImplementedError(f"streaming supports GroupNorm, not {type(norm).__name__}")
        return self.conv(frame, conv, self.reader(frame, norm, (act,)))

    # -- networks

    def encode(self, vae, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels -> the encoder's moments (after quant_conv), in storage."""
        enc = vae.encoder
        frame = self.conv(_Frame.of(pixels, self.dtype), enc.conv_in)
        for block in enc.down_blocks:
            for res in block.resnets:
                frame = self.resnet(frame, res)
            for down in block.downsamplers or ():
                frame = self.downsample(frame, down)
        frame = self.mid(frame, enc.mid_block)
        frame = self.tail(frame, enc.conv_norm_out, enc.conv_act, enc.conv_out)
        if getattr(vae, "quant_conv", None) is not None:
            frame = self.conv(frame, vae.quant_conv)
        return frame.data

    def decode(self, vae, latent: torch.Tensor) -> torch.Tensor:
        """A scaled latent -> pixels, in storage."""
        dec = vae.decoder
        frame = _Frame.of(latent, self.dtype)
        if getattr(vae, "post_quant_conv", None) is not None:
            frame = self.conv(frame, vae.post_quant_conv)
        frame = self.conv(frame, dec.conv_in)
        frame = self.mid(frame, dec.mid_block)
        for block in dec.up_blocks:
            for res in block.resnets:
                frame = self.resnet(frame, res)
            for up in block.upsamplers or ():
                frame = self.upsample(frame, up)
        frame = self.tail(frame, dec.conv_norm_out, dec.conv_act, dec.conv_out)
        return frame.data


def _plain_conv(conv: torch.nn.Module) -> torch.nn.Conv2d:
    if not isinstance(conv, torch.nn.Conv2d) or conv.padding_mode != "zeros" or tuple(conv.dilation) != (1, 1) or isinstance(conv.padding, str):
        raise NotImplementedError(f"streaming supports plain zero-padded convolutions, not {conv!r}")
    return conv


def _streamer(vae, latent_size: tuple[int, int], tile: int, should_stop: Optional[StopCheck]) -> _Streamer:
    p = next(vae.parameters())
    return _Streamer(p.device, p.dtype, latent_size, tile, should_stop)


# ---------------------------------------------------------------- decode


def unscaled(vae, latent: torch.Tensor) -> torch.Tensor:
    """Sampling latents -> what the decoder takes: divided by the VAE's scaling factor,
    plus its shift where it has one (Flux's autoencoder; SD's have none)."""
    out = latent / vae.config.scaling_factor
    shift = getattr(vae.config, "shift_factor", None)
    return out + shift if shift else out


def scaled_latents(vae, mean: torch.Tensor) -> torch.Tensor:
    """The encoder's posterior mean -> sampling latents (the inverse of :func:`unscaled`)."""
    shift = getattr(vae.config, "shift_factor", None)
    return (mean - shift if shift else mean) * vae.config.scaling_factor


def _decode_whole(vae, latent: torch.Tensor) -> torch.Tensor:
    p = next(vae.parameters())
    scaled = unscaled(vae, latent.to(p.device)).to(p.dtype)
    return vae.decode(scaled).sample


def _decode_tiled(vae, latent: torch.Tensor, should_stop: Optional[StopCheck], tile: int) -> torch.Tensor:
    """The streamed decode: the whole decode's arithmetic, in tiles (float32, on the VAE's device)."""
    p = next(vae.parameters())
    scaled = unscaled(vae, latent.to(p.device)).to(p.dtype)
    with torch.no_grad():
        pixels = _streamer(vae, tuple(latent.shape[-2:]), tile, should_stop).decode(vae, scaled)
    return pixels.to(p.device).float()


def decode_latent(vae, latent: torch.Tensor, should_stop: Optional[StopCheck] = None, tile: Optional[int] = None, tiled: Optional[bool] = None) -> torch.Tensor:
    """One latent (1, C, h, w) -> pixels (1, 3, 8h, 8w) in [-1, 1]-ish; raises :class:`Cancelled`.

    ``tiled`` None chooses by memory (:func:`use_tiles`); True/False forces it.  A
    ``tile`` given without ``tiled`` tiles where the latent is larger than it."""
    _, _, h, w = latent.shape
    with stop_points(vae, should_stop):
        if not _wants_tiles(vae, h, w, "decode", tiled, tile):
            return _decode_whole(vae, latent)
        return _decode_tiled(vae, latent, should_stop, _auto_tile(vae, tile, tiled, "decode", h, w))


def mirrored_halves(plain: torch.Tensor, mirrored: torch.Tensor, ramp: int = MIRROR_RAMP) -> torch.Tensor:
    """The right of ``plain`` and the left of ``mirrored`` (both (N, 3, H, W), the
    second decoded from the left-right flipped latent and flipped back), crossing
    over linearly across ``ramp`` pixels at the middle."""
    w = plain.shape[-1]
    x = torch.arange(w, device=plain.device, dtype=torch.float32)
    weight = ((x - (w - ramp) / 2) / max(ramp, 1)).clamp(0, 1).to(plain.dtype)
    return plain * weight + mirrored * (1 - weight)


def decode_mirrored_halves(decode: Callable[[torch.Tensor], torch.Tensor], latent: torch.Tensor) -> torch.Tensor:
    """A decode for a decoder that draws a flaw at a fixed place on the left of its
    output frame (the demo decoder's corner speck, docs/demo-model.md): decode the
    latent and its mirror image, and take each half of the picture from the decode
    whose flaw is on the other side."""
    return mirrored_halves(decode(latent), decode(latent.flip(-1)).flip(-1))


def decode_as(vae, latent: torch.Tensor, how: str = "plain", should_stop: Optional[StopCheck] = None, tiled: Optional[bool] = None) -> torch.Tensor:
    """:func:`decode_latent`, or with ``how`` "mirrored-halves" :func:`decode_mirrored_halves`
    of it (ModelSpec.vae_decode names the way).  ``tiled``: as for :func:`decode_latent`."""
    if how == "mirrored-halves":
        return decode_mirrored_halves(lambda z: decode_latent(vae, z, should_stop, tiled=tiled), latent)
    return decode_latent(vae, latent, should_stop, tiled=tiled)


def decode_checked(vae, latent: torch.Tensor, should_stop: Optional[StopCheck] = None, how: str = "plain", tiled: Optional[bool] = None) -> tuple[torch.Tensor, bool]:
    """:func:`decode_as`, retried in float32 when half precision overflows.

    Returns (pixels, switched): ``switched`` tells the caller the VAE now stays in
    float32 (the retry moves its weights)."""
    return _retried_in_float32(vae, lambda: decode_as(vae, latent, how, should_stop, tiled), "")


def _retried_in_float32(vae, run: Callable[[], torch.Tensor], while_doing: str) -> tuple[torch.Tensor, bool]:
    """``run()``, and once more with the VAE moved to float32 when half precision gave
    non-finite values: (result, switched)."""
    out = run()
    if torch.isfinite(out).all() or next(vae.parameters()).dtype == torch.float32:
        return out, False
    log.warning("the VAE produced NaNs in half precision%s; switching it to float32", while_doing)
    vae.to(torch.float32)
    return run(), True


# ---------------------------------------------------------------- encode


def image_to_pixels(img) -> torch.Tensor:
    """An RGB PIL image -> a tensor (1, 3, H, W) in [-1, 1] (``v / 127.5 - 1``, the
    inverse of the engine's pixels -> image mapping)."""
    arr = np.asarray(img.convert("RGB"), dtype=np.float32)
    return torch.from_numpy(arr / 127.5 - 1.0).permute(2, 0, 1)[None].contiguous()


def _encode_whole(vae, pixels: torch.Tensor) -> torch.Tensor:
    p = next(vae.parameters())
    mean = vae.encode(pixels.to(p.device, p.dtype)).latent_dist.mean
    return scaled_latents(vae, mean.float())


def _encode_tiled(vae, pixels: torch.Tensor, should_stop: Optional[StopCheck], tile: int) -> torch.Tensor:
    """The streamed encode: the posterior's mean (the first half of the moments, as
    DiagonalGaussianDistribution splits them) times the scaling factor."""
    p = next(vae.parameters())
    size = (pixels.shape[-2] // 8, pixels.shape[-1] // 8)
    with torch.no_grad():
        moments = _streamer(vae, size, tile, should_stop).encode(vae, pixels.to(p.dtype))
    mean = moments[:, : moments.shape[1] // 2]
    return scaled_latents(vae, mean.to(p.device).float())


def encode_image(vae, pixels: torch.Tensor, should_stop: Optional[StopCheck] = None, tiled: Optional[bool] = None, tile: Optional[int] = None) -> torch.Tensor:
    """Pixels (1, 3, H, W) in [-1, 1], H and W multiples of 8 -> latent (1, C, H/8, W/8):
    the posterior's mean (deterministic) times the VAE's scaling factor, float32 on the
    VAE's device; raises :class:`Cancelled`.  Tiling as in :func:`decode_latent`."""
    if pixels.dim() != 4 or pixels.shape[-1] % 8 or pixels.shape[-2] % 8:
        raise ValueError(f"pixels must be (N, 3, H, W) with H and W multiples of 8; got {tuple(pixels.shape)}")
    h, w = pixels.shape[-2] // 8, pixels.shape[-1] // 8
    with stop_points(vae, should_stop):
        if not _wants_tiles(vae, h, w, "encode", tiled, tile):
            return _encode_whole(vae, pixels)
        return _encode_tiled(vae, pixels, should_stop, _auto_tile(vae, tile, tiled, "encode", h, w))


def encode_checked(vae, pixels: torch.Tensor, should_stop: Optional[StopCheck] = None) -> tuple[torch.Tensor, bool]:
    """:func:`encode_image`, retried in float32 when half precision overflows.

    Returns (latent, switched), as :func:`decode_checked`."""
    return _retried_in_float32(vae, lambda: encode_image(vae, pixels, should_stop), " while encoding")
