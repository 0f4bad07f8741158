"""Tests for saving images without overwriting and reading infotext back."""

from __future__ import annotations

import hashlib
import io
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image, PngImagePlugin

from brushwork import outputs
from brushwork.outputs import (
    NotAnImageError,
    OutputError,
    encode_user_comment,
    ensure_writable_folder,
    next_counter,
    read_infotext,
    save_png,
)


def _image(colour=(10, 20, 30)) -> Image.Image:
    return Image.new("RGB", (4, 3), colour)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_two_saves_get_increasing_numbers(tmp_path):
    first = save_png(_image(), tmp_path, 42, "a\nSteps: 1")
    second = save_png(_image(), tmp_path, 42, "b\nSteps: 1")
    assert first.name == "00000-42.png"
    assert second.name == "00001-42.png"
    assert read_infotext(first) == "a\nSteps: 1"
    assert read_infotext(second) == "b\nSteps: 1"


def test_counter_continues_after_existing_files_which_stay_untouched(tmp_path):
    existing = {
        tmp_path / "00007-1.png": b"not really a png",
        tmp_path / "00003-99.jpg": b"jpeg bytes",
        tmp_path / "notes.txt": b"hello",
    }
    for path, data in existing.items():
        path.write_bytes(data)
    before = {path: _digest(path) for path in existing}
    saved = save_png(_image(), tmp_path, 5, "x")
    assert saved.name == "00008-5.png"
    assert {path: _digest(path) for path in existing} == before
    assert next_counter(tmp_path) == 9


def test_race_skips_a_name_taken_meanwhile(tmp_path, monkeypatch):
    taken = tmp_path / "00000-3.png"
    # Simulate another process creating the file after we picked the number.
    monkeypatch.setattr(outputs, "next_counter", lambda folder: 0)
    taken.write_bytes(b"someone else's image")
    before = _digest(taken)
    saved = save_png(_image(), tmp_path, 3, "mine")
    assert saved.name == "00001-3.png"
    assert _digest(taken) == before
    assert read_infotext(saved) == "mine"


def test_creates_missing_parent_folders(tmp_path):
    folder = tmp_path / "a" / "b"
    saved = save_png(_image(), folder, 0, "p")
    assert saved == folder / "00000-0.png"
    assert saved.is_file()


def test_latin1_text_uses_text_chunk_and_unicode_uses_itxt(tmp_path):
    latin = save_png(_image(), tmp_path, 1, "café")
    unicode_text = "猫 — prompt\nNegative prompt: ügly\nSteps: 20, Lora hashes: \"ink: 0123456789ab\""
    wide = save_png(_image(), tmp_path, 2, unicode_text)
    assert b"tEXtparameters\x00caf\xe9" in latin.read_bytes()
    assert b"iTXtparameters" in wide.read_bytes()
    assert read_infotext(latin) == "café"
    assert read_infotext(wide) == unicode_text


def test_unsupported_mode_is_converted(tmp_path):
    saved = save_png(Image.new("CMYK", (2, 2)), tmp_path, 7, "cmyk")
    with Image.open(saved) as image:
        assert image.mode == "RGB"
    assert read_infotext(saved) == "cmyk"


def test_folder_under_a_regular_file_is_reported(tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    target = blocker / "images"
    with pytest.raises(OutputError) as info:
        ensure_writable_folder(target)
    message = str(info.value)
    assert str(target) in message
    assert "--out" in message
    with pytest.raises(OutputError, match="--out"):
        save_png(_image(), target, 1, "p")
    assert blocker.read_text() == "x"
    assert isinstance(info.value, OSError)


def test_folder_that_is_a_file_is_reported(tmp_path):
    blocker = tmp_path / "out"
    blocker.write_text("x")
    with pytest.raises(OutputError, match="not a folder"):
        ensure_writable_folder(blocker)


def test_ensure_writable_folder_leaves_nothing_behind(tmp_path):
    folder = tmp_path / "new"
    assert ensure_writable_folder(str(folder)) == folder
    assert folder.is_dir()
    assert list(folder.iterdir()) == []


def test_unwritable_probe_is_reported(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(outputs.tempfile, "mkstemp", refuse)
    with pytest.raises(OutputError, match="Permission denied"):
        ensure_writable_folder(tmp_path)


def test_read_png_without_parameters_returns_none(tmp_path):
    path = tmp_path / "plain.png"
    _image().save(path)
    assert read_infotext(path) is None


def test_read_png_with_chunk_after_image_data(tmp_path):
    # Some writers put text chunks after IDAT; they must still be found.
    buffer = io.BytesIO()
    _image().save(buffer, format="PNG")
    data = buffer.getvalue()
    text = b"parameters\x00late text"
    chunk = struct.pack(">I", len(text)) + b"tEXt" + text + struct.pack(">I", zlib.crc32(b"tEXt" + text))
    iend = data.rindex(b"IEND") - 4
    path = tmp_path / "late.png"
    path.write_bytes(data[:iend] + chunk + data[iend:])
    assert read_infotext(path) == "late text"


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP"])
def test_read_exif_user_comment(tmp_path, fmt):
    text = "猫, cat\nSteps: 20, Sampler: Euler, Seed: 1"
    exif = Image.Exif()
    exif.get_ifd(outputs.EXIF_IFD_POINTER)[outputs.USER_COMMENT_TAG] = encode_user_comment(text)
    path = tmp_path / f"img.{fmt.lower()}"
    _image().save(path, format=fmt, exif=exif)
    assert read_infotext(path) == text


def test_decode_user_comment_prefixes():
    assert outputs.decode_user_comment(b"UNICODE\x00" + "hé".encode("utf-16-be")) == "hé"
    assert outputs.decode_user_comment(b"ASCII\x00\x00\x00plain") == "plain"
    assert outputs.decode_user_comment(b"\x00" * 8 + "ü".encode()) == "ü"


def test_exif_overrides_png_parameters(tmp_path):
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "from png")
    exif = Image.Exif()
    exif.get_ifd(outputs.EXIF_IFD_POINTER)[outputs.USER_COMMENT_TAG] = encode_user_comment("from exif")
    path = tmp_path / "both.png"
    _image().save(path, pnginfo=info, exif=exif.tobytes())
    assert read_infotext(path) == "from exif"


def test_read_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        read_infotext(tmp_path / "missing.png")
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"definitely not an image")
    with pytest.raises(NotAnImageError, match="not an image"):
        read_infotext(junk)
