"""brushwork pull: SOURCE parsing, names and header classification (pure functions, no servers)."""
from __future__ import annotations

import json
import struct

import pytest

from brushwork.fetch import kinds, sources
from brushwork.fetch.sources import CivitaiRef, HuggingFaceRef, PullError, SourceNotFound, StarterRef, UrlRef, parse_source

MIRROR = "http://127.0.0.1:9"
HF = "http://127.0.0.1:8"


def parse(text, starters=("sd15",)):
    return parse_source(text, starter_names=starters, civitai=MIRROR, hf=HF)


@pytest.mark.parametrize("text, model, version", [
    ("https://civitai.com/models/133005/juggernaut-xl", 133005, None),
    ("https://civitai.com/models/133005", 133005, None),
    ("https://civitai.com/models/133005/juggernaut-xl?modelVersionId=348913", 133005, 348913),
    ("https://www.civitai.com/models/133005?modelVersionId=348913&foo=1", 133005, 348913),
    ("urn:air:sdxl:checkpoint:civitai:133005@348913", 133005, 348913),
    ("air:sdxl:checkpoint:civitai:133005@348913", 133005, 348913),
    ("urn:air:sdxl:checkpoint:civitai:133005", 133005, None),
    ("civitai:133005@348913", 133005, 348913),
    ("civitai:133005", 133005, None),
    (f"{MIRROR}/models/7/x?modelVersionId=8", 7, 8),
])
def test_civitai_model_forms(text, model, version):
    ref = parse(text)
    assert isinstance(ref, CivitaiRef)
    assert (ref.model_id, ref.version_id, ref.file_id) == (model, version, None)


def test_civitai_download_link_with_file_query():
    ref = parse("https://civitai.com/api/download/models/348913?type=Model&format=SafeTensor&size=pruned&fp=fp16")
    assert ref == CivitaiRef(model_id=None, version_id=348913, file_query=(("type", "Model"), ("format", "SafeTensor"), ("size", "pruned"), ("fp", "fp16")))
    assert parse("https://civitai.com/api/download/models/348913").file_query == ()
    assert parse("https://civitai.com/api/download/models/348913?fileId=42").file_id == 42


def test_air_file_id_and_format():
    ref = parse("urn:air:sd1:lora:civitai:58390@62833+1234.safetensors")
    assert (ref.model_id, ref.version_id, ref.file_id) == (58390, 62833, 1234)


def test_token_pasted_in_a_civitai_url_is_taken_and_never_shown():
    ref = parse("https://civitai.com/api/download/models/5?token=s3cret&type=Model")
    assert ref.token == "s3cret"
    assert "s3cret" not in repr(ref)
    assert sources.strip_token("https://civitai.com/api/download/models/5?token=s3cret&type=Model") == "https://civitai.com/api/download/models/5?type=Model"


@pytest.mark.parametrize("text, repo, rev, path", [
    ("https://huggingface.co/stable-diffusion-v1-5/stable-diffusion-v1-5/blob/main/v1-5-pruned-emaonly.safetensors",
     "stable-diffusion-v1-5/stable-diffusion-v1-5", "main", "v1-5-pruned-emaonly.safetensors"),
    ("https://huggingface.co/o/r/resolve/abc123/sub/dir/f.safetensors?download=true", "o/r", "abc123", "sub/dir/f.safetensors"),
    ("https://huggingface.co/o/r/blob/refs%2Fpr%2F6/f.safetensors", "o/r", "refs/pr/6", "f.safetensors"),
    ("https://hf.co/datasets/o/r/resolve/main/f.bin", "datasets/o/r", "main", "f.bin"),
    ("hf://madebyollin/sdxl-vae-fp16-fix/sdxl_vae.safetensors", "madebyollin/sdxl-vae-fp16-fix", "main", "sdxl_vae.safetensors"),
    ("hf://o/r@v2.0/a/b.safetensors", "o/r", "v2.0", "a/b.safetensors"),
    (f"{HF}/o/r/resolve/main/f.safetensors", "o/r", "main", "f.safetensors"),
])
def test_hugging_face_forms(text, repo, rev, path):
    assert parse(text) == HuggingFaceRef(repo, rev, path)


def test_hf_resolve_url_quotes_revision_and_path():
    ref = HuggingFaceRef("o/r", "refs/pr/6", "my dir/f.safetensors")
    assert sources.hf_resolve_url("https://hub.example", ref) == "https://hub.example/o/r/resolve/refs%2Fpr%2F6/my%20dir/f.safetensors"


def test_plain_url_and_starter_name():
    ref = parse("https://example.org/files/model.safetensors?sig=1")
    assert isinstance(ref, UrlRef) and ref.url.endswith("?sig=1")
    assert parse("SD15") == StarterRef("sd15")


@pytest.mark.parametrize("text, needle", [
    ("nonsense words", "Accepted forms"),
    ("sd51", "Did you mean sd15"),
    ("https://huggingface.co/o/r", "not a file"),
    ("https://civitai.com/user/someone", "not to a model"),
    ("https://civitai.com/models/abc", "not a civitai id"),
    ("hf://o/f.safetensors", "hf://OWNER/REPO/path"),
    ("urn:air:sdxl:vae:huggingface:stabilityai/sdxl-vae", "hf://"),
    ("", "No SOURCE"),
])
def test_unknown_sources_say_what_is_accepted(text, needle):
    with pytest.raises(SourceNotFound) as err:
        parse(text)
    assert needle in str(err.value)


