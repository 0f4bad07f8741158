"""Flux.1 through the engine and its clients: a tiny random Flux model in the files users
have (the BFL transformer, ae, clip_l and t5xxl in their folders) generates with
``Engine.txt2img``, ``brushwork generate`` (and ``--from``), the native API and
``/sdapi/v1``, with Forge's infotext; what Flux cannot do here is refused before work."""
from __future__ import annotations

import base64
import io
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from brushwork.engine import Engine, GenerationRequest, RequestError

from flux_home import make_flux_home
from job_wait import wait_job


@pytest.fixture(scope="module")
def flux_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("flux-home")
    make_flux_home(root)  # split files: flux1-dev + ae + clip_l + t5xxl
    make_flux_home(root, guidance=False)  # flux1-schnell, the same parts
    return root


@pytest.fixture(scope="module")
def engine(flux_root):
    e = Engine(str(flux_root), device="cpu")
    e.load("flux1-dev")
    return e


def small(**kw) -> GenerationRequest:
    return GenerationRequest(**{"prompt": "a red sports car on a mountain road", "seed": 7, "width": 64, "height": 64, "steps": 4, **kw})


def pixels(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("RGB")).astype(np.int16)


def test_family_defaults_are_flux_own(engine):
    dev = engine.complete(GenerationRequest(prompt="a car"))
    assert (dev.width, dev.height, dev.steps, dev.cfg_scale, dev.distilled_cfg_scale, dev.sampler, dev.schedule) == (1024, 1024, 20, 1.0, 3.5, "Euler", "Simple")
    engine.load("flux1-schnell")
    try:
        fast = engine.complete(GenerationRequest(prompt="a car", width=64, height=64))
        assert (fast.steps, fast.cfg_scale, fast.distilled_cfg_scale) == (4, 1.0, None)
    finally:
        engine.load("flux1-dev")


