"""Flux.1's text encoders: the T5 v1.1 tokenizer (against published ids), the T5
encoder's architecture read from a file's shapes, strict loading of T5 files in every
stored precision and layout users have (ComfyUI/Forge t5xxl files, scaled fp8, inside
an all-in-one checkpoint), and CLIP-L through the SD loader's CLIP path."""
from __future__ import annotations

import json
import re
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file

from brushwork.models.errors import CorruptCheckpoint, UnsupportedModel
from brushwork.models.files import open_tensor_file
from brushwork.models.flux_text import (CLIP_L_PREFIX, T5_PREFIX, build_clip_l, build_t5, derive_t5, encode_t5, t5_tokenizer, tokenize_t5,
                                        write_tiny_t5)

DOG = "Studies have been shown that owning a dog is good for you"
DOG_IDS = [6536, 43, 118, 2008, 24, 293, 53, 3, 9, 1782, 19, 207, 21, 25, 1]  # the Hugging Face T5 docs' example
HELLO_IDS = [8774, 296, 1]
#: the tiny T5: d_kv * heads (24) differs from d_model (32), so d_kv must be read, not guessed
TINY = dict(layers=3, d_model=32, d_ff=64, heads=4, d_kv=6)


def header_dtypes(path) -> dict[str, str]:
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    return {k: v["dtype"] for k, v in header.items()}


def ids():
    """Two prompts, padded to 24 tokens (the padding is encoded too, as in Flux)."""
    return tokenize_t5(["a photo of a cat wearing a tiny hat", DOG], 24)


def rounded(source, state):
    """A copy of the fp32 source model whose weights are the file's (rounded) values."""
    import copy

    model = copy.deepcopy(source)
    weights = {k: v.float() for k, v in state.items() if not k.endswith("scale_weight") and k != "scaled_fp8"}
    for k in list(weights):
        scale = state.get(k[: -len("weight")] + "scale_weight") if k.endswith(".weight") else None
        if scale is not None:
            weights[k] = weights[k] * scale.float()
    model.load_state_dict(weights, strict=True)
    return model


def load(path, prefix="", dtype=torch.float32):
    with open_tensor_file(path) as tf:
        return build_t5(tf, prefix, dtype, "cpu")


def edited(src, dst, change):
    """``src``'s tensors, edited in place by ``change(state)``, written to ``dst``."""
    state = load_file(str(src))
    change(state)
    save_file(state, str(dst))
    return dst


@pytest.fixture(scope="module")
def fp32_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("t5") / "t5xxl_fp32.safetensors"
    source, _ = write_tiny_t5(path, dtype=torch.float32, **TINY)
    return path, source


# ------------------------------------------------------------------ tokenizer


def test_t5_tokenizer_gives_the_published_ids():
    tok = t5_tokenizer()
    assert tok is t5_tokenizer()  # cached
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    assert tokenize_t5([DOG], len(DOG_IDS))[0].tolist() == DOG_IDS
    assert tokenize_t5(["Hello world"], 3)[0].tolist() == HELLO_IDS


@pytest.mark.parametrize("length", [512, 256])  # Flux dev, schnell
def test_t5_ids_are_padded_to_the_token_budget(length):
    out = tokenize_t5([DOG, "Hello world"], length)
    assert out.dtype == torch.long and out.shape == (2, length)
    assert out[0].tolist() == DOG_IDS + [0] * (length - len(DOG_IDS))
    assert out[1].tolist() == HELLO_IDS + [0] * (length - 3)


@pytest.mark.parametrize("length", [512, 256])
def test_long_t5_prompts_are_cut_with_the_end_token_last(length):
    words = " ".join(["castle"] * 600)  # one token per word
    castle = tokenize_t5(["castle"], 2)[0, 0].item()
    out = tokenize_t5([words, "Hello world"], length)
    assert out.shape == (2, length)
    assert out[0, -1].item() == 1 and (out[0, :-1] == castle).all() and not (out[0] == 0).any()
    assert out[1, :3].tolist() == HELLO_IDS


def test_t5_tokenize_rejects_a_bad_length_and_accepts_an_empty_batch():
    with pytest.raises(ValueError, match="max_length"):
        tokenize_t5(["a cat"], 0)
    assert tokenize_t5([], 512).shape == (0, 512)


# ------------------------------------------------------------------ architecture


