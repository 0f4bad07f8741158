"""img2img, inpaint and outpaint through the engine on the tiny checkpoints: one
generation path started from an encoded picture (start.py), with the picture work
in canvas.py; parity with diffusers' img2img and inpainting pipelines."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from brushwork.engine import GenerationRequest, RequestError, initial_noise, planned_steps
from brushwork.sampling.registry import resolve_sampler
from brushwork.start import Start, StepWindow, conditioning_inputs, strength_window
from brushwork.vae import image_to_pixels

PROMPT, STEPS, CFG, SEED = "a photo of a cat", 8, 7.0, 3
#: max |difference| over max |latent|, as the txt2img parity test (test_parity.py)
TOLERANCE = 1e-5


def picture(w=64, h=64, seed=0) -> Image.Image:
    """A smooth picture with some structure (gradients and a disc)."""
    y, x = np.mgrid[0:h, 0:w]
    r = (x / w * 255).astype(np.uint8)
    g = (y / h * 255).astype(np.uint8)
    b = np.where((x - w / 2) ** 2 + (y - h / 2) ** 2 < (min(w, h) / 4) ** 2, 230, 40).astype(np.uint8)
    return Image.fromarray(np.stack([r, g, b], -1), "RGB")


def box_mask(size, box) -> Image.Image:
    m = Image.new("L", size, 0)
    m.paste(255, box)
    return m


def arr(img) -> np.ndarray:
    return np.asarray(img.convert("RGB")).astype(int)


@pytest.fixture(scope="module")
def inpaint_engine(tmp_path_factory):
    """An engine on a tiny 9-channel inpainting SD 1.x checkpoint (sd-v1-5-inpainting's layout)."""
    from brushwork import Engine
    from brushwork.models import families, save

    home = tmp_path_factory.mktemp("inpaint-home")
    spec = families.tiny("sd1", inpainting=True)
    save.save_checkpoint(home / "models" / "checkpoints" / "tiny-sd1-inpainting.safetensors", spec, save.random_networks(spec, seed=0))
    eng = Engine(home, device="cpu")
    eng.load("tiny-sd1-inpainting")
    return eng


# ------------------------------------------------------------------ the step window


@pytest.mark.parametrize("steps, strength, exact, expected", [
    (20, 0.5, False, StepWindow(20, 9)),  # int(0.5*20) + 1 = 11 steps, from the 10th sigma
    (20, 0.75, False, StepWindow(20, 4)),
    (20, 1.0, False, StepWindow(20, 0)),  # capped at 0.999: all 20 steps, from sigma max
    (20, 0.01, False, StepWindow(20, 19)),  # the last step only
    (20, 0.0, False, StepWindow(20, 20)),  # nothing: the VAE round trip
    (20, 0.5, True, StepWindow(40, 20)),  # exactly 20 steps of a 40-step schedule
    (10, 0.3, True, StepWindow(33, 23)),
])
def test_strength_picks_automatic1111s_step_window(steps, strength, exact, expected):
    w = strength_window(steps, strength, exact)
    assert w == expected
    if exact and strength:
        assert w.steps_run == steps


def test_planned_steps_follow_the_strength():
    img = picture()
    assert planned_steps(GenerationRequest(steps=20)) == 20
    assert planned_steps(GenerationRequest(steps=20, init_image=img, denoising_strength=0.5)) == 11
    assert planned_steps(GenerationRequest(steps=20, init_image=img, denoising_strength=0.5, exact_steps=True)) == 20


# ------------------------------------------------------------------ parity with diffusers


def _scheduler():
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1, timestep_spacing="linspace")


