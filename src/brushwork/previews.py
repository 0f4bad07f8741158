"""Live previews: a cheap latent -> RGB picture for progress reports.

Decoding with the VAE at every few steps costs as much as a sampling step on a
big model.  A linear map from the latent channels to RGB is almost free and
shows composition and colours well enough to watch an image form.  Rather than
borrow fixed coefficients for one VAE, the map is fitted once per checkpoint by
least squares: decode a few random latents with the checkpoint's own VAE and
match each latent pixel with the mean colour of the 8x8 block it becomes.
So it is right for SD 1.x, SDXL and the demo model alike.
"""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from .vae import unscaled

FIT_SIZE = 64
FIT_IMAGES = 12


@dataclass(frozen=True)
class PreviewMap:
    weight: torch.Tensor  # (channels, 3)
    bias: torch.Tensor  # (3,)

    def to_rgb(self, latent: torch.Tensor) -> np.ndarray:
        """One latent (channels, h, w) -> uint8 array (h, w, 3)."""
        lat = latent.detach().float().cpu()
        rgb = torch.einsum("chw,cd->hwd", lat, self.weight) + self.bias
        return ((rgb.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()


@torch.inference_mode()
def fit_preview_map(vae: torch.nn.Module, seed: int = 0) -> PreviewMap:
    """Least-squares latent -> RGB map for this VAE (latents scaled as the sampler sees them).

    The samples are what the decoder itself makes of random smooth latents, so the
    map approximates the decoder where the sampler's latents live.
    """
    p = next(vae.parameters())
    g = torch.Generator().manual_seed(seed)
    channels = vae.config.latent_channels
    side = FIT_SIZE // 8
    coarse = torch.randn(FIT_IMAGES, channels, 3, 3, generator=g)
    latents = F.interpolate(coarse, size=(side, side), mode="bilinear", align_corners=False)
    latents = latents + 0.3 * torch.randn(latents.shape, generator=g)
    pixels = vae.decode(unscaled(vae, latents).to(p.device, p.dtype)).sample.float().cpu().clamp(-1, 1)
    target = F.avg_pool2d(pixels, pixels.shape[-1] // side)  # (n, 3, side, side)
    x = latents.permute(0, 2, 3, 1).reshape(-1, channels)
    y = target.permute(0, 2, 3, 1).reshape(-1, 3)
    x1 = torch.cat([x, torch.ones(len(x), 1)], dim=1).double()
    solution = torch.linalg.lstsq(x1, y.double()).solution.float()
    return PreviewMap(solution[:-1].contiguous(), solution[-1].contiguous())


def preview_image(rgb: np.ndarray, longest: int = 256) -> Image.Image:
    """Scale a latent-resolution picture up for display (smoothly, to at most ``longest`` px)."""
    img = Image.fromarray(rgb, "RGB")
    scale = max(1, longest // max(img.size))
    return img.resize((img.width * scale, img.height * scale), Image.Resampling.BILINEAR)


def jpeg_bytes(img: Image.Image, quality: int = 80) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()
