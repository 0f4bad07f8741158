"""The latent upscale modes of the hires fix: the first pass's latents resized
directly (no VAE round trip), AUTOMATIC1111's six names and interpolations."""
from __future__ import annotations

import torch

#: A1111's names -> (torch interpolation mode, antialias)
LATENT_UPSCALE_MODES: dict[str, tuple[str, bool]] = {
    "Latent": ("bilinear", False),
    "Latent (antialiased)": ("bilinear", True),
    "Latent (bicubic)": ("bicubic", False),
    "Latent (bicubic antialiased)": ("bicubic", True),
    "Latent (nearest)": ("nearest", False),
    "Latent (nearest-exact)": ("nearest-exact", False),
}
#: the mode used when a request names none (A1111's latent_upscale_default_mode)
DEFAULT_LATENT_MODE = "Latent"


def latent_mode_name(name: str) -> str | None:
    """The canonical name of a latent mode (any case), or None when ``name`` is none."""
    folded = name.strip().lower()
    return next((m for m in LATENT_UPSCALE_MODES if m.lower() == folded), None)


def upscale_latents(latents: torch.Tensor, height: int, width: int, mode: str) -> torch.Tensor:
    """(B, C, h, w) latents resized to (height, width) latent pixels with ``mode``."""
    interpolation, antialias = LATENT_UPSCALE_MODES[mode]
    return torch.nn.functional.interpolate(latents, size=(height, width), mode=interpolation, antialias=antialias)
