"""``brushwork img2img``: redraw, inpaint and outpaint from the command line, and
``--from`` re-creating a refined picture from its infotext."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from brushwork.cli import main
from brushwork.init_image import image_hash

FAST = ["--steps", "4", "-q", "--model", "tiny-sd1", "--seed", "11"]


def run(capsys, *args):
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def saved(stdout) -> list[str]:
    return [line.split("  seed ")[0] for line in stdout.strip().splitlines()]


@pytest.fixture
def pictures(tmp_path):
    y, x = np.mgrid[0:64, 0:96]
    img = Image.fromarray(np.stack([x * 2, y * 3, np.full_like(x, 120)], -1).astype(np.uint8), "RGB")
    img.save(tmp_path / "day.png")
    mask = Image.new("L", (96, 64), 0)
    mask.paste(255, (40, 16, 72, 48))
    mask.save(tmp_path / "mask.png")
    (tmp_path / "notes.txt").write_text("not a picture")
    return tmp_path, img, mask


def test_img2img_writes_a_picture_of_the_init_size_with_its_settings(home, pictures, capsys):
    folder, img, _ = pictures
    code, out, _ = run(capsys, "img2img", folder / "day.png", "a lake at sunset", "--strength", "0.6", "--home", home, *FAST)
    assert code == 0, out
    path = saved(out)[0]
    result = Image.open(path)
    assert result.size == (96, 64)
    text = result.text["parameters"]
    assert "Denoising strength: 0.6" in text and f"Init image hash: {image_hash(img)}" in text
    # the init image is kept in HOME/inputs for --from
    assert (home / "inputs" / f"{image_hash(img)}.png").is_file()


def test_inpaint_from_the_command_line_keeps_the_outside(home, pictures, capsys):
    folder, img, _ = pictures
    code, out, _ = run(capsys, "img2img", folder / "day.png", "a boat", "--mask", folder / "mask.png", "--mask-blur", "0", "--strength", "0.9", "--home", home, *FAST)
    assert code == 0
    a = np.asarray(Image.open(saved(out)[0]).convert("RGB")).astype(int)
    b = np.asarray(img).astype(int)
    assert np.array_equal(a[:, :40], b[:, :40]) and np.abs(a[16:48, 40:72] - b[16:48, 40:72]).mean() > 5


def test_outpaint_from_the_command_line(home, pictures, capsys):
    folder, _, _ = pictures
    code, out, _ = run(capsys, "img2img", folder / "day.png", "a wide lake", "--outpaint", "left=32,right=32", "--strength", "0.8", "--home", home, *FAST)
    assert code == 0
    result = Image.open(saved(out)[0])
    assert result.size == (160, 64) and "Outpaint: left=32 right=32" in result.text["parameters"]


def test_from_re_creates_img2img_and_inpaint_results_pixel_for_pixel(home, pictures, capsys):
    folder, _, _ = pictures
    for extra in ([], ["--mask", folder / "mask.png", "--only-masked", "--padding", "8", "--masked-content", "fill", "--invert-mask"]):
        code, out, _ = run(capsys, "img2img", folder / "day.png", "a boat", "--strength", "0.7", "--home", home, *extra, *FAST)
        assert code == 0
        first = saved(out)[0]
        # the init image and mask are found again in HOME/inputs by their hashes
        code, out, err = run(capsys, "img2img", "--from", first, "--home", home, "-q")
        assert code == 0, err
        again = saved(out)[0]
        assert np.array_equal(np.asarray(Image.open(first)), np.asarray(Image.open(again)))
        assert Image.open(first).text["parameters"] == Image.open(again).text["parameters"]


def test_generate_from_an_img2img_result_points_to_img2img(home, pictures, capsys):
    folder, _, _ = pictures
    code, out, _ = run(capsys, "img2img", folder / "day.png", "a boat", "--home", home, *FAST)
    code, _, err = run(capsys, "generate", "--from", saved(out)[0], "--home", home)
    assert code == 2 and "brushwork img2img --from" in err


def test_from_without_the_stored_picture_says_how_to_give_it(home, pictures, capsys):
    folder, img, _ = pictures
    code, out, _ = run(capsys, "img2img", folder / "day.png", "a boat", "--home", home, *FAST)
    (home / "inputs" / f"{image_hash(img)}.png").unlink()
    code, _, err = run(capsys, "img2img", "--from", saved(out)[0], "--home", home, "-q")
    assert code == 2 and image_hash(img) in err and "brushwork img2img INIT_IMAGE --from" in err
    # giving it again works
    code, _, err = run(capsys, "img2img", folder / "day.png", "--from", saved(out)[0], "--home", home, "-q")
    assert code == 0, err


@pytest.mark.parametrize("args, words", [
    (["notes.txt", "x"], "not a PNG, JPEG or WebP"),
    (["missing.png", "x"], "missing.png"),
    (["day.png", "x", "--strength", "1.5"], "denoising strength must be between 0 and 1"),
    (["day.png", "x", "--outpaint", "left=100"], "multiple of 8"),
    (["day.png", "x", "--masked-content", "blank"], "latent noise"),
])
def test_bad_input_gets_a_clear_message(home, pictures, capsys, args, words):
    folder, _, _ = pictures
    args = [folder / args[0], *args[1:]]
    code, _, err = run(capsys, "img2img", *args, "--home", home, *FAST)
    assert code == 2 and words in err, err


def test_img2img_without_a_picture_says_what_to_give(home, capsys):
    code, _, err = run(capsys, "img2img", "--home", home)
    assert code == 2 and "give the picture to start from" in err
