"""Loading checkpoint files through the same code path real civitai files use."""
import os
import socket
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from brushwork import Engine, GenerationRequest
from brushwork.catalog import find_checkpoint
from brushwork.models import families, save
from brushwork.models.errors import CheckpointNotFound, CorruptCheckpoint, ModelFileError, UnsafePickle, UnsupportedModel
from brushwork.paths import DataHome

SPEC = families.tiny("sd1")


@pytest.fixture(scope="module")
def nets():
    return save.random_networks(SPEC, seed=0)


@pytest.fixture(scope="module")
def ldm(nets):
    return save.ldm_state_dict(SPEC, nets)


def load_unet_weight(path: Path, use_ema=False):
    eng = Engine(path.parent, device="cpu", use_ema=use_ema)
    m = eng.load(str(path))
    return m, m.networks.unet.conv_in.weight.detach().clone()


def test_sockets_are_blocked_and_every_family_still_loads(tiny_home):
    with pytest.raises(RuntimeError, match="tried to connect"):
        socket.create_connection(("huggingface.co", 443))
    with pytest.raises(RuntimeError, match="tried to connect"):
        socket.socket().connect(("10.255.255.1", 9))
    for fam, label in [("sd1", "SD 1.x"), ("sd2", "SD 2.x (v-prediction)"), ("sdxl", "SDXL")]:
        eng = Engine(tiny_home, device="cpu")
        assert eng.load(f"tiny-{fam}").spec.label == label


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_fp32_fp16_bf16_files_load_to_the_same_weights(tmp_path, nets, dtype):
    path = save.save_checkpoint(tmp_path / f"m-{dtype}.safetensors", SPEC, nets, dtype=dtype)
    m, w = load_unet_weight(path)
    assert w.dtype == torch.float32
    assert torch.equal(w, nets.unet.conv_in.weight.to(dtype).float())
    assert m.networks.text_encoders[0].dtype == torch.float32


