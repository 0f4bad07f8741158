"""The web studio in a real browser: headless Chromium (Debian's ``chromium``) driven
by Playwright, against a real ``brushwork serve`` on the tiny SD 1.x checkpoint.

Skipped with a reason when Playwright or a Chromium binary is missing (``.ci/run``
installs both).  Set ``BRUSHWORK_SCREENSHOTS=docs`` to write the desktop and phone
screenshots into ``docs/`` (``tools/studio_screenshots.sh``).
"""
from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, PngImagePlugin
from safetensors.torch import save_file

playwright = pytest.importorskip("playwright.sync_api", reason="the browser tests need Playwright: pip install -e '.[test]'")

CHROMIUM = os.environ.get("BRUSHWORK_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium binary: apt-get install chromium (or set BRUSHWORK_CHROMIUM)")

REPO = Path(__file__).resolve().parents[1]
A1111_INFOTEXT = (
    "a castle on a hill, (golden hour:1.2)\n"
    "Negative prompt: blurry, lowres\n"
    "Steps: 7, Sampler: DPM++ 2M Karras, CFG scale: 5.5, Seed: 424242, Size: 64x64, Model hash: 0123456789, Model: someone_elses_model, Version: v1.10.1"
)


@pytest.fixture(scope="module")
def server(tiny_home, tmp_path_factory):
    from brushwork.server import ServeOptions, build, serve_in_thread

    home = tmp_path_factory.mktemp("studio-home")
    shutil.copytree(tiny_home / "models", home / "models")
    # a small kohya LoRA for the tiny SD 1.x, so the LoRA browser has something to show
    key = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    g = torch.Generator().manual_seed(0)
    (home / "models" / "loras").mkdir(parents=True, exist_ok=True)
    save_file({f"{key}.lora_down.weight": torch.randn(4, 32, generator=g) * 0.1, f"{key}.lora_up.weight": torch.randn(32, 4, generator=g) * 0.1, f"{key}.alpha": torch.tensor(4.0)},
              str(home / "models" / "loras" / "shiny.safetensors"), metadata={"ss_base_model_version": "sd_v1", "ss_tag_frequency": '{"d": {"shiny": 3}}'})
    (home / "styles.csv").write_text('name,prompt,negative_prompt\nWatercolor,"{prompt}, watercolor",photo\nCinematic,cinematic light,\n', encoding="utf-8")
    app, studio = build(ServeOptions(home=str(home), model="tiny-sd1", device="cpu", preview_every=1))
    with serve_in_thread(app) as url:
        yield url, studio
    studio.close()
    studio.store.close()


@pytest.fixture(scope="module")
def browser():
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield b
        b.close()


@contextlib.contextmanager
def studio_page(browser, url: str, posts: dict[str, str] | None = None, before_open=None):
    """The studio open and ready in a fresh 1280x900 browser context; afterwards it
    must have raised no JavaScript error.  ``posts`` {attribute: path}: the JSON
    bodies POSTed to each path are collected, in order, in ``page.<attribute>``.
    ``before_open(page)`` runs before the page is loaded (to route a request)."""
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = ctx.new_page()
    messages = []
    pg.on("pageerror", lambda exc: messages.append(str(exc)))
    if before_open is not None:
        before_open(pg)
    pg.goto(url + "/")
    pg.wait_for_selector("body[data-ready=true]")
    for attr, path in (posts or {}).items():
        setattr(pg, attr, [])
        pg.on("request", lambda r, a=attr, p=path: getattr(pg, a).append(json.loads(r.post_data)) if r.method == "POST" and r.url.endswith(p) else None)
    yield pg
    ctx.close()
    assert not messages, f"JavaScript errors: {messages}"


@pytest.fixture
def page(browser, server):
    with studio_page(browser, server[0]) as pg:
        yield pg


def long_settings(pg, prompt: str, batches: int) -> None:
    """A job that runs for a while: 128x128, 150 steps, several batches."""
    pg.fill("#prompt", prompt)
    pg.fill("#width", "128")
    pg.fill("#height", "128")
    pg.locator("#steps").fill("150")
    pg.fill("#batch_count", str(batches))


def small_settings(pg, prompt: str, steps: int = 6) -> None:
    pg.fill("#prompt", prompt)
    pg.fill("#width", "64")
    pg.fill("#height", "64")
    pg.locator("#steps").fill(str(steps))


