"""Live previews: the fitted latent -> RGB map, and the engine's stop controls."""
import numpy as np
import torch
import torch.nn.functional as F

from brushwork.engine import GenerationRequest, JobControl
from brushwork.previews import PreviewMap, fit_preview_map


class LinearVAE(torch.nn.Module):
    """A 'VAE' whose decoder is exactly linear per 8x8 block: the fit must recover it."""

    def __init__(self, weight, bias):
        super().__init__()
        self.weight, self.bias = weight, bias
        self.p = torch.nn.Parameter(torch.zeros(1))
        self.config = type("C", (), {"scaling_factor": 0.5, "latent_channels": 4})()

    def decode(self, z):
        rgb = torch.einsum("nchw,cd->ndhw", z, self.weight) + self.bias.view(1, 3, 1, 1)
        return type("O", (), {"sample": F.interpolate(rgb, scale_factor=8, mode="nearest")})()


def test_the_fit_recovers_a_linear_decoder_exactly():
    g = torch.Generator().manual_seed(0)
    w, b = torch.randn(4, 3, generator=g) * 0.03, torch.tensor([0.1, -0.2, 0.05])
    vae = LinearVAE(w, b)
    m = fit_preview_map(vae)
    # the sampler's latents are scaled by the scaling factor: decode divides it out
    assert torch.allclose(m.weight, w / 0.5, atol=1e-4) and torch.allclose(m.bias, b, atol=1e-4)
    lat = torch.randn(4, 3, 5, generator=g)
    rgb = m.to_rgb(lat)
    assert rgb.shape == (3, 5, 3) and rgb.dtype == np.uint8


def test_to_rgb_clamps_to_the_pixel_range():
    m = PreviewMap(torch.eye(4, 3) * 10, torch.zeros(3))
    rgb = m.to_rgb(torch.ones(4, 2, 2))
    assert rgb.max() == 255 and m.to_rgb(-torch.ones(4, 2, 2)).min() == 0


def test_engine_preview_sizes(engines):
    eng = engines("sd1")
    small = eng.preview(torch.randn(1, 4, 8, 8))  # decoded by the VAE: the picture's own size
    assert small.size == (64, 64)
    big = eng.preview(torch.randn(2, 4, 32, 32), index=1)  # linear map, scaled up for display
    assert big.size == (256, 256)


def test_skip_stops_one_batch_and_interrupt_stops_the_rest(engines):
    eng = engines("sd1")
    req = GenerationRequest("a cube", seed=5, steps=6, width=64, height=64, batch_count=3)
    full = eng.txt2img(req)
    control = JobControl()

    def on_progress(p):
        if p.step == 2:
            control.skip()  # during batch 1
        if p.step == 10:
            control.interrupt()  # during batch 2 (steps 7-12)

    images = eng.txt2img(req, progress=on_progress, control=control)
    assert [im.complete for im in images] == [False, False]
    assert [im.seed for im in images] == [5, 6]
    # a stopped batch is partly denoised: different from the finished picture
    assert np.abs(np.asarray(images[0].image, float) - np.asarray(full[0].image, float)).mean() > 1
    control2 = JobControl()
    again = eng.txt2img(req, progress=lambda p: p.step == 14 and control2.skip(), control=control2)
    assert [im.complete for im in again] == [True, True, False]
    assert np.asarray(again[0].image).tobytes() == np.asarray(full[0].image).tobytes()
