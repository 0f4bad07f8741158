"""Image upscalers: built-ins, model files in the real key layouts through spandrel,
tiling, precision fallback, and what happens without spandrel."""
from __future__ import annotations

import importlib.abc
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import upscaler_files as uf
from brushwork.paths import DataHome
from brushwork.upscale import BUILTIN_UPSCALERS, UpscalerError, UpscalerInfo, find_upscaler, list_upscalers, upscale_image, upscaler_problems
from brushwork.upscale import models as upmodels
from brushwork.upscale import upscalers as upmod
from brushwork.upscale.tiles import MIN_TILE, bytes_per_input_pixel, choose_tile, run_tiled
from brushwork.vae import Cancelled

pytest.importorskip("spandrel", reason="the model-file tests need spandrel")

EXPECTED = {  # name: (architecture, scale)
    "esrgan_old_x4": ("ESRGAN", 4),
    "esrgan_old_x2": ("ESRGAN", 2),
    "esrgan_old_x1": ("ESRGAN", 1),
    "esrgan_new_x4": ("ESRGAN", 4),
    "compact_x4": ("RealESRGAN Compact", 4),
    "compact_x2": ("RealESRGAN Compact", 2),
    "swinir_x4": ("SwinIR", 4),
}


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> DataHome:
    root = tmp_path_factory.mktemp("home")
    m = root / "models"
    uf.save(uf.esrgan_old(scale=4), m / "ESRGAN" / "esrgan_old_x4.pth")
    uf.save(uf.esrgan_old(scale=2, seed=5), m / "ESRGAN" / "sub" / "esrgan_old_x2.safetensors")
    uf.save(uf.esrgan_old(scale=1, seed=6), m / "ESRGAN" / "esrgan_old_x1.pth")
    uf.save(uf.esrgan_new(), m / "RealESRGAN" / "esrgan_new_x4.pth", wrap="params_ema")
    uf.save(uf.compact(scale=4), m / "RealESRGAN" / "compact_x4.pth", wrap="params")
    uf.save(uf.compact(scale=2, seed=7), m / "upscale_models" / "compact_x2.safetensors")
    uf.save(uf.swinir(), m / "SwinIR" / "swinir_x4.pth")
    return DataHome(root)


def picture(w: int, h: int, seed: int = 0, mode: str = "RGB") -> Image.Image:
    rng = np.random.RandomState(seed)
    # smooth-ish content: a gradient plus noise
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 / max(w - 1, 1), y * 255 / max(h - 1, 1), (x + y) * 127 / max(w + h - 2, 1)], -1)
    a = np.clip(base + rng.randint(-40, 40, (h, w, 3)), 0, 255).astype(np.uint8)
    img = Image.fromarray(a, "RGB")
    return img.convert(mode) if mode != "RGB" else img


def pixels(img: Image.Image) -> np.ndarray:
    return np.asarray(img).astype(np.int16)


class CallCounter:
    """Counts forward calls of the loaded model of ``info``."""

    def __init__(self, info: UpscalerInfo) -> None:
        self.loaded = upmodels.cached_model(info)
        self.calls = 0
        self.handle = self.loaded.descriptor.model.register_forward_hook(self._hook)

    def _hook(self, *_):
        self.calls += 1

    def close(self):
        self.handle.remove()


def test_model_files_are_listed_with_architecture_and_scale(home):
    infos = list_upscalers(home)
    assert [i.name for i in infos[:3]] == list(BUILTIN_UPSCALERS)
    assert all(i.kind == "builtin" and i.scale is None for i in infos[:3])
    models = {i.name: i for i in infos[3:]}
    assert set(models) == set(EXPECTED)
    assert [i.name for i in infos[3:]] == sorted(models, key=str.lower)
    for name, (arch, scale) in EXPECTED.items():
        info = models[name]
        assert info.kind == "model" and info.path is not None and info.path.stem == name
        assert (info.architecture, info.scale) == (arch, scale), name
    assert upscaler_problems(home) == []


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_model_gives_exactly_the_target_size(home, name):
    info = find_upscaler(home, name)
    src = picture(13, 9, seed=1)
    scale = EXPECTED[name][1]
    for w, h in ((13 * scale, 9 * scale), (26, 18), (39, 27), (20, 31)):
        out = upscale_image(src, w, h, info)
        assert out.mode == "RGB" and out.size == (w, h)
        assert pixels(out).std() > 3  # a picture, not a constant


