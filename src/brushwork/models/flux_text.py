"""Flux.1's two text encoders: T5-XXL (T5 v1.1, encoder only) and CLIP-L.

Flux conditions on the last hidden state of a T5 v1.1 XXL encoder (512 tokens for
dev, 256 for schnell) and on the pooled output of a CLIP-L text encoder.  Both come
as files users already have:

* T5: ComfyUI / Forge ``t5xxl_fp16.safetensors``, ``t5xxl_fp8_e4m3fn.safetensors``
  (and the ``_scaled`` variant) in ``models/text_encoders`` (or ``models/clip``), or
  inside an all-in-one checkpoint under ``text_encoders.t5xxl.transformer.``.  The
  names are transformers' own: ``shared.weight`` and/or ``encoder.embed_tokens.weight``
  (one tied table), ``encoder.block.N.layer.0.SelfAttention.{q,k,v,o}.weight``,
  ``encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight`` (block 0
  only), ``encoder.block.N.layer.{0,1}.layer_norm.weight``,
  ``encoder.block.N.layer.1.DenseReluDense.{wi_0,wi_1,wo}.weight`` and
  ``encoder.final_layer_norm.weight``.
* CLIP-L: ``clip_l.safetensors`` with transformers' ``text_model.`` names (optionally
  under ``text_encoders.clip_l.transformer.``), built by the SD loader's CLIP path.

The T5 is transformers' ``T5EncoderModel``, created on the ``meta`` device (no
memory, no random init) and filled strictly from the file by the SD loader's fill
(:func:`brushwork.models.load._fill`): every parameter must come from the file with
the right shape, every file tensor under the prefix must be used.  Two exceptions,
both named here so nothing else is silently skipped:

* a second copy of the embedding table (``encoder.embed_tokens.weight`` next to
  ``shared.weight``): the model ties the two, so one is read and the other dropped;
* ComfyUI's scaled-fp8 bookkeeping: a ``scaled_fp8`` marker tensor, and per-weight
  ``<layer>.scale_weight`` (and ``<layer>.scale_input``) tensors.  A weight with a
  ``scale_weight`` is read as ``float(weight) * scale_weight`` (in fp32, then cast);
  ``scale_input`` only matters for fp8 matrix products, which Brushwork does not use.

Stored precisions: fp32, bf16, fp16 and fp8 (``F8_E4M3`` / ``F8_E5M2``); each tensor
is cast to the requested dtype as it is read (fp8 values are exact in fp16, bf16 and
fp32).  In float16 the feed-forward output projections (``wo``) are kept in float32,
as transformers does for T5 (its ``_keep_in_fp32_modules``): T5 v1.1's activations
overflow float16 there.
"""
from __future__ import annotations

import os
import re
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Mapping, Union

import torch

from .errors import CorruptCheckpoint, UnsupportedModel
from .files import TensorFile, TensorInfo, damage_reported, open_tensor_file

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the tokenizer and configs come from the package, never the network
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

Shapes = Mapping[str, tuple[int, ...]]

#: where the T5 and CLIP-L keys sit in an all-in-one (ComfyUI-saved) checkpoint
T5_PREFIX = "text_encoders.t5xxl.transformer."
CLIP_L_PREFIX = "text_encoders.clip_l.transformer."
#: token budgets of the two Flux.1 variants (diffusers' FluxPipeline max_sequence_length)
T5_TOKENS = {"dev": 512, "schnell": 256}
PAD_ID, EOS_ID = 0, 1

_Q = "encoder.block.0.layer.0.SelfAttention.q.weight"
_REL_BIAS = "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
_WI0 = "encoder.block.0.layer.1.DenseReluDense.wi_0.weight"
_WI_PLAIN = "encoder.block.0.layer.1.DenseReluDense.wi.weight"
_EMBEDDINGS = ("shared.weight", "encoder.embed_tokens.weight")  # one tied table, either name
_BUCKETS, _MAX_DISTANCE = 32, 128  # T5 v1.1's relative-position buckets
_COMPUTE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_SCALE_SUFFIXES = (".scale_weight", ".scale_input")
_WHAT = "T5 text encoder"


# ------------------------------------------------------------------ tokenizer


@lru_cache(maxsize=1)
def t5_tokenizer():
    """The T5 v1.1 tokenizer (``transformers.T5TokenizerFast``), from the files inside
    the package (``assets/t5_tokenizer``), never the network."""
    from transformers import T5TokenizerFast

    folder = resources.files("brushwork") / "assets" / "t5_tokenizer"
    return T5TokenizerFast.from_pretrained(str(folder), local_files_only=True)


