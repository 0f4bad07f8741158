"""The engine's side of memory planning: the plan of the loaded model, checked per
request, applied to the networks, and stepped down after an out-of-memory error.

``plan.py`` decides (pure); ``footprint.py`` counts; ``at_rest.py`` moves and
casts weights; this module keeps the state between them.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Callable, Optional

import torch

from ..devices import Placement, free_memory_bytes
from ..runtime import process_rss_bytes, return_freed_memory
from ..models.detect import ModelSpec
from .at_rest import ReleasedEncoders, is_at_rest, keep_at_rest, stream_layers, weight_bytes
from .footprint import count_working, file_weights, torch_dtype
from .plan import SAFETY, MemoryPlan, Need, Weights, choose_plan, fitting_size, plan_at, rungs, step_down

log = logging.getLogger(__name__)

class OutOfMemory(RuntimeError):
    """The device ran out of memory even on the last rung of the plan."""


class MemoryOptionError(ValueError):
    """A bad --memory-plan or --memory-limit value."""


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether an exception is the device running out of memory (CUDA's OutOfMemoryError,
    or the CPU allocator failing to allocate)."""
    if isinstance(exc, getattr(torch, "OutOfMemoryError", ())):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("out of memory" in text.lower() or "can't allocate memory" in text)


_UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 10**3, "kib": 2**10, "m": 2**20, "mb": 10**6, "mib": 2**20, "g": 2**30, "gb": 10**9, "gib": 2**30, "t": 2**40, "tb": 10**12, "tib": 2**40}


def parse_size(text: Optional[str]) -> Optional[int]:
    """A memory size such as ``10G``, ``10GiB``, ``6.5 GB`` or ``8192M`` -> bytes (None or
    empty: no limit).  Bare K/M/G/T are binary units, as free and top show them."""
    if text is None or not str(text).strip():
        return None
    import re

    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*", str(text))
    unit = m.group(2).lower() if m else None
    if not m or unit not in _UNITS:
        raise MemoryOptionError(f"memory limit {text!r} is not a size; write it like 10G, 10GiB, 6.5GB or 8192M")
    value = int(float(m.group(1)) * _UNITS[unit])
    if value < 2**28:
        raise MemoryOptionError(f"memory limit {text!r} is below 256 MiB: no model fits in that; give at least a few GiB, e.g. 8G")
    return value


def check_rung(placement: Placement, name: Optional[str]) -> Optional[str]:
    """A ``--memory-plan`` value checked against the device's ladder (None or "auto": choose)."""
    if name in (None, "", "auto"):
        return None
    names = rungs("cpu" if placement.device.type == "cpu" else "cuda")
    for n in names:
        if n.lower() == name.strip().lower():
            return n
    raise MemoryOptionError(f"unknown memory plan {name!r} for {placement.device.type}; use auto or one of: {', '.join(names)}")


@dataclass
class MemoryState:
    """The loaded model's plan and what it was planned from."""

    weights: Optional[Weights]  # an SD file's counts (None for Flux, counted from the loaded networks)
    plan: MemoryPlan
    working: dict = field(default_factory=dict)  # (width, height, rows) -> Working
    #: reads the text encoders again after a plan released them (Flux: from their own files)
    read_text_encoders: Optional[Callable[[], list]] = None