def test_derive_t5_reads_the_architecture_off_the_shapes(tmp_path):
    path = tmp_path / "t5.safetensors"
    write_tiny_t5(path, dtype=torch.float16, vocab=32128, **TINY)
    with open_tensor_file(path) as tf:
        cfg = derive_t5(tf.shapes())
    assert (cfg.d_model, cfg.d_ff, cfg.num_layers, cfg.num_heads, cfg.d_kv, cfg.vocab_size) == (32, 64, 3, 4, 6, 32128)
    assert (cfg.feed_forward_proj, cfg.is_gated_act, cfg.dense_act_fn) == ("gated-gelu", True, "gelu_new")
    assert (cfg.relative_attention_num_buckets, cfg.relative_attention_max_distance, cfg.layer_norm_epsilon) == (32, 128, 1e-6)
    # tie_word_embeddings=False was passed; transformers 5 keeps it as "v1.1: no output scaling"
    assert cfg.scale_decoder_outputs is False


def test_derive_t5_gives_t5_xxl_for_the_published_shapes():
    d, ff, heads = 4096, 10240, 64
    shapes = {"shared.weight": (32128, d), "encoder.embed_tokens.weight": (32128, d), "encoder.final_layer_norm.weight": (d,),
              "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight": (32, heads)}
    for i in range(24):
        b = f"encoder.block.{i}.layer."
        shapes.update({b + f"0.SelfAttention.{p}.weight": (d, d) for p in "qkvo"})
        shapes.update({b + "1.DenseReluDense.wi_0.weight": (ff, d), b + "1.DenseReluDense.wi_1.weight": (ff, d), b + "1.DenseReluDense.wo.weight": (d, ff)})
    cfg = derive_t5({T5_PREFIX + k: v for k, v in shapes.items()}, T5_PREFIX)
    assert (cfg.d_model, cfg.d_ff, cfg.num_layers, cfg.num_heads, cfg.d_kv, cfg.vocab_size) == (4096, 10240, 24, 64, 64, 32128)


def test_derive_t5_says_what_is_not_a_t5_v1_1():
    with pytest.raises(UnsupportedModel, match="no T5 text encoder.*t5xxl_fp16"):
        derive_t5({"text_model.embeddings.token_embedding.weight": (49408, 768)})
    shapes = {"shared.weight": (100, 8), "encoder.block.0.layer.0.SelfAttention.q.weight": (8, 8),
              "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight": (32, 2), "encoder.block.0.layer.1.DenseReluDense.wi.weight": (16, 8)}
    with pytest.raises(UnsupportedModel, match=r"original T5 \(v1.0\)"):
        derive_t5(shapes)
    shapes["encoder.block.0.layer.1.DenseReluDense.wi_0.weight"] = (16, 8)
    shapes["encoder.block.2.layer.0.layer_norm.weight"] = (8,)
    with pytest.raises(CorruptCheckpoint, match=r"block 1 \(encoder.block.1.\*\) is missing"):
        derive_t5(shapes)


# ------------------------------------------------------------------ loading


def test_an_fp32_file_loads_exactly(fp32_file):
    path, source = fp32_file
    model = load(path)
    assert model.shared.weight is model.encoder.embed_tokens.weight  # one tied table
    assert all(p.device.type == "cpu" and p.dtype == torch.float32 for p in model.parameters())
    out = encode_t5(model, ids())
    assert out.shape == (2, 24, 32)
    assert torch.equal(out, encode_t5(source, ids()))


def cosine(a, b) -> float:
    return torch.nn.functional.cosine_similarity(a.flatten().float(), b.flatten().float(), dim=0).item()


@pytest.mark.parametrize("dtype, stored, atol, min_cos", [
    (torch.float16, "F16", 0.02, 0.99999),  # measured: 0.0067, 0.9999989
    (torch.bfloat16, "BF16", 0.2, 0.9995),  # 0.085, 0.99991
    (torch.float8_e4m3fn, "F8_E4M3", None, 0.96),  # 1.6, 0.974
    (torch.float8_e5m2, "F8_E5M2", None, 0.93),  # 1.8, 0.949
])
def test_16_and_8_bit_files_load_as_their_rounded_weights(tmp_path, dtype, stored, atol, min_cos):
    """Loaded in fp32, a 16- or 8-bit file gives exactly the source model with its
    weights rounded as stored.  Against the unrounded source (outputs up to ~3.3) the
    16-bit files stay within ``atol``; fp8 rounding (3 or 2 mantissa bits) moves
    single values by up to ~2, so there only the direction is checked (cosine)."""
    path = tmp_path / "t5.safetensors"
    source, state = write_tiny_t5(path, dtype=dtype, **TINY)
    assert set(header_dtypes(path).values()) == {stored}
    out = encode_t5(load(path), ids())
    assert torch.equal(out, encode_t5(rounded(source, state), ids()))
    exact = encode_t5(source, ids())
    assert cosine(out, exact) > min_cos
    if atol is not None:
        assert (out - exact).abs().max().item() < atol


