"""Damaged and malformed files: LoRAs, embeddings and checkpoints.

A broken LoRA or embedding is a warning and the image is made without it (pixels
identical, weights bit-identical afterwards); a broken checkpoint is a one-line
message naming the file; start-up without a named model skips damaged files; a
model hash nobody has computed yet is never computed inside a request.
"""
from __future__ import annotations

import json
import logging
import re
import shutil
import struct
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from brushwork import Engine, GenerationRequest
from brushwork.catalog import find_checkpoint, find_listed_checkpoint, inspect_checkpoint, summarize
from brushwork.lora import LoraError, LoraStack, summarize_loras, trigger_words
from brushwork.models import families, save
from brushwork.models.errors import CheckpointNotFound, ModelFileError
from brushwork.paths import DataHome

DEEP = 100_000  # far past Python's recursion limit


# ---------------------------------------------------------------- writing broken files


def raw_safetensors(path: Path, tensors: dict[str, torch.Tensor], metadata=None, header: bytes | None = None) -> Path:
    """A .safetensors file written by hand, so that its header can be anything
    (the safetensors library refuses to write malformed metadata)."""
    entries, data = {}, b""
    for key, t in tensors.items():
        raw = t.detach().float().contiguous().numpy().tobytes()
        entries[key] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    if metadata is not None:
        entries["__metadata__"] = metadata
    text = json.dumps(entries).encode() if header is None else header
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)
    return path


def deep_metadata_header(tensors: dict[str, torch.Tensor]) -> bytes:
    """A header whose ss_tag_frequency is JSON nested DEEP levels (not a string)."""
    entries, offset = {}, 0
    for key, t in tensors.items():
        entries[key] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [offset, offset + 4 * t.numel()]}
        offset += 4 * t.numel()
    body = json.dumps(entries)[:-1]
    return (body + ', "__metadata__": {"ss_tag_frequency": ' + "[" * DEEP + "]" * DEEP + "}}").encode()


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata=None) -> Path:
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)
    return path


def truncated(path: Path, keep: int) -> Path:
    path.write_bytes(path.read_bytes()[:keep])
    return path


# ---------------------------------------------------------------- a home with one engine


@pytest.fixture(scope="module")
def home(tiny_home, tmp_path_factory) -> Path:
    dst = tmp_path_factory.mktemp("damaged-home")
    (dst / "models" / "checkpoints").mkdir(parents=True)
    shutil.copy(tiny_home / "models" / "checkpoints" / "tiny-sd1.safetensors", dst / "models" / "checkpoints")
    (dst / "models" / "loras").mkdir()
    (dst / "models" / "embeddings").mkdir()
    return dst


@pytest.fixture(scope="module")
def engine(home):
    eng = Engine(home, device="cpu")
    eng.load("tiny-sd1")
    return eng


REQUEST = dict(seed=5, steps=2, width=64, height=64, sampler="Euler", cfg_scale=5.0)


def generate(engine, prompt: str):
    (img,) = engine.txt2img(GenerationRequest(prompt, **REQUEST))
    return np.asarray(img.image), img.infotext


def weights(engine) -> dict[str, torch.Tensor]:
    nets = engine.model.networks
    out = {f"unet.{k}": v.clone() for k, v in nets.unet.state_dict().items()}
    for i, enc in enumerate(nets.text_encoders):
        out.update({f"te{i}.{k}": v.clone() for k, v in enc.state_dict().items()})
    return out


def assert_same_weights(engine, before: dict[str, torch.Tensor]) -> None:
    after = weights(engine)
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert not changed, f"{len(changed)} weights changed, e.g. {changed[:3]}"


@pytest.fixture(scope="module")
def baseline(engine):
    return generate(engine, "a red ball")


# ---------------------------------------------------------------- LoRAs


def lora_layers(engine, count: int = 6) -> list[tuple[str, int, int]]:
    """(kohya key, in, out) of the first ``count`` UNet linear layers, in key order."""
    found = [
        ("lora_unet_" + name.replace(".", "_"), mod.in_features, mod.out_features)
        for name, mod in engine.model.networks.unet.named_modules()
        if isinstance(mod, torch.nn.Linear)
    ]
    return sorted(found)[:count]


