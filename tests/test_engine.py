"""End-to-end generation on tiny checkpoints: determinism, seeds, CFG, bad input."""
from dataclasses import replace

import numpy as np
import pytest
import torch

from brushwork import GenerationRequest, RequestError
from brushwork.engine import resolve_seed
from brushwork.sampling.registry import UnknownSamplerError

BASE = GenerationRequest("a lighthouse at dusk", negative_prompt="blurry", seed=42, steps=4, width=64, height=64)


def pixels(img):
    return np.asarray(img.image, dtype=np.int16)


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_every_family_generates_an_image(engines, family):
    (img,) = engines(family).txt2img(BASE)
    assert img.image.size == (64, 64) and img.image.mode == "RGB"
    arr = pixels(img)
    assert arr.std() > 1  # not a flat (black or NaN-cleared) picture
    assert f"Model: tiny-{family}" in img.infotext and "Seed: 42" in img.infotext


def test_same_seed_same_pixels_other_seed_other_pixels(engines):
    eng = engines("sd1")
    a, b, c = (eng.txt2img(BASE)[0], eng.txt2img(BASE)[0], eng.txt2img(replace(BASE, seed=43))[0])
    assert np.array_equal(pixels(a), pixels(b))
    assert np.abs(pixels(a) - pixels(c)).mean() > 5


@pytest.mark.parametrize("sampler", ["DPM++ 2M Karras", "Euler a", "DPM++ 2M SDE"])
def test_batch_of_two_equals_two_single_runs(engines, sampler):
    """Noise is drawn per image from its own seed, so batching changes nothing but
    float rounding in batched kernels (at most one 8-bit level here)."""
    eng = engines("sd1")
    req = replace(BASE, sampler=sampler)
    batch = eng.txt2img(replace(req, batch_size=2))
    singles = [eng.txt2img(replace(req, seed=s))[0] for s in (42, 43)]
    assert [i.seed for i in batch] == [42, 43]
    for b, s in zip(batch, singles):
        diff = np.abs(pixels(b) - pixels(s))
        assert diff.max() <= 1 and diff.mean() < 0.05


def test_batch_count_continues_the_seeds(engines):
    imgs = engines("sd1").txt2img(replace(BASE, batch_size=2, batch_count=2))
    assert [i.seed for i in imgs] == [42, 43, 44, 45]
    assert "Seed: 45" in imgs[3].infotext


def test_random_seed_is_resolved_and_recorded(engines):
    (img,) = engines("sd1").txt2img(replace(BASE, seed=-1))
    assert 0 <= img.seed < 2**32 and f"Seed: {img.seed}" in img.infotext
    assert resolve_seed(-1) != resolve_seed(-1) or resolve_seed(-1) != resolve_seed(-1)


def count_unet_batches(eng, req):
    sizes = []
    unet = eng.model.networks.unet
    handle = unet.register_forward_pre_hook(lambda mod, args, kwargs: sizes.append(args[0].shape[0]), with_kwargs=True)
    try:
        eng.txt2img(req)
    finally:
        handle.remove()
    return sizes


def test_cond_and_uncond_run_as_one_batch_and_cfg_1_skips_uncond(engines):
    eng = engines("sd1")
    assert count_unet_batches(eng, replace(BASE, sampler="Euler")) == [2] * 4
    assert count_unet_batches(eng, replace(BASE, sampler="Euler", cfg_scale=1.0)) == [1] * 4
    assert count_unet_batches(eng, replace(BASE, sampler="Euler", batch_size=3)) == [6] * 4


def test_cfg_changes_the_image(engines):
    eng = engines("sd1")
    a = pixels(eng.txt2img(replace(BASE, cfg_scale=1.0))[0])
    b = pixels(eng.txt2img(replace(BASE, cfg_scale=7.0))[0])
    assert np.abs(a - b).mean() > 1


def test_long_prompts_are_not_truncated(engines):
    from brushwork.conditioning import encode_prompt

    eng = engines("sd1")
    m = eng.model
    long_a = "a red house, " * 30 + "cat"
    long_b = "a red house, " * 30 + "dog"
    ca = encode_prompt(m.spec, m.networks.text_encoders, long_a, 1, eng.placement.device).context
    cb = encode_prompt(m.spec, m.networks.text_encoders, long_b, 1, eng.placement.device).context
    assert ca.shape == (1, 154, 32)
    assert torch.equal(ca[:, :77], cb[:, :77]) and not torch.allclose(ca[:, 77:], cb[:, 77:])
    a = pixels(eng.txt2img(replace(BASE, prompt=long_a))[0])
    b = pixels(eng.txt2img(replace(BASE, prompt=long_b))[0])
    assert np.abs(a - b).mean() > 0.01  # the word after token 75 reaches the image