def tokenize_t5(texts: list[str], max_length: int) -> torch.LongTensor:
    """Token ids (B, max_length) for Flux's T5, as diffusers' FluxPipeline makes them:
    each text ends with ``</s>`` (1), is cut to ``max_length`` tokens (``</s>`` stays
    last) and padded with ``<pad>`` (0) to exactly ``max_length``.  Flux.1 dev uses
    512 tokens, schnell 256 (:data:`T5_TOKENS`)."""
    if isinstance(texts, str):
        texts = [texts]
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
        raise ValueError(f"max_length must be a positive whole number of tokens (Flux dev uses 512, schnell 256), not {max_length!r}")
    if not texts:
        return torch.zeros((0, max_length), dtype=torch.long)
    out = t5_tokenizer()(list(texts), padding="max_length", max_length=max_length, truncation=True, add_special_tokens=True, return_tensors="pt")
    return out.input_ids.to(torch.long)


# ------------------------------------------------------------------ architecture from shapes


def _has_t5(shapes: Shapes, prefix: str) -> bool:
    return prefix + _Q in shapes


def _shape(shapes: Shapes, key: str, ndim: int) -> tuple[int, ...]:
    """The shape of ``key``, which the T5 needs with ``ndim`` dimensions."""
    if key not in shapes:
        raise CorruptCheckpoint(f"the {_WHAT} is incomplete: tensor {key!r} is missing. The file is damaged or not in the original layout; download it again.")
    shape = tuple(int(n) for n in shapes[key])
    if len(shape) != ndim:
        raise CorruptCheckpoint(f"the {_WHAT} tensor {key!r} has shape {shape}, but that layer needs {ndim} dimensions; the file is damaged. Download it again.")
    return shape


def _block_count(shapes: Shapes, prefix: str) -> int:
    """How many encoder blocks the file holds (numbered 0..n-1 without gaps)."""
    from .detect import _indices

    seen = set(_indices(shapes, re.escape(prefix + "encoder.block.") + r"(\d+)\."))
    missing = sorted(set(range(max(seen) + 1)) - seen) if seen else [0]
    if missing:
        raise CorruptCheckpoint(f"the {_WHAT}'s encoder blocks are numbered with gaps: block {missing[0]} ({prefix}encoder.block.{missing[0]}.*) is missing. The file is damaged or incomplete; download it again.")
    return len(seen)


def _embedding_key(shapes: Shapes, prefix: str) -> str:
    """The file key of the token-embedding table: ``shared.weight``, else
    ``encoder.embed_tokens.weight`` (files carry one or both; they are one tied table)."""
    for name in _EMBEDDINGS:
        if prefix + name in shapes:
            return prefix + name
    raise CorruptCheckpoint(
        f"the {_WHAT} is incomplete: it has no token-embedding table ({prefix}shared.weight or {prefix}encoder.embed_tokens.weight). "
        "The file is damaged or not in the original layout; download it again."
    )


