"""The engine: one object that loads a checkpoint and turns requests into images.

It knows nothing about the command line or the web; the CLI and the HTTP server
are thin clients of :class:`Engine`.  It orchestrates; each stage lives in its own
module.  A generation (txt2img, img2img, inpaint and outpaint alike) is::

    prompt --(prompt_plan, conditioning)--> text features
    picture, mask --(canvas: outpaint, resize, mask; vae: encode)--> start.Start  (none for txt2img)
    seed   --(per-image generator: CPU, GPU or NV source, noise.py)--> initial noise
    Start, noise, features --(sampler over the Start's sigmas, denoiser with CFG)--> latents
    latents --(vae: decode)--> pixels --(canvas: paste back)--> --(infotext)--> GeneratedImage

docs/architecture.md draws the same path with the functions named.
"""
from __future__ import annotations

import difflib
import logging
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np
import torch
from PIL import Image

from . import __version__
from .budget import DEFAULT_MAX_JOB_SECONDS, THROUGHPUT, Flops, TimeEstimate, cfg_passes, count_flops, estimate_time, job_flops, needs_time_check, too_long_message
from .canvas import finish, prepare as canvas_prepare, source as canvas_source
from .catalog import find_checkpoint, flux_parts, hash_cache, remember_last_model
from .conditioning import TextConditioning
from .devices import Placement, choose_placement, with_precision
from .infotext import STOPPED_KEY, GenerationParams, format_infotext
from .lora import LoraError, LoraStack, lora_files
from .masks import latent_mask
from .memory.at_rest import swapped_in
from .memory.manager import MemoryManager, check_rung, parse_size
from .memory.plan import may_keep_freed_blocks
from .vae_select import resolve_vae, vae_infotext
from .model_defaults import checkpoint_key, effective_defaults, note_hash
from .models.detect import ModelSpec
from .models.load import Networks
from .noise import BrownianNoise, batch_seeds, initial_noise, noise_source, variation_noise
from .paths import DataHome
from .previews import PreviewMap, fit_preview_map, preview_image
from .prompt_plan import PromptPlan, encode_prompts
from .prompts import extract_extra_networks
from .prompts.styles import StylesFileError, apply_styles, read_styles
from .refine import RefinedPicture, refine_defaults, refine_infotext
# the request, its limits and checks live in request.py; re-exported for the clients
from .request import (  # noqa: F401
    MAX_BATCH_COUNT, MAX_BATCH_SIZE, MAX_CLIP_SKIP, MAX_SEED, MAX_SIDE, MAX_STEPS, MIN_SIDE,
    DoesNotFit, FamilyDefaults, GenerationRequest, RequestError, TooLong, clip_skip_limit, family_defaults, pass_steps, planned_steps, resolve_seed, unet_calls, validate_request, with_defaults,
)
from .hires import HiresPass, hires_start, largest_size, prepare_hires
from .runtime import ThreadChoice, TorchvisionMismatch, apply_threads, large_blocks_returned, memory_first_allocator, return_freed_memory, torchvision_problem, tune_cpu_allocator
from .sampling.denoiser import make_denoiser, step_locator
from .sampling.shared_calls import SharedCalls
from .sampling.registry import SamplerInfo, UnknownSamplerError, resolve_sampler, sampling_sigmas, schedule_label
from .sampling.schedules import ModelSchedule, scaled_linear_schedule
from .start import Start, StepWindow, conditioning_inputs, inpaint_channels, latent_window_mask, strength_window
from .vae import Cancelled, decode_checked, decode_latent, encode_checked, image_to_pixels, stop_points

log = logging.getLogger(__name__)

SMALL_PREVIEW_LATENT = 24 * 24


@dataclass
class GeneratedImage:
    image: Image.Image
    seed: int
    params: GenerationParams
    infotext: str
    complete: bool = True  # False: interrupted or skipped part-way (partly denoised)


class JobControl:
    """Lets another thread stop a running generation, the way AUTOMATIC1111's buttons do.

    ``interrupt()``: the current batch stops at the next step, its latest denoised
    latents are decoded and returned, and the remaining batches are skipped.
    ``skip()``: the same for the current batch only; the next batch still runs.
    ``cancel()``: stop now, inside a step or a decode, and return nothing more
    (pictures of batches already finished were handed out already).
    """

    def __init__(self) -> None:
        self.interrupted = False
        self.skipped = False
        self.cancelled = False

    def interrupt(self) -> None:
        self.interrupted = True

    def skip(self) -> None:
        self.skipped = True

    def cancel(self) -> None:
        self.cancelled = self.interrupted = True

    def stopping(self) -> bool:
        """Whether sampling should stop (checked inside the UNet too)."""
        return self.interrupted or self.skipped


class _Stopped(Exception):
    """Raised from the step callback to leave the sampler early."""


@dataclass
class Progress:
    step: int  # steps done so far, over the whole request
    total: int
    elapsed: float
    latents: Optional[torch.Tensor] = None

    @property
    def eta(self) -> float:
        return self.elapsed / self.step * (self.total - self.step) if self.step else float("nan")


@dataclass
class LoadedModel:
    path: Path
    mtime: float
    spec: ModelSpec
    networks: Networks
    sha256: str
    schedule: ModelSchedule = field(default_factory=scaled_linear_schedule)
    preview_map: Optional[PreviewMap] = None  # fitted on first use (for the VAE in use)
    own_vae: Optional[torch.nn.Module] = None  # the checkpoint's VAE while a VAE file is in use
    vae_path: Optional[Path] = None  # the VAE file in use (None: the checkpoint's own)
    vae_sha: Optional[str] = None
    flops: dict[tuple[int, int], Flops] = field(default_factory=dict)  # per (width, height), for time estimates
    dtype: Optional[torch.dtype] = None  # what the denoiser computes in, when not the placement's (Flux)
    parts: Optional[object] = None  # a Flux model's files (models/flux_parts.FluxParts)

    @property
    def name(self) -> str:
        return self.path.stem

    @property
    def short_hash(self) -> str:
        return self.sha256[:10]


