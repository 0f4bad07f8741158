"""X/Y/Z plot axes: value syntax, validation, applying a value to a request, the
A1111 API's script_args and the grid infotext keys (brushwork.compare.axes)."""
from __future__ import annotations

import random
from dataclasses import dataclass, fields, make_dataclass

import pytest

from brushwork.compare.axes import (
    AXES,
    MAX_CELLS,
    TXT2IMG_AXES,
    IMG2IMG_AXES,
    Axis,
    AxisError,
    apply_value,
    cell_seed,
    grid_shape,
    infotext_keys,
    parse_axis,
    parse_values,
    script_args_to_axes,
    seeds_for_grid,
    value_label,
)
from brushwork.request import GenerationRequest, resolve_seed

# Var. seed / Var. strength fields are being added to GenerationRequest in parallel;
# until they land, test against a request type that has them.
_have = {f.name for f in fields(GenerationRequest)}
Request = GenerationRequest if {"subseed", "subseed_strength"} <= _have else make_dataclass(
    "Request", [("subseed", int, -1), ("subseed_strength", float, 0.0)], bases=(GenerationRequest,)
)


def req(**kw):
    base = dict(prompt="a cat on a mat, red hat", negative_prompt="blurry cat", seed=42)
    base.update(kw)
    return Request(**base)


@pytest.mark.parametrize(
    "label, text, expected",
    [
        ("Steps", "5,20,45,75", [5, 20, 45, 75]),
        ("Steps", "1-5", [1, 2, 3, 4, 5]),
        ("Steps", " 1 - 5 ", [1, 2, 3, 4, 5]),
        ("Steps", "5-1", [5, 4, 3, 2, 1]),
        ("Steps", "1-10 (+2)", [1, 3, 5, 7, 9]),
        ("Steps", "1-10 (2)", [1, 3, 5, 7, 9]),
        ("Steps", "1-10 (+4)", [1, 5, 9]),
        ("Steps", "10-1 (-3)", [10, 7, 4, 1]),
        ("Steps", "1-10 [5]", [1, 3, 5, 7, 10]),
        ("Steps", "1-10 [4]", [1, 4, 7, 10]),
        ("Steps", "10-20 [1]", [10]),
        ("Steps", "1-2 [3]", [1, 1, 2]),
        ("Steps", "10, 20-30 (+5), 50", [10, 20, 25, 30, 50]),
        ("Steps", "10,,20, ", [10, 20]),
        ("CFG Scale", "0.5-2.5 (+0.5)", [0.5, 1.0, 1.5, 2.0, 2.5]),
        ("CFG Scale", "1-2 [3]", [1.0, 1.5, 2.0]),
        ("CFG Scale", "1-2 (+0.3)", [1.0, 1.3, 1.6, 1.9]),
        ("CFG Scale", "7, 4.5, .5, 1e-1", [7.0, 4.5, 0.5, 0.1]),
        ("CFG Scale", "3-12 [4]", [3.0, 6.0, 9.0, 12.0]),
        ("Var. strength", "0-1 (+0.1)", [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]),
        ("Denoising", "1-0 [3]", [1.0, 0.5, 0.0]),
        ("Seed", "-1", [-1]),
        ("Seed", "-1, -1, 7", [-1, -1, 7]),
        ("Seed", "0-3", [0, 1, 2, 3]),
        ("Seed", "4294967295", [4294967295]),
        ("Var. seed", "1-3", [1, 2, 3]),
        ("Clip skip", "1-4", [1, 2, 3, 4]),
        ("Prompt S/R", 'cat, "dog, wet", bird', ["cat", "dog, wet", "bird"]),
        ("Prompt S/R", '  cat ,dog  ', ["cat", "dog"]),
        ("Prompt S/R", 'hat, ', ["hat", ""]),
        ("Prompt S/R", '"say ""hi""", x', ['say "hi"', "x"]),
        ("Prompt S/R", "<lora:balloon:0>,<lora:balloon:0.5>,<lora:balloon:1>",
         ["<lora:balloon:0>", "<lora:balloon:0.5>", "<lora:balloon:1>"]),
        ("Prompt order", "a, b", [("a", "b"), ("b", "a")]),
        ("Sampler", "euler a, DPM++ 2M, k_lms, DPM++ 2M Karras", ["Euler a", "DPM++ 2M", "LMS", "DPM++ 2M Karras"]),
        ("Schedule type", "karras, sgmuniform, Automatic", ["Karras", "SGM Uniform", "Automatic"]),
        ("Size", "512x768, 640 X 640", ["512x768", "640x640"]),
        ("Checkpoint name", "sd15.safetensors, \"my, model.ckpt\"", ["sd15.safetensors", "my, model.ckpt"]),
        ("VAE", "None, vae-ft-mse.safetensors", ["None", "vae-ft-mse.safetensors"]),
        ("Nothing", "", [None]),
    ],
)
def test_value_syntax(label, text, expected):
    got = parse_values(label, text)
    assert got == expected
    assert [type(v) for v in got] == [type(v) for v in expected]


