"""The web studio's image-to-image mode (img2img, inpaint, outpaint) in a real browser:
headless Chromium driven by Playwright against a real ``brushwork serve`` on the tiny
SD 1.x checkpoint.  Skipped with a reason when Playwright or Chromium is missing."""
from __future__ import annotations

import base64
import io
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from test_web_studio import CHROMIUM, browser, pixels, playwright, pytestmark, small_settings, studio_page, unlabelled_controls  # noqa: F401 - fixture and skip marks shared


@pytest.fixture(scope="module")
def server(tiny_home, tmp_path_factory):
    from brushwork.server import ServeOptions, build, serve_in_thread

    home = tmp_path_factory.mktemp("refine-home")
    shutil.copytree(tiny_home / "models", home / "models")
    app, studio = build(ServeOptions(home=str(home), model="tiny-sd1", device="cpu", preview_every=1))
    with serve_in_thread(app) as url:
        yield url, studio
    studio.close()
    studio.store.close()


@pytest.fixture
def page(browser, server):
    with studio_page(browser, server[0], {"jobs": "/api/v1/jobs"}) as pg:  # pg.jobs: the bodies POSTed there
        yield pg


def generate_and_wait(pg) -> dict:
    before = pg.get_attribute("#image", "src") or ""
    pg.click("#generate")
    pg.wait_for_function("(old) => { const i = document.getElementById('image'); return !i.hidden && i.getAttribute('src') && i.getAttribute('src') !== old; }", arg=before, timeout=90_000)
    return {"src": pg.get_attribute("#image", "src"), "params": pg.inner_text("#params")}


def decode(data_url: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[-1]))).convert("RGB"))


def start_img2img(pg, prompt: str, seed: str = "5") -> dict:
    """A fresh 64x64 picture, sent to img2img."""
    small_settings(pg, prompt)
    pg.fill("#seed", seed)
    made = generate_and_wait(pg)
    pg.click("#send-img2img")
    pg.wait_for_function("() => !document.getElementById('img2img').hidden && document.getElementById('init-canvas').width === 64")
    return made


def stroke(pg, points, brush: int) -> None:
    """Paint through ``points`` (in the picture's pixels) with the mouse."""
    pg.locator("#brush_size").fill(str(brush))
    pg.locator("#mask-canvas").scroll_into_view_if_needed()
    box = pg.locator("#mask-canvas").bounding_box()
    w = pg.evaluate("() => document.getElementById('mask-canvas').width")
    scale = box["width"] / w
    at = [(box["x"] + x * scale, box["y"] + y * scale) for x, y in points]
    pg.mouse.move(*at[0])
    pg.mouse.down()
    for p in at[1:]:
        pg.mouse.move(*p, steps=8)
    pg.mouse.up()


def painted(pg) -> bool:
    return pg.get_attribute("#mask-canvas", "data-painted") == "true"


def test_a_painted_stroke_is_sent_as_the_mask_and_only_that_band_changes(page):
    made = start_img2img(page, "a brick wall")
    assert page.input_value("#width") == "64" and page.input_value("#height") == "64"
    assert page.input_value("#prompt") == "a brick wall"  # the settings stay
    init = pixels(page, made["src"])
    page.click("#inpaint-options summary")
    page.fill("#mask_blur", "2")
    page.locator("#denoising_strength").fill("1")
    stroke(page, [(20, 32), (44, 32)], brush=8)
    assert painted(page)
    result = generate_and_wait(page)
    body = page.jobs[-1]
    assert body["denoising_strength"] == 1 and body["mask_blur"] == 2
    assert np.array_equal(decode(body["init_image"]), init)
    mask = decode(body["mask"])[..., 0]
    assert mask.shape == (64, 64) and set(np.unique(mask)) <= {0, 255}
    ys, xs = np.nonzero(mask)
    # white only along the stroke (y 32 +- 4, x 20..44 +- 4), and all of its core
    assert ys.min() >= 27 and ys.max() <= 37 and xs.min() >= 15 and xs.max() <= 49
    assert (mask[30:35, 22:43] == 255).all()
    out = pixels(page, result["src"])
    assert out.shape == init.shape
    band = np.zeros((64, 64), bool)
    band[27 - 8:37 + 8, 15 - 8:49 + 8] = True  # the stroke, widened by the blur's reach
    assert (~band).sum() > 2000
    assert np.array_equal(out[~band], init[~band]), "pixels outside the painted band changed"
    assert np.abs(out[30:35, 22:43].astype(int) - init[30:35, 22:43]).mean() > 1, "the painted band did not change"
    assert "Denoising strength: 1" in result["params"] and "Mask blur: 2" in result["params"]