def test_comfyui_scaled_fp8_weights_are_multiplied_by_their_scales(tmp_path):
    path = tmp_path / "t5xxl_fp8_e4m3fn_scaled.safetensors"
    source, state = write_tiny_t5(path, dtype=torch.float16, scaled_fp8=True, **TINY)
    dtypes = header_dtypes(path)
    assert dtypes["encoder.block.0.layer.0.SelfAttention.q.weight"] == "F8_E4M3" and dtypes["encoder.block.0.layer.0.SelfAttention.q.scale_weight"] == "F32"
    assert "scaled_fp8" in dtypes
    out = encode_t5(load(path), ids())
    assert torch.equal(out, encode_t5(rounded(source, state), ids()))
    assert cosine(out, encode_t5(source, ids())) > 0.98  # measured 0.9907 (per-tensor scaled e4m3fn)


@pytest.mark.parametrize("dtype, tol", [(torch.float16, 0.03), (torch.bfloat16, 0.25)])  # measured: 0.011, 0.11
def test_building_in_16_bit_stays_close(fp32_file, dtype, tol):
    """Half-precision compute: within ``tol`` of fp32 (outputs ~ 3); in float16 the
    feed-forward output projections stay float32, as transformers keeps T5's ``wo``."""
    path, source = fp32_file
    model = load(path, dtype=dtype)
    wo = model.encoder.block[0].layer[1].DenseReluDense.wo.weight
    assert model.encoder.block[0].layer[0].SelfAttention.q.weight.dtype == dtype
    assert wo.dtype == (torch.float32 if dtype == torch.float16 else dtype)
    out = encode_t5(model, ids())
    assert out.dtype == dtype and torch.isfinite(out).all()
    assert (out.float() - encode_t5(source, ids())).abs().max().item() < tol


def test_a_t5_inside_an_all_in_one_checkpoint_loads_by_its_prefix(tmp_path):
    path = tmp_path / "flux1-dev-all-in-one.safetensors"
    source, _ = write_tiny_t5(path, dtype=torch.float32, prefix=T5_PREFIX, **TINY)
    edited(path, path, lambda s: s.update({"model.diffusion_model.img_in.weight": torch.zeros(4, 4), CLIP_L_PREFIX + "text_model.final_layer_norm.weight": torch.ones(4)}))
    assert torch.equal(encode_t5(load(path, T5_PREFIX), ids()), encode_t5(source, ids()))
    model = build_t5(path, T5_PREFIX, torch.float32, "cpu")  # a path works too
    assert torch.equal(encode_t5(model, ids()), encode_t5(source, ids()))
    with pytest.raises(UnsupportedModel, match="no T5 text encoder at the top level"):
        load(path, "")


@pytest.mark.parametrize("keep", ["shared.weight", "encoder.embed_tokens.weight"])
def test_either_name_of_the_embedding_table_is_enough(fp32_file, tmp_path, keep):
    path, source = fp32_file
    other = {"shared.weight": "encoder.embed_tokens.weight", "encoder.embed_tokens.weight": "shared.weight"}[keep]
    one = edited(path, tmp_path / "one.safetensors", lambda s: s.pop(other))
    assert torch.equal(encode_t5(load(one), ids()), encode_t5(source, ids()))


def _damaged(tmp_path, fp32_file, change):
    return edited(fp32_file[0], tmp_path / "bad.safetensors", change)


def test_a_missing_tensor_is_named(tmp_path, fp32_file):
    key = "encoder.block.1.layer.1.DenseReluDense.wo.weight"
    path = _damaged(tmp_path, fp32_file, lambda s: s.pop(key))
    with pytest.raises(CorruptCheckpoint, match=rf"T5 text encoder is incomplete: tensor '{key}'.*missing from bad.safetensors"):
        load(path)


