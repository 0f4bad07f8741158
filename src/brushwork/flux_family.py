"""Flux.1 as the engine's stages see it: the questions a generation asks of its model
family, answered for Flux (SD's answers live in request.py, conditioning.py,
sampling/denoiser.py, budget.py and memory/footprint.py).

* **Defaults.** dev: 1024x1024, 20 steps, Distilled CFG Scale 3.5; schnell: 4 steps,
  no guidance input.  Both: CFG scale 1 (no negative pass), Euler, Simple.
* **Checks.** What Flux cannot do here yet is refused before any work, with what to
  use instead (img2img, inpaint, hires fix, AND, ancestral samplers, clip skip).
* **Precision.** The weights' own 16-bit type on the CPU (a float32 copy of a 12B
  transformer is 48 GB), bfloat16 on a GPU (fp16 overflows in Flux's activations).
* **Denoiser.** ``sampling/flow.FlowDenoiser`` on packed tokens, wrapped so the
  samplers see latents (B, 16, H/8, W/8) like SD's; prompt editing picks each step's
  text from the prompt plan.
* **Counting.** Operations and working memory of one transformer call and one decode,
  counted on weightless meta twins at the real size (for time estimates and the
  memory plan, memory/flux_plan.py).
"""
from __future__ import annotations

import logging
from typing import Callable, Optional

import torch

from .request import FamilyDefaults, GenerationRequest, RequestError

log = logging.getLogger(__name__)

DISTILLED_CFG_DEFAULT = 3.5
#: samplers that integrate the flow without adding noise (sampling/flow.py), by label
FLUX_SAMPLER_LABELS = ("Euler", "Heun", "DPM++ 2M", "LMS")
#: schedules: Flux samples on its own shifted levels ("Simple" in Forge and ComfyUI)
FLUX_SCHEDULES = ("simple", "automatic")


def flux_defaults(spec) -> FamilyDefaults:
    dev = spec.variant == "dev"
    return FamilyDefaults(1024, 1024, steps=20 if dev else 4, cfg_scale=1.0, sampler="Euler", schedule="Simple", clip_skip=1,
                          distilled_cfg_scale=DISTILLED_CFG_DEFAULT if dev else None)


def check_flux_request(req: GenerationRequest, spec, sampler_key: str, schedule: str, prompt_text: str) -> None:
    """Refuse what Flux cannot do here (a completed request), saying what to do instead."""
    from .prompts import split_and
    from .sampling.flow import FLOW_SAMPLERS

    name = spec.label
    if req.refines:
        raise RequestError(f"img2img, inpaint and outpaint are not built for {name} yet: Brushwork generates Flux pictures from a prompt only. Leave out the picture, or refine with an SD checkpoint.")
    if req.hires:
        raise RequestError(f"the hires fix is not built for {name} yet. Generate at the size you want (Flux draws well up to 1024x1024 and beyond), or upscale the result (brushwork upscale).")
    if sampler_key not in FLOW_SAMPLERS:
        raise RequestError(f"the sampler {req.sampler!r} adds noise as SD samplers do and does not fit {name}'s flow model; use one of {', '.join(FLUX_SAMPLER_LABELS)} (Euler is the usual one).")
    if schedule not in FLUX_SCHEDULES:
        raise RequestError(f"{name} samples on its own resolution-shifted schedule (Schedule type 'Simple'); the schedule {req.schedule!r} does not apply. Leave the schedule out or give Simple.")
    if req.clip_skip != 1:
        raise RequestError(f"clip skip does not apply to {name} (its T5 and CLIP-L encoders are always read at their last layer); leave it at 1.")
    for side, v in (("width", req.width), ("height", req.height)):
        if v % 16:
            raise RequestError(f"{name} needs the {side} to be a multiple of 16 (it works on 2x2 patches of 8-pixel latents); got {v}. Try {v // 16 * 16} or {v // 16 * 16 + 16}.")
    if len(split_and(prompt_text)) > 1:
        raise RequestError(f"AND (composable prompts) is not built for {name}: its guidance is distilled into the network, not mixed from several prompts. Write the prompt as one sentence.")
    if req.negative_prompt.strip() and float(req.cfg_scale) == 1.0:
        log.warning("the negative prompt is not used at CFG scale 1: %s follows its distilled guidance alone. Set a CFG scale above 1 (real CFG, twice the time per step) to use it.", name)


def flux_dtype(device: torch.device, stored: torch.dtype) -> torch.dtype:
    """The type a Flux model computes in: bfloat16 on a GPU; on the CPU the file's own
    16-bit type as bfloat16 (fp16's range is too small for Flux), float32 files stay
    float32."""
    if device.type != "cpu":
        return torch.bfloat16
    return torch.float32 if stored == torch.float32 else torch.bfloat16


