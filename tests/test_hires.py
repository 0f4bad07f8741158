"""The hires fix: a txt2img, upscaled, then an img2img pass at the larger size with
the same seeds (hires.py, Engine._hires_batch), on the tiny SD 1.x checkpoint;
its target sizes, prompt timeline, infotext and ``--from``."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from brushwork.cli import main
from brushwork.engine import GenerationRequest, JobControl, RequestError, planned_steps
from brushwork.hires import hires_fields, hires_infotext, hires_size, second_pass
from brushwork.infotext import params_from_infotext
from brushwork.prompts import schedule_prompt

PROMPT, SEED = "a lighthouse on a cliff", 7
BASE = dict(prompt=PROMPT, seed=SEED, steps=6, width=64, height=64, sampler="Euler", cfg_scale=6.0)


def arr(img) -> np.ndarray:
    return np.asarray(img.convert("RGB")).astype(int)


# ------------------------------------------------------------------ pure parts


@pytest.mark.parametrize("w, h, scale, rx, ry, expected", [
    (512, 512, 2, 0, 0, (1024, 1024, 1024, 1024)),
    (512, 768, 1.5, 0, 0, (768, 1152, 768, 1152)),
    (512, 512, 1.33, 0, 0, (680, 680, 680, 680)),  # 680.96 rounded down to a multiple of 8
    (512, 768, 2, 1024, 0, (1024, 1536, 1024, 1536)),  # one side: the other from the aspect
    (512, 768, 2, 0, 1024, (680, 1024, 680, 1024)),
    (512, 512, 2, 1024, 768, (1024, 1024, 1024, 768)),  # both: cover, then the middle is kept
    (512, 768, 2, 1024, 1024, (1024, 1536, 1024, 1024)),
])
def test_the_hires_size_is_a1111s(w, h, scale, rx, ry, expected):
    s = hires_size(w, h, scale, rx, ry)
    assert (s.cover_width, s.cover_height, s.width, s.height) == expected


def test_prompt_editing_continues_the_first_pass_timeline():
    # A1111's "new timeline", steps 10 and hires steps 10 (reference section c)
    assert schedule_prompt("a [b:.5] c", 10, first_pass=10) == [(10, "a b c")]
    assert schedule_prompt("a [b:1.5] c", 10, first_pass=10) == [(5, "a  c"), (10, "a b c")]
    assert schedule_prompt("a [b:13] c", 10, first_pass=10) == [(3, "a  c"), (10, "a b c")]
    # the first pass itself is unchanged
    assert schedule_prompt("a [b:.5] c", 10) == [(5, "a  c"), (10, "a b c")]


def test_the_second_pass_request_takes_the_hires_settings_or_the_first_passs():
    req = GenerationRequest(**BASE, hires=True, hires_scale=2, hires_steps=0, hires_strength=0.4)
    two = second_pass(req)
    assert (two.width, two.height, two.steps, two.sampler, two.prompt, two.cfg_scale, two.hires) == (128, 128, 6, "Euler", PROMPT, 6.0, False)
    two = second_pass(replace(req, hires_steps=3, hires_sampler="DPM++ 2M", hires_prompt="a tower", hires_cfg=4.0))
    assert (two.steps, two.sampler, two.prompt, two.cfg_scale) == (3, "DPM++ 2M", "a tower", 4.0)


def test_the_infotext_keys_read_back_to_the_same_request():
    req = GenerationRequest(**BASE, hires=True, hires_scale=1.5, hires_steps=4, hires_strength=0.45, hires_upscaler="Latent (bicubic)",
                            hires_prompt="a tower", hires_cfg=5.0)
    extra = hires_infotext(req, "Latent (bicubic)")
    assert list(extra) == ["Denoising strength", "Hires upscale", "Hires steps", "Hires upscaler", "Hires prompt", "Hires CFG Scale"]
    back = hires_fields({k: str(v) for k, v in extra.items()})
    assert back == {"hires": True, "hires_strength": 0.45, "hires_steps": 4, "hires_scale": 1.5, "hires_upscaler": "Latent (bicubic)",
                    "hires_prompt": "a tower", "hires_cfg": 5.0}
    # A1111's rule: Denoising strength alone (an img2img) is no hires fix
    assert hires_fields({"Denoising strength": "0.5"}) == {}


@pytest.mark.parametrize("changes, words", [
    ({"hires_scale": 0.5}, "hires scale must be from 1"),
    ({"hires_strength": 1.5}, "denoising strength must be between 0 and 1"),
    ({"hires_steps": -1}, "hires steps must be"),
    ({"hires_resize_x": 30}, "hires resize x must be 0"),
    ({"hires_scale": 80.0}, "hires scale must be from 1"),
    ({"width": 2048, "height": 2048, "hires_scale": 4}, "larger than 4096"),
    ({"hires_sampler": "Eulr"}, "Eulr"),
    ({"init_image": Image.new("RGB", (64, 64))}, "hires fix is a txt2img option"),
])
def test_bad_hires_values_are_refused_before_any_model_work(changes, words):
    from brushwork.request import validate_request

    with pytest.raises((RequestError, ValueError), match=words):
        validate_request(GenerationRequest(**{**BASE, "hires": True, **changes}))


# ------------------------------------------------------------------ the engine


@pytest.fixture(scope="module")
def engine(engines):
    return engines("sd1")


def collect(engine, req):
    steps = []
    images = engine.txt2img(req, progress=lambda p: steps.append((p.step, p.total, None if p.latents is None else p.latents.clone())))
    return images, steps


def test_hires_fix_equals_txt2img_upscaled_then_img2img_step_for_step(engine):
    """The second pass is exactly an img2img of the Lanczos-upscaled first picture at
    the target size with the same seed: every step's denoised latents and the pixels."""
    hires = GenerationRequest(**BASE, hires=True, hires_scale=2, hires_upscaler="Lanczos", hires_steps=5, hires_strength=0.6)
    [made], steps = collect(engine, hires)
    [first] = engine.txt2img(GenerationRequest(**BASE))
    upscaled = first.image.resize((128, 128), Image.LANCZOS)
    i2i = GenerationRequest(**{**BASE, "steps": 5, "width": 128, "height": 128}, init_image=upscaled, denoising_strength=0.6)
    [again], i2i_steps = collect(engine, i2i)
    assert made.image.size == (128, 128)
    second = steps[6:]
    assert len(second) == planned_steps(i2i) == 4 and steps[-1][:2] == (10, 10)  # 6 + int(0.6 * 5) + 1
    for (_, _, a), (_, _, b) in zip(second, i2i_steps):
        assert torch.equal(a, b)
    assert np.array_equal(arr(made.image), arr(again.image))
    text = made.infotext
    assert "Size: 64x64" in text and "Denoising strength: 0.6" in text and "Hires upscale: 2" in text
    assert "Hires steps: 5" in text and "Hires upscaler: Lanczos" in text