def test_a_wrong_shape_is_named(tmp_path, fp32_file):
    key = "encoder.block.2.layer.0.SelfAttention.k.weight"
    path = _damaged(tmp_path, fp32_file, lambda s: s.update({key: torch.zeros(24, 16)}))
    with pytest.raises(CorruptCheckpoint, match=rf"'{key}' has shape \(24, 16\) but the T5 text encoder needs \(24, 32\)"):
        load(path)


@pytest.mark.parametrize("key", ["encoder.block.0.layer.0.SelfAttention.extra.weight", "decoder.block.0.layer.0.SelfAttention.q.weight",
                                 "encoder.block.0.layer.0.SelfAttention.x.scale_weight"])  # a scale with no weight of its name is not skipped either
def test_an_extra_tensor_is_named(tmp_path, fp32_file, key):
    path = _damaged(tmp_path, fp32_file, lambda s: s.update({key: torch.ones(())}))
    with pytest.raises(CorruptCheckpoint, match=r"1 T5 text encoder tensor\(s\) that do not fit.*" + re.escape(key)):
        load(path)


def test_differing_embedding_copies_and_bad_dtypes_are_refused(tmp_path, fp32_file):
    path = _damaged(tmp_path, fp32_file, lambda s: s.update({"encoder.embed_tokens.weight": torch.zeros(100, 32)}))
    with pytest.raises(CorruptCheckpoint, match=r"shared.weight \(32128, 32\) and encoder.embed_tokens.weight \(100, 32\)"):
        load(path)
    with pytest.raises(ValueError, match="cannot compute in torch.float8_e4m3fn"):
        build_t5(fp32_file[0], "", torch.float8_e4m3fn, "cpu")


# ------------------------------------------------------------------ CLIP-L


def tiny_clip(seed: int = 0):
    """A tiny CLIPTextModel as ``build_text_encoder`` makes them (width // 64 heads,
    quick-GELU, OpenAI CLIP's end token)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(vocab_size=49408, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=1, max_position_embeddings=77,
                            hidden_act="quick_gelu", layer_norm_eps=1e-5, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return CLIPTextModel(config).eval()


def clip_file(path, model, prefix="", extra=None):
    state = {"text_model." + k.removeprefix("text_model."): v.contiguous() for k, v in model.state_dict().items() if not k.endswith("position_ids")}
    state.update(extra or {})
    save_file({prefix + k: v for k, v in state.items()}, str(path))
    return path


@pytest.mark.parametrize("prefix", ["", CLIP_L_PREFIX])
def test_clip_l_loads_through_the_sd_clip_path(tmp_path, prefix):
    source = tiny_clip()
    extra = {"text_projection.weight": torch.randn(64, 64), "logit_scale": torch.tensor(4.6)}  # in some clip_l files, unused by Flux
    path = clip_file(tmp_path / "clip_l.safetensors", source, prefix, extra)
    with open_tensor_file(path) as tf:
        model = build_clip_l(tf, prefix, torch.float32, "cpu")
    tokens = torch.tensor([[49406, 320, 1125, 539, 49407] + [49407] * 72])
    with torch.inference_mode():
        got, want = model(input_ids=tokens), source(input_ids=tokens)
    assert type(model).__name__ == "CLIPTextModel"
    assert got.pooler_output.shape == (1, 64)
    assert torch.equal(got.pooler_output, want.pooler_output)
    assert torch.equal(got.last_hidden_state, want.last_hidden_state)


def test_clip_l_loading_is_strict(tmp_path):
    path = clip_file(tmp_path / "clip_l.safetensors", tiny_clip(), extra={"text_model.encoder.layers.0.mlp.fc3.weight": torch.zeros(2, 2)})
    with open_tensor_file(path) as tf:
        with pytest.raises(CorruptCheckpoint, match=r"text encoder tensor\(s\) that do not fit.*fc3"):
            build_clip_l(tf, "", torch.float32, "cpu")
    t5 = tmp_path / "t5.safetensors"
    write_tiny_t5(t5, **TINY)
    with open_tensor_file(t5) as tf:
        with pytest.raises(UnsupportedModel, match="no CLIP-L text encoder"):
            build_clip_l(tf, "", torch.float32, "cpu")
