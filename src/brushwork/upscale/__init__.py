"""Upscaling: the latent modes of the hires fix (``latent.py``) and image upscalers
(built-in resizes and model files through the optional spandrel package).

Importing this package never imports spandrel or torchvision."""
from .models import UpscalerError, UpscalerInfo
from .upscalers import BUILTIN_UPSCALERS, find_upscaler, list_upscalers, upscale_image, upscaler_problems

__all__ = ["BUILTIN_UPSCALERS", "UpscalerError", "UpscalerInfo", "find_upscaler", "list_upscalers", "upscale_image", "upscaler_problems"]
