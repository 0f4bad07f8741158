"""Prompt styles (issue #12 item 4): AUTOMATIC1111's styles.csv, applied by the engine,
recorded in the infotext, taken back out by ``generate --from``, listed and saved by
``brushwork styles``."""
import shutil

import numpy as np
import pytest
from PIL import Image

from brushwork.cli import main
from brushwork.engine import GenerationRequest, RequestError
from brushwork.infotext import parse_infotext
from brushwork.prompts.styles import (
    PromptStyle,
    StylesFileError,
    add_style,
    apply_styles,
    extract_styles,
    format_styles,
    merge_prompt,
    parse_styles,
    read_styles,
)

#: a styles.csv as AUTOMATIC1111 1.10 writes it (header, quoted cells with commas)
A1111_CSV = 'name,prompt,negative_prompt\nWatercolor,"{prompt}, watercolor, soft light","photo, 3d"\nCinematic,"cinematic, film grain",blurry\nEmpty,,\n'

STYLES = parse_styles(A1111_CSV)


def test_parse_reads_a1111_file_with_quoted_commas():
    assert [(s.name, s.prompt, s.negative_prompt) for s in STYLES] == [
        ("Watercolor", "{prompt}, watercolor, soft light", "photo, 3d"),
        ("Cinematic", "cinematic, film grain", "blurry"),
        ("Empty", "", ""),
    ]


def test_parse_skips_nameless_rows_ignores_extra_columns_and_later_row_wins():
    text = "\ufeffname,prompt,negative_prompt,notes\n,orphan,x,\nA,one,,n1\nB,two,,\nA,uno,neg,n2\n"
    assert [(s.name, s.prompt, s.negative_prompt) for s in parse_styles(text)] == [("B", "two", ""), ("A", "uno", "neg")]


def test_a_file_without_header_is_a_clear_error():
    with pytest.raises(StylesFileError, match="header with the columns name,prompt,negative_prompt"):
        parse_styles("Watercolor,watercolor,photo\n")


def test_merge_places_prompt_at_placeholder_or_appends_after_a_comma():
    assert merge_prompt("{prompt}, watercolor", "a cat") == "a cat, watercolor"
    assert merge_prompt("best quality, {prompt}", "a cat") == "best quality, a cat"
    assert merge_prompt("cinematic", "a cat ") == "a cat, cinematic"
    assert merge_prompt("cinematic", "") == "cinematic"
    assert merge_prompt("", "a cat") == "a cat"


def test_styles_apply_in_order_to_both_prompts():
    out = apply_styles("a cat", "ugly", ["Watercolor", "Cinematic"], STYLES)
    assert out.prompt == "a cat, watercolor, soft light, cinematic, film grain"
    assert out.negative_prompt == "ugly, photo, 3d, blurry"
    assert out.applied == ["Watercolor", "Cinematic"]
    assert out.warnings == []


def test_unknown_style_is_a_warning_with_suggestion_and_none_means_no_style():
    out = apply_styles("a cat", "", ["None", "watercolour", "cinematic"], STYLES)
    assert out.prompt == "a cat, cinematic, film grain"  # case-insensitive match for "cinematic"
    assert out.applied == ["Cinematic"]
    assert len(out.warnings) == 1
    assert "'watercolour' not found" in out.warnings[0] and "Did you mean 'Watercolor'" in out.warnings[0]


def test_extract_undoes_apply_so_styles_are_not_applied_twice():
    for prompt, negative in [("a cat", "ugly"), ("", ""), ("a, b, c", "")]:
        styled = apply_styles(prompt, negative, ["Watercolor", "Cinematic"], STYLES)
        back = extract_styles(styled.prompt, styled.negative_prompt, ["Watercolor", "Cinematic"], STYLES)
        assert (back.prompt, back.negative_prompt, back.applied) == (prompt.strip(), negative, ["Watercolor", "Cinematic"])
        again = apply_styles(back.prompt, back.negative_prompt, back.applied, STYLES)
        assert (again.prompt, again.negative_prompt) == (styled.prompt, styled.negative_prompt)


def test_extract_keeps_words_of_a_style_that_changed():
    styled = apply_styles("a cat", "", ["Cinematic"], STYLES)
    changed = [PromptStyle("Cinematic", "cinematic, anamorphic", "")]
    back = extract_styles(styled.prompt, styled.negative_prompt, ["Cinematic"], changed)
    assert back.prompt == styled.prompt and back.applied == [] and "could not be taken out" in back.warnings[0]


