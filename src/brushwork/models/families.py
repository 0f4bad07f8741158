"""Reference architectures: the real SD 1.5, SD 2.1 and SDXL shapes, and tiny
same-layout variants for tests, benchmarks and the demo model.

Real checkpoints are never built from these (their architecture is read from the
file); they exist to *make* files in the original layout and to check that
detection recovers them.
"""
from __future__ import annotations

from dataclasses import replace

from .detect import TE_SD1, TE_SD2, TE_XL1, TE_XL2, ModelSpec, TextEncoderConfig, UNetConfig, VAEConfig, norm_groups

CLIP_VOCAB = 49408


def _clip(prefix: str, layout: str, width: int, layers: int, intermediate: int, projection: int | None = None) -> TextEncoderConfig:
    return TextEncoderConfig(prefix, layout, CLIP_VOCAB, width, layers, intermediate, 77, max(1, width // 64), projection)


def _vae(widths: tuple[int, ...], layers: int, scale: float) -> VAEConfig:
    return VAEConfig(3, 3, 4, widths, layers, norm_groups(widths), True, scale)


def sd15() -> ModelSpec:
    w = (320, 640, 1280, 1280)
    unet = UNetConfig(4, 4, w, 2, (True, True, True, False), (1, 1, 1, 0), 1, 768, False, (8, 8, 8, 8), 32)
    return ModelSpec("sd1", "epsilon", 512, unet, _vae((128, 256, 512, 512), 2, 0.18215), (_clip(TE_SD1, "hf", 768, 12, 3072),))


def sd21_v() -> ModelSpec:
    w = (320, 640, 1280, 1280)
    unet = UNetConfig(4, 4, w, 2, (True, True, True, False), (1, 1, 1, 0), 1, 1024, True, (5, 10, 20, 20), 32)
    return ModelSpec("sd2", "v_prediction", 768, unet, _vae((128, 256, 512, 512), 2, 0.18215), (_clip(TE_SD2, "openclip", 1024, 24, 4096),))


def sdxl_base() -> ModelSpec:
    w = (320, 640, 1280)
    unet = UNetConfig(4, 4, w, 2, (False, True, True), (0, 2, 10), 10, 2048, True, (5, 10, 20), 32, 2816, 256)
    encoders = (_clip(TE_XL1, "hf", 768, 12, 3072), _clip(TE_XL2, "openclip", 1280, 32, 5120, 1280))
    return ModelSpec("sdxl", "epsilon", 1024, unet, _vae((128, 256, 512, 512), 2, 0.13025), encoders)


_TINY_VAE = (16, 16, 32, 32)


def tiny(family: str, prediction: str = "epsilon", te_layers: int = 3, inpainting: bool = False) -> ModelSpec:
    """A few-MB model in the same layout (most of it is the 49408-token embedding);
    ``inpainting``: the 9-input-channel UNet of a dedicated inpainting checkpoint."""
    spec = _tiny(family, prediction, te_layers)
    if inpainting:
        spec = replace(spec, unet=replace(spec.unet, in_channels=2 * spec.vae.latent_channels + 1))
    return spec


def _tiny(family: str, prediction: str, te_layers: int) -> ModelSpec:
    if family == "sd1":
        unet = UNetConfig(4, 4, (32, 64), 1, (True, False), (1, 0), 1, 32, False, (8, 8), 32)
        encoders = (_clip(TE_SD1, "hf", 32, te_layers, 64),)
        return ModelSpec("sd1", prediction, 512, unet, _vae(_TINY_VAE, 1, 0.18215), encoders)
    if family == "sd2":
        unet = UNetConfig(4, 4, (32, 64), 1, (True, False), (1, 0), 1, 32, True, (1, 1), 32)
        encoders = (_clip(TE_SD2, "openclip", 32, te_layers, 64),)
        return ModelSpec("sd2", prediction, 768 if prediction == "v_prediction" else 512, unet, _vae(_TINY_VAE, 1, 0.18215), encoders)
    if family == "sdxl":
        unet = UNetConfig(4, 4, (32, 64), 1, (False, True), (0, 2), 2, 64, True, (1, 1), 32, 32 + 6 * 8, 8)
        encoders = (_clip(TE_XL1, "hf", 32, te_layers, 64), _clip(TE_XL2, "openclip", 32, te_layers, 64, 32))
        return ModelSpec("sdxl", prediction, 1024, unet, _vae(_TINY_VAE, 1, 0.13025), encoders)
    raise ValueError(f"unknown family {family!r}; expected sd1, sd2 or sdxl")


REFERENCE = {"sd15": sd15, "sd21_v": sd21_v, "sdxl_base": sdxl_base}
