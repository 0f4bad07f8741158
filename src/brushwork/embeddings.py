"""Textual-inversion embeddings: extra word vectors used by writing their file name.

AUTOMATIC1111's formats: ``.pt`` with ``string_to_param['*']`` (one or more vectors)
and ``.safetensors`` with ``emb_params``; SDXL embeddings carry ``clip_l`` and
``clip_g`` for the two text encoders.  Files live in ``models/embeddings`` (or
``embeddings``); the file stem, as written in a prompt, is the trigger.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from .models.errors import ModelFileError
from .models.files import damage_reported, open_tensor_file
from .models.load import all_finite
from .paths import files_by_stem

log = logging.getLogger(__name__)

SUFFIXES = (".pt", ".safetensors", ".bin")


@dataclass(frozen=True)
class Embedding:
    name: str
    path: Path
    vectors: dict[str, torch.Tensor]  # "single" (SD 1.x/2.x) or "clip_l" / "clip_g" (SDXL): (n, width)

    @property
    def length(self) -> int:
        return next(iter(self.vectors.values())).shape[0]

    def for_encoder(self, index: int, count: int, width: int) -> torch.Tensor | None:
        """The vectors for text encoder ``index`` of ``count``, if their width fits."""
        if count == 1:
            vec = self.vectors.get("single")
        else:
            vec = self.vectors.get(("clip_l", "clip_g")[index]) if index < 2 else None
        return vec if vec is not None and vec.shape[-1] == width else None


def load_embedding(path: Path) -> Embedding:
    """Read one embedding file; a clear :class:`ModelFileError` for anything else
    (damaged, not an embedding, vectors of the wrong shape or with NaN)."""
    with damage_reported(path, "textual-inversion embedding"):
        vectors = embedding_vectors(path.name, _read_tensors(path))
    return Embedding(path.stem, path, vectors)


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """The candidate tensors of an embedding file, by the name A1111's formats use."""
    if path.suffix.lower() == ".safetensors":
        with open_tensor_file(path) as tf:
            return {k: tf.get(k, torch.float32) for k in tf.tensors}
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure means the file is unusable
        raise ModelFileError(f"{path.name} could not be read as an embedding ({str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__}).") from None
    if not isinstance(obj, dict):
        raise ModelFileError(f"{path.name} holds a {type(obj).__name__}, not an embedding's dictionary of tensors.")
    params = obj.get("string_to_param")
    if isinstance(params, dict):
        first = next(iter(params.values()), None)
        if not isinstance(first, torch.Tensor):
            raise ModelFileError(f"{path.name}: its string_to_param holds no tensor; the embedding is damaged.")
        return {"emb_params": first.float()}
    return {k: v.float() for k, v in obj.items() if isinstance(v, torch.Tensor)}


def embedding_vectors(name: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """{"single" | "clip_l" | "clip_g": (n, width)} from an embedding file's tensors, checked."""
    if "clip_l" in tensors and "clip_g" in tensors:
        vectors = {"clip_l": tensors["clip_l"], "clip_g": tensors["clip_g"]}
    elif "emb_params" in tensors:
        vectors = {"single": tensors["emb_params"]}
    elif len(tensors) == 1:
        vectors = {"single": next(iter(tensors.values()))}
    else:
        raise ModelFileError(f"{name} is not a textual-inversion embedding (expected emb_params, string_to_param, or clip_l + clip_g).")
    vectors = {k: (v[None] if v.ndim == 1 else v) for k, v in vectors.items()}
    if any(v.ndim != 2 or v.shape[0] == 0 or v.shape[0] > 75 or v.shape[1] == 0 for v in vectors.values()):
        shapes = ", ".join(str(tuple(v.shape)) for v in vectors.values())
        raise ModelFileError(f"{name}: embedding vectors must have shape (n, width) with 1 <= n <= 75; this file has {shapes}.")
    for k, v in vectors.items():
        if not bool(all_finite(v)):
            raise ModelFileError(f"{name}: the {k} vectors contain NaN or infinite values; the embedding is damaged.")
    return vectors


def embedding_files(home) -> dict[str, Path]:
    """Embedding files in the data home by file stem (first folder wins)."""
    return files_by_stem(home.embedding_dirs, SUFFIXES)