def generate_and_wait(pg) -> dict:
    before = pg.get_attribute("#image", "src") or ""
    pg.click("#generate")
    pg.wait_for_function("(old) => { const i = document.getElementById('image'); return !i.hidden && i.getAttribute('src') && i.getAttribute('src') !== old; }", arg=before, timeout=60_000)
    return {"src": pg.get_attribute("#image", "src"), "params": pg.inner_text("#params")}


def pixels(pg, src: str) -> np.ndarray:
    url = src if src.startswith("http") else pg.url.rstrip("/") + src
    body = pg.request.get(url).body()
    return np.asarray(Image.open(io.BytesIO(body)).convert("RGB"))


def unlabelled_controls(pg) -> list[str]:
    """The visible inputs, selects, text areas and buttons with no name a screen reader can read."""
    return pg.evaluate(
        """() => [...document.querySelectorAll('input, select, textarea, button')].filter(el => {
            if (el.closest('[hidden]')) return false;
            const named = el.getAttribute('aria-label') || (el.labels && el.labels.length) || el.textContent.trim() || el.title;
            return !named;
        }).map(el => el.id || el.outerHTML.slice(0, 60))"""
    )


def drop_file(pg, payload: bytes, name: str) -> None:
    """Drop a file onto the page the way a drag from the desktop does."""
    pg.evaluate(
        """([b64, name]) => {
            const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
            const dt = new DataTransfer();
            dt.items.add(new File([bytes], name, {type: 'image/png'}));
            document.dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true, cancelable: true}));
        }""",
        [base64.b64encode(payload).decode(), name],
    )


def shot_dir(tmp_path: Path) -> Path:
    target = os.environ.get("BRUSHWORK_SCREENSHOTS")
    return (REPO / target) if target else tmp_path


def test_generate_shows_progress_then_the_image_with_its_parameters(page, tmp_path):
    small_settings(page, "a red cube on a table", steps=12)
    seen_steps = []
    page.expose_function("reportStep", lambda text: seen_steps.append(text))
    page.evaluate("""() => new MutationObserver(() => window.reportStep(document.getElementById('progress-text').textContent))
        .observe(document.getElementById('progress-text'), {childList: true, characterData: true, subtree: true})""")
    result = generate_and_wait(page)
    assert any(s.startswith("Step ") and "/12" in s for s in seen_steps), seen_steps
    assert "a red cube on a table" in result["params"] and "Steps: 12" in result["params"]
    assert pixels(page, result["src"]).shape == (64, 64, 3)
    assert page.inner_text("#progress-text") == "Done"
    # the history gallery shows it
    page.wait_for_selector("#history button img")


def test_frozen_seed_regenerates_the_same_pixels(page):
    small_settings(page, "a blue sphere")
    page.fill("#seed", "-1")
    first = generate_and_wait(page)
    seed = first["params"].split("Seed: ")[1].split(",")[0]
    page.click("#seed-reuse")
    assert page.input_value("#seed") == seed
    second = generate_and_wait(page)
    assert f"Seed: {seed}," in second["params"]
    assert first["src"] != second["src"]
    assert np.array_equal(pixels(page, first["src"]), pixels(page, second["src"]))
    page.click("#seed-random")
    assert page.input_value("#seed") == "-1"
    # "Reuse settings" brings back everything the image was made with
    page.fill("#prompt", "something else")
    page.locator("#steps").fill("30")
    page.click("#reuse-settings")
    page.wait_for_function("() => document.getElementById('prompt').value === 'a blue sphere'")
    assert page.input_value("#steps") == "6" and page.input_value("#seed") == seed


def test_interrupt_stops_a_long_generation(page, server):
    long_settings(page, "a very long job", 4)
    page.click("#generate")
    page.wait_for_function("() => /^Step \\d+\\/600/.test(document.getElementById('progress-text').textContent)", timeout=30_000)
    page.wait_for_selector("#preview:not([hidden])")
    assert page.is_enabled("#interrupt")
    page.click("#interrupt")
    page.wait_for_function("() => document.getElementById('progress-text').textContent === 'Interrupted'", timeout=30_000)
    jobs = server[1].store.jobs(1)
    assert jobs[0].state == "cancelled" and jobs[0].request["prompt"] == "a very long job"
    page.fill("#batch_count", "1")


def test_lora_browser_inserts_the_tag(page):
    page.fill("#prompt", "a lamp")
    page.click("#lora-browser summary")
    page.click("button[data-lora=shiny]")
    assert page.input_value("#prompt") == "a lamp, <lora:shiny:1>"
    page.wait_for_function("() => document.getElementById('prompt-count').textContent.endsWith('/75')")


