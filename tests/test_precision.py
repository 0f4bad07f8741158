"""--precision: bf16 on the CPU is an opt-in speed path that draws a slightly different
picture and says so in the infotext; the default stays float32."""
import numpy as np
import pytest
import torch

from brushwork import Engine, GenerationRequest
from brushwork.devices import DeviceError, choose_placement, with_precision

REQ = GenerationRequest("a lighthouse at dusk", seed=42, steps=3, width=64, height=64)


def test_precision_names_are_checked():
    cpu = choose_placement("cpu")
    assert with_precision(cpu, None).dtype == torch.float32 and with_precision(cpu, "auto") == cpu
    assert with_precision(cpu, "bf16").dtype == torch.bfloat16
    with pytest.raises(DeviceError, match="fp16 on the CPU is slow or missing"):
        with_precision(cpu, "fp16")
    with pytest.raises(DeviceError, match="unknown precision 'int4'; use auto, fp32, bf16"):
        with_precision(cpu, "int4")


def test_bf16_on_the_cpu_is_close_labelled_and_keeps_the_vae_in_float32(tiny_home, engines):
    fast = Engine(tiny_home, device="cpu", precision="bf16")
    fast.load("tiny-sd1")
    assert next(fast.model.networks.unet.parameters()).dtype == torch.bfloat16
    assert next(fast.model.networks.vae.parameters()).dtype == torch.float32
    (img,) = fast.txt2img(REQ)
    (ref,) = engines("sd1").txt2img(REQ)
    assert "Precision: bf16" in img.infotext and "Precision" not in ref.infotext
    diff = np.abs(np.asarray(img.image, dtype=int) - np.asarray(ref.image, dtype=int))
    assert 0 < diff.mean() < 8  # the same picture up to bf16 rounding, not the same bits