def derive_t5(shapes: Shapes, prefix: str = ""):
    """A ``transformers.T5Config`` for the T5 v1.1 encoder whose tensors sit under
    ``prefix`` in ``shapes`` (name -> shape), read off the shapes alone:

    d_model and the attention width (heads x d_kv) from the first query projection,
    the heads from the relative-attention bias (32 buckets x heads), d_ff from the
    gated feed-forward's ``wi_0``, the layers from the block numbers and the vocabulary
    from the embedding table.  Fixed by T5 v1.1: gated-GELU feed-forward (``gelu_new``),
    32 relative-position buckets up to distance 128, RMS-norm epsilon 1e-6, untied
    output embeddings.

    Raises :class:`UnsupportedModel` when there is no T5 encoder under ``prefix`` or it
    is not a T5 v1.1, :class:`CorruptCheckpoint` when one is there but incomplete."""
    from transformers import T5Config

    if not _has_t5(shapes, prefix):
        where = f"under {prefix!r}" if prefix else "at the top level (no prefix)"
        raise UnsupportedModel(f"no T5 text encoder {where}: tensor {prefix + _Q!r} is missing. Pass a T5-XXL file such as t5xxl_fp16.safetensors or t5xxl_fp8_e4m3fn.safetensors.")
    inner, d_model = _shape(shapes, prefix + _Q, 2)
    buckets, heads = _shape(shapes, prefix + _REL_BIAS, 2)
    if buckets != _BUCKETS:
        raise UnsupportedModel(f"the T5 encoder's relative-attention bias {prefix + _REL_BIAS!r} has {buckets} position buckets; T5 v1.1 (Flux's T5-XXL) has {_BUCKETS}. This is another kind of T5, which Brushwork does not support.")
    if heads < 1 or inner % heads:
        raise CorruptCheckpoint(f"the {_WHAT}'s query projection is {inner} wide, which does not split into the {heads} heads of {prefix + _REL_BIAS!r}; the file is damaged.")
    if prefix + _WI0 not in shapes:
        if prefix + _WI_PLAIN in shapes:
            raise UnsupportedModel(f"this T5 encoder has a plain ReLU feed-forward ({prefix + _WI_PLAIN!r}): it is an original T5 (v1.0), not the T5 v1.1 (gated-GELU) that Flux uses. Use t5xxl_fp16.safetensors or t5xxl_fp8_e4m3fn.safetensors.")
        _shape(shapes, prefix + _WI0, 2)  # raises: missing
    d_ff, ff_in = _shape(shapes, prefix + _WI0, 2)
    vocab, emb_width = _shape(shapes, _embedding_key(shapes, prefix), 2)
    if ff_in != d_model or emb_width != d_model:
        raise CorruptCheckpoint(f"the {_WHAT}'s tensors disagree about its width ({d_model} in the attention, {ff_in} in the feed-forward, {emb_width} in the embeddings); the file mixes parts of different models.")
    return T5Config(
        vocab_size=vocab,
        d_model=d_model,
        d_kv=inner // heads,
        d_ff=d_ff,
        num_layers=_block_count(shapes, prefix),
        num_heads=heads,
        relative_attention_num_buckets=_BUCKETS,
        relative_attention_max_distance=_MAX_DISTANCE,
        layer_norm_epsilon=1e-6,
        feed_forward_proj="gated-gelu",  # sets dense_act_fn="gelu_new", is_gated_act=True
        dropout_rate=0.0,
        tie_word_embeddings=False,
        is_encoder_decoder=False,
        use_cache=False,
    )


# ------------------------------------------------------------------ the file as the model sees it


def _scale_key(weight_key: str) -> str:
    """``a.b.weight`` -> ``a.b.scale_weight`` (ComfyUI's scaled-fp8 layout)."""
    return weight_key[: -len("weight")] + "scale_weight"


def _is_bookkeeping(key: str, prefix: str) -> bool:
    """Scaled-fp8 side tensors: the ``scaled_fp8`` marker and per-layer input scales
    (weight scales are consumed when their weight is read)."""
    return key == prefix + "scaled_fp8" or key.endswith(".scale_input")


def t5_view(tf: TensorFile, prefix: str = "") -> TensorFile:
    """``tf`` as the T5 loader reads it: the duplicate embedding table and ComfyUI's
    scaled-fp8 bookkeeping taken out of the tensor table, and each weight that has a
    ``.scale_weight`` read already multiplied by it.  Every other tensor stays, so
    anything unexpected still shows up as a leftover.  The view reads through ``tf``
    (closing ``tf`` is the caller's business)."""
    tensors: dict[str, TensorInfo] = dict(tf.tensors)
    if prefix + _EMBEDDINGS[0] in tensors and prefix + _EMBEDDINGS[1] in tensors:
        shared, dup = tensors[prefix + _EMBEDDINGS[0]].shape, tensors.pop(prefix + _EMBEDDINGS[1]).shape
        if tuple(shared) != tuple(dup):
            raise CorruptCheckpoint(
                f"{tf.path.name}: {prefix}shared.weight {tuple(shared)} and {prefix}encoder.embed_tokens.weight {tuple(dup)} should be the same tied embedding table "
                "but differ in shape; the file mixes parts of different models."
            )
    scales: dict[str, str] = {}
    for key in list(tensors):
        if not key.startswith(prefix):
            continue
        if _is_bookkeeping(key, prefix):
            del tensors[key]
        elif key.endswith(".weight") and _scale_key(key) in tensors:
            scale = _scale_key(key)
            try:
                torch.broadcast_shapes(tuple(tensors[scale].shape), tuple(tensors[key].shape))
            except RuntimeError:
                raise CorruptCheckpoint(f"{tf.path.name}: the fp8 scale {scale!r} has shape {tuple(tensors[scale].shape)}, which does not fit its weight {tuple(tensors[key].shape)}; the file is damaged.") from None
            scales[key] = scale
    for scale in scales.values():
        del tensors[scale]

    def read(name: str, dtype: torch.dtype | None) -> torch.Tensor:
        if name not in scales:
            return tf.get(name, dtype)
        weight = tf.get(name, torch.float32) * tf.get(scales[name], torch.float32)
        return weight.to(dtype) if dtype is not None else weight

    return TensorFile(tf.path, tensors, dict(tf.metadata), read)