@pytest.mark.parametrize("sampler", ["Euler", "Euler a", "Heun", "LMS", "DPM2", "DPM2 a", "DPM++ 2M", "DPM++ 2M SDE", "DPM++ SDE", "DPM++ 2S a", "DDIM", "LCM"])
def test_every_sampler_runs_on_a_real_network(engines, sampler):
    (img,) = engines("sd2").txt2img(replace(BASE, sampler=sampler, steps=3))
    assert pixels(img).std() > 1
    assert f"Sampler: {sampler}," in img.infotext


def test_defaults_come_from_the_family(engines):
    req = engines("sdxl").complete(GenerationRequest("x", width=64, height=64))
    assert (req.steps, req.cfg_scale, req.sampler, req.schedule) == (25, 7.0, "DPM++ 2M", "Karras")
    assert engines("sd1").complete(GenerationRequest("x", steps=2)).width == 512
    assert engines("sdxl").complete(GenerationRequest("x", steps=2)).width == 1024


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(width=100), "multiple of 8.*Try 96 or 104"),
        (dict(height=63), "multiple of 8"),
        (dict(width=8), "between 64 and 4096"),
        (dict(steps=0), "steps must be a whole number from 1 to 150"),
        (dict(steps=151), "from 1 to 150"),
        (dict(cfg_scale=-1.0), "CFG scale must be between 0 and 30"),
        (dict(batch_size=0), "batch size"),
        (dict(seed=-5), "seed must be -1"),
        (dict(sampler="Eulr"), "Unknown sampler 'Eulr'. Did you mean 'Euler'"),
        (dict(sampler="Euler", schedule="Karas"), "Unknown schedule 'Karas'"),
    ],
)
def test_bad_requests_are_refused_with_a_clear_message(engines, change, message):
    with pytest.raises((RequestError, UnknownSamplerError), match=message):
        engines("sd1").txt2img(replace(BASE, **change))


def test_too_large_for_memory_is_refused_before_running_with_what_fits(engines, monkeypatch):
    eng = engines("sd1")
    monkeypatch.setattr(eng.memory, "free_bytes", lambda device: 1 << 30)
    called = []
    monkeypatch.setattr(eng, "sample", lambda *a, **k: called.append(1))
    with pytest.raises(RequestError, match=r"4096x4096 with batch size 1 needs about [\d.]+ GiB even with the most frugal memory plan .* only 0.9 GiB can be used on cpu\. What fits: \d+x\d+ at batch size 1") as info:
        eng.txt2img(replace(BASE, width=4096, height=4096))
    assert not called
    # the size it names fits, and is the largest of that shape in steps of 10%
    side = int(str(info.value).split("What fits: ")[1].split("x")[0])
    assert 64 <= side < 4096
    eng.complete(replace(BASE, width=side, height=side))


def test_progress_reports_every_step_over_the_whole_request(engines):
    seen = []
    engines("sd1").txt2img(replace(BASE, batch_count=2), progress=lambda p: seen.append((p.step, p.total)))
    assert seen == [(i, 8) for i in range(1, 9)]


def test_vae_nan_in_half_precision_falls_back_to_float32(engines, monkeypatch):
    eng = engines("sd1")
    vae = eng.model.networks.vae
    calls = []
    from brushwork import vae as vae_module

    real = vae_module.decode_latent

    def flaky(v, lat, should_stop=None, tiled=None):
        calls.append(next(v.parameters()).dtype)
        out = real(v, lat, should_stop, tiled=tiled)
        return out * float("nan") if len(calls) == 1 else out

    monkeypatch.setattr(vae_module, "decode_latent", flaky)
    vae.to(torch.float16)
    try:
        (img,) = eng.txt2img(BASE)
    finally:
        vae.to(torch.float32)
        eng._vae_fp32 = False
    assert calls == [torch.float16, torch.float32]
    assert pixels(img).std() > 1


