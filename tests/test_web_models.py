"""The studio's Models page in a real browser (headless Chromium via Playwright)
against a real ``brushwork serve`` on tiny checkpoints, pulling from a real local
server that answers like civitai: paste a model page URL, watch the download's
progress, find the model in the picker, save a model's defaults, switch models and
see each model's defaults applied.  Skipped with a reason when Playwright or
Chromium is missing."""
from __future__ import annotations

import io
import shutil

import pytest

from fake_model_servers import CivitaiFile, CivitaiModel, CivitaiVersion, FakeCivitai, jpeg
from test_web_studio import CHROMIUM, browser, playwright, pytestmark, studio_page, unlabelled_controls  # noqa: F401 - fixture and skip marks shared

MODEL_ID, VERSION_ID = 4201, 130072


@pytest.fixture(scope="module")
def civitai(tiny_home):
    data = (tiny_home / "models" / "checkpoints" / "tiny-sd2.safetensors").read_bytes()  # another file than tiny-sd1 (saved defaults follow a hash)
    with FakeCivitai() as fake:
        fake.add(CivitaiModel(MODEL_ID, "Pulled Realism", "Checkpoint", [
            CivitaiVersion(VERSION_ID, "v1.0", [CivitaiFile(7, "pulledRealism_v10.safetensors", data)], base_model="SD 1.5", images=[jpeg()])]))
        fake.storage.blobs[f"model/{VERSION_ID}/7"].delay = 0.02  # slow enough to see progress
        yield fake


@pytest.fixture(scope="module")
def server(tiny_home, tmp_path_factory, civitai):
    from brushwork.server import ServeOptions, build, serve_in_thread

    mp = pytest.MonkeyPatch()
    mp.setenv("BRUSHWORK_CIVITAI_URL", civitai.url)
    home = tmp_path_factory.mktemp("web-models-home")
    shutil.copytree(tiny_home / "models", home / "models")
    app, studio = build(ServeOptions(home=str(home), model="tiny-sd1", device="cpu"))
    with serve_in_thread(app) as url:
        yield url, studio, home
    studio.close()
    studio.store.close()
    mp.undo()


@pytest.fixture
def page(browser, server):
    with studio_page(browser, server[0], {"pulls": "/api/v1/models/pull"}) as pg:
        yield pg


def test_paste_a_civitai_url_watch_it_arrive_save_defaults_and_switch(page, server):
    _, studio, home = server
    page.click("#models-open")
    page.wait_for_selector("#models-page[open]")
    page.wait_for_selector("#installed tbody tr")
    assert unlabelled_controls(page) == []
    page.fill("#pull-source", f"https://civitai.com/models/{MODEL_ID}/pulled-realism")
    page.click("#pull-start")
    # live progress: a bar with bytes of the total, then done with where it landed
    page.wait_for_selector("#downloads li[data-state=running] [role=progressbar]", timeout=20_000)
    page.wait_for_function("() => /of .*MB|of .*KB/.test(document.getElementById('downloads').textContent)", timeout=20_000)
    page.wait_for_selector("#downloads li[data-state=done]", timeout=60_000)
    assert "models/checkpoints/pulledRealism_v10.safetensors" in page.inner_text("#downloads")
    assert page.pulls == [{"source": f"https://civitai.com/models/{MODEL_ID}/pulled-realism", "kind": None, "token": None}]
    landed = home / "models" / "checkpoints" / "pulledRealism_v10.safetensors"
    assert landed.read_bytes() == (home / "models" / "checkpoints" / "tiny-sd2.safetensors").read_bytes()
    assert (home / "models" / "checkpoints" / "pulledRealism_v10.civitai.info").is_file()
    # the model is listed on the page and in the picker, without a reload
    page.wait_for_selector("#installed tr[data-name=pulledRealism_v10]")
    page.wait_for_function("() => [...document.getElementById('model').options].some(o => o.value === 'pulledRealism_v10')")
    page.click("#models-close")

    # this model's own defaults: saved from the form ...
    page.locator("#steps").fill("3")
    page.locator("#cfg_scale").fill("4.5")
    page.fill("#clip_skip", "2")
    page.click("#save-defaults")
    page.wait_for_function("() => document.getElementById('defaults-status').textContent.includes('Saved for tiny-sd1')")
    assert "3 steps" in page.inner_text("#defaults-status") and "CFG 4.5" in page.inner_text("#defaults-status")
    # ... another model starts from its own (family) defaults ...
    page.select_option("#model", "pulledRealism_v10")
    page.wait_for_function("() => document.getElementById('model-status').textContent.includes('pulledRealism_v10 loaded')", timeout=60_000)
    family_steps = page.input_value("#steps")
    assert family_steps != "3" and page.input_value("#clip_skip") == "1"
    # ... and switching back brings the saved ones again
    page.select_option("#model", "tiny-sd1")
    page.wait_for_function("() => document.getElementById('model-status').textContent.includes('tiny-sd1 loaded')", timeout=60_000)
    assert (page.input_value("#steps"), page.input_value("#cfg_scale"), page.input_value("#clip_skip")) == ("3", "4.5", "2")
    # the Models page shows them against the model
    page.click("#models-open")
    page.wait_for_function("() => (document.querySelector('#installed tr[data-name=\"tiny-sd1\"] td.defaults')?.textContent || '').includes('steps 3')")
    page.click("#models-close")


def test_remove_asks_first_and_a_bad_source_says_what_is_accepted(page, server):
    _, studio, home = server
    extra = home / "models" / "checkpoints" / "spare.safetensors"
    shutil.copy(home / "models" / "checkpoints" / "tiny-sd2.safetensors", extra)
    page.click("#models-open")
    page.wait_for_selector("#installed tr[data-name=spare]")
    page.once("dialog", lambda d: d.dismiss())  # "Cancel" keeps it
    page.click("#installed tr[data-name=spare] button.remove")
    page.wait_for_timeout(300)
    assert extra.is_file()
    page.once("dialog", lambda d: d.accept())
    page.click("#installed tr[data-name=spare] button.remove")
    page.wait_for_selector("#installed tr[data-name=spare]", state="detached")
    assert not extra.exists() and list((home / "trash").rglob("spare.safetensors"))
    page.fill("#pull-source", "not a model link")
    page.click("#pull-start")
    page.wait_for_function("() => document.getElementById('pull-error').textContent.includes('hf://')")
    assert "civitai" in page.inner_text("#pull-error").lower() and page.input_value("#pull-source") == "not a model link"
