"""Text conditioning: prompt text -> the tensors the UNet attends to.

Prompts are tokenized with OpenAI CLIP's BPE (shipped in ``assets/``), split into
chunks of 75 tokens, each wrapped as [BOS] + tokens + [EOS] + padding to 77 and
encoded separately; the chunk encodings are concatenated, so long prompts are
never truncated (AUTOMATIC1111's scheme).  Which hidden layer is used follows the
family: SD 1.x the last layer after the final norm, SD 2.x the penultimate layer
after the final norm, SDXL the penultimate layers of both encoders concatenated,
plus the second encoder's pooled, projected output.  ``clip_skip`` > 1 steps
further back, as in AUTOMATIC1111.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Optional

import torch

from .models.detect import ModelSpec

CHUNK = 75
BOS, EOS = 49406, 49407


@lru_cache(maxsize=1)
def tokenizer():
    """The CLIP tokenizer, from files inside the package (never the network)."""
    from transformers import CLIPTokenizer

    folder = resources.files("brushwork") / "assets" / "clip_tokenizer"
    return CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)


def tokenize(text: str) -> list[int]:
    """Token ids of ``text`` without BOS/EOS."""
    return tokenizer()(text, add_special_tokens=False, truncation=False, verbose=False).input_ids


COMMA = 267  # ",</w>"
COMMA_BACKTRACK = 20  # AUTOMATIC1111's comma_padding_backtrack default


@dataclass
class Chunk:
    """Up to 75 content tokens with their emphasis weights."""

    tokens: list[int]
    weights: list[float]


@dataclass(frozen=True)
class Slot:
    """Stands in a chunk for vector ``index`` of the embedding ``name``."""

    name: str
    index: int


def _with_slots(tokens: list[int], triggers: dict[tuple[int, ...], tuple[str, int]]) -> list:
    """Replace each embedding's trigger tokens by its vector slots (longest trigger first)."""
    if not triggers:
        return tokens
    ordered = sorted(triggers, key=len, reverse=True)
    out: list = []
    i = 0
    while i < len(tokens):
        for seq in ordered:
            if tuple(tokens[i : i + len(seq)]) == seq:
                name, n = triggers[seq]
                out.append([Slot(name, j) for j in range(n)])
                i += len(seq)
                break
        else:
            out.append(tokens[i])
            i += 1
    return out


def weighted_chunks(runs: list[tuple[str, float]], backtrack: int = COMMA_BACKTRACK, triggers: dict | None = None) -> list[Chunk]:
    """Split emphasis runs (from :func:`brushwork.prompts.parse_attention`) into chunks
    of at most 75 tokens, as AUTOMATIC1111 does: ``BREAK`` starts a new chunk, and
    when a chunk fills up while its last comma is within ``backtrack`` tokens of the
    end, the words after that comma move to the next chunk so they stay together.
    ``triggers`` maps an embedding name's token ids to (name, vector count); its
    vectors take that many places and are never split across chunks."""
    from .prompts import BREAK_WEIGHT

    chunks: list[Chunk] = []
    cur = Chunk([], [])
    last_comma = -1

    def close() -> None:
        nonlocal cur, last_comma
        chunks.append(cur)
        cur = Chunk([], [])
        last_comma = -1

    for text, weight in runs:
        if text == "BREAK" and weight == BREAK_WEIGHT:
            close()
            continue
        for token in _with_slots(tokenize(text), triggers or {}):
            if isinstance(token, list):  # an embedding's vectors stay in one chunk
                if len(cur.tokens) + len(token) > CHUNK:
                    close()
                cur.tokens.extend(token)
                cur.weights.extend([weight] * len(token))
                continue
            if token == COMMA:
                last_comma = len(cur.tokens)
            elif backtrack and len(cur.tokens) == CHUNK and last_comma != -1 and len(cur.tokens) - last_comma <= backtrack:
                cut = last_comma + 1
                moved = Chunk(cur.tokens[cut:], cur.weights[cut:])
                cur = Chunk(cur.tokens[:cut], cur.weights[:cut])
                close()
                cur = moved
            if len(cur.tokens) == CHUNK:
                close()
            cur.tokens.append(token)
            cur.weights.append(weight)
    if cur.tokens or not chunks:
        close()
    return chunks


def count_tokens(text: str) -> tuple[int, int]:
    """(tokens, chunks) of a prompt as the encoder will see it, for a "N/75" counter:
    extra-network tags removed, emphasis parsed, AND parts and edits counted whole."""
    from .prompts import extract_extra_networks, parse_attention

    chunks = weighted_chunks(parse_attention(extract_extra_networks(text).text))
    tokens = sum(len(c.tokens) for c in chunks)
    return tokens, max(1, len(chunks))