def test_a_checkpoint_can_carry_its_own_defaults(tmp_path):
    import json

    from brushwork import Engine
    from brushwork.models import families, save

    spec = families.tiny("sd1")
    nets = save.random_networks(spec, seed=0)
    own = {"width": 128, "height": 96, "steps": 12, "cfg_scale": 4.5, "sampler": "Euler a", "schedule": "Automatic"}
    save.save_checkpoint(tmp_path / "own.safetensors", spec, nets, metadata={"brushwork.defaults": json.dumps(own)})
    save.save_checkpoint(tmp_path / "bad.safetensors", spec, nets, metadata={"brushwork.defaults": '{"steps": "many", "width": 96'})
    eng = Engine(tmp_path, device="cpu")
    eng.load(str(tmp_path / "own.safetensors"))
    req = eng.complete(GenerationRequest("x"))
    assert (req.width, req.height, req.steps, req.cfg_scale, req.sampler, req.schedule) == (128, 96, 12, 4.5, "Euler a", "Automatic")
    assert eng.complete(GenerationRequest("x", sampler="Euler", steps=3)).steps == 3
    eng.load(str(tmp_path / "bad.safetensors"))  # malformed metadata: the family defaults
    assert eng.complete(GenerationRequest("x")).steps == 25


def encode(eng, text):
    from brushwork.conditioning import encode_prompt

    m = eng.model
    return encode_prompt(m.spec, m.networks.text_encoders, text, 1, eng.placement.device).context


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_weight_one_is_exactly_the_unweighted_prompt(engines, family):
    eng = engines(family)
    assert torch.equal(encode(eng, "a red barn, sunset"), encode(eng, "(a red barn:1.0), sunset"))


def test_emphasis_scales_only_its_tokens_and_keeps_the_mean(tiny_home):
    from brushwork import Engine

    eng = Engine(tiny_home, device="cpu")
    eng.load("tiny-sd1")
    with torch.no_grad():  # random init leaves the output mean at ~0; real encoders are not centred
        eng.model.networks.text_encoders[0].final_layer_norm.bias.add_(0.5)
    plain, weighted = encode(eng, "a red barn"), encode(eng, "a (red:1.5) barn")
    assert plain.shape == weighted.shape == (1, 77, 32)
    assert weighted.mean().item() == pytest.approx(plain.mean().item(), rel=1e-5)
    w = torch.ones(77)
    w[2] = 1.5  # BOS, "a", "red", ...
    scaled = plain * w[None, :, None]
    expected = scaled * (plain.mean() / scaled.mean())
    assert torch.allclose(weighted, expected, atol=1e-6)
    assert not torch.allclose(weighted, plain, atol=1e-3)


def test_break_starts_a_new_chunk(engines):
    eng = engines("sdxl")
    assert encode(eng, "a red barn").shape[1] == 77
    both = encode(eng, "a red barn BREAK sunset")
    assert both.shape == (1, 154, 64)
    assert torch.equal(both[:, 77:], encode(eng, "sunset"))


def test_comma_backtrack_keeps_the_last_phrase_together():
    from brushwork.conditioning import weighted_chunks
    from brushwork.prompts import parse_attention

    chunks = weighted_chunks(parse_attention("word " * 70 + ", " + "tail " * 10))
    assert [len(c.tokens) for c in chunks] == [71, 10]
    assert chunks[0].tokens[-1] == 267 and set(chunks[1].tokens) == {set(chunks[1].tokens).pop()}
    no_backtrack = weighted_chunks(parse_attention("word " * 70 + ", " + "tail " * 10), backtrack=0)
    assert [len(c.tokens) for c in no_backtrack] == [75, 6]


def test_a_missing_lora_warns_with_the_closest_names_and_the_image_is_still_made(engines, caplog):
    eng = engines("sd1")
    (a,) = eng.txt2img(replace(BASE, prompt="a lighthouse at dusk <lora:nope:0.8>"))
    (b,) = eng.txt2img(BASE)
    assert np.array_equal(pixels(a), pixels(b))  # the tag is not encoded as text
    assert "<lora:nope:0.8>" in a.infotext and "Missing LoRAs: nope" in a.infotext
    assert "LoRA 'nope' not found" in caplog.text