def test_builtins_are_pillow_resizes(home):
    src = picture(17, 11)
    lanczos = src.resize((40, 30), Image.Resampling.LANCZOS)
    nearest = src.resize((40, 30), Image.Resampling.NEAREST)
    for name, want in (("None", lanczos), ("Lanczos", lanczos), ("lanczos", lanczos), ("Nearest", nearest)):
        out = upscale_image(src, 40, 30, find_upscaler(home, name))
        assert out.size == (40, 30) and np.array_equal(pixels(out), pixels(want)), name
    rgba = upscale_image(picture(8, 8, mode="RGBA"), 16, 16, find_upscaler(home, "Nearest"))
    assert rgba.mode == "RGB" and rgba.size == (16, 16)


def test_passes_follow_a1111(home):
    """A 2x model runs once for 2x, twice for 4x, and at most 3 times; a 4x model runs
    once for a 2x target and the result is resized down."""
    src = picture(6, 5, seed=2)
    x2 = find_upscaler(home, "esrgan_old_x2")
    counter = CallCounter(x2)
    try:
        for (w, h), passes in (((12, 10), 1), ((24, 20), 2), ((18, 15), 2), ((300, 250), 3)):
            counter.calls = 0
            out = upscale_image(src, w, h, x2)
            assert out.size == (w, h) and counter.calls == passes, (w, h, counter.calls)
    finally:
        counter.close()
    x4 = find_upscaler(home, "compact_x4")
    counter = CallCounter(x4)
    try:
        full = upscale_image(src, 24, 20, x4)
        half = upscale_image(src, 12, 10, x4)
        assert counter.calls == 2
        assert np.abs(pixels(half) - pixels(full.resize((12, 10), Image.Resampling.LANCZOS))).max() == 0
    finally:
        counter.close()
    one = find_upscaler(home, "esrgan_old_x1")
    counter = CallCounter(one)
    try:
        assert upscale_image(src, 12, 10, one).size == (12, 10) and counter.calls == 1  # 1x: no use repeating
    finally:
        counter.close()


@pytest.mark.parametrize("name", ["esrgan_old_x4", "esrgan_new_x4", "compact_x4", "compact_x2"])
def test_tiled_equals_untiled(home, name):
    info = find_upscaler(home, name)
    src = picture(30, 23, seed=3)
    scale = info.scale
    whole = upscale_image(src, 30 * scale, 23 * scale, info, tile=10_000)
    counter = CallCounter(info)
    try:
        tiled = upscale_image(src, 30 * scale, 23 * scale, info, tile=8, halo=20)
        assert counter.calls == 4 * 3  # 30 / 8 -> 4 columns, 23 / 8 -> 3 rows
    finally:
        counter.close()
    diff = np.abs(pixels(tiled) - pixels(whole))
    assert diff.max() <= 2, diff.max()
    assert pixels(whole).std() > 5
    # a halo too small for the receptive field does show seams (the check above means something)
    if name.startswith("esrgan"):
        seamy = upscale_image(src, 30 * scale, 23 * scale, info, tile=8, halo=0)
        assert np.abs(pixels(seamy) - pixels(whole)).max() > 2


