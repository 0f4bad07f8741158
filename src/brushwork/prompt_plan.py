"""Prompts -> the text features of every step: :class:`PromptPlan`.

AND splits the positive prompt into weighted sub-prompts, prompt editing makes each
a timeline over the steps (``[from:to:when]``), embeddings named in the text are
read from the data home; each distinct text is encoded once (conditioning.py).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Callable, Optional, Sequence

from .conditioning import TextConditioning, encode_prompt, pad_context
from .embeddings import embedding_files, load_embedding
from .hashing import sha256_file
from .models.errors import ModelFileError
from .prompts import schedule_prompt, split_and

log = logging.getLogger(__name__)


@dataclass
class PromptPlan:
    """Encoded prompts over the steps: each positive sub-prompt (split on AND, with
    its weight) and the negative prompt as (end_step, encoding) timelines."""

    positive: list[tuple[list[tuple[int, TextConditioning]], float]]
    negative: list[tuple[int, TextConditioning]]
    #: encodes "" (the padding chunk), called only when texts of different lengths batch
    encode_empty: Callable[[], TextConditioning]
    ti_hashes: dict[str, str] = field(default_factory=dict)  # embeddings named in the prompts

    @property
    def empty(self) -> TextConditioning:
        """The encoding of "", for padding (encoded on first use, then kept)."""
        return self.encode_empty()

    @staticmethod
    def _pick(timeline: list[tuple[int, TextConditioning]], step: int) -> TextConditioning:
        for end, enc in timeline:
            if step <= end:
                return enc
        return timeline[-1][1]

    def at(self, step: int) -> tuple[list[TextConditioning], list[float], TextConditioning]:
        conds = [self._pick(tl, step) for tl, _ in self.positive]
        return conds, [w for _, w in self.positive], self._pick(self.negative, step)

    def lengths_differ(self) -> bool:
        """Whether this plan's own texts have different token lengths (so batching them
        needs the padding encoding)."""
        texts = [enc for tl, _ in self.positive for _, enc in tl] + [enc for _, enc in self.negative]
        return len({t.context.shape[1] for t in texts}) > 1

    def encode_padding(self) -> None:
        """Encode the padding now where this plan's own texts will need it (before a
        memory plan releases the text encoders)."""
        if self.lengths_differ():
            self.encode_empty()

    def padded(self, texts: list[TextConditioning]) -> list[TextConditioning]:
        """Same token length for all, by appending empty-prompt chunks, so they batch."""
        longest = max(t.context.shape[1] for t in texts)
        if all(t.context.shape[1] == longest for t in texts):
            return list(texts)
        return [replace(t, context=pad_context(t.context, longest, self.empty.context)) for t in texts]


#: encodings kept per text-encoder state (Engine's store), at most this many texts
MAX_STORED_TEXTS = 256


def encode_prompts(spec, encoders: Callable[[], Sequence], home, prompt: str, negative: str, steps: int, clip_skip: int, device, store: Optional[dict] = None, first_pass: int = 0) -> PromptPlan:
    """Encode both prompts over ``steps`` steps (``prompt`` without its extra-network
    tags): AND, prompt editing, emphasis, embeddings.  ``store`` (the caller's, for one
    state of the text encoders' weights) keeps encodings across calls, so a grid's
    cells encode each distinct text once.  ``first_pass``: a hires pass's first-pass
    steps (prompt editing continues their timeline, prompts.schedule_prompt).
    ``encoders`` returns the text encoders as they are at the time of a call: the plan
    outlives the call (its padding encoding is made on first use) and must not keep
    encoders alive that a memory plan released meanwhile."""
    flux = spec.family == "flux"  # T5 + CLIP-L (flux_prompt.py): no clip skip, no SD embeddings
    embeddings = {} if flux else embeddings_for(spec, home, prompt + "\n" + negative)
    key = (clip_skip, tuple(sorted((name, str(e.path), e.path.stat().st_mtime_ns) for name, e in embeddings.items())))
    if store is not None and sum(len(v) for v in store.values()) > MAX_STORED_TEXTS:
        store.clear()
    cache: dict[str, TextConditioning] = {} if store is None else store.setdefault(key, {})

    def encoded(text: str) -> TextConditioning:
        if text not in cache:
            if flux:
                from .flux_prompt import encode_flux_prompt

                cache[text] = encode_flux_prompt(spec.variant, encoders(), text, device)
            else:
                cache[text] = encode_prompt(spec, encoders(), text, clip_skip, device, embeddings)
        return cache[text]

    def timeline(text: str) -> list[tuple[int, TextConditioning]]:
        return [(end, encoded(t)) for end, t in schedule_prompt(text, steps, first_pass)]

    positive = [(timeline(part), weight) for part, weight in split_and(prompt)]
    ti = {name: sha256_file(e.path)[:12] for name, e in embeddings.items()}
    # "" is encoded only when texts of different lengths meet in one batch
    return PromptPlan(positive, timeline(negative), lambda: encoded(""), ti)


def embeddings_for(spec, home, text: str) -> dict:
    """The home's embeddings whose names occur in ``text`` and fit this model."""
    widths = [e.width for e in spec.text_encoders]
    out = {}
    for name, path in embedding_files(home).items():
        if name not in text:
            continue
        try:
            emb = load_embedding(path)
        except ModelFileError as exc:
            log.warning("%s The word is used as plain text.", exc)
            continue
        if any(emb.for_encoder(i, len(widths), w) is None for i, w in enumerate(widths)):
            log.warning("embedding %r does not fit this %s checkpoint (its vectors are for another model family); the word is used as plain text.", name, spec.label)
            continue
        out[name] = emb
    return out
