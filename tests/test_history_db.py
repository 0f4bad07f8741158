"""The history database: damage is noticed at start, never papered over, and
``brushwork history rebuild`` re-makes it from the pictures (issue 11, item 8)."""
from __future__ import annotations

import sqlite3

import pytest
from PIL import Image

from brushwork import cli
from brushwork.infotext import GenerationParams, format_infotext
from brushwork.outputs import save_png
from brushwork.paths import DataHome
from brushwork.server.rebuild import rebuild_history
from brushwork.server.store import DONE, HistoryDamaged, JobStore, check_database


@pytest.fixture
def home(tmp_path):
    h = DataHome(tmp_path / "home")
    h.create()
    return h


def make_pictures(home: DataHome, n: int) -> list:
    folder = home.outputs / "2026-12-01"
    paths = []
    for i in range(n):
        params = GenerationParams(prompt=f"a lighthouse number {i}", negative_prompt="blurry", steps=20, sampler="DPM++ 2M", schedule="Karras", cfg_scale=6.5, seed=100 + i, width=64, height=48, model_name="demo", model_hash="0123456789")
        paths.append(save_png(Image.new("RGB", (64, 48), (i * 40, 0, 0)), folder, params.seed, format_infotext(params)))
    return paths


def db_path(home):
    return home.root / "brushwork.sqlite3"


def test_a_zero_byte_database_next_to_pictures_is_refused_with_the_way_out(home):
    make_pictures(home, 2)
    db_path(home).write_bytes(b"")
    with pytest.raises(HistoryDamaged) as info:
        JobStore(db_path(home), outputs=home.outputs)
    msg = str(info.value)
    assert "empty (0 bytes)" in msg and "brushwork history rebuild" in msg and "safe" in msg
    assert db_path(home).stat().st_size == 0  # not silently turned into a fresh database


def test_a_zero_byte_database_without_pictures_is_fine(home):
    db_path(home).write_bytes(b"")
    store = JobStore(db_path(home), outputs=home.outputs)
    assert store.counts() == {}
    store.close()