def test_automatic_tile_from_the_memory_budget(home):
    info = find_upscaler(home, "compact_x4")
    loaded = upmodels.cached_model(info)
    per_pixel = bytes_per_input_pixel(loaded.descriptor.model, 4)
    src = picture(96, 80, seed=4)
    assert choose_tile(80, 96, per_pixel, 80 * 96 * per_pixel, 16) is None  # fits whole
    budget = (MIN_TILE + 2 * 16 + 4) ** 2 * per_pixel
    tile = choose_tile(80, 96, per_pixel, budget, 16)
    assert tile is not None and MIN_TILE <= tile < 80
    assert choose_tile(80, 96, per_pixel, 1, 16) == MIN_TILE  # never below the minimum
    assert choose_tile(800, 960, per_pixel, budget * 4, 16, multiple_of=8) % 8 == 0
    whole = upscale_image(src, 384, 320, info, memory_budget=1 << 40)
    counter = CallCounter(info)
    try:
        auto = upscale_image(src, 384, 320, info, memory_budget=budget)
        assert counter.calls > 1
    finally:
        counter.close()
    assert np.abs(pixels(auto) - pixels(whole)).max() <= 2


def test_swinir_tiles_with_its_size_requirements(home):
    """SwinIR needs at least 16 px (and windows): small tiles and inputs are padded and cropped."""
    info = find_upscaler(home, "swinir_x4")
    src = picture(21, 11, seed=5)
    whole = upscale_image(src, 84, 44, info)
    tiled = upscale_image(src, 84, 44, info, tile=8, halo=4)
    assert whole.size == tiled.size == (84, 44)
    assert pixels(tiled).std() > 3
    assert upscale_image(picture(5, 3), 20, 12, info).size == (20, 12)


def test_tiny_and_odd_inputs(home):
    for name in ("esrgan_old_x4", "compact_x4", "swinir_x4", "esrgan_old_x1"):
        info = find_upscaler(home, name)
        assert upscale_image(picture(1, 1), 4, 4, info).size == (4, 4)
        assert upscale_image(picture(7, 5), 21, 15, info, tile=3, halo=2).size == (21, 15)
        assert upscale_image(picture(3, 2), 1, 1, info).size == (1, 1)
    with pytest.raises(UpscalerError, match="at least 1 pixel"):
        upscale_image(picture(3, 3), 0, 5, find_upscaler(home, "Lanczos"))


def test_cancel_between_tiles(home):
    info = find_upscaler(home, "compact_x4")
    counter = CallCounter(info)
    asked = []

    def should_stop() -> bool:
        asked.append(1)
        return len(asked) > 1

    try:
        with pytest.raises(Cancelled):
            upscale_image(picture(32, 32), 128, 128, info, tile=8, should_stop=should_stop)
        assert counter.calls == 1 and len(asked) == 2
    finally:
        counter.close()


def test_find_upscaler_names_and_errors(home):
    assert find_upscaler(home, "ESRGAN_OLD_X4").name == "esrgan_old_x4"
    assert find_upscaler(home, "esrgan_old_x4.pth").name == "esrgan_old_x4"
    assert find_upscaler(home, "compact_x2.safetensors").path.suffix == ".safetensors"
    assert find_upscaler(home, "nearest").name == "Nearest"
    with pytest.raises(UpscalerError) as exc:
        find_upscaler(home, "esrgan_old_x3")
    msg = str(exc.value)
    assert "esrgan_old_x3" in msg and "Did you mean" in msg and "esrgan_old_x4" in msg
    for name in list(EXPECTED) + list(BUILTIN_UPSCALERS):
        assert name in msg
    assert str(home.root / "models" / "upscale_models") in msg and str(home.root / "models" / "ESRGAN") in msg


