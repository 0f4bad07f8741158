"""img2img and inpaint over HTTP: the native job kinds and AUTOMATIC1111's
/sdapi/v1/img2img, on a real server with the tiny SD 1.x checkpoint."""
from __future__ import annotations

import base64
import io
import json
import shutil
import time
import zlib
import struct

import httpx
import numpy as np
import pytest
from PIL import Image

from brushwork.init_image import image_hash
from brushwork.server import ServeOptions, build, serve_in_thread
from job_wait import wait_job

#: AUTOMATIC1111's own API test payload for img2img (test/test_img2img.py,
#: ``simple_img2img_request``, v1.x), with its 64x64 size and 3 steps
A1111_SIMPLE_IMG2IMG = {
    "batch_size": 1, "cfg_scale": 7, "denoising_strength": 0.75, "eta": 0, "height": 64, "include_init_images": False,
    "inpaint_full_res": False, "inpaint_full_res_padding": 0, "inpainting_fill": 0, "inpainting_mask_invert": False,
    "mask": None, "mask_blur": 4, "n_iter": 1, "negative_prompt": "", "override_settings": {}, "prompt": "example prompt",
    "resize_mode": 0, "restore_faces": False, "s_churn": 0, "s_noise": 1, "s_tmax": 0, "s_tmin": 0, "sampler_index": "Euler a",
    "seed": -1, "seed_resize_from_h": -1, "seed_resize_from_w": -1, "steps": 3, "styles": [], "subseed": -1,
    "subseed_strength": 0, "tiling": False, "width": 64,
}