def test_undo_and_clear_empty_the_mask_and_then_it_is_plain_img2img(page):
    start_img2img(page, "a tree", seed="6")
    assert not painted(page) and page.is_disabled("#mask-undo")
    for i in range(25):  # undo goes back stroke by stroke, more than 20 deep
        stroke(page, [(2 + 2 * i, 10), (2 + 2 * i, 20)], brush=2)
    for _ in range(24):
        page.click("#mask-undo")
        assert painted(page)
    page.click("#mask-undo")
    assert not painted(page) and page.is_disabled("#mask-undo")
    stroke(page, [(10, 10), (50, 50)], brush=12)
    page.click("#brush-erase")  # the eraser takes paint away
    stroke(page, [(10, 10), (50, 50)], brush=30)
    assert not painted(page)
    page.click("#brush-paint")
    stroke(page, [(10, 50), (50, 10)], brush=12)
    assert painted(page)
    page.click("#mask-clear")
    assert not painted(page)
    page.locator("#denoising_strength").fill("0.5")
    result = generate_and_wait(page)
    body = page.jobs[-1]
    assert "init_image" in body and "mask" not in body and body["denoising_strength"] == 0.5
    assert "Denoising strength: 0.5" in result["params"]
    assert pixels(page, result["src"]).shape == (64, 64, 3)
    # back in text-to-image mode nothing of the picture is sent
    page.click("#mode-txt2img")
    assert page.is_hidden("#img2img")
    generate_and_wait(page)
    assert "init_image" not in page.jobs[-1]


def test_outpaint_extends_the_picture_and_the_result_becomes_the_init_image(page):
    start_img2img(page, "a beach", seed="7")
    stroke(page, [(20, 20), (40, 40)], brush=6)  # outpainting sends no mask
    assert page.input_value("#outpaint_amount") == "128"
    before = page.get_attribute("#image", "src")
    page.click("button[aria-label='Extend right']")
    page.wait_for_function("() => document.getElementById('init-canvas').width === 192", timeout=90_000)
    body = page.jobs[-1]
    assert body["outpaint"] == {"right": 128} and "mask" not in body and body["width"] is None
    assert page.get_attribute("#image", "src") != before
    assert pixels(page, page.get_attribute("#image", "src")).shape == (64, 192, 3)
    assert page.evaluate("() => document.getElementById('init-canvas').height") == 64
    assert page.input_value("#width") == "192" and page.input_value("#height") == "64"
    assert not painted(page)  # a new picture starts with an empty mask
    page.select_option("#outpaint_amount", "64")
    page.click("#outpaint-top")  # again: it extends the new picture
    page.wait_for_function("() => document.getElementById('init-canvas').height === 128", timeout=90_000)
    assert page.jobs[-1]["outpaint"] == {"top": 64}
    assert np.array_equal(decode(page.jobs[-1]["init_image"]).shape, (64, 192, 3))
    assert page.evaluate("() => document.getElementById('init-canvas').width") == 192