def test_first_folder_wins_and_listing_is_cached(tmp_path, monkeypatch):
    home = DataHome(tmp_path)
    ours = uf.save(uf.compact(scale=2), tmp_path / "models" / "upscalers" / "same.pth")
    uf.save(uf.compact(scale=4), tmp_path / "models" / "ESRGAN" / "same.pth")
    uf.save(uf.compact(scale=4, seed=9), tmp_path / "models" / "HAT" / "other.safetensors")
    assert [(i.name, i.path, i.scale) for i in list_upscalers(home)[3:]] == [("other", tmp_path / "models" / "HAT" / "other.safetensors", 4), ("same", ours, 2)]
    reads = []
    real = upmod.load_descriptor
    monkeypatch.setattr(upmod, "load_descriptor", lambda p: reads.append(p) or real(p))
    list_upscalers(home)
    upscaler_problems(home)
    assert reads == []
    st = ours.stat()
    os.utime(ours, ns=(st.st_atime_ns, st.st_mtime_ns + 10_000_000))
    assert [i.name for i in list_upscalers(home)[3:]] == ["other", "same"] and reads == [ours]


def test_loaded_model_is_kept(home):
    info = find_upscaler(home, "compact_x4")
    first = upmodels.cached_model(info)
    upscale_image(picture(4, 4), 16, 16, info)
    assert upmodels.cached_model(info) is first