@pytest.mark.parametrize("damage", ["garbage", "truncated", "page"])
def test_a_damaged_database_is_a_clear_message_not_a_traceback(home, damage):
    store = JobStore(db_path(home))
    for i in range(300):
        job = store.add_job("a", "txt2img", {"prompt": "x" * 200, "i": i}, "demo", 4)
        store.update_job(job.id, state=DONE)
    store.close()
    raw = bytearray(db_path(home).read_bytes())
    if damage == "garbage":
        raw = bytearray(b"this is not a database at all " * 100)
    elif damage == "truncated":
        raw = raw[: len(raw) // 3]
    else:  # scribble over pages in the middle, keep the header
        for offset in range(4096 * 3, min(len(raw), 4096 * 12), 4096):
            raw[offset : offset + 600] = b"\xff" * 600
    db_path(home).write_bytes(bytes(raw))
    with pytest.raises(HistoryDamaged) as info:
        check_database(db_path(home))
    msg = str(info.value)
    assert "damaged" in msg and "brushwork history rebuild" in msg
    assert "Traceback" not in msg and len(msg.splitlines()) == 1


def test_another_programs_sqlite_file_is_not_taken_for_the_history(home):
    db = sqlite3.connect(db_path(home))
    db.execute("CREATE TABLE notes (x)")
    db.commit()
    db.close()
    with pytest.raises(HistoryDamaged, match="not Brushwork's history"):
        JobStore(db_path(home))


def test_serve_with_a_damaged_history_says_so_in_one_line(tiny_home, tmp_path, capsys):
    home = tmp_path / "h"
    (home / "models" / "checkpoints").mkdir(parents=True)
    (home / "models" / "checkpoints" / "tiny-sd1.safetensors").symlink_to(tiny_home / "models" / "checkpoints" / "tiny-sd1.safetensors")
    (home / "brushwork.sqlite3").write_bytes(b"garbage " * 512)
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    code = cli.main(["serve", "--home", str(home), "--port", str(port)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: the history database brushwork.sqlite3 is damaged") and "history rebuild" in err
    assert "Traceback" not in err


def test_rebuild_moves_the_damaged_file_aside_and_lists_every_picture_again(home, capsys):
    pictures = make_pictures(home, 3)
    (home.outputs / "2026-12-01" / "notes.png").write_bytes(b"not an image")
    Image.new("RGB", (8, 8)).save(home.outputs / "plain.png")  # no parameters
    db_path(home).write_bytes(b"garbage " * 512)
    code = cli.main(["history", "rebuild", "--home", str(home.root)])
    out = capsys.readouterr().out
    assert code == 0
    aside = list(home.root.glob("brushwork.sqlite3.damaged-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == b"garbage " * 512  # kept, not deleted
    assert "3 picture(s) re-indexed" in out and "skipped" in out
    store = JobStore(db_path(home), outputs=home.outputs)
    images = store.images(10)
    assert sorted(im.seed for im in images) == [100, 101, 102]
    assert {im.prompt for im in images} == {f"a lighthouse number {i}" for i in range(3)}
    assert {im.path for im in images} == {p.relative_to(home.root).as_posix() for p in pictures}
    job = store.job(images[0].job_id)
    assert job.state == DONE and job.request["cfg_scale"] == 6.5 and job.model == "demo"
    assert (images[0].width, images[0].height) == (64, 48)
    store.close()
    # a second run finds nothing new
    report = rebuild_history(home)
    assert report.added == 0 and report.already_listed == 3 and report.moved_aside is None


def test_rebuild_of_a_healthy_history_only_adds_what_it_does_not_list(home):
    first = make_pictures(home, 1)
    store = JobStore(db_path(home))
    job = store.add_job("me", "txt2img", {"prompt": "kept"}, "demo", 20)
    store.add_image(job.id, 0, first[0].relative_to(home.root).as_posix(), 100, 64, 48, "kept", "", "", "demo", None)
    store.close()
    make_pictures(home, 2)  # the second picture (seed 101) is new; seed 100 is saved again under a new number
    report = rebuild_history(home)
    assert report.moved_aside is None and report.already_listed == 1 and report.added == 2
    store = JobStore(db_path(home))
    assert store.job(job.id).request == {"prompt": "kept"}  # the real record is untouched
    assert len(store.images(10)) == 3
    store.close()


def test_rebuild_lists_refined_pictures_with_their_kind_and_init_image(home):
    from brushwork.init_image import image_hash
    from brushwork.outputs import save_input

    init = Image.new("RGB", (64, 48), (10, 200, 30))
    kept = save_input(init, home.inputs, image_hash(init))
    for extra, kind in (({"Denoising strength": 0.6, "Init image hash": image_hash(init)}, "img2img"),
                        ({"Denoising strength": 0.9, "Mask blur": 4, "Inpaint area": "Whole picture", "Masked content": "fill", "Init image hash": image_hash(init), "Mask hash": "00000000"}, "inpaint")):
        params = GenerationParams(prompt="a lake", steps=20, sampler="Euler", cfg_scale=7.0, seed=5, width=64, height=48, model_name="demo", extra=extra)
        save_png(Image.new("RGB", (64, 48)), home.outputs / "2026-12-02", 5, format_infotext(params))
    assert rebuild_history(home).added == 2
    store = JobStore(db_path(home), outputs=home.outputs)
    jobs = {store.job(im.job_id).kind: store.job(im.job_id) for im in store.images(10)}
    assert set(jobs) == {"img2img", "inpaint"}
    assert jobs["img2img"].request["init_image"] == kept.relative_to(home.root).as_posix()
    assert jobs["img2img"].request["denoising_strength"] == 0.6
    inpaint = jobs["inpaint"].request
    assert inpaint["masked_content"] == "fill" and inpaint["mask_blur"] == 4 and "mask" not in inpaint  # the mask is not stored
    store.close()
