"""Loading a whole Flux model from its parts (models/flux_parts.py): the transformer
(safetensors or GGUF), the 16-channel autoencoder, CLIP-L and T5-XXL, each read
strictly from its own file or from its prefix inside an all-in-one file."""
from __future__ import annotations

from contextlib import ExitStack

import torch

from .files import open_tensor_file
from .flux import build_flux_transformer, build_flux_vae
from .flux_parts import FluxParts
from .flux_text import build_clip_l, build_t5
from .load import Networks


def load_flux(parts: FluxParts, dtype: torch.dtype, device: torch.device, vae_dtype: torch.dtype | None = None) -> Networks:
    """The networks of a Flux model: ``unet`` is the transformer, ``text_encoders`` are
    [CLIP-L, T5].  Every part must have been found (:meth:`FluxParts.require`)."""
    parts.require()
    with ExitStack() as stack:
        file_of = _opener(stack)
        transformer = build_flux_transformer(parts.spec, file_of(parts.transformer), dtype, device)
        vae = build_flux_vae(file_of(parts.vae.path), parts.vae.prefix, vae_dtype or dtype, device)
        clip_l = build_clip_l(file_of(parts.clip_l.path), parts.clip_l.prefix, dtype, device)
        t5 = build_t5(file_of(parts.t5xxl.path), parts.t5xxl.prefix, dtype, device)
    return Networks(transformer, vae, [clip_l, t5])


def load_flux_text_encoders(parts: FluxParts, dtype: torch.dtype, device: torch.device) -> list[torch.nn.Module]:
    """[CLIP-L, T5] read again from their files (after a memory plan released them)."""
    with ExitStack() as stack:
        file_of = _opener(stack)
        return [build_clip_l(file_of(parts.clip_l.path), parts.clip_l.prefix, dtype, device), build_t5(file_of(parts.t5xxl.path), parts.t5xxl.prefix, dtype, device)]


def _opener(stack: ExitStack):
    """``file_of(path)``: each tensor file opened once (an all-in-one file holds several
    parts), closed when ``stack`` closes."""
    opened: dict = {}

    def file_of(path):
        if path not in opened:
            opened[path] = stack.enter_context(open_tensor_file(path))
        return opened[path]

    return file_of
