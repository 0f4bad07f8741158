"""Tests for the A1111-compatible infotext writer and reader."""

from __future__ import annotations

import pytest

from brushwork.infotext import (
    GenerationParams,
    InfotextError,
    format_infotext,
    parse_infotext,
    params_from_infotext,
)

A1111_EXAMPLE = (
    "a lighthouse at dusk, (oil painting:1.2)\n"
    "Negative prompt: blurry, text\n"
    "Steps: 28, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5, Seed: 3141592653, "
    'Size: 768x512, Model hash: 0123abcdef, Model: myModel_v2, Lora hashes: "inkStyle: 89ab01234567", '
    "Version: v1.10.1"
)


def _example_params() -> GenerationParams:
    return GenerationParams(
        prompt="a lighthouse at dusk, (oil painting:1.2)",
        negative_prompt="blurry, text",
        steps=28,
        sampler="DPM++ 2M",
        schedule="Karras",
        cfg_scale=6.5,
        seed=3141592653,
        width=768,
        height=512,
        model_name="myModel_v2",
        model_hash="0123abcdef",
        extra={"Lora hashes": "inkStyle: 89ab01234567"},
        version="v1.10.1",
    )


def test_format_matches_a1111_example_exactly():
    assert format_infotext(_example_params()) == A1111_EXAMPLE


def test_parse_a1111_example():
    parsed = parse_infotext(A1111_EXAMPLE)
    assert parsed == {
        "Prompt": "a lighthouse at dusk, (oil painting:1.2)",
        "Negative prompt": "blurry, text",
        "Steps": "28",
        "Sampler": "DPM++ 2M",
        "Schedule type": "Karras",
        "CFG scale": "6.5",
        "Seed": "3141592653",
        "Size": "768x512",
        "Size-1": "768",
        "Size-2": "512",
        "Model hash": "0123abcdef",
        "Model": "myModel_v2",
        "Lora hashes": "inkStyle: 89ab01234567",
        "Version": "v1.10.1",
    }


def test_params_from_a1111_example():
    assert params_from_infotext(A1111_EXAMPLE) == _example_params()


def test_minimal_layout_without_optional_keys():
    params = GenerationParams(
        prompt="cat", steps=20, sampler="Euler a", schedule="Automatic", cfg_scale=7.0, seed=1, width=512, height=512
    )
    assert format_infotext(params) == (
        "cat\nSteps: 20, Sampler: Euler a, Schedule type: Automatic, CFG scale: 7.0, Seed: 1, Size: 512x512"
    )


def test_clip_skip_written_only_above_one_and_before_extras():
    base = dict(prompt="p", steps=5, sampler="Euler", schedule="Karras", cfg_scale=5.0, seed=2, width=64, height=96)
    assert "Clip skip" not in format_infotext(GenerationParams(**base, clip_skip=1))
    text = format_infotext(GenerationParams(**base, clip_skip=2, extra={"Emphasis": "Original"}, version="v0.1.0"))
    assert text.endswith("Size: 64x96, Clip skip: 2, Emphasis: Original, Version: v0.1.0")


@pytest.mark.parametrize(
    ("value", "written"),
    [
        ("a, b", '"a, b"'),
        ("key: value", '"key: value"'),
        ("line1\nline2", '"line1\\nline2"'),
        ("café, ñ", '"café, ñ"'),
        ("日本語", "日本語"),
        ("plain", "plain"),
    ],
)
def test_quoting_rules(value, written):
    params = GenerationParams(
        prompt="x", steps=1, sampler="Euler", schedule="Karras", cfg_scale=1.5, seed=0, width=8, height=8,
        extra={"Note": value},
    )
    text = format_infotext(params)
    assert text.endswith(f"Note: {written}")
    assert parse_infotext(text)["Note"] == value


def test_model_name_with_comma_is_quoted_and_round_trips():
    params = GenerationParams(
        prompt="x", steps=1, sampler="Euler", cfg_scale=2.0, seed=3, width=8, height=16, model_name="a,b: c"
    )
    text = format_infotext(params)
    assert 'Model: "a,b: c"' in text
    assert params_from_infotext(text) == params


