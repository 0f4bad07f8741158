"""Applying a memory plan to loaded networks: 16-bit weights at rest, text encoders
on the CPU, the VAE swapped in for its pass, sequential offload of the UNet.

Each function changes where or how weights are kept, never what they compute
with, except where the plan says so (``MemoryPlan.exact``).
"""
from __future__ import annotations

import contextlib
import logging
from typing import Callable, Iterator, Optional

import torch

log = logging.getLogger(__name__)

_AT_REST = "_brushwork_at_rest"
#: the layers whose weights are kept in 16 bits (the bulk of every network's bytes)
WIDENED = (torch.nn.Linear, torch.nn.Conv2d, torch.nn.Conv1d, torch.nn.Embedding)


def is_at_rest(module: torch.nn.Module) -> bool:
    return getattr(module, _AT_REST, None) is not None


#: one reusable float32 buffer per (device, dtype) that the running layer's widened
#: weights are views of: widening then allocates nothing (layers run one at a time)
_SCRATCH: dict[tuple[str, torch.dtype], torch.Tensor] = {}


def _scratch(device: torch.device, dtype: torch.dtype, numel: int) -> torch.Tensor:
    key = (str(device), dtype)
    buf = _SCRATCH.get(key)
    if buf is None or buf.numel() < numel:
        _SCRATCH.pop(key, None)
        with torch.inference_mode(False):  # a normal tensor: usable in and out of inference mode
            buf = _SCRATCH[key] = torch.empty(numel, dtype=dtype, device=device)
    return buf


def _widen(module: torch.nn.Module, args) -> None:
    """Before a layer runs: float32 views of the scratch buffer, filled from its 16-bit
    weights, stand in for them."""
    compute = module._brushwork_compute
    kept = [(n, p) for n, p in module._brushwork_kept.items() if p is not None and p.dtype != compute]
    if not kept:
        return
    total = sum(p.numel() for _, p in kept)
    buf = _scratch(kept[0][1].device, compute, total)
    offset = 0
    for name, p in kept:
        view = buf[offset : offset + p.numel()].view(p.shape)
        view.copy_(p)
        module._parameters[name] = view
        offset += p.numel()


def _narrow(module: torch.nn.Module, args, output) -> None:
    """After it ran (or raised): the 16-bit weights back in place."""
    for name, kept in module._brushwork_kept.items():
        if kept is not None:
            module._parameters[name] = kept


def _widen_output(module: torch.nn.Module, args, output):
    """An embedding looks up its 16-bit rows and widens only those (the same numbers as
    widening the whole table first: a lookup does no arithmetic)."""
    return output.to(module._brushwork_compute)


def keep_at_rest(module: torch.nn.Module, storage: torch.dtype, compute: torch.dtype) -> None:
    """Keep ``module``'s linear, convolution and embedding weights in ``storage`` and
    widen each layer to ``compute`` only while it runs; the few other weights (norms)
    are kept in ``compute``.  Widening 16-bit numbers to float32 is exact, so for
    weights that came from a 16-bit file this computes exactly what a float32 copy
    would, bit for bit.

    The 16-bit tensors never move, and the float32 copies are views of one scratch
    buffer the size of the largest layer, so running allocates nothing (diffusers'
    layerwise casting instead re-allocates the stored copy after every call, which
    fragments the CPU heap: +0.4 GiB RSS per UNet call of SD 1.5, measured)."""
    if is_at_rest(module):
        return
    for sub in module.modules():
        own = dict(sub.named_parameters(recurse=False))
        if isinstance(sub, WIDENED):
            for name, p in own.items():
                if p.is_floating_point() and p.dtype != storage:
                    p.data = p.data.to(storage)
            sub._brushwork_compute = compute
            if isinstance(sub, torch.nn.Embedding):
                sub.register_forward_hook(_widen_output)
                continue
            sub._brushwork_kept = {name: p for name, p in own.items() if p.is_floating_point()}
            sub.register_forward_pre_hook(_widen)
            sub.register_forward_hook(_narrow, always_call=True)
            continue
        for name, p in own.items():
            if p.is_floating_point() and p.dtype != compute:
                p.data = p.data.to(compute)
        for name, b in list(sub.named_buffers(recurse=False)):
            if b.is_floating_point() and b.dtype != compute:
                sub._buffers[name] = b.to(compute)
    setattr(module, _AT_REST, (storage, compute))


def weight_bytes(module: torch.nn.Module) -> int:
    """Bytes held by a module's parameters and buffers as they are now."""
    return sum(t.numel() * t.element_size() for t in module.parameters()) + sum(b.numel() * b.element_size() for b in module.buffers())


def stream_layers(module: torch.nn.Module, device: torch.device) -> None:
    """Sequential offload: ``module`` stays in host memory and each of its layers is
    brought onto ``device`` only while it runs (diffusers' group offloading, leaf level)."""
    from diffusers.hooks import apply_group_offloading

    if getattr(module, "_brushwork_streamed", False):
        return
    module.to("cpu")
    apply_group_offloading(module, onload_device=device, offload_device=torch.device("cpu"), offload_type="leaf_level", use_stream=device.type == "cuda")
    module._brushwork_streamed = True


def is_streamed(module: torch.nn.Module) -> bool:
    return bool(getattr(module, "_brushwork_streamed", False))


@contextlib.contextmanager
def swapped_in(vae: torch.nn.Module, unet: torch.nn.Module, device: torch.device, swap: bool) -> Iterator[None]:
    """With ``swap``: the UNet leaves ``device`` while the VAE is on it for its pass, and
    comes back afterwards (the VAE then goes back to host memory)."""
    if not swap or device.type == "cpu":
        yield
        return
    streamed = is_streamed(unet)
    if not streamed:
        unet.to("cpu")
    vae.to(device)
    try:
        yield
    finally:
        vae.to("cpu")
        if not streamed:
            unet.to(device)


class ReleasedEncoders:
    """Text encoders whose weights were dropped after encoding (a CPU plan's last rung):
    a sequence that reads them again from the checkpoint the first time one is used.
    ``len`` is known without reading."""

    def __init__(self, count: int, read: "Callable[[], list[torch.nn.Module]]") -> None:
        self._count, self._read = count, read
        self._loaded: Optional[list[torch.nn.Module]] = None
        self.reads = 0

    def _modules(self) -> list[torch.nn.Module]:
        if self._loaded is None:
            log.info("reading the text encoders again from the checkpoint (released to save memory)")
            self._loaded = self._read()
            self.reads += 1
        return self._loaded

    @property
    def loaded(self) -> bool:
        return self._loaded is not None

    def release(self) -> None:
        self._loaded = None

    def __len__(self) -> int:
        return self._count

    def __iter__(self):
        return iter(self._modules())

    def __getitem__(self, index):
        return self._modules()[index]
