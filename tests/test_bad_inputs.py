"""The bad-input suite: every route and field of /api/v1 and /sdapi/v1 fed wrong
types, out-of-range and non-finite numbers, huge strings, bad encodings, image
bombs, bad ids, path traversal and wrong content types.

Every case must be answered with its 4xx (never a 500; a 501 for AUTOMATIC1111 routes Brushwork does not have yet) and a readable message (a
non-empty ``detail`` or ``message``), and the server must keep answering
``GET /api/v1/status`` within a second while the case runs (it is sent from a
thread) and after it.  One real uvicorn server on 127.0.0.1 over the fake engine
serves the whole table.  Case ids are numbered ``case-NNN-of-TOTAL-...``.
"""
from __future__ import annotations

import http.client
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Optional
from urllib.parse import quote

import pytest
from test_http_inputs import b64, message, png_chunk, png_file, send, text_chunk, ztxt_bomb
from test_server_api import FakeEngine

from brushwork.paths import DataHome
from brushwork.server import serve_in_thread
from brushwork.server.app import create_app
from brushwork.server.store import JobStore
from brushwork.server.studio import Studio

STATUS_WITHIN = 1.0  # seconds GET /api/v1/status may take during and after a case
JSON = {"Content-Type": "application/json"}


@dataclass
class Case:
    name: str
    method: str
    path: str
    status: int
    body: Any = None  # dict/list: sent as JSON; bytes: sent as is
    headers: dict[str, str] = field(default_factory=dict)
    words: Optional[str] = None  # must appear in the message


def raw(value: Any) -> bytes:
    """JSON text for values json.dumps would refuse or spell differently (NaN, Infinity)."""
    return json.dumps(value).encode() if not isinstance(value, bytes) else value


def field_cases(route: str, prefix: str, base: dict, table: list[tuple[str, Any, int]]) -> list[Case]:
    """One case per (field, bad value, status): ``base`` with that field replaced."""
    out = []
    for name, value, status in table:
        body = b"{" + b", ".join([f'"{k}": '.encode() + raw(v) for k, v in {**base, name: value}.items()]) + b"}"
        shown = value.decode() if isinstance(value, bytes) else (f"{type(value).__name__}{len(value)}" if isinstance(value, (str, list)) and len(value) > 20 else repr(value))
        out.append(Case(f"{prefix}-{name}={shown[:24]}", "POST", route, status, body, JSON))
    return out


def body_shape_cases(route: str, prefix: str, json_without_type: bool) -> list[Case]:
    """Content types and body shapes every JSON route must refuse."""
    return [
        Case(f"{prefix}-text-plain", "POST", route, 415, b'{"prompt": "x"}', {"Content-Type": "text/plain"}, "application/json"),
        Case(f"{prefix}-form-encoded", "POST", route, 415, b"prompt=x&steps=1", {"Content-Type": "application/x-www-form-urlencoded"}, "application/json"),
        Case(f"{prefix}-multipart", "POST", route, 415, b"--b\r\n\r\nx\r\n--b--\r\n", {"Content-Type": "multipart/form-data; boundary=b"}, "application/json"),
        Case(f"{prefix}-no-type-not-json", "POST", route, 422 if json_without_type else 415, b"prompt=x", {}),
        Case(f"{prefix}-empty-body", "POST", route, 422, b"", JSON),
        Case(f"{prefix}-json-array", "POST", route, 422, b'[{"prompt": "x"}]', JSON),
        Case(f"{prefix}-json-string", "POST", route, 422, b'"x"', JSON),
        Case(f"{prefix}-json-null", "POST", route, 422, b"null", JSON),
        Case(f"{prefix}-json-nan", "POST", route, 422, b"NaN", JSON),
        Case(f"{prefix}-deeply-nested", "POST", route, 422, b"[" * 100_000 + b"]" * 100_000, JSON),
        Case(f"{prefix}-nested-object", "POST", route, 422, b'{"a": ' * 5000 + b"1" + b"}" * 5000, JSON),
        Case(f"{prefix}-invalid-utf8", "POST", route, 422, b'{"prompt": "\xff\xfe\xfa"}', JSON, "UTF-8"),
        Case(f"{prefix}-latin1", "POST", route, 422, '{"prompt": "café"}'.encode("latin-1"), JSON, "UTF-8"),
        Case(f"{prefix}-malformed", "POST", route, 422, b'{"prompt": "x",', JSON, "JSON"),
        Case(f"{prefix}-trailing-garbage", "POST", route, 422, b'{"prompt": "x"} trailing', JSON, "JSON"),
    ]


