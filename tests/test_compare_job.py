"""The comparison job (issue 15): cells equal single generations, the checkpoint axis
loads each model once, the grid's geometry and infotext, and every client: the CLI,
the native API and AUTOMATIC1111's X/Y/Z plot script."""
from __future__ import annotations

import base64
from dataclasses import replace
import io
import json
import shutil

import httpx
import numpy as np
import pytest
from PIL import Image

from brushwork.cli import main
from brushwork.compare.axes import AxisError, parse_axis
from brushwork.sampling.shared_calls import SharedCalls
from brushwork.compare.job import Comparison, grid_picture, plan_cells, run_comparison, work_order
from brushwork.engine import GenerationRequest
from brushwork.infotext import params_from_infotext, parse_infotext
from job_wait import wait_job

BASE = GenerationRequest("a cat on a hill", seed=5, width=64, height=64, steps=4)


def px(img) -> np.ndarray:
    return np.asarray(img.convert("RGB")).astype(int)


def test_steps_by_cfg_runs_one_batch_per_column_and_every_cell_equals_generate(engines):
    eng = engines("sd1")
    cmp = Comparison(BASE, parse_axis("Steps: 3,5"), parse_axis("CFG Scale: 1,4,7"))
    # same steps: seeds and CFG scales batched; CFG 1 (no negative pass alone) in its own batch
    assert [len(b) for b in work_order(plan_cells(cmp))] == [1, 1, 2, 2]
    shared = SharedCalls()
    results = list(run_comparison(eng, cmp, shared=shared))
    assert [(r.cell.ix, r.cell.iy) for r in sorted(results, key=lambda r: r.cell.index)] == [(x, y) for y in range(3) for x in range(2)]
    # one seed and prompt, one first sigma for 3 and 5 steps: the first UNet call is made
    # once for the CFG 1 batches (1 row) and once for the two CFG 4/7 batches (2 rows
    # for their 4 asked: negative and positive, both cells' latents equal)
    assert (shared.rows_asked, shared.rows_run) == (1 + 1 + 4 + 4, 1 + 2)
    for r in results:
        alone = eng.txt2img(r.cell.request)[0]
        # batched cells differ from a lone generation by float rounding only: at most 1 level of 255
        assert np.abs(px(alone.image) - px(r.image.image)).max() <= (0 if r.cell.request.cfg_scale == 1 else 1)
        assert alone.infotext == r.image.infotext  # the cell's own parameters, re-creatable


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_cells_differing_only_in_prompt_run_as_one_batch_and_equal_generate(engines, family):
    """Prompt S/R cells share one UNet call, each image with its own text features
    (laid out per image, padded to one length); a longer prompt (two 75-token chunks)
    among them, and CFG differing too."""
    eng = engines(family)
    long = "a cat, " + ", ".join(["very detailed fur"] * 30)
    base = replace(BASE, prompt="a cat on a wall", negative_prompt="blurry cat")
    cmp = Comparison(base, parse_axis(f'Prompt S/R: cat,dog,"{long}"'), parse_axis("CFG Scale: 4,7"))
    assert [len(b) for b in work_order(plan_cells(cmp))] == [6]
    for r in run_comparison(eng, cmp):
        alone = eng.txt2img(r.cell.request)[0]
        assert np.abs(px(alone.image) - px(r.image.image)).max() <= 1  # batched: float rounding only
        assert alone.infotext == r.image.infotext


def test_cells_with_other_loras_or_and_weights_are_not_batched():
    lora = Comparison(GenerationRequest("a cat <lora:balloon:0>"), parse_axis("Prompt S/R: <lora:balloon:0>,<lora:balloon:1>"))
    assert [len(b) for b in work_order(plan_cells(lora))] == [1, 1]
    weights = Comparison(GenerationRequest("a cat AND a dog"), parse_axis("Prompt S/R: a dog,a dog :0.5"))
    assert [len(b) for b in work_order(plan_cells(weights))] == [1, 1]
    hires = Comparison(GenerationRequest("a cat", hires=True), parse_axis("Prompt S/R: cat,dog"))
    assert [len(b) for b in work_order(plan_cells(hires))] == [1, 1]


