"""Textual-inversion embeddings, written into a prompt by their file name."""
import hashlib
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from brushwork import Engine, GenerationRequest
from brushwork.conditioning import Slot, encode_prompt, tokenize, weighted_chunks
from brushwork.embeddings import load_embedding
from brushwork.prompts import parse_attention

BASE = GenerationRequest("a photo, mystyle", seed=3, steps=3, width=64, height=64)


@pytest.fixture
def home(tiny_home, tmp_path):
    dst = tmp_path / "home"
    shutil.copytree(tiny_home / "models", dst / "models")
    (dst / "models" / "embeddings").mkdir()
    return dst


def vectors(n, width, seed=0):
    return torch.randn(n, width, generator=torch.Generator().manual_seed(seed))


def test_trigger_becomes_slots_that_are_never_split():
    triggers = {tuple(tokenize("mystyle")): ("mystyle", 3)}
    (chunk,) = weighted_chunks(parse_attention("a photo, (mystyle:1.2)"), triggers=triggers)
    assert chunk.tokens[-3:] == [Slot("mystyle", 0), Slot("mystyle", 1), Slot("mystyle", 2)]
    assert chunk.weights[-3:] == [1.2] * 3
    long = weighted_chunks(parse_attention("word " * 73 + "mystyle"), triggers=triggers, backtrack=0)
    assert [len(c.tokens) for c in long] == [73, 3]


def test_the_vectors_replace_the_word_in_the_encoder_input(home):
    vec = vectors(2, 32)
    torch.save({"string_to_param": {"*": vec}, "name": "mystyle", "step": 1000}, home / "models" / "embeddings" / "mystyle.pt")
    emb = load_embedding(home / "models" / "embeddings" / "mystyle.pt")
    eng = Engine(home, device="cpu")
    m = eng.load("tiny-sd1")
    enc = m.networks.text_encoders[0]
    seen = []
    handle = enc.embeddings.register_forward_hook(lambda mod, args, out: seen.append(out.clone()))
    try:
        encode_prompt(m.spec, [enc], "a photo, mystyle", 1, eng.placement.device, {"mystyle": emb})
    finally:
        handle.remove()
    pos = enc.embeddings.position_embedding.weight
    # BOS, "a", "photo", ",", then the two vectors at positions 4 and 5
    assert torch.allclose(seen[0][0, 4], vec[0] + pos[4], atol=1e-6)
    assert torch.allclose(seen[0][0, 5], vec[1] + pos[5], atol=1e-6)


def test_generation_uses_it_and_records_the_hash(home):
    path = home / "models" / "embeddings" / "mystyle.safetensors"
    save_file({"emb_params": vectors(2, 32)}, str(path))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    eng = Engine(home, device="cpu")
    eng.load("tiny-sd1")
    (with_emb,) = eng.txt2img(BASE)
    path.unlink()
    (plain_word,) = eng.txt2img(BASE)
    assert np.abs(np.asarray(with_emb.image, dtype=int) - np.asarray(plain_word.image, dtype=int)).mean() > 0.5
    assert f'TI hashes: "mystyle: {digest}"' in with_emb.infotext
    assert "TI hashes" not in plain_word.infotext


def test_negative_prompt_embeddings_work_too(home):
    save_file({"emb_params": vectors(1, 32)}, str(home / "models" / "embeddings" / "badhands.safetensors"))
    eng = Engine(home, device="cpu")
    eng.load("tiny-sd1")
    (img,) = eng.txt2img(replace(BASE, prompt="a photo", negative_prompt="badhands"))
    assert "TI hashes" in img.infotext


def test_sdxl_embeddings_carry_one_set_per_encoder(home):
    save_file({"clip_l": vectors(2, 32, 1), "clip_g": vectors(2, 32, 2)}, str(home / "models" / "embeddings" / "mystyle.safetensors"))
    eng = Engine(home, device="cpu")
    eng.load("tiny-sdxl")
    (img,) = eng.txt2img(BASE)
    assert "TI hashes" in img.infotext


def test_an_embedding_for_another_family_is_skipped_with_a_warning(home, caplog):
    save_file({"emb_params": vectors(2, 768)}, str(home / "models" / "embeddings" / "mystyle.safetensors"))
    eng = Engine(home, device="cpu")
    eng.load("tiny-sd1")
    (img,) = eng.txt2img(BASE)
    assert "TI hashes" not in img.infotext
    assert "does not fit this SD 1.x checkpoint" in caplog.text


def test_a_broken_embedding_file_is_a_warning(home, caplog):
    (home / "models" / "embeddings" / "mystyle.pt").write_bytes(b"not a pickle")
    eng = Engine(home, device="cpu")
    eng.load("tiny-sd1")
    (img,) = eng.txt2img(BASE)
    assert img.image.size == (64, 64)
    assert "could not be read as an embedding" in caplog.text
