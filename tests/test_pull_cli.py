"""`brushwork pull` and `brushwork models pull / --starter` through the real command
line (brushwork.cli.main), against a real local server answering like Hugging Face."""
from __future__ import annotations

import pytest

from brushwork.cli import main
from fake_model_servers import FakeHF, HFFile, HFRepo, tiny_lora


@pytest.fixture
def hf(monkeypatch):
    with FakeHF() as fake:
        monkeypatch.setenv("HF_ENDPOINT", fake.url)
        yield fake


def test_pull_and_models_pull_land_the_file_and_say_how_to_use_it(hf, tmp_path, capsys):
    home = tmp_path / "home"
    data = tiny_lora(seed=1)
    hf.add("ann/ink", HFRepo({"ink.safetensors": HFFile(data), "sub/wash.safetensors": HFFile(tiny_lora(seed=2))}))
    assert main(["pull", "hf://ann/ink/ink.safetensors", "--home", str(home)]) == 0
    out = capsys.readouterr().out
    assert (home / "models" / "loras" / "ink.safetensors").read_bytes() == data
    assert "<lora:ink:" in out and "models/loras/ink.safetensors" in out
    assert main(["models", "pull", f"{hf.url}/ann/ink/resolve/main/sub/wash.safetensors", "--home", str(home)]) == 0
    assert (home / "models" / "loras" / "wash.safetensors").is_file()
    # pulled again: already there, nothing downloaded twice
    before = len(hf.cdn.requests("GET"))
    assert main(["pull", "hf://ann/ink/ink.safetensors", "--home", str(home)]) == 0
    assert "nothing was downloaded" in capsys.readouterr().out
    # only the safetensors header was read again (to tell its kind), not the file
    assert all(r.headers.get("range", "").startswith("bytes=0-") and r.headers["range"] != "bytes=0-" for r in hf.cdn.requests("GET")[before:])


def test_models_starter_lists_the_shipped_models(tmp_path, capsys):
    assert main(["models", "--starter", "--home", str(tmp_path / "home")]) == 0
    out = capsys.readouterr().out
    assert "sd15" in out and "not installed" in out and "sdxl-vae-fp16-fix" in out


def test_a_bad_source_is_a_usage_error_listing_the_forms(tmp_path, capsys):
    assert main(["pull", "no such thing", "--home", str(tmp_path / "home")]) != 0
    assert "hf://" in capsys.readouterr().err