def test_parse_axis_cli_form_and_aliases():
    assert parse_axis("Steps: 5,20,45,75") == Axis("Steps", [5, 20, 45, 75], "5,20,45,75")
    assert parse_axis("CFG Scale: 1-12 [4]") == Axis("CFG Scale", [1.0, 4.6666666667, 8.3333333333, 12.0], "1-12 [4]")
    assert parse_axis("Prompt S/R: cat,dog,bird") == Axis("Prompt S/R", ["cat", "dog", "bird"], "cat,dog,bird")
    assert parse_axis("cfg: 4,7").label == "CFG Scale"
    assert parse_axis("STEPS: 4").label == "Steps"
    assert parse_axis("checkpoint: a.safetensors, b.ckpt").label == "Checkpoint name"
    assert parse_axis("sampler: Euler").label == "Sampler"
    assert parse_axis("seed: -1").label == "Seed"
    assert parse_axis("clip_skip: 2").label == "Clip skip"
    # only the first colon splits: the values may hold colons
    assert parse_axis("Prompt S/R: <lora:a:0>, <lora:a:1>").values == ["<lora:a:0>", "<lora:a:1>"]


@pytest.mark.parametrize(
    "text, message",
    [
        ("Steps: 5-x", "Steps: '5-x' is not a number range; write e.g. 5,10,20 or 5-25 (+5)."),
        ("Steps: ten", "Steps: 'ten' is not a number; write e.g. 5,10,20 or 5-25 (+5)."),
        ("Steps: 1.5", "Steps: '1.5' is not a whole number; write e.g. 5,10,20 or 5-25 (+5)."),
        ("Steps: 1.5-3", "Steps: '1.5-3' has a decimal point; Steps takes whole numbers, e.g. 5,10,20 or 5-25 (+5)."),
        ("Steps: 1-10 (+0)", "Steps: the step 0 in '1-10 (+0)' never reaches the end; use e.g. (+1)."),
        ("Steps: 1-10 (-2)", "Steps: the step -2 in '1-10 (-2)' goes away from 10; use (+2)."),
        ("Steps: 1-10 [0]", "Steps: the count in '1-10 [0]' must be a whole number of at least 1, e.g. [5]."),
        ("Steps: 1-100", "Steps: '1-100' gives 100 values; an axis takes at most 64. Use a larger step or a count like [8]."),
        ("Steps: 1-10 [65]", "Steps: '1-10 [65]' gives 65 values; an axis takes at most 64. Use a larger step or a count like [8]."),
        ("Steps: 0, 20", "Steps: 0 (from '0') is out of range; Steps goes from 1 to 150, e.g. 5,10,20 or 5-25 (+5)."),
        ("Steps: 100-160 (+20)", "Steps: 160 (from '100-160 (+20)') is out of range; Steps goes from 1 to 150, e.g. 5,10,20 or 5-25 (+5)."),
        ("Steps: ,", "Steps: no values given; write e.g. 5,10,20 or 5-25 (+5)."),
        ("CFG Scale: 31", "CFG Scale: 31 (from '31') is out of range; CFG Scale goes from 0 to 30, e.g. 4,7,10 or 3-12 [4]."),
        ("CFG Scale: nan", "CFG Scale: 'nan' is not a number; write e.g. 4,7,10 or 3-12 [4]."),
        ("Clip skip: 13", "Clip skip: 13 (from '13') is out of range; Clip skip goes from 1 to 12, e.g. 1,2 or 1-4."),
        ("Var. strength: 1.5", "Var. strength: 1.5 (from '1.5') is out of range; Var. strength goes from 0 to 1, e.g. 0,0.25,0.5 or 0-1 [5]."),
        ("Denoising: -0.1", "Denoising: -0.1 (from '-0.1') is out of range; Denoising goes from 0 to 1, e.g. 0.3,0.5,0.7 or 0.2-0.8 (+0.2)."),
        ("Seed: -2", "Seed: -2 is out of range; a seed is -1 (random) or 0 to 4294967295."),
        ("Seed: 4294967296", "Seed: 4294967296 is out of range; a seed is -1 (random) or 0 to 4294967295."),
        ("Size: 500x512", "Size: the width 500 in '500x512' is not a multiple of 8 (the VAE works on 8x8 blocks); try 496 or 504."),
        ("Size: 512x8192", "Size: the height 8192 in '512x8192' is out of range; sides go from 64 to 4096 pixels."),
        ("Size: 512", "Size: '512' is not a size; write WIDTHxHEIGHT, e.g. 512x512,512x768."),
        ("Prompt S/R: , dog", "Prompt S/R: the first value is the text to search for and may not be empty; write e.g. cat,dog,bird."),
        ('Prompt S/R: "cat, dog', "Prompt S/R: a quote in '\"cat, dog' is never closed; put a \" after the value."),
        ("Prompt order: a,b,c,d,e", "Prompt order: 5 phrases give 120 orders; an axis takes at most 64 values, so list at most 4 phrases."),
        ("Steps 10", "Axis 'Steps 10' has no ':'; write it as 'Label: values', e.g. 'Steps: 10,20,30'."),
        ("Eta: 1", "X/Y/Z plot axis 'Eta' is not supported by Brushwork. Supported axes: "
         "Nothing, Seed, Var. seed, Var. strength, Steps, Hires steps, CFG Scale, Prompt S/R, Prompt order, Sampler, "
         "Hires sampler, Checkpoint name, Schedule type, Clip skip, Denoising, Hires upscaler, VAE, Size."),
        ("Stpes: 10", "Unknown X/Y/Z plot axis 'Stpes'. Did you mean 'Steps'? Valid axes: "
         "Nothing, Seed, Var. seed, Var. strength, Steps, Hires steps, CFG Scale, Prompt S/R, Prompt order, Sampler, "
         "Hires sampler, Checkpoint name, Schedule type, Clip skip, Denoising, Hires upscaler, VAE, Size."),
    ],
)
def test_bad_values_name_the_axis_and_the_fix(text, message):
    with pytest.raises(AxisError) as e:
        parse_axis(text)
    assert str(e.value) == message


