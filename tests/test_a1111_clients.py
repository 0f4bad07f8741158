"""Real AUTOMATIC1111 clients against Brushwork (issue 12, items 1, 3, 4, 5, 6, 7).

Each test replays the request sequence of a named client, version cited in its
docstring (the requests were read from the client's source), and asserts what
that client reads from the answers.  Where the client is a Python package that is
installed (``webuiapi``), the package itself is used; the others (Open WebUI,
SillyTavern, the AIYA Discord bot, LibreChat, AUTOMATIC1111's own API tests) are
replayed with httpx, request for request.

The servers are real uvicorn servers on 127.0.0.1.  Clients that must look like
different machines connect from other loopback addresses (127.0.0.2, 127.0.0.3),
because the queue tells clients apart by address (``client_of`` in server/app.py).
The fake engine of test_server_api.py serves where pixels do not matter; the tiny
real checkpoints serve the model switch and the styles.
"""
from __future__ import annotations

import base64
import io
import json
import logging
import shutil
import threading
import time

import httpx
import pytest
import webuiapi
from PIL import Image
from test_server_api import FakeEngine, home  # noqa: F401 - fixture

from brushwork.server import ServeOptions, build, serve_in_thread
from brushwork.server.app import create_app
from brushwork.server.store import JobStore
from brushwork.server.studio import Studio

STYLES_CSV = 'name,prompt,negative_prompt\nCinematic,"{prompt}, cinematic still",cartoon\nNoir,black and white film,colour\n'
#: AUTOMATIC1111's own API test payload: test/test_txt2img.py, ``simple_txt2img_request`` (v1.x)
A1111_SIMPLE_TXT2IMG = {
    "batch_size": 1, "cfg_scale": 7, "denoising_strength": 0, "enable_hr": False, "eta": 0, "firstphase_height": 0,
    "firstphase_width": 0, "height": 64, "n_iter": 1, "negative_prompt": "", "prompt": "example prompt",
    "restore_faces": False, "s_churn": 0, "s_noise": 1, "s_tmax": 0, "s_tmin": 0, "sampler_index": "Euler a",
    "seed": -1, "seed_resize_from_h": -1, "seed_resize_from_w": -1, "steps": 3, "styles": [], "subseed": -1,
    "subseed_strength": 0, "tiling": False, "width": 64,
}


def sillytavern_body(url: str, **changes) -> dict:
    """The body SillyTavern's browser side sends to its server's /api/sd/generate and
    the server forwards unchanged to /sdapi/v1/txt2img: ``generateAutoImage`` in
    public/scripts/extensions/stable-diffusion/index.js (1.12.x), with its defaults
    (hires fix off, upscaler "Latent", denoising 0.7), the scheduler picked from our list."""
    body = {
        "url": url, "auth": "", "prompt": "best quality, absurdres, aesthetic, a cat on a windowsill", "negative_prompt": "lowres, bad anatomy",
        "sampler_name": "DPM++ 2M", "scheduler": "karras", "steps": 20, "cfg_scale": 7, "width": 64, "height": 64,
        "restore_faces": False, "enable_hr": False, "hr_upscaler": "Latent", "hr_scale": 2.0, "denoising_strength": 0.7,
        "hr_second_pass_steps": 0, "override_settings": {"CLIP_stop_at_last_layers": 1}, "override_settings_restore_afterwards": True,
        "clip_skip": 1, "save_images": True, "send_images": True, "do_not_save_grid": False, "do_not_save_samples": False,
    }
    body.update(changes)
    return body


def client(url: str, source: str = "127.0.0.1", timeout: float = 60) -> httpx.Client:
    """An HTTP client connecting from ``source`` (another loopback address = another machine)."""
    return httpx.Client(base_url=url, timeout=timeout, transport=httpx.HTTPTransport(local_address=source))


def running_step(studio) -> int:
    """The step of the generation running now (-1: none)."""
    job, live = studio.current()
    return live.step if job is not None and live is not None else -1