def test_a_cell_run_alone_is_bit_identical_to_generate(engines):
    eng = engines("sd1")
    cmp = Comparison(BASE, parse_axis("Sampler: Euler,DPM++ 2M"))
    assert [len(b) for b in work_order(plan_cells(cmp))] == [1, 1]
    for r in run_comparison(eng, cmp):
        assert np.array_equal(px(eng.txt2img(r.cell.request)[0].image), px(r.image.image))


def test_seed_minus_one_is_drawn_once_for_the_whole_grid(engines):
    cmp = Comparison(GenerationRequest("x", seed=-1), parse_axis("Steps: 3,5"), parse_axis("CFG Scale: 4,7"))
    seeds = {c.request.seed for c in plan_cells(cmp)}
    assert len(seeds) == 1 and -1 not in seeds
    vary = Comparison(GenerationRequest("x", seed=100), parse_axis("Steps: 3,5"), parse_axis("CFG Scale: 4,7"), vary_seeds=(True, False, False))
    assert [c.request.seed for c in plan_cells(vary)] == [100, 101, 100, 101]


def test_prompt_sr_sweeps_a_lora_weight_and_errors_when_missing():
    cmp = Comparison(GenerationRequest("a cat <lora:balloon:0>"), parse_axis("Prompt S/R: <lora:balloon:0>,<lora:balloon:0.5>,<lora:balloon:1>"))
    assert [c.request.prompt for c in plan_cells(cmp)] == ["a cat <lora:balloon:0>", "a cat <lora:balloon:0.5>", "a cat <lora:balloon:1>"]
    with pytest.raises(AxisError, match="'dog' is not in the prompt"):
        plan_cells(Comparison(GenerationRequest("a cat"), parse_axis("Prompt S/R: dog,wolf")))


def test_the_checkpoint_axis_loads_each_model_once_and_restores_the_first(tiny_home, tmp_path, monkeypatch):
    from brushwork import Engine

    shutil.copytree(tiny_home / "models", tmp_path / "models")
    shutil.copy(tmp_path / "models" / "checkpoints" / "tiny-sd1.safetensors", tmp_path / "models" / "checkpoints" / "tiny-sd1-copy.safetensors")
    eng = Engine(tmp_path, device="cpu")
    eng.load("tiny-sd1")
    loads = []
    import brushwork.models.load as load_mod

    real = load_mod.load_checkpoint
    monkeypatch.setattr(load_mod, "load_checkpoint", lambda path, *a, **k: (loads.append(path.stem), real(path, *a, **k))[1])
    cmp = Comparison(BASE, parse_axis("Checkpoint name: tiny-sd1-copy,tiny-sd1"), parse_axis("Seed: 1,2,3"))
    results = list(run_comparison(eng, cmp))
    # tiny-sd1's cells run first (it is loaded), the copy is loaded once, then tiny-sd1 is back
    assert len(results) == 6 and loads == ["tiny-sd1-copy", "tiny-sd1"]
    assert [parse_infotext(r.image.infotext)["Model"] for r in results][:3] == ["tiny-sd1"] * 3
    assert eng.model.name == "tiny-sd1"
    assert {parse_infotext(r.image.infotext)["Model"] for r in results} == {"tiny-sd1", "tiny-sd1-copy"}


def test_grid_picture_geometry_and_infotext(engines):
    eng = engines("sd1")
    cmp = Comparison(BASE, parse_axis("Steps: 3,5,7"), parse_axis("Seed: 1,2"), parse_axis("CFG Scale: 4,7"))
    results = list(run_comparison(eng, cmp))
    assert len(results) == 12
    picture, text = grid_picture(cmp, results)
    # two sub-grids side by side, each 3 cells across and 2 down, plus label bands
    assert picture.width > 2 * 3 * 64 and picture.height > 2 * 64
    data = parse_infotext(text)
    assert data["Script"] == "X/Y/Z plot" and data["X Type"] == "Steps" and data["X Values"] == "3,5,7"
    assert data["Y Type"] == "Seed" and data["Z Type"] == "CFG Scale" and data["Z Values"] == "4,7"
    no_legend = Comparison(BASE, cmp.x, cmp.y, cmp.z, draw_legend=False)
    bare, _ = grid_picture(no_legend, results)
    assert bare.size[1] == 2 * 64  # no label bands: exactly the cells
    # without legend, each cell sits at its own place
    first = next(r for r in results if (r.cell.ix, r.cell.iy, r.cell.iz) == (1, 1, 0))
    assert np.array_equal(px(bare.crop((64, 64, 128, 128))), px(first.image.image))