def test_loras_from_the_home_folder_apply_switch_and_come_off_exactly(tiny_home, tmp_path, caplog):
    import shutil

    from safetensors.torch import save_file

    from brushwork import Engine
    from brushwork.hashing import addnet_hash

    home = tmp_path / "home"
    shutil.copytree(tiny_home / "models", home / "models")
    g = torch.Generator().manual_seed(1)
    key = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_v"
    lora = home / "models" / "loras" / "Shiny.safetensors"
    lora.parent.mkdir(parents=True)
    save_file({f"{key}.lora_down.weight": torch.randn(4, 32, generator=g), f"{key}.lora_up.weight": torch.randn(32, 4, generator=g)}, str(lora), metadata={"ss_base_model_version": "sd_v1"})
    eng = Engine(home, device="cpu")
    eng.load("tiny-sd1")
    original = {k: v.clone() for k, v in eng.model.networks.unet.state_dict().items()}
    plain = pixels(eng.txt2img(BASE)[0])
    shiny = eng.txt2img(replace(BASE, prompt=BASE.prompt + " <lora:shiny:1>"))[0]
    assert np.abs(pixels(shiny) - plain).mean() > 0.5
    assert f"Lora hashes: \"shiny: {addnet_hash(lora)}\"" in shiny.infotext
    zero = pixels(eng.txt2img(replace(BASE, prompt=BASE.prompt + " <lora:shiny:0>"))[0])
    assert np.array_equal(zero, plain)
    again = pixels(eng.txt2img(BASE)[0])  # taking the LoRA off restores the weights bit for bit
    assert np.array_equal(again, plain)
    assert all(torch.equal(v, original[k]) for k, v in eng.model.networks.unet.state_dict().items())
    bad = home / "models" / "loras" / "xl.safetensors"
    save_file({f"{key}.lora_down.weight": torch.zeros(4, 32), f"{key}.lora_up.weight": torch.zeros(32, 4)}, str(bad), metadata={"ss_base_model_version": "sdxl_base_v1-0"})
    (img,) = eng.txt2img(replace(BASE, prompt=BASE.prompt + " <lora:xl:1>"))
    assert np.array_equal(pixels(img), plain) and "Missing LoRAs: xl" in img.infotext
    assert "trained for SDXL, but the loaded checkpoint is SD 1.x" in caplog.text


def contexts_per_call(eng, req):
    seen = []
    unet = eng.model.networks.unet
    handle = unet.register_forward_pre_hook(lambda mod, args, kwargs: seen.append(kwargs["encoder_hidden_states"].clone()), with_kwargs=True)
    try:
        eng.txt2img(req)
    finally:
        handle.remove()
    return seen


def test_prompt_editing_switches_the_conditioning_at_the_right_step(engines):
    eng = engines("sd1")
    cat, dog, neg = encode(eng, "a cat"), encode(eng, "a dog"), encode(eng, "blurry")
    calls = contexts_per_call(eng, replace(BASE, prompt="a [cat:dog:0.5]", sampler="Euler", steps=4))
    assert len(calls) == 4
    for i, ctx in enumerate(calls):
        assert torch.equal(ctx[0], neg[0])  # the negative prompt comes first in the batch
        assert torch.equal(ctx[1], (cat if i < 2 else dog)[0])


def test_alternation_changes_every_step(engines):
    eng = engines("sd1")
    cat, dog = encode(eng, "a cat"), encode(eng, "a dog")
    calls = contexts_per_call(eng, replace(BASE, prompt="a [cat|dog]", sampler="Euler", steps=4))
    assert [torch.equal(c[1], cat[0]) for c in calls] == [True, False, True, False]
    assert [torch.equal(c[1], dog[0]) for c in calls] == [False, True, False, True]


def test_and_batches_every_sub_prompt_and_weights_them(engines):
    eng = engines("sd1")
    assert count_unet_batches(eng, replace(BASE, prompt="a cat AND a dog", sampler="Euler")) == [3] * 4
    halves = pixels(eng.txt2img(replace(BASE, prompt="a cat :0.5 AND a cat :0.5", sampler="Euler"))[0])
    whole = pixels(eng.txt2img(replace(BASE, prompt="a cat", sampler="Euler"))[0])
    assert np.abs(halves - whole).max() <= 1  # same guidance, up to batched-kernel rounding
    other = pixels(eng.txt2img(replace(BASE, prompt="a cat :0.5 AND a dog :0.5", sampler="Euler"))[0])
    assert np.abs(other - whole).mean() > 0.5


def test_step_locator():
    from brushwork.sampling.denoiser import step_locator

    step_of = step_locator(torch.tensor([10.0, 5.0, 1.0, 0.0], dtype=torch.float64))
    assert [step_of(torch.tensor(s)) for s in (10.0, 7.0, 5.0, 2.0, 1.0, 0.5)] == [1, 1, 2, 2, 3, 3]


def test_a_prompt_of_thousands_of_tokens_still_generates(engines):
    eng = engines("sd1")
    huge = ", ".join(f"(word{i % 50}:1.1)" for i in range(1500))
    (img,) = eng.txt2img(replace(BASE, prompt=huge, steps=2))
    assert img.image.size == (64, 64) and pixels(img).std() > 1