def test_round_trip_multiline_prompts_and_unicode():
    params = GenerationParams(
        prompt="first line, red\nsecond: line\nüñíçødé 猫",
        negative_prompt="bad hands\nworst quality, lowres",
        steps=30,
        sampler="DPM++ SDE",
        schedule="Exponential",
        cfg_scale=7.5,
        seed=4294967295,
        width=1024,
        height=640,
        model_name="sdxl_base",
        model_hash="abcdef0123",
        clip_skip=2,
        extra={
            "Lora hashes": "ink: 0123456789ab, paper: ba9876543210",
            "Hires upscale": "2.0",
            "Hires resize": "2048x1280",
            "Note": "‘quotes’ and \"doubles\"",
        },
        version="v1.10.1",
    )
    text = format_infotext(params)
    assert text.splitlines()[3] == "Negative prompt: bad hands"
    parsed = parse_infotext(text)
    assert parsed["Hires resize-1"] == "2048"
    assert parsed["Hires resize-2"] == "1280"
    assert params_from_infotext(text) == params
    assert params_from_infotext(parsed) == params


def test_whole_number_cfg_from_ui_and_api():
    text = "p\nSteps: 20, Sampler: Euler, CFG scale: {}, Seed: 5, Size: 512x768"
    assert params_from_infotext(text.format("7")).cfg_scale == 7.0
    assert params_from_infotext(text.format("7.0")).cfg_scale == 7.0
    params = params_from_infotext(text.format("7"))
    assert (params.width, params.height) == (512, 768)
    assert params.schedule == "Automatic"
    assert params.clip_skip == 1
    assert params.negative_prompt == ""
    assert params.extra == {}


def test_legacy_combined_sampler_name_kept():
    params = params_from_infotext("p\nSteps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 5, Size: 512x512")
    assert params.sampler == "DPM++ 2M Karras"
    assert params.schedule == "Automatic"


def test_prompt_only_text_has_no_parameters():
    assert parse_infotext("just a prompt, with: a colon") == {
        "Prompt": "just a prompt, with: a colon",
        "Negative prompt": "",
    }


def test_last_line_with_two_pairs_is_not_a_parameter_line():
    parsed = parse_infotext("line one\nStyle: ink, Mood: calm")
    assert parsed == {"Prompt": "line one\nStyle: ink, Mood: calm", "Negative prompt": ""}


def test_negative_prompt_lines_and_trimming():
    text = "  a\n b \nNegative prompt:   ugly  \nblurry\nSteps: 4, Seed: 9, Size: 64x64"
    parsed = parse_infotext(text)
    assert parsed["Prompt"] == "a\nb"
    assert parsed["Negative prompt"] == "ugly\nblurry"
    assert parsed["Steps"] == "4"


def test_empty_prompt_starts_with_negative_line():
    params = GenerationParams(
        prompt="", negative_prompt="nope", steps=3, sampler="Euler", cfg_scale=1.0, seed=0, width=8, height=8
    )
    text = format_infotext(params)
    assert text.startswith("Negative prompt: nope\nSteps: 3")
    assert params_from_infotext(text) == params


def test_bad_json_quote_falls_back_to_raw():
    parsed = parse_infotext('p\nSteps: 1, Seed: 2, Odd: "bad \\q escape"')
    assert parsed["Odd"] == '"bad \\q escape"'


def test_size_split_for_any_wxh_value():
    parsed = parse_infotext("p\nSteps: 1, Size: 640x480, Seed resize from: 512x384, Version: x1x")
    assert (parsed["Size-1"], parsed["Size-2"]) == ("640", "480")
    assert (parsed["Seed resize from-1"], parsed["Seed resize from-2"]) == ("512", "384")
    assert parsed["Seed resize from"] == "512x384"
    assert "Version-1" not in parsed


@pytest.mark.parametrize("missing", ["Steps", "Sampler", "CFG scale", "Seed", "Size"])
def test_missing_key_is_named(missing):
    parsed = parse_infotext(A1111_EXAMPLE)
    for key in (missing, f"{missing}-1", f"{missing}-2"):
        parsed.pop(key, None)
    with pytest.raises(InfotextError, match=f"no '{missing}'"):
        params_from_infotext(parsed)


def test_bad_numbers_are_named():
    with pytest.raises(InfotextError, match="'Steps' = 'many'"):
        params_from_infotext("p\nSteps: many, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 8x8")
    with pytest.raises(InfotextError, match="'CFG scale'"):
        params_from_infotext("p\nSteps: 2, Sampler: Euler, CFG scale: high, Seed: 1, Size: 8x8")
    assert issubclass(InfotextError, ValueError)