def framed(chunk: Chunk, pad_id: int) -> tuple[list[int], list[float]]:
    """77 ids (BOS, tokens, EOS, padding) and their weights (1.0 outside the text)."""
    n = len(chunk.tokens)
    ids = [BOS] + [0 if isinstance(t, Slot) else t for t in chunk.tokens] + [EOS] + [pad_id] * (CHUNK - n)
    return ids, [1.0] + chunk.weights + [1.0] * (CHUNK - n + 1)


def apply_weights(hidden: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Scale each token's features by its weight, then restore the chunk's mean
    (AUTOMATIC1111's "Original" emphasis).  All-1.0 weights return ``hidden`` itself."""
    if bool((weights == 1.0).all()):
        return hidden
    before = hidden.mean()
    scaled = hidden * weights.to(hidden.dtype)[..., None]
    after = scaled.mean()
    if after.abs() <= 1e-6 * scaled.abs().mean():
        return scaled  # a mean of ~0 cannot be restored by scaling (nothing to restore)
    return scaled * (before / after)


def chunk_ids(ids: list[int], pad_id: int) -> list[list[int]]:
    """Split token ids into 77-token windows: BOS, up to 75 tokens, EOS, padding."""
    pieces = [ids[i : i + CHUNK] for i in range(0, len(ids), CHUNK)] or [[]]
    return [framed(Chunk(p, [1.0] * len(p)), pad_id)[0] for p in pieces]


@dataclass
class TextConditioning:
    """Encoded prompt: context (batch, 77*k, width) and, for SDXL, the pooled vector."""

    context: torch.Tensor
    pooled: Optional[torch.Tensor] = None


def _encode_chunk(encoder, ids: torch.Tensor, layer_from_end: int, final_norm: bool) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    out = encoder(input_ids=ids, output_hidden_states=True)
    hidden = out.hidden_states[-layer_from_end]
    if final_norm:
        hidden = getattr(encoder, "text_model", encoder).final_layer_norm(hidden)
    pooled = getattr(out, "text_embeds", None)
    return hidden, pooled


def encode_prompt(spec: ModelSpec, encoders: list, text: str, clip_skip: int, device: torch.device, embeddings: dict | None = None, grad: bool = False) -> TextConditioning:
    """Encode one prompt (with AUTOMATIC1111 emphasis, BREAK and textual-inversion
    embeddings, given as {name: Embedding}) for one image.  ``grad`` keeps the
    autograd graph (for training the text encoder)."""
    with torch.set_grad_enabled(grad):
        return _encode_prompt(spec, encoders, text, clip_skip, device, embeddings)


def _encode_prompt(spec: ModelSpec, encoders: list, text: str, clip_skip: int, device: torch.device, embeddings: dict | None) -> TextConditioning:
    from .prompts import parse_attention

    embeddings = embeddings or {}
    triggers = {tuple(tokenize(name)): (name, emb.length) for name, emb in embeddings.items()}
    chunks = weighted_chunks(parse_attention(text), triggers=triggers)
    per_encoder = []
    pooled = None
    for index, (cfg, encoder) in enumerate(zip(spec.text_encoders, encoders)):
        frames = [framed(c, cfg.pad_token_id) for c in chunks]
        ids = torch.tensor([f[0] for f in frames], device=device)
        weights = torch.tensor([f[1] for f in frames], device=device)
        if spec.family == "sd1":
            layer, norm = clip_skip, True
        elif spec.family == "sd2":
            layer, norm = 1 + clip_skip, True
        else:
            layer, norm = 1 + clip_skip, False
        slots = [(ci, 1 + pi, tok) for ci, c in enumerate(chunks) for pi, tok in enumerate(c.tokens) if isinstance(tok, Slot)]
        hook = None
        if slots:
            table = getattr(encoder, "text_model", encoder).embeddings.token_embedding

            def put_vectors(module, args, out, _slots=slots, _index=index):
                out = out.clone()
                for ci, pos, slot in _slots:
                    vec = embeddings[slot.name].for_encoder(_index, len(encoders), out.shape[-1])
                    if vec is not None:
                        out[ci, pos] = vec[slot.index].to(out.dtype)
                return out

            hook = table.register_forward_hook(put_vectors)
        try:
            hidden, pool = _encode_chunk(encoder, ids, layer, norm)
        finally:
            if hook is not None:
                hook.remove()
        hidden = torch.stack([apply_weights(h, w) for h, w in zip(hidden, weights)])
        per_encoder.append(hidden.reshape(1, -1, hidden.shape[-1]))
        if pool is not None:
            pooled = pool[:1]  # the first chunk's pooled output, as AUTOMATIC1111 does
    return TextConditioning(torch.cat(per_encoder, dim=-1), pooled)


def pad_context(ctx: torch.Tensor, length: int, filler: torch.Tensor) -> torch.Tensor:
    """Extend a context to ``length`` tokens with copies of ``filler`` (the encoding of
    an empty 77-token chunk), so contexts of different chunk counts can be batched."""
    missing = (length - ctx.shape[1]) // filler.shape[1]
    return ctx if missing <= 0 else torch.cat([ctx] + [filler] * missing, dim=1)