HUGE = "x" * 100_001
SURROGATE = b'"a \\ud800 b"'  # valid JSON, but no valid text: a lone UTF-16 surrogate
TRAVERSALS = ["../../etc/passwd", "/etc/hosts", "..%2F..%2Fetc%2Fpasswd", "C:\\Windows\\win.ini", "models/../../../x.safetensors", "~/.ssh/id_rsa", "\x00"]


def image_cases() -> dict[str, tuple[str, str]]:
    """name -> (base64 image field, words in the message) for images png-info must refuse."""
    params = "a\nSteps: 1, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 8x8"
    good = png_file(before=(text_chunk("parameters", params),))
    bad_crc = good.replace(b"Seed: 1", b"Seed: 2")
    no_ihdr = good[:8] + text_chunk("parameters", params) + good[8:]
    return {
        "not-base64": ("%%%", "base64"),
        "base64-of-text": (b64(b"hello, not an image"), "not a readable"),
        "data-url-not-base64": ("data:image/png,abc", "base64 data: URLs"),
        "data-url-bad-base64": ("data:image/png;base64,!!!", "base64"),
        "truncated-png": (b64(good[:40]), "cut off"),
        "png-bad-crc": (b64(bad_crc), "CRC"),
        "png-without-ihdr": (b64(no_ihdr), "IHDR"),
        "png-text-bomb": (b64(png_file(before=(ztxt_bomb("parameters", 64 << 20),))), "longer than 1 MiB"),
        "png-many-texts": (b64(png_file(before=tuple(ztxt_bomb(f"t{i}", 1 << 20) for i in range(5)))), "more than 4 MiB"),
        "png-huge-chunk-length": (b64(good[:33] + b"\x7f\xff\xff\xff" + b"tEXt" + b"x" * 10), "cut off"),
        "jpeg-garbage": (b64(b"\xff\xd8\xff\xe1\x00"), "not a readable"),
        "jpeg-bad-marker": (b64(b"\xff\xd8\xff\xe0\x00\x10" + b"\0" * 14 + b"\x00\x01"), "JPEG"),
        "webp-truncated": (b64(b"RIFF\x10\0\0\0WEBPEXIF\xff\xff\0\0"), "cut off"),
        "gif": (b64(b"GIF89a" + b"\0" * 20), "not a PNG, JPEG or WebP"),
        "png-chunk-bytes": (b64(png_chunk(b"tEXt", b"a\0b")), "not a PNG"),
    }