def test_too_many_csv_values():
    with pytest.raises(AxisError, match=r"^Prompt S/R: '.*' gives 65 values; an axis takes at most 64\."):
        parse_values("Prompt S/R", ",".join(f"w{i}" for i in range(65)))
    assert len(parse_values("Steps", ",".join(["20"] * 64))) == 64


def test_unknown_sampler_and_schedule_suggest():
    with pytest.raises(AxisError) as e:
        parse_values("Sampler", "Euler, eulr a")
    msg = str(e.value)
    assert msg.startswith("Sampler: Unknown sampler 'eulr a'. Did you mean 'Euler a'")
    assert "Valid samplers: DPM++ 2M, " in msg
    with pytest.raises(AxisError) as e:
        parse_values("Schedule type", "karas")
    assert str(e.value).startswith("Schedule type: Unknown schedule 'karas'. Did you mean 'Karras'")


def test_axes_table():
    assert list(AXES) == [
        "Nothing", "Seed", "Var. seed", "Var. strength", "Steps", "Hires steps", "CFG Scale", "Prompt S/R",
        "Prompt order", "Sampler", "Hires sampler", "Checkpoint name", "Schedule type", "Clip skip", "Denoising",
        "Hires upscaler", "VAE", "Size",
    ]
    assert AXES["Var. seed"].fields == ("subseed",)
    assert AXES["Var. strength"].fields == ("subseed_strength",)
    assert AXES["Size"].fields == ("width", "height")
    assert AXES["Checkpoint name"].model and not AXES["Checkpoint name"].fields
    assert AXES["VAE"].vae and not AXES["VAE"].model
    assert (AXES["Steps"].kind, AXES["CFG Scale"].kind, AXES["Sampler"].kind) == (int, float, str)
    # A1111's list order: every supported axis keeps its relative place
    assert [n for n in TXT2IMG_AXES if n in AXES] == list(AXES)
    assert [n for n in IMG2IMG_AXES if n in AXES] == [n for n in AXES if not n.startswith("Hires")]  # txt2img only


