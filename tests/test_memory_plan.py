"""The memory plan (memory/plan.py: pure, no device), the counting behind it
(memory/footprint.py) and the engine's use of it: 16-bit weights at rest, refusals
with what fits, and the out-of-memory step-down, driven by a fake allocator that
raises the way CUDA's does."""
from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np
import pytest
import torch

from brushwork import Engine, GenerationRequest
from brushwork.memory import plan as mp
from brushwork.memory.footprint import LiveBytes, count_working, file_weights, peak_live_bytes
from brushwork.memory.manager import MemoryOptionError, OutOfMemory, check_rung, is_out_of_memory, parse_size
from brushwork.models import families, save
from brushwork.models.files import open_tensor_file

GiB = 2**30
REQ = GenerationRequest("a lighthouse at dusk", negative_prompt="blurry", seed=42, steps=3, width=64, height=64)


@pytest.fixture(scope="module")
def sdxl_meta():
    spec = families.sdxl_base()
    return spec, save.random_networks(spec, device="meta")


def _sdxl_weights(nets) -> mp.Weights:
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    largest = max(p.numel() for m in [nets.unet, *nets.text_encoders] for n, p in m.named_parameters() if "embedding" not in n)
    return mp.Weights(count(nets.unet), count(nets.vae), sum(count(e) for e in nets.text_encoders), 2, "F16", largest)


def _need(spec, nets, side: int, batch: int, device: str) -> mp.Need:
    dtype = torch.float32 if device == "cpu" else torch.float16
    working = count_working(spec, nets.unet, nets.vae, nets.text_encoders, side, side, 2 * batch, dtype, torch.float32 if device == "cpu" else dtype)
    from brushwork.vae import streamed_decode_bytes

    tiled = streamed_decode_bytes(nets.vae.config, side, side, host_is_device=device == "cpu", dtype_bytes=4 if device == "cpu" else 2)
    return mp.Need(_sdxl_weights(nets), working, tiled, 4 if device == "cpu" else 0)


# ------------------------------------------------------------------ counting


def test_live_bytes_counts_each_storage_once_and_frees_it():
    with LiveBytes() as live:
        a = torch.empty(256, 1024, device="meta")  # 1 MiB
        b = a * 2
        view = b.view(-1)  # shares b's storage: not counted again
        assert live.live == 2 << 20
        del b
        assert live.live == 2 << 20  # the view keeps the storage alive
        del view
        assert live.live == 1 << 20
        (a + 1).sum()  # a temporary comes and goes
        del a
    assert live.live == 0 and live.peak == (2 << 20) + 4  # a and a + 1 at once, then the 4-byte sum


def test_attention_is_counted_as_a_fused_kernel_not_a_token_matrix():
    q = torch.empty(2, 8, 4096, 40, device="meta")
    peak = peak_live_bytes(lambda: torch.nn.functional.scaled_dot_product_attention(q, q, q))
    assert peak == q.numel() * 4  # the output only, not 2 x 8 x 4096^2 scores


def test_working_memory_grows_with_pixels_and_rows(sdxl_meta):
    spec, nets = sdxl_meta
    small = count_working(spec, nets.unet, nets.vae, nets.text_encoders, 512, 512, 2, torch.float32, torch.float32)
    big = count_working(spec, nets.unet, nets.vae, nets.text_encoders, 1024, 1024, 2, torch.float32, torch.float32)
    wide = count_working(spec, nets.unet, nets.vae, nets.text_encoders, 512, 512, 8, torch.float32, torch.float32)
    assert big.sample == pytest.approx(4 * small.sample, rel=0.1)
    assert wide.sample == pytest.approx(4 * small.sample, rel=0.05)
    assert big.decode == pytest.approx(4 * small.decode, rel=0.05)
    assert wide.decode == small.decode  # pictures are decoded one at a time
    # the SD VAE decoder at 1024 px: ~3 GiB of live float32 activations (measured RSS: 3.8 GiB with kernel scratch)
    assert 2.5 * GiB < big.decode < 3.5 * GiB


def test_file_weights_are_counted_per_component_from_the_tensor_table(tiny_home):
    path = tiny_home / "models" / "checkpoints" / "tiny-sdxl.safetensors"
    with open_tensor_file(path) as tf:
        from brushwork.models.detect import detect

        spec = detect(tf.shapes(), tf.metadata, tf.get, name=path.name)
        weights = file_weights(spec, tf.shapes(), {k: v.dtype for k, v in tf.tensors.items()})
    nets = save.random_networks(spec, device="meta")
    count = lambda m: sum(t.numel() for t in m.state_dict().values())  # noqa: E731
    assert weights.unet == count(nets.unet) and weights.vae == count(nets.vae)
    assert weights.text_encoders == pytest.approx(sum(count(e) for e in nets.text_encoders), abs=len(nets.text_encoders) * 1000)  # position ids, logit scale
    assert (weights.file_bytes_per_weight, weights.file_dtype) == (2, "F16")


