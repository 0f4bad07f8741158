"""Variation seeds through the engine and every client: the A1111 batch-seed rule,
strength 0 and 1, the infotext keys and re-creation with --from."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from brushwork.cli import main
from brushwork.engine import GenerationRequest, RequestError

BASE = dict(prompt="a lighthouse", steps=4, width=64, height=64, seed=10)


def px(img) -> np.ndarray:
    return np.asarray(img.convert("RGB")).astype(int)


def test_strength_0_is_the_seed_and_1_is_the_variation_seed(engines):
    eng = engines("sd1")
    plain = eng.txt2img(GenerationRequest(**BASE))[0]
    other = eng.txt2img(GenerationRequest(**{**BASE, "seed": 77}))[0]
    zero = eng.txt2img(GenerationRequest(**BASE, subseed=77, subseed_strength=0.0))[0]
    one = eng.txt2img(GenerationRequest(**BASE, subseed=77, subseed_strength=1.0))[0]
    half = eng.txt2img(GenerationRequest(**BASE, subseed=77, subseed_strength=0.5))[0]
    assert np.array_equal(px(zero.image), px(plain.image)) and "Variation seed" not in zero.infotext
    assert np.array_equal(px(one.image), px(other.image))
    assert not np.array_equal(px(half.image), px(plain.image)) and not np.array_equal(px(half.image), px(other.image))
    # A1111's key order: Seed ... Model, then Variation seed, Variation seed strength
    assert "Seed: 10," in half.infotext and "Variation seed: 77, Variation seed strength: 0.5" in half.infotext
    assert half.infotext.index("Model:") < half.infotext.index("Variation seed") < half.infotext.index("RNG")


def test_a_batch_keeps_the_seed_and_counts_up_the_variation_seed(engines):
    eng = engines("sd1")
    batch = eng.txt2img(GenerationRequest(**BASE, batch_size=2, batch_count=2, subseed=40, subseed_strength=0.3))
    assert [im.seed for im in batch] == [10, 10, 10, 10]
    assert [im.params.extra["Variation seed"] for im in batch] == [40, 41, 42, 43]
    # each picture equals the one made alone with its own variation seed
    alone = eng.txt2img(GenerationRequest(**BASE, subseed=42, subseed_strength=0.3))[0]
    assert np.abs(px(batch[2].image) - px(alone.image)).max() <= 1


def test_seed_resize_from_keeps_the_composition_centred(engines):
    eng = engines("sd1")
    small = eng.txt2img(GenerationRequest(**BASE))[0]
    wide = eng.txt2img(GenerationRequest(**{**BASE, "width": 96}, seed_resize_from_w=64, seed_resize_from_h=64))[0]
    assert wide.image.size == (96, 64) and "Seed resize from: 64x64" in wide.infotext
    plain_wide = eng.txt2img(GenerationRequest(**{**BASE, "width": 96}))[0]
    assert not np.array_equal(px(wide.image), px(plain_wide.image))
    # resizing from the picture's own size is no resize at all
    same = eng.txt2img(GenerationRequest(**BASE, seed_resize_from_w=64, seed_resize_from_h=64))[0]
    assert np.array_equal(px(same.image), px(small.image))


@pytest.mark.parametrize("change, words", [(dict(subseed_strength=1.5), "variation strength must be between 0 and 1"),
                                           (dict(subseed=-5), "variation seed"), (dict(seed_resize_from_w=10), "seed resize from w")])
def test_bad_variation_settings_are_refused(engines, change, words):
    with pytest.raises(RequestError, match=words):
        engines("sd1").complete(GenerationRequest(**BASE, **change))


def test_cli_var_seed_and_from(home, capsys):
    code = main(["generate", "a lighthouse", "--seed", "3", "--var-seed", "9", "--var-strength", "0.4", "-W", "64", "-H", "64", "--steps", "3", "-q", "--model", "tiny-sd1", "--home", str(home)])
    out = capsys.readouterr().out
    assert code == 0
    first = out.split("  seed ")[0]
    text = Image.open(first).text["parameters"]
    assert "Variation seed: 9, Variation seed strength: 0.4" in text
    assert main(["generate", "--from", first, "-q", "--home", str(home)]) == 0
    again = capsys.readouterr().out.split("  seed ")[0]
    assert np.array_equal(px(Image.open(first)), px(Image.open(again)))


def test_a1111_txt2img_takes_the_variation_fields(tiny_home, tmp_path):
    import shutil

    import httpx

    from brushwork.server import ServeOptions, build, serve_in_thread

    shutil.copytree(tiny_home / "models", tmp_path / "models")
    app, studio = build(ServeOptions(home=str(tmp_path), model="tiny-sd1", device="cpu"))
    try:
        with serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=120) as http:
            body = {"prompt": "x", "steps": 3, "width": 64, "height": 64, "seed": 5, "subseed": 8, "subseed_strength": 0.25, "batch_size": 2}
            r = http.post("/sdapi/v1/txt2img", json=body)
            assert r.status_code == 200, r.text
            info = json.loads(r.json()["info"])
            assert info["all_seeds"] == [5, 5] and info["all_subseeds"] == [8, 9] and info["subseed_strength"] == 0.25
            assert "Variation seed: 9, Variation seed strength: 0.25" in info["infotexts"][1]
            native = http.post("/api/v1/jobs", json={"prompt": "x", "steps": 3, "width": 64, "height": 64, "subseed_strength": 2})
            assert native.status_code == 422 and "variation strength" in native.text
    finally:
        studio.close()
        studio.store.close()