def test_a_batch_runs_the_second_pass_with_each_images_own_seed(engine):
    req = GenerationRequest(**BASE, batch_size=2, hires=True, hires_upscaler="Lanczos", hires_steps=3, hires_strength=0.5)
    batch = engine.txt2img(req)
    alone = engine.txt2img(replace(req, seed=SEED + 1, batch_size=1))
    assert [i.seed for i in batch] == [SEED, SEED + 1]
    # batched UNet calls differ from single ones only by float rounding: within 1 level
    assert np.abs(arr(batch[1].image) - arr(alone[0].image)).max() <= 1


@pytest.mark.parametrize("mode", ["Latent", "Latent (antialiased)", "Latent (bicubic)", "Latent (bicubic antialiased)", "Latent (nearest)", "Latent (nearest-exact)"])
def test_every_latent_mode_makes_the_target_size(engine, mode):
    req = GenerationRequest(**BASE, hires=True, hires_upscaler=mode, hires_resize_x=96, hires_resize_y=0, hires_steps=2, hires_strength=0.5)
    [img] = engine.txt2img(req)
    assert img.image.size == (96, 96) and f"Hires upscaler: {mode}" in img.infotext and "Hires resize: 96x0" in img.infotext


def test_latent_modes_differ_and_cover_and_crop(engine):
    base = GenerationRequest(**BASE, hires=True, hires_resize_x=128, hires_resize_y=96, hires_steps=2, hires_strength=0.5)
    a = engine.txt2img(replace(base, hires_upscaler="Latent"))[0].image
    b = engine.txt2img(replace(base, hires_upscaler="Latent (nearest)"))[0].image
    assert a.size == b.size == (128, 96)
    assert np.abs(arr(a) - arr(b)).mean() > 0.5


def test_the_family_defaults_fill_what_the_request_leaves_open(engine):
    req = engine.complete(GenerationRequest(prompt="x", hires=True))
    assert (req.hires_scale, req.hires_steps, req.hires_strength) == (2.0, 10, 0.5)  # the tiny SD 1.x is a 64 px "512" family model


def test_interrupt_in_the_second_pass_gives_the_upscaled_first_picture(engine):
    req = GenerationRequest(**BASE, hires=True, hires_upscaler="Lanczos", hires_steps=6, hires_strength=0.8)
    control = JobControl()

    def progress(p):
        if p.step == 8:  # two steps into the hires pass
            control.interrupt()

    [img] = engine.txt2img(req, progress=progress, control=control)
    [first] = engine.txt2img(GenerationRequest(**BASE))
    assert not img.complete and img.image.size == (128, 128)
    assert np.array_equal(arr(img.image), arr(first.image.resize((128, 128), Image.LANCZOS)))
    assert "Stopped at step: 6" in img.infotext
    # re-created the same way from its infotext's stop step
    [again] = engine.txt2img(replace(req, stop_at_step=6))
    assert np.array_equal(arr(again.image), arr(img.image)) and not again.complete