def test_server_errors_appear_next_to_the_img2img_controls(page):
    start_img2img(page, "a cloud", seed="8")
    # a strength the slider cannot make: change the request on its way to the real server
    def too_strong(route):
        body = json.loads(route.request.post_data)
        body["denoising_strength"] = 1.5
        route.continue_(post_data=json.dumps(body))
    page.route("**/api/v1/jobs", too_strong)
    page.click("#generate")
    page.wait_for_selector("#denoising_strength-error:not(:empty)")
    assert page.get_attribute("#denoising_strength", "aria-invalid") == "true"
    page.unroute("**/api/v1/jobs")
    # a mask of the wrong size
    def wrong_mask(route):
        body = json.loads(route.request.post_data)
        buf = io.BytesIO()
        Image.new("L", (32, 64), 255).save(buf, "PNG")
        body["mask"] = base64.b64encode(buf.getvalue()).decode()
        route.continue_(post_data=json.dumps(body))
    page.route("**/api/v1/jobs", wrong_mask)
    page.click("#generate")
    page.wait_for_selector("#mask-error:not(:empty)")
    assert "aspect" in page.inner_text("#mask-error") or "size" in page.inner_text("#mask-error")
    page.unroute("**/api/v1/jobs")
    # with no picture, img2img says so beside the picture and sends nothing
    page.click("#init-remove")
    sent = len(page.jobs)
    page.click("#generate")
    page.wait_for_selector("#init_image-error:not(:empty)")
    assert len(page.jobs) == sent


def test_files_and_drops_on_the_canvas_set_the_picture_and_options_persist(page):
    buf = io.BytesIO()
    Image.new("RGB", (80, 72), (200, 30, 30)).save(buf, "PNG")
    page.click("#mode-img2img")
    page.set_input_files("#init-file", files=[{"name": "red.png", "mimeType": "image/png", "buffer": buf.getvalue()}])
    page.wait_for_function("() => document.getElementById('init-canvas').width === 80")
    assert page.input_value("#width") == "80" and page.input_value("#height") == "72"
    assert page.is_hidden("#resize-field")
    page.fill("#width", "64")
    assert page.is_visible("#resize-field")  # the size differs from the picture's
    buf2 = io.BytesIO()
    Image.new("RGB", (64, 64), (0, 0, 200)).save(buf2, "PNG")
    page.evaluate(
        """(b64) => {
            const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
            const dt = new DataTransfer();
            dt.items.add(new File([bytes], 'blue.png', {type: 'image/png'}));
            document.getElementById('init-area').dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true, cancelable: true}));
        }""",
        base64.b64encode(buf2.getvalue()).decode(),
    )
    page.wait_for_function("() => document.getElementById('init-canvas').width === 64")
    assert page.inner_text("#form-error") == ""  # not taken as a settings drop
    page.click("#inpaint-options summary")
    page.select_option("#masked_content", "fill")
    page.locator("#denoising_strength").fill("0.4")
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    assert page.is_visible("#img2img") and page.input_value("#denoising_strength") == "0.4"
    assert page.input_value("#masked_content") == "fill" and page.input_value("#denoising_strength") == "0.4"
    assert page.is_hidden("#canvas-wrap")  # the picture itself is not kept
    assert "init_image" not in (page.evaluate("() => localStorage.getItem('brushwork.refine.v1')") or "")
    page.click("#mode-txt2img")


def test_phone_width_in_img2img_mode_has_no_horizontal_scroll(browser, server):
    ctx = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True, has_touch=True)
    pg = ctx.new_page()
    pg.goto(server[0] + "/")
    pg.wait_for_selector("body[data-ready=true]")
    pg.click("#mode-img2img")
    buf = io.BytesIO()
    Image.new("RGB", (512, 256), (0, 90, 0)).save(buf, "PNG")
    pg.set_input_files("#init-file", files=[{"name": "wide.png", "mimeType": "image/png", "buffer": buf.getvalue()}])
    pg.wait_for_function("() => document.getElementById('init-canvas').width === 512")
    pg.click("#inpaint-options summary")
    assert pg.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth")
    assert unlabelled_controls(pg) == []
    # a finger paints (touch pointer events), not scrolls
    pg.locator("#mask-canvas").scroll_into_view_if_needed()
    box = pg.locator("#mask-canvas").bounding_box()
    pg.touchscreen.tap(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    assert pg.get_attribute("#mask-canvas", "data-painted") == "true"
    pg.click("#mode-txt2img")
    ctx.close()