def lora_tensors(engine, scale: float = 0.5, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key, fan_in, fan_out in lora_layers(engine):
        out[f"{key}.lora_down.weight"] = torch.randn(4, fan_in, generator=g) * scale
        out[f"{key}.lora_up.weight"] = torch.randn(fan_out, 4, generator=g) * scale
        out[f"{key}.alpha"] = torch.tensor(4.0)
    return out


def _truncated_data(p: Path, t) -> Path:
    save_tensors(p, t)
    return truncated(p, p.stat().st_size // 2)


def last_key(tensors: dict[str, torch.Tensor]) -> str:
    """The layer read last: every layer before it would already be merged by a
    LoRA loader that changes weights as it goes."""
    return sorted(k.rsplit(".lora_", 1)[0].removesuffix(".alpha") for k in tensors)[-1]


def _with_last(part: str, value):
    def change(t: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        t = dict(t)
        key = f"{last_key(t)}.{part}"
        if value is None:
            del t[key]
        else:
            t[key] = value(t[key]) if callable(value) else value
        return t

    return change


def _inf(t: torch.Tensor) -> torch.Tensor:
    t = t.clone()
    t[0, 0] = float("inf")
    return t


BROKEN_LORAS = {
    # name: (writer(path, tensors), what the warning says)
    "last_layer_wrong_shape": (lambda p, t: save_tensors(p, _with_last("lora_up.weight", lambda u: torch.zeros(u.shape[0] + 1, 4))(t)), "does not fit|do not combine"),
    "scalar_part": (lambda p, t: save_tensors(p, _with_last("lora_down.weight", torch.tensor(0.5))(t)), "do not combine"),
    "missing_part": (lambda p, t: save_tensors(p, _with_last("lora_up.weight", None)(t)), "missing"),
    "nan_alpha": (lambda p, t: save_tensors(p, _with_last("alpha", torch.tensor(float("nan")))(t)), "NaN"),
    "two_number_alpha": (lambda p, t: save_tensors(p, _with_last("alpha", torch.tensor([4.0, 4.0]))(t)), "single number"),
    "inf_weight": (lambda p, t: save_tensors(p, _with_last("lora_up.weight", _inf)(t)), "NaN or infinite"),
    "overflowing": (lambda p, t: save_tensors(p, {k: v * 1e19 if "lora_" in k else v for k, v in t.items()}), "NaN or infinite"),
    "metadata_number": (lambda p, t: raw_safetensors(p, t, {"ss_base_model_version": 1}), "malformed metadata"),
    "metadata_object": (lambda p, t: raw_safetensors(p, t, {"ss_tag_frequency": {"a": {"b": 1}}}), "malformed metadata"),
    "metadata_list": (lambda p, t: raw_safetensors(p, t, ["sd_v1"]), "malformed metadata"),
    "metadata_deep": (lambda p, t: raw_safetensors(p, t, header=deep_metadata_header(t)), "nested too deeply"),
    "zero_bytes": (lambda p, t: p.write_bytes(b""), "0 bytes"),
    "truncated_header": (lambda p, t: truncated(save_tensors(p, t), 40), "header"),
    "truncated_data": (lambda p, t: _truncated_data(p, t), "truncated"),
    "text_file": (lambda p, t: p.write_text("not a LoRA, a readme\n" * 20), "not a model file despite its .safetensors suffix: it is a text file"),
}


@pytest.mark.parametrize("case", sorted(BROKEN_LORAS))
def test_a_broken_lora_is_a_warning_and_changes_nothing(engine, home, baseline, case, caplog):
    write, reason = BROKEN_LORAS[case]
    path = home / "models" / "loras" / f"{case}.safetensors"
    write(path, lora_tensors(engine))
    before = weights(engine)
    with caplog.at_level(logging.WARNING):
        pixels, infotext = generate(engine, f"a red ball <lora:{case}:1>")
    warned = [r.getMessage() for r in caplog.records if "made without it" in r.getMessage()]
    assert len(warned) == 1 and f"{case}.safetensors" in warned[0], warned
    assert re.search(reason, warned[0]), warned[0]
    assert str(home) not in warned[0]  # the file name, not where it lives
    assert f"Missing LoRAs: {case}" in infotext and "Lora hashes" not in infotext
    assert np.array_equal(pixels, baseline[0])
    assert_same_weights(engine, before)


def test_a_good_lora_in_the_same_folder_still_changes_the_image(engine, home, baseline):
    """The control for the test above: the same layers, undamaged, do change the picture."""
    save_tensors(home / "models" / "loras" / "good.safetensors", lora_tensors(engine))
    pixels, infotext = generate(engine, "a red ball <lora:good:1>")
    assert re.search(r"Lora hashes: \"?good: [0-9a-f]{12}", infotext) and "Missing" not in infotext
    assert np.abs(pixels.astype(int) - baseline[0].astype(int)).mean() > 1
    generate(engine, "a red ball")  # unmerged again for the other tests
    assert engine.loras.applied == []


def test_a_failed_lora_after_a_good_one_keeps_exactly_the_good_one(engine, tmp_path):
    """Stacked: A merges, B fails on its last layer (or overflows part-way); the
    weights are bit for bit A's, and restoring gives the original weights."""
    m = engine.model
    stack = LoraStack()
    original = weights(engine)
    good = save_tensors(tmp_path / "a.safetensors", lora_tensors(engine, seed=1))
    stack.apply(m.spec, m.networks.unet, m.networks.text_encoders, good)
    with_a = weights(engine)
    try:
        for case in ("last_layer_wrong_shape", "overflowing", "nan_alpha"):
            bad = tmp_path / f"{case}.safetensors"
            BROKEN_LORAS[case][0](bad, lora_tensors(engine, seed=2))
            with pytest.raises(LoraError, match=case):
                stack.apply(m.spec, m.networks.unet, m.networks.text_encoders, bad)
            assert_same_weights(engine, with_a)
            assert stack.applied == [(str(good), 1.0, 1.0)]
    finally:
        stack.restore()
    assert_same_weights(engine, original)


def test_lora_listings_never_fail_on_broken_files(engine, tmp_path):
    """``brushwork loras`` and the A1111 listing read headers and metadata: every
    broken file is listed as unreadable, the rest keep their trigger words."""
    from brushwork.lora import listed_metadata

    h = tmp_path / "list-home"
    folder = h / "models" / "loras"
    folder.mkdir(parents=True)
    tensors = lora_tensors(engine)
    for case in ("metadata_number", "metadata_object", "metadata_list", "metadata_deep", "zero_bytes", "truncated_header", "text_file"):
        BROKEN_LORAS[case][0](folder / f"{case}.safetensors", tensors)
    tags = {"set": {"sunset": 3, "sky": "many", "sea": None, "boat": 1e400, "cloud": 2}}
    save_tensors(folder / "odd_tags.safetensors", tensors, {"ss_tag_frequency": json.dumps(tags).replace("Infinity", "1e400")})
    save_tensors(folder / "deep_tags.safetensors", tensors, {"ss_tag_frequency": "[" * DEEP + "]" * DEEP, "ss_base_model_version": "sd_v1"})
    rows = {r.name: r for r in summarize_loras(DataHome(h))}
    broken = {"metadata_number", "metadata_object", "metadata_list", "metadata_deep", "zero_bytes", "truncated_header", "text_file"}
    assert {n for n, r in rows.items() if r.family.startswith("unreadable")} == broken
    assert rows["odd_tags"].triggers == ["sunset", "cloud"]
    assert rows["deep_tags"].triggers == [] and rows["deep_tags"].family == "SD 1.x"
    for name in broken:
        assert listed_metadata(folder / f"{name}.safetensors") == {}
    assert trigger_words({"ss_tag_frequency": '{"a": {"x": "7"}, "b": [1]}'}) == []


def test_a1111_lora_listing_answers_with_broken_files(home, engine):
    """GET /sdapi/v1/loras with every kind of broken file in the folder: 200, all listed."""
    from fastapi.testclient import TestClient

    from brushwork.server import ServeOptions, build

    tensors = lora_tensors(engine)
    folder = home / "models" / "loras"
    for case in ("metadata_number", "metadata_object", "metadata_list", "metadata_deep", "zero_bytes", "truncated_header", "text_file"):
        path = folder / f"{case}.safetensors"
        if not path.exists():
            BROKEN_LORAS[case][0](path, tensors)
    app, studio = build(ServeOptions(home=str(home), model="tiny-sd1", device="cpu"))
    try:
        with TestClient(app, base_url="http://127.0.0.1") as client:
            r = client.get("/sdapi/v1/loras")
        assert r.status_code == 200, r.text
        listed = {item["name"]: item for item in r.json()}
        assert {"metadata_number", "metadata_object", "metadata_deep", "zero_bytes", "text_file"} <= set(listed)
        assert all(all(isinstance(v, str) for v in item["metadata"].values()) for item in listed.values())
    finally:
        studio.close()
        studio.store.close()


# ---------------------------------------------------------------- embeddings


def _emb(path: Path, value) -> Path:
    return save_tensors(path, {"emb_params": value})


def _emb_pt(path: Path, obj) -> Path:
    torch.save(obj, path)
    return path


def _nan_rows(n: int = 2, width: int = 32) -> torch.Tensor:
    t = torch.randn(n, width)
    t[1, 3] = float("nan")
    return t


BROKEN_EMBEDDINGS = {
    "embnan": (".safetensors", lambda p: _emb(p, _nan_rows()), "NaN"),
    "embinf": (".pt", lambda p: _emb_pt(p, {"string_to_param": {"*": torch.full((1, 32), float("inf"))}}), "NaN or infinite"),
    "embscalar": (".safetensors", lambda p: _emb(p, torch.tensor(1.0)), "shape"),
    "embempty": (".pt", lambda p: _emb_pt(p, {"string_to_param": {}}), "no tensor"),
    "embnottensor": (".pt", lambda p: _emb_pt(p, {"string_to_param": {"*": "words"}}), "no tensor"),
    "embmeta": (".safetensors", lambda p: raw_safetensors(p, {"emb_params": torch.randn(1, 32)}, {"sd_checkpoint": 5}), "malformed metadata"),
    "embzero": (".safetensors", lambda p: p.write_bytes(b""), "0 bytes"),
    "embcut": (".safetensors", lambda p: truncated(_emb(p, torch.randn(4, 32)), 30), "header"),
}


@pytest.mark.parametrize("name", sorted(BROKEN_EMBEDDINGS))
def test_a_broken_embedding_is_a_warning_and_the_word_stays_plain_text(engine, home, name, caplog):
    suffix, write, reason = BROKEN_EMBEDDINGS[name]
    prompt = f"a red ball, {name}"
    plain, _ = generate(engine, prompt)  # no such file yet: the word is plain text
    before = weights(engine)
    write(home / "models" / "embeddings" / f"{name}{suffix}")
    with caplog.at_level(logging.WARNING):
        pixels, infotext = generate(engine, prompt)
    warned = [r.getMessage() for r in caplog.records if "plain text" in r.getMessage()]
    assert len(warned) == 1 and f"{name}{suffix}" in warned[0] and re.search(reason, warned[0]), warned
    assert np.array_equal(pixels, plain) and "TI hashes" not in infotext
    assert_same_weights(engine, before)


# ---------------------------------------------------------------- checkpoints


SPEC = families.tiny("sd1")


@pytest.fixture(scope="module")
def ldm() -> dict[str, torch.Tensor]:
    return save.ldm_state_dict(SPEC, save.random_networks(SPEC, seed=0))


def _changed(ldm, key: str, value) -> dict[str, torch.Tensor]:
    out = dict(ldm)
    out[key] = value(out[key]) if callable(value) else value
    return out


def _nan_at(t: torch.Tensor) -> torch.Tensor:
    t = t.clone()
    t.view(-1)[t.numel() // 2] = float("nan")
    return t


def _deep_pickle(path: Path) -> None:
    """A .ckpt whose state_dict is nested far past the recursion limit (pickling it
    needs a big stack, hence the thread)."""
    def write() -> None:
        limit = sys.getrecursionlimit()
        sys.setrecursionlimit(200_000)
        try:
            nest: dict = {}
            cur = nest
            for _ in range(20_000):
                cur["x"] = {}
                cur = cur["x"]
            torch.save({"state_dict": nest}, path)
        finally:
            sys.setrecursionlimit(limit)

    size = threading.stack_size(256 * 2**20)
    try:
        t = threading.Thread(target=write)
        t.start()
        t.join()
    finally:
        threading.stack_size(size)


def _raw_header(text: bytes) -> bytes:
    return struct.pack("<Q", len(text)) + text


def _header(entries) -> bytes:
    return _raw_header(json.dumps(entries).encode())


UNET_OUT = "model.diffusion_model.out.2.weight"
PROJ_IN = "model.diffusion_model.input_blocks.1.1.proj_in.weight"
CONV_IN = "model.diffusion_model.input_blocks.0.0.weight"

DAMAGED = {
    # file name: (writer(path, ldm), what the message says)
    "zero.safetensors": (lambda p, s: p.write_bytes(b""), "0 bytes"),
    "random.safetensors": (lambda p, s: p.write_bytes(np.random.default_rng(0).bytes(5000)), "header, larger than the file"),
    "truncated.safetensors": (lambda p, s: truncated(save_tensors(p, s), 400_000), "truncated"),
    "past_end.safetensors": (lambda p, s: p.write_bytes(_header({"a": {"dtype": "F32", "shape": [1000], "data_offsets": [0, 4000]}}) + bytes(16)), "truncated: tensor 'a' ends at byte 4000"),
    "list_header.safetensors": (lambda p, s: p.write_bytes(_header([1, 2, 3])), "JSON array, not an object"),
    "string_offsets.safetensors": (lambda p, s: p.write_bytes(_header({"a": {"dtype": "F32", "shape": [4], "data_offsets": ["0", "16"]}}) + bytes(16)), "malformed.*data_offsets"),
    "wrong_size.safetensors": (lambda p, s: p.write_bytes(_header({"a": {"dtype": "F32", "shape": [5], "data_offsets": [0, 16]}}) + bytes(16)), "needs 20 bytes"),
    "odd_dtype.safetensors": (lambda p, s: p.write_bytes(_header({"a": {"dtype": 7, "shape": [4], "data_offsets": [0, 16]}}) + bytes(16)), "dtype 7"),
    "number_metadata.safetensors": (lambda p, s: raw_safetensors(p, {"a": torch.zeros(4)}, 5), "__metadata__ is a JSON number"),
    "deep_header.safetensors": (lambda p, s: p.write_bytes(_raw_header(b'{"a":' + b"[" * DEEP + b"]" * DEEP + b"}")), "nested too deeply"),
    "readme.safetensors": (lambda p, s: p.write_text("# My model\nDownload it from the site.\n" * 10), "not a model file despite its .safetensors suffix: it is a text file"),
    "wrong_shape.safetensors": (lambda p, s: save_tensors(p, _changed(s, PROJ_IN, torch.zeros(3, 3))), "has shape \\(3, 3\\) but the UNet needs"),
    "flat_conv.safetensors": (lambda p, s: save_tensors(p, _changed(s, CONV_IN, torch.zeros(32))), "needs 4 dimensions"),
    "int_weights.safetensors": (lambda p, s: save_tensors(p, _changed(s, UNET_OUT, lambda t: t.to(torch.int64))), "stored as torch.int64"),
    "nan.safetensors": (lambda p, s: save_tensors(p, _changed(s, UNET_OUT, _nan_at)), "model.diffusion_model.out.2.weight contains NaN"),
    "inf.ckpt": (lambda p, s: torch.save({"state_dict": _changed(s, UNET_OUT, lambda t: t.clone().fill_(float("inf")))}, p), "out.2.weight contains NaN or infinite"),
    "list_state.ckpt": (lambda p, s: torch.save({"state_dict": [1, 2, 3]}, p), "'state_dict' is of type list"),
    "deep_state.ckpt": (lambda p, s: _deep_pickle(p), "no tensors"),
    "zero.ckpt": (lambda p, s: p.write_bytes(b""), "empty"),
    "cut.ckpt": (lambda p, s: (torch.save({"state_dict": s}, p), truncated(p, p.stat().st_size // 2)), "truncated or damaged"),
}


@pytest.fixture(scope="module")
def damaged(ldm, tmp_path_factory) -> Path:
    """A checkpoints folder holding only damaged files."""
    folder = tmp_path_factory.mktemp("damaged") / "models" / "checkpoints"
    folder.mkdir(parents=True)
    for name, (write, _) in DAMAGED.items():
        write(folder / name, ldm)
    return folder


@pytest.mark.parametrize("name", sorted(DAMAGED))
def test_a_damaged_checkpoint_gives_one_line_naming_the_file(damaged, name):
    path = damaged / name
    with pytest.raises(ModelFileError) as info:
        Engine(damaged.parent.parent, device="cpu").load(str(path))
    msg = str(info.value)
    assert "\n" not in msg and len(msg) < 400, msg
    assert msg.startswith(name) and str(damaged) not in msg, msg
    assert re.search(DAMAGED[name][1], msg), msg


def test_listing_checkpoints_marks_every_damaged_file_unusable(damaged):
    """``brushwork models``: one row per file, never a crash."""
    rows = {r.entry.path.name: r.family for r in summarize(DataHome(damaged.parent.parent), with_hash=False)}
    listed = {n for n in DAMAGED if n.endswith((".safetensors", ".ckpt"))}
    assert listed <= set(rows)
    header_only = {n for n in listed if n not in ("wrong_shape.safetensors", "int_weights.safetensors", "nan.safetensors", "inf.ckpt")}
    assert all(rows[n].startswith("unusable: ") for n in header_only), {n: rows[n] for n in header_only}
    for n in listed:
        try:
            inspect_checkpoint(damaged / n)
        except ModelFileError:
            pass  # the promised error; anything else fails the test


def test_nan_check_sees_the_very_last_value(tmp_path, ldm):
    """The finiteness check covers every value of every tensor, not a sample."""
    key = "first_stage_model.decoder.conv_out.weight"
    bad = dict(ldm)
    bad[key] = bad[key].clone()
    bad[key].view(-1)[-1] = float("-inf")
    path = save_tensors(tmp_path / "late.safetensors", bad)
    with pytest.raises(ModelFileError, match=f"late.safetensors: {key} contains NaN or infinite"):
        Engine(tmp_path, device="cpu").load(str(path))


# ---------------------------------------------------------------- start-up without a named model


@pytest.fixture
def startup_home(tiny_home, tmp_path, ldm):
    """A home whose first checkpoint in name order is damaged, then a good one."""
    ck = tmp_path / "models" / "checkpoints"
    ck.mkdir(parents=True)
    save_tensors(ck / "aa-broken.safetensors", _changed(ldm, UNET_OUT, _nan_at))
    raw_safetensors(ck / "ab-metadata.safetensors", {"a": torch.zeros(4)}, 5)
    shutil.copy(tiny_home / "models" / "checkpoints" / "tiny-sd1.safetensors", ck / "tiny-sd1.safetensors")
    return tmp_path


def _skips(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.getMessage().startswith("skipping checkpoint")]


def test_default_model_skips_damaged_files_with_a_warning(startup_home, caplog):
    with caplog.at_level(logging.WARNING):
        loaded = Engine(startup_home, device="cpu").load()
    assert loaded.path.name == "tiny-sd1.safetensors"
    skipped = _skips(caplog)
    assert len(skipped) == 2
    assert skipped[0].startswith("skipping checkpoint aa-broken.safetensors: ") and "contains NaN" in skipped[0]
    assert skipped[1].startswith("skipping checkpoint ab-metadata.safetensors: ") and "malformed metadata" in skipped[1]
    with pytest.raises(ModelFileError, match="^aa-broken.safetensors: model.diffusion_model.out.2.weight contains NaN"):
        Engine(startup_home, device="cpu").load("aa-broken")  # named explicitly: still an error


def test_a_damaged_remembered_model_falls_back(startup_home, caplog):
    from brushwork.catalog import remember_last_model

    ck = startup_home / "models" / "checkpoints"
    (ck / "aa-broken.safetensors").unlink()
    (ck / "ab-metadata.safetensors").unlink()
    zz = truncated(shutil.copy(ck / "tiny-sd1.safetensors", ck / "zz-last.safetensors"), 100_000)
    remember_last_model(DataHome(startup_home), zz)
    with caplog.at_level(logging.WARNING):
        assert Engine(startup_home, device="cpu").load().path.name == "tiny-sd1.safetensors"
    assert [m.split(":")[0] for m in _skips(caplog)] == ["skipping checkpoint zz-last.safetensors"]


def test_only_damaged_files_fall_back_to_the_demo_model(tmp_path, caplog):
    ck = tmp_path / "models" / "checkpoints"
    ck.mkdir(parents=True)
    (ck / "broken.safetensors").write_bytes(b"")
    with caplog.at_level(logging.WARNING):
        loaded = Engine(tmp_path, device="cpu").load()
    assert loaded.path.name == "demo.safetensors"
    assert _skips(caplog) == ["skipping checkpoint broken.safetensors: broken.safetensors is only 0 bytes: it is empty or truncated. Download it again."]


def test_serve_and_generate_start_despite_a_damaged_file(startup_home, tmp_path, capsys):
    from brushwork.cli import main
    from brushwork.server import ServeOptions, build

    app, studio = build(ServeOptions(home=str(startup_home), device="cpu"))
    try:
        assert studio.engine.model.path.name == "tiny-sd1.safetensors"
    finally:
        studio.close()
        studio.store.close()
    out = tmp_path / "out"
    rc = main(["generate", "a ball", "--home", str(startup_home), "--steps", "1", "-W", "64", "-H", "64", "--sampler", "Euler", "--seed", "1", "--out", str(out), "--quiet", "--device", "cpu"])
    assert rc == 0 and len(list(out.glob("*.png"))) == 1
    capsys.readouterr()
    rc = main(["serve", "--home", str(startup_home), "--model", "ab-metadata", "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc != 0 and err.startswith("error: ab-metadata.safetensors has malformed metadata") and err.count("\n") == 1 and "Traceback" not in err


# ---------------------------------------------------------------- hash lookups


def test_an_unknown_hash_hashes_nothing_and_says_how_to_make_it_known(tiny_home, tmp_path, monkeypatch):
    import brushwork.hashing

    ck = tmp_path / "models" / "checkpoints"
    ck.mkdir(parents=True)
    target = Path(shutil.copy(tiny_home / "models" / "checkpoints" / "tiny-sd2.safetensors", ck / "unhashed.safetensors"))
    calls: list[Path] = []
    real = brushwork.hashing.sha256_file
    monkeypatch.setattr(brushwork.hashing, "sha256_file", lambda p, *a, **k: calls.append(Path(p)) or real(p, *a, **k))
    h = DataHome(tmp_path)
    for lookup in (find_listed_checkpoint, find_checkpoint):
        with pytest.raises(CheckpointNotFound) as info:
            lookup(h, "0123abcdef")
        assert calls == []  # the unhashed file was not read in full
        assert re.search("0123abcdef is a model hash: that hash is not known yet.*run `brushwork models`", str(info.value))
    real_hash = real(target)[:10]
    with pytest.raises(CheckpointNotFound, match="not known yet"):
        find_listed_checkpoint(h, real_hash)  # its own hash, not computed yet: still not hashed here
    assert calls == []
    summarize(h)  # what `brushwork models` does: hashes every file once
    assert find_listed_checkpoint(h, real_hash) == target and find_listed_checkpoint(h, real_hash.upper()) == target