# ---------------------------------------------------------------- apply_value


@pytest.mark.parametrize(
    "label, value, changes",
    [
        ("Seed", 7, {"seed": 7}),
        ("Var. seed", 9, {"subseed": 9}),
        ("Var. strength", 0.25, {"subseed_strength": 0.25}),
        ("Steps", 30, {"steps": 30}),
        ("CFG Scale", 4.5, {"cfg_scale": 4.5}),
        ("Clip skip", 2, {"clip_skip": 2}),
        ("Denoising", 0.4, {"denoising_strength": 0.4}),
        ("Schedule type", "Karras", {"schedule": "Karras"}),
        ("Sampler", "Euler a", {"sampler": "Euler a"}),
        ("Sampler", "DPM++ 2M Karras", {"sampler": "DPM++ 2M", "schedule": "Karras"}),
        ("Size", "512x768", {"width": 512, "height": 768}),
        ("Checkpoint name", "other.safetensors", {}),
        ("VAE", "vae.safetensors", {"vae": "vae.safetensors"}),
        ("Nothing", None, {}),
    ],
)
def test_apply_value_sets_fields(label, value, changes):
    before = req(schedule="Exponential")
    after = apply_value(label, value, before, value)
    assert after is not before
    assert before == req(schedule="Exponential")  # unchanged
    expected = req(schedule="Exponential")
    for k, v in changes.items():
        setattr(expected, k, v)
    assert after == expected


def test_apply_value_accepts_aliases():
    assert apply_value("cfg", 3.0, req(), 3.0).cfg_scale == 3.0


def test_prompt_sr_replaces_in_both_prompts():
    ax = parse_axis("Prompt S/R: cat, dog, ")
    r = req()
    cells = [apply_value(ax.label, v, r, ax.values[0]) for v in ax.values]
    assert [(c.prompt, c.negative_prompt) for c in cells] == [
        ("a cat on a mat, red hat", "blurry cat"),
        ("a dog on a mat, red hat", "blurry dog"),
        ("a  on a mat, red hat", "blurry "),
    ]
    # only the negative prompt holds it: still fine
    only_neg = apply_value("Prompt S/R", "sharp", req(), "blurry")
    assert (only_neg.prompt, only_neg.negative_prompt) == ("a cat on a mat, red hat", "sharp cat")


def test_prompt_sr_missing_search_string():
    with pytest.raises(AxisError) as e:
        apply_value("Prompt S/R", "dog", req(prompt="a bird", negative_prompt="blurry"), "cat")
    assert str(e.value) == (
        "Prompt S/R: 'cat' is not in the prompt or the negative prompt; the first value is what gets replaced."
    )


def test_lora_weight_sweep_via_prompt_sr():
    ax = parse_axis("Prompt S/R: <lora:balloon:0>,<lora:balloon:0.5>,<lora:balloon:1>")
    r = req(prompt="a red balloon <lora:balloon:0>", negative_prompt="")
    assert [apply_value(ax.label, v, r, ax.values[0]).prompt for v in ax.values] == [
        "a red balloon <lora:balloon:0>",
        "a red balloon <lora:balloon:0.5>",
        "a red balloon <lora:balloon:1>",
    ]


