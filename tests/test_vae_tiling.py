"""Tiled and whole-frame VAE passes (vae.py): the streamed (tiled) pass equals the
whole pass, the memory-based choice, encode, cancel and the float32 fallback.

A tiled pass streams the network layer by layer over full-frame buffers, each layer
tile by tile (convolutions with their halo, GroupNorm with the whole frame's
statistics), so it is the whole pass's arithmetic in another order.  Measured on
CPU, float32, latent 40x24 with tile 16 (3x2 tiles at every stage, uneven last
tiles): tiny random VAE and demo VAE decode max 1 level (0..255), mean ~3e-5 (a
handful of pixels rounding the other way), raw max 3-5e-6; encode max 0.6-1.5e-6 of
the latents' largest value.  (The previous overlapping tiles, blended with ramps and
each normalised by its own statistics, were off by 22-123 levels.)
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from brushwork import devices
from brushwork import vae as V

DEMO = Path(__file__).resolve().parents[1] / "src/brushwork/assets/demo/demo.safetensors"


def levels(pixels: torch.Tensor) -> torch.Tensor:
    """Pixels in [-1, 1] -> 0..255 levels, clamped and rounded as engine._to_image does."""
    return ((pixels.float().clamp(-1, 1) + 1) * 127.5).round()


def level_diff(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    d = (levels(a) - levels(b)).abs()
    return float(d.max()), float(d.mean())


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def smooth_picture(h: int, w: int) -> torch.Tensor:
    y = torch.linspace(0, 1, h)[:, None]
    x = torch.linspace(0, 1, w)[None, :]
    r = 0.5 + 0.4 * torch.sin(3 * x + 1) * torch.cos(2 * y)
    g = 0.3 + 0.5 * y * x
    b = 0.6 - 0.4 * torch.cos(4 * (x - y))
    return (torch.stack([r, g, b])[None] * 2 - 1).float()


@pytest.fixture(scope="module")
def demo_vae():
    from brushwork.models.load import load_checkpoint

    _spec, nets = load_checkpoint(DEMO, torch.float32, torch.device("cpu"))
    return nets.vae


@pytest.fixture
def tiny_vae(engines):
    return engines("sd1").model.networks.vae


@pytest.fixture(params=["tiny", "demo"])
def any_vae(request):
    return request.getfixturevalue("tiny_vae" if request.param == "tiny" else "demo_vae")


class TileLog:
    """Records every tile the streamed pass computes (through ``vae._conv_tile``):
    (output frame size, rows, cols, computed tile's shape)."""

    def __init__(self, monkeypatch) -> None:
        self.calls: list[tuple[tuple[int, int], tuple[int, int], tuple[int, int], tuple[int, ...]]] = []
        real = V._conv_tile

        def logged(read, size, conv, pad, rows, cols):
            out = real(read, size, conv, pad, rows, cols)
            (kh, kw), (sh, sw) = conv.kernel_size, conv.stride
            frame = ((size[0] + pad[0] + pad[1] - kh) // sh + 1, (size[1] + pad[2] + pad[3] - kw) // sw + 1)
            self.calls.append((frame, rows, cols, tuple(out.shape)))
            return out

        monkeypatch.setattr(V, "_conv_tile", logged)

    def grid(self, frame: tuple[int, int]) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """The row and column spans of the tiles computed for outputs of size ``frame``."""
        hits = [(r, c) for f, r, c, _ in self.calls if f == frame]
        return sorted({r for r, _ in hits}), sorted({c for _, c in hits})


# ---------------------------------------------------------------- layout


def test_tile_spans_cover_the_size_without_overlap():
    assert V.tile_spans(40, 16) == [(0, 16), (16, 32), (32, 40)]
    assert V.tile_spans(16, 16) == [(0, 16)]
    assert V.tile_spans(5, 96) == [(0, 5)]
    for size, side in [(1, 1), (7, 3), (200, 96), (320, 128)]:
        spans = V.tile_spans(size, side)
        assert spans[0][0] == 0 and spans[-1][1] == size
        assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
        assert all(0 < e - s <= side for s, e in spans)


# ---------------------------------------------------------------- tiled == whole


def test_tiled_decode_equals_the_whole_decode(any_vae, monkeypatch):
    torch.manual_seed(0)
    lat = torch.randn(1, 4, 40, 24)
    with torch.inference_mode():
        whole = V.decode_latent(any_vae, lat, tiled=False)
        log = TileLog(monkeypatch)
        tiled = V.decode_latent(any_vae, lat, tiled=True, tile=16)
    assert tiled.shape == whole.shape == (1, 3, 320, 192)
    mx, mean = level_diff(tiled, whole)
    assert mx <= 2 and mean <= 1e-3  # measured max 1, mean ~3e-5 (float rounding)
    assert float((tiled - whole).abs().max()) < 1e-4
    # the grid: 3 x 2 tiles at every stage, the last ones uneven (40 = 16 + 16 + 8, 24 = 16 + 8)
    for scale in (1, 2, 4, 8):
        rows, cols = log.grid((40 * scale, 24 * scale))
        assert rows == V.tile_spans(40 * scale, 16 * scale) and len(rows) == 3 and rows[-1][1] - rows[-1][0] == 8 * scale
        assert cols == V.tile_spans(24 * scale, 16 * scale) and len(cols) == 2 and cols[-1][1] - cols[-1][0] == 8 * scale


def test_tiled_encode_equals_the_whole_encode(any_vae):
    torch.manual_seed(1)
    with torch.inference_mode():
        pix = V.decode_latent(any_vae, torch.randn(1, 4, 40, 24), tiled=False).clamp(-1, 1)  # a picture with structure
        whole = V.encode_image(any_vae, pix, tiled=False)
        tiled = V.encode_image(any_vae, pix, tiled=True, tile=16)
        smooth = smooth_picture(192, 128)
        whole_smooth = V.encode_image(any_vae, smooth, tiled=False)
        tiled_smooth = V.encode_image(any_vae, smooth, tiled=True, tile=8)
    assert tiled.shape == whole.shape == (1, 4, 40, 24) and tiled.dtype == torch.float32
    assert rel_diff(tiled, whole) < 1e-4  # measured ~1e-6
    assert rel_diff(tiled_smooth, whole_smooth) < 1e-4


def test_demo_vae_tiled_decode_of_an_encoded_scene_equals_the_whole_decode(demo_vae):
    pix = torch.nn.functional.interpolate(scene_pixels(), scale_factor=2, mode="bicubic", align_corners=False).clamp(-1, 1)  # 256 px
    with torch.inference_mode():
        lat = V.encode_image(demo_vae, pix, tiled=True, tile=12)
        assert rel_diff(lat, V.encode_image(demo_vae, pix, tiled=False)) < 1e-4
        mx, _ = level_diff(V.decode_latent(demo_vae, lat, tiled=True, tile=12), V.decode_latent(demo_vae, lat, tiled=False))
    assert mx <= 2


def test_a_single_forced_tile_is_the_whole_pass(tiny_vae):
    lat = torch.randn(1, 4, 12, 12)
    with torch.inference_mode():
        tiled, whole = V.decode_latent(tiny_vae, lat, tiled=True), V.decode_latent(tiny_vae, lat, tiled=False)
    assert tiled.shape == whole.shape and float((tiled - whole).abs().max()) < 1e-5


def test_the_device_holds_one_tile_at_a_time(tiny_vae, monkeypatch):
    """Every computed piece is at most one tile of its stage's resolution (8 latent
    units = 8 * k pixels of a stage at k x the latent's resolution): the device's
    working set is one tile's, never a full-resolution frame's."""
    log = TileLog(monkeypatch)
    with torch.inference_mode():
        V.decode_latent(tiny_vae, torch.randn(1, 4, 40, 24), tiled=True, tile=8)
        V.encode_image(tiny_vae, torch.zeros(1, 3, 320, 192), tiled=True, tile=8)
    frames = {f for f, _, _, _ in log.calls}
    assert {(40, 24), (80, 48), (160, 96), (320, 192)} <= frames
    for frame, rows, cols, shape in log.calls:
        k = frame[0] // 40
        assert shape[-2:] == (rows[1] - rows[0], cols[1] - cols[0])
        assert shape[-2] <= 8 * k and shape[-1] <= 8 * k
    assert max(s[-2] * s[-1] for _, _, _, s in log.calls) == 64 * 64 < 320 * 192 // 10


def scene_pixels(seed: int = 3) -> torch.Tensor:
    from brushwork.demo import scenes

    img, _, _ = scenes.make_example(seed)
    arr = np.asarray(img)
    if arr.dtype != np.uint8:
        arr = (np.clip(arr, 0, 1) * 255).round().astype(np.uint8)
    return V.image_to_pixels(Image.fromarray(arr))


def test_demo_vae_round_trip_is_close_to_the_picture(demo_vae):
    pix = scene_pixels()
    smooth = smooth_picture(128, 128)
    with torch.inference_mode():
        back = V.decode_latent(demo_vae, V.encode_image(demo_vae, pix), tiled=False)
        back_smooth = V.decode_latent(demo_vae, V.encode_image(demo_vae, smooth), tiled=False)
    _, mean = level_diff(back, pix)
    _, mean_smooth = level_diff(back_smooth, smooth)
    assert mean <= 4.5  # measured 2.83 levels on a demo scene (the VAE's training data)
    assert mean_smooth <= 12  # measured 8.7 levels on a synthetic smooth picture it never saw


# ---------------------------------------------------------------- encode


def test_encode_image_is_the_scaled_posterior_mean(tiny_vae):
    pix = smooth_picture(64, 96)
    with torch.inference_mode():
        lat = V.encode_image(tiny_vae, pix)
        again = V.encode_image(tiny_vae, pix)
        ref = tiny_vae.encode(pix).latent_dist.mean * tiny_vae.config.scaling_factor
    assert lat.shape == (1, tiny_vae.config.latent_channels, 8, 12)
    assert lat.dtype == torch.float32 and lat.device == next(tiny_vae.parameters()).device
    assert torch.equal(lat, again)  # the mean, not a sample
    assert torch.allclose(lat, ref, atol=1e-6)
    assert tiny_vae.config.scaling_factor != 1 and not torch.allclose(lat, ref / tiny_vae.config.scaling_factor)
    with pytest.raises(ValueError):
        V.encode_image(tiny_vae, torch.zeros(1, 3, 60, 64))


def test_image_to_pixels_inverts_the_engines_mapping():
    from brushwork.engine import _to_image

    arr = np.random.default_rng(0).integers(0, 256, size=(24, 40, 3), dtype=np.uint8)
    pix = V.image_to_pixels(Image.fromarray(arr))
    assert pix.shape == (1, 3, 24, 40) and pix.dtype == torch.float32
    assert float(pix.min()) >= -1 and float(pix.max()) <= 1
    assert float(pix[0, 0, 0, 0]) == pytest.approx(arr[0, 0, 0] / 127.5 - 1)
    assert np.array_equal(np.asarray(_to_image(pix[0])), arr)


# ---------------------------------------------------------------- memory choice


def test_pass_estimate_grows_with_the_picture_and_counts_the_widest_stage():
    sd = {"block_out_channels": (128, 256, 512, 512), "mid_block_add_attention": True}
    dec = V.vae_pass_bytes(sd, 512, 512, "decode", dtype_bytes=2)
    enc = V.vae_pass_bytes(sd, 512, 512, "encode", dtype_bytes=2)
    # decoder's full-resolution stage holds the 256-wide up-sampler output: 256 x 512^2 x 2 bytes x 5
    assert dec == 256 * 512 * 512 * 2 * V.LIVE_TENSORS + (64 * 64) ** 2 * 2
    assert enc == 128 * 512 * 512 * 2 * V.LIVE_TENSORS + (64 * 64) ** 2 * 2
    assert V.vae_pass_bytes(sd, 1024, 1024, "decode", dtype_bytes=2) > 4 * dec - 1
    assert V.vae_pass_bytes(sd, 512, 512, "decode", dtype_bytes=4) == 2 * dec
    with pytest.raises(ValueError):
        V.vae_pass_bytes(sd, 512, 512, "sideways")


def test_a_streamed_pass_needs_one_tile_and_the_latent_resolution_attention():
    sd = {"block_out_channels": (128, 256, 512, 512), "mid_block_add_attention": True}
    tile = V.tile_pass_bytes(sd, 64, 2048, 2048, "decode", dtype_bytes=2)
    # one 512 px tile of the widest stage, 5 tensors; the attention at 256 x 256 latent needs less
    assert tile == 256 * 512 * 512 * 2 * V.LIVE_TENSORS
    assert tile == V.tile_pass_bytes(sd, 64, 1024, 1024, "decode", dtype_bytes=2)  # bounded by the tile, not the picture
    assert tile * 25 < V.vae_pass_bytes(sd, 2048, 2048, "decode", dtype_bytes=2)
    # a huge picture: the whole-frame mid-block attention (memory-efficient) dominates
    assert V.tile_pass_bytes(sd, 64, 4096, 4096, "decode", dtype_bytes=2) == 512 * 512 * 512 * V.MID_LIVE_TENSORS * 2


def test_tiles_are_chosen_when_free_memory_is_short(tiny_vae, monkeypatch):
    need = V.vae_pass_bytes(tiny_vae, 256, 256, "decode")
    calls = []
    real_whole, real_tiled = V._decode_whole, V._decode_tiled
    monkeypatch.setattr(V, "_decode_whole", lambda v, z: calls.append(("whole", tuple(z.shape[-2:]))) or real_whole(v, z))
    monkeypatch.setattr(V, "_decode_tiled", lambda v, z, stop, tile: calls.append(("tiled", tile)) or real_tiled(v, z, stop, tile))
    lat = torch.randn(1, 4, 32, 32)

    monkeypatch.setattr(devices, "free_memory_bytes", lambda device: need // 4)
    assert V.use_tiles(tiny_vae, 256, 256, "decode")
    assert V.fitting_tile(tiny_vae) == V.MIN_TILE  # even a 96 tile would not fit: the smallest
    with torch.inference_mode():
        V.decode_latent(tiny_vae, lat, tile=8)  # explicit tile and no choice: tiles where larger
        V.decode_latent(tiny_vae, lat)  # automatic: tiles (of MIN_TILE)
    assert calls == [("tiled", 8), ("tiled", V.MIN_TILE)]

    monkeypatch.setattr(devices, "free_memory_bytes", lambda device: need * 100)
    assert not V.use_tiles(tiny_vae, 256, 256, "decode")
    assert V.use_tiles(tiny_vae, 256, 256, "decode", free_bytes=need)  # the safety factor keeps half back
    calls.clear()
    with torch.inference_mode():
        V.decode_latent(tiny_vae, lat)
    assert calls == [("whole", (32, 32))]  # whole, one call


def test_automatic_tiles_of_a_large_latent_are_several(tiny_vae, monkeypatch):
    monkeypatch.setattr(devices, "free_memory_bytes", lambda device: 1)
    log = TileLog(monkeypatch)
    with torch.inference_mode():
        out = V.decode_latent(tiny_vae, torch.randn(1, 4, 40, 72))
    assert out.shape == (1, 3, 320, 576)
    rows, cols = log.grid((320, 576))  # MIN_TILE = 32 latent units = 256 px
    assert rows == V.tile_spans(320, 256) and cols == V.tile_spans(576, 256)
    assert len(rows) * len(cols) == 2 * 3


# ---------------------------------------------------------------- cancel and fallback


@pytest.mark.parametrize("tiled", [False, True])
def test_a_cancel_stops_encode_and_decode(tiny_vae, tiled):
    asked = []

    def stop():
        asked.append(1)
        return True

    with torch.inference_mode():
        with pytest.raises(V.Cancelled):
            V.decode_latent(tiny_vae, torch.randn(1, 4, 16, 16), stop, tiled=tiled, tile=8)
        n_dec = len(asked)
        with pytest.raises(V.Cancelled):
            V.encode_image(tiny_vae, torch.zeros(1, 3, 128, 128), stop, tiled=tiled, tile=8)
    assert n_dec == 1 and len(asked) == 2  # stopped at the first question both times
    assert not any(m._forward_pre_hooks for m in tiny_vae.modules())


@pytest.mark.parametrize("direction", ["decode", "encode"])
def test_a_cancel_stops_a_streamed_pass_between_tiles(tiny_vae, monkeypatch, direction):
    log = TileLog(monkeypatch)
    asked = []

    def stop():
        asked.append(1)
        return len(log.calls) >= 5

    with torch.inference_mode(), pytest.raises(V.Cancelled):
        if direction == "decode":
            V.decode_latent(tiny_vae, torch.randn(1, 4, 40, 24), stop, tiled=True, tile=8)
        else:
            V.encode_image(tiny_vae, torch.zeros(1, 3, 320, 192), stop, tiled=True, tile=8)
    assert len(log.calls) == 5 and len(asked) == 6  # asked before every tile, stopped at once
    assert not any(m._forward_pre_hooks for m in tiny_vae.modules())


def test_a_cancel_inside_the_encoder_stops_within_a_block(tiny_vae):
    asked = []

    def stop():
        asked.append(1)
        return len(asked) >= 3

    with torch.inference_mode(), pytest.raises(V.Cancelled):
        V.encode_image(tiny_vae, torch.zeros(1, 3, 64, 64), stop, tiled=False)
    assert len(asked) == 3


def test_encode_in_half_precision_falls_back_to_float32(tiny_vae, monkeypatch):
    calls = []
    real = V.encode_image

    def flaky(v, pix, should_stop=None):
        calls.append(next(v.parameters()).dtype)
        out = real(v, pix, should_stop)
        return out * float("nan") if len(calls) == 1 else out

    monkeypatch.setattr(V, "encode_image", flaky)
    pix = smooth_picture(64, 64)
    tiny_vae.to(torch.float16)
    try:
        with torch.inference_mode():
            lat, switched = V.encode_checked(tiny_vae, pix)
        assert switched and calls == [torch.float16, torch.float32]
        assert next(tiny_vae.parameters()).dtype == torch.float32
        assert torch.isfinite(lat).all() and float(lat.std()) > 0
        with torch.inference_mode():
            assert torch.allclose(lat, real(tiny_vae, pix), atol=1e-6)
    finally:
        tiny_vae.to(torch.float32)
    with torch.inference_mode():
        lat, switched = V.encode_checked(tiny_vae, pix)
    assert not switched and torch.isfinite(lat).all()
