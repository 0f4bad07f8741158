"""Prompt text -> Flux's text features: T5-XXL's token sequence and CLIP-L's pooled vector.

The same :class:`~brushwork.conditioning.TextConditioning` the SD path makes
(``context``: T5's last hidden state, ``pooled``: CLIP-L's pooled output), so
prompt editing and the prompt plan work unchanged.

- **T5.** The text is tokenised with ``</s>`` last and padded with ``<pad>`` to the
  family's length (dev 512, schnell 256), as BFL's and diffusers' pipelines do.
  With no emphasis the features are theirs exactly. A longer prompt is not cut off:
  it is split into windows of that length, each ending in ``</s>``, and their
  features are joined. Forge also splits long prompts, in windows of 256 tokens.
  Ours are the family's length, so a prompt that fits gives BFL's features.
- **Emphasis.** ``(word:1.3)`` and ``[word]`` scale T5's features of those tokens,
  then the window's mean is restored (AUTOMATIC1111's "Original" emphasis, which
  Forge applies to Flux's T5 too). CLIP-L sees the plain text: its pooled vector
  summarises the whole prompt.
- **CLIP-L.** The first 75 tokens, framed as one 77-token window, padded with its
  end token. The output is the final-normed end token (``pooler_output``).
"""
from __future__ import annotations

from typing import Sequence

import torch

from .conditioning import CHUNK, EOS, Chunk, TextConditioning, apply_weights, framed, tokenize
from .models.flux_text import T5_TOKENS  # tokens per window: dev 512, schnell 256

T5_EOS, T5_PAD = 1, 0


def t5_windows(runs: list[tuple[str, float]], length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, weights), each (windows, ``length``): the weighted text runs tokenised for T5,
    split into windows of ``length - 1`` tokens plus ``</s>``, padded with ``<pad>``."""
    from .models.flux_text import t5_tokenizer

    tok = t5_tokenizer()
    ids: list[int] = []
    weights: list[float] = []
    for text, weight in runs:
        if not text:
            continue
        piece = tok(text, add_special_tokens=False).input_ids
        ids += piece
        weights += [float(weight)] * len(piece)
    room = length - 1
    starts = range(0, max(len(ids), 1), room)
    rows_ids, rows_w = [], []
    for s in starts:
        chunk, w = ids[s:s + room], weights[s:s + room]
        pad = length - len(chunk) - 1
        rows_ids.append(chunk + [T5_EOS] + [T5_PAD] * pad)
        rows_w.append(w + [1.0] * (pad + 1))
    return torch.tensor(rows_ids, dtype=torch.long), torch.tensor(rows_w, dtype=torch.float32)


def clip_pooled(encoder, text: str, device: torch.device) -> torch.Tensor:
    """CLIP-L's pooled output (1, width) of the first 75 tokens of ``text`` (BOS, the
    tokens, EOS, padded with EOS to 77, as Flux's CLIP tokenizer frames them)."""
    ids = tokenize(text)[:CHUNK] if text else []
    frame, _ = framed(Chunk(ids, [1.0] * len(ids)), EOS)
    return encoder(input_ids=torch.tensor([frame], device=device)).pooler_output


def encode_flux_prompt(variant: str, encoders: Sequence[torch.nn.Module], text: str, device: torch.device) -> TextConditioning:
    """One prompt's features for a Flux model (``encoders``: CLIP-L, then T5)."""
    from .models.flux_text import encode_t5
    from .prompts import parse_attention

    clip_l, t5 = encoders
    runs = parse_attention(text) if text else [("", 1.0)]
    ids, weights = t5_windows(runs, T5_TOKENS[variant])
    with torch.inference_mode():
        hidden = encode_t5(t5, ids)
        hidden = torch.stack([apply_weights(h, w.to(h.device)) for h, w in zip(hidden, weights)])
        plain = "".join(part for part, _ in runs)
        pooled = clip_pooled(clip_l, plain, device)
    return TextConditioning(hidden.reshape(1, -1, hidden.shape[-1]).float(), pooled.float())