def transformer_dtype(parts) -> torch.dtype:
    """The float type most of a Flux transformer file's tensors are stored in (fp8 and
    quantized files count as 16-bit)."""
    from .models.files import open_tensor_file

    sizes: dict = {}
    with open_tensor_file(parts.transformer) as tf:
        for info in tf.tensors.values():
            n = 1
            for s in info.shape:
                n *= s
            sizes[str(info.dtype)] = sizes.get(str(info.dtype), 0) + n
    top = max(sizes, key=sizes.get) if sizes else "F32"
    return torch.float32 if top == "F32" else torch.bfloat16


def flux_denoiser(net: torch.nn.Module, plan, batch: int, h: int, w: int, guidance: Optional[float], cfg_scale, locate: Callable[[torch.Tensor], int]):
    """``denoise(x, sigma) -> x0`` on latents (B, 16, h, w) for the samplers: packed for
    the transformer, each step's texts from the prompt plan (prompt editing), real CFG
    on the negative prompt where the CFG scale is not 1 (a float, or one per image as
    a (B,) tensor)."""
    from .sampling.flow import FlowDenoiser, pack, unpack

    per_image = isinstance(cfg_scale, torch.Tensor)
    real_cfg = bool((cfg_scale != 1).any()) if per_image else float(cfg_scale) != 1.0

    def texts_at(sigma: torch.Tensor):
        conds, _, uncond = plan.at(locate(sigma))
        return conds[0], uncond if real_cfg else None

    scale = cfg_scale.view(-1, 1, 1) if per_image else float(cfg_scale)
    flow = FlowDenoiser(net, None, h, w, guidance, cfg_scale=scale, texts_at=texts_at)

    def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return unpack(flow(pack(x), sigma), h, w)

    denoise.flow = flow  # type: ignore[attr-defined]  (calls counted in tests)
    return denoise


def _meta_inputs(spec, rows: int, width: int, height: int, text_tokens: int, dtype: torch.dtype) -> dict:
    tokens = (height // 16) * (width // 16)
    meta = dict(device="meta", dtype=dtype)
    return dict(
        hidden_states=torch.empty(rows, tokens, spec.in_channels, **meta), encoder_hidden_states=torch.empty(rows, text_tokens, spec.context, **meta),
        pooled_projections=torch.empty(rows, spec.pooled, **meta), timestep=torch.empty(rows, **meta), img_ids=torch.empty(tokens, 3, **meta),
        txt_ids=torch.empty(text_tokens, 3, **meta), guidance=torch.empty(rows, device="meta") if spec.guidance else None, return_dict=False,
    )


def text_tokens(spec) -> int:
    from .flux_prompt import T5_TOKENS

    return T5_TOKENS[spec.variant]


def count_flux_flops(spec, transformer: torch.nn.Module, vae: torch.nn.Module, width: int, height: int):
    """Operations of one transformer call for one sample and of one decode (budget.Flops)."""
    from .budget import Flops, _count
    from .memory.footprint import meta_twin

    twin = meta_twin(transformer, torch.float32)
    calls = _count(lambda: twin(**_meta_inputs(spec, 1, width, height, text_tokens(spec), torch.float32)))
    decoder = meta_twin(vae, torch.float32).decoder
    decode = _count(lambda: decoder(torch.empty(1, 16, height // 8, width // 8, device="meta")))
    return Flops(calls, decode)


def count_flux_working(spec, transformer: torch.nn.Module, vae: torch.nn.Module, encoders, width: int, height: int, rows: int, dtype: torch.dtype, vae_dtype: torch.dtype):
    """Peak working memory (memory.plan.Working) of one transformer call over ``rows``
    samples, one whole-frame decode and one T5 call, counted on meta twins."""
    from .memory.footprint import meta_twin, peak_live_bytes
    from .memory.plan import Working

    twin = meta_twin(transformer, dtype)
    sample = peak_live_bytes(lambda: twin(**_meta_inputs(spec, rows, width, height, text_tokens(spec), dtype))[0])
    decoder = meta_twin(vae, vae_dtype)
    decode = peak_live_bytes(lambda: decoder.decode(torch.empty(1, 16, height // 8, width // 8, device="meta", dtype=vae_dtype)).sample)
    text = 0
    for enc in encoders:
        t = meta_twin(enc, dtype)
        length = text_tokens(spec) if type(enc).__name__.startswith("T5") else 77
        text = max(text, peak_live_bytes(lambda: t(torch.zeros(1, length, dtype=torch.long, device="meta"))))
    return Working(sample, decode, text)


def held_bytes(module: torch.nn.Module) -> int:
    """Bytes a network's weights hold in memory: each storage once (a quantized layer's
    stand-in weight holds one number), plus the quantized bytes of GGUF layers."""
    seen: set = set()
    total = 0
    for t in list(module.parameters()) + list(module.buffers()):
        storage = t.untyped_storage()
        if storage.data_ptr() in seen:
            continue
        seen.add(storage.data_ptr())
        total += storage.nbytes()
    for layer in module.modules():
        q = getattr(layer, "_brushwork_quantized", None)
        if q is not None:
            total += q.rows.numel() * q.rows.element_size()
    return total
