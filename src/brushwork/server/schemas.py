"""Request bodies of the native API, with the ranges a form needs.

The native API is strict: JSON numbers must be numbers, unknown fields are
refused (a typo like ``stpes`` would otherwise be silently ignored).  The
AUTOMATIC1111 bodies live in ``a1111.py`` and follow that API's lax rules.
"""
from __future__ import annotations

import difflib
from typing import Optional

from pydantic import BaseModel, ConfigDict, Field

from ..engine import MAX_SEED, MAX_SIDE, MAX_STEPS, MIN_SIDE, GenerationRequest
from ..lora import lora_files
from ..prompts import extract_extra_networks
from ..sampling.registry import resolve_sampler

MAX_PROMPT_CHARS = 100_000
MAX_BATCH_SIZE = 16
MAX_BATCH_COUNT = 100


class BadRequest(ValueError):
    """A request that is well-formed JSON but asks for something impossible; ``field`` names the culprit."""

    def __init__(self, message: str, field: Optional[str] = None):
        super().__init__(message)
        self.field = field


class GenerateBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    prompt: str = Field("", max_length=MAX_PROMPT_CHARS, description="positive prompt, AUTOMATIC1111 syntax, <lora:name:weight> tags")
    negative_prompt: str = Field("", max_length=MAX_PROMPT_CHARS)
    seed: int = Field(-1, ge=-1, le=MAX_SEED, description="-1: random")
    steps: Optional[int] = Field(None, ge=1, le=MAX_STEPS, description="null: the model's default")
    cfg_scale: Optional[float] = Field(None, ge=0, le=30)
    sampler: Optional[str] = Field(None, max_length=64, description="e.g. 'DPM++ 2M' or 'DPM++ 2M Karras'")
    schedule: Optional[str] = Field(None, max_length=64, description="e.g. 'Karras'")
    width: Optional[int] = Field(None, ge=MIN_SIDE, le=MAX_SIDE, multiple_of=8)
    height: Optional[int] = Field(None, ge=MIN_SIDE, le=MAX_SIDE, multiple_of=8)
    batch_size: int = Field(1, ge=1, le=MAX_BATCH_SIZE)
    batch_count: int = Field(1, ge=1, le=MAX_BATCH_COUNT)
    clip_skip: int = Field(1, ge=1, le=12)
    model: Optional[str] = Field(None, max_length=512, description="checkpoint name; null: the current one")

    def to_request(self) -> GenerationRequest:
        return GenerationRequest(
            prompt=self.prompt, negative_prompt=self.negative_prompt, seed=self.seed, steps=self.steps, cfg_scale=self.cfg_scale,
            sampler=self.sampler, schedule=self.schedule, width=self.width, height=self.height,
            batch_size=self.batch_size, batch_count=self.batch_count, clip_skip=self.clip_skip,
        )


class SwitchModelBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    name: str = Field(..., min_length=1, max_length=512)


class TokensBody(BaseModel):
    text: str = Field("", max_length=MAX_PROMPT_CHARS)


class PngInfoBody(BaseModel):
    image: str = Field(..., min_length=1, description="base64 PNG/JPEG/WebP, or a data: URL")


def check_names(home, req: GenerationRequest) -> None:
    """Sampler, schedule and LoRA names must exist: a 400 that lists the valid ones."""
    if req.sampler is not None or req.schedule is not None:
        try:
            resolve_sampler(req.sampler or "DPM++ 2M", req.schedule)
        except ValueError as exc:
            raise BadRequest(str(exc), "sampler" if req.sampler and "ampler" in str(exc) else "schedule") from None
    tags = extract_extra_networks(req.prompt)
    if tags.warnings:
        raise BadRequest(tags.warnings[0], "prompt")
    known = lora_files(home)
    for tag in (t for t in tags.networks if t.kind == "lora"):
        if tag.name.lower() not in known:
            close = difflib.get_close_matches(tag.name.lower(), list(known), n=3, cutoff=0.5)
            hint = f" Did you mean {', '.join(close)}?" if close else (" No LoRAs are installed." if not known else f" Installed: {', '.join(sorted(known)[:20])}.")
            raise BadRequest(f"unknown LoRA {tag.name!r} in the prompt.{hint} LoRA files go in {home.lora_dirs[0]}.", "prompt")