def build_cases(job_id: str, image_id: int) -> list[Case]:
    cases: list[Case] = []
    # ------------------------------------------------ POST /api/v1/jobs
    cases += body_shape_cases("/api/v1/jobs", "jobs", json_without_type=False)
    cases += field_cases("/api/v1/jobs", "jobs", {"prompt": "x", "steps": 1}, [
        ("prompt", 5, 422), ("prompt", None, 422), ("prompt", ["a"], 422), ("prompt", HUGE, 422), ("prompt", SURROGATE, 422),
        ("negative_prompt", 5, 422), ("negative_prompt", HUGE, 422),
        ("seed", "1", 422), ("seed", 1.5, 422), ("seed", -2, 422), ("seed", 2**64, 422), ("seed", True, 422), ("seed", 10**400, 422),
        ("steps", 0, 422), ("steps", 151, 422), ("steps", "20", 422), ("steps", 20.5, 422), ("steps", 10**30, 422), ("steps", b"NaN", 422),
        ("cfg_scale", -1, 422), ("cfg_scale", 31, 422), ("cfg_scale", b"NaN", 422), ("cfg_scale", b"Infinity", 422), ("cfg_scale", b"-Infinity", 422), ("cfg_scale", "7", 422), ("cfg_scale", b"1e999", 422),
        ("sampler", "Eulr", 400), ("sampler", 5, 422), ("sampler", "x" * 65, 422),
        ("schedule", "karas", 400), ("schedule", "x" * 65, 422),
        ("width", 500, 422), ("width", 8192, 422), ("width", 8, 422), ("width", -64, 422), ("width", "512", 422), ("width", 512.0, 422),
        ("height", 500, 422), ("height", 0, 422), ("height", 2**63, 422),
        ("batch_size", 0, 422), ("batch_size", 17, 422), ("batch_count", 0, 422), ("batch_count", 101, 422),
        ("clip_skip", 0, 422), ("clip_skip", 13, 422),
        ("model", "gamma", 404), ("model", 5, 422), ("model", "x" * 513, 422),
        *[("model", t, 404) for t in TRAVERSALS],
        *[("prompt", f"a <lora:{t}:1>", 400) for t in TRAVERSALS[:4]],
        ("prompt", "a <lora:balloon:abc>", 400), ("prompt", "a <lora:baloon:1>", 400),
        ("stpes", 20, 422),
    ])
    # ------------------------------------------------ POST /api/v1/estimate (the same body as a job)
    cases += body_shape_cases("/api/v1/estimate", "estimate", json_without_type=False)
    cases += field_cases("/api/v1/estimate", "estimate", {"prompt": "x", "steps": 1}, [
        ("steps", 0, 422), ("steps", "20", 422), ("width", 500, 422), ("cfg_scale", b"NaN", 422), ("batch_count", 101, 422),
        ("styles", "Watercolor", 422), ("styles", ["x" * 201], 422), ("rng", "TPU", 422), ("ensd", -1, 422), ("stpes", 20, 422),
    ])
    # ------------------------------------------------ POST /api/v1/models/current
    cases += body_shape_cases("/api/v1/models/current", "switch", json_without_type=False)
    cases += field_cases("/api/v1/models/current", "switch", {"name": "alpha"}, [
        ("name", "", 422), ("name", SURROGATE, 422), ("name", 5, 422), ("name", None, 422), ("name", "x" * 513, 422), ("name", "gamma", 404),
        *[("name", t, 404) for t in TRAVERSALS], ("extra", 1, 422),
    ])
    cases.append(Case("switch-wait-not-bool", "POST", "/api/v1/models/current?wait=maybe", 422, {"name": "alpha"}))
    # ------------------------------------------------ POST /api/v1/tokens
    cases += body_shape_cases("/api/v1/tokens", "tokens", json_without_type=False)
    cases += field_cases("/api/v1/tokens", "tokens", {}, [("text", 5, 422), ("text", SURROGATE, 422), ("text", None, 422), ("text", HUGE, 422), ("text", ["a"], 422)])
    # ------------------------------------------------ POST /api/v1/png-info and /sdapi/v1/png-info
    images = image_cases()
    for route, prefix in (("/api/v1/png-info", "pnginfo"), ("/sdapi/v1/png-info", "sd-pnginfo")):
        cases += body_shape_cases(route, prefix, json_without_type=prefix.startswith("sd"))
        cases += [Case(f"{prefix}-{name}", "POST", route, 400, {"image": data}, words=words) for name, (data, words) in images.items()]
        cases += field_cases(route, prefix, {}, [("image", 5, 422), ("image", SURROGATE, 400 if prefix.startswith("sd") else 422), ("image", None, 422), ("image", ["a"], 422)])
    cases.append(Case("pnginfo-empty-image", "POST", "/api/v1/png-info", 422, {"image": ""}))
    cases.append(Case("sd-pnginfo-empty-image", "POST", "/sdapi/v1/png-info", 400, {"image": ""}, words="image is empty"))
    # ------------------------------------------------ POST /sdapi/v1/txt2img
    cases += body_shape_cases("/sdapi/v1/txt2img", "txt2img", json_without_type=True)
    small = {"steps": 1, "width": 64, "height": 64}
    cases += field_cases("/sdapi/v1/txt2img", "txt2img", small, [
        ("prompt", 5, 422), ("prompt", HUGE, 422), ("prompt", SURROGATE, 422), ("negative_prompt", HUGE, 422),
        ("steps", 0, 422), ("steps", 99999, 422), ("steps", "abc", 422), ("steps", b"NaN", 422),
        ("cfg_scale", b"NaN", 422), ("cfg_scale", b"Infinity", 422), ("cfg_scale", 31, 422), ("cfg_scale", "much", 422),
        ("width", 5, 422), ("width", 8192, 422), ("width", 63, 422), ("height", 5, 422), ("height", "abc", 422),
        ("seed", 2**64, 422), ("seed", -2, 422), ("batch_size", 0, 422), ("batch_size", 17, 422), ("n_iter", 0, 422), ("n_iter", 101, 422),
        ("sampler_name", "nope", 400), ("sampler_name", "x" * 65, 422), ("sampler_index", "x" * 65, 422), ("scheduler", "nope", 400),
        ("eta", b"NaN", 422), ("denoising_strength", b"Infinity", 422), ("s_noise", b"-Infinity", 422), ("hr_scale", b"NaN", 422), ("subseed_strength", b"NaN", 422),
        ("subseed_strength", 1.5, 422), ("subseed", -2, 422), ("hr_cfg", 99, 422), ("hr_prompt", HUGE, 422), ("restore_faces", True, 400), ("tiling", True, 400),
        ("styles", "x", 422), ("styles", [5], 422), ("styles", ["x" * 257], 422), ("styles", ["x"] * 65, 422),
        ("refiner_checkpoint", "x", 400), ("refiner_checkpoint", "x" * 513, 422), ("seed_resize_from_w", 10, 400),
        ("script_name", "x/y/z plot", 400), ("script_args", "x", 422),
        ("script_name", "x", 422), ("script_name", "x" * 257, 422), ("alwayson_scripts", {"x": {}}, 422), ("alwayson_scripts", "x", 422),
        ("override_settings", {"CLIP_stop_at_last_layers": 99}, 400), ("override_settings", {"CLIP_stop_at_last_layers": "2"}, 400),
        ("override_settings", {"randn_source": "TPU"}, 400), ("override_settings", {"eta_noise_seed_delta": -1}, 400),
        ("override_settings", {"sd_model_checkpoint": 5}, 400), ("override_settings", {"sd_model_checkpoint": "x" * 600}, 400),
        *[("override_settings", {"sd_model_checkpoint": t}, 404) for t in TRAVERSALS[:4]],
        ("override_settings", "x", 422), ("comments", json.loads('{"a": ' * 40 + "1" + "}" * 40), 422), ("script_args", json.loads("[" * 40 + "]" * 40), 422),
        ("disable_extra_networks", "maybe", 422), ("send_images", "maybe", 422),
        *[("prompt", f"a <lora:{t}:1>", 400) for t in TRAVERSALS[:4]],
    ])
    # the hires fix: values that only matter with enable_hr
    cases += field_cases("/sdapi/v1/txt2img", "txt2img-hr", {**small, "enable_hr": True}, [
        ("hr_scale", 0.5, 400), ("hr_scale", 80, 400), ("hr_upscaler", "4x-Nothing", 400), ("hr_upscaler", "../../etc/passwd", 400),
        ("hr_second_pass_steps", -1, 400), ("hr_second_pass_steps", 999, 400), ("hr_resize_x", 30, 400), ("hr_sampler_name", "Eulr", 400),
        ("denoising_strength", 1.5, 400), ("hr_checkpoint_name", "other", 400),
    ])
    # ------------------------------------------------ POST /sdapi/v1/extra-single-image and extra-batch-images
    small_png = b64(png_file())
    for route, prefix in (("/sdapi/v1/extra-single-image", "extras"), ("/sdapi/v1/extra-batch-images", "extras-batch")):
        cases += body_shape_cases(route, prefix, json_without_type=True)
        base = {"image": small_png} if prefix == "extras" else {"imageList": [{"data": small_png, "name": "a.png"}]}
        cases += field_cases(route, prefix, {**base, "upscaler_1": "Lanczos"}, [
            ("upscaler_1", "4x-Nothing", 400), ("upscaler_1", "../x", 400), ("upscaling_resize", 0.5, 422), ("upscaling_resize", 99, 422),
            ("upscaling_resize", b"NaN", 422), ("resize_mode", 2, 422), ("upscaling_resize_w", 0, 422), ("gfpgan_visibility", 0.5, 400),
            ("codeformer_visibility", 1, 400), ("extras_upscaler_2_visibility", 2, 422), ("upscaler_2", "x" * 300, 422),
        ])
    not_pictures = {"text": "aGVsbG8gd29ybGQ=", "data-url-not-base64": "data:image/png,abc", "truncated-png": b64(png_file())[:40], "empty": ""}
    cases += [Case(f"extras-{name}", "POST", "/sdapi/v1/extra-single-image", 400, {"image": data, "upscaler_1": "Lanczos"}, words="picture") for name, data in not_pictures.items()]
    cases.append(Case("extras-batch-empty", "POST", "/sdapi/v1/extra-batch-images", 400, {"imageList": []}, words="imageList is empty"))
    cases.append(Case("extras-batch-too-many", "POST", "/sdapi/v1/extra-batch-images", 422, {"imageList": [{"data": small_png}] * 17}))
    # ------------------------------------------------ POST /api/v1/upscale
    cases += body_shape_cases("/api/v1/upscale", "upscale", json_without_type=False)
    cases += field_cases("/api/v1/upscale", "upscale", {"image_id": image_id}, [
        ("image_id", 0, 422), ("image_id", "1", 422), ("image_id", 2**63, 422), ("upscaler", "Lancos", 400), ("upscaler", "../../x", 400),
        ("upscaler", 5, 422), ("scale", 0.5, 422), ("scale", 9, 422), ("scale", b"NaN", 422), ("width", 5, 422), ("visibility_2", 2, 422),
        ("image", "abc", 400), ("stuff", 1, 422),
    ])
    cases.append(Case("upscale-neither", "POST", "/api/v1/upscale", 400, {"upscaler": "Lanczos"}, words="either image_id"))
    cases.append(Case("upscale-missing-image", "POST", "/api/v1/upscale", 404, {"image_id": 999_999}))
    cases.append(Case("upscale-too-large", "POST", "/api/v1/upscale", 422, {"image": small_png, "width": 9000, "height": 9000}))
    cases.append(Case("upscale-factor-too-large", "POST", "/api/v1/upscale", 400, {"image": b64(png_file(width=4000, height=8)), "scale": 4}, words="larger than 8192"))
    cases += [Case(f"upscale-{name}", "POST", "/api/v1/upscale", 400, {"image": data}, words="picture") for name, data in not_pictures.items()]
    # explicit fields win over the infotext's, so these send the infotext alone
    cases += field_cases("/sdapi/v1/txt2img", "txt2img", {}, [
        ("infotext", 5, 422), ("infotext", SURROGATE, 422), ("infotext", "a," * 120_000, 422),
        ("infotext", "a cat\nSteps: 99999, Sampler: Euler, Size: 64x64", 400), ("infotext", "a cat\nSteps: 1, Sampler: Euler, Size: 5x5", 400),
        ("infotext", "a cat\nSteps: 1, CFG scale: nan, Size: 64x64", 400), ("infotext", "a cat\nSteps: 1, Seed: abc, Size: 64x64", 400),
        ("infotext", "a cat\nSteps: 1, Clip skip: 99, Size: 64x64", 400), ("infotext", "a cat\nSteps: 1, Sampler: Eulr, Size: 64x64", 400),
        ("infotext", "a cat\nSteps: 1, Seed: " + "9" * 5000 + ", Size: 64x64", 400),
        ("infotext", "a" * 200_000, 400), ("infotext", "x" + " " * 200_000 + "x", 400), ("infotext", "ab/cd-ef " * 20_000, 400),
    ])
    for i, (name, words) in enumerate([("Steps", "from 1 to 150"), ("Size", "from 64 to 4096")]):
        line = ["a cat\nSteps: 99999, Sampler: Euler, Size: 64x64", "a cat\nSteps: 1, Sampler: Euler, Size: 5x5"][i]
        cases.append(Case(f"txt2img-infotext-{name}-names-range", "POST", "/sdapi/v1/txt2img", 400, {"infotext": line}, words=words))
    # ------------------------------------------------ POST /sdapi/v1/options
    cases += body_shape_cases("/sdapi/v1/options", "sd-options", json_without_type=True)
    cases += field_cases("/sdapi/v1/options", "sd-options", {}, [
        ("sd_model_checkpoint", "", 400), ("sd_model_checkpoint", SURROGATE, 404), ("sd_model_checkpoint", 5, 400), ("sd_model_checkpoint", "x" * 600, 400),
        *[("sd_model_checkpoint", t, 404) for t in TRAVERSALS[:4]],
        ("CLIP_stop_at_last_layers", 99, 400), ("CLIP_stop_at_last_layers", True, 400), ("CLIP_stop_at_last_layers", "2", 400), ("CLIP_stop_at_last_layers", b"NaN", 400),
        ("show_progress_every_n_steps", 0, 400), ("show_progress_every_n_steps", b"Infinity", 400),
        ("samples_format", "jpg", 400), ("sd_vae", "x", 400), ("enable_pnginfo", 1, 400),
        ("randn_source", "TPU", 400), ("randn_source", "cpu", 400), ("randn_source", 1, 400),
        ("eta_noise_seed_delta", -1, 400), ("eta_noise_seed_delta", True, 400), ("eta_noise_seed_delta", 2**40, 400), ("eta_noise_seed_delta", b"NaN", 400),
    ])
    # ------------------------------------------------ the Models page: pull, downloads, remove, LoRA previews
    cases += body_shape_cases("/api/v1/models/pull", "pull", json_without_type=False)
    cases += field_cases("/api/v1/models/pull", "pull", {"source": "hello world"}, [
        ("source", "hello world", 400), ("source", "", 422), ("source", 5, 422), ("source", None, 422), ("source", "x" * 2049, 422), ("source", SURROGATE, 422),
        ("source", "ftp://example.com/x.safetensors", 400), ("source", "file:///etc/passwd", 400), *[("source", t, 400) for t in TRAVERSALS[:4]],
        ("kind", "model", 422), ("kind", 1, 422), ("token", 5, 422), ("token", "x" * 513, 422), ("extra", 1, 422),
    ])
    cases += body_shape_cases("/api/v1/models/remove", "remove", json_without_type=False)
    cases += field_cases("/api/v1/models/remove", "remove", {"kind": "lora", "name": "balloon"}, [
        ("confirm", False, 400), ("confirm", "yes", 422), ("confirm", 1, 422), ("kind", "model", 422), ("kind", None, 422),
        ("name", "", 422), ("name", 5, 422), ("name", "x" * 513, 422), ("name", SURROGATE, 422), ("extra", 1, 422),
    ])
    cases += field_cases("/api/v1/models/remove", "remove-confirmed", {"kind": "lora", "confirm": True}, [
        ("name", "gamma", 404), *[("name", t, 404) for t in TRAVERSALS],
    ])
    for bad in ("nope", "x" * 2000, quote("../../etc/passwd", safe=""), "%00", "%FF%FE", "%2Fetc%2Fpasswd"):
        cases.append(Case(f"GET-download-{bad[:16]}", "GET", f"/api/v1/downloads/{bad}", 404))
        cases.append(Case(f"GET-download-events-{bad[:16]}", "GET", f"/api/v1/downloads/{bad}/events", 404))
        cases.append(Case(f"POST-download-cancel-{bad[:16]}", "POST", f"/api/v1/downloads/{bad}/cancel", 404))
    for bad in ("balloon", "gamma", quote("../../etc/passwd", safe=""), "%2Fetc%2Fhosts", "%00", "x" * 2000):
        cases.append(Case(f"GET-lora-preview-{bad[:16]}", "GET", f"/api/v1/loras/{bad}/preview", 404))
    # ------------------------------------------------ GET query parameters
    for path in ("/api/v1/images", "/api/v1/jobs"):
        for query, status in (("limit=0", 422), ("limit=100000", 422), ("limit=x", 422), ("limit=1e400", 422), ("before=-1", 422), ("before=99999999999999999999", 422), ("before=x", 422), ("before=1.5", 422)):
            cases.append(Case(f"GET-{path.rsplit('/', 1)[1]}?{query[:24]}", "GET", f"{path}?{query}", status))
    cases += [
        Case("GET-jobs?state=bogus", "GET", "/api/v1/jobs?state=bogus", 400, words="unknown job state"),
        Case("GET-jobs?state=long", "GET", "/api/v1/jobs?state=" + "done," * 100, 422),
        Case("GET-sd-progress?skip=maybe", "GET", "/sdapi/v1/progress?skip_current_image=maybe", 422),
    ]
    # ------------------------------------------------ ids in paths
    for bad, status in (("nope", 404), ("x" * 2000, 404), (quote("../../etc/passwd", safe=""), 404), ("%00", 404), ("%FF%FE", 404), ("-1", 404), (job_id + "x", 404), ("%2Fetc%2Fpasswd", 404)):
        cases.append(Case(f"GET-job-{bad[:16]}", "GET", f"/api/v1/jobs/{bad}", status))
        cases.append(Case(f"POST-cancel-{bad[:16]}", "POST", f"/api/v1/jobs/{bad}/cancel", status))
        cases.append(Case(f"GET-events-{bad[:16]}", "GET", f"/api/v1/jobs/{bad}/events", status))
    cases.append(Case("POST-cancel-finished-job", "POST", f"/api/v1/jobs/{job_id}/cancel", 409, words="already finished"))
    for bad, status in (("-1", 422), ("99999999999999999999", 422), ("abc", 422), ("1.5", 422), ("1e3", 422), ("424242", 404), (quote("../../etc/passwd", safe=""), 404), ("%2Fetc%2Fpasswd", 404), ("%2E%2E", 422), (str(image_id) + "0000", 404)):
        cases.append(Case(f"GET-image-{bad[:20]}", "GET", f"/api/v1/images/{bad}", status))
        cases.append(Case(f"GET-thumb-{bad[:20]}", "GET", f"/api/v1/images/{bad}/thumb", status))
    # ------------------------------------------------ routes and methods that do not exist
    cases += [
        Case("GET-unknown-route", "GET", "/api/v1/nope", 404),
        # AUTOMATIC1111 routes Brushwork does not have yet: 501 naming the feature (issue 12.7)
        Case("POST-img2img-without-picture", "POST", "/sdapi/v1/img2img", 404, {"prompt": "x"}, words="Init image not found"),
        Case("POST-img2img-not-a-picture", "POST", "/sdapi/v1/img2img", 400, {"prompt": "x", "init_images": ["aGVsbG8gd29ybGQ="]}, words="not a PNG"),
        Case("POST-img2img-strength-out-of-range", "POST", "/sdapi/v1/img2img", 422, {"prompt": "x", "init_images": ["x"], "denoising_strength": 1.5}),
        Case("POST-native-strength-out-of-range", "POST", "/api/v1/jobs", 422, {"prompt": "x", "init_image": "x", "denoising_strength": 2}, words="between 0 and 1"),
        Case("POST-compare-bad-axis", "POST", "/api/v1/compare", 400, {"prompt": "x", "x": "Stpes: 1,2"}, words="Steps"),
        Case("POST-compare-no-x", "POST", "/api/v1/compare", 422, {"prompt": "x"}),
        Case("POST-compare-bad-range", "POST", "/api/v1/compare", 400, {"prompt": "x", "x": "Steps: 5-x"}, words="Steps"),
        Case("POST-compare-too-many-cells", "POST", "/api/v1/compare", 400, {"prompt": "x", "x": "Seed: 1-40", "y": "Steps: 1-40"}, words="1024"),
        Case("POST-native-not-a-picture", "POST", "/api/v1/jobs", 400, {"prompt": "x", "init_image": "aGVsbG8gd29ybGQ="}, words="not a PNG"),
        Case("POST-native-mask-without-picture", "POST", "/api/v1/jobs", 400, {"prompt": "x", "mask": "aGVsbG8gd29ybGQ="}, words="not a PNG"),
        Case("POST-interrogate-not-yet", "POST", "/sdapi/v1/interrogate", 501, b"not json at all", JSON, words="interrogate"),
        Case("GET-unknown-sdapi-route", "GET", "/sdapi/v1/nope", 404, words="docs/http-api.md"),
        Case("GET-on-sdapi-POST-route", "GET", "/sdapi/v1/txt2img", 405, words="not allowed"),
        Case("GET-on-POST-route", "GET", "/api/v1/tokens", 405),
        Case("DELETE-job", "DELETE", f"/api/v1/jobs/{job_id}", 405),
        Case("traversal-in-route", "GET", "/api/v1/../../etc/passwd", 404),
        Case("encoded-traversal-in-route", "GET", "/api/v1/%2E%2E/%2E%2E/etc/passwd", 404),
    ]
    return cases