def test_a_generation_is_flux_pipelines_picture(engine):
    """The engine's picture equals diffusers' FluxPipeline on the same networks, prompt and
    starting noise (the engine's seeded CPU noise)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

    from brushwork.conditioning import tokenizer as clip_tokenizer
    from brushwork.models.flux_text import t5_tokenizer
    from brushwork.noise import initial_noise
    from brushwork.sampling import flow

    req = small(steps=6)
    ours = engine.txt2img(req)[0]
    nets = engine.model.networks
    scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)
    pipe = FluxPipeline(scheduler=scheduler, vae=nets.vae, text_encoder=nets.text_encoders[0], tokenizer=clip_tokenizer(), text_encoder_2=nets.text_encoders[1],
                        tokenizer_2=t5_tokenizer(), transformer=nets.unet)
    pipe.set_progress_bar_config(disable=True)
    noise, _ = initial_noise([7], (16, 8, 8), "CPU")
    theirs = pipe(prompt=req.prompt, latents=flow.pack(noise), height=64, width=64, num_inference_steps=6, guidance_scale=3.5, output_type="pil", max_sequence_length=512).images[0]
    diff = np.abs(pixels(ours.image) - pixels(theirs))
    print(f"largest difference to FluxPipeline: {diff.max()} of 255 levels")
    assert diff.max() <= 1 and pixels(ours.image).std() > 5  # a picture, not a flat field


def test_infotext_is_forges_and_distilled_guidance_changes_the_picture(engine):
    a = engine.txt2img(small())[0]
    b = engine.txt2img(small(distilled_cfg_scale=1.5))[0]
    assert "Steps: 4, Sampler: Euler, Schedule type: Simple, CFG scale: 1.0, Distilled CFG Scale: 3.5, Seed: 7, Size: 64x64" in a.infotext
    assert "Distilled CFG Scale: 1.5" in b.infotext and "Clip skip" not in a.infotext and "Precision" not in a.infotext
    assert np.abs(pixels(a.image) - pixels(b.image)).max() > 10
    again = engine.txt2img(small())[0]
    assert np.array_equal(pixels(a.image), pixels(again.image))  # the seed keeps the picture


def test_schnell_runs_unshifted_without_guidance(engine):
    engine.load("flux1-schnell")
    try:
        img = engine.txt2img(small())[0]
    finally:
        engine.load("flux1-dev")
    assert "Distilled CFG Scale" not in img.infotext and "Model: flux1-schnell" in img.infotext


def test_real_cfg_uses_the_negative_prompt_and_a_second_call_per_step(engine, monkeypatch):
    from brushwork import flux_family

    calls = []
    real = flux_family.flux_denoiser

    def counting(*args, **kw):
        d = real(*args, **kw)
        calls.append(d.flow)
        return d

    monkeypatch.setattr(flux_family, "flux_denoiser", counting)
    plain = engine.txt2img(small(negative_prompt="blurry"))[0]
    guided = engine.txt2img(small(negative_prompt="blurry", cfg_scale=3.0))[0]
    assert [c.calls for c in calls] == [4, 8]  # Euler: one step one call; real CFG: two
    assert np.abs(pixels(plain.image) - pixels(guided.image)).max() > 10
    assert "CFG scale: 3.0" in guided.infotext and "Negative prompt: blurry" in guided.infotext


def test_prompt_editing_switches_the_text_mid_way(engine):
    whole = engine.txt2img(small(prompt="a red car"))[0]
    edited = engine.txt2img(small(prompt="a [red:blue:0.5] car"))[0]
    blue = engine.txt2img(small(prompt="a blue car"))[0]
    d = lambda x, y: np.abs(pixels(x.image) - pixels(y.image)).max()  # noqa: E731
    assert d(whole, edited) > 0 and d(blue, edited) > 0


@pytest.mark.parametrize("change, message", [
    (dict(init_image=Image.new("RGB", (64, 64))), "img2img, inpaint and outpaint are not built for Flux.1 dev"),
    (dict(hires=True), "the hires fix is not built for Flux.1 dev"),
    (dict(sampler="Euler a"), "does not fit Flux.1 dev's flow model; use one of Euler, Heun, DPM\\+\\+ 2M, LMS"),
    (dict(sampler="Euler", schedule="Karras"), "own resolution-shifted schedule"),
    (dict(clip_skip=2), "clip skip does not apply to Flux.1 dev"),
    (dict(width=72), "multiple of 16.*Try 64 or 80"),
    (dict(prompt="a car AND a boat"), "AND \\(composable prompts\\) is not built"),
    (dict(distilled_cfg_scale=31.0), "distilled CFG scale must be between 0 and 30"),
])
def test_what_flux_cannot_do_is_refused_before_work(engine, change, message):
    with pytest.raises(RequestError, match=message):
        engine.complete(small(**change))


def test_a_cpu_job_that_would_take_too_long_is_refused_with_its_estimate(flux_root):
    e = Engine(str(flux_root), device="cpu", max_job_seconds=0.01)
    e.load("flux1-dev")
    with pytest.raises(RequestError, match=r"1024x1024, 20 steps, 1 image\(s\) would take about .* TFLOP\), longer than the limit"):
        e.complete(GenerationRequest(prompt="a car"))
    unlimited = Engine(str(flux_root), device="cpu", max_job_seconds=None)
    unlimited.load("flux1-dev")
    assert unlimited.complete(GenerationRequest(prompt="a car")).width == 1024  # asked for: no limit


def test_memory_refusal_and_released_text_encoders(flux_root):
    """Under a memory limit too small for the model the request is refused with what
    fits; on the plan that releases T5 and CLIP-L they are read again from their files
    for a new prompt, and the picture is the same."""
    from brushwork.memory.at_rest import ReleasedEncoders

    base = Engine(str(flux_root), device="cpu")
    base.load("flux1-dev")
    want = base.txt2img(small())[0]
    lean = Engine(str(flux_root), device="cpu", memory_plan="text encoders released")
    lean.load("flux1-dev")
    got = lean.txt2img(small())[0]
    encoders = lean.model.networks.text_encoders
    assert isinstance(encoders, ReleasedEncoders) and not encoders.loaded
    assert np.array_equal(pixels(want.image), pixels(got.image))
    other = lean.txt2img(small(prompt="a green boat"))[0]
    assert encoders.reads == 1 and not encoders.loaded and not np.array_equal(pixels(other.image), pixels(got.image))
    need = lean.memory.need(lean.model.spec, lean.model.networks, 64, 64, 1)
    assert need.transformer > 0 and need.text_encoders > need.transformer  # the tiny T5's vocabulary outweighs the tiny transformer
    with pytest.raises(Exception, match=r"needs about .* GiB even with the most frugal memory plan \('text encoders released'\).*What fits"):
        tight = Engine(str(flux_root), device="cpu", memory_limit=2**28)
        tight.load("flux1-dev")
        tight.complete(GenerationRequest(prompt="a car", width=2048, height=2048, batch_size=8, steps=1))


def test_cli_generate_and_from_recreate_the_picture(flux_root, tmp_path, capsys):
    from brushwork.cli import main

    home = tmp_path / "home"
    shutil.copytree(flux_root / "models", home / "models")
    assert main(["generate", "a red car", "--home", str(home), "--model", "flux1-dev", "-W", "64", "-H", "64", "--steps", "3", "--seed", "5", "--distilled-cfg", "2.5"]) == 0
    err = capsys.readouterr().err
    assert "(Flux.1 dev) on cpu (float32): 64x64, 3 steps, Euler Simple, CFG 1.0, distilled CFG 2.5" in err
    first = sorted((home / "outputs").rglob("*.png"))
    assert len(first) == 1 and "Distilled CFG Scale: 2.5" in Image.open(first[0]).info["parameters"]
    assert main(["generate", "--from", str(first[0]), "--home", str(home)]) == 0
    both = sorted((home / "outputs").rglob("*.png"))
    assert len(both) == 2
    assert np.array_equal(pixels(Image.open(both[0])), pixels(Image.open(both[1])))
    assert Image.open(both[1]).info["parameters"].split("Version")[0] == Image.open(both[0]).info["parameters"].split("Version")[0]


@pytest.fixture(scope="module")
def server(flux_root, tmp_path_factory):
    from fastapi.testclient import TestClient

    from brushwork.server import ServeOptions, build

    home = tmp_path_factory.mktemp("flux-serve")
    shutil.copytree(flux_root / "models", home / "models")
    app, studio = build(ServeOptions(home=str(home), model="flux1-dev", device="cpu"))
    with TestClient(app, base_url="http://127.0.0.1") as client:
        yield client
    studio.close()
    studio.store.close()


def test_sdapi_txt2img_takes_forges_distilled_cfg_scale(server):
    r = server.post("/sdapi/v1/txt2img", json={"prompt": "a red car", "seed": 3, "steps": 3, "cfg_scale": 1, "distilled_cfg_scale": 2.0, "width": 64, "height": 64, "sampler_name": "Euler"})
    assert r.status_code == 200, r.text
    body = r.json()
    info = __import__("json").loads(body["info"])
    assert info["distilled_cfg_scale"] == 2.0 and "Distilled CFG Scale: 2.0" in info["infotexts"][0]
    img = Image.open(io.BytesIO(base64.b64decode(body["images"][0])))
    assert img.size == (64, 64)
    bad = server.post("/sdapi/v1/txt2img", json={"prompt": "a car", "steps": 3, "width": 64, "height": 64, "sampler_name": "DPM++ 2M SDE"})
    assert bad.status_code == 400 and "does not fit Flux.1 dev's flow model" in bad.text


def test_native_api_and_the_studio_options(server):
    opts = server.get("/api/v1/options").json()
    assert opts["family"] == "flux" and opts["defaults"]["distilled_cfg_scale"] == 3.5 and opts["defaults"]["steps"] == 20
    assert opts["applies"] == {"distilled_cfg_scale": True, "clip_skip": False, "hires": False, "refine": False, "negative_prompt_needs_cfg": True}
    assert opts["samplers"] == ["Euler", "Heun", "DPM++ 2M", "LMS"] and opts["schedules"] == ["Simple"] and opts["ranges"]["width"]["step"] == 16
    r = server.post("/api/v1/jobs", json={"prompt": "a blue car", "seed": 4, "steps": 3, "width": 64, "height": 64, "distilled_cfg_scale": 4.0})
    assert r.status_code == 202, r.text
    job = wait_job(server, r.json()["id"])
    assert job["state"] == "done", job
    assert "Distilled CFG Scale: 4.0" in job["images"][0]["infotext"]


def test_a_flux_lora_tag_changes_the_picture_and_leaves_no_trace(engine, flux_root):
    """<lora:NAME:w> in a Flux prompt merges a kohya Flux LoRA (the guide's car LoRA's
    layout) for that picture; without the tag the picture is the original again."""
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(3)
    rank, width = 4, 64  # the tiny transformer's width
    lora = {}
    for block in ("lora_unet_double_blocks_0_img_attn_proj", "lora_unet_single_blocks_1_linear2"):
        inner = width if "proj" in block else width + 4 * width  # linear2 takes attention + MLP
        lora[f"{block}.lora_down.weight"] = torch.randn(rank, inner, generator=gen) * 0.3
        lora[f"{block}.lora_up.weight"] = torch.randn(width, rank, generator=gen) * 0.3
        lora[f"{block}.alpha"] = torch.tensor(float(rank))
    folder = flux_root / "models" / "loras"
    folder.mkdir(parents=True, exist_ok=True)
    save_file(lora, str(folder / "red-car.safetensors"), metadata={"ss_base_model_version": "flux1"})
    plain = engine.txt2img(small())[0]
    styled = engine.txt2img(small(prompt="a red sports car on a mountain road <lora:red-car:1>"))[0]
    back = engine.txt2img(small())[0]
    assert 'Lora hashes: "red-car: ' in styled.infotext
    assert np.abs(pixels(plain.image) - pixels(styled.image)).max() > 10
    assert np.array_equal(pixels(plain.image), pixels(back.image))