def test_add_style_appends_one_row_and_never_touches_the_rest(tmp_path):
    path = tmp_path / "styles.csv"
    original = A1111_CSV.replace("\n", "\r\n").rstrip("\r\n")  # Windows line ends, no final newline
    path.write_bytes(original.encode())
    add_style(path, PromptStyle("Ink", "ink drawing, {prompt}", "color"))
    data = path.read_bytes()
    assert data.startswith(original.encode())  # every byte the user wrote is still there
    assert [s.name for s in read_styles(path)] == ["Watercolor", "Cinematic", "Empty", "Ink"]
    with pytest.raises(StylesFileError, match="already saved.*--replace"):
        add_style(path, PromptStyle("Ink", "x", ""))
    add_style(path, PromptStyle("Ink", "ink wash, {prompt}", ""), replace=True)
    assert {s.name: s.prompt for s in read_styles(path)}["Ink"] == "ink wash, {prompt}"
    assert {s.name: s.prompt for s in read_styles(path)}["Watercolor"] == "{prompt}, watercolor, soft light"


def test_format_styles_round_trips():
    assert parse_styles(format_styles(STYLES)) == STYLES


def test_missing_file_means_no_styles_and_non_utf8_file_is_explained(tmp_path):
    assert read_styles(tmp_path / "none.csv") == []
    bad = tmp_path / "styles.csv"
    bad.write_bytes("name,prompt\nCaf\xe9,x\n".encode("latin-1"))
    with pytest.raises(StylesFileError, match="not UTF-8"):
        read_styles(bad)


# ------------------------------------------------------------------ engine and CLI


@pytest.fixture
def home(tiny_home, tmp_path):
    dst = tmp_path / "home"
    shutil.copytree(tiny_home / "models", dst / "models")
    (dst / "styles.csv").write_text(A1111_CSV, encoding="utf-8")
    return dst


FAST = ["--steps", "2", "-W", "64", "-H", "64", "-q", "--model", "tiny-sd1", "--seed", "5"]


def run(capsys, *args):
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_engine_applies_styles_and_records_them_in_the_infotext(engines, tmp_path, caplog):
    from brushwork.paths import DataHome

    engine = engines("sd1")
    saved = engine.home  # the session engine reads the shared tiny home: point it at a private one
    (tmp_path / "styles.csv").write_text(A1111_CSV, encoding="utf-8")
    engine.home = DataHome(tmp_path)
    try:
        req = GenerationRequest(prompt="a cat", negative_prompt="ugly", seed=3, steps=2, width=64, height=64, styles=["Watercolor", "Nope"])
        with caplog.at_level("WARNING"):
            [img] = engine.txt2img(req)
        typed = engine.txt2img(GenerationRequest(prompt="a cat, watercolor, soft light", negative_prompt="ugly, photo, 3d", seed=3, steps=2, width=64, height=64))[0]
    finally:
        engine.home = saved
    parsed = parse_infotext(img.infotext)
    assert parsed["Prompt"] == "a cat, watercolor, soft light"
    assert parsed["Negative prompt"] == "ugly, photo, 3d"
    assert parsed["Styles"] == "Watercolor"
    assert "Styles" not in parse_infotext(typed.infotext)
    assert "'Nope' not found" in caplog.text
    # a style is exactly its words: the same pixels as typing them
    assert np.array_equal(np.asarray(img.image), np.asarray(typed.image))


def test_broken_styles_file_fails_the_request_with_the_reason(engines, tmp_path):
    from brushwork.paths import DataHome

    engine = engines("sd1")
    saved = engine.home
    (tmp_path / "styles.csv").write_text("just,some,words\n", encoding="utf-8")
    engine.home = DataHome(tmp_path)
    try:
        with pytest.raises(RequestError, match="header with the columns"):
            list(engine.batches(GenerationRequest(prompt="a", steps=1, width=64, height=64, styles=["x"])))
    finally:
        engine.home = saved


