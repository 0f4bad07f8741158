"""brushwork pull against real local servers that answer like civitai, Hugging Face and file hosts.

Every SOURCE form lands in its kind's folder with its sidecar files; tokens reach
the service host only; names never overwrite other files; the starter list, the
CLI output, and the sidecars read back (LoRA listing).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

import fake_model_servers as fake
from brushwork.fetch import (
    PullError,
    SourceNotFound,
    TokenNeeded,
    cli as pull_cli,
    download,
    model_info,
    pull,
    resolve,
    starter_list,
    starter_status,
)
from brushwork.fetch.sources import parse_source
from brushwork.paths import DataHome

CIVITAI_KEY = "good-civitai-key"
HF_KEY = "hf_good"


@pytest.fixture
def net(monkeypatch):
    civitai, hf, files = fake.FakeCivitai((CIVITAI_KEY,)), fake.FakeHF((HF_KEY,)), fake.FileServer()
    monkeypatch.setenv("BRUSHWORK_CIVITAI_URL", civitai.url)
    monkeypatch.setenv("HF_ENDPOINT", hf.url)
    for name in ("CIVITAI_TOKEN", "HF_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(download, "RETRY_WAIT", 0.01)
    yield SimpleNamespace(civitai=civitai, hf=hf, files=files)
    for server in (civitai, hf, files):
        server.close()


@pytest.fixture
def dh(tmp_path) -> DataHome:
    return DataHome(tmp_path / "home")


@pytest.fixture(scope="module")
def lora_bytes() -> bytes:
    return fake.tiny_lora(seed=1)


@pytest.fixture(scope="module")
def ckpt_bytes(tiny_home) -> bytes:
    return (tiny_home / "models" / "checkpoints" / "tiny-sd1.safetensors").read_bytes()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def add_detail_tweaker(net, data: bytes, **version) -> fake.CivitaiModel:
    v = fake.CivitaiVersion(62833, "v1.0", [fake.CivitaiFile(901, "add_detail.safetensors", data)],
                            trained_words=["detailed", "intricate details"], images=[fake.jpeg()], **version)
    old = fake.CivitaiVersion(11111, "v0.9", [fake.CivitaiFile(900, "add_detail_old.safetensors", b"old")])
    return net.civitai.add(fake.CivitaiModel(58390, "Detail Tweaker LoRA", "LORA", [v, old]))


def listing(home: DataHome) -> list[str]:
    root = Path(home.root)
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and "cache" not in p.parts)


# ---------------------------------------------------------------- each SOURCE form


def test_civitai_model_page_latest_version_lands_in_loras_with_sidecars(net, dh, lora_bytes):
    add_detail_tweaker(net, lora_bytes)
    result = pull(dh, "https://civitai.com/models/58390/detail-tweaker-lora")
    assert result.path == dh.lora_dirs[0] / "add_detail.safetensors"
    assert result.path.read_bytes() == lora_bytes
    assert (result.kind, result.sha256, result.size) == ("lora", sha(lora_bytes), len(lora_bytes))
    assert not result.already_installed and not result.renamed_from_clash and result.resumed_from == 0
    assert sorted(p.name for p in result.sidecars) == ["add_detail.civitai.info", "add_detail.json", "add_detail.preview.png"]
    info = json.loads((dh.lora_dirs[0] / "add_detail.civitai.info").read_text())
    assert info["id"] == 62833 and info["model"]["type"] == "LORA"  # the model-version JSON, as the Civitai Helper keeps it
    user = json.loads((dh.lora_dirs[0] / "add_detail.json").read_text())
    assert user["activation text"] == "detailed, intricate details" and user["sd version"] == "SD1"
    assert "preferred weight" not in user  # civitai sends no recommended weight
    with Image.open(dh.lora_dirs[0] / "add_detail.preview.png") as im:
        assert im.format == "PNG" and im.size == (16, 12)
    # nothing left behind in downloads/, nothing anywhere else
    assert listing(dh) == ["models/loras/add_detail.civitai.info", "models/loras/add_detail.json",
                           "models/loras/add_detail.preview.png", "models/loras/add_detail.safetensors"]


def test_civitai_version_url_and_checkpoint_folder(net, dh, ckpt_bytes):
    v = fake.CivitaiVersion(348913, "v9", [fake.CivitaiFile(7, "juggernautXL_v9.safetensors", ckpt_bytes)], base_model="SDXL 1.0")
    net.civitai.add(fake.CivitaiModel(133005, "Juggernaut XL", "Checkpoint", [fake.CivitaiVersion(400000, "v10", [fake.CivitaiFile(8, "v10.safetensors", b"x")]), v]))
    result = pull(dh, "https://civitai.com/models/133005/juggernaut-xl?modelVersionId=348913")
    assert result.path == dh.checkpoint_dirs[0] / "juggernautXL_v9.safetensors" and result.kind == "checkpoint"
    assert not net.civitai.requests(path_start="/api/v1/models/")  # a named version needs no model lookup
    assert sorted(p.name for p in result.sidecars) == ["juggernautXL_v9.civitai.info", "juggernautXL_v9.json"]  # no pictures: no preview


def test_civitai_download_link_picks_the_file_its_query_names(net, dh, lora_bytes):
    files = [fake.CivitaiFile(1, "tweak.pt", b"pickle bytes", format="PickleTensor", primary=True),
             fake.CivitaiFile(2, "tweak.safetensors", lora_bytes, format="SafeTensor", primary=False)]
    net.civitai.add(fake.CivitaiModel(5, "Tweak", "LoCon", [fake.CivitaiVersion(55, "v1", files)]))
    result = pull(dh, "https://civitai.com/api/download/models/55?type=Model&format=SafeTensor")
    assert result.path == dh.lora_dirs[0] / "tweak.safetensors" and result.sha256 == sha(lora_bytes)
    assert sorted(p.name for p in result.sidecars) == ["tweak.civitai.info", "tweak.json"]
    assert json.loads(result.sidecars[0].read_text())["files"][1]["name"] == "tweak.safetensors"


def test_civitai_air_forms_and_embeddings_folder(net, dh):
    emb = fake.tiny_embedding()
    net.civitai.add(fake.CivitaiModel(7728, "negative_hand", "TextualInversion", [fake.CivitaiVersion(8, "v1", [fake.CivitaiFile(3, "negative_hand.safetensors", emb)])]))
    result = pull(dh, "urn:air:sd1:embedding:civitai:7728@8")
    assert result.path == dh.embedding_dirs[0] / "negative_hand.safetensors" and result.kind == "embedding"
    assert sorted(p.name for p in result.sidecars) == ["negative_hand.civitai.info", "negative_hand.json"]
    again = pull(dh, "civitai:7728")  # short form, latest version: the same file
    assert again.already_installed and again.path == result.path


def test_hugging_face_blob_url_kind_from_the_header_only(net, dh, lora_bytes):
    net.hf.add("someone/loras", fake.HFRepo({"styles/balloon.safetensors": fake.HFFile(lora_bytes)}))
    plan = resolve("https://huggingface.co/someone/loras/blob/main/styles/balloon.safetensors")
    assert (plan.kind, plan.family, plan.sha256, plan.size) == ("lora", "sd1", sha(lora_bytes), len(lora_bytes))
    cdn = net.hf.cdn.requests("GET")
    assert len(cdn) == 1 and cdn[0].headers["range"] == "bytes=0-65535"  # only the header was read
    result = pull(dh, "https://huggingface.co/someone/loras/blob/main/styles/balloon.safetensors")
    assert result.path == dh.lora_dirs[0] / "balloon.safetensors" and result.sha256 == sha(lora_bytes)
    assert [p.name for p in result.sidecars] == ["balloon.json"]
    # the download asked for the commit the resolve endpoint named (no mixing of versions)
    commit = net.hf.repos["someone/loras"].commit
    hub_gets = net.hf.requests("GET", "/someone/loras/resolve/")
    assert hub_gets[-1].path == f"/someone/loras/resolve/{commit}/styles/balloon.safetensors"
    user = json.loads((dh.lora_dirs[0] / "balloon.json").read_text())
    assert user["sd version"] == "SD1" and user["notes"].endswith("/someone/loras/blob/main/styles/balloon.safetensors")


def test_hf_scheme_with_revision_and_a_small_git_file(net, dh):
    vae = fake.tiny_vae()
    net.hf.add("madebyollin/sdxl-vae-fp16-fix", fake.HFRepo({"sdxl_vae.safetensors": fake.HFFile(vae, lfs=False)}, revisions=("main", "v1")))
    plan = resolve("hf://madebyollin/sdxl-vae-fp16-fix@v1/sdxl_vae.safetensors")
    assert plan.sha256 is None  # a git file's ETag is a sha1, not a sha256: nothing to pin
    result = pull(dh, "hf://madebyollin/sdxl-vae-fp16-fix@v1/sdxl_vae.safetensors")
    assert result.path == dh.vae_dirs[0] / "sdxl_vae.safetensors" and result.sha256 == sha(vae)
    assert [p.name for p in result.sidecars] == ["sdxl_vae.json"]


def test_plain_url_name_from_content_disposition_and_kind_from_header(net, dh, ckpt_bytes):
    url = net.files.add("get/12345", ckpt_bytes, disposition='attachment; filename="../../my model.safetensors"')
    result = pull(dh, url)
    assert result.path == dh.checkpoint_dirs[0] / "my model.safetensors"  # sanitized: no path parts
    assert result.kind == "checkpoint" and result.family == "sd1"
    assert [p.name for p in result.sidecars] == ["my model.json"]
    assert json.loads((dh.checkpoint_dirs[0] / "my model.json").read_text())["notes"].endswith("/get/12345")


def test_plain_url_kind_override_and_non_safetensors_needs_kind(net, dh):
    url = net.files.add("RealESRGAN_x4plus.pth", b"\x80\x02not a safetensors file" * 100)
    with pytest.raises(PullError, match="--kind"):
        pull(dh, url)
    result = pull(dh, url, kind="upscaler")
    assert result.path == dh.upscaler_dirs[0] / "RealESRGAN_x4plus.pth"


def test_starter_name_pulls_its_source_with_the_pinned_hash(net, dh, lora_bytes, monkeypatch):
    from brushwork.fetch import starter_data

    net.hf.add("st/loras", fake.HFRepo({"s.safetensors": fake.HFFile(lora_bytes)}))
    entry = {"name": "test-lora", "label": "A test LoRA", "source": "hf://st/loras/s.safetensors", "file_name": "s.safetensors",
             "kind": "lora", "family": "sd1", "size": len(lora_bytes), "sha256": sha(lora_bytes)}
    monkeypatch.setattr(starter_data, "STARTERS", [entry])
    assert [(e, p) for e, p in starter_status(dh)] == [(starter_list()[0], None)]
    result = pull(dh, "test-lora")
    assert result.path == dh.lora_dirs[0] / "s.safetensors" and result.label == "A test LoRA"
    assert [p.name for p in result.sidecars] == ["s.json"]
    assert starter_status(dh)[0][1] == result.path
    lines = pull_cli.starter_lines(dh)
    assert lines[0].split() == ["NAME", "KIND", "FAMILY", "SIZE", "STATUS", "SOURCE"]
    assert "test-lora" in lines[1] and "installed" in lines[1] and "not installed" not in lines[1]


def test_starter_pin_that_the_source_contradicts_downloads_nothing(net, dh, lora_bytes, monkeypatch):
    from brushwork.fetch import HashMismatch, starter_data

    net.hf.add("st/loras", fake.HFRepo({"s.safetensors": fake.HFFile(lora_bytes)}))
    monkeypatch.setattr(starter_data, "STARTERS", [{"name": "pinned", "label": "x", "source": "hf://st/loras/s.safetensors", "file_name": "s.safetensors",
                                                   "kind": "lora", "family": "sd1", "size": 1, "sha256": "ab" * 32}])
    with pytest.raises(HashMismatch, match="ab" * 32):
        pull(dh, "pinned")
    assert not net.hf.cdn.requests("GET")


def test_shipped_starter_list_is_complete():
    entries = {e.name: e for e in starter_list()}
    assert {"sd15", "realistic-vision-6", "juggernaut-xl-9", "sdxl-vae-fp16-fix"} <= set(entries)
    assert sum(e.kind == "lora" for e in entries.values()) >= 2
    assert entries["sd15"].sha256 == "6ce0161689b3853acaa03779ec93eafe75a02f4ced659bee03f50797806fa2fa"
    assert entries["sd15"].size == 4265146304
    for e in entries.values():
        assert e.family in ("sd1", "sd2", "sdxl") and e.size > 0
        parse_source(e.source)  # every entry is a SOURCE pull accepts


# ---------------------------------------------------------------- tokens


def test_token_goes_to_the_api_host_and_never_to_storage(net, dh, lora_bytes):
    add_detail_tweaker(net, lora_bytes, login_required=True)
    result = pull(dh, "https://civitai.com/models/58390", token=CIVITAI_KEY)
    assert result.sha256 == sha(lora_bytes)
    api = net.civitai.requests()
    assert api and all(r.headers.get("authorization") == f"Bearer {CIVITAI_KEY}" for r in api)
    storage = net.civitai.storage.requests()
    assert storage and all("authorization" not in r.headers for r in storage)


def test_missing_civitai_token_names_the_env_var(net, dh, lora_bytes):
    add_detail_tweaker(net, lora_bytes, login_required=True)
    with pytest.raises(TokenNeeded) as err:
        pull(dh, "https://civitai.com/models/58390")
    msg = str(err.value)
    assert "CIVITAI_TOKEN" in msg and "https://civitai.com/user/account" in msg and "--token" in msg
    assert "logged in" in msg  # civitai's own explanation is passed on
    assert listing(dh) == []  # nothing was received, nothing is left


def test_refused_civitai_token_says_so_and_hides_it(net, dh, lora_bytes, monkeypatch):
    add_detail_tweaker(net, lora_bytes, login_required=True)
    monkeypatch.setenv("CIVITAI_TOKEN", "wrong-key-123")
    with pytest.raises(TokenNeeded) as err:
        pull(dh, "https://civitai.com/models/58390")
    assert "refused" in str(err.value) and "in CIVITAI_TOKEN" in str(err.value) and "wrong-key-123" not in str(err.value)


def test_civitai_login_page_redirect_is_a_token_message(net, dh, lora_bytes):
    add_detail_tweaker(net, lora_bytes, login_required=True, login_style="redirect")
    with pytest.raises(TokenNeeded, match="CIVITAI_TOKEN"):
        pull(dh, "https://civitai.com/models/58390")
    assert listing(dh) == []


def test_token_pasted_in_url_works_and_appears_nowhere(net, dh, lora_bytes, capsys):
    add_detail_tweaker(net, lora_bytes, login_required=True)
    code = pull_cli.cmd_pull(SimpleNamespace(home=str(dh.root), source=f"https://civitai.com/api/download/models/62833?token={CIVITAI_KEY}", token=None, kind=None))
    out = capsys.readouterr()
    assert code == 0, out.err
    assert CIVITAI_KEY not in out.out + out.err
    assert "use it as <lora:add_detail:0.8> in a prompt; trigger words: detailed, intricate details" in out.out
    for p in Path(dh.root).rglob("*"):
        if p.is_file():
            assert CIVITAI_KEY.encode() not in p.read_bytes(), p
    assert all(CIVITAI_KEY not in r.path for r in net.civitai.storage.requests())  # the token never reached storage


def test_hf_gated_repo_messages(net, dh, lora_bytes):
    net.hf.add("corp/gated", fake.HFRepo({"g.safetensors": fake.HFFile(lora_bytes)}, gated=True, granted=("hf_granted",)))
    net.hf.tokens.add("hf_granted")
    with pytest.raises(TokenNeeded) as err:
        pull(dh, "hf://corp/gated/g.safetensors")
    msg = str(err.value)
    assert "HF_TOKEN" in msg and "https://huggingface.co/settings/tokens" in msg and "https://huggingface.co/corp/gated" in msg
    with pytest.raises(TokenNeeded) as err:
        pull(dh, "hf://corp/gated/g.safetensors", token=HF_KEY)
    assert "accept its terms" in str(err.value) and HF_KEY not in str(err.value)
    result = pull(dh, "hf://corp/gated/g.safetensors", token="hf_granted")
    assert result.sha256 == sha(lora_bytes)
    assert all("authorization" not in r.headers for r in net.hf.cdn.requests())
    last_pull = net.hf.requests()[-3:]  # the successful pull: HEAD, the header's ranged GET, the download
    assert [r.method for r in last_pull] == ["HEAD", "GET", "GET"]
    assert all(r.headers.get("authorization") == "Bearer hf_granted" for r in last_pull)


def test_hf_missing_file_and_revision(net, dh):
    net.hf.add("o/r", fake.HFRepo({"a.safetensors": fake.HFFile(b"x")}))
    with pytest.raises(SourceNotFound, match="has no file b.safetensors"):
        resolve("hf://o/r/b.safetensors")
    with pytest.raises(SourceNotFound, match="no revision 'nope'"):
        resolve("hf://o/r@nope/a.safetensors")


def test_civitai_unknown_model_and_unusable_type(net, dh):
    with pytest.raises(SourceNotFound, match="HTTP 404"):
        resolve("https://civitai.com/models/424242")
    net.civitai.add(fake.CivitaiModel(9, "Poses", "Poses", [fake.CivitaiVersion(90, "v1", [fake.CivitaiFile(1, "p.zip", b"zip")])]))
    with pytest.raises(PullError, match="--kind"):
        resolve("civitai:9")


def test_version_by_hash(net, lora_bytes):
    from brushwork.fetch import civitai

    add_detail_tweaker(net, lora_bytes)
    version = civitai.version_by_hash(sha(lora_bytes))
    assert version["id"] == 62833 and version["files"][0]["hashes"]["SHA256"] == sha(lora_bytes).upper()


# ---------------------------------------------------------------- names


def test_same_name_different_file_is_never_overwritten(net, dh, lora_bytes):
    add_detail_tweaker(net, lora_bytes)
    folder = dh.lora_dirs[0]
    folder.mkdir(parents=True)
    (folder / "add_detail.safetensors").write_bytes(b"the user's own file")
    result = pull(dh, "https://civitai.com/models/58390")
    assert result.renamed_from_clash and result.path == folder / "add_detail-2.safetensors"
    assert (folder / "add_detail.safetensors").read_bytes() == b"the user's own file"
    assert result.path.read_bytes() == lora_bytes
    assert {p.name for p in result.sidecars} == {"add_detail-2.civitai.info", "add_detail-2.preview.png", "add_detail-2.json"}
    storage_before = len(net.civitai.storage.requests())
    again = pull(dh, "https://civitai.com/models/58390")
    assert again.already_installed and again.path == result.path
    assert len(net.civitai.storage.requests()) == storage_before  # nothing downloaded


def test_same_file_already_installed_downloads_nothing(net, dh, lora_bytes):
    add_detail_tweaker(net, lora_bytes)
    folder = dh.lora_dirs[0]
    folder.mkdir(parents=True)
    (folder / "add_detail.safetensors").write_bytes(lora_bytes)
    result = pull(dh, "https://civitai.com/models/58390")
    assert result.already_installed and not result.renamed_from_clash and result.path == folder / "add_detail.safetensors"
    assert not net.civitai.storage.requests(path_start="/files/model/")
    assert (folder / "add_detail.civitai.info").exists()  # missing sidecars are filled in


def test_unknown_hash_same_file_found_after_download(net, dh):
    data = fake.tiny_embedding(3)
    url = net.files.add("neg.safetensors", data)
    first = pull(dh, url)
    second = pull(dh, url)
    assert second.already_installed and second.path == first.path
    assert not (Path(dh.root) / "models" / "embeddings" / "neg-2.safetensors").exists()
    assert not list((Path(dh.root) / "downloads").glob("*"))


def test_existing_sidecars_are_never_overwritten(net, dh, lora_bytes):
    add_detail_tweaker(net, lora_bytes)
    folder = dh.lora_dirs[0]
    folder.mkdir(parents=True)
    (folder / "add_detail.json").write_text('{"activation text": "my words", "preferred weight": 0.6}')
    (folder / "add_detail.png").write_bytes(b"user preview")
    result = pull(dh, "https://civitai.com/models/58390")
    assert [p.name for p in result.sidecars] == ["add_detail.civitai.info"]
    assert json.loads((folder / "add_detail.json").read_text()) == {"activation text": "my words", "preferred weight": 0.6}
    assert not (folder / "add_detail.preview.png").exists()


def test_failed_preview_does_not_fail_the_pull(net, dh, lora_bytes):
    model = add_detail_tweaker(net, lora_bytes)
    net.civitai.storage.blobs["images/62833-0.jpeg"].data = b"not an image"
    result = pull(dh, "https://civitai.com/models/58390")
    assert result.path.exists() and "add_detail.preview.png" not in [p.name for p in result.sidecars]
    assert model.versions[0].id == 62833


# ---------------------------------------------------------------- reading sidecars back


def test_model_info_and_lora_listing_read_the_sidecars(net, dh, lora_bytes):
    from brushwork.lora import summarize_loras

    add_detail_tweaker(net, lora_bytes)
    result = pull(dh, "https://civitai.com/models/58390")
    info = model_info(result.path)
    assert info.trigger_words == ["detailed", "intricate details"] and info.base_model == "SD 1.5"
    assert info.preview == result.path.with_name("add_detail.preview.png") and info.weight is None
    assert info.source_url == "https://civitai.com/models/58390?modelVersionId=62833"
    user = result.path.with_name("add_detail.json")
    data = json.loads(user.read_text())
    data["preferred weight"] = 0.7
    user.write_text(json.dumps(data))
    row = next(r for r in summarize_loras(dh) if r.name == "add_detail")
    assert row.triggers[:2] == ["detailed", "intricate details"] and "balloon" in row.triggers  # sidecar first, then the file's tags
    assert (row.base_model, row.weight, row.preview) == ("SD 1.5", 0.7, info.preview)


def test_model_info_without_sidecars():
    info = model_info(Path("/nonexistent/x.safetensors"))
    assert (info.trigger_words, info.base_model, info.weight, info.preview, info.source_url) == ([], None, None, None, None)


# ---------------------------------------------------------------- CLI and progress


def test_cli_prints_path_and_usage(net, dh, ckpt_bytes, capsys):
    url = net.files.add("tiny.safetensors", ckpt_bytes)
    code = pull_cli.cmd_pull(SimpleNamespace(home=str(dh.root), source=url, token=None, kind=None))
    out = capsys.readouterr()
    assert code == 0
    assert f"saved {dh.checkpoint_dirs[0] / 'tiny.safetensors'} (checkpoint, SD 1.x" in out.out
    assert 'use it with: brushwork generate "a prompt" --model tiny' in out.out
    code = pull_cli.cmd_pull(SimpleNamespace(home=str(dh.root), source="no such thing", token=None, kind=None))
    assert code == 1 and "Accepted forms" in capsys.readouterr().err


def test_add_pull_arguments():
    import argparse

    parser = argparse.ArgumentParser()
    pull_cli.add_pull_arguments(parser)
    args = parser.parse_args(["civitai:1", "--kind", "lora", "--token", "t"])
    assert (args.source, args.kind, args.token) == ("civitai:1", "lora", "t")


def test_progress_phases_and_throttling(net, dh, ckpt_bytes, monkeypatch):
    monkeypatch.setattr(download, "CHUNK", 16 << 10)  # many chunks for a small file
    url = net.files.add("tiny.safetensors", ckpt_bytes)
    seen = []
    pull(dh, url, progress=seen.append)
    phases = [p.phase for p in seen]
    assert phases[0] == "resolving" and phases[-1] == "done" and "downloading" in phases and "verifying" in phases
    chunks = len(ckpt_bytes) // (16 << 10)
    assert len(seen) < chunks / 4  # throttled, not one report per chunk
    last_dl = [p for p in seen if p.phase == "downloading"][-1]
    assert last_dl.file_name == "tiny.safetensors" and last_dl.total == len(ckpt_bytes)
    assert seen[-1].done == len(ckpt_bytes)