def test_cli_compare_saves_the_grid_and_every_cell(home, capsys):
    code = main(["compare", "a lighthouse", "--x", "Steps: 3,5", "--y", "CFG Scale: 4,7", "--seed", "9", "-W", "64", "-H", "64", "-q", "--model", "tiny-sd1", "--home", str(home)])
    out = capsys.readouterr().out.strip().splitlines()
    assert code == 0 and len(out) == 5
    grid_path = out[-1].split("  grid ")[0]
    assert "/outputs/grids/" in grid_path and "Script: X/Y/Z plot" in Image.open(grid_path).text["parameters"]
    cell = out[0].split("  seed ")[0]
    assert main(["generate", "--from", cell, "-q", "--home", str(home)]) == 0
    again = capsys.readouterr().out.split("  seed ")[0]
    assert np.abs(px(Image.open(cell)) - px(Image.open(again))).max() <= 1


def test_cli_compare_from_a_picture_takes_its_settings_as_the_base(home, capsys):
    assert main(["generate", "a red barn", "--seed", "21", "--steps", "3", "--cfg", "5", "-W", "64", "-H", "64", "-q", "--model", "tiny-sd1", "--home", str(home)]) == 0
    made = capsys.readouterr().out.split("  seed ")[0]
    assert main(["compare", "--from", made, "--x", "Steps: 3,4", "-q", "--home", str(home)]) == 0
    cells = [line.split("  seed ")[0] for line in capsys.readouterr().out.strip().splitlines()[:2]]
    first = params_from_infotext(Image.open(cells[0]).text["parameters"])
    assert (first.prompt, first.seed, first.cfg_scale, first.steps) == ("a red barn", 21, 5.0, 3)
    assert np.abs(px(Image.open(cells[0])) - px(Image.open(made))).max() <= 1  # the 3-step cell is the picture
    assert main(["compare", "--x", "Steps: 3,4", "--home", str(home)]) == 2
    assert "give the base prompt" in capsys.readouterr().err


def test_cli_compare_bad_axis_is_a_clear_error(home, capsys):
    assert main(["compare", "x", "--x", "Stpes: 3,5", "--home", str(home)]) == 2
    assert "Steps" in capsys.readouterr().err


@pytest.fixture(scope="module")
def server(tiny_home, tmp_path_factory):
    from brushwork.server import ServeOptions, build, serve_in_thread

    home = tmp_path_factory.mktemp("compare-home")
    shutil.copytree(tiny_home / "models", home / "models")
    app, studio = build(ServeOptions(home=str(home), model="tiny-sd1", device="cpu"))
    with serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=120) as http:
        yield http
    studio.close()
    studio.store.close()


def test_native_compare_job_has_cell_events_then_the_grid(server):
    http = server
    r = http.post("/api/v1/compare", json={"prompt": "a cat", "seed": 3, "width": 64, "height": 64, "steps": 3, "x": "Steps: 2,3", "y": "CFG Scale: 4,7"})
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    assert r.json()["kind"] == "compare"
    events = []
    with http.stream("GET", f"/api/v1/jobs/{job_id}/events") as s:
        kind = None
        for line in s.iter_lines():
            if line.startswith("event:"):
                kind = line.split(":", 1)[1].strip()
            elif line.startswith("data:") and kind == "image":
                events.append(json.loads(line[5:]))
            elif line.startswith("data:") and kind == "done":
                break
    cells = [e for e in events if not e.get("grid")]
    assert sorted((e["cell"]["x"], e["cell"]["y"]) for e in cells) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert events[-1].get("grid") is True and events[-1]["image"]["grid"] is True
    job = http.get(f"/api/v1/jobs/{job_id}").json()
    assert job["state"] == "done" and len(job["images"]) == 5


@pytest.mark.parametrize("body, words", [({"x": "Steps: 2-x"}, "Steps"), ({"x": "Prompt S/R: dog,cat"}, "not in the prompt"), ({"x": "Size: 4096x4096,4096x4096", "y": "Seed: 1-8"}, "megapixels")])
def test_native_compare_refuses_bad_grids_before_queueing(server, body, words):
    r = server.post("/api/v1/compare", json={"prompt": "a cat", **body})
    assert r.status_code == 400 and words in r.text