def test_loaded_weights_match_diffusers_own_single_file_loader(tmp_path, nets):
    """An independent check of our key maps: diffusers converts the same file itself."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

    from brushwork.conditioning import tokenizer

    path = save.save_checkpoint(tmp_path / "m.safetensors", SPEC, nets, dtype=torch.float32)
    eng = Engine(tmp_path, device="cpu")
    m = eng.load(str(path))
    sched = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1)
    n = m.networks
    StableDiffusionPipeline(n.vae, n.text_encoders[0], tokenizer(), n.unet, sched, None, None, requires_safety_checker=False).save_pretrained(tmp_path / "cfg")
    ref = StableDiffusionPipeline.from_single_file(str(path), config=str(tmp_path / "cfg"), local_files_only=True, safety_checker=None, feature_extractor=None)
    for mine, theirs in [(n.unet, ref.unet), (n.vae, ref.vae), (n.text_encoders[0], ref.text_encoder)]:
        a, b = mine.state_dict(), theirs.state_dict()
        keys = {k for k in a if not k.endswith("position_ids")}
        assert keys == {k for k in b if not k.endswith("position_ids")}
        for k in keys:
            assert torch.equal(a[k], b[k]), k


def test_safetensors_is_read_lazily_from_a_memory_map(tmp_path, nets, monkeypatch):
    """No second whole-file copy: tensors are fetched one at a time."""
    from brushwork.models import files

    path = save.save_checkpoint(tmp_path / "m.safetensors", SPEC, nets)
    reads = []
    real_open = files.open_safetensors

    def counting_open(p):
        tf = real_open(p)
        inner = tf._read
        tf._read = lambda name, dtype: reads.append(name) or inner(name, dtype)
        return tf

    monkeypatch.setattr(files, "open_safetensors", counting_open)
    load_unet_weight(path)
    header, _, _ = files.read_safetensors_header(path)
    assert len(reads) == len(set(reads))  # each tensor read once
    assert len(reads) <= len(header)


def test_legacy_ckpt_loads_like_safetensors(tmp_path, ldm, nets):
    path = tmp_path / "legacy.ckpt"
    torch.save({"state_dict": dict(ldm), "global_step": 470000}, path)
    _, w = load_unet_weight(path)
    assert torch.equal(w, nets.unet.conv_in.weight)


class TrainingCallback:  # stands in for a pickled Lightning object in old .ckpt files
    def __init__(self):
        self.best = 0.5


def test_ckpt_with_pickled_training_objects_loads_without_them(tmp_path, ldm, nets):
    path = tmp_path / "lightning.ckpt"
    torch.save({"state_dict": dict(ldm), "callbacks": {"cb": TrainingCallback()}}, path)
    _, w = load_unet_weight(path)
    assert torch.equal(w, nets.unet.conv_in.weight)


class Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_ckpt_that_runs_code_is_refused_and_nothing_runs(tmp_path, ldm):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": dict(ldm), "x": Exploit(marker)}, path)
    with pytest.raises(UnsafePickle, match="asks to call .*system"):
        Engine(tmp_path, device="cpu").load(str(path))
    assert not marker.exists()


def test_ema_layout_uses_main_weights_by_default_and_ema_on_request(tmp_path, ldm, nets):
    from brushwork.models.convert import ema_key

    state = dict(ldm)
    ema = {ema_key(k): v + 1.0 for k, v in ldm.items() if k.startswith("model.diffusion_model.")}
    state.update(ema)
    state["model_ema.decay"] = torch.tensor(0.9999)
    state["model_ema.num_updates"] = torch.tensor(1000, dtype=torch.int32)
    path = tmp_path / "full-ema.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    m, w = load_unet_weight(path)
    assert m.spec.ema
    assert torch.equal(w, nets.unet.conv_in.weight)
    _, w_ema = load_unet_weight(path, use_ema=True)
    assert torch.equal(w_ema, nets.unet.conv_in.weight + 1.0)


def test_ema_request_on_a_file_without_ema_is_explained(tiny_home):
    with pytest.raises(CorruptCheckpoint, match="has no EMA weights"):
        Engine(tiny_home, device="cpu", use_ema=True).load("tiny-sd1")


def test_truncated_checkpoint(tmp_path, nets):
    path = save.save_checkpoint(tmp_path / "full.safetensors", SPEC, nets)
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CorruptCheckpoint, match="truncated.*download it again"):
        Engine(tmp_path, device="cpu").load(str(cut))


def test_truncated_ckpt(tmp_path, ldm):
    path = tmp_path / "full.ckpt"
    torch.save({"state_dict": dict(ldm)}, path)
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CorruptCheckpoint, match="truncated or damaged"):
        Engine(tmp_path, device="cpu").load(str(cut))


@pytest.mark.parametrize("content", [b"", b"\x00" * 4, b"hello world, not a model at all" * 10, b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}xxxxxx"])
def test_corrupt_safetensors(tmp_path, content):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(CorruptCheckpoint, match="(truncated|damaged|empty|not a valid|not a model file)"):
        Engine(tmp_path, device="cpu").load(str(path))


def test_non_checkpoint_safetensors(tmp_path):
    path = tmp_path / "random.safetensors"
    save_file({"weight": torch.zeros(3, 3), "bias": torch.zeros(3)}, str(path))
    with pytest.raises(UnsupportedModel, match="random.safetensors: no Stable Diffusion UNet"):
        Engine(tmp_path, device="cpu").load(str(path))


def test_missing_checkpoint_names_the_alternatives(tiny_home):
    with pytest.raises(CheckpointNotFound, match="No checkpoint called 'tiny-sd3'.*Did you mean.*tiny-sd1"):
        find_checkpoint(DataHome(tiny_home), "tiny-sd3")
    with pytest.raises(ModelFileError, match="No checkpoint called"):
        Engine(tiny_home, device="cpu").load("/nonexistent/model.safetensors")


def test_lookup_by_file_name_stem_path_and_hash(tiny_home):
    from brushwork.hashing import legacy_model_hash, sha256_file

    from brushwork.catalog import summarize

    home = DataHome(tiny_home)
    target = tiny_home / "models" / "checkpoints" / "tiny-sd2.safetensors"
    summarize(home)  # lookups by hash use known hashes only; listing (brushwork models) computes them
    for q in ["tiny-sd2", "tiny-sd2.safetensors", "TINY-SD2", str(target), sha256_file(target)[:10], sha256_file(target), legacy_model_hash(target)]:
        assert find_checkpoint(home, q) == target, q


def test_a1111_folder_name_is_accepted(tmp_path, nets):
    save.save_checkpoint(tmp_path / "models" / "Stable-diffusion" / "sub" / "mine.safetensors", SPEC, nets)
    assert find_checkpoint(DataHome(tmp_path), "sub/mine").name == "mine.safetensors"


def test_no_checkpoint_at_all_says_how_to_add_one(tmp_path, monkeypatch):
    import brushwork.catalog

    monkeypatch.setattr(brushwork.catalog, "PACKAGED_DEMO", tmp_path / "no-demo.safetensors")
    with pytest.raises(CheckpointNotFound, match="Put one into .*models/checkpoints"):
        Engine(tmp_path, device="cpu").txt2img(GenerationRequest("x"))


def test_model_switch_releases_and_replaces(tiny_home):
    eng = Engine(tiny_home, device="cpu")
    a = eng.load("tiny-sd1")
    assert eng.load("tiny-sd1") is a  # already loaded: kept
    b = eng.load("tiny-sdxl")
    assert b.spec.family == "sdxl" and eng.model is b
