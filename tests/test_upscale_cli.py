"""``brushwork upscale`` and ``brushwork upscalers``, postprocess.py's sizes and
infotext, and the hires fix through an upscaler model file (a random-weight
RealESRGAN-compact file in A1111's models/RealESRGAN, loaded through spandrel)."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

import upscaler_files
from brushwork.cli import main
from brushwork.engine import GenerationRequest
from brushwork.postprocess import UpscaleSettings, target_size, with_postprocess
from brushwork.request import RequestError

TEXT = "a cat\nSteps: 3, Sampler: Euler, CFG scale: 7.0, Seed: 42, Size: 48x32, Model: tiny-sd1"


def run(capsys, *args):
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def picture(tmp_path):
    y, x = np.mgrid[0:32, 0:48]
    img = Image.fromarray(np.stack([x * 5, y * 7, np.full_like(x, 90)], -1).astype(np.uint8), "RGB")
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", TEXT)
    path = tmp_path / "cat.png"
    img.save(path, pnginfo=info)
    return path, img


@pytest.fixture
def model_home(home):
    upscaler_files.save(upscaler_files.compact(nf=8, convs=2, scale=4), home / "models" / "RealESRGAN" / "tiny-compact-x4.pth")
    return home


@pytest.mark.parametrize("settings, size, expected", [
    (UpscaleSettings(scale=2), (48, 32), (96, 64, 96, 64)),
    (UpscaleSettings(scale=1.5), (48, 32), (72, 48, 72, 48)),
    (UpscaleSettings(width=100, height=100), (48, 32), (150, 100, 100, 100)),  # cover, then the middle
    (UpscaleSettings(width=100, height=100, crop=False), (48, 32), (100, 100, 100, 100)),
])
def test_the_upscale_size(settings, size, expected):
    assert target_size(*size, settings) == expected


def test_too_large_an_upscale_is_refused_before_any_work():
    with pytest.raises(RequestError, match="larger than 8192"):
        target_size(4096, 4096, UpscaleSettings(scale=4))


def test_the_infotext_gains_the_postprocess_keys():
    assert with_postprocess(TEXT, {"Postprocess upscale by": 2, "Postprocess upscaler": "Lanczos"}) == TEXT + ", Postprocess upscale by: 2, Postprocess upscaler: Lanczos"
    assert with_postprocess("", {"Postprocess upscaler": "Nearest"}) == "Postprocess upscaler: Nearest"


def test_upscale_saves_a_new_picture_with_both_infotexts(home, picture, tmp_path, capsys):
    path, img = picture
    code, out, err = run(capsys, "upscale", path, "--scale", "2", "--home", home, "--out", tmp_path / "out")
    assert code == 0, err
    saved = out.split("  ")[0]
    result = Image.open(saved)
    assert result.size == (96, 64) and saved.endswith("-42.png")
    assert result.text["parameters"] == TEXT + ", Postprocess upscale by: 2.0, Postprocess upscaler: Lanczos"
    assert np.abs(np.asarray(result.convert("RGB")).astype(int) - np.asarray(img.resize((96, 64), Image.LANCZOS)).astype(int)).max() == 0
    assert path.read_bytes() == picture[0].read_bytes()  # the source is untouched


def test_upscale_to_a_size_and_nearest(home, picture, tmp_path, capsys):
    path, img = picture
    code, out, err = run(capsys, "upscale", path, "--size", "96x96", "--upscaler", "nearest", "--home", home, "--out", tmp_path / "o")
    assert code == 0, err
    result = Image.open(out.split("  ")[0])
    assert result.size == (96, 96) and "Postprocess upscale to: 96x96" in result.text["parameters"]


@pytest.mark.parametrize("args, words", [
    (["--upscaler", "4x-Foo"], "4x-Foo"),
    (["--scale", "0.5"], "upscale factor must be from 1"),
    (["--size", "big"], "--size takes WIDTHxHEIGHT"),
    (["--scale", "2", "--size", "64x64"], "not both"),
])
def test_bad_upscales_say_what_is_wrong(home, picture, capsys, args, words):
    code, _, err = run(capsys, "upscale", picture[0], "--home", home, *args)
    assert code == 2 and words in err


def test_upscalers_lists_builtins_latent_modes_and_files(model_home, capsys):
    code, out, err = run(capsys, "upscalers", "--home", model_home)
    assert code == 0, err
    assert "Lanczos" in out and "Latent (nearest-exact)" in out
    line = next(l for l in out.splitlines() if "tiny-compact-x4" in l)
    assert "4x" in line


def test_upscale_with_a_model_file(model_home, picture, tmp_path, capsys):
    path, _ = picture
    code, out, err = run(capsys, "upscale", path, "--upscaler", "tiny-compact-x4", "--scale", "4", "--home", model_home, "--out", tmp_path / "m")
    assert code == 0, err
    result = Image.open(out.split("  ")[0])
    assert result.size == (192, 128) and "Postprocess upscaler: tiny-compact-x4" in result.text["parameters"]


def test_hires_fix_through_a_model_file_equals_its_img2img(model_home):
    """The hires pass with an upscaler model: the first picture upscaled by the model
    (4x, then Lanczos down to the 2x target), encoded, refined: equal to img2img of that."""
    from brushwork import Engine
    from brushwork.paths import DataHome
    from brushwork.upscale import find_upscaler, upscale_image

    engine = Engine(model_home, device="cpu")
    engine.load("tiny-sd1")
    base = dict(prompt="a tower", seed=3, steps=4, width=64, height=64, sampler="Euler")
    [hires] = engine.txt2img(GenerationRequest(**base, hires=True, hires_upscaler="tiny-compact-x4", hires_steps=3, hires_strength=0.5))
    [first] = engine.txt2img(GenerationRequest(**base))
    up = upscale_image(first.image, 128, 128, find_upscaler(DataHome(model_home), "tiny-compact-x4"))
    [i2i] = engine.txt2img(GenerationRequest(**{**base, "steps": 3, "width": 128, "height": 128}, init_image=up, denoising_strength=0.5))
    assert hires.image.size == (128, 128) and "Hires upscaler: tiny-compact-x4" in hires.infotext
    assert np.array_equal(np.asarray(hires.image), np.asarray(i2i.image))