# ------------------------------------------------------------------ building


def _check_dtype(dtype: torch.dtype) -> None:
    if dtype not in _COMPUTE_DTYPES:
        raise ValueError(f"the text encoder cannot compute in {dtype}; use torch.float32, torch.float16 or torch.bfloat16 (fp8 files are widened as they are read).")


def _build_t5_from(tf: TensorFile, prefix: str, dtype: torch.dtype, device: torch.device):
    from transformers import T5EncoderModel

    from .convert import Source
    from .load import _fill

    shapes = tf.shapes()
    config = derive_t5(shapes, prefix)
    embedding = _embedding_key(shapes, prefix)
    view = t5_view(tf, prefix)
    with torch.device("meta"):
        model = T5EncoderModel(config)

    def source(name: str) -> Source:
        # names of the encoder stack (T5Stack); its embed_tokens is the model's shared table
        return Source(embedding if name == "embed_tokens.weight" else f"{prefix}encoder.{name}")

    _fill(model.encoder, _WHAT, source, view, dtype, device, [prefix])
    model.shared.weight = model.encoder.embed_tokens.weight  # the tie, undone by assigning loaded tensors
    if dtype == torch.float16:
        for block in model.encoder.block:
            block.layer[-1].DenseReluDense.wo.float()
    left = [n for n, p in model.named_parameters(remove_duplicate=False) if p.device.type == "meta"]
    if left:
        raise CorruptCheckpoint(f"internal: {_WHAT} parameter(s) {left[:3]} were not loaded")
    return model.eval().requires_grad_(False)


def build_t5(path_or_tensorfile: Union[str, os.PathLike, TensorFile], prefix: str = "", dtype: torch.dtype = torch.float32, device: Union[str, torch.device] = "cpu"):
    """A ``transformers.T5EncoderModel`` filled strictly from a T5 v1.1 encoder file
    (a path, opened and closed here, or an open :class:`TensorFile`), whose tensors
    sit under ``prefix`` (``""`` for ``t5xxl_*.safetensors``, :data:`T5_PREFIX` inside
    an all-in-one checkpoint), in ``dtype`` on ``device``.

    Every failure is a :class:`~.errors.ModelFileError` naming the file and, for a
    missing, wrong-shaped or unexpected tensor, the tensor."""
    _check_dtype(dtype)
    device = torch.device(device)
    if isinstance(path_or_tensorfile, TensorFile):
        with damage_reported(path_or_tensorfile.path, _WHAT):
            return _build_t5_from(path_or_tensorfile, prefix, dtype, device)
    path = Path(path_or_tensorfile)
    with damage_reported(path, _WHAT):
        with open_tensor_file(path) as tf:
            return _build_t5_from(tf, prefix, dtype, device)


def encode_t5(model, ids: torch.Tensor) -> torch.Tensor:
    """The T5 encoder's last hidden state (B, L, d_model) for token ids (B, L), with
    no attention mask (padding included), as Flux does."""
    if ids.ndim != 2:
        raise ValueError(f"token ids must be a (batch, length) tensor, not shape {tuple(ids.shape)}")
    device = model.shared.weight.device
    with torch.inference_mode():
        return model(input_ids=ids.to(device=device, dtype=torch.long)).last_hidden_state


def build_clip_l(tf: TensorFile, prefix: str = "", dtype: torch.dtype = torch.float32, device: Union[str, torch.device] = "cpu"):
    """Flux's CLIP-L text encoder (a ``transformers.CLIPTextModel``) from ``tf``'s
    tensors under ``prefix`` (``""`` for ``clip_l.safetensors``, :data:`CLIP_L_PREFIX`
    inside an all-in-one checkpoint), through the SD loader's CLIP path
    (:func:`~.detect.derive_text_encoder`, :func:`~.load.build_text_encoder`), strictly.

    Flux uses the pooled output without CLIP's projection, so a ``text_projection.weight``
    in the file (some CLIP-L files have one, SD3's ``clip_l.safetensors`` has none)
    is left unread, and so is CLIP's ``logit_scale``; ``position_ids`` are ignored as for SD."""
    from .detect import derive_text_encoder
    from .load import build_text_encoder

    _check_dtype(dtype)
    with damage_reported(tf.path, "CLIP-L text encoder"):
        shapes = tf.shapes()
        base = prefix + "text_model." if any(k.startswith(prefix + "text_model.") for k in shapes) else prefix
        if base + "embeddings.token_embedding.weight" not in shapes:
            where = f"under {prefix!r}" if prefix else "at the top level (no prefix)"
            raise UnsupportedModel(f"{tf.path.name} has no CLIP-L text encoder {where} (no {base}embeddings.token_embedding.weight). Pass a CLIP-L file such as clip_l.safetensors.")
        cfg = derive_text_encoder(shapes, prefix, "hf")
        unused = (prefix + "text_projection.weight", prefix + "logit_scale")
        tensors = {k: v for k, v in tf.tensors.items() if k not in unused}
        view = TensorFile(tf.path, tensors, dict(tf.metadata), tf.get)
        return build_text_encoder(cfg, view, dtype, torch.device(device))