def test_unreadable_extra_key_is_rejected():
    params = GenerationParams(
        prompt="p", steps=1, sampler="Euler", cfg_scale=1.0, seed=0, width=8, height=8, extra={"a.b": "c"}
    )
    with pytest.raises(ValueError, match="'a.b' cannot be read back"):
        format_infotext(params)


# --------------------------------------------------------------------------
# The parameter-line reader: same pairs as the old regex, in linear time
# --------------------------------------------------------------------------

import random  # noqa: E402
import re  # noqa: E402
import time  # noqa: E402

from brushwork.infotext import _find_pairs  # noqa: E402

#: the pair pattern the reader used before (quadratic with finditer): the reference
_REFERENCE_PAIR_RE = re.compile(
    r"""
    \s*
    (?P<key> \w [\w\ /-]+ )
    : \s*
    (?P<value> " (?: \\. | [^\\"] )+ " | [^,]* )
    (?: , | $ )
    """,
    re.VERBOSE,
)


def _reference_pairs(line: str) -> list[tuple[str, str]]:
    return [(m.group("key"), m.group("value")) for m in _REFERENCE_PAIR_RE.finditer(line)]


_ADVERSARIAL = list('ab:,"\\ \t-/é_\n1') + ["\u00a0", "\u3000"]
_REALISTIC = [
    A1111_EXAMPLE.split("\n")[-1],
    'Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 512x512, Model: "a, b", Lora hashes: "x: 1, y: 2"',
    'Steps: 20, Template: "a \\"quoted\\" word, more", Hires upscale: 2, Hires upscaler: Latent, Denoising strength: 0.7',
    'Steps: 20,  Sampler:DPM++ 2M ,CFG scale:  7 , Bad: "unterminated, Seed: 5, Size: 64x64',
    'Steps: 20, Sampler: "", Empty:, : nokey, x: single, ab/cd-ef gh: slash, Version: v1.10.1',
    'Steps: 20, Weird: "a"b, Seed: "1"\n',
    "Prompt, with commas: and colons, Steps: 30, Sampler: Euler, CFG scale: 5",
]


@pytest.mark.parametrize("seed", range(4))
def test_pair_reader_matches_the_reference_regex_on_random_lines(seed):
    rng = random.Random(seed)
    for _ in range(20_000):
        if rng.random() < 0.2:  # realistic lines, mutated
            base = list(rng.choice(_REALISTIC))
            for _ in range(rng.randint(0, 4)):
                base.insert(rng.randint(0, len(base)), rng.choice(_ADVERSARIAL))
            line = "".join(base)
        else:
            line = "".join(rng.choice(_ADVERSARIAL) for _ in range(rng.randint(0, 30)))
        assert _find_pairs(line) == _reference_pairs(line), repr(line)


@pytest.mark.parametrize("line", _REALISTIC)
def test_pair_reader_matches_the_reference_regex_on_realistic_lines(line):
    assert _find_pairs(line) == _reference_pairs(line)
    assert len(_find_pairs(line)) >= 3


#: lines that made the old reader quadratic (each start position re-scanned the run)
#: and lines with many pairs or long quoted stretches
_WORST_CASES = {
    "word run": lambda n: "a" * n,
    "space run": lambda n: "x" + " " * n + "x",
    "tab run": lambda n: "x " + "\t" * n + "x",
    "words and spaces": lambda n: "a " * (n // 2),
    "key run without colon": lambda n: "ab/cd-ef " * (n // 9),
    "tiny pairs": lambda n: "ab:," * (n // 4),
    "unclosed quotes": lambda n: 'ab: "x,' * (n // 7),
    "escaped quotes": lambda n: 'ab: "' + '\\"' * (n // 2),
}


def _parse_seconds(text: str) -> float:
    t0 = time.perf_counter()
    parse_infotext(text)
    return time.perf_counter() - t0


@pytest.mark.parametrize("case", list(_WORST_CASES))
def test_parsing_is_linear_in_the_length_of_the_text(case):
    make = _WORST_CASES[case]
    times = {}
    for n in (10_000, 100_000, 1_000_000):  # stops at the first size over its bound
        times[n] = min(_parse_seconds(make(n)) for _ in range(2))
        bound = min(1.0, 0.2 + n / 1e6)  # a sanity bound (the old reader: 1.3 s for 10k)
        assert times[n] < bound, f"{case}: {n} characters took {times[n]:.2f} s"
    ratio = times[1_000_000] / max(times[100_000], 1e-4)
    assert ratio < 30, f"{case}: 10x the text took {ratio:.0f}x the time ({times})"
