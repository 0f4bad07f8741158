"""How much memory a model and one generation take, counted rather than guessed.

* **Weights** are counted from the checkpoint file's tensor shapes, component by
  component (UNet, VAE, text encoders): exact, and known before anything is loaded.
* **Working memory** is counted by running the networks on PyTorch's ``meta``
  device (shapes only: no arithmetic and no memory, under a few seconds even for
  SDXL at 1024 px) under :class:`LiveBytes`, a dispatch mode that adds up the bytes
  of every tensor an operation creates and takes them off again when the tensor's
  storage is freed: the same lifetimes as the real run, so its peak is the real
  run's peak of live activations.  Attention is counted as the fused kernels that
  run on both CPUs and GPUs (its output only), not as the token x token matrix the
  meta device's fallback would build.

What it does not see: allocator overhead and fragmentation, and the scratch that
kernels allocate inside themselves (oneDNN's weight reorders).  The plan
(``plan.py``) adds a margin for those; ``benchmarks/bench_memory.py`` measures how
close the total comes.
"""
from __future__ import annotations

import contextlib
import weakref
from typing import Callable, Iterator, Mapping

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from ..models.detect import UNET, VAE, ModelSpec
from ..models.files import SAFETENSORS_DTYPES
from .plan import Weights, Working


def torch_dtype(name: str) -> torch.dtype:
    """A file's dtype name, safetensors' (``F16``) or a pickle's (``float16``), as torch's."""
    found = SAFETENSORS_DTYPES.get(name)
    if found is None:
        found = getattr(torch, name, None)
    return found if isinstance(found, torch.dtype) else torch.float32


def file_weights(spec: ModelSpec, shapes: Mapping[str, tuple[int, ...]], dtypes: Mapping[str, str]) -> Weights:
    """Count each component's weights from a checkpoint's tensor shapes (``dtypes``:
    the file's dtype name per tensor).  The EMA copy, if any, is not counted: only one
    UNet is ever loaded."""
    prefixes = [cfg.prefix for cfg in spec.text_encoders]
    counts = {"unet": 0, "vae": 0, "te": 0}
    largest = 0
    unet_bytes: dict[str, int] = {}
    for key, shape in shapes.items():
        n = 1
        for s in shape:
            n *= s
        if key.startswith(UNET):
            counts["unet"] += n
            largest = max(largest, n)
            unet_bytes[dtypes.get(key, "F32")] = unet_bytes.get(dtypes.get(key, "F32"), 0) + n
        elif key.startswith(VAE):
            counts["vae"] += n
        elif key.startswith(tuple(prefixes)):
            counts["te"] += n
            if "embedding" not in key:  # embeddings widen only the rows they look up
                largest = max(largest, n)
    dtype = max(unet_bytes, key=unet_bytes.get) if unet_bytes else "F32"
    return Weights(counts["unet"], counts["vae"], counts["te"], torch_dtype(dtype).itemsize, dtype, largest)


class LiveBytes(TorchDispatchMode):
    """Bytes of tensor storage alive while operations run, and their peak.

    Every storage an operation returns is counted once (views share it) and taken
    off when it is freed, so under ``meta`` tensors this follows the real run's
    allocations tensor for tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._seen: set[int] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self._count(t.untyped_storage())
        return out

    def _count(self, storage) -> None:
        key = storage._cdata
        if key in self._seen:
            return
        n = storage.nbytes()
        self._seen.add(key)
        self.live += n
        self.peak = max(self.peak, self.live)
        weakref.finalize(storage, self._freed, key, n)

    def _freed(self, key: int, n: int) -> None:
        self._seen.discard(key)
        self.live -= n


def _fused_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    """What a fused attention kernel allocates: its output (and nothing token x token)."""
    return query.new_empty(query.shape[:-1] + (value.shape[-1],))


@contextlib.contextmanager
def _counting() -> Iterator[LiveBytes]:
    functional = torch.nn.functional
    original = functional.scaled_dot_product_attention
    functional.scaled_dot_product_attention = _fused_attention
    try:
        with torch.inference_mode(), LiveBytes() as counter:
            yield counter
    finally:
        functional.scaled_dot_product_attention = original


def peak_live_bytes(run: Callable[[], object]) -> int:
    """The peak of live tensor bytes while ``run()`` executes (on meta tensors), counting
    what ``run`` creates, its inputs included, and not what existed before."""
    with _counting() as counter:
        result = run()
        del result
    return counter.peak


def meta_twin(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """A weightless copy of a diffusers or transformers network on the meta device."""
    with torch.device("meta"):
        if hasattr(module, "from_config") and hasattr(module, "config") and not hasattr(module.config, "to_dict"):
            twin = type(module).from_config(module.config)
        else:
            twin = type(module)(module.config)
    return torch.nn.Module.to(twin, dtype).eval()  # (diffusers' own .to warns about fp32 modules)


def count_working(spec: ModelSpec, unet: torch.nn.Module, vae: torch.nn.Module, encoders: list[torch.nn.Module], width: int, height: int, rows: int, dtype: torch.dtype, vae_dtype: torch.dtype) -> Working:
    """Count the working memory of a ``width`` x ``height`` generation whose UNet calls
    carry ``rows`` samples (batch size x CFG passes), on meta twins of the networks."""
    h, w = height // 8, width // 8
    u = meta_twin(unet, dtype)

    def unet_call():
        kwargs: dict = {"encoder_hidden_states": torch.empty(rows, 77, spec.unet.context_dim, device="meta", dtype=dtype)}
        if spec.family == "sdxl":
            pooled = spec.text_encoders[-1].projection_dim or spec.text_encoders[-1].width
            kwargs["added_cond_kwargs"] = {"text_embeds": torch.empty(rows, pooled, device="meta", dtype=dtype), "time_ids": torch.empty(rows, 6, device="meta", dtype=dtype)}
        x = torch.empty(rows, unet.config.in_channels, h, w, device="meta", dtype=dtype)
        return u(x, torch.empty(rows, device="meta"), **kwargs).sample

    sample = peak_live_bytes(unet_call)
    decoder = meta_twin(vae, vae_dtype)
    decode = peak_live_bytes(lambda: decoder.decode(torch.empty(1, vae.config.latent_channels, h, w, device="meta", dtype=vae_dtype)).sample)
    text = 0
    for enc in encoders:
        twin = meta_twin(enc, dtype)
        text = max(text, peak_live_bytes(lambda: twin(torch.zeros(2, 77, dtype=torch.long, device="meta"), output_hidden_states=True)))
    return Working(sample, decode, text)