def test_dropping_an_a1111_png_restores_its_settings(page):
    img = Image.new("RGB", (32, 32), (10, 20, 30))
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", A1111_INFOTEXT)
    buf = io.BytesIO()
    img.save(buf, "PNG", pnginfo=info)
    drop_file(page, buf.getvalue(), "from-a1111.png")
    page.wait_for_function("() => document.getElementById('seed').value === '424242'")
    assert page.input_value("#prompt") == "a castle on a hill, (golden hour:1.2)"
    assert page.input_value("#negative_prompt") == "blurry, lowres"
    assert page.input_value("#steps") == "7" and page.input_value("#cfg_scale") == "5.5"
    assert page.input_value("#sampler") == "DPM++ 2M" and page.input_value("#schedule") == "Karras"
    assert page.input_value("#width") == "64" and page.input_value("#height") == "64"
    assert "someone_elses_model" in page.inner_text("#model-status")


def test_dropping_one_of_our_own_pngs_restores_its_settings(page):
    small_settings(page, "a green teapot, (studio light:1.1)")
    page.fill("#negative_prompt", "dust")
    page.fill("#seed", "31337")
    page.select_option("#sampler", "Euler a")
    made = generate_and_wait(page)
    png = page.request.get(page.url.rstrip("/") + page.get_attribute("#open-image", "href")).body()
    assert Image.open(io.BytesIO(png)).text["parameters"] == made["params"]
    page.fill("#prompt", "something else entirely")
    page.fill("#negative_prompt", "")
    page.fill("#seed", "-1")
    page.select_option("#sampler", "Euler")
    page.locator("#steps").fill("30")
    drop_file(page, png, "00001-31337.png")
    page.wait_for_function("() => document.getElementById('seed').value === '31337'")
    assert page.input_value("#prompt") == "a green teapot, (studio light:1.1)"
    assert page.input_value("#negative_prompt") == "dust"
    assert page.input_value("#sampler") == "Euler a" and page.input_value("#steps") == "6"
    assert page.input_value("#width") == "64" and page.input_value("#model") == "tiny-sd1"


def test_a_png_without_parameters_and_a_non_image_get_readable_messages(page):
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "PNG")
    for name, payload in (("plain.png", buf.getvalue()), ("notes.png", b"just text")):
        drop_file(page, payload, name)
        page.wait_for_function("() => document.getElementById('form-error').textContent.length > 0")
        text = page.inner_text("#form-error")
        assert ("no generation parameters" in text) if name == "plain.png" else ("not a readable" in text)


def test_server_errors_appear_next_to_their_control(page):
    page.fill("#prompt", "x")
    page.fill("#width", "100")
    page.click("#generate")
    page.wait_for_selector("#width-error:not(:empty)")
    assert "multiple of 8" in page.inner_text("#width-error")
    assert page.get_attribute("#width", "aria-invalid") == "true"
    page.fill("#width", "64")
    assert page.inner_text("#width-error") == ""


def test_a_reload_keeps_what_was_typed(page):
    page.fill("#prompt", "a prompt I spent ten minutes on, (detailed:1.3)")
    page.fill("#negative_prompt", "ugly")
    page.fill("#seed", "77")
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    assert page.input_value("#prompt") == "a prompt I spent ten minutes on, (detailed:1.3)"
    assert page.input_value("#negative_prompt") == "ugly" and page.input_value("#seed") == "77"


def test_phone_width_has_no_horizontal_scroll_and_controls_are_labelled(browser, server, tmp_path):
    ctx = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True, has_touch=True)
    pg = ctx.new_page()
    pg.goto(server[0] + "/")
    pg.wait_for_selector("body[data-ready=true]")
    assert pg.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth")
    assert unlabelled_controls(pg) == []
    # keyboard: Tab from the top reaches the prompt and then the Generate button is reachable
    order = []
    for _ in range(12):
        pg.keyboard.press("Tab")
        order.append(pg.evaluate("() => document.activeElement.id"))
    assert "prompt" in order and "negative_prompt" in order
    ctx.close()