def test_img2img_matches_diffusers_img2img_pipeline(engines):
    """Same init latents and noise: diffusers runs int(strength * steps) steps where
    A1111 runs one more, so its strength is set to give the same window."""
    from diffusers import StableDiffusionImg2ImgPipeline

    from brushwork.conditioning import tokenizer

    eng = engines("sd1")
    n = eng.model.networks
    img = picture()
    req = eng.complete(GenerationRequest(PROMPT, seed=SEED, steps=STEPS, cfg_scale=CFG, sampler="Euler", init_image=img, denoising_strength=0.5))
    info, sched = resolve_sampler("Euler")
    init = eng.encode(image_to_pixels(img))
    noise, _ = initial_noise([SEED], (4, 8, 8))
    window = strength_window(STEPS, 0.5)
    assert window.steps_run == 5
    ours = eng.sample(req, info, sched, [SEED], eng._encode(req), noise=noise, start=Start(init, None, "original", window))
    pipe = StableDiffusionImg2ImgPipeline(n.vae, n.text_encoders[0], tokenizer(), n.unet, _scheduler(), None, None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(prompt=PROMPT, negative_prompt="", image=init, strength=5 / STEPS, num_inference_steps=STEPS, guidance_scale=CFG,
                  generator=torch.Generator().manual_seed(SEED), output_type="latent").images
    err = float((ours - theirs).abs().max() / theirs.abs().max())
    assert err < TOLERANCE


def test_inpainting_checkpoint_matches_diffusers_inpaint_pipeline(inpaint_engine):
    """A 9-channel UNet gets [latents, mask, masked-picture latents]; at strength 1
    diffusers starts from pure noise, as our Start with empty init latents does."""
    from diffusers import StableDiffusionInpaintPipeline

    from brushwork.conditioning import tokenizer

    eng = inpaint_engine
    n = eng.model.networks
    img, mask = picture(), box_mask((64, 64), (16, 16, 48, 40))
    req = eng.complete(GenerationRequest(PROMPT, seed=SEED, steps=STEPS, cfg_scale=CFG, sampler="Euler", init_image=img, mask=mask, denoising_strength=1.0, mask_blur=0))
    info, sched = resolve_sampler("Euler")
    pixels = image_to_pixels(img)
    pixel_mask = torch.from_numpy(np.asarray(mask, dtype=np.float32) / 255)[None, None]
    channels = eng._inpaint_channels(pixels, pixel_mask, req, None)
    assert channels.shape == (1, 5, 8, 8)
    noise, _ = initial_noise([SEED], (4, 8, 8))
    start = Start(torch.zeros(1, 4, 8, 8), None, "original", strength_window(STEPS, 1.0), channels)
    ours = eng.sample(req, info, sched, [SEED], eng._encode(req), noise=noise, start=start)
    pipe = StableDiffusionInpaintPipeline(n.vae, n.text_encoders[0], tokenizer(), n.unet, _scheduler(), None, None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(prompt=PROMPT, negative_prompt="", image=img, mask_image=mask, masked_image_latents=channels[:, 1:], num_inference_steps=STEPS,
                  guidance_scale=CFG, latents=noise.clone(), height=64, width=64, output_type="latent").images
    err = float((ours - theirs).abs().max() / theirs.abs().max())
    assert err < TOLERANCE
    # the masked picture and the small mask are made as diffusers makes them
    their_mask = pipe.mask_processor.preprocess(mask, height=64, width=64)
    their_masked = pipe.image_processor.preprocess(img, height=64, width=64) * (their_mask < 0.5)
    masked, small = conditioning_inputs(pixels, pixel_mask, 64, 64)
    assert torch.equal(masked, their_masked.float())
    assert torch.equal(small, torch.nn.functional.interpolate(their_mask, size=(8, 8)))


# ------------------------------------------------------------------ behaviour


def test_strength_0_returns_the_vae_round_trip_of_the_picture(engines):
    eng = engines("sd1")
    img = picture(96, 64)
    out = eng.txt2img(GenerationRequest(PROMPT, seed=SEED, steps=STEPS, init_image=img, denoising_strength=0.0))[0]
    round_trip = eng.decode(eng.encode(image_to_pixels(img)))[0]
    assert out.image.size == (96, 64)
    assert np.array_equal(arr(out.image), arr(round_trip))
    assert "Denoising strength: 0.0" in out.infotext


def test_more_strength_moves_further_from_the_picture(engines):
    eng = engines("sd1")
    img = picture()
    base = arr(eng.txt2img(GenerationRequest(PROMPT, seed=SEED, steps=STEPS, init_image=img, denoising_strength=0.0))[0].image)
    dist = [np.abs(arr(eng.txt2img(GenerationRequest(PROMPT, seed=SEED, steps=STEPS, init_image=img, denoising_strength=s))[0].image) - base).mean() for s in (0.1, 0.6, 1.0)]
    # the tiny random model saturates fast: a light touch stays closest
    assert dist[0] < min(dist[1:]), dist
    assert dist[0] > 0


def test_the_same_seed_gives_the_same_pixels_and_the_infotext_records_the_picture(engines):
    from brushwork.init_image import image_hash

    eng = engines("sd1")
    img = picture()
    req = GenerationRequest(PROMPT, seed=SEED, steps=STEPS, init_image=img, denoising_strength=0.6)
    a, b = eng.txt2img(req)[0], eng.txt2img(req)[0]
    assert np.array_equal(arr(a.image), arr(b.image))
    assert "Denoising strength: 0.6" in a.infotext and f"Init image hash: {image_hash(img)}" in a.infotext
    # the keys sit after the sampler keys, before Version, as AUTOMATIC1111 writes them
    assert a.infotext.index("Model:") < a.infotext.index("Denoising strength") < a.infotext.index("Init image hash") < a.infotext.index("Version")


def test_pixels_outside_the_mask_and_its_blur_band_are_the_input_exactly(engines):
    eng = engines("sd1")
    img = picture(96, 64)
    box = (30, 20, 62, 44)
    out = eng.txt2img(GenerationRequest(PROMPT, seed=SEED, steps=STEPS, init_image=img, mask=box_mask(img.size, box), denoising_strength=0.9, mask_blur=4))[0]
    a, b = arr(out.image), arr(img)
    band = 4 * 3  # a Gaussian of radius 4 reaches about 3 radii
    outside = np.ones(a.shape[:2], bool)
    outside[box[1] - band: box[3] + band, box[0] - band: box[2] + band] = False
    assert np.array_equal(a[outside], b[outside])
    inner = a[box[1] + 4: box[3] - 4, box[0] + 4: box[2] - 4] - b[box[1] + 4: box[3] - 4, box[0] + 4: box[2] - 4]
    assert np.abs(inner).mean() > 10  # repainted
    for key in ("Mask blur: 4", "Inpaint area: Whole picture", "Masked content: original", "Mask hash: "):
        assert key in out.infotext


def test_only_masked_touches_only_the_padded_crop(engines):
    eng = engines("sd1")
    img = picture(128, 96)
    box = (70, 40, 90, 60)
    req = GenerationRequest(PROMPT, seed=SEED, steps=STEPS, width=64, height=64, init_image=img, mask=box_mask(img.size, box), denoising_strength=0.9,
                            mask_blur=0, inpaint_area="only masked", only_masked_padding=8)
    out = eng.txt2img(req)[0]
    assert out.image.size == img.size  # pasted back into the whole picture
    a, b = arr(out.image), arr(img)
    changed = np.argwhere(np.abs(a - b).sum(-1) > 0)
    # the crop: the mask's box padded by 8 (62..98 x 32..68), already square
    assert changed[:, 1].min() >= 62 and changed[:, 1].max() < 98 and changed[:, 0].min() >= 32 and changed[:, 0].max() < 68
    assert np.abs(a[box[1]:box[3], box[0]:box[2]] - b[box[1]:box[3], box[0]:box[2]]).mean() > 10
    assert "Inpaint area: Only masked" in out.infotext and "Masked area padding: 8" in out.infotext


def test_masked_content_changes_only_where_sampling_starts(engines):
    eng = engines("sd1")
    img = picture()
    mask = box_mask(img.size, (16, 16, 48, 48))
    outs = {c: arr(eng.txt2img(GenerationRequest(PROMPT, seed=SEED, steps=STEPS, init_image=img, mask=mask, denoising_strength=0.5, masked_content=c))[0].image)
            for c in ("original", "fill", "latent noise", "latent nothing")}
    inside = (slice(24, 40), slice(24, 40))
    for c in ("fill", "latent noise", "latent nothing"):
        assert np.abs(outs[c][inside] - outs["original"][inside]).mean() > 1, c
        assert np.array_equal(outs[c][:4], outs["original"][:4])  # far outside: the picture itself


def test_a_transparent_picture_without_a_mask_repaints_its_transparent_area(engines, caplog):
    eng = engines("sd1")
    rgba = picture().convert("RGBA")
    alpha = np.full((64, 64), 255, np.uint8)
    alpha[20:44, 20:44] = 0
    rgba.putalpha(Image.fromarray(alpha))
    out = eng.txt2img(GenerationRequest(PROMPT, seed=SEED, steps=STEPS, init_image=rgba, denoising_strength=0.9))[0]
    assert "Mask blur" in out.infotext and "transparent area is repainted" in caplog.text
    a, b = arr(out.image), arr(rgba.convert("RGB"))
    assert np.array_equal(a[:4], b[:4]) and np.abs(a[28:36, 28:36] - b[28:36, 28:36]).mean() > 1


def test_outpaint_extends_the_canvas_and_keeps_the_picture(engines):
    eng = engines("sd1")
    img = picture(64, 64)
    out = eng.txt2img(GenerationRequest(PROMPT, seed=SEED, steps=STEPS, init_image=img, outpaint={"right": 64, "top": 32}, denoising_strength=0.8, mask_blur=4))[0]
    assert out.image.size == (128, 96)
    a = arr(out.image)
    # the original sits at (0, 32); away from the repainted seam band it is untouched
    assert np.array_equal(a[32 + 32:, :64 - 32], arr(img)[32:, :32])
    assert "Outpaint: right=64 top=32" in out.infotext and "Outpaint fill: edge" in out.infotext


@pytest.mark.parametrize("mode", ["just resize", "crop and resize", "resize and fill", "latent upscale"])
def test_resize_modes_make_the_requested_size(engines, mode):
    eng = engines("sd1")
    out = eng.txt2img(GenerationRequest(PROMPT, seed=SEED, steps=4, width=64, height=64, init_image=picture(128, 64), resize_mode=mode, denoising_strength=0.3))[0]
    assert out.image.size == (64, 64)
    assert ("Resize mode" in out.infotext) == (mode != "just resize")


def test_the_size_defaults_to_the_pictures_own_rounded_to_8(engines):
    eng = engines("sd1")
    req = eng.complete(GenerationRequest(PROMPT, init_image=picture(101, 67)))
    assert (req.width, req.height) == (104, 64)
    req = eng.complete(GenerationRequest(PROMPT, init_image=picture(128, 64), width=192))
    assert (req.width, req.height) == (192, 96)  # the other side from the picture's aspect
    req = eng.complete(GenerationRequest(PROMPT, init_image=picture(128, 64), width=96))
    assert (req.width, req.height) == (128, 64)  # 96x48 would be under the 64 px minimum


def test_inpainting_checkpoint_inpaints_and_generates(inpaint_engine):
    eng = inpaint_engine
    img = picture()
    out = eng.txt2img(GenerationRequest(PROMPT, seed=SEED, steps=4, init_image=img, mask=box_mask(img.size, (16, 16, 48, 48)), denoising_strength=1.0, mask_blur=0))[0]
    a, b = arr(out.image), arr(img)
    assert np.array_equal(a[:16], b[:16]) and np.abs(a[20:44, 20:44] - b[20:44, 20:44]).mean() > 1
    t2i = eng.txt2img(GenerationRequest(PROMPT, seed=SEED, steps=4, width=64, height=64))[0]
    assert t2i.image.size == (64, 64) and arr(t2i.image).std() > 0


@pytest.mark.parametrize("change, message", [
    (dict(denoising_strength=1.5), "denoising strength must be between 0 and 1"),
    (dict(denoising_strength=-0.1), "0 keeps the picture"),
    (dict(mask_blur=100), "mask blur must be a whole number of pixels from 0 to 64"),
    (dict(only_masked_padding=-1), "only masked padding"),
    (dict(resize_mode="stretch"), "crop and resize"),
    (dict(masked_content="blank"), "latent noise"),
    (dict(outpaint={"left": 100}), "multiple of 8"),
    (dict(outpaint={"middle": 64}), "left"),
])
def test_bad_refine_settings_are_refused_with_the_fix(engines, change, message):
    eng = engines("sd1")
    with pytest.raises(RequestError, match=message):
        eng.complete(replace(GenerationRequest(PROMPT, init_image=picture()), **change))


def test_a_mask_or_outpaint_without_a_picture_is_refused(engines):
    eng = engines("sd1")
    with pytest.raises(RequestError, match="a mask needs an init image"):
        eng.complete(GenerationRequest(PROMPT, mask=box_mask((64, 64), (0, 0, 8, 8))))
    with pytest.raises(RequestError, match="outpaint needs an init image"):
        eng.complete(GenerationRequest(PROMPT, outpaint={"left": 64}))


def test_an_empty_mask_is_refused(engines):
    from brushwork.masks import MaskError

    eng = engines("sd1")
    with pytest.raises(MaskError, match="the mask is empty"):
        eng.txt2img(GenerationRequest(PROMPT, steps=2, init_image=picture(), mask=Image.new("L", (64, 64), 0)))


def test_a_mask_of_another_shape_is_refused_and_a_smaller_one_scaled(engines, caplog):
    from brushwork.masks import MaskError

    eng = engines("sd1")
    with pytest.raises(MaskError, match="64x64"):
        eng.txt2img(GenerationRequest(PROMPT, steps=2, init_image=picture(), mask=box_mask((64, 32), (0, 0, 16, 16))))
    out = eng.txt2img(GenerationRequest(PROMPT, steps=2, init_image=picture(), mask=box_mask((32, 32), (8, 8, 24, 24)), denoising_strength=0.5))[0]
    assert out.image.size == (64, 64) and "scaled" in caplog.text


@pytest.mark.parametrize("family, prediction", [("sd2", "v_prediction"), ("sdxl", "epsilon")])
def test_sd2_and_sdxl_inpainting_checkpoints_load_and_inpaint(tmp_path, family, prediction):
    """SD 2 inpainting and SDXL inpainting layouts (9-channel UNets; SDXL's size
    conditioning alongside) load strictly and inpaint only the mask."""
    from brushwork import Engine
    from brushwork.models import families, save

    spec = families.tiny(family, prediction, inpainting=True)
    save.save_checkpoint(tmp_path / "models" / "checkpoints" / "tiny-inpainting.safetensors", spec, save.random_networks(spec, seed=0))
    eng = Engine(tmp_path, device="cpu")
    loaded = eng.load("tiny-inpainting")
    assert loaded.spec.inpainting and loaded.spec.label.endswith("inpainting")
    img = picture()
    out = eng.txt2img(GenerationRequest(PROMPT, seed=SEED, steps=3, init_image=img, mask=box_mask(img.size, (16, 16, 48, 48)), denoising_strength=1.0, mask_blur=0))[0]
    a, b = arr(out.image), arr(img)
    assert np.array_equal(a[:16], b[:16]) and np.abs(a[20:44, 20:44] - b[20:44, 20:44]).mean() > 1