def test_cli_style_flag_and_from_reapplies_styles_once(home, capsys):
    code, out, _ = run(capsys, "generate", "a cat", "-n", "ugly", "--style", "Watercolor", "--style", "Cinematic", "--home", str(home), *FAST)
    assert code == 0
    first = out.split("  seed ")[0]
    text = Image.open(first).text["parameters"]
    parsed = parse_infotext(text)
    assert parsed["Prompt"] == "a cat, watercolor, soft light, cinematic, film grain"
    assert parsed["Styles"] == "Watercolor, Cinematic"
    code, out, _ = run(capsys, "generate", "--from", first, "--home", str(home), "-q", "--out", str(home / "again"))
    assert code == 0
    second = out.split("  seed ")[0]
    again = parse_infotext(Image.open(second).text["parameters"])
    assert again["Prompt"] == parsed["Prompt"] and again["Styles"] == "Watercolor, Cinematic"
    assert np.array_equal(np.asarray(Image.open(first)), np.asarray(Image.open(second)))


def test_cli_styles_lists_and_adds(home, capsys):
    code, out, _ = run(capsys, "styles", "--home", str(home))
    assert code == 0
    assert out.splitlines()[1].startswith("Watercolor") and "{prompt}, watercolor, soft light  |  photo, 3d" in out
    code, out, _ = run(capsys, "styles", "--add", "Ink", "--prompt", "ink, {prompt}", "--home", str(home))
    assert code == 0 and "--style Ink" in out
    code, _, err = run(capsys, "styles", "--add", "Ink", "--prompt", "other", "--home", str(home))
    assert code == 2 and "already saved" in err
    assert [s.name for s in read_styles(home / "styles.csv")][-1] == "Ink"


def test_cli_without_styles_file_says_how_to_add_one(tmp_path, capsys):
    code, out, _ = run(capsys, "styles", "--home", str(tmp_path))
    assert code == 0 and "No styles saved yet" in out and "brushwork styles --add" in out


# ------------------------------------------------------------------ native HTTP API


@pytest.fixture
def api(tmp_path):
    from fastapi.testclient import TestClient

    from brushwork.paths import DataHome
    from brushwork.server.app import create_app
    from brushwork.server.store import JobStore
    from brushwork.server.studio import Studio
    from test_server_api import FakeEngine

    home = DataHome(tmp_path / "home")
    home.create()
    home.styles_file.write_text(A1111_CSV, encoding="utf-8")
    engine = FakeEngine(home)
    studio = Studio(engine, JobStore(home.root / "db.sqlite3"))
    with TestClient(create_app(studio, web=False), raise_server_exceptions=False) as c:
        yield c, engine, home
    studio.close()


def test_native_api_lists_styles_and_passes_them_to_the_engine(api):
    client, engine, _ = api
    assert client.get("/api/v1/styles").json()[0] == {"name": "Watercolor", "prompt": "{prompt}, watercolor, soft light", "negative_prompt": "photo, 3d"}
    job = client.post("/api/v1/jobs", json={"prompt": "a cat", "steps": 1, "styles": ["Watercolor", "Cinematic"]}).json()
    assert job["request"]["styles"] == ["Watercolor", "Cinematic"]
    r = client.post("/api/v1/jobs", json={"prompt": "a cat", "styles": "Watercolor"})
    assert r.status_code == 422  # a list of names, not a string


def test_native_png_info_gives_the_prompts_without_their_styles(api):
    client, _, _ = api
    import base64
    import io

    from PIL import PngImagePlugin

    styled = apply_styles("a cat", "ugly", ["Watercolor"], STYLES)
    text = f"{styled.prompt}\nNegative prompt: {styled.negative_prompt}\nSteps: 2, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 64x64, Styles: Watercolor"
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", text)
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "PNG", pnginfo=info)
    r = client.post("/api/v1/png-info", json={"image": base64.b64encode(buf.getvalue()).decode()}).json()
    assert r["parameters"]["Prompt"] == "a cat, watercolor, soft light"
    assert r["unstyled"] == {"prompt": "a cat", "negative_prompt": "ugly", "styles": ["Watercolor"], "warnings": []}


def test_a_broken_styles_file_is_explained_on_both_apis(api):
    client, _, home = api
    home.styles_file.write_bytes(b"\xff\xfe not csv")
    for path in ("/api/v1/styles", "/sdapi/v1/prompt-styles"):
        r = client.get(path)
        assert r.status_code == 500
        body = r.json()
        assert "not UTF-8" in body["detail"] and str(home.root) not in body["detail"]