def test_junk_files_are_reported_not_listed(tmp_path):
    home = DataHome(tmp_path)
    folder = tmp_path / "models" / "ESRGAN"
    uf.save(uf.compact(), folder / "good.pth")
    uf.save({"foo.weight": torch.randn(4, 4), "bar": torch.randn(3)}, folder / "junk.pth")
    uf.save({"model.diffusion_model.input_blocks.0.0.weight": torch.randn(8, 4, 3, 3), "first_stage_model.decoder.conv_in.weight": torch.randn(8, 4, 3, 3)}, folder / "checkpoint.ckpt", wrap="state_dict")
    good = (folder / "good.pth").read_bytes()
    (folder / "truncated.pth").write_bytes(good[: len(good) // 2])
    (folder / "notes.safetensors").write_text("this is not a model\n")
    names = [i.name for i in list_upscalers(home)]
    assert names == list(BUILTIN_UPSCALERS) + ["good"]
    problems = upscaler_problems(home)
    assert len(problems) == 4
    by_file = {name: next(p for p in problems if name in p) for name in ("junk.pth", "checkpoint.ckpt", "truncated.pth", "notes.safetensors")}
    assert "not an upscaler model spandrel knows" in by_file["junk.pth"]
    assert "not an upscaler model spandrel knows" in by_file["checkpoint.ckpt"]
    assert "damaged" in by_file["truncated.pth"] or "truncated" in by_file["truncated.pth"]
    assert "text file" in by_file["notes.safetensors"]
    with pytest.raises(UpscalerError, match="was skipped: .*junk.pth: junk.pth is not an upscaler model spandrel knows"):
        find_upscaler(home, "junk")


def _cpu_half_conv_works() -> bool:
    try:
        torch.nn.functional.conv2d(torch.ones(1, 3, 4, 4, dtype=torch.float16), torch.ones(2, 3, 3, 3, dtype=torch.float16))
        return True
    except RuntimeError:
        return False


@pytest.mark.skipif(not _cpu_half_conv_works(), reason="this torch has no float16 convolution on the CPU")
def test_fp16_overflow_falls_back_to_fp32(tmp_path, caplog):
    home = DataHome(tmp_path)
    sd = uf.compact(scale=2, seed=11)
    sd["body.2.weight"] = sd["body.2.weight"] * 1e6  # beyond float16's range
    uf.save(sd, tmp_path / "models" / "RealESRGAN" / "overflow.pth")
    uf.save(uf.compact(scale=2, seed=12), tmp_path / "models" / "RealESRGAN" / "fine.pth")
    src = picture(12, 10, seed=6)
    info = find_upscaler(home, "overflow")
    want = upscale_image(src, 24, 20, info, half=False)
    upmodels.forget_loaded()
    with caplog.at_level(logging.WARNING, logger="brushwork.upscale"):
        got = upscale_image(src, 24, 20, info, half=True, tile=4)
        again = upscale_image(src, 24, 20, info, half=True, tile=4)
    assert np.isfinite(pixels(got)).all() and np.array_equal(pixels(got), pixels(want)) and np.array_equal(pixels(again), pixels(want))
    assert sum("overflowed" in r.getMessage() for r in caplog.records) == 1
    loaded = upmodels.cached_model(info)
    assert loaded.fp32_only and loaded.descriptor.dtype == torch.float32
    # a model without overflow really runs in float16 and stays close to float32
    fine = find_upscaler(home, "fine")
    f32 = upscale_image(src, 24, 20, fine, half=False)
    f16 = upscale_image(src, 24, 20, fine, half=True)
    assert upmodels.cached_model(fine).descriptor.dtype == torch.float16
    assert np.abs(pixels(f16) - pixels(f32)).max() <= 3


class _BrokenSpandrel(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "spandrel":
            raise RuntimeError("operator torchvision::nms does not exist")
        return None


@pytest.mark.parametrize("how", ["missing", "torchvision mismatch"])
def test_without_spandrel_builtins_still_work(home, monkeypatch, how):
    if how == "missing":
        monkeypatch.setitem(sys.modules, "spandrel", None)
    else:
        for mod in [m for m in sys.modules if m == "spandrel" or m.startswith("spandrel.")]:
            monkeypatch.delitem(sys.modules, mod)
        monkeypatch.setattr(sys, "meta_path", [_BrokenSpandrel()] + sys.meta_path)
    upmodels.forget_loaded()
    assert [i.name for i in list_upscalers(home)] == list(BUILTIN_UPSCALERS)
    problems = upscaler_problems(home)
    text = " ".join(problems)
    assert "spandrel" in text and "torchvision" in text and "pip install" in text and "Lanczos and Nearest" in text
    if how != "missing":
        assert "torchvision::nms" in text
    assert any(f"{len(EXPECTED)} upscaler model file(s)" in p for p in problems)
    assert upscale_image(picture(5, 5), 10, 10, find_upscaler(home, "Lanczos")).size == (10, 10)
    with pytest.raises(UpscalerError, match="spandrel"):
        upscale_image(picture(5, 5), 10, 10, UpscalerInfo("x", "model", home.root / "models" / "ESRGAN" / "esrgan_old_x4.pth", "ESRGAN", 4))


def test_importing_the_package_imports_neither_spandrel_nor_torchvision():
    code = "import sys, brushwork.upscale, brushwork.hires; print('\\n'.join(sorted(sys.modules)))"
    mods = set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split())
    assert "brushwork.upscale.upscalers" in mods
    assert not any(m.split(".")[0] in ("spandrel", "torchvision") for m in mods)


def test_run_tiled_writes_each_tile_once():
    """With an identity-like 'network' (nearest 2x), tiling is exact at any tile size."""
    x = torch.rand(1, 3, 13, 17)

    def run(piece):
        return piece.repeat_interleave(2, -1).repeat_interleave(2, -2)

    want = run(x)
    for tile in (1, 4, 5, 13, 100):
        for halo in (0, 3):
            assert torch.equal(run_tiled(run, x, 2, tile, halo), want)
    # padding for size requirements is cropped off again
    assert torch.equal(run_tiled(run, x, 2, 4, 1, minimum=16, multiple_of=8), want)


@pytest.mark.parametrize("wrapper", ["net_g", "generator", "model_state_dict"])
def test_weights_nested_under_a_training_wrapper_are_found(tmp_path, wrapper):
    """Training code saves the network under other keys too (BasicSR's net_g, GAN
    scripts' generator); the reader names them ``wrapper.key`` and they are taken off."""
    uf.save(uf.compact(scale=2), tmp_path / "models" / "upscale_models" / f"wrapped-{wrapper}.pth", wrap=wrapper)
    info = find_upscaler(DataHome(tmp_path), f"wrapped-{wrapper}")
    assert (info.scale, info.architecture) == (2, "RealESRGAN Compact")
    assert upscale_image(Image.new("RGB", (12, 10), (90, 120, 150)), 24, 20, info).size == (24, 20)
