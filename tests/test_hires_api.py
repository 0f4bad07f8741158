"""The hires fix and upscaling over HTTP: AUTOMATIC1111's ``enable_hr`` fields and
extras routes (webuiapi itself as the client), the listing routes, and the native
``/api/v1/upscale`` job, on a real server with the tiny SD 1.x checkpoint; and the
hires axes of a comparison grid."""
from __future__ import annotations

import base64
import io
import shutil

import httpx
import numpy as np
import pytest
import webuiapi
from PIL import Image

from brushwork.compare.axes import parse_axis
from brushwork.compare.job import Comparison, run_comparison
from brushwork.engine import GenerationRequest
from brushwork.server import ServeOptions, build, serve_in_thread
from job_wait import wait_job


def b64png(img: Image.Image, text: str | None = None) -> str:
    from PIL import PngImagePlugin

    buf = io.BytesIO()
    info = PngImagePlugin.PngInfo()
    if text:
        info.add_text("parameters", text)
    img.save(buf, "PNG", pnginfo=info)
    return base64.b64encode(buf.getvalue()).decode()


def decoded(text: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(text.split(",")[-1])))


def picture(w=48, h=32) -> Image.Image:
    y, x = np.mgrid[0:h, 0:w]
    return Image.fromarray(np.stack([x * 255 // w, y * 255 // h, np.full_like(x, 90)], -1).astype(np.uint8), "RGB")


@pytest.fixture(scope="module")
def server(tiny_home, tmp_path_factory):
    home = tmp_path_factory.mktemp("hires-home")
    shutil.copytree(tiny_home / "models", home / "models")
    app, studio = build(ServeOptions(home=str(home), model="tiny-sd1", device="cpu"))
    with serve_in_thread(app) as url:
        yield url, studio, home
    studio.close()
    studio.store.close()


@pytest.fixture
def http(server):
    with httpx.Client(base_url=server[0], timeout=120) as c:
        yield c


@pytest.fixture
def api(server):
    host, port = server[0].removeprefix("http://").split(":")
    return webuiapi.WebUIApi(host=host, port=int(port), sampler="Euler", steps=3)


def test_webuiapi_txt2img_with_enable_hr_returns_the_upscaled_size(api):
    res = api.txt2img(prompt="a cat", width=64, height=64, seed=3, enable_hr=True, hr_scale=2, hr_upscaler=webuiapi.HiResUpscaler.Latent,
                      hr_second_pass_steps=2, denoising_strength=0.55, cfg_scale=5)
    assert res.image.size == (128, 128)
    text = res.info["infotexts"][0]
    assert "Size: 64x64" in text and "Hires upscale: 2" in text and "Hires upscaler: Latent" in text and "Denoising strength: 0.55" in text
    assert res.info["extra_generation_params"]["Hires upscaler"] == "Latent"
    res = api.txt2img(prompt="a cat", width=64, height=64, seed=3, enable_hr=True, hr_resize_x=96, hr_resize_y=80, hr_upscaler="Lanczos",
                      hr_second_pass_steps=2, denoising_strength=0.4)
    assert res.image.size == (96, 80)


def test_webuiapi_extra_single_image_and_batch(api):
    res = api.extra_single_image(picture(), upscaler_1="Lanczos", upscaling_resize=2)
    assert res.image.size == (96, 64)
    res = api.extra_single_image(picture(), upscaler_1="Nearest", resize_mode=1, upscaling_resize_w=100, upscaling_resize_h=100, upscaling_crop=True)
    assert res.image.size == (100, 100)
    res = api.extra_batch_images([picture(), picture(32, 32)], upscaler_1="Lanczos", upscaling_resize=1.5)
    assert [i.size for i in res.images] == [(72, 48), (48, 48)]


def test_extras_keep_the_pictures_infotext_and_add_the_upscale(http):
    text = "a cat\nSteps: 3, Sampler: Euler, CFG scale: 7, Seed: 42, Size: 48x32, Model: tiny-sd1"
    r = http.post("/sdapi/v1/extra-single-image", json={"image": b64png(picture(), text), "upscaler_1": "Lanczos", "upscaling_resize": 2})
    assert r.status_code == 200, r.text
    out = decoded(r.json()["image"])
    assert out.text["parameters"].startswith(text) and "Postprocess upscale by: 2" in out.text["parameters"] and "Postprocess upscaler: Lanczos" in out.text["parameters"]


@pytest.mark.parametrize("body, words", [
    ({"gfpgan_visibility": 0.5}, "face restoration"),
    ({"upscaler_1": "4x-NoSuchModel"}, "4x-NoSuchModel"),
    ({"upscaling_resize": 0.5}, "upscaling_resize"),
])
def test_bad_extras_are_clear_400s(http, body, words):
    r = http.post("/sdapi/v1/extra-single-image", json={"image": b64png(picture()), **body})
    assert r.status_code in (400, 422) and words in r.text


def test_hires_with_an_unknown_upscaler_or_checkpoint_is_a_400(http):
    r = http.post("/sdapi/v1/txt2img", json={"prompt": "x", "steps": 2, "width": 64, "height": 64, "enable_hr": True, "hr_upscaler": "4x-Nothing"})
    assert r.status_code == 400 and "4x-Nothing" in r.text and "Lanczos" in r.text
    r = http.post("/sdapi/v1/txt2img", json={"prompt": "x", "steps": 2, "width": 64, "height": 64, "enable_hr": True, "hr_checkpoint_name": "other"})
    assert r.status_code == 400 and "hr_checkpoint_name" in r.text


def test_an_infotext_with_hires_keys_turns_the_hires_fix_on(http):
    text = "a cat\nSteps: 3, Sampler: Euler, CFG scale: 7, Seed: 4, Size: 64x64, Denoising strength: 0.5, Hires upscale: 1.5, Hires steps: 2, Hires upscaler: Nearest"
    r = http.post("/sdapi/v1/txt2img", json={"infotext": text})
    assert r.status_code == 200, r.text
    img = decoded(r.json()["images"][0])
    assert img.size == (96, 96) and "Hires upscaler: Nearest" in img.text["parameters"]


def test_the_listing_routes_show_what_is_there(http):
    ups = http.get("/sdapi/v1/upscalers").json()
    assert [u["name"] for u in ups][:3] == ["None", "Lanczos", "Nearest"]
    assert {"name", "model_name", "model_path", "model_url", "scale"} <= set(ups[0])
    modes = http.get("/sdapi/v1/latent-upscale-modes").json()
    assert [m["name"] for m in modes] == ["Latent", "Latent (antialiased)", "Latent (bicubic)", "Latent (bicubic antialiased)", "Latent (nearest)", "Latent (nearest-exact)"]
    native = http.get("/api/v1/upscalers").json()
    assert native["latent_modes"][0] == "Latent" and native["upscalers"][1]["name"] == "Lanczos"
    hires = http.get("/api/v1/options").json()["hires"]
    assert hires == {"scale": 2.0, "steps": 10, "strength": 0.5, "upscaler": "Latent"}


def test_native_upscale_of_a_history_picture_is_a_job_with_a_new_picture(http):
    r = http.post("/api/v1/jobs", json={"prompt": "a cat", "steps": 2, "width": 64, "height": 64, "seed": 8})
    made = wait_job(http, r.json()["id"])["images"][0]
    r = http.post("/api/v1/upscale", json={"image_id": made["id"], "upscaler": "Lanczos", "scale": 2})
    assert r.status_code == 202, r.text
    job = wait_job(http, r.json()["id"])
    assert job["kind"] == "upscale" and job["state"] == "done", job
    out = job["images"][0]
    assert (out["width"], out["height"]) == (128, 128) and out["seed"] == 8 and out["id"] != made["id"]
    png = Image.open(io.BytesIO(http.get(f"/api/v1/images/{out['id']}").content))
    assert "Seed: 8" in png.text["parameters"] and "Postprocess upscaler: Lanczos" in png.text["parameters"]


@pytest.mark.parametrize("body, words", [
    ({"upscaler": "Lanczos"}, "either image_id"),
    ({"image_id": 999999, "upscaler": "Lanczos"}, "no image"),
    ({"image_id": 1, "upscaler": "Lancos"}, "Lanczos"),
])
def test_bad_native_upscales_are_refused(http, body, words):
    r = http.post("/api/v1/upscale", json=body)
    assert r.status_code in (400, 404) and words in r.text


def test_native_jobs_take_the_hires_fields(http):
    r = http.post("/api/v1/jobs", json={"prompt": "a cat", "steps": 2, "width": 64, "height": 64, "seed": 2, "hires": True, "hires_scale": 1.5, "hires_steps": 2, "hires_strength": 0.5})
    job = wait_job(http, r.json()["id"])
    assert job["state"] == "done" and (job["images"][0]["width"], job["total"]) == (96, 4)


# ------------------------------------------------------------------ grid axes


def test_hires_axes_in_a_comparison(engines):
    engine = engines("sd1")
    req = GenerationRequest(prompt="a cat", seed=5, steps=3, width=64, height=64, sampler="Euler", hires=True, hires_strength=0.5)
    cmp = Comparison(req, parse_axis("Hires steps: 2,4"), parse_axis("Denoising: 0.3,0.6"), parse_axis("Hires upscaler: latent,Lanczos"))
    cells = list(run_comparison(engine, cmp))
    assert len(cells) == 8 and all(c.image.image.size == (128, 128) for c in cells)
    texts = {(c.cell.ix, c.cell.iy, c.cell.iz): c.image.infotext for c in cells}
    assert "Hires steps: 4" in texts[(1, 0, 0)] and "Denoising strength: 0.6" in texts[(0, 1, 0)] and "Hires upscaler: Lanczos" in texts[(0, 0, 1)]
    # a cell is the picture a lone request with its settings makes
    [alone] = engine.txt2img(GenerationRequest(**{**req.__dict__, "hires_steps": 4, "hires_strength": 0.6, "hires_upscaler": "Lanczos"}))
    cell = next(c for c in cells if (c.cell.ix, c.cell.iy, c.cell.iz) == (1, 1, 1))
    assert np.array_equal(np.asarray(cell.image.image), np.asarray(alone.image))


def test_a_native_hires_job_with_the_defaults_left_open(http):
    r = http.post("/api/v1/jobs", json={"prompt": "a cat", "steps": 2, "width": 64, "height": 64, "seed": 2, "hires": True})
    assert r.status_code == 202, r.text
    job = wait_job(http, r.json()["id"])
    assert job["state"] == "done" and job["images"][0]["width"] == 128  # 2x, the SD 1.x default