def test_pasted_links_go_to_the_configured_base():
    assert sources.onto_base("https://civitai.com/api/download/models/5?type=Model", "http://127.0.0.1:9/prefix") == \
        "http://127.0.0.1:9/prefix/api/download/models/5?type=Model"


def test_bad_base_urls_are_explained(monkeypatch):
    monkeypatch.setenv("BRUSHWORK_CIVITAI_URL", "civitai.example")
    with pytest.raises(PullError, match="BRUSHWORK_CIVITAI_URL"):
        sources.civitai_base()
    monkeypatch.setenv("HF_ENDPOINT", "https://hf-mirror.example/")
    assert sources.hf_endpoint() == "https://hf-mirror.example"


@pytest.mark.parametrize("raw, clean", [
    ("../../etc/passwd", "passwd"),
    ("..\\..\\x.safetensors", "x.safetensors"),
    (".hidden.safetensors", "hidden.safetensors"),
    ('a<b>:c"d|e?f*.safetensors', "a_b__c_d_e_f_.safetensors"),
    ("CON.safetensors", "_CON.safetensors"),
    ("", "download"),
    ("...", "download"),
    ("x" * 300 + ".safetensors", "x" * 188 + ".safetensors"),
])
def test_sanitize_file_name(raw, clean):
    assert sources.sanitize_file_name(raw) == clean


def test_content_disposition_names():
    assert sources.disposition_file_name('attachment; filename="BodHor-V1.safetensors"') == "BodHor-V1.safetensors"
    assert sources.disposition_file_name("inline; filename*=UTF-8''caf%C3%A9.safetensors; filename=\"cafe.safetensors\";") == "café.safetensors"
    assert sources.disposition_file_name(None) is None


def test_clash_names():
    names = sources.clash_names("detail tweaker.safetensors")
    assert [next(names) for _ in range(3)] == ["detail tweaker.safetensors", "detail tweaker-2.safetensors", "detail tweaker-3.safetensors"]
    names = sources.clash_names("README")
    assert [next(names) for _ in range(2)] == ["README", "README-2"]


def test_kinds_and_sha_normalisation():
    assert sources.normalize_kind("LoRA") == "lora" and sources.normalize_kind("textualinversion") == "embedding"
    with pytest.raises(PullError, match="checkpoint, lora"):
        sources.normalize_kind("controlnet")
    sha = "F253ABB016C22DD426D6E482F4F8C3960766DE6E4C02F151478BFB98F6985383"
    assert sources.normalize_sha256(f'"{sha}"') == sha.lower()
    assert sources.normalize_sha256('W/"abc"') is None


# ---------------------------------------------------------------- classification


def header(entries: dict, metadata=None) -> dict:
    out = {k: {"dtype": "F16", "shape": list(s), "data_offsets": [0, 0]} for k, s in entries.items()}
    if metadata:
        out["__metadata__"] = metadata
    return out


def test_classify_lora_embedding_vae():
    lora = header({"lora_unet_a.lora_down.weight": (4, 8), "lora_unet_a.lora_up.weight": (8, 4), "lora_unet_a.alpha": ()}, {"ss_base_model_version": "sdxl_base_v1-0"})
    assert kinds.classify_header(lora) == kinds.Classified("lora", "sdxl")
    peft = header({"unet.down.0.lora_A.weight": (4, 8), "unet.down.0.lora_B.weight": (8, 4)})
    assert kinds.classify_header(peft).kind == "lora"
    loha = header({"lora_unet_a.hada_w1_a": (8, 4), "lora_unet_a.hada_w1_b": (4, 8), "lora_unet_a.hada_w2_a": (8, 4), "lora_unet_a.hada_w2_b": (4, 8)})
    assert kinds.classify_header(loha).kind == "lora"
    assert kinds.classify_header(header({"emb_params": (2, 768)})) == kinds.Classified("embedding", "sd1")
    assert kinds.classify_header(header({"clip_l": (2, 768), "clip_g": (2, 1280)})) == kinds.Classified("embedding", "sdxl")
    vae = header({"encoder.conv_in.weight": (8, 3, 3, 3), "decoder.conv_out.weight": (3, 8, 3, 3), "quant_conv.weight": (8, 8, 1, 1)})
    assert kinds.classify_header(vae).kind == "vae"


def test_classify_a_real_tiny_checkpoint(tiny_home):
    path = tiny_home / "models" / "checkpoints" / "tiny-sdxl.safetensors"
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    found = kinds.classify_header(json.loads(raw[8 : 8 + n]), path.name)
    assert found == kinds.Classified("checkpoint", "sdxl")


def test_classify_unknown_suggests_kind():
    with pytest.raises(PullError, match="--kind"):
        kinds.classify_header(header({"body.0.weight": (64, 64, 3, 3), "conv_first.weight": (64, 3, 3, 3)}), "4x-Thing.safetensors")
    with pytest.raises(PullError, match="--kind"):
        kinds.classify_header({"__metadata__": {}}, "empty.safetensors")


def test_civitai_types_map_to_folders():
    assert [kinds.civitai_kind(t) for t in ("Checkpoint", "LORA", "LoCon", "DoRA", "TextualInversion", "VAE", "Upscaler", "Controlnet")] == \
        ["checkpoint", "lora", "lora", "lora", "embedding", "vae", "upscaler", None]
    assert kinds.civitai_kind("Checkpoint", "VAE") == "vae"
    assert [kinds.family_of_base_model(b) for b in ("SD 1.5", "SD 2.1", "SDXL 1.0", "Pony", "Flux.1 D")] == ["sd1", "sd2", "sdxl", "sdxl", None]
