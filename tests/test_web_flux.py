"""The web studio on a Flux.1 dev model in a real browser (headless Chromium, Playwright,
a real ``brushwork serve`` on the tiny Flux model): the form shows the Distilled CFG
scale and hides what does not apply to Flux, and Generate makes the picture with
Forge's infotext.  Skipped with a reason when Playwright or Chromium is missing."""
from __future__ import annotations

import pytest

from flux_home import make_flux_home
from test_web_studio import CHROMIUM, browser, generate_and_wait, pixels, playwright, pytestmark, studio_page, unlabelled_controls  # noqa: F401 - fixture and skip marks shared


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from brushwork.server import ServeOptions, build, serve_in_thread

    home = tmp_path_factory.mktemp("web-flux-home")
    make_flux_home(home)
    app, studio = build(ServeOptions(home=str(home), model="flux1-dev", device="cpu"))
    studio.engine.load("flux1-dev")  # the options then describe the loaded Flux model
    with serve_in_thread(app) as url:
        yield url, studio
    studio.close()
    studio.store.close()


def test_the_form_follows_flux_and_generates_with_distilled_guidance(browser, server):
    with studio_page(browser, server[0], {"jobs": "/api/v1/jobs"}) as page:
        page.wait_for_function("() => !document.getElementById('distilled-field').hidden", timeout=30_000)
        assert page.input_value("#distilled_cfg_scale") == "3.5" and page.input_value("#cfg_scale") == "1"
        assert page.input_value("#steps") == "20" and page.input_value("#sampler") == "Euler"
        assert page.is_hidden("#clip-skip-field") and page.is_hidden("#hires-fix") and page.is_hidden("#mode-img2img")
        assert [o for o in page.eval_on_selector_all("#sampler option", "els => els.map(e => e.value)")] == ["Euler", "Heun", "DPM++ 2M", "LMS"]
        assert unlabelled_controls(page) == []
        page.fill("#prompt", "a red sports car")
        page.fill("#width", "64")
        page.fill("#height", "64")
        page.fill("#steps", "3")
        page.fill("#seed", "11")
        page.fill("#distilled_cfg_scale", "2.5")
        page.dispatch_event("#distilled_cfg_scale", "input")
        shown = generate_and_wait(page)
        sent = page.jobs[-1]
        assert sent["distilled_cfg_scale"] == 2.5 and sent["clip_skip"] is None and "hires" not in sent
        assert "Distilled CFG Scale: 2.5" in shown["params"] and "Schedule type: Simple" in shown["params"]
        assert pixels(page, shown["src"]).shape == (64, 64, 3)