def test_switching_to_the_demo_model_then_screenshots(page, browser, server, tmp_path):
    """The checkpoint picker switches models (with progress in the status line) and the
    form takes the new model's defaults; the docs screenshots come from this run."""
    page.select_option("#model", "demo")
    page.wait_for_function("() => document.getElementById('model-status').textContent === 'demo loaded'", timeout=60_000)
    assert page.input_value("#width") == "128" and page.input_value("#steps") == "20"
    # a few demo pictures first, so the history in the screenshots shows what the demo draws
    for prompt, seed in (("green hills under a blue sky, forest", "11"), ("desert dunes at night, stars, moon", "5"),
                         ("sunrise over the sea, clouds", "8")):
        page.fill("#prompt", prompt)
        page.fill("#seed", seed)
        generate_and_wait(page)
    page.fill("#prompt", "cinematic landscape, great mountain, snowy peaks, sunset, lake")
    page.fill("#negative_prompt", "night")
    page.fill("#seed", "3")
    result = generate_and_wait(page)
    assert "Model: demo" in result["params"] and "Size: 128x128" in result["params"]
    # "Done" means a full bar (wait out its width transition before the picture is taken)
    page.wait_for_function("() => { const f = document.getElementById('progress-fill'); return f.getBoundingClientRect().width === f.parentElement.clientWidth; }")
    page.evaluate("() => window.scrollTo(0, 0)")
    out = shot_dir(tmp_path)
    page.screenshot(path=str(out / "studio-desktop.png"), full_page=True)
    ctx = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True, has_touch=True)
    phone = ctx.new_page()
    phone.goto(server[0] + "/")
    phone.wait_for_selector("body[data-ready=true]")
    phone.wait_for_selector("#image:not([hidden])")
    phone.fill("#prompt", "cinematic landscape, great mountain, snowy peaks, sunset, lake")
    phone.wait_for_function("() => document.getElementById('prompt-count').textContent === '12/75'")
    phone.screenshot(path=str(out / "studio-phone.png"), full_page=True)
    ctx.close()
    server[1].switch_model("tiny-sd1")


def test_ctrl_enter_generates_and_queued_jobs_can_be_cancelled(page, server):
    studio = server[1]
    long_settings(page, "first long job", 3)
    page.focus("#prompt")
    page.keyboard.press("Control+Enter")
    page.wait_for_function("() => /^Step /.test(document.getElementById('progress-text').textContent)", timeout=30_000)
    page.fill("#prompt", "second job, waiting")
    page.keyboard.press("Control+Enter")
    page.wait_for_function("() => document.querySelectorAll('#queue li button').length === 2", timeout=10_000)
    items = page.locator("#queue li span").all_inner_texts()
    assert items[0].startswith("▶ first long job") and items[1].startswith("… second job")
    page.click("#queue li:nth-child(2) button")
    page.wait_for_function("() => document.querySelectorAll('#queue li button').length === 1", timeout=10_000)
    waiting = [j for j in studio.store.jobs(5) if j.request.get("prompt") == "second job, waiting"]
    assert waiting and waiting[0].state == "cancelled"
    page.click("#interrupt")
    page.wait_for_function("() => document.getElementById('progress-text').textContent === 'Interrupted'", timeout=30_000)
    page.fill("#batch_count", "1")


def test_history_pages_through_hundreds_of_images(page, server, capsys):
    from brushwork.engine import GenerationRequest

    studio = server[1]
    if not studio.store.images(1):
        studio.wait(studio.submit(GenerationRequest("seed image", seed=1, steps=2, width=64, height=64)).id, timeout=60)
    src = studio.store.images(1)[0]
    for i in range(300):
        studio.store.add_image("bulk", i, src.path, 1000 + i, src.width, src.height, f"bulk {i}", "", src.infotext, src.model, src.model_hash)
    t0 = time.perf_counter()
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    page.wait_for_function("() => [...document.querySelectorAll('#history img')].slice(0, 12).every(i => i.complete && i.naturalWidth > 0)")
    with capsys.disabled():
        print(f"\nhistory of {len(studio.store.images(1000))} images: page ready with the first row of thumbnails in {time.perf_counter() - t0:.2f} s")
    assert page.locator("#history li").count() == 60
    assert page.get_attribute("#history li:first-child img", "loading") == "lazy"
    page.click("#history-more")
    page.wait_for_function("() => document.querySelectorAll('#history li').length === 120")
    first = page.locator("#history li:first-child button").get_attribute("title")
    assert first.startswith("bulk 299")
    page.click("#history li:nth-child(3) button")
    assert "bulk 297" in page.get_attribute("#image", "alt")