def wait_for(condition, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


@pytest.fixture
def fake(home):  # noqa: F811
    """(url, studio) of a server over the fake engine, with two saved styles."""
    home.styles_file.write_text(STYLES_CSV, encoding="utf-8")
    studio = Studio(FakeEngine(home), JobStore(home.root / "db.sqlite3"), preview_every=2)
    try:
        with serve_in_thread(create_app(studio, web=False)) as url:
            yield url, studio
    finally:
        studio.close()
        studio.store.close()


@pytest.fixture(scope="module")
def real(tiny_home, tmp_path_factory):
    """(url, studio) of a real `brushwork serve` (web page included) on the tiny checkpoints."""
    root = tmp_path_factory.mktemp("clients-home")
    shutil.copytree(tiny_home / "models", root / "models")
    (root / "styles.csv").write_text(STYLES_CSV, encoding="utf-8")
    app, studio = build(ServeOptions(home=str(root), model="tiny-sd1", device="cpu", preview_every=50))
    try:
        with serve_in_thread(app) as url:
            yield url, studio
    finally:
        studio.close()
        studio.store.close()


def png_of(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def load_jobs(studio) -> int:
    return sum(1 for j in studio.store.jobs(500) if j.kind == "load")


# ---------------------------------------------------------------- item 1: options POST


def open_webui_set_image_model(http: httpx.Client, model: str) -> None:
    """``set_image_model`` of Open WebUI's routers/images.py, step for step."""
    options = http.get("/sdapi/v1/options").json()
    if model != options["sd_model_checkpoint"]:
        options["sd_model_checkpoint"] = model
        r = http.post("/sdapi/v1/options", json=options)
        r.raise_for_status()  # main (aiohttp) raises here; 0.6.x ignored the answer, and the model never changed


def test_1_open_webui_switches_models_by_posting_back_the_options_it_read(real):
    """Open WebUI, backend/open_webui/routers/images.py: 0.6.x (requests-based) and main
    (aiohttp, stored commit 02530d50) send the same requests.  ``get_models`` maps
    GET /sdapi/v1/sd-models to ``{id: title, name: model_name}``; choosing a model runs
    ``set_image_model``: GET /sdapi/v1/options, replace ``sd_model_checkpoint`` if it
    differs, POST the *whole* dict back (with the old model's ``sd_checkpoint_hash``:
    we answered 400 for that key).  ``get_image_model`` then reads
    ``options["sd_model_checkpoint"]`` and ``image_generations`` POSTs
    ``{prompt, batch_size, width, height, steps, negative_prompt}`` to txt2img and reads
    ``res["images"]`` and ``res["info"]``."""
    url, studio = real
    with client(url) as http:
        models = [{"id": m["title"], "name": m["model_name"]} for m in http.get("/sdapi/v1/sd-models").json()]
        before = http.get("/sdapi/v1/options").json()
        assert before["sd_model_checkpoint"].startswith("tiny-sd1.safetensors") and before["sd_checkpoint_hash"]
        target = next(m["id"] for m in models if m["name"] == "tiny-sd2")

        open_webui_set_image_model(http, target)
        current = http.get("/sdapi/v1/options").json()["sd_model_checkpoint"]  # get_image_model
        assert current.startswith("tiny-sd2.safetensors") and studio.engine.model.name == "tiny-sd2"

        data = {"prompt": "a lighthouse at dusk", "batch_size": 1, "width": 64, "height": 64, "steps": 2, "negative_prompt": "blurry"}
        res = http.post("/sdapi/v1/txt2img", json=data).json()
        assert png_of(res["images"][0]).size == (64, 64)
        assert json.loads(res["info"])["sd_model_name"] == "tiny-sd2"

        # Open WebUI posts the dict back only when the model differs; other clients post
        # it back unchanged (or with settings changed): every key GET returns is accepted,
        # and an unchanged model loads nothing (and waits for no running job)
        loads = load_jobs(studio)
        everything = http.get("/sdapi/v1/options").json()
        r = http.post("/sdapi/v1/options", json=everything)
        assert r.status_code == 200 and r.json() is None and "x-brushwork-ignored-settings" not in r.headers
        assert load_jobs(studio) == loads

        open_webui_set_image_model(http, next(m["id"] for m in models if m["name"] == "tiny-sd1"))
        assert http.get("/sdapi/v1/options").json()["sd_model_checkpoint"].startswith("tiny-sd1.safetensors")
        assert studio.engine.model.name == "tiny-sd1"


def test_1_noise_settings_are_stored_and_reach_each_generation(fake, caplog):
    """webuiapi 0.9.17 (the PyPI package, used as is): ``get_options()`` then
    ``set_options(options)`` with the whole dict, ``set_options({"randn_source": "NV",
    "eta_noise_seed_delta": 31337})`` (the settings that reproduce NovelAI-style seeds),
    ``txt2img(...)`` and ``txt2img(override_settings={...})``.  The client reads the
    dicts ``get_options``/``set_options`` return.  The settings must arrive in the
    engine's request as ``rng``/``ensd``; values we cannot honour stay 400s; an
    AUTOMATIC1111 dict full of settings Brushwork lacks is accepted, the extras logged."""
    url, studio = fake
    host, port = url.rsplit("//", 1)[1].split(":")
    api = webuiapi.WebUIApi(host=host, port=int(port), sampler="Euler", steps=2)

    options = api.get_options()
    assert {"sd_model_checkpoint", "sd_checkpoint_hash", "randn_source", "eta_noise_seed_delta", "CLIP_stop_at_last_layers"} <= set(options)
    assert api.set_options(options) is None  # its own options back: accepted, nothing changes

    assert api.set_options({"randn_source": "NV", "eta_noise_seed_delta": 31337}) is None
    after = api.get_options()
    assert (after["randn_source"], after["eta_noise_seed_delta"]) == ("NV", 31337)
    api.txt2img(prompt="a red fox", width=64, height=64, seed=3)
    assert (studio.engine.seen[-1].rng, studio.engine.seen[-1].ensd) == ("NV", 31337)

    api.txt2img(prompt="a blue fox", width=64, height=64, seed=3, override_settings={"randn_source": "GPU", "eta_noise_seed_delta": 0})
    assert (studio.engine.seen[-1].rng, studio.engine.seen[-1].ensd) == ("GPU", 0)
    assert api.get_options()["randn_source"] == "NV"  # per request only

    with client(url) as http:
        for bad, words in (({"CLIP_stop_at_last_layers": 13}, "from 1 to 12"), ({"randn_source": "TPU"}, "'CPU', 'GPU', 'NV'"), ({"eta_noise_seed_delta": -1}, "from 0 to"), ({"samples_format": "jpg"}, "'png'")):
            r = http.post("/sdapi/v1/options", json={**options, **bad})
            assert r.status_code == 400 and words in r.json()["detail"] and r.json()["error"]["message"] == r.json()["detail"], r.text
        assert http.get("/sdapi/v1/options").json()["randn_source"] == "NV"  # a refused POST changes nothing
        with caplog.at_level(logging.WARNING, logger="brushwork.server.a1111"):
            r = http.post("/sdapi/v1/options", json={**options, "send_seed": True, "sd_lora": "None", "randn_source": "CPU"})
        assert r.status_code == 200 and r.headers["x-brushwork-ignored-settings"] == "send_seed, sd_lora"
        assert "ignored 2 setting(s)" in caplog.text and "send_seed" in caplog.text
        assert http.get("/sdapi/v1/options").json()["randn_source"] == "CPU"


# ---------------------------------------------------------------- item 3: listings


def test_3_the_aiya_discord_bot_starts_and_every_listing_answers_in_a1111_shape(fake):
    """Kilvoctu/aiyabot core/settings.py (stored commit 002e3668): ``startup_check``
    GETs /sdapi/v1/cmd-flags (401: API auth, 404: "API is unreachable! ... --api" and a
    pause); ``populate_global_vars`` POSTs /login, GETs samplers, prompt-styles,
    face-restorers, embeddings, hypernetworks, upscalers and sd-models, iterates each as
    a list of objects (a 404's ``{"detail": "Not Found"}`` is a dict: ``s2['name']``
    crashed it), then reads /config as JSON.  Then AUTOMATIC1111's own
    test/test_utils.py::test_get_api_url (v1.x: each listing must answer 200) and
    SillyTavern's src/endpoints/stable-diffusion.js /upscalers and /vaes (1.12/1.13):
    upscalers and latent-upscale-modes merged as names with "None" first, sd-vae and
    Forge's sd-modules fetched side by side, the first that answers 2xx used."""
    url, _ = fake
    with client(url) as s:
        r = s.get("/sdapi/v1/cmd-flags")
        assert r.status_code not in (401, 404)
        s.post("/login")  # gradio's login: any answer will do
        r1, r2, r3, r4, r5, r6 = (s.get(f"/sdapi/v1/{p}") for p in ("samplers", "prompt-styles", "face-restorers", "embeddings", "hypernetworks", "upscalers"))
        models = s.get("/sdapi/v1/sd-models")
        sampler_names = [s1["name"] for s1 in r1.json()]
        style_names = {"None": ""}
        for s2 in r2.json():
            style_names[s2["name"]] = s2["prompt"], s2["negative_prompt"]
        facefix = [s3["name"] for s3 in r3.json()]
        embeddings = [n for n, shape in {**r4.json()["loaded"], **r4.json()["skipped"]}.items() if shape["shape"] in (768, 1024)]
        hypernets = [s5["name"] for s5 in r5.json()]
        upscalers = [s6["name"] for s6 in r6.json()]
        model_info = {m["model_name"]: (m["title"], m["hash"], m["filename"]) for m in models.json()}
        config = s.get("/config").json()  # not inside the bot's try: must be JSON
        assert "components" not in config
        assert "DPM++ 2M" in sampler_names and {"alpha", "beta"} <= set(model_info)
        assert style_names == {"None": "", "Cinematic": ("{prompt}, cinematic still", "cartoon"), "Noir": ("black and white film", "colour")}
        assert facefix == [] and hypernets == [] and embeddings == [] and upscalers == ["None", "Lanczos", "Nearest"]

        for path in ("cmd-flags", "samplers", "upscalers", "sd-models", "hypernetworks", "face-restorers", "realesrgan-models", "prompt-styles", "embeddings"):
            assert s.get(f"/sdapi/v1/{path}").status_code == 200, path  # AUTOMATIC1111's test_get_api_url

        # the other listings, in AUTOMATIC1111's shapes (modules/api/models.py)
        assert r6.json()[0] == {"name": "None", "model_name": None, "model_path": None, "model_url": None, "scale": 4}
        assert [u["name"] for u in r6.json()] == ["None", "Lanczos", "Nearest"]
        for path in ("realesrgan-models", "sd-vae", "sd-modules", "script-info", "extensions", "face-restorers", "hypernetworks"):
            assert s.get(f"/sdapi/v1/{path}").json() == [], path
        assert s.get("/sdapi/v1/scripts").json() == {"txt2img": ["x/y/z plot"], "img2img": ["x/y/z plot"]}
        assert set(s.get("/sdapi/v1/memory").json()) == {"ram", "cuda"}
        flags = s.get("/sdapi/v1/cmd-flags").json()
        assert flags["api"] is True and flags["api_auth"] is None and flags["lora_dir"] == "models/loras" and flags["ckpt_dir"] == "models/checkpoints"

        # SillyTavern's /api/sd/upscalers: "0 = None, then Latent Upscalers, then Upscalers"
        names = [x["name"] for x in s.get("/sdapi/v1/upscalers").json()]
        names[1:1] = [x["name"] for x in s.get("/sdapi/v1/latent-upscale-modes").json()]
        assert names[:3] == ["None", "Latent", "Latent (antialiased)"] and names[-2:] == ["Lanczos", "Nearest"] and len(names) == 9
        # SillyTavern's /api/sd/vaes
        answers = [s.get(f"/sdapi/v1/{p}") for p in ("sd-vae", "sd-modules")]
        data = next(a.json() for a in answers if a.is_success)
        assert isinstance(data, list) and [x["model_name"] for x in data] == []


def test_3_a_broken_styles_file_is_a_clear_error_and_the_server_keeps_serving(fake, home):  # noqa: F811
    """The AIYA bot's GET /sdapi/v1/prompt-styles (as above) with a styles.csv saved in
    the wrong encoding: a 500 whose message says what is wrong with which file (no
    absolute path), in the error shape; the other listings keep answering."""
    url, _ = fake
    home.styles_file.write_bytes("name,prompt\nCafé,crème\n".encode("latin-1"))
    with client(url) as s:
        r = s.get("/sdapi/v1/prompt-styles")
        assert r.status_code == 500
        body = r.json()
        assert "styles.csv is not UTF-8" in body["detail"] and body["error"]["message"] == body["detail"] == body["errors"]
        assert str(home.root) not in r.text
        assert s.get("/sdapi/v1/sd-models").status_code == 200


# ---------------------------------------------------------------- item 4: styles


def test_4_styles_are_passed_to_the_engine_and_reported_in_info(real):
    """webuiapi 0.9.17 ``txt2img(styles=[...])``: its payload carries ``styles`` next to
    ``restore_faces: false``, ``tiling: false``, ``subseed_strength: 0`` and the rest;
    the client reads ``result.info`` (the parsed info string) and the PNG's
    ``parameters``.  A saved style is applied, an unknown one is a warning (not the 400
    we answered before).  Then AUTOMATIC1111's own test payload, test/test_txt2img.py
    ``simple_txt2img_request`` (``"styles": []``): a 200, ``info.styles`` empty."""
    url, studio = real
    host, port = url.rsplit("//", 1)[1].split(":")
    api = webuiapi.WebUIApi(host=host, port=int(port), sampler="Euler", steps=2)
    result = api.txt2img(prompt="a lighthouse", negative_prompt="blurry", styles=["Cinematic", "Nope"], width=64, height=64, seed=5)
    assert result.info["styles"] == ["Cinematic", "Nope"]
    assert result.info["all_prompts"] == ["a lighthouse, cinematic still"]
    assert result.info["all_negative_prompts"] == ["blurry, cartoon"]
    assert "Styles: Cinematic" in result.image.info["parameters"]
    assert any("'Nope' not found" in w for w in result.info["warnings"])

    with client(url) as http:
        r = http.post("/sdapi/v1/txt2img", json=A1111_SIMPLE_TXT2IMG)
        assert r.status_code == 200, r.text
        info = json.loads(r.json()["info"])
        assert info["styles"] == [] and info["warnings"] == [] and png_of(r.json()["images"][0]).size == (64, 64)


# ---------------------------------------------------------------- item 2: samplers and schedules

#: AUTOMATIC1111 1.10.1's sampler display names and scheduler names (modules/sd_samplers_*.py,
#: modules/sd_schedulers.py), as /sdapi/v1/samplers and /schedulers list them there
A1111_SAMPLERS = ["DPM++ 2M", "DPM++ SDE", "DPM++ 2M SDE", "DPM++ 2M SDE Heun", "DPM++ 2S a", "DPM++ 3M SDE", "Euler a", "Euler", "LMS", "Heun", "DPM2", "DPM2 a", "DPM fast", "DPM adaptive", "Restart", "DDIM", "DDIM CFG++", "PLMS", "UniPC", "LCM"]
A1111_SCHEDULERS = ["automatic", "uniform", "karras", "exponential", "polyexponential", "sgm_uniform", "kl_optimal", "align_your_steps", "simple", "normal", "ddim", "beta"]


def test_2_sillytavern_default_scheduler_normal_generates(real):
    """SillyTavern 1.12 (public/scripts/extensions/stable-diffusion/index.js): settings saved
    before it had a scheduler option send ``scheduler: "normal"``, its default value, with
    every image; we answered 400 for all of them.  The client reads ``images[0]``."""
    url, _ = real
    with client(url) as http:
        body = {k: v for k, v in sillytavern_body(url, scheduler="normal", steps=3).items() if k not in ("url", "auth")}
        r = http.post("/sdapi/v1/txt2img", json=body)
        assert r.status_code == 200, r.text
        image = png_of(r.json()["images"][0])
        assert image.size == (64, 64)
        assert "Sampler: DPM++ 2M, Schedule type: Normal," in image.info["parameters"]


def test_2_every_a1111_sampler_and_scheduler_is_listed_and_accepted(real):
    """What webuiapi 0.9.17's ``get_samplers()``/``get_schedulers()`` read (``name``) and what
    Open WebUI and SillyTavern fill their menus with: every AUTOMATIC1111 name is listed,
    and a txt2img with each sampler (and each scheduler, lower-case API spelling) gives a
    picture whose infotext names it."""
    url, _ = real
    with client(url) as http:
        listed = [s["name"] for s in http.get("/sdapi/v1/samplers").json()]
        assert listed == A1111_SAMPLERS
        assert [s["name"] for s in http.get("/sdapi/v1/schedulers").json()] == A1111_SCHEDULERS
        for name in A1111_SAMPLERS:
            r = http.post("/sdapi/v1/txt2img", json={"prompt": "x", "sampler_name": name, "steps": 2, "width": 64, "height": 64, "seed": 1})
            assert r.status_code == 200, (name, r.text)
            assert f"Sampler: {name}," in png_of(r.json()["images"][0]).info["parameters"]
        for name in A1111_SCHEDULERS:
            r = http.post("/sdapi/v1/txt2img", json={"prompt": "x", "sampler_name": "Euler", "scheduler": name, "steps": 2, "width": 64, "height": 64, "seed": 1})
            assert r.status_code == 200, (name, r.text)


# ---------------------------------------------------------------- item 5: sizes


@pytest.mark.parametrize("size, made", [("1366x768", (1360, 768)), ("900x500", (896, 496))])
def test_5_open_webui_free_text_sizes_are_rounded_down_like_a1111(fake, size, made):
    """Open WebUI routers/images.py ``image_generations`` (0.6.x and main): the admin's
    free-text IMAGE_SIZE ("1366x768") becomes ``width, height = map(int,
    size.split("x"))`` and POST /sdapi/v1/txt2img ``{prompt, batch_size, width,
    height}`` (no steps unless configured); it decodes each of ``res["images"]`` and
    stores ``res["info"]``.  AUTOMATIC1111 makes the size rounded down to a multiple of
    8; we answered 422.  The native API keeps its strict 422."""
    url, studio = fake
    width, height = tuple(map(int, size.split("x")))
    with client(url) as http:
        r = http.post("/sdapi/v1/txt2img", json={"prompt": "a quiet harbour", "batch_size": 1, "width": width, "height": height})
        assert r.status_code == 200, r.text
        res = r.json()
        assert [png_of(image).size for image in res["images"]] == [made]
        info = json.loads(res["info"])
        assert (info["width"], info["height"]) == made and res["parameters"]["width"] == width
        assert info["warnings"] == [f"the size {size} was rounded down to {made[0]}x{made[1]} (a multiple of 8), as AUTOMATIC1111 does; width and height here are the real ones"]
        assert (studio.engine.seen[-1].width, studio.engine.seen[-1].height) == made
        native = http.post("/api/v1/jobs", json={"prompt": "x", "width": width, "height": height})
        assert native.status_code == 422 and "multiple of 8" in native.json()["message"]


def test_5_librechat_sizes_that_are_multiples_of_8_come_back_unchanged(fake):
    """LibreChat api/app/clients/tools/structured/StableDiffusion.js (``_call``): POST
    /sdapi/v1/txt2img ``{prompt, negative_prompt, cfg_scale: 4.5, steps: 22, width:
    1024, height: 1024}``, then reads ``images[0]`` and, from the parsed ``info``,
    ``height``, ``width``, ``seed`` and ``infotexts[0]``."""
    url, _ = fake
    with client(url) as http:
        data = http.post("/sdapi/v1/txt2img", json={"prompt": "a red barn", "negative_prompt": "blurry", "cfg_scale": 4.5, "steps": 22, "width": 1024, "height": 1024}).json()
        info = json.loads(data["info"])
        assert png_of(data["images"][0]).size == (1024, 1024) and (info["width"], info["height"]) == (1024, 1024)
        assert isinstance(info["seed"], int) and info["infotexts"][0].split("\n").pop().startswith("Steps: 22") and info["warnings"] == []


# ---------------------------------------------------------------- item 6: interrupt and skip


def test_6_sillytavern_aborting_while_queued_cancels_its_own_job_not_the_running_one(fake):
    """SillyTavern src/endpoints/stable-diffusion.js ``router.post('/generate')`` (1.12/1.13,
    stored commit 02903fdd): GET /sdapi/v1/options (is it Forge?), POST the browser's
    body to /sdapi/v1/txt2img; when the browser goes away it POSTs /sdapi/v1/interrupt
    (no body, no header but Authorization) and aborts its own fetch.  Here its server
    (127.0.0.2) does that while its job still waits behind a Discord bot's job
    (127.0.0.3).  AUTOMATIC1111 semantics stopped the bot's job and ran SillyTavern's
    later for nobody; now the waiting job is cancelled and the bot's runs to the end."""
    url, studio = fake
    studio.engine.delay = 0.01
    out: dict[str, httpx.Response] = {}

    def bot():
        with client(url, "127.0.0.3") as c:
            out["bot"] = c.post("/sdapi/v1/txt2img", json={"prompt": "bot job", "steps": 60, "n_iter": 2, "width": 64, "height": 64})

    def sillytavern():
        with client(url, "127.0.0.2") as c:
            assert "forge_preset" not in c.get("/sdapi/v1/options").json()
            out["st"] = c.post("/sdapi/v1/txt2img", json=sillytavern_body(url))

    threads = [threading.Thread(target=bot)]
    threads[0].start()
    wait_for(lambda: running_step(studio) > 0, what="the bot's job to run")
    threads.append(threading.Thread(target=sillytavern))
    threads[1].start()
    wait_for(lambda: len(studio.queue()) == 2, what="SillyTavern's job to wait")
    with client(url, "127.0.0.2") as st:
        assert st.post("/sdapi/v1/interrupt").json() == {}  # the browser closed: SillyTavern's server interrupts
    for t in threads:
        t.join(30)
    assert out["st"].status_code == 409 and "cancelled before it started" in out["st"].json()["detail"]
    bot_info = json.loads(out["bot"].json()["info"])
    assert out["bot"].status_code == 200 and len(out["bot"].json()["images"]) == 2 and bot_info["interrupted"] is False
    assert [p for _, p in studio.engine.runs] == ["bot job"]


def test_6_interrupt_and_skip_act_on_the_callers_running_job_only(fake):
    """SillyTavern's interrupt (as above) and webuiapi 0.9.17's ``skip()``/``interrupt()``
    (POST /sdapi/v1/skip, /sdapi/v1/interrupt, no body) while the caller's own job runs:
    the same calls from another address leave it alone; from its own address skip ends
    the current batch and interrupt the rest, and the blocked txt2img call answers 200
    with the partly denoised pictures and ``info.interrupted`` (AUTOMATIC1111's
    behaviour).  A client with several jobs (a bot serving many users from one
    address) gets its running one interrupted, the waiting ones still run, as
    requests waiting on AUTOMATIC1111's lock do."""
    url, studio = fake
    studio.engine.delay = 0.02
    out: dict[str, httpx.Response] = {}

    def post(key, source, body):
        with client(url, source) as c:
            out[key] = c.post("/sdapi/v1/txt2img", json=body)

    t = threading.Thread(target=post, args=("st", "127.0.0.2", sillytavern_body(url, steps=40, n_iter=3)))
    t.start()
    wait_for(lambda: running_step(studio) > 2, what="SillyTavern's job to run")
    live = studio.current()[1]
    with client(url, "127.0.0.3") as other:
        assert other.post("/sdapi/v1/skip").status_code == 200 and other.post("/sdapi/v1/interrupt").json() == {}
    assert not live.control.skipped and not live.control.interrupted
    with client(url, "127.0.0.2") as st:
        st.post("/sdapi/v1/skip")
        wait_for(lambda: live.step > 40, what="the second batch")
        st.post("/sdapi/v1/interrupt")
    t.join(30)
    res = out["st"]
    assert res.status_code == 200 and len(res.json()["images"]) == 2 and json.loads(res.json()["info"])["interrupted"] is True

    threads = [threading.Thread(target=post, args=(f"bot{i}", "127.0.0.4", {"prompt": f"user {i}", "steps": 40, "width": 64, "height": 64})) for i in range(2)]
    threads[0].start()
    wait_for(lambda: running_step(studio) > 2, what="the bot's first job")
    threads[1].start()
    wait_for(lambda: len(studio.queue()) == 2, what="the bot's second job to wait")
    with client(url, "127.0.0.4") as bot:
        bot.post("/sdapi/v1/interrupt")
    for t in threads:
        t.join(30)
    assert json.loads(out["bot0"].json()["info"])["interrupted"] is True
    assert json.loads(out["bot1"].json()["info"])["interrupted"] is False and len(out["bot1"].json()["images"]) == 1


# ---------------------------------------------------------------- item 7: errors


def test_7_missing_routes_are_501_and_refusals_land_where_each_client_reads_them(fake):
    """Where each client reads an error:

    * webuiapi 0.9.17 raises ``RuntimeError(status, response.text)`` for any non-200
      (``_to_api_result``): ``interrogate(image)`` must name the missing feature
      (img2img and the extras work now: tests/test_refine_api.py, tests/test_hires_api.py);
    * Open WebUI 0.6.x routers/images.py, automatic1111 branch: ``res["images"]`` fails
      on an error body, then ``data = r.json(); if "error" in data: error =
      data["error"]["message"]`` becomes the message the user sees (AUTOMATIC1111's
      ``error`` string made that line crash with a 500);
    * SillyTavern src/endpoints/stable-diffusion.js ``/generate``: ``const text = await
      result.text()`` goes into the error it logs;
    * AUTOMATIC1111's own test payload with ``restore_faces: true`` (test_txt2img.py):
      refused by design, a 400 in the same shape; FastAPI-style clients read the 422's
      ``detail`` list."""
    url, _ = fake
    host, port = url.rsplit("//", 1)[1].split(":")
    api = webuiapi.WebUIApi(host=host, port=int(port))
    with pytest.raises(RuntimeError) as raised:
        api.interrogate(Image.new("RGB", (64, 64)))
    status, text = raised.value.args
    assert status == 501 and "interrogate" in text and "not implemented in Brushwork" in text and "docs/http-api.md" in text

    def open_webui_error(r: httpx.Response) -> str:
        res = r.json()
        try:
            res["images"]
            return ""
        except KeyError:
            data = r.json()
            return data["error"]["message"] if "error" in data else "'images'"

    with client(url) as http:
        for path in ("interrogate", "unload-checkpoint", "create/embedding"):
            r = http.post(f"/sdapi/v1/{path}", json={})
            assert r.status_code == 501 and r.json()["error"]["type"] == "NotImplemented" and "Brushwork" in r.json()["detail"], path

        refused = http.post("/sdapi/v1/txt2img", json={"prompt": "x", "batch_size": 1, "width": 64, "height": 64, "restore_faces": True})
        assert refused.status_code == 400 and "face restoration" in open_webui_error(refused)
        invalid = http.post("/sdapi/v1/txt2img", json={"prompt": "x", "batch_size": 1, "width": 64, "height": 64, "steps": "many"})
        assert invalid.status_code == 422 and open_webui_error(invalid).startswith("steps: Input should be a valid integer")
        assert invalid.json()["detail"][0]["loc"] == ["body", "steps"]  # FastAPI's list, as AUTOMATIC1111 sends
        scripts = http.post("/sdapi/v1/txt2img", json={"prompt": "x", "width": 64, "height": 64, "alwayson_scripts": {"ADetailer": {"args": []}}})
        assert scripts.status_code == 422 and "ADetailer" in open_webui_error(scripts)

        hires = http.post("/sdapi/v1/txt2img", json=sillytavern_body(url, enable_hr=True, hr_upscaler="4x-NotInstalled"))
        assert hires.status_code == 400 and "unknown upscaler '4x-NotInstalled'" in hires.text and "Lanczos" in hires.text  # SillyTavern's result.text()

        a1111 = http.post("/sdapi/v1/txt2img", json={**A1111_SIMPLE_TXT2IMG, "restore_faces": True})
        assert a1111.status_code == 400 and a1111.json()["detail"] == a1111.json()["errors"] == a1111.json()["error"]["message"]

        missing = http.get("/sdapi/v1/artists")  # webuiapi's get_artists(): gone from AUTOMATIC1111 too
        assert missing.status_code == 404 and "docs/http-api.md" in open_webui_error(missing)