# ------------------------------------------------------------------ tiny files for tests


def _random_t5_state(model, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Seeded random weights for every parameter of ``model`` (fp32), scaled so the
    activations stay moderate: norms near 1, linears ~ 1/sqrt(fan_in)."""
    state: dict[str, torch.Tensor] = {}
    for name, p in model.named_parameters():
        noise = torch.randn(p.shape, generator=generator, dtype=torch.float32)
        if name.endswith("layer_norm.weight"):
            state[name] = 1.0 + 0.1 * noise
        elif name == "shared.weight" or "relative_attention_bias" in name:
            state[name] = 0.5 * noise
        else:
            state[name] = noise / p.shape[1] ** 0.5
    return state


def _to_scaled_fp8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """ComfyUI-style per-tensor scaled fp8: (weight / scale in e4m3fn, scale in fp32)."""
    scale = (weight.abs().amax() / torch.finfo(torch.float8_e4m3fn).max).clamp(min=1e-12).reshape(())
    return (weight / scale).to(torch.float8_e4m3fn), scale.to(torch.float32)


def write_tiny_t5(path: Union[str, os.PathLike], dtype: torch.dtype = torch.float16, layers: int = 2, d_model: int = 32, d_ff: int = 64, heads: int = 4, d_kv: int = 8,
                  vocab: int = 32128, prefix: str = "", seed: int = 0, scaled_fp8: bool = False):
    """Write a random-weight T5 v1.1 encoder (seeded) to a safetensors file in the
    layout of ComfyUI's ``t5xxl_*.safetensors``: transformers' names under ``prefix``,
    with both ``shared.weight`` and ``encoder.embed_tokens.weight``, every tensor in
    ``dtype`` (fp32, fp16, bf16, float8_e4m3fn or float8_e5m2).

    ``scaled_fp8``: ComfyUI's ``_scaled`` layout instead: every encoder-block linear
    weight stored as e4m3fn divided by a per-tensor ``.scale_weight`` (fp32), a
    ``scaled_fp8`` marker, everything else in ``dtype``.

    Returns ``(model, state)``: the fp32 source ``T5EncoderModel`` and the tensors
    written (keys without the prefix), so tests can build references from either."""
    from safetensors.torch import save_file
    from transformers import T5Config, T5EncoderModel

    config = T5Config(vocab_size=vocab, d_model=d_model, d_kv=d_kv, d_ff=d_ff, num_layers=layers, num_heads=heads, feed_forward_proj="gated-gelu",
                      relative_attention_num_buckets=_BUCKETS, relative_attention_max_distance=_MAX_DISTANCE, layer_norm_epsilon=1e-6, dropout_rate=0.0,
                      tie_word_embeddings=False, is_encoder_decoder=False, use_cache=False)
    with torch.device("meta"):
        model = T5EncoderModel(config)
    weights = _random_t5_state(model, torch.Generator().manual_seed(seed))
    model.load_state_dict({**weights, "encoder.embed_tokens.weight": weights["shared.weight"]}, strict=True, assign=True)
    model.shared.weight = model.encoder.embed_tokens.weight
    model = model.eval().requires_grad_(False)

    state: dict[str, torch.Tensor] = {}
    for name, w in weights.items():
        is_linear = name.startswith("encoder.block.") and re.search(r"\.(q|k|v|o|wi_0|wi_1|wo)\.weight$", name)
        if scaled_fp8 and is_linear:
            state[name], state[_scale_key(name)] = _to_scaled_fp8(w)
        else:
            state[name] = w.to(dtype)
    state["encoder.embed_tokens.weight"] = state["shared.weight"].clone()
    if scaled_fp8:
        state["scaled_fp8"] = torch.empty(0, dtype=torch.float8_e4m3fn)
    save_file({prefix + k: v.contiguous() for k, v in state.items()}, str(path))
    return model, state
