"""Choosing the VAE (A1111's sd_vae): Automatic, None or a file of models/vae. The
picture is decoded by the VAE chosen, says so in its infotext, and --from, the
native API, the A1111 API and the compare grid's VAE axis all reach it."""
from __future__ import annotations


import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from brushwork import Engine
from brushwork.engine import GenerationRequest
from brushwork.models import families, save
from brushwork.paths import DataHome
from brushwork.vae_select import VaeNotFound, automatic_vae, check_vae_name, resolve_vae, vae_names


def write_vae(path, seed: int):
    """An original-layout VAE file with weights of its own (another random VAE)."""
    spec = families.tiny("sd1")
    nets = save.random_networks(spec, seed=seed)
    tmp = path.parent / f".tmp-{seed}.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    save.save_checkpoint(tmp, spec, nets, dtype=torch.float32, overwrite=True)
    tensors = {k[len("first_stage_model."):]: v for k, v in load_file(str(tmp)).items() if k.startswith("first_stage_model.")}
    tmp.unlink()
    save_file(tensors, str(path))
    return path


@pytest.fixture
def vae_home(home):
    write_vae(home / "models" / "vae" / "other.safetensors", seed=7)
    return home


def pixels(img):
    return np.asarray(img.image, dtype=np.int16)


def generate(engine, **kw):
    return engine.txt2img(GenerationRequest(prompt="a cat", seed=3, steps=2, width=64, height=64, **kw))[0]


def test_names_and_automatic(vae_home):
    h = DataHome.resolve(vae_home)
    ckpt = h.checkpoint_dirs[0] / "tiny-sd1.safetensors"
    assert vae_names(h) == ["Automatic", "None", "other.safetensors"]
    assert resolve_vae(h, None, ckpt) is None and resolve_vae(h, "None", ckpt) is None
    assert resolve_vae(h, "other", ckpt).name == "other.safetensors" == resolve_vae(h, "OTHER.safetensors", ckpt).name
    # Automatic: a VAE made for the checkpoint (STEM.vae.* beside it, or STEM in models/vae)
    beside = write_vae(ckpt.with_name("tiny-sd1.vae.safetensors"), seed=8)
    assert automatic_vae(h, ckpt) == beside and resolve_vae(h, "Automatic", ckpt) == beside
    beside.unlink()
    named = write_vae(h.vae_dirs[0] / "tiny-sd1.safetensors", seed=9)
    assert resolve_vae(h, None, ckpt) == named
    with pytest.raises(VaeNotFound, match="other.safetensors") as err:
        check_vae_name(h, "othr")
    assert "Did you mean" in str(err.value) and "Automatic" in str(err.value)


def test_a_vae_file_decodes_and_is_named_in_the_infotext(vae_home):
    engine = Engine(vae_home, device="cpu")
    engine.load("tiny-sd1")
    own = generate(engine)
    assert "VAE" not in own.params.extra and "VAE: " not in own.infotext
    other = generate(engine, vae="other.safetensors")
    assert np.abs(pixels(own) - pixels(other)).max() > 10  # another decoder, another picture
    sha = __import__("hashlib").sha256((vae_home / "models" / "vae" / "other.safetensors").read_bytes()).hexdigest()
    assert f"Model: tiny-sd1, VAE hash: {sha[:10]}, VAE: other.safetensors" in other.infotext
    # back to the checkpoint's own: bit for bit the first picture
    again = generate(engine, vae="None")
    assert np.array_equal(pixels(own), pixels(again)) and "VAE" not in again.params.extra
    # the same file again: the same picture
    assert np.array_equal(pixels(other), pixels(generate(engine, vae="other")))
    with pytest.raises(VaeNotFound):
        engine.complete(GenerationRequest(prompt="x", vae="missing.safetensors"))


def test_from_a_picture_picks_its_vae_again(vae_home, tmp_path):
    from brushwork.cli import main

    out = tmp_path / "out"
    assert main(["generate", "a cat", "--home", str(vae_home), "--model", "tiny-sd1", "--seed", "5", "--steps", "2", "--width", "64", "--height", "64", "--vae", "other", "--out", str(out), "--device", "cpu", "--quiet"]) == 0
    first = sorted(out.glob("*.png"))[0]
    again = tmp_path / "again"
    assert main(["generate", "--from", str(first), "--home", str(vae_home), "--out", str(again), "--device", "cpu", "--quiet"]) == 0
    from PIL import Image

    a, b = (np.asarray(Image.open(p)) for p in (first, sorted(again.glob("*.png"))[0]))
    assert np.array_equal(a, b)
    assert "VAE: other.safetensors" in Image.open(sorted(again.glob("*.png"))[0]).text["parameters"]
    assert main(["generate", "a cat", "--home", str(vae_home), "--vae", "nope", "--out", str(out), "--device", "cpu"]) != 0


def test_the_apis_and_the_compare_axis(vae_home):
    from fastapi.testclient import TestClient

    from brushwork.server import ServeOptions, build

    app, studio = build(ServeOptions(home=str(vae_home), model="tiny-sd1", device="cpu"))
    try:
        c = TestClient(app, headers={"host": "127.0.0.1"})
        assert c.get("/sdapi/v1/sd-vae").json() == [{"model_name": "other.safetensors", "filename": "models/vae/other.safetensors"}]
        r = c.post("/api/v1/jobs", json={"prompt": "a cat", "vae": "nope"})
        assert r.status_code == 400 and r.json()["field"] == "vae" and "other.safetensors" in r.json()["detail"]
        r = c.post("/sdapi/v1/txt2img", json={"prompt": "a cat", "steps": 2, "width": 64, "height": 64, "seed": 1, "override_settings": {"sd_vae": "other.safetensors"}})
        assert r.status_code == 200, r.text
        info = __import__("json").loads(r.json()["info"])
        assert info["sd_vae_name"] == "other.safetensors" and len(info["sd_vae_hash"]) == 10
        assert c.post("/sdapi/v1/options", json={"sd_vae": "nope"}).status_code == 400
        assert c.post("/sdapi/v1/options", json={"sd_vae": "None"}).status_code == 200
        assert c.get("/sdapi/v1/options").json()["sd_vae"] == "None"
        job = c.post("/api/v1/compare", json={"prompt": "a cat", "steps": 2, "width": 64, "height": 64, "seed": 2, "x": "VAE: None, other.safetensors"}).json()
        done = studio.wait(job["id"], timeout=120)
        assert done.state == "done", done.error
        texts = [im["infotext"] for im in c.get(f"/api/v1/jobs/{job['id']}").json()["images"] if not im["grid"]]
        assert len(texts) == 2 and "VAE:" not in texts[0] and "VAE: other.safetensors" in texts[1]
        r = c.post("/api/v1/compare", json={"prompt": "a cat", "x": "VAE: None, nope"})
        assert r.status_code == 400 and r.json()["field"] == "x"
    finally:
        studio.close()
        studio.store.close()