# ------------------------------------------------------------------ the pure plan


def test_cpu_sdxl_1024_is_kept_at_rest_in_16_bits_on_a_16_gb_machine(sdxl_meta):
    spec, nets = sdxl_meta
    need = _need(spec, nets, 1024, 1, "cpu")
    roomy = mp.choose_plan(need, "cpu", 64 * GiB)
    assert roomy.name == "resident" and roomy.at_rest_bits == 32 and roomy.exact
    laptop = mp.choose_plan(need, "cpu", 13 * GiB)  # a 16 GB machine with the desktop running
    assert laptop.name == "16-bit at rest" and laptop.at_rest_bits == 16 and laptop.fits
    assert laptop.exact and "same picture" in laptop.note
    assert laptop.peak < 12 * GiB < 16 * GiB < roomy.peak
    within_10 = mp.choose_plan(need, "cpu", int(9.5 * GiB / mp.SAFETY))  # --memory-limit 10G beside 0.5 GiB of libraries
    assert within_10.name == "text encoders released" and within_10.fits and within_10.release_text_encoders
    assert within_10.peak <= 9.5 * GiB and within_10.exact
    hopeless = mp.choose_plan(need, "cpu", 4 * GiB)
    assert not hopeless.fits and hopeless.last


def test_gpu_sdxl_1024_fits_a_6_gib_card_and_24_gib_is_resident(sdxl_meta):
    spec, nets = sdxl_meta
    need = _need(spec, nets, 1024, 1, "cuda")
    assert mp.choose_plan(need, "cuda", 24 * GiB).name == "resident"
    small = mp.choose_plan(need, "cuda", int(5.6 * GiB))  # a 6 GiB card minus the CUDA context
    assert small.fits and small.rung >= 2 and small.text_encoders_on_cpu
    assert small.peak <= mp.SAFETY * 5.6 * GiB
    assert not mp.plan_at(need, "cuda", int(5.6 * GiB), small.rung - 1).fits  # the fastest rung that fits
    tiny_card = mp.choose_plan(need, "cuda", 2 * GiB)
    assert tiny_card.name == "sequential" and tiny_card.fits


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_every_rung_down_the_ladder_needs_less(sdxl_meta, device):
    spec, nets = sdxl_meta
    need = _need(spec, nets, 1024, 1, device)
    peaks = [mp.plan_at(need, device, 8 * GiB, r).peak for r in range(len(mp.rungs(device)))]
    assert all(a >= b for a, b in zip(peaks, peaks[1:])) and peaks[0] > peaks[-1]


def test_step_down_goes_one_rung_at_a_time_and_stops_at_the_last():
    need = mp.Need(mp.Weights(1000, 100, 200, 2, "F16"), mp.Working(50, 80, 5), 20)
    plan = mp.plan_at(need, "cuda", 1 << 20, 0)
    names = [plan.name]
    while (plan := mp.step_down(plan, need)) is not None:
        names.append(plan.name)
    assert names == list(mp.GPU_RUNGS)


def test_a_float32_file_at_rest_in_16_bits_is_labelled_as_a_different_picture():
    need = mp.Need(mp.Weights(10**9, 10**7, 10**8, 4, "F32"), mp.Working(10**8, 10**8, 10**6), 10**8, 4)
    plan = mp.plan_at(need, "cpu", 64 * GiB, 2)
    assert plan.at_rest_bits == 16 and not plan.exact and "differs" in plan.note


def test_what_fits_is_the_largest_size_and_batch_that_fit(sdxl_meta):
    spec, nets = sdxl_meta
    need = _need(spec, nets, 2048, 4, "cuda")
    free = 6 * GiB
    assert not mp.choose_plan(need, "cuda", free).fits
    fit = mp.fitting_size(lambda w, h, b: _need(spec, nets, w, b, "cuda") if w == h else None, "cuda", free, 2048, 2048, 4)
    assert 64 <= fit.width < 2048 and fit.width % 64 == 0 and fit.height == fit.width
    fitting = _need(spec, nets, fit.width, 1, "cuda")
    assert mp.choose_plan(fitting, "cuda", free).fits
    assert "at batch size 1" in fit.text(2048, 2048, 4)


def test_memory_plan_names_are_checked():
    from brushwork.devices import choose_placement

    cpu = choose_placement("cpu")
    assert check_rung(cpu, "16-BIT AT REST") == "16-bit at rest" and check_rung(cpu, "auto") is None
    with pytest.raises(MemoryOptionError, match="unknown memory plan 'sequential' for cpu; use auto or one of: resident, tiled VAE, 16-bit at rest, text encoders released"):
        check_rung(cpu, "sequential")