# ---------------------------------------------------------------- the server


#: the data home's files: two checkpoints and a LoRA (the fake engine reads none of them)
HOME_FILES = ("models/checkpoints/alpha.safetensors", "models/checkpoints/beta.safetensors", "models/loras/balloon.safetensors")


def _make_home(root) -> DataHome:
    home = DataHome(root / "home")
    home.create()
    for rel in HOME_FILES:
        (home.root / rel).write_bytes(b"fake")
    return home


@dataclass
class Served:
    host: str
    port: int
    job_id: str  # a finished job
    image_id: int  # its image
    app: Any


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """One server for the whole table, with one finished job in its history."""
    from brushwork.engine import GenerationRequest

    home = _make_home(tmp_path_factory.mktemp("bad-inputs"))
    studio = Studio(FakeEngine(home), JobStore(home.root / "db.sqlite3"))
    job = studio.wait(studio.submit(GenerationRequest(prompt="x", steps=1, seed=1)).id, timeout=10)
    app = create_app(studio, web=False)
    try:
        with serve_in_thread(app) as url:
            host, port = url.rsplit("//", 1)[1].split(":")
            yield Served(host, int(port), job.id, studio.images(job.id)[0].id, app)
    finally:
        studio.close()
        studio.store.close()


# the table needs ids of a real job and image: built with placeholders for the ids,
# which the test replaces (the number of cases does not depend on them)
_JOB, _IMAGE = "0" * 16, 1
CASES = build_cases(_JOB, _IMAGE)
IDS = [f"case-{i:03d}-of-{len(CASES)}-{c.name}" for i, c in enumerate(CASES, 1)]


