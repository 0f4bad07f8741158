"""Where sampling starts: the one difference between txt2img, img2img and inpaint.

Every generation integrates the same ODE/SDE from some noise level down to 0:

* **txt2img** starts from pure noise at the schedule's highest sigma;
* **img2img** starts from the encoded init picture, noised to the sigma that the
  denoising strength picks (:func:`strength_window`), and runs only the rest of the
  schedule;
* **inpaint** is img2img with a latent mask: the denoised estimate is pinned to the
  clean init latents outside the mask at every step (:class:`PinnedDenoiser`), so
  only the masked area is redrawn; "latent noise" / "latent nothing" replace the
  masked latents before noising (:func:`masked_start`).

Dedicated inpainting checkpoints (9-channel UNets) instead see the mask and the
masked picture as extra input channels (:func:`inpaint_channels`); they are not
pinned (as in diffusers' inpainting pipeline): the picture is pasted back outside
the mask in pixel space either way (``canvas.py``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

#: AUTOMATIC1111 caps the strength below 1 when it picks the step window
_STRENGTH_CAP = 0.999


@dataclass(frozen=True)
class StepWindow:
    """``schedule_steps``: the length of the sigma schedule that is built;
    ``first``: the index of the sigma sampling starts at (the steps run are
    ``schedule_steps - first``)."""

    schedule_steps: int
    first: int

    @property
    def steps_run(self) -> int:
        return self.schedule_steps - self.first


def strength_window(steps: int, strength: float, exact_steps: bool = False) -> StepWindow:
    """AUTOMATIC1111's img2img steps: the schedule has ``steps`` sigmas and sampling
    starts ``int(strength * steps) + 1`` steps before its end (so strength 0.5 at 20
    steps runs 11 of them, from the 10th sigma); with ``exact_steps`` (A1111's "do
    exactly the amount of steps the slider specifies") the schedule is stretched to
    ``int(steps / strength)`` sigmas so that exactly ``steps`` run.  Strength 0 runs
    nothing (the picture is the VAE round trip of the init image)."""
    if not 0 <= strength <= 1:
        raise ValueError(f"denoising strength must be between 0 and 1; got {strength}")
    if strength == 0:
        return StepWindow(steps, steps)
    capped = min(strength, _STRENGTH_CAP)
    if exact_steps:
        total = int(steps / capped)
        return StepWindow(total, total - steps)
    t_enc = int(capped * steps)
    return StepWindow(steps, steps - t_enc - 1)


def masked_start(init: torch.Tensor, repaint: Optional[torch.Tensor], content: str, noise: torch.Tensor) -> torch.Tensor:
    """The clean starting latents: the init latents, with the masked area
    (``repaint`` = 1) replaced by unit noise ("latent noise") or zeros ("latent
    nothing"); "fill" and "original" act on the picture before encoding."""
    if repaint is None or content in ("fill", "original"):
        return init
    keep = 1 - repaint
    if content == "latent noise":
        return init * keep + noise * repaint
    if content == "latent nothing":
        return init * keep
    raise ValueError(f"unknown masked content {content!r}")


def noised(clean: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """The latents at noise level ``sigma`` (the k-diffusion form x = x0 + sigma * n)."""
    return clean + noise * sigma


class PinnedDenoiser:
    """``denoise(x, sigma) -> x0`` with the area outside the mask pinned to the clean
    init latents: x0 = init * (1 - repaint) + x0 * repaint.  Wraps any denoiser and
    passes :meth:`with_uncond` (used by DDIM CFG++) through, pinned alike."""

    def __init__(self, inner, init: torch.Tensor, repaint: torch.Tensor):
        self.inner, self.init, self.repaint = inner, init, repaint
        self.keep = 1 - repaint

    def pin(self, x0: torch.Tensor) -> torch.Tensor:
        return self.init * self.keep + x0 * self.repaint

    def __call__(self, x: torch.Tensor, sigma) -> torch.Tensor:
        return self.pin(self.inner(x, sigma))

    def with_uncond(self, x: torch.Tensor, sigma, scale_factor: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        guided, uncond = self.inner.with_uncond(x, sigma, scale_factor)
        return self.pin(guided), self.pin(uncond)


def inpaint_channels(repaint: torch.Tensor, masked_latents: torch.Tensor) -> torch.Tensor:
    """The extra UNet input of a 9-channel inpainting checkpoint: the mask (1 =
    repaint, at latent size) followed by the latents of the picture with the masked
    area blanked, (B, 1 + C, h, w)."""
    return torch.cat([repaint.to(masked_latents.dtype), masked_latents], dim=1)


@dataclass
class Start:
    """Where one request's sampling starts, shared by its batches: the clean init
    latents (1, C, h, w), the latent mask (1, 1, h, w; 1 = repaint) and what fills
    it, the step window, and for 9-channel checkpoints their extra input."""

    init: torch.Tensor
    repaint: Optional[torch.Tensor]
    content: str
    window: StepWindow
    channels: Optional[torch.Tensor] = None  # inpainting UNets: (1, 1 + C, h, w)

    @property
    def pinned(self) -> bool:
        """Ordinary checkpoints inpaint by pinning; inpainting ones see the mask."""
        return self.repaint is not None and self.channels is None

    def sigmas(self, full: torch.Tensor) -> torch.Tensor:
        """The part of a ``window.schedule_steps``-step schedule that is run."""
        return full[self.window.first:]

    def first_latents(self, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """The batch's starting point: the init latents (masked content applied)
        noised to ``sigma`` with the images' own starting noise."""
        init = self.init.expand(noise.shape[0], -1, -1, -1)
        repaint = None if self.repaint is None else self.repaint.expand(noise.shape[0], -1, -1, -1)
        return noised(masked_start(init, repaint, self.content, noise), noise, sigma)

    def denoiser(self, inner):
        return PinnedDenoiser(inner, self.init, self.repaint) if self.pinned else inner


def latent_window_mask(mask_values, device) -> torch.Tensor:
    """A (h, w) array of 0..1 (masks.latent_mask) as a (1, 1, h, w) float32 tensor."""
    return torch.as_tensor(mask_values, dtype=torch.float32, device=device)[None, None]


def conditioning_inputs(pixels: Optional[torch.Tensor], pixel_mask: Optional[torch.Tensor], height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """What an inpainting UNet's masked picture is made of: (masked pixels in
    [-1, 1] to encode, mask at latent size).  The pixel mask (1, 1, H, W) is made
    binary at 0.5; without one (img2img, txt2img) the whole picture is masked, and
    without pixels (txt2img) the picture is grey (0)."""
    if pixel_mask is None:
        pixel_mask = torch.ones(1, 1, height, width)
    binary = (pixel_mask >= 0.5).to(torch.float32)
    if pixels is None:
        pixels = torch.zeros(1, 3, height, width)
    masked = pixels * (1 - binary)
    small = torch.nn.functional.interpolate(binary, size=(height // 8, width // 8))
    return masked, small