@dataclass
class Prepared:
    """What the batches of one request share (Engine.prepare)."""

    req: GenerationRequest  # completed, styles applied, random seeds fixed
    sampler: SamplerInfo
    schedule: str
    plan: PromptPlan
    extra: dict  # infotext entries of every picture (LoRA hashes, styles, refine keys ...)
    refine: Optional[RefinedPicture]
    start: Optional[Start]
    steps: int  # sampling steps per batch (both passes of a hires fix)
    hires: Optional["HiresPass"] = None  # the hires fix's second pass (hires.py)


@dataclass
class CellPrompt:
    """One image's own prompts inside a batch (Engine.cell_prompt)."""

    plan: PromptPlan
    prompt: str
    negative_prompt: str
    extra: dict  # its infotext entries that differ per prompt (TI hashes, styles)


class Engine:
    """Loads checkpoints and generates images.  Not thread-safe: one job at a time."""

    def __init__(self, home: DataHome | str | None = None, device: str | None = None, use_ema: bool = False, max_job_seconds: Optional[float] = DEFAULT_MAX_JOB_SECONDS, threads: int | str | None = None,
                 memory_plan: Optional[str] = None, memory_limit: Optional[str | int] = None, precision: Optional[str] = None):
        self.home = home if isinstance(home, DataHome) else DataHome.resolve(home)
        self.placement: Placement = with_precision(choose_placement(device), precision)
        # where weights live and how they are kept, from free memory (memory/plan.py);
        # memory_plan forces a rung, memory_limit ("10G", default $BRUSHWORK_MEMORY_LIMIT) caps the process
        limit = memory_limit if memory_limit is not None else os.environ.get("BRUSHWORK_MEMORY_LIMIT")
        self.memory = MemoryManager(self.placement, check_rung(self.placement, memory_plan), limit if isinstance(limit, int) else parse_size(limit))
        # CPU threads (--threads, BRUSHWORK_THREADS, else the free cores): runtime.py
        self.threads: Optional[ThreadChoice] = apply_threads(threads) if self.placement.device.type == "cpu" else None
        self.use_ema = use_ema
        self.max_job_seconds = max_job_seconds  # refuse requests estimated to take longer (None: no limit)
        self.model: Optional[LoadedModel] = None
        # the VAE stays in float32 where the rest runs in bfloat16 (--precision bf16)
        self._vae_fp32 = self.placement.dtype == torch.bfloat16
        self.loras = LoraStack()
        self._texts: dict = {}  # prompt encodings of the current model and LoRAs (prompt_plan.py)

    # ------------------------------------------------------------- models

    def load(self, model: str | Path | None = None) -> LoadedModel:
        """Load a checkpoint by name, stem, path or hash; keep it if already loaded.

        A damaged file raises a one-line ModelFileError.  With no name, the default
        is used, and damaged files are skipped with a warning (catalog.load_default)."""
        from .catalog import load_default
        from .models.load import load_checkpoint

        def load_file(path: Path) -> LoadedModel:
            mtime = path.stat().st_mtime
            if self.model and self.model.path == path and self.model.mtime == mtime:
                return self.model
            problem = torchvision_problem()  # a mismatched torchvision breaks the libraries inside the load
            if problem:
                raise TorchvisionMismatch(problem)
            self.model = None  # release the old weights before reading the new ones
            self.loras = LoraStack()
            t0 = time.perf_counter()
            p = self.placement
            parts = flux_parts(self.home, path) if path.suffix.lower() in (".safetensors", ".gguf") else None
            if parts is not None:  # a Flux.1 transformer: its other parts from their own files (flux_family.py)
                spec, networks, dtype = self._load_flux(parts)
            else:
                vae_dtype = torch.float32 if self._vae_fp32 else p.dtype
                spec, networks = load_checkpoint(path, p.dtype, p.device, vae_dtype=vae_dtype, use_ema=self.use_ema, placing_for=self.memory.placing)
                dtype = None
            self.memory.adopt(networks)
            return_freed_memory()  # the holes reading the file left in the heap
            sha = hash_cache(self.home).get_sha256(path)
            self.model = LoadedModel(path, mtime, spec, networks, sha, schedule=scaled_linear_schedule(spec.family), dtype=dtype, parts=parts)
            remember_last_model(self.home, path)
            note_hash(self.home, path, sha)  # its saved defaults follow the file through a rename
            log.info("loaded %s (%s) in %.1fs on %s", path.name, spec.label, time.perf_counter() - t0, p.label)
            return self.model

        if model is None:
            return load_default(self.home, load_file)
        return load_file(find_checkpoint(self.home, str(model)))

    def _load_flux(self, parts):
        """(spec, networks, compute dtype) of a Flux model, planned for memory (memory/flux_plan.py)."""
        from .flux_family import flux_dtype, transformer_dtype
        from .models.flux_load import load_flux, load_flux_text_encoders

        p = self.placement
        parts.require()
        dtype = flux_dtype(p.device, transformer_dtype(parts))
        networks = load_flux(parts, dtype, p.device, vae_dtype=torch.float32 if p.device.type == "cpu" else dtype)
        self.memory.plan_flux(parts.spec, networks, lambda: load_flux_text_encoders(parts, dtype, self.memory.text_encoder_device()))
        return parts.spec, networks, dtype

    # ------------------------------------------------------------- requests

    def complete(self, request: GenerationRequest, warn: bool = True) -> GenerationRequest:
        """Fill defaults from the loaded model and validate every field (``warn``:
        log the warnings about the request, e.g. an empty prompt; the generation
        itself completes the request again and warns then)."""
        validate_request(request)  # everything that needs no model first
        m = self._require_model()
        req, sources = self._with_model_defaults(request, m)
        validate_request(req)
        resolve_sampler(req.sampler, req.schedule)  # raises with the valid names
        resolve_vae(self.home, req.vae, m.path)  # an unknown VAE name lists the files there
        if m.spec.family == "flux":  # what Flux cannot do here is refused before any work (flux_family.py)
            from .flux_family import check_flux_request

            sampler, schedule = resolve_sampler(req.sampler, req.schedule)
            check_flux_request(req, m.spec, sampler.key, schedule, extract_extra_networks(req.prompt).text)
        if req.hires:  # an upscaler name that is no latent mode must be in the data home
            from .hires import image_upscaler

            image_upscaler(self.home, req)
        most = clip_skip_limit(m.spec)
        if req.clip_skip > most:
            depth = min(e.layers for e in m.spec.text_encoders)
            allowed = "only 1" if most <= 1 else f"from 1 to {most}"
            saved = ""
            if request.clip_skip is None and sources.get("clip_skip") == "saved":
                saved = f" It is this model's saved default: change it with brushwork models set {checkpoint_key(self.home, m.path)} --clip-skip N (or --unset clip_skip)."
            raise RequestError(
                f"clip skip {req.clip_skip} is too deep for {m.path.name}: its text encoder has {depth} layers, so clip skip can be {allowed} "
                f"(1 = the last layer, the default).{saved}"
            )
        if warn and not extract_extra_networks(req.prompt).text.strip() and not req.styles:
            log.warning("the prompt is empty: the image is unconditional (the model draws whatever it likes). Give a prompt to say what to draw.")
        w, h = largest_size(req)
        plan, _ = self._memory_for(req)
        if not plan.fits:
            raise DoesNotFit(self.memory.refusal(plan, m.spec, m.networks, w, h, req.batch_size, cfg_passes(req.cfg_scale)))
        self._check_time(req)
        return req

    def _memory_for(self, req: GenerationRequest):
        """(plan, need) of a completed request: the memory plan its largest pass needs."""
        m = self._require_model()
        w, h = largest_size(req)
        return self.memory.plan_request(m.spec, m.networks, w, h, req.batch_size, req.batch_size * cfg_passes(req.cfg_scale))

    def expected_time(self, request: GenerationRequest) -> Optional[TimeEstimate]:
        """How long a request would take here, for telling the user before it starts;
        None when no model is loaded yet or the request is invalid.  It loads nothing
        and touches no network weights, so it is safe beside a running generation."""
        m = self.model
        if m is None:
            return None
        try:
            req, _ = self._with_model_defaults(request, m)
            validate_request(req)
        except (RequestError, UnknownSamplerError):
            return None
        return self.estimate_time(req)

    def _with_model_defaults(self, request: GenerationRequest, m: "LoadedModel") -> tuple[GenerationRequest, dict]:
        """The request with the model's defaults where it leaves a field unset: the
        user's saved ones for this checkpoint, then its metadata's, then its family's
        (model_defaults.py); and where each default came from.  A refine's size and the
        hires fix's defaults follow the checkpoint's own size, not a saved one."""
        eff = effective_defaults(self.home, m.path, m.spec)
        native = family_defaults(m.spec)
        own = replace(eff.as_family_defaults(), distilled_cfg_scale=native.distilled_cfg_scale)
        return with_defaults(refine_defaults(request, native), own, native=native), eff.sources

    def estimate_time(self, req: GenerationRequest) -> TimeEstimate:
        """Estimated run time of a completed request on this device (see budget.py)."""
        est = self._pass_time(req.width, req.height, unet_calls(req), req.batch_size, req.batch_count, float(req.cfg_scale))
        if req.hires:  # the second pass, at its own size
            from .hires import second_pass_estimate

            w, h, calls, cfg = second_pass_estimate(req)
            more = self._pass_time(w, h, calls, req.batch_size, req.batch_count, cfg)
            est = TimeEstimate(est.seconds + more.seconds, est.flops + more.flops)
        return est

    def _pass_time(self, width: int, height: int, calls: int, batch: int, batch_count: int, cfg: float) -> TimeEstimate:
        m = self._require_model()
        if (width, height) not in m.flops:
            if m.spec.family == "flux":
                from .flux_family import count_flux_flops

                m.flops[(width, height)] = count_flux_flops(m.spec, m.networks.unet, m.networks.vae, width, height)
            else:
                m.flops[(width, height)] = count_flops(m.spec, m.networks.unet, m.networks.vae, width, height)
        rate = THROUGHPUT.rate(self.placement.device, m.dtype or self.placement.dtype)
        return estimate_time(m.flops[(width, height)], rate, calls, batch, batch_count, cfg)

    def _check_time(self, req: GenerationRequest) -> None:
        limit = self.max_job_seconds
        flux = self._require_model().spec.family == "flux"  # every Flux step is heavy: always estimated
        if not limit or not (req.hires or flux or needs_time_check(req.width, req.height, unet_calls(req), req.batch_size, req.batch_count, float(req.cfg_scale))):
            return
        est = self.estimate_time(req)
        if est.seconds > limit:
            raise TooLong(too_long_message(est, limit, req.width, req.height, req.steps, req.batch_size * req.batch_count, self.placement.label))

    def txt2img(self, request: GenerationRequest, progress: Optional[Callable[[Progress], None]] = None, control: Optional[JobControl] = None) -> list[GeneratedImage]:
        """Generate ``batch_count`` batches of ``batch_size`` images (all at once; see
        :meth:`batches` to get each batch as soon as it is done)."""
        return [img for batch in self.batches(request, progress, control) for img in batch]

    def batches(self, request: GenerationRequest, progress: Optional[Callable[[Progress], None]] = None, control: Optional[JobControl] = None, first_batch: int = 0) -> Iterator[list[GeneratedImage]]:
        """Generate batch after batch, yielding each batch's images as soon as they are
        decoded, so a caller can save them before the next batch starts.

        With ``control``, another thread may interrupt, skip or cancel (see
        :class:`JobControl`); an interrupted or skipped batch still yields its partly
        denoised images, a cancelled one yields nothing more.  ``first_batch`` skips the
        batches before it (a job resumed elsewhere after those were saved): the later
        batches keep their own seeds, so the pictures are those of a run from the start."""
        prep = self.prepare(request, control)
        if prep is None:
            return
        req = prep.req
        seeds, subseeds = batch_seeds(req.seed, req.subseed, req.subseed_strength, req.batch_size * req.batch_count)
        total, t0 = prep.steps * req.batch_count, time.perf_counter()
        for batch_index in range(first_batch, req.batch_count):
            if control is not None and control.interrupted:
                return
            part = slice(batch_index * req.batch_size, (batch_index + 1) * req.batch_size)
            images = self.run_batch(prep, seeds[part], subseeds[part] if req.subseed_strength else None, None, control, progress, batch_index * prep.steps, total, t0)
            if images is None:
                return  # cancelled
            if images:
                yield images

    def prepare(self, request: GenerationRequest, control: Optional[JobControl] = None) -> Optional["Prepared"]:
        """Everything a request's batches share: the completed request (its random seeds
        fixed), sampler, LoRAs, encoded prompts, and for img2img the encoded picture.
        None when cancelled while preparing."""
        req = self.with_styles(self.complete(request))
        steps = planned_steps(req)
        if req.stop_at_step is not None and not (isinstance(req.stop_at_step, int) and 1 <= req.stop_at_step <= steps):
            raise RequestError(f"stop_at_step must be a step from 1 to {steps} (the steps this request runs); got {req.stop_at_step!r}.")
        m = self._require_model()
        self.memory.adopt(m.networks, self._memory_for(req)[0])  # a lower rung when this request needs one
        if self.placement.device.type == "cpu":
            # after loading: weights keep their fast mmap-backed allocations, while the
            # sampler's scratch buffers are kept for reuse (see runtime.py) where the plan
            # has the headroom; otherwise large blocks go back to the system when freed
            if may_keep_freed_blocks(self.memory.plan):
                tune_cpu_allocator()
            else:
                memory_first_allocator()
        sampler, schedule = resolve_sampler(req.sampler, req.schedule)
        req = replace(req, seed=resolve_seed(req.seed), subseed=resolve_seed(req.subseed) if req.subseed_strength else req.subseed)
        tags = extract_extra_networks(req.prompt)
        extra = self._apply_loras(tags)
        extra.update(self.use_vae(req.vae))  # before img2img encodes its picture
        plan = self._encode(req, tags.text)
        extra.update(_prompt_keys(req.styles, plan))
        if req.subseed_strength:
            extra["Variation seed strength"] = req.subseed_strength
        if req.seed_resize_from_w > 0 and req.seed_resize_from_h > 0:
            extra["Seed resize from"] = f"{req.seed_resize_from_w}x{req.seed_resize_from_h}"
        try:
            # img2img / inpaint: the picture prepared and encoded once for all batches
            refine = self._refine(req, req.seed, control) if req.refines else None
            start = refine[1] if refine else self._txt2img_start(req, control)
        except Cancelled:
            return None
        if refine:
            extra.update(refine_infotext(req, refine[0]))
        hires = None
        if req.hires:  # the second pass: its sampler, its prompts encoded once, its upscaler
            hires = prepare_hires(req, tags, self.home, lambda r, text: self._encode(r, text, first_pass=req.steps))
            extra.update(hires.infotext)
        if self.memory.releases_text_encoders():  # padding a plan needs is encoded before they go
            for p in (plan, hires.plan if hires else None):
                if p is not None:
                    p.encode_padding()
        self.memory.after_encoding(m.path, m.spec, m.networks, self.loras.backups)
        return Prepared(req, sampler, schedule, plan, extra, refine[0] if refine else None, start, steps, hires)

    def run_batch(self, prep: "Prepared", seeds: list[int], subseeds: Optional[list[int]], cfg_scales: Optional[list[float]], control, progress, done_before: int, total: int, t0: float,
                  prompts: Optional[list["CellPrompt"]] = None, shared: Optional[SharedCalls] = None) -> Optional[list["GeneratedImage"]]:
        """Sample and decode one batch of a prepared request: its images (empty when
        stopped before the first step), or None when cancelled.  ``cfg_scales``: one
        guidance scale per image, ``prompts``: one encoded prompt pair per image
        (:meth:`cell_prompt`; comparison grids batch cells that differ only in these;
        not with the hires fix, whose second pass has one prompt).  ``shared``: a
        comparison's first network calls in common (sampling/shared_calls.py)."""
        req = prep.req
        if prompts is not None and prep.hires is not None:
            raise ValueError("per-image prompts cannot be batched with the hires fix")
        plans = None if prompts is None else [c.plan for c in prompts]
        batch_t0 = time.perf_counter()

        def attempt():
            first = req if prep.hires is None or req.stop_at_step is None or req.stop_at_step < req.steps else replace(req, stop_at_step=None)
            latents, complete, done = self._sample_batch(first, prep.sampler, prep.schedule, seeds, prep.plan if plans is None else plans, control, progress, done_before, total, t0, prep.start, subseeds, cfg_scales, shared=shared)
            if latents is None:
                return None
            if prep.hires is not None and complete:
                pixels, complete = self._hires_batch(prep, latents, seeds, subseeds, cfg_scales if prep.req.hires_cfg is None else None, control, progress, done_before + done, total, t0)
            else:
                pixels = self.decode(latents, control)
            return pixels, complete, done

        try:
            outcome = self._with_memory_retry(attempt, req, len(seeds))
        except Cancelled:
            return None
        if outcome is None:
            return []
        pixels, complete, done = outcome
        if cfg_scales is None and prompts is None and prep.hires is None:
            self._learn_speed(req, len(seeds), time.perf_counter() - batch_t0, complete)
        if prep.refine is not None:
            pixels = [finish(prep.refine.canvas, img) for img in pixels]
        images = []
        # a picture stopped part-way says so, so re-creating it stops at the same step
        batch_extra = prep.extra if complete else {**prep.extra, STOPPED_KEY: str(done)}
        for i, (seed, img) in enumerate(zip(seeds, pixels)):
            own = req if cfg_scales is None else replace(req, cfg_scale=cfg_scales[i])
            extra = batch_extra if subseeds is None else {"Variation seed": subseeds[i], **batch_extra}
            if prompts is not None:
                own = replace(own, prompt=prompts[i].prompt, negative_prompt=prompts[i].negative_prompt)
                extra = {**extra, **prompts[i].extra}
            params = self._params(own, prep.sampler, prep.schedule, seed, extra)
            images.append(GeneratedImage(img, seed, params, format_infotext(params), complete))
        return images

    def _with_memory_retry(self, attempt: Callable, req: GenerationRequest, batch: int):
        """``attempt()``, run once more one rung down the memory plan after the device ran out of memory."""
        m = self._require_model()
        w, h = largest_size(req)
        return self.memory.retrying(attempt, m.spec, m.networks, w, h, batch, cfg_passes(req.cfg_scale))

    def cell_prompt(self, prep: "Prepared", prompt: str, negative_prompt: str, styles: list[str]) -> "CellPrompt":
        """Another prompt pair for an image of ``prep``'s batch (its styles applied, encoded
        with the batch's steps and clip skip); its LoRA tags must be the batch's, which
        are merged already."""
        styled = self.with_styles(replace(prep.req, prompt=prompt, negative_prompt=negative_prompt, styles=list(styles)))
        tags = extract_extra_networks(styled.prompt)
        plan = self._encode(styled, tags.text)
        return CellPrompt(plan, styled.prompt, styled.negative_prompt, _prompt_keys(styled.styles, plan))

    def with_styles(self, req: GenerationRequest) -> GenerationRequest:
        """The request with its saved prompt styles applied to both prompts (``styles``
        then names only the styles applied); unknown names are warnings."""
        if not req.styles:
            return req
        try:
            saved = read_styles(self.home.styles_file)
        except StylesFileError as exc:
            raise RequestError(f"{exc}. Fix the file or generate without styles.") from None
        styled = apply_styles(req.prompt, req.negative_prompt, req.styles, saved)
        for warning in styled.warnings:
            log.warning(warning)
        more = {}
        if req.hires and (req.hires_prompt or req.hires_negative_prompt):  # A1111 styles the hires prompts too
            hr = apply_styles(req.hires_prompt, req.hires_negative_prompt, req.styles, saved)
            more = {"hires_prompt": hr.prompt if req.hires_prompt else "", "hires_negative_prompt": hr.negative_prompt if req.hires_negative_prompt else ""}
        return replace(req, prompt=styled.prompt, negative_prompt=styled.negative_prompt, styles=styled.applied, **more)

    def _hires_batch(self, prep: "Prepared", latents: torch.Tensor, seeds: list[int], subseeds, cfg_scales, control, progress, done_before: int, total: int, t0: float) -> tuple[list[Image.Image], bool]:
        """The hires fix's second pass of one batch: the first pass's latents upscaled
        (hires.hires_start), then sampled as an img2img at the target size with the
        same seeds.  Stopped before or during it: the upscaled first pictures."""
        h = prep.hires
        device = self.placement.device
        should_stop = None if control is None else (lambda: control.cancelled)
        start, upscaled = hires_start(h, latents, lambda lat: self.decode(lat, control), lambda px: self.encode(px, control), device, should_stop)
        if self._require_model().spec.inpainting:  # a 9-channel UNet: "all masked", as its img2img sees it
            start = replace(start, channels=self._inpaint_channels(None, None, h.req, control))
        stopped = (control is not None and control.stopping()) or prep.req.stop_at_step == prep.req.steps
        if not stopped:
            second, complete, _ = self._sample_batch(h.req, h.sampler, h.schedule, seeds, h.plan, control, progress, done_before, total, t0, start, subseeds, cfg_scales, steps_run=h.window.steps_run)
            if complete:
                return self.decode(second, control), True
        if control is not None:
            control.skipped = False
        return (upscaled if upscaled is not None else self.decode(start.init, control)), False

    def _sample_batch(self, req, sampler, schedule, seeds, plan, control, progress, done_before, total, t0, start=None, subseeds=None, cfg_scales=None, steps_run=None,
                      shared=None) -> tuple[Optional[torch.Tensor], bool, int]:
        """Sample one batch: (latents, complete, steps done).  Interrupt or skip (or
        the request's ``stop_at_step``) keeps the last denoised latents (None when no
        step finished); cancel raises Cancelled."""
        last: list = [None, 0]

        def on_step(i: int, x: torch.Tensor, denoised: torch.Tensor) -> None:
            last[0], last[1] = denoised, i + 1
            if progress is not None:
                progress(Progress(done_before + i + 1, total, time.perf_counter() - t0, denoised))
            if control is not None and control.stopping():
                raise _Stopped()
            if req.stop_at_step is not None and i + 1 >= req.stop_at_step:
                raise _Stopped()

        try:
            with stop_points(self._require_model().networks.unet, None if control is None else control.stopping):
                return self.sample(req, sampler, schedule, seeds, plan, on_step, start=start, subseeds=subseeds, cfg_scales=cfg_scales, shared=shared), True, pass_steps(req) if steps_run is None else steps_run
        except (_Stopped, Cancelled):
            if control is not None and control.cancelled:
                raise Cancelled() from None
            if control is not None:
                control.skipped = False
            return last[0], False, last[1]

    def _learn_speed(self, req: GenerationRequest, batch: int, seconds: float, complete: bool) -> None:
        """Feed a finished batch's real time back into the device speed (see budget.py)."""
        m = self.model
        flops = m.flops.get((req.width, req.height)) if m is not None else None
        if flops is None or not complete:
            return
        done = job_flops(flops, unet_calls(req), batch, 1, float(req.cfg_scale))
        THROUGHPUT.observe(self.placement.device, m.dtype or self.placement.dtype, done, seconds)

    # ------------------------------------------------------------- stages

    def _require_model(self) -> LoadedModel:
        if self.model is None:
            self.load()
        assert self.model is not None
        return self.model

    def network_state(self) -> tuple:
        """What the networks' weights are now: the checkpoint and its merged LoRAs."""
        m = self._require_model()
        return (str(m.path), m.mtime, repr(self.loras.applied))

    def _encode(self, req: GenerationRequest, text: Optional[str] = None, first_pass: int = 0) -> PromptPlan:
        """Encode the prompts (``text``: the positive prompt without its extra-network
        tags; ``first_pass``: a hires pass's first-pass steps, for prompt editing)."""
        m = self._require_model()
        text = extract_extra_networks(req.prompt).text if text is None else text
        # encodings are kept while the model and its merged LoRAs stay the same
        state = self.network_state()
        if self._texts.get("state") != state:
            self._texts = {"state": state, "store": {}}
        return encode_prompts(m.spec, lambda: m.networks.text_encoders, self.home, text, req.negative_prompt, req.steps, req.clip_skip, self.memory.text_encoder_device(), self._texts["store"], first_pass)

    def _apply_loras(self, tags) -> dict[str, str]:
        """Merge the prompt's LoRAs (only when the set changed); returns infotext entries.
        Missing names and unusable files are warnings: the image is still made."""
        m = self._require_model()
        for warning in tags.warnings:
            log.warning(warning)
        wanted, hashes, missing = [], [], []
        available = lora_files(self.home)
        for net in tags.networks:
            if net.kind != "lora":
                log.warning("%s: only LoRA tags are supported; this tag was ignored", net.raw)
                continue
            path = available.get(net.name.lower())
            if path is None:
                close = difflib.get_close_matches(net.name.lower(), list(available), n=3, cutoff=0.5)
                hint = f"; closest: {', '.join(available[c].stem for c in close)}" if close else ""
                log.warning("LoRA %r not found in %s%s. The image is made without it.", net.name, self.home.lora_dirs[0], hint)
                missing.append(net.name)
                continue
            wanted.append((path, net.te, net.unet, net.name))
        key = [(str(p), te, un) for p, te, un, _ in wanted]
        if key != self.loras.applied:
            self.loras.restore()
            for path, te, un, name in list(wanted):
                try:
                    self.loras.apply(m.spec, m.networks.unet, m.networks.text_encoders, path, te, un)
                except LoraError as exc:
                    log.warning("%s The image is made without it.", exc)
                    wanted.remove((path, te, un, name))
                    missing.append(name)
        cache = hash_cache(self.home)
        for path, _, _, name in wanted:
            hashes.append(f"{name.replace(':', '').replace(',', '')}: {cache.get_addnet_hash(path)}")
        extra = {}
        if hashes:
            extra["Lora hashes"] = ", ".join(hashes)
        if missing:
            extra["Missing LoRAs"] = ", ".join(missing)
        return extra

    def _net_conditioning(self, texts: list[TextConditioning], batch: int, width: int, height: int) -> dict:
        """The UNet's conditioning for [text_0 x batch, text_1 x batch, ...]."""
        p = self.placement
        ctx = torch.cat([t.context.to(p.device, p.dtype).expand(batch, -1, -1) for t in texts])
        out = {"context": ctx}
        if self._require_model().spec.family == "sdxl":
            pooled = torch.cat([t.pooled.to(p.device, p.dtype).expand(batch, -1) for t in texts])
            time_ids = torch.tensor([[height, width, 0, 0, height, width]], dtype=self.placement.dtype, device=self.placement.device)
            out["added"] = {"text_embeds": pooled, "time_ids": time_ids.expand(len(texts) * batch, -1)}
        return out

    def sample(self, req: GenerationRequest, sampler: SamplerInfo, schedule: str, seeds: list[int], plan: "PromptPlan", on_step=None, noise: Optional[torch.Tensor] = None,
               start: Optional[Start] = None, subseeds: Optional[list[int]] = None, cfg_scales: Optional[list[float]] = None, shared: Optional[SharedCalls] = None) -> torch.Tensor:
        """Run the sampler for one batch; returns final latents (float32, on the device).

        ``start`` (start.py): where sampling starts; None is txt2img, pure noise at
        the schedule's first sigma.  ``plan``: the batch's prompts, or a list of one
        plan per image (the same AND weights), whose texts are laid out per image."""
        plans = plan if isinstance(plan, list) else None
        plan = plans[0] if plans is not None else plan
        m = self._require_model()
        p = self.placement
        shape = (m.spec.vae.latent_channels, req.height // 8, req.width // 8)
        # per-image generators of the request's source; ENSD re-seeds the step noise (noise.py)
        resize = (req.seed_resize_from_w, req.seed_resize_from_h) if req.seed_resize_from_w > 0 and req.seed_resize_from_h > 0 else None
        if subseeds is not None or resize is not None:
            # variation seeds (slerp towards each image's subseed noise) and seed resize (noise.py)
            first_noise, gens = variation_noise(seeds, subseeds, req.subseed_strength, shape, req.rng, req.ensd, p.device, resize_from=resize)
        else:
            first_noise, gens = initial_noise(seeds, shape, req.rng, req.ensd, p.device)
        if noise is not None:
            first_noise = noise
        first_noise = first_noise.to(p.device, torch.float32)
        if m.spec.family == "flux":  # its own levels, shifted for the picture's size (sampling/flow.py)
            from .sampling.flow import flux_sigmas, patches

            sigmas = flux_sigmas(req.steps, patches(req.height, req.width), shift=m.spec.guidance)
        elif start is None:
            sigmas = sampling_sigmas(sampler, schedule, req.steps, m.schedule)
        else:
            sigmas = start.sigmas(sampling_sigmas(sampler, schedule, start.window.schedule_steps, m.schedule))
        batch = len(seeds)
        if start is not None and start.window.steps_run == 0:
            return start.first_latents(first_noise, torch.zeros((), dtype=torch.float64)).clone()  # strength 0: the init latents
        if m.spec.family == "flux":  # the flow denoiser on packed tokens (flux_family.py)
            from .flux_family import flux_denoiser

            if plans is not None:
                raise RequestError(f"{m.spec.label} cannot batch pictures with different prompts yet; run them one by one.")
            scale = float(req.cfg_scale) if cfg_scales is None else torch.tensor(cfg_scales, dtype=torch.float32, device=p.device)
            guidance = req.distilled_cfg_scale if m.spec.guidance else None
            denoise = flux_denoiser(m.networks.unet, plan, batch, shape[1], shape[2], guidance, scale, step_locator(sigmas))
        else:
            denoise = self._cfg_denoiser(req, plan, plans, batch, start, cfg_scales, shared, sigmas)
        # sigmas stay float64 on the CPU: as 0-d tensors they act as scalars on any device
        if start is None:
            x = first_noise * float(sigmas[0])
        else:
            x = start.first_latents(first_noise, sigmas[0].to(torch.float32))
            denoise = start.denoiser(denoise)
        noise_fn = None
        if sampler.stochastic and sampler.brownian:
            # the DPM++ SDE family: one Brownian tree per image seed (ENSD does not apply, as in A1111)
            noise_fn = BrownianNoise(seeds, shape, sigmas, p.device, torch.float32, req.rng)
        elif sampler.stochastic:
            noise_fn = noise_source(gens, shape, p.device, torch.float32)
        with torch.inference_mode():
            return sampler.fn(denoise, x, sigmas, noise=noise_fn, callback=on_step)

    def _cfg_denoiser(self, req: GenerationRequest, plan: "PromptPlan", plans: Optional[list], batch: int, start: Optional[Start], cfg_scales: Optional[list[float]],
                      shared: Optional[SharedCalls], sigmas: torch.Tensor):
        """An SD UNet behind classifier-free guidance (sampling/denoiser.py): the batch's
        texts per step, the 9-channel inpainting input, a comparison's shared calls."""
        m = self._require_model()
        p = self.placement
        unet = m.networks.unet
        extra_input = None if start is None or start.channels is None else start.channels.to(p.dtype).expand(batch, -1, -1, -1)
        joined: dict[tuple, dict] = {}

        def batch_at(step: int, with_negative: bool) -> dict:
            if plans is not None:  # [text_0 of each image, text_1 of each image, ...]
                rows = [([unc] if with_negative else []) + conds for conds, _, unc in (each.at(step) for each in plans)]
                key = tuple(id(t) for row in rows for t in row)
                if key not in joined:
                    # each image's texts padded to their own common length, as when it runs
                    # alone; beyond that (to the batch's longest) the tokens are masked out
                    own = [plan.padded(row) for row in rows]
                    k = len(rows[0])
                    texts = [own[i][j] for j in range(k) for i in range(len(rows))]
                    lengths = [t.context.shape[1] for t in texts]
                    joined[key] = self._net_conditioning(plan.padded(texts), 1, req.width, req.height)
                    if len(set(lengths)) > 1:
                        joined[key]["mask"] = torch.tensor([[1] * n + [0] * (max(lengths) - n) for n in lengths], device=p.device)
                return joined[key]
            conds, _, uncond = plan.at(step)
            key = (tuple(id(c) for c in conds), id(uncond) if with_negative else None)
            if key not in joined:
                texts = ([uncond] if with_negative else []) + conds
                joined[key] = self._net_conditioning(plan.padded(texts), batch, req.width, req.height)
            return joined[key]

        def net(x_in: torch.Tensor, t: torch.Tensor, c: dict) -> torch.Tensor:
            x_in = x_in.to(p.dtype)
            if extra_input is not None:  # 9-channel inpainting UNet: + mask + masked picture
                x_in = torch.cat([x_in, torch.cat([extra_input] * (x_in.shape[0] // batch))], dim=1)
            return unet(x_in, t.to(p.device), encoder_hidden_states=c["context"], added_cond_kwargs=c.get("added"), encoder_attention_mask=c.get("mask")).sample

        if shared is not None and extra_input is None:  # a comparison's first calls in common run once (the 9-channel UNet: not shared)
            net = shared.wrap(net, batch, (self.network_state(), str(p.dtype)))
        weights = [w for _, w in plan.positive]
        scale = float(req.cfg_scale) if cfg_scales is None else torch.tensor(cfg_scales, dtype=torch.float32, device=p.device).view(-1, 1, 1, 1)
        denoise = make_denoiser(net, m.schedule, m.spec.prediction, batch_at, weights, scale, step_locator(sigmas))
        return denoise

    # ------------------------------------------------------------- refine (img2img, inpaint)

    def _refine(self, req: GenerationRequest, seed: int, control: Optional[JobControl]) -> tuple["RefinedPicture", Start]:
        """Prepare the request's picture (canvas.py) and encode it: where its batches start."""
        m = self._require_model()
        src = canvas_source(req.init_image, req.mask, req.outpaint, req.outpaint_fill, seed)
        cv = canvas_prepare(src, req.width, req.height, req.resize_mode, req.mask_blur, req.invert_mask, req.masked_content, req.inpaint_area == "only masked", req.only_masked_padding)
        for note in src.notes:
            log.warning(note)
        pixels = image_to_pixels(cv.image)
        init = self.encode(pixels, control)
        if cv.latent_upscale and init.shape[-2:] != (req.height // 8, req.width // 8):
            init = torch.nn.functional.interpolate(init, size=(req.height // 8, req.width // 8), mode="bilinear")
        repaint = pixel_mask = None
        if cv.mask is not None:
            repaint = latent_window_mask(latent_mask(cv.mask, req.width // 8, req.height // 8), init.device)
            pixel_mask = torch.from_numpy(np.asarray(cv.mask, dtype=np.float32) / 255)[None, None]
        channels = self._inpaint_channels(pixels, pixel_mask, req, control) if m.spec.inpainting else None
        window = strength_window(req.steps, float(req.denoising_strength), req.exact_steps)
        return RefinedPicture(src, cv), Start(init, repaint, req.masked_content, window, channels)

    def _txt2img_start(self, req: GenerationRequest, control: Optional[JobControl]) -> Optional[Start]:
        """txt2img starts from pure noise (None), except on a 9-channel inpainting
        checkpoint, whose extra input then says "all masked, nothing to keep"."""
        if not self._require_model().spec.inpainting:
            return None
        shape = (1, self._require_model().spec.vae.latent_channels, req.height // 8, req.width // 8)
        zeros = torch.zeros(shape, device=self.placement.device)
        start = Start(zeros, None, "original", StepWindow(req.steps, 0), self._inpaint_channels(None, None, req, control))
        return start

    def _inpaint_channels(self, pixels, pixel_mask, req: GenerationRequest, control) -> torch.Tensor:
        masked, small = conditioning_inputs(pixels, pixel_mask, req.height, req.width)
        return inpaint_channels(small.to(self.placement.device), self.encode(masked, control))

    def use_vae(self, choice: Optional[str]) -> dict:
        """Put the VAE ``choice`` names in place (vae_select.py: Automatic, None or a
        file of models/vae) and return its infotext entries.  A VAE file is read once
        and kept while it stays in use; the checkpoint's own VAE is kept aside meanwhile."""
        m = self._require_model()
        path = resolve_vae(self.home, choice, m.path)
        if path != m.vae_path:
            own = m.own_vae if m.own_vae is not None else m.networks.vae
            if path is None:
                m.networks.vae, m.own_vae, m.vae_sha = own, None, None
            else:
                from .models.vae_file import load_vae_file

                p = self.placement
                vae = load_vae_file(path, m.spec, torch.float32 if self._vae_fp32 else p.dtype, p.device)
                m.networks.vae, m.own_vae, m.vae_sha = vae, own, hash_cache(self.home).get_sha256(path)
                log.info("using the VAE %s with %s", path.name, m.path.name)
            m.vae_path = path
            m.preview_map = None  # fitted to the VAE in use
        return vae_infotext(m.vae_path, m.vae_sha)

    @torch.inference_mode()
    def encode(self, pixels: torch.Tensor, control: Optional[JobControl] = None) -> torch.Tensor:
        """Pixels (1, 3, H, W) in [-1, 1] -> scaled latents (float32, on the device);
        tiled when large (vae.py).  fp16 overflow is retried in fp32."""
        m = self._require_model()
        vae = m.networks.vae
        should_stop = None if control is None else (lambda: control.cancelled)
        plan = self.memory.plan
        with swapped_in(vae, m.networks.unet, self.placement.device, plan is not None and plan.vae_swapped):
            latents, switched = encode_checked(vae, pixels.to(self.placement.device), should_stop)
        self._vae_fp32 = self._vae_fp32 or switched
        return latents.float()

    def preview(self, latents: torch.Tensor, index: int = 0) -> Image.Image:
        """A cheap picture of one latent of a batch (for live progress), see previews.py.

        Small latents (pictures up to 192 px, such as the demo model's) are decoded by
        the VAE itself, which costs little there and is exact; larger ones go through
        the fitted linear map."""
        m = self._require_model()
        if latents.shape[-1] * latents.shape[-2] <= SMALL_PREVIEW_LATENT:
            with torch.inference_mode():
                return _to_image(decode_latent(m.networks.vae, latents[index : index + 1].float())[0])
        if m.preview_map is None:
            m.preview_map = fit_preview_map(m.networks.vae)
        return preview_image(m.preview_map.to_rgb(latents[index]))

    @torch.inference_mode()
    def decode(self, latents: torch.Tensor, control: Optional[JobControl] = None) -> list[Image.Image]:
        """Latents -> RGB images, one at a time (tiled when large, see vae.py); a
        cancel stops it between blocks.  fp16 overflow is retried in fp32.  The
        checkpoint's own VAE decodes the way its file says (ModelSpec.vae_decode)."""
        m = self._require_model()
        vae = m.networks.vae
        how = m.spec.vae_decode if m.vae_path is None else "plain"
        should_stop = None if control is None else (lambda: control.cancelled)
        images = []
        plan = self.memory.plan
        with swapped_in(vae, m.networks.unet, self.placement.device, plan is not None and plan.vae_swapped), large_blocks_returned():
            for lat in latents:
                pixels, switched = decode_checked(vae, lat[None], should_stop, how, tiled=True if plan is not None and plan.tiled_vae else None)
                self._vae_fp32 = self._vae_fp32 or switched
                images.append(_to_image(pixels[0]))
        return images

    def _params(self, req: GenerationRequest, sampler: SamplerInfo, schedule: str, seed: int, extra: Optional[dict] = None) -> GenerationParams:
        m = self._require_model()
        # the noise keys as AUTOMATIC1111 writes them (base keys 20 and 24, right after
        # Clip skip): ENSD only when set and the sampler is one A1111 lists as using it,
        # RNG only when it is not A1111's default GPU (a missing RNG reads back as GPU)
        noise_keys: dict = {}
        if req.ensd and sampler.uses_ensd:
            noise_keys["ENSD"] = req.ensd
        if req.rng != "GPU":
            noise_keys["RNG"] = req.rng
        if self.placement.dtype == torch.bfloat16 and m.dtype is None:  # a speed setting that changes the picture says so (Flux runs in bf16 anyway)
            noise_keys["Precision"] = "bf16"
        if m.spec.family == "flux" and m.spec.guidance:
            noise_keys["Distilled CFG Scale"] = float(req.distilled_cfg_scale)  # Forge's key, written after CFG scale
        return GenerationParams(
            prompt=req.prompt,
            negative_prompt=req.negative_prompt,
            steps=req.steps,
            sampler=sampler.label,
            schedule=schedule_label(sampler, schedule),
            cfg_scale=float(req.cfg_scale),
            seed=seed,
            width=req.width,
            height=req.height,
            model_name=m.name,
            model_hash=m.short_hash,
            clip_skip=req.clip_skip,
            extra={**noise_keys, **(extra or {})},
            version=f"brushwork {__version__}",
        )


def _prompt_keys(styles: list[str], plan: PromptPlan) -> dict:
    """The infotext entries that come with the prompts: the styles applied and the
    embeddings used, as A1111 writes them."""
    extra: dict = {}
    if styles:
        extra["Styles"] = ", ".join(styles)
    if plan.ti_hashes:
        extra["TI hashes"] = ", ".join(f"{n.replace(':', '').replace(',', '')}: {h}" for n, h in plan.ti_hashes.items())
    return extra


def _to_image(pixels: torch.Tensor) -> Image.Image:
    """One decoded picture (3, H, W) in [-1, 1] -> an RGB image."""
    arr = ((pixels.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(np.ascontiguousarray(arr), "RGB")