def _timed_status(host: str, port: int) -> float:
    conn = http.client.HTTPConnection(host, port, timeout=STATUS_WITHIN * 5)
    t0 = time.perf_counter()
    code, _ = send(conn, "GET", "/api/v1/status")
    conn.close()
    assert code == 200
    return time.perf_counter() - t0


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_bad_input_is_a_4xx_with_a_message_and_the_server_keeps_answering(served, case):
    host, port = served.host, served.port
    path = case.path.replace(_JOB, served.job_id).replace(f"/images/{_IMAGE}0000", f"/images/{served.image_id}0000")
    answer: dict[str, Any] = {}

    def bad_request():
        conn = http.client.HTTPConnection(host, port, timeout=30)
        try:
            answer["reply"] = send(conn, case.method, path, case.body, case.headers)
        except Exception as exc:  # noqa: BLE001 - reported below
            answer["error"] = exc
        finally:
            conn.close()

    busy = threading.Thread(target=bad_request)
    busy.start()
    during = []
    while busy.is_alive() or not during:
        during.append(_timed_status(host, port))
        time.sleep(0.01)
    busy.join()
    after = _timed_status(host, port)
    assert "error" not in answer, f"no answer: {answer.get('error')!r}"
    code, data = answer["reply"]
    assert code == case.status, f"{case.name}: expected {case.status}, got {code}: {str(data)[:300]}"
    text = message(data)
    assert text, f"{case.name}: no readable message in {str(data)[:300]}"
    if case.words:
        assert case.words in text, text
    assert max(during) < STATUS_WITHIN and after < STATUS_WITHIN, (during, after)