class MemoryManager:
    """Plans for one engine's placement.  ``forced``: a rung asked for by the user
    (``--memory-plan``), never stepped above."""

    def __init__(self, placement: Placement, forced: Optional[str] = None, limit: Optional[int] = None) -> None:
        self.placement = placement
        self.kind = "cpu" if placement.device.type == "cpu" else "cuda"
        self.state: Optional[MemoryState] = None
        self.forced = forced
        self.limit = limit  # bytes this process may use in all (--memory-limit), None: what is free
        self.free_bytes: Callable[[torch.device], int] = free_memory_bytes
        self.process_bytes: Callable[[], int] = process_rss_bytes

    def _capped(self, budget: int, held: int) -> int:
        """``budget`` (free + held), no more than the limit leaves beside the rest of the
        process (on the CPU: its resident memory other than the weights; on a GPU the
        limit is on the device's memory for the plan)."""
        if self.limit is None:
            return budget
        other = max(0, self.process_bytes() - held) if self.kind == "cpu" else 0
        allowed = self.limit - other
        # plans keep a margin (plan.SAFETY) of free memory, which others may take; a limit
        # is the user's own margin already, so a plan may use all of it
        return budget if budget * SAFETY <= allowed else int(allowed / SAFETY)

    # ------------------------------------------------------------- loading

    def placing(self, spec: ModelSpec, tensors: dict, held: int = 0):
        """Plan a checkpoint about to be read (its tensor table) for its native size at
        batch 1, and say where and how each network is to be built: on the CPU the
        UNet and text encoders in the file's own 16-bit type when the plan keeps them
        at rest so; on a GPU the text encoders and the VAE in host memory when the plan
        keeps them off the GPU (so loading never needs more than the plan)."""
        from ..models.load import Placing

        dtype = self._load_dtype(spec, tensors, held)
        plan, device = self.plan, self.placement.device
        if self.kind == "cpu" and plan.at_rest_bits == 16:
            from ..runtime import memory_first_allocator

            memory_first_allocator()  # before the weights are read, so dropped ones go back at once
        cpu = torch.device("cpu")
        return Placing(dtype, device, encoder_dtype=torch.float32 if plan.text_encoders_on_cpu else None,
                       encoder_device=cpu if plan.text_encoders_on_cpu else None, vae_device=cpu if plan.vae_swapped else None)

    def _load_dtype(self, spec: ModelSpec, tensors: dict, held: int = 0) -> torch.dtype:
        weights = file_weights(spec, {k: v.shape for k, v in tensors.items()}, {k: v.dtype for k, v in tensors.items()})
        from ..models import save

        shapes = save.random_networks(spec, device="meta")
        need = self._need_from(spec, shapes.unet, shapes.vae, shapes.text_encoders, weights, spec.resolution, spec.resolution, 2, {})
        plan = choose_plan(need, self.kind, self._capped(self.free_bytes(self.placement.device) + held, held), self._lowest())
        self.state = MemoryState(weights, plan)
        log.info("%s", plan.describe())
        return self._storage(plan, weights) or self.placement.dtype

    def _storage(self, plan: MemoryPlan, weights: Optional[Weights]) -> Optional[torch.dtype]:
        if plan.family == "flux" or weights is None:  # Flux is loaded in the type it runs in
            return None
        if self.kind == "cpu" and plan.at_rest_bits == 16:
            stored = torch_dtype(weights.file_dtype)
            return stored if stored in (torch.float16, torch.bfloat16) else torch.float16  # a float32 file is rounded to fp16
        return None

    def _lowest(self, family: str = "sd") -> int:
        """The rung a forced ``--memory-plan`` names (check_rung spelt it as SD's ladder does).
        On a Flux model's shorter ladder: its last rung that is no lower than the one named
        (CPU "16-bit at rest", which Flux is already, gives "tiled VAE")."""
        if self.forced is None:
            return 0
        sd = rungs(self.kind)
        if family != "flux":
            return sd.index(self.forced)
        own = rungs(self.kind, family)
        return max(i for i, name in enumerate(own) if sd.index(name) <= sd.index(self.forced))

    def adopt(self, networks, plan: Optional[MemoryPlan] = None) -> None:
        """Make the networks follow ``plan`` (default: the current one).  Only ever moves
        down the ladder: what a rung changed stays changed until the next load."""
        st = self._require()
        plan = plan or st.plan
        storage = self._storage(plan, st.weights)
        if storage is not None:
            for net in [networks.unet, *_loaded(networks.text_encoders)]:
                if not is_at_rest(net):
                    keep_at_rest(net, storage, self.placement.dtype)
        device = self.placement.device
        if self.kind != "cpu":
            if plan.text_encoders_on_cpu:
                for enc in networks.text_encoders:
                    enc.to("cpu") if plan.family == "flux" else enc.to("cpu", torch.float32)  # (T5-XXL in float32 would be 19 GB)
            if plan.vae_swapped:
                networks.vae.to("cpu")
            if plan.sequential:
                stream_layers(networks.unet, device)
        if plan.rung != st.plan.rung:
            log.warning("memory: stepping down to %s", plan.describe())
        st.plan = plan

    # ------------------------------------------------------------- requests

    def _need_from(self, spec, unet, vae, encoders, weights, width, height, rows, cache) -> Need:
        key = (width, height, rows)
        if key not in cache:
            vae_dtype = next(vae.parameters()).dtype if next(vae.parameters()).device.type != "meta" else self.placement.dtype
            if self.kind == "cpu":
                vae_dtype = torch.float32
            present = _loaded(encoders)  # released encoders are not read back just to be counted
            counted = count_working(spec, unet, vae, present, width, height, rows, self.placement.dtype if self.kind != "cpu" else torch.float32, vae_dtype)
            if present:
                cache["text"] = counted.encode_text  # the same at every size
            cache[key] = replace(counted, encode_text=cache.get("text", counted.encode_text))
        working = cache[key]
        from ..vae import streamed_decode_bytes

        tiled = streamed_decode_bytes(vae, height, width, host_is_device=self.kind == "cpu", dtype_bytes=torch.finfo(self.placement.dtype).bits // 8)
        vae_bytes = 4 if self.kind == "cpu" else 0
        return Need(weights, working, tiled, vae_bytes)

    def plan_flux(self, spec, networks, read_text_encoders: Callable[[], list]) -> MemoryPlan:
        """Plan a loaded Flux model for its native size at batch 1 (flux_plan.py)."""
        self.state = MemoryState(None, plan_at(self.flux_need(spec, networks, spec.resolution, spec.resolution, 1, {}), self.kind, 1, 0), read_text_encoders=read_text_encoders)
        plan = choose_plan(self.need(spec, networks, spec.resolution, spec.resolution, 1), self.kind, self.budget(networks), self._lowest("flux"))
        self.state.plan = plan
        log.info("%s", plan.describe())
        return plan

    def flux_need(self, spec, networks, width: int, height: int, rows: int, cache: dict):
        from ..flux_family import count_flux_working, held_bytes
        from ..vae import streamed_decode_bytes
        from .flux_plan import FluxNeed

        key = (width, height, rows)
        present = _loaded(networks.text_encoders)
        if "weights" not in cache or present:
            cache["weights"] = (held_bytes(networks.unet), held_bytes(networks.vae), sum(held_bytes(e) for e in present) if present else cache["weights"][2])
        if key not in cache:
            dtype = next(p for p in networks.unet.parameters() if p.is_floating_point()).dtype
            vae_dtype = next(networks.vae.parameters()).dtype
            counted = count_flux_working(spec, networks.unet, networks.vae, present, width, height, rows, dtype, vae_dtype)
            if present:
                cache["text"] = counted.encode_text
            cache[key] = replace(counted, encode_text=cache.get("text", counted.encode_text))
        tiled = streamed_decode_bytes(networks.vae, height, width, host_is_device=self.kind == "cpu", dtype_bytes=next(networks.vae.parameters()).element_size())
        tr, vae, te = cache["weights"]
        return FluxNeed(tr, vae, te, cache[key], tiled)

    def need(self, spec: ModelSpec, networks, width: int, height: int, rows: int) -> Need:
        st = self._require()
        if spec.family == "flux":
            return self.flux_need(spec, networks, width, height, rows, st.working)
        return self._need_from(spec, networks.unet, networks.vae, networks.text_encoders, st.weights, width, height, rows, st.working)

    def budget(self, networks) -> int:
        """Bytes the plan may use: what is free plus what the loaded weights hold now."""
        device = self.placement.device
        if self.kind == "cpu":
            count = weight_bytes
            if self.plan is not None and self.plan.family == "flux":
                from ..flux_family import held_bytes as count  # GGUF layers: their quantized bytes
            held = sum(count(n) for n in [networks.unet, networks.vae, *_loaded(networks.text_encoders)])
        else:
            held = int(torch.cuda.memory_allocated(device)) if torch.cuda.is_available() else 0
        return self._capped(self.free_bytes(device) + held, held)

    def plan_request(self, spec: ModelSpec, networks, width: int, height: int, batch: int, rows: int) -> tuple[MemoryPlan, Need]:
        """The plan a request needs: the current rung or a lower one."""
        st = self._require()
        need = self.need(spec, networks, width, height, rows)
        return choose_plan(need, self.kind, self.budget(networks), max(st.plan.rung, self._lowest(st.plan.family))), need

    def refusal(self, plan: MemoryPlan, spec: ModelSpec, networks, width: int, height: int, batch: int, passes: int) -> str:
        usable = plan.free * SAFETY  # free memory less the plan's margin, or the memory limit
        fit = fitting_size(lambda w, h, b: self.need(spec, networks, w, h, b * passes), self.kind, plan.free, width, height, batch)
        return (
            f"{width}x{height} with batch size {batch} needs about {plan.peak / 2**30:.1f} GiB even with the most frugal memory plan "
            f"('{plan.name}'), but only {usable / 2**30:.1f} GiB can be used on {self.placement.device.type}{' (--memory-limit)' if self.limit else ''}. "
            f"What fits: {fit.text(width, height, batch)}."
        )

    def retrying(self, attempt: Callable[[], object], spec: ModelSpec, networks, width: int, height: int, batch: int, passes: int):
        """``attempt()``; when the device runs out of memory, once more one rung down the
        plan.  A second failure, or no rung left, is :class:`OutOfMemory` saying what to
        make smaller; other errors pass unchanged."""
        device = self.placement.device.type
        try:
            return attempt()
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            failed = self.plan
            lower = self.step_down(networks, spec, width, height, batch * passes)
            if lower is None:
                raise OutOfMemory(f"{device} ran out of memory at {width}x{height}, batch size {batch}, on the most frugal memory plan ('{failed.name}'). Use a smaller size or batch size.") from exc
            log.warning("out of memory on plan '%s'; running the batch again on '%s'", failed.name, lower.name)
        try:
            return attempt()
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            raise OutOfMemory(f"{device} ran out of memory at {width}x{height}, batch size {batch}, again after stepping down to the memory plan '{self.plan.name}'. Use a smaller size or batch size.") from exc

    def step_down(self, networks, spec: ModelSpec, width: int, height: int, rows: int) -> Optional[MemoryPlan]:
        """After an out-of-memory error: the next rung, applied (None: none left)."""
        st = self._require()
        lower = step_down(st.plan, self.need(spec, networks, width, height, rows), self.budget(networks))
        if lower is None:
            return None
        self.adopt(networks, lower)
        return lower

    def after_encoding(self, path, spec: ModelSpec, networks, lora_backups: dict) -> None:
        """Drop the text encoders' weights when the plan says so (they are read again from
        ``path`` for a new prompt), unless a merged LoRA changed them."""
        plan = self.plan
        if plan is None or not plan.release_text_encoders:
            return
        encoders = networks.text_encoders
        if isinstance(encoders, ReleasedEncoders) and not encoders.loaded:
            return
        ids = {id(p) for enc in encoders for p in enc.parameters()}
        if any(id(param) in ids for param, _ in lora_backups.values()):
            return  # a LoRA is merged into them: re-reading would lose it
        if isinstance(encoders, ReleasedEncoders):
            encoders.release()
            return_freed_memory()
            return
        reader = self._require().read_text_encoders
        if reader is not None:  # Flux: T5 and CLIP-L from their own files, as loaded
            networks.text_encoders = ReleasedEncoders(len(encoders), reader)
            del encoders
            return_freed_memory()
            return
        storage = self._storage(plan, self._require().weights) or self.placement.dtype
        device, compute = self.placement.device, self.placement.dtype

        def read():
            from ..models.load import load_text_encoders

            fresh = load_text_encoders(path, spec, storage, device)
            for enc in fresh:
                if storage != compute:
                    keep_at_rest(enc, storage, compute)
            return fresh

        networks.text_encoders = ReleasedEncoders(len(encoders), read)
        del encoders
        return_freed_memory()

    def _require(self) -> MemoryState:
        if self.state is None:
            raise RuntimeError("no model is planned yet")
        return self.state

    @property
    def plan(self) -> Optional[MemoryPlan]:
        return None if self.state is None else self.state.plan

    def releases_text_encoders(self) -> bool:
        """Whether the current plan drops the text encoders after encoding."""
        plan = self.plan
        return plan is not None and plan.release_text_encoders

    def text_encoder_device(self) -> torch.device:
        plan = self.plan
        return torch.device("cpu") if plan is not None and plan.text_encoders_on_cpu else self.placement.device


def _loaded(encoders) -> list:
    """The text encoders that hold weights now (none of released ones)."""
    if isinstance(encoders, ReleasedEncoders) and not encoders.loaded:
        return []
    return list(encoders)