def test_prompt_order_permutes_phrases_in_place():
    ax = parse_axis("Prompt order: red hat, a cat, mat")
    r = req(prompt="a cat on a mat, red hat")
    assert [apply_value(ax.label, v, r, ax.values[0]).prompt for v in ax.values] == [
        "red hat on a a cat, mat",
        "red hat on a mat, a cat",
        "a cat on a red hat, mat",
        "a cat on a mat, red hat",
        "mat on a red hat, a cat",
        "mat on a a cat, red hat",
    ]
    with pytest.raises(AxisError, match=r"^Prompt order: 'dog' is not in the prompt;"):
        apply_value("Prompt order", ("dog", "cat"), r, None)


def test_missing_request_field_is_a_clear_error():
    @dataclass
    class Old:
        seed: int = -1

    with pytest.raises(AxisError, match=r"^Var\. seed: this Brushwork build's requests have no 'subseed' field"):
        apply_value("Var. seed", 3, Old(), 3)


# ---------------------------------------------------------------- seeds and shape


def test_seeds_for_grid_draws_once_and_shares():
    ax = parse_axis("Seed: -1, 5, -1")
    a = seeds_for_grid(ax.values, random.Random(1))
    rng = random.Random(1)
    first, second = resolve_seed(-1, rng), resolve_seed(-1, rng)
    assert a == [first, 5, second]
    assert a == seeds_for_grid(ax.values, random.Random(1))
    # every cell that uses column 0 gets the same seed
    r = req(seed=-1)
    col0 = {apply_value("Seed", a[0], apply_value("Steps", s, r, 10), a[0]).seed for s in (10, 20, 30)}
    assert col0 == {first}
    assert seeds_for_grid([3, 4], random.Random(0)) == [3, 4]


def test_cell_seed_vary_flags():
    assert cell_seed(100, 2, 1, 1, 3, 2) == 100
    assert cell_seed(100, 2, 1, 1, 3, 2, (True, False, False)) == 102
    assert cell_seed(100, 2, 1, 1, 3, 2, (False, True, False)) == 101
    assert cell_seed(100, 2, 1, 1, 3, 2, (True, True, True)) == 100 + 2 + 1 * 3 + 1 * 3 * 2


def test_grid_shape_and_cell_limit():
    x, y = parse_axis("Steps: 10,20,30"), parse_axis("CFG: 4,7")
    assert grid_shape(x, y, None) == (3, 2, 1)
    assert grid_shape(x) == (3, 1, 1)
    assert grid_shape(Axis("Nothing", [None]), y, Axis("Nothing", [None])) == (1, 2, 1)
    assert MAX_CELLS == 1024
    big = parse_axis("Seed: 1-64")
    assert grid_shape(big, parse_axis("Steps: 1-16"), None) == (64, 16, 1)
    with pytest.raises(AxisError) as e:
        grid_shape(big, parse_axis("Steps: 1-16"), parse_axis("CFG: 1,2"))
    assert str(e.value) == (
        "X/Y/Z plot: 64 x 16 x 2 = 2048 pictures; a grid takes at most 1024. Use fewer values on an axis."
    )


def test_value_labels():
    assert value_label(parse_axis("CFG: 1-2 [4]"), 1 / 3 + 1) == "CFG Scale: 1.33333333"
    assert value_label(parse_axis("Steps: 20"), 20) == "Steps: 20"
    assert value_label(parse_axis("Sampler: Euler"), "Euler") == "Euler"
    assert value_label(parse_axis("Prompt S/R: cat"), "cat") == "cat"
    assert value_label(parse_axis("Checkpoint name: a"), "sub/dir\\m.safetensors") == "m.safetensors"
    assert value_label(parse_axis("Prompt order: a,b"), ("b", "a")) == "b, a"


# ---------------------------------------------------------------- A1111 API and infotext


def test_script_args_txt2img():
    # what a client sends for script_name "x/y/z plot": X = Steps "10,20", Y = CFG Scale "4,7"
    args = [4, "10,20", [], 6, "4,7", [], 0, "", [], True, False, False, False, False, False, False, 0, False]
    x, y, z, options = script_args_to_axes(args)
    assert x == Axis("Steps", [10, 20], "10,20")
    assert y == Axis("CFG Scale", [4.0, 7.0], "4,7")
    assert z == Axis("Nothing", [None], "")
    assert options == {
        "draw_legend": True, "include_lone_images": False, "include_sub_grids": False,
        "no_fixed_seeds": False, "vary_seeds_x": False, "vary_seeds_y": False, "vary_seeds_z": False,
        "margin_size": 0, "csv_mode": False, "draw_grid": True,
    }
    assert grid_shape(x, y, z) == (2, 2, 1)


