"""The demo-model training command, on a few steps (the real run takes minutes to hours)."""
import json

import pytest
import torch

from brushwork import Engine, GenerationRequest
from brushwork.demo import train
from brushwork.models.files import read_safetensors_header

def same_weights(a, b) -> bool:
    """Tensor-for-tensor equality (the metadata records wall-clock minutes, so bytes differ)."""
    from safetensors.torch import load_file

    ta, tb = load_file(str(a)), load_file(str(b))
    return ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


TINY = train.TrainConfig(images=24, vae_steps=3, unet_steps=3, decoder_steps=2, warmup=1, vae_batch=4, unet_batch=4, decoder_batch=2)


def test_training_writes_an_original_layout_checkpoint_that_loads(tmp_path):
    out = train.run(TINY, tmp_path / "demo.safetensors", tmp_path / "state")
    tensors, meta, _ = read_safetensors_header(out)
    assert {t.dtype for t in tensors.values()} == {"F16"}
    assert "model.diffusion_model.input_blocks.0.0.weight" in tensors and "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight" in tensors
    assert meta["modelspec.resolution"] == "128x128" and json.loads(meta["brushwork.defaults"])["steps"] == 20
    assert json.loads(meta["brushwork.training"])["config"]["unet_steps"] == 3
    eng = Engine(tmp_path, device="cpu")
    m = eng.load(str(out))
    assert m.spec.vae.scaling_factor == pytest.approx(float(meta["brushwork.vae_scaling_factor"]))
    (img,) = eng.txt2img(GenerationRequest("night, mountains", seed=1))
    assert img.image.size == (128, 128)
    with pytest.raises(FileExistsError, match="--overwrite"):
        train.run(TINY, out, tmp_path / "state")


def test_same_seed_same_weights(tmp_path):
    a = train.run(TINY, tmp_path / "a.safetensors", tmp_path / "sa")
    b = train.run(TINY, tmp_path / "b.safetensors", tmp_path / "sb")
    assert same_weights(a, b)


def test_an_interrupted_run_resumes_where_it_stopped(tmp_path):
    full = train.run(TINY, tmp_path / "full.safetensors", tmp_path / "s-full")
    # stop after the VAE stage: its saved state is what a killed run leaves behind
    trainer = train.Trainer(TINY, tmp_path / "s-cut", torch.device("cpu"))
    pixels, _ = train.render_dataset(TINY)
    trainer.train_vae(pixels)
    assert trainer.state_path.exists()
    del trainer
    resumed = train.run(TINY, tmp_path / "resumed.safetensors", tmp_path / "s-cut")
    assert same_weights(resumed, full)


def test_cli_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "x.safetensors"
    out.write_bytes(b"keep me")
    assert train.main(["--out", str(out), "--state-dir", str(tmp_path / "s"), "--unet-steps", "1", "--vae-steps", "1", "--images", "8"]) == 2
    assert out.read_bytes() == b"keep me"
    assert "already exists" in capsys.readouterr().err