def test_memory_limits_are_read_like_free_and_top_write_them():
    assert parse_size("10G") == parse_size("10GiB") == parse_size(" 10 g ") == 10 * GiB
    assert parse_size("6.5GB") == int(6.5e9) and parse_size("8192M") == 8 * GiB and parse_size(None) is None
    for bad, why in (("ten", "is not a size"), ("10 parsecs", "is not a size"), ("100M", "below 256 MiB")):
        with pytest.raises(MemoryOptionError, match=why):
            parse_size(bad)


def test_out_of_memory_errors_are_recognised():
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert is_out_of_memory(RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you tried to allocate 123 bytes"))
    assert not is_out_of_memory(RuntimeError("shapes cannot be multiplied"))


# ------------------------------------------------------------------ in the engine


def test_16_bit_at_rest_draws_the_same_picture_bit_for_bit(tiny_home, engines):
    resident = engines("sd1")
    frugal = Engine(tiny_home, device="cpu", memory_plan="16-bit at rest")
    frugal.load("tiny-sd1")
    assert frugal.memory.plan.name == "16-bit at rest" and frugal.memory.plan.exact
    a = np.asarray(resident.txt2img(REQ)[0].image)
    b = np.asarray(frugal.txt2img(REQ)[0].image)
    assert np.array_equal(a, b)
    unet = frugal.model.networks.unet
    linear = next(m for m in unet.modules() if isinstance(m, torch.nn.Linear))
    norm = next(m for m in unet.modules() if isinstance(m, torch.nn.GroupNorm))
    assert linear.weight.dtype == torch.float16 and norm.weight.dtype == torch.float32  # still at rest after running
    held = sum(p.numel() * p.element_size() for p in unet.parameters())
    full = sum(p.numel() * p.element_size() for p in resident.model.networks.unet.parameters())
    assert held < 0.55 * full


def test_a_lora_on_weights_at_rest_changes_the_picture_and_unloads_exactly(home):
    from safetensors.torch import save_file

    eng = Engine(home, device="cpu", memory_plan="16-bit at rest")
    eng.load("tiny-sd1")
    mod = dict(eng.model.networks.unet.named_modules())["down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"]
    before = mod.weight.detach().clone()
    key = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    g = torch.Generator().manual_seed(0)
    lora = {f"{key}.lora_down.weight": torch.randn(4, 32, generator=g), f"{key}.lora_up.weight": torch.randn(32, 4, generator=g), f"{key}.alpha": torch.tensor(4.0)}
    (home / "models" / "loras").mkdir(parents=True, exist_ok=True)
    save_file(lora, str(home / "models" / "loras" / "strong.safetensors"))
    plain = np.asarray(eng.txt2img(REQ)[0].image)
    styled = np.asarray(eng.txt2img(replace(REQ, prompt=REQ.prompt + " <lora:strong:1>"))[0].image)
    assert mod.weight.dtype == torch.float16
    assert np.abs(plain.astype(int) - styled).mean() > 0.5
    again = np.asarray(eng.txt2img(REQ)[0].image)
    assert torch.equal(mod.weight, before) and np.array_equal(plain, again)


class _FakeAllocator:
    """Raises like CUDA's allocator while the engine's plan is above ``ok_from`` (a rung)."""

    def __init__(self, engine: Engine, ok_from: int) -> None:
        self.engine, self.ok_from, self.raised = engine, ok_from, 0

    def __call__(self, module, args):
        if self.engine.memory.plan.rung < self.ok_from:
            self.raised += 1
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB (fake allocator)")


def test_out_of_memory_mid_job_steps_the_plan_down_and_retries_once(tiny_home, engines, caplog):
    eng = Engine(tiny_home, device="cpu")
    eng.load("tiny-sd1")
    assert eng.memory.plan.rung == 0
    fake = _FakeAllocator(eng, ok_from=1)
    handle = eng.model.networks.unet.register_forward_pre_hook(fake)
    try:
        with caplog.at_level(logging.WARNING):
            (img,) = eng.txt2img(REQ)
    finally:
        handle.remove()
    assert fake.raised == 1 and eng.memory.plan.name == "tiled VAE"
    assert "out of memory on plan 'resident'; running the batch again on 'tiled VAE'" in caplog.text
    assert np.array_equal(np.asarray(img.image), np.asarray(engines("sd1").txt2img(REQ)[0].image))


def test_out_of_memory_twice_is_an_error_that_says_what_to_do(tiny_home):
    eng = Engine(tiny_home, device="cpu")
    eng.load("tiny-sd1")
    fake = _FakeAllocator(eng, ok_from=99)
    eng.model.networks.unet.register_forward_pre_hook(fake)
    with pytest.raises(OutOfMemory, match=r"cpu ran out of memory at 64x64, batch size 1, again after stepping down to the memory plan 'tiled VAE'\. Use a smaller size or batch size\."):
        eng.txt2img(REQ)
    assert fake.raised == 2  # one retry, not a loop


def test_other_errors_are_not_retried(tiny_home):
    eng = Engine(tiny_home, device="cpu")
    eng.load("tiny-sd1")
    calls = []

    def broken(module, args):
        calls.append(1)
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    eng.model.networks.unet.register_forward_pre_hook(broken)
    with pytest.raises(RuntimeError, match="cannot be multiplied"):
        eng.txt2img(replace(REQ, steps=2))
    assert calls == [1] and eng.memory.plan.rung == 0


def test_text_encoders_released_are_read_again_only_for_a_new_prompt(tiny_home, engines):
    from brushwork.memory.at_rest import ReleasedEncoders

    import weakref

    eng = Engine(tiny_home, device="cpu", memory_plan="text encoders released")
    eng.load("tiny-sd1")
    loaded = weakref.ref(eng.model.networks.text_encoders[0])
    first = eng.txt2img(REQ)[0]
    assert loaded() is None  # nothing else holds the weights: they are really freed
    encoders = eng.model.networks.text_encoders
    assert isinstance(encoders, ReleasedEncoders) and not encoders.loaded and encoders.reads == 0
    eng.txt2img(replace(REQ, seed=7))  # same prompts: their encodings are kept
    assert encoders.reads == 0 and not encoders.loaded
    eng.txt2img(replace(REQ, width=96, height=64))  # a new size is counted without reading them back
    assert encoders.reads == 0 and not encoders.loaded
    other = replace(REQ, prompt="a red balloon over the sea")
    again = eng.txt2img(other)[0]
    assert encoders.reads == 1 and not encoders.loaded  # read for the new prompt, then dropped again
    resident = engines("sd1")
    assert np.array_equal(np.asarray(first.image), np.asarray(resident.txt2img(REQ)[0].image))
    assert np.array_equal(np.asarray(again.image), np.asarray(resident.txt2img(other)[0].image))


def test_released_text_encoders_are_freed_before_sampling_even_when_the_prompts_need_padding(tiny_home, engines):
    """The prompt plan lives through sampling; it must not hold the encoders (it did, through
    its lazily encoded padding chunk: SDXL's 1.5 GiB stayed resident). A prompt longer than one
    75-token chunk beside a short negative needs the padding: it is encoded before they go."""
    import weakref

    eng = Engine(tiny_home, device="cpu", memory_plan="text encoders released")
    eng.load("tiny-sd1")
    loaded = [weakref.ref(enc) for enc in eng.model.networks.text_encoders]
    alive_in_sampling = []
    eng.model.networks.unet.register_forward_pre_hook(lambda *_: alive_in_sampling.append([r() is not None for r in loaded]))
    long = replace(REQ, prompt=", ".join(["a small red lighthouse on a green cliff"] * 12), negative_prompt="blurry")
    (img,) = eng.txt2img(long)
    assert alive_in_sampling and all(not any(alive) for alive in alive_in_sampling)
    assert eng.model.networks.text_encoders.reads == 0  # the padding did not read them back
    assert np.array_equal(np.asarray(img.image), np.asarray(engines("sd1").txt2img(long)[0].image))


def test_a_request_that_needs_a_lower_rung_gets_it_before_it_starts(tiny_home, engines, monkeypatch):
    eng = Engine(tiny_home, device="cpu")
    eng.load("tiny-sd1")
    assert eng.memory.plan.name == "resident"
    m = eng.model
    need = eng.memory.need(m.spec, m.networks, 64, 64, 2)
    held = sum(p.numel() * p.element_size() for net in [m.networks.unet, m.networks.vae, *m.networks.text_encoders] for p in net.parameters())
    at_rest = mp.plan_at(need, "cpu", 1 << 40, 2).peak
    resident = mp.plan_at(need, "cpu", 1 << 40, 1).peak
    assert at_rest < resident
    free = int((at_rest + resident) / 2 / mp.SAFETY)  # between the two: only 16 bits at rest fits
    monkeypatch.setattr(eng.memory, "free_bytes", lambda device: free - held)
    (img,) = eng.txt2img(REQ)
    assert eng.memory.plan.name == "16-bit at rest"
    assert np.array_equal(np.asarray(img.image), np.asarray(engines("sd1").txt2img(REQ)[0].image))


def test_loaded_weights_own_exactly_their_memory(engines):
    """A q/k/v third sliced out of a fused OpenCLIP tensor is copied, so it does not keep
    the whole fused tensor alive (that cost SDXL's bigG encoder 0.5 GiB)."""
    nets = engines("sdxl").model.networks
    for net in [nets.unet, nets.vae, *nets.text_encoders]:
        for name, p in net.named_parameters():
            assert p.untyped_storage().nbytes() == p.numel() * p.element_size(), name