def test_the_suite_covers_every_route_and_counts_its_cases(served):
    routes = {(m.upper(), path) for path, ops in served.app.openapi()["paths"].items() if path.startswith(("/api/v1", "/sdapi/v1")) for m in ops}
    taking_input = {(m, p) for m, p in routes if m == "POST" or "{" in p or p in ("/api/v1/jobs", "/api/v1/images", "/sdapi/v1/progress")}
    bodyless = {("POST", "/sdapi/v1/interrupt"), ("POST", "/sdapi/v1/skip"), ("POST", "/sdapi/v1/refresh-checkpoints"), ("POST", "/sdapi/v1/refresh-loras"), ("POST", "/sdapi/v1/refresh-vae"), ("POST", "/sdapi/v1/refresh-embeddings")}
    covered = {(c.method, _route_of(c.path, routes)) for c in CASES}
    missing = sorted(taking_input - bodyless - covered)
    print(f"bad-input suite: {len(CASES)} cases over {len(covered & routes)} routes")
    assert not missing, f"routes with input but no bad-input case: {missing}"
    assert len(CASES) >= 300


def _route_of(path: str, routes: set[tuple[str, str]]) -> str:
    """The route template a concrete path falls under (``/api/v1/jobs/{job_id}``)."""
    parts = path.split("?", 1)[0].split("/")
    for _, template in routes:
        t = template.split("/")
        if len(t) == len(parts) and all(a == b or a.startswith("{") for a, b in zip(t, parts)):
            return template
    return path.split("?", 1)[0]