def b64png(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def picture(w=64, h=64) -> Image.Image:
    y, x = np.mgrid[0:h, 0:w]
    return Image.fromarray(np.stack([x * 255 // w, y * 255 // h, np.full_like(x, 90)], -1).astype(np.uint8), "RGB")


def box_mask(size, box) -> Image.Image:
    m = Image.new("L", size, 0)
    m.paste(255, box)
    return m


def decoded(text: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(text.split(",")[-1])))


@pytest.fixture(scope="module")
def server(tiny_home, tmp_path_factory):
    home = tmp_path_factory.mktemp("refine-home")
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


def run_job(http, body) -> dict:
    r = http.post("/api/v1/jobs", json=body)
    assert r.status_code == 202, r.text
    return wait_job(http, r.json()["id"])


def image_of(http, job) -> Image.Image:
    return Image.open(io.BytesIO(http.get(job["images"][0]["url"]).content)).convert("RGB")


# ------------------------------------------------------------------ native API


def test_native_img2img_job_keeps_its_picture_and_records_it(http, server):
    img = picture(96, 64)
    job = run_job(http, {"prompt": "a cat", "steps": 6, "seed": 5, "init_image": "data:image/png;base64," + b64png(img), "denoising_strength": 0.5})
    assert job["state"] == "done" and job["kind"] == "img2img"
    out = image_of(http, job)
    assert out.size == (96, 64)  # the picture's own size
    info = job["images"][0]["infotext"]
    assert "Denoising strength: 0.5" in info and f"Init image hash: {image_hash(img)}" in info
    # the picture started from is kept under HOME/inputs, named by its hash, and the job names it
    assert job["request"]["init_image"] == f"inputs/{image_hash(img)}.png"
    kept = Image.open(server[2] / "inputs" / f"{image_hash(img)}.png").convert("RGB")
    assert np.array_equal(np.asarray(kept), np.asarray(img))
    assert job["total"] == 4  # int(0.5 * 6) + 1 steps


def test_native_inpaint_job_repaints_only_the_mask(http):
    img = picture()
    box = (16, 16, 40, 40)
    job = run_job(http, {"prompt": "a cat", "steps": 6, "seed": 5, "init_image": b64png(img), "mask": b64png(box_mask(img.size, box)), "denoising_strength": 0.9, "mask_blur": 0})
    assert job["state"] == "done" and job["kind"] == "inpaint"
    a, b = np.asarray(image_of(http, job)).astype(int), np.asarray(img).astype(int)
    outside = np.ones((64, 64), bool)
    outside[box[1]:box[3], box[0]:box[2]] = False
    assert np.array_equal(a[outside], b[outside])
    assert np.abs(a[~outside] - b[~outside]).mean() > 5


def test_native_outpaint_job_gives_the_bigger_canvas(http):
    job = run_job(http, {"prompt": "a cat", "steps": 4, "seed": 5, "init_image": b64png(picture()), "outpaint": {"left": 64}, "denoising_strength": 0.8})
    assert job["state"] == "done" and job["kind"] == "inpaint"
    assert image_of(http, job).size == (128, 64)


@pytest.mark.parametrize("body, status, field, words", [
    ({"init_image": "bm90IGFuIGltYWdl"}, 400, "init_image", "not a PNG"),
    ({"mask": None, "init_image": None, "outpaint": {"left": 64}}, 400, "outpaint", "needs an init image"),
    ({"denoising_strength": 1.5}, 422, "denoising_strength", "between 0 and 1"),
    ({"outpaint": {"left": 100}}, 400, "outpaint", "multiple of 8"),
    ({"resize_mode": "stretch"}, 422, "resize_mode", "just resize"),
])
def test_native_bad_refine_requests_name_the_field(http, body, status, field, words):
    full = {"prompt": "a cat", "init_image": b64png(picture()), **body}
    r = http.post("/api/v1/jobs", json={k: v for k, v in full.items() if v is not None})
    assert r.status_code == status, r.text
    assert words in r.text and field in r.text


def test_a_mask_of_another_shape_is_a_400_before_queueing(http):
    r = http.post("/api/v1/jobs", json={"prompt": "x", "init_image": b64png(picture()), "mask": b64png(box_mask((64, 32), (0, 0, 8, 8)))})
    assert r.status_code == 400 and "64x32" in r.text and "mask" in r.json()["field"] if "field" in r.json() else "mask" in r.text
    r = http.post("/api/v1/jobs", json={"prompt": "x", "init_image": b64png(picture()), "mask": b64png(Image.new("L", (64, 64), 0))})
    assert r.status_code == 400 and "the mask is empty" in r.text


def _huge_png(w: int, h: int) -> bytes:
    """A valid PNG header for a w x h 1-bit picture with tiny compressed data (decoding
    it would need ~w*h bytes): a decompression bomb in a few KB."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    row = b"\x00" + b"\x00" * ((w + 7) // 8)
    raw = zlib.compress(row * 64, 9)  # only the first rows: the header is what matters
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0)) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


def test_a_100_megapixel_upload_is_refused_before_decoding(http):
    data = _huge_png(12_000, 9_000)
    assert len(data) < 100_000
    t0 = time.perf_counter()
    r = http.post("/api/v1/jobs", json={"prompt": "x", "init_image": base64.b64encode(data).decode()})
    assert r.status_code == 400
    assert "108.0 megapixels" in r.text or "108 megapixels" in r.text or "12000x9000" in r.text
    assert "50" in r.text  # the limit
    assert time.perf_counter() - t0 < 5
    r = http.post("/sdapi/v1/img2img", json={**A1111_SIMPLE_IMG2IMG, "init_images": [base64.b64encode(data).decode()]})
    assert r.status_code == 400 and "megapixels" in r.text


# ------------------------------------------------------------------ AUTOMATIC1111's /sdapi/v1/img2img


def test_a1111_img2img_test_suite_payload_is_answered_with_images_and_infotexts(http):
    """AUTOMATIC1111's test_img2img_simple_performed: 200, one image of the size asked."""
    body = {**A1111_SIMPLE_IMG2IMG, "init_images": [b64png(picture(128, 128))]}
    r = http.post("/sdapi/v1/img2img", json=body)
    assert r.status_code == 200, r.text
    data = r.json()
    assert len(data["images"]) == 1
    assert decoded(data["images"][0]).size == (64, 64)
    info = json.loads(data["info"])
    assert "Denoising strength: 0.75" in info["infotexts"][0] and "Sampler: Euler a" in info["infotexts"][0]
    assert info["denoising_strength"] == 0.75 and info["extra_generation_params"]["Denoising strength"] == "0.75"
    assert data["parameters"]["init_images"] is None  # include_init_images false: not echoed


def test_a1111_inpainting_payloads_masked_and_inverted(http):
    """test_inpainting_masked_performed and test_inpainting_with_inverted_masked_performed."""
    img = picture()
    mask = box_mask((64, 64), (0, 0, 32, 64))  # left half
    for invert, changed_side in ((False, slice(0, 16)), (True, slice(48, 64))):
        body = {**A1111_SIMPLE_IMG2IMG, "init_images": [b64png(img)], "mask": b64png(mask), "inpainting_mask_invert": invert, "seed": 7,
                "include_init_images": True, "denoising_strength": 0.9}
        r = http.post("/sdapi/v1/img2img", json=body)
        assert r.status_code == 200, r.text
        data = r.json()
        out = np.asarray(decoded(data["images"][0]).convert("RGB")).astype(int)
        kept_side = slice(48, 64) if not invert else slice(0, 16)  # beyond the blur band
        assert np.array_equal(out[:, kept_side], np.asarray(img).astype(int)[:, kept_side])
        assert np.abs(out[:, changed_side] - np.asarray(img).astype(int)[:, changed_side]).mean() > 5
        info = json.loads(data["info"])["infotexts"][0]
        assert "Mask blur: 4" in info and "Inpaint area: Whole picture" in info and "Masked content: fill" in info
        assert ("Mask mode: Inpaint not masked" in info) == invert
        assert data["parameters"]["init_images"] == body["init_images"]  # include_init_images: echoed


def test_a1111_only_masked_with_padding(http):
    img = picture(128, 128)
    body = {**A1111_SIMPLE_IMG2IMG, "init_images": [b64png(img)], "mask": b64png(box_mask((128, 128), (80, 80, 100, 100))),
            "inpaint_full_res": True, "inpaint_full_res_padding": 16, "inpainting_fill": 1, "mask_blur": 0}
    data = http.post("/sdapi/v1/img2img", json=body).json()
    out = np.asarray(decoded(data["images"][0]).convert("RGB")).astype(int)
    assert out.shape[:2] == (128, 128)  # pasted back into the whole picture
    assert np.array_equal(out[:64], np.asarray(img).astype(int)[:64])
    info = json.loads(data["info"])["infotexts"][0]
    assert "Inpaint area: Only masked" in info and "Masked area padding: 16" in info and "Masked content: original" in info


def test_a1111_img2img_without_init_images_is_a_404_as_in_a1111(http):
    r = http.post("/sdapi/v1/img2img", json={"prompt": "x"})
    assert r.status_code == 404 and "Init image not found" in r.text


def test_a1111_img2img_via_webuiapi(server):
    """webuiapi 0.9.x ``WebUIApi.img2img(images=[...], mask_image=..., inpainting_fill=1)``."""
    import webuiapi

    host, port = server[0].removeprefix("http://").split(":")
    api = webuiapi.WebUIApi(host=host, port=int(port))
    img = picture()
    res = api.img2img(images=[img], prompt="a cat", steps=3, width=64, height=64, denoising_strength=0.6, seed=9, sampler_name="Euler")
    assert res.image.size == (64, 64) and "Denoising strength: 0.6" in res.info["infotexts"][0]
    res = api.img2img(images=[img], mask_image=box_mask((64, 64), (8, 8, 24, 24)), inpainting_fill=1, inpaint_full_res=False, prompt="a cat", steps=3,
                      width=64, height=64, denoising_strength=0.9, seed=9, sampler_name="Euler", mask_blur=0)
    out = np.asarray(res.image.convert("RGB")).astype(int)
    assert np.array_equal(out[32:], np.asarray(img).astype(int)[32:])


def test_the_estimate_counts_only_the_steps_the_strength_runs(http):
    base = {"prompt": "x", "steps": 150, "width": 64, "height": 64, "batch_count": 20}
    full = http.post("/api/v1/estimate", json=base).json()["estimate"]
    half = http.post("/api/v1/estimate", json={**base, "init_image": b64png(picture()), "denoising_strength": 0.5}).json()["estimate"]
    assert full and half
    # 76 of 150 steps; the VAE passes (and the 0.1 s rounding) are the same for both
    assert 0.45 < half["seconds"] / full["seconds"] < 0.6, (half, full)