def test_a1111_xyz_plot_script_answers_with_the_grid_first(server):
    """AUTOMATIC1111's X/Y/Z plot over the API (h.1): X = Steps (txt2img index 4),
    Y = CFG Scale (index 6), include lone images on."""
    args = [4, "2,3", [], 6, "4,7", [], 0, "", [], True, True, False, False, False, False, False, 0, False]
    r = server.post("/sdapi/v1/txt2img", json={"prompt": "a cat", "seed": 3, "width": 64, "height": 64, "steps": 3, "script_name": "x/y/z plot", "script_args": args})
    assert r.status_code == 200, r.text
    data = r.json()
    assert len(data["images"]) == 5
    grid = Image.open(io.BytesIO(base64.b64decode(data["images"][0])))
    assert grid.width > 128 and "Script: X/Y/Z plot" in grid.text["parameters"]
    assert server.get("/sdapi/v1/scripts").json()["txt2img"] == ["x/y/z plot"]
    # without lone images: the grid alone
    args[10] = False
    r = server.post("/sdapi/v1/txt2img", json={"prompt": "a cat", "seed": 3, "width": 64, "height": 64, "steps": 3, "script_name": "x/y/z plot", "script_args": args})
    assert len(r.json()["images"]) == 1


def _engine_counting_encodes(tiny_home, tmp_path, monkeypatch):
    """An engine on the tiny checkpoint and the list of texts it encodes from now on."""
    from brushwork import Engine
    import brushwork.prompt_plan as plan

    shutil.copytree(tiny_home / "models", tmp_path / "models")
    eng = Engine(tmp_path, device="cpu")
    eng.load("tiny-sd1")
    texts = []
    real = plan.encode_prompt
    monkeypatch.setattr(plan, "encode_prompt", lambda spec, enc, text, *a, **k: (texts.append(text), real(spec, enc, text, *a, **k))[1])
    return eng, texts


def test_each_distinct_prompt_is_encoded_once_over_the_grid(tiny_home, tmp_path, monkeypatch):
    eng, texts = _engine_counting_encodes(tiny_home, tmp_path, monkeypatch)
    cmp = Comparison(GenerationRequest("a cat", negative_prompt="blurry", seed=1, width=64, height=64), parse_axis("Steps: 2,3,4"), parse_axis("CFG Scale: 4,7"))
    assert len(list(run_comparison(eng, cmp))) == 6
    assert sorted(texts) == ["a cat", "blurry"]  # 3 batches, each text once; no "" (same lengths)


def test_the_empty_prompt_is_encoded_only_to_pad_texts_of_different_lengths(tiny_home, tmp_path, monkeypatch):
    """The padding chunk "" costs a text-encoder call only where a prompt of more than
    75 tokens meets a shorter one in one batch (issue 18: 2 encoder calls, not 3)."""
    eng, texts = _engine_counting_encodes(tiny_home, tmp_path, monkeypatch)
    eng.txt2img(GenerationRequest("a cat", negative_prompt="blurry", seed=1, steps=2, width=64, height=64))
    assert sorted(texts) == ["a cat", "blurry"]
    texts.clear()
    long_prompt = ", ".join(["a cat"] * 60)  # well over one 75-token chunk
    eng.txt2img(GenerationRequest(long_prompt, negative_prompt="blurry", seed=1, steps=2, width=64, height=64))
    assert sorted(texts) == ["", long_prompt]  # "blurry" kept from the first picture


def test_native_compare_of_an_img2img_request_keeps_its_picture(server):
    """A grid over the studio's img2img mode: the init image is stored with the job
    and every cell starts from it."""
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (30, 120, 200)).save(buf, "PNG")
    r = server.post("/api/v1/compare", json={"prompt": "a lake", "seed": 3, "steps": 3, "init_image": base64.b64encode(buf.getvalue()).decode(), "x": "Denoising: 0.3,0.6"})
    assert r.status_code == 202, r.text
    job = wait_job(server, r.json()["id"])
    assert job["state"] == "done", job
    assert job["request"]["init_image"].startswith("inputs/")
    cells = [im for im in job["images"] if not im["grid"]]
    assert [parse_infotext(im["infotext"])["Denoising strength"] for im in cells] == ["0.3", "0.6"]
    assert all("Init image hash" in im["infotext"] for im in cells)
