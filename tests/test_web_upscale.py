"""The web studio's hires-fix section and its Upscale action in a real browser:
headless Chromium driven by Playwright against a real ``brushwork serve`` on the tiny
SD 1.x checkpoint (native size 64 px).  Skipped with a reason when Playwright or
Chromium is missing."""
from __future__ import annotations

import shutil

import pytest

from test_web_studio import CHROMIUM, browser, pixels, playwright, pytestmark, small_settings, studio_page, unlabelled_controls  # noqa: F401 - fixture and skip marks shared


@pytest.fixture(scope="module")
def server(tiny_home, tmp_path_factory):
    from brushwork.server import ServeOptions, build, serve_in_thread

    home = tmp_path_factory.mktemp("web-upscale-home")
    shutil.copytree(tiny_home / "models", home / "models")
    app, studio = build(ServeOptions(home=str(home), model="tiny-sd1", device="cpu"))
    with serve_in_thread(app) as url:
        yield url, studio
    studio.close()
    studio.store.close()


@pytest.fixture
def page(browser, server):
    with studio_page(browser, server[0], {"jobs": "/api/v1/jobs", "upscales": "/api/v1/upscale", "estimates": "/api/v1/estimate"}) as pg:
        yield pg


def new_image(pg, before: str, timeout: int = 90_000) -> str:
    pg.wait_for_function("(old) => { const i = document.getElementById('image'); return !i.hidden && i.getAttribute('src') && i.getAttribute('src') !== old; }",
                         arg=before, timeout=timeout)
    return pg.get_attribute("#image", "src")


def generate(pg) -> str:
    before = pg.get_attribute("#image", "src") or ""
    pg.click("#generate")
    return new_image(pg, before)


def test_upscale_a_result_makes_a_new_picture_twice_the_size(page):
    small_settings(page, "a cat", steps=2)
    src = generate(page)
    first_id = int(page.get_attribute("#image", "data-id"))
    assert page.input_value("#upscale-with") == "Lanczos" and page.input_value("#upscale-by") == "2"
    assert unlabelled_controls(page) == []
    page.click("#upscale")
    up = new_image(page, src)
    assert pixels(page, up).shape[:2] == (128, 128)
    assert page.upscales == [{"image_id": first_id, "upscaler": "Lanczos", "scale": 2}]
    assert "Postprocess upscaler: Lanczos" in page.inner_text("#params")
    # the new picture is in the history too, and can be upscaled again (x1.5, Nearest)
    page.wait_for_function("(id) => [...document.querySelectorAll('#history button')].some(b => b.dataset.id === String(id))", arg=int(page.get_attribute("#image", "data-id")))
    page.select_option("#upscale-by", "1.5")
    page.select_option("#upscale-with", "Nearest")
    page.click("#upscale")
    again = new_image(page, up)
    assert pixels(page, again).shape[:2] == (192, 192)
    # a history picture: click it, then Upscale works on that one
    page.click(f"#history button[data-id='{first_id}']")
    page.wait_for_function("(id) => document.getElementById('image').dataset.id === String(id)", arg=first_id)
    page.select_option("#upscale-by", "2")
    page.select_option("#upscale-with", "Lanczos")
    shown = page.get_attribute("#image", "src")  # read before the click: the job can finish before a read after it
    page.click("#upscale")
    new_image(page, shown)
    assert page.upscales[-1] == {"image_id": first_id, "upscaler": "Lanczos", "scale": 2}


def test_hires_fix_section_sends_its_fields_and_makes_the_larger_picture(page):
    small_settings(page, "a lighthouse", steps=2)
    page.click("#hires-fix summary")
    assert page.inner_text("#hires-size") == "Off"
    page.check("#hires")
    # the tiny checkpoint's family defaults (options.hires)
    assert (page.input_value("#hires_scale"), page.input_value("#hires_steps"), page.input_value("#hires_strength"), page.input_value("#hires_upscaler")) == ("2", "10", "0.5", "Latent")
    assert page.inner_text("#hires-size") == "64x64 → 128x128"
    page.fill("#hires_steps", "2")
    page.select_option("#hires_upscaler", "Lanczos")
    # the expected time counts both passes: the estimate is asked with the hires fields
    for _ in range(50):  # the page asks 300 ms after the last change
        if page.estimates and page.estimates[-1].get("hires_steps") == 2:
            break
        page.wait_for_timeout(100)
    assert page.estimates and page.estimates[-1].get("hires") is True and page.estimates[-1]["hires_steps"] == 2
    assert unlabelled_controls(page) == []
    src = generate(page)
    body = page.jobs[-1]
    assert body["hires"] is True and body["hires_scale"] == 2 and body["hires_steps"] == 2 and body["hires_strength"] == 0.5 and body["hires_upscaler"] == "Lanczos"
    assert pixels(page, src).shape[:2] == (128, 128)
    assert "Hires upscale: 2" in page.inner_text("#params")
    # off again: no hires fields at all
    page.uncheck("#hires")
    generate(page)
    assert "hires" not in page.jobs[-1]


def test_img2img_mode_hides_and_never_sends_the_hires_fix(page):
    small_settings(page, "a barn", steps=2)
    page.click("#hires-fix summary")
    page.check("#hires")
    generate(page)
    page.click("#send-img2img")
    page.wait_for_function("() => !document.getElementById('img2img').hidden")
    assert page.is_hidden("#hires-fix")
    generate(page)
    body = page.jobs[-1]
    assert "init_image" in body and "hires" not in body


def test_a_refused_upscale_shows_the_servers_message(page):
    small_settings(page, "a cat", steps=2)
    generate(page)
    page.evaluate("() => { const s = document.getElementById('upscale-with'); s.add(new Option('4x-Missing', '4x-Missing')); s.value = '4x-Missing'; }")
    page.click("#upscale")
    page.wait_for_function("() => document.getElementById('form-error').textContent.includes('4x-Missing')")
    assert "Lanczos" in page.inner_text("#form-error")  # the message lists what there is