def test_styles_are_picked_in_order_applied_and_restored_from_the_picture(page):
    """Issue #12 item 4: the style chips, the styled infotext, and Reuse settings
    giving back the plain prompt with the same styles picked (not applied twice)."""
    small_settings(page, "a lamp", steps=2)
    page.click("#style-picker summary")
    page.click("button[data-style=Cinematic]")
    page.click("button[data-style=Watercolor]")
    assert page.inner_text("button[data-style=Cinematic]") == "1. Cinematic"
    assert page.get_attribute("button[data-style=Watercolor]", "aria-pressed") == "true"
    shown = generate_and_wait(page)
    assert "a lamp, cinematic light, watercolor" in shown["params"]
    assert "Styles: \"Cinematic, Watercolor\"" in shown["params"]
    page.click("button[data-style=Cinematic]")  # unpick one, then restore from the picture
    page.fill("#prompt", "something else")
    page.click("#reuse-settings")
    page.wait_for_function("() => document.getElementById('prompt').value === 'a lamp'")
    assert page.inner_text("#styles-summary") == "(Cinematic, Watercolor)"
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    assert page.inner_text("#styles-summary") == "(Cinematic, Watercolor)"  # kept over a reload


def test_first_hour_page_details(page, server):
    """Issue #13 items 10 and 12: a favicon, bad values kept in local storage are not
    restored, the last picture's settings are hidden while a new job runs."""
    assert page.request.get(server[0] + "/favicon.ico").status == 200
    page.evaluate("""() => localStorage.setItem('brushwork.form.v1', JSON.stringify({values: {prompt: 'kept', steps: '999', width: '1001', batch_count: '-3', sampler: 'No Such Sampler'}, dirty: ['prompt', 'steps', 'width', 'batch_count', 'sampler']}))""")
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    assert page.input_value("#prompt") == "kept"
    assert page.input_value("#steps") != "999" and int(page.input_value("#width")) % 8 == 0
    assert page.input_value("#batch_count") == "1" and page.input_value("#sampler") != "No Such Sampler"
    small_settings(page, "a cup", steps=2)
    generate_and_wait(page)
    assert page.is_visible("#params")
    long_settings(page, "a long one", 1)
    page.click("#generate")
    page.wait_for_function("() => /^Step \\d+\\/150/.test(document.getElementById('progress-text').textContent)", timeout=30_000)
    assert not page.is_visible("#params")  # not the previous picture's settings under this job
    page.click("#interrupt")
    page.wait_for_function("() => document.getElementById('progress-text').textContent === 'Interrupted'", timeout=30_000)
    page.locator("#steps").fill("6")


def test_on_a_phone_generate_brings_the_progress_into_view(browser, server):
    """Issue #13 item 10: the form fills a phone's screen; tapping Generate scrolls to the progress bar."""
    ctx = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True, has_touch=True)
    pg = ctx.new_page()
    pg.goto(server[0] + "/")
    pg.wait_for_selector("body[data-ready=true]")
    small_settings(pg, "a boat", steps=30)
    pg.fill("#width", "128")
    pg.fill("#height", "128")
    pg.tap("#generate")
    pg.wait_for_selector("#progress:not([hidden])")
    pg.wait_for_function("() => { const r = document.getElementById('progress').getBoundingClientRect(); return r.top >= 0 && r.bottom <= window.innerHeight; }", timeout=10_000)
    pg.wait_for_selector("#image:not([hidden])", timeout=60_000)
    ctx.close()


def test_reuse_settings_switches_back_to_the_pictures_model(page, server):
    """Issue #13 item 12: dropping a picture made with another of the user's checkpoints
    (tiny-sd2 here) selects and loads that checkpoint."""
    from brushwork.catalog import hash_cache

    home = server[1].home
    sha = hash_cache(home).get_sha256(home.checkpoint_dirs[0] / "tiny-sd2.safetensors")
    text = f"a hill\nSteps: 3, Sampler: Euler, CFG scale: 7.0, Seed: 2, Size: 64x64, Model hash: {sha[:10]}, Model: renamed-elsewhere"
    img = Image.new("RGB", (16, 16))
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", text)
    buf = io.BytesIO()
    img.save(buf, "PNG", pnginfo=info)
    try:
        drop_file(page, buf.getvalue(), "sd2.png")
        page.wait_for_function("() => document.getElementById('model-status').textContent.includes('tiny-sd2 loaded') || document.getElementById('model').value === 'tiny-sd2'", timeout=60_000)
        page.wait_for_function("() => !document.getElementById('model').disabled", timeout=60_000)
        assert page.input_value("#model") == "tiny-sd2"
        assert page.input_value("#seed") == "2"
    finally:
        server[1].wait(server[1].switch_model("tiny-sd1").id)