def test_a_stop_in_the_first_pass_keeps_its_small_picture(engine):
    [img] = engine.txt2img(GenerationRequest(**BASE, hires=True, hires_steps=2, stop_at_step=3))
    assert img.image.size == (64, 64) and not img.complete


def test_unknown_upscaler_and_other_loras_in_the_hires_prompt_are_refused(engine):
    with pytest.raises(RequestError, match="Lanczos"):  # the message lists what there is
        engine.complete(GenerationRequest(**BASE, hires=True, hires_upscaler="4x-UltraSharp"))
    with pytest.raises(RequestError, match="hires prompt names other LoRAs"):
        engine.txt2img(GenerationRequest(**BASE, hires=True, hires_steps=2, hires_prompt="a tower <lora:balloon:1>"))


def test_the_time_estimate_counts_the_second_pass_at_its_size(engine):
    small = engine.estimate_time(engine.complete(GenerationRequest(**BASE)))
    both = engine.estimate_time(engine.complete(GenerationRequest(**BASE, hires=True, hires_scale=2, hires_steps=6, hires_strength=1.0)))
    # the hires pass runs 6 steps on 4x the latent pixels: more than 4x the first pass
    assert both.flops > 4 * small.flops


# ------------------------------------------------------------------ the command line


def run(capsys, *args):
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_generate_hires_and_from_re_create_it(home, capsys):
    code, out, err = run(capsys, "generate", PROMPT, "--home", home, "--model", "tiny-sd1", "-W", "64", "-H", "64", "--steps", "4", "--seed", "5",
                         "--sampler", "Euler", "--hires-scale", "1.5", "--hires-steps", "3", "--hires-strength", "0.55", "--hires-upscaler", "lanczos")
    assert code == 0, err
    path = out.split("  seed ")[0].strip()
    first = Image.open(path)
    assert first.size == (96, 96)
    p = params_from_infotext(first.text["parameters"])
    assert p.extra["Hires upscale"] == "1.5" and p.extra["Hires upscaler"] == "Lanczos" and p.extra["Denoising strength"] == "0.55"
    code, out, err = run(capsys, "generate", "--from", path, "--home", home, "-q")
    assert code == 0, err
    again = Image.open(out.split("  seed ")[0].strip())
    assert again.size == (96, 96) and np.array_equal(arr(again), arr(first))


def test_generate_says_a_bad_hires_value_before_loading(home, capsys):
    code, _, err = run(capsys, "generate", "x", "--home", home, "--hires-resize", "big")
    assert code == 2 and "--hires-resize takes WIDTHxHEIGHT" in err
    code, _, err = run(capsys, "generate", "x", "--home", home, "--hires-scale", "0.5")
    assert code == 2 and "hires scale must be from 1" in err


def test_a_mismatched_torchvision_is_a_clear_message_not_a_broken_import(tmp_path):
    """The trap of issue 16: a torchvision built for another torch breaks the libraries
    that import it.  Simulated by a torchvision that fails as the real one does."""
    import subprocess
    import sys

    fake = tmp_path / "site" / "torchvision"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text('raise RuntimeError("operator torchvision::nms does not exist")\n')
    code = (
        "import brushwork.engine, brushwork.upscale, brushwork.server.app\n"  # Brushwork's own imports still work
        "from brushwork.runtime import torchvision_problem\n"
        "print(torchvision_problem())\n"
    )
    import os

    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert "torchvision::nms does not exist" in out.stdout and "pip uninstall torchvision" in out.stdout


def test_hires_fix_on_a_9_channel_inpainting_checkpoint_equals_its_img2img(tmp_path):
    from brushwork import Engine
    from brushwork.models import families, save

    spec = families.tiny("sd1", inpainting=True)
    save.save_checkpoint(tmp_path / "models" / "checkpoints" / "tiny-inpainting.safetensors", spec, save.random_networks(spec, seed=0))
    engine = Engine(tmp_path, device="cpu")
    engine.load("tiny-inpainting")
    [made] = engine.txt2img(GenerationRequest(**BASE, hires=True, hires_upscaler="Lanczos", hires_steps=3, hires_strength=0.5))
    [first] = engine.txt2img(GenerationRequest(**BASE))
    up = first.image.resize((128, 128), Image.LANCZOS)
    [again] = engine.txt2img(GenerationRequest(**{**BASE, "steps": 3, "width": 128, "height": 128}, init_image=up, denoising_strength=0.5))
    assert made.image.size == (128, 128) and np.array_equal(arr(made.image), arr(again.image))
