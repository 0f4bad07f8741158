"""Issue #13 item 13: a picture stopped part-way (interrupt, skip) says so in its
infotext and in the history, and re-creating it stops at the same step, so it gives
the same pixels instead of a different, finished picture."""

import numpy as np
import pytest
from PIL import Image

from brushwork.cli import main
from brushwork.engine import GenerationRequest, JobControl, RequestError
from brushwork.infotext import STOPPED_KEY, parse_infotext, stopped_step

BASE = GenerationRequest(prompt="a red barn", seed=9, steps=6, width=64, height=64, sampler="Euler a")


def pixels(img) -> np.ndarray:
    return np.asarray(img.image if hasattr(img, "image") else img)


def test_an_interrupted_picture_names_its_step_and_is_recreated_exactly(engines):
    eng = engines("sd1")
    control = JobControl()

    def progress(p):
        if p.step == 3:
            control.interrupt()

    [[stopped]] = list(eng.batches(BASE, progress=progress, control=control))
    assert not stopped.complete
    parsed = parse_infotext(stopped.infotext)
    assert parsed["Steps"] == "6" and parsed[STOPPED_KEY] == "3"
    assert stopped_step(stopped.infotext) == 3

    again = eng.txt2img(GenerationRequest(**{**BASE.__dict__, "stop_at_step": 3}))[0]
    assert np.array_equal(pixels(again), pixels(stopped))
    assert parse_infotext(again.infotext)[STOPPED_KEY] == "3"
    finished = eng.txt2img(BASE)[0]
    assert finished.complete and STOPPED_KEY not in parse_infotext(finished.infotext)
    assert stopped_step(finished.infotext) is None
    assert not np.array_equal(pixels(finished), pixels(stopped))


@pytest.mark.parametrize("bad", [0, 7, -1])
def test_a_stop_outside_the_steps_is_refused(engines, bad):
    with pytest.raises(RequestError, match="stop_at_step must be a step from 1 to 6"):
        list(engines("sd1").batches(GenerationRequest(**{**BASE.__dict__, "stop_at_step": bad})))


def test_generate_from_a_stopped_picture_stops_there_and_says_so(engines, home, tmp_path, capsys):
    control = JobControl()
    eng = engines("sd1")
    [[stopped]] = list(eng.batches(BASE, progress=lambda p: p.step == 2 and control.interrupt(), control=control))
    src = tmp_path / "stopped.png"
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", stopped.infotext)
    stopped.image.save(src, pnginfo=info)

    assert main(["generate", "--from", str(src), "--home", str(home), "--model", "tiny-sd1", "--out", str(tmp_path / "a")]) == 0
    out = capsys.readouterr()
    assert "note: this picture was stopped at step 2 of 6; it is re-created the same way (pass --steps 6 to run it to the end)" in out.err
    made = out.out.split("  seed ")[0]
    assert np.array_equal(np.asarray(Image.open(made).convert("RGB")), pixels(stopped))
    assert parse_infotext(Image.open(made).text["parameters"])[STOPPED_KEY] == "2"

    assert main(["generate", "--from", str(src), "--steps", "6", "--home", str(home), "--model", "tiny-sd1", "--out", str(tmp_path / "b"), "-q"]) == 0
    full = capsys.readouterr().out.split("  seed ")[0]
    assert STOPPED_KEY not in parse_infotext(Image.open(full).text["parameters"])


def test_the_history_marks_stopped_pictures():
    from brushwork.server.store import ImageRecord
    from brushwork.server.studio import image_view

    text = "x\nSteps: 6, Sampler: Euler a, CFG scale: 7.0, Seed: 9, Size: 64x64, Stopped at step: 4"
    rec = ImageRecord(1, "job", 0, "outputs/a.png", 9, 64, 64, "x", "", text, "m", None, 0.0)
    assert image_view(rec)["stopped_at"] == 4
    rec2 = ImageRecord(2, "job", 0, "outputs/b.png", 9, 64, 64, "x", "", text.replace(", Stopped at step: 4", ""), "m", None, 0.0)
    assert image_view(rec2)["stopped_at"] is None