def test_script_args_indices_per_mode_and_dropdowns():
    # index 9 is Sampler in both lists; 5 is Hires steps (txt2img) but CFG Scale (img2img)
    args = [9, "", ["Euler a", "DPM++ 2M Karras"], 5, "3,5", None, 41, "512x512,768x512", None,
            False, True, True, True, True, False, False, 4, False, False]
    x, y, *_ = script_args_to_axes(args, "txt2img")
    assert y == Axis("Hires steps", [3, 5], "3,5")
    x, y, z, options = script_args_to_axes([*args[:6], 40, *args[7:]], "img2img")
    assert x == Axis("Sampler", ["Euler a", "DPM++ 2M Karras"], "Euler a,DPM++ 2M Karras")
    assert y == Axis("CFG Scale", [3.0, 5.0], "3,5")
    assert z == Axis("Size", ["512x512", "768x512"], "512x512,768x512")
    assert (options["draw_legend"], options["include_lone_images"], options["margin_size"], options["draw_grid"]) == (False, True, 4, False)
    # csv_mode: the text wins over the dropdown list
    x, *_ = script_args_to_axes([9, "Euler", ["LMS"], 0, "", [], 0, "", [], True, False, False, False, False, False, False, 0, True])
    assert x.values == ["Euler"]
    # an empty dropdown falls back to the text; labels work as types too (our extension)
    x, *_ = script_args_to_axes(["Checkpoint name", "a.safetensors, b", [], 0, "", [], 0, "", []])
    assert x == Axis("Checkpoint name", ["a.safetensors", "b"], "a.safetensors, b")


@pytest.mark.parametrize(
    "index, name",
    [(32, "Face restore"), (23, "Eta"), (13, "Sigma Churn"), (39, "RNG source"), (42, "Skip Early CFG")],
)
def test_script_args_unsupported_axes(index, name):
    with pytest.raises(AxisError) as e:
        script_args_to_axes([index, "x", [], 0, "", [], 0, "", []])
    assert str(e.value).startswith(f"X/Y/Z plot axis '{name}' is not supported by Brushwork.")


def test_script_args_bad_shapes():
    with pytest.raises(AxisError, match=r"^X/Y/Z plot: script_args must be a list starting x_type"):
        script_args_to_axes([4, "10,20"])
    with pytest.raises(AxisError, match=r"^X/Y/Z plot X type: 99 is not an axis index"):
        script_args_to_axes([99, "1", [], 0, "", [], 0, "", []])
    with pytest.raises(AxisError, match=r"^X/Y/Z plot: draw_legend must be true or false; got 'yes'\."):
        script_args_to_axes([4, "1", [], 0, "", [], 0, "", [], "yes"])
    with pytest.raises(AxisError, match=r"^Steps: 'x' is not a number;"):
        script_args_to_axes([4, "x", [], 0, "", [], 0, "", []])


def test_infotext_keys():
    x = parse_axis("Steps: 10-30 (+10)")
    y = parse_axis('Prompt S/R: cat, "dog, wet"')
    assert infotext_keys(x, y, None) == {
        "Script": "X/Y/Z plot",
        "X Type": "Steps", "X Values": "10-30 (+10)",
        "Y Type": "Prompt S/R", "Y Values": 'cat, "dog, wet"',
    }
    seed = parse_axis("Seed: -1, 5")
    fixed = Axis(seed.label, seeds_for_grid(seed.values, random.Random(3)), seed.raw)
    keys = infotext_keys(Axis("Nothing", [None]), x, fixed)
    assert keys == {
        "Script": "X/Y/Z plot",
        "Y Type": "Steps", "Y Values": "10-30 (+10)",
        "Z Type": "Seed", "Z Values": "-1, 5",
        "Fixed Z Values": f"{fixed.values[0]}, 5",
    }
    assert "Fixed Z Values" not in infotext_keys(None, None, seed, fixed_seeds=False)