def test_stopped_pictures_are_marked_in_the_history(page, server):
    """Issue #13 item 13: an interrupted picture carries a 'stopped' mark on its thumbnail
    and a note next to its parameters."""
    studio = server[1]
    from brushwork.engine import GenerationRequest

    job = studio.submit(GenerationRequest(prompt="stopped one", seed=4, steps=150, width=64, height=64), "test")
    deadline = time.monotonic() + 30
    while studio.current()[1] is None or studio.current()[1].step < 2:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    studio.interrupt_client("test")
    done = studio.wait(job.id)
    assert done.state == "interrupted"
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    badge = page.locator("#history .badge").first
    assert badge.inner_text().startswith("stopped ")
    badge.click()
    assert page.is_visible("#stopped-note") and "partly denoised" in page.inner_text("#stopped-note")


def test_a_size_far_from_the_models_own_gets_a_hint(page, server):
    """Issue #13 item 9: presets come from the model's native size; sizes far from it say why they look broken."""
    o = page.request.get(server[0] + "/api/v1/options").json()
    n = o["native_size"]
    assert o["size_presets"][0] == {"width": n["width"], "height": n["height"]}
    assert page.is_visible("#model-hint") == o["demo"]
    page.fill("#width", str(n["width"]))
    page.fill("#height", str(n["height"]))
    assert not page.is_visible("#size-hint")
    page.fill("#width", str(n["width"] * 2))
    page.fill("#height", str(n["height"] * 2))
    assert page.is_visible("#size-hint")
    assert page.inner_text("#size-hint") == f"This model was trained at {n['width']}x{n['height']}; far larger or smaller sizes give repeated or broken pictures."
    page.select_option("#size-preset", f"{n['width']}x{n['height']}")
    assert not page.is_visible("#size-hint")
    if not o["demo"]:  # the 128 px demo: its own hint under the model picker, and 512 is far
        page.select_option("#model", "demo")
        page.wait_for_function("() => document.getElementById('model-status').textContent === 'demo loaded'", timeout=60_000)
    assert page.inner_text("#model-hint") == "Built-in 128 px demo model. Put your own checkpoints in models/checkpoints in the data folder."
    page.fill("#width", "512")
    page.fill("#height", "512")
    assert page.inner_text("#size-hint").startswith("This model was trained at 128x128;")


def test_the_expected_time_is_shown_next_to_generate(page):
    """Issue #13 item 6: the estimate sits next to Generate and follows the settings."""
    page.wait_for_function("() => /on cpu/.test(document.getElementById('estimate').textContent)", timeout=15_000)
    page.fill("#width", "1024")
    page.fill("#height", "1024")
    page.locator("#steps").fill("150")
    page.wait_for_function("() => /^about \\d+ (s|min|h) on cpu/.test(document.getElementById('estimate').textContent)", timeout=15_000)
    page.fill("#width", "64")
    page.fill("#height", "64")
    page.locator("#steps").fill("6")


def test_the_header_shows_the_cluster_only_when_there_is_one(browser, server):
    """Issue #20: a server without a cluster shows no cluster line; with one, the line
    counts workers, busy ones and waiting jobs, and names each worker's device and model."""
    with studio_page(browser, server[0]) as pg:
        assert pg.evaluate("() => document.getElementById('cluster-status').hidden") is True
    cluster = {"workers": [{"name": "w-a", "host": "gpu1", "device": "cuda:0", "model": "juggernautXL", "loras": [], "free_memory": 2**34, "job": "3f9c", "jobs_run": 4, "loads": ["juggernautXL"], "queue": ["a1", "b2"]},
                           {"name": "w-b", "host": "gpu2", "device": "cuda:0", "model": None, "loras": [], "free_memory": None, "job": None, "jobs_run": 0, "loads": [], "queue": []}],
               "waiting": 3, "running": 1}
    def with_cluster(pg):
        real = pg.request.get(server[0] + "/api/v1/status").json()
        pg.route("**/api/v1/status", lambda route: route.fulfill(status=200, content_type="application/json", body=json.dumps({**real, "cluster": cluster})))

    with studio_page(browser, server[0], before_open=with_cluster) as pg:
        pg.wait_for_function("() => !document.getElementById('cluster-status').hidden", timeout=10_000)
        assert pg.inner_text("#cluster-status") == "Cluster: 2 workers (1 busy), 3 waiting"
        assert pg.get_attribute("#cluster-status", "title") == "w-a: cuda:0, juggernautXL, running 3f9c, 2 next\nw-b: cuda:0, no model yet"
