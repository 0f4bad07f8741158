"""Saving generated images and reading their infotext back.

Outputs are the user's work, so the rules here are strict: a save never
overwrites an existing file (exclusive creation, retrying the next number),
and a folder that cannot be written is reported before any compute is spent.
File names follow A1111's ``NNNNN-SEED.png`` so existing habits and scripts
keep working.  Torch-free; uses Pillow only.
"""

from __future__ import annotations

import io
import os
import re
import tempfile
from pathlib import Path

from PIL import Image, PngImagePlugin, UnidentifiedImageError

__all__ = [
    "OutputError",
    "NotAnImageError",
    "ensure_writable_folder",
    "next_counter",
    "save_png",
    "read_infotext",
    "decode_user_comment",
    "encode_user_comment",
]

PARAMETERS_KEY = "parameters"
EXIF_IFD_POINTER = 0x8769
USER_COMMENT_TAG = 0x9286
_UNICODE_PREFIX = b"UNICODE\x00"
_ASCII_PREFIX = b"ASCII\x00\x00\x00"
_COUNTER_RE = re.compile(r"^(\d+)(?=[-.]|$)")
_PNG_MODES = frozenset({"1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"})
_MAX_SAVE_ATTEMPTS = 10_000


class OutputError(OSError):
    """The output folder cannot be created or written."""


class NotAnImageError(ValueError):
    """A file given to :func:`read_infotext` is not a readable image."""


def _folder_error(folder: Path, reason: str) -> OutputError:
    """Build the one message every folder problem uses, with the remedy."""
    return OutputError(
        f"cannot write images to '{folder}': {reason}. "
        "Pick a folder you can write to with --out PATH."
    )


def _make_folder(folder: Path) -> Path:
    """Create ``folder`` (and parents) or explain why that is impossible."""
    folder = Path(folder).expanduser()
    if folder.exists() and not folder.is_dir():
        raise _folder_error(folder, "it exists but is not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _folder_error(folder, f"the folder cannot be created ({exc.strerror or exc})") from exc
    return folder


def ensure_writable_folder(folder: Path | str) -> Path:
    """Make sure images can be saved in ``folder``; return it as a Path.

    Meant for the CLI to call before generation starts, so a typo in
    ``--out`` fails in milliseconds rather than after minutes of sampling.
    Permission bits are not trusted (root, ACLs, read-only mounts all lie),
    so we really create and delete a probe file; nothing is left behind
    except the folder itself, which a later save needs anyway.
    """
    folder = _make_folder(Path(folder))
    try:
        handle, probe = tempfile.mkstemp(prefix=".brushwork-probe-", dir=folder)
    except OSError as exc:
        raise _folder_error(folder, f"files cannot be created there ({exc.strerror or exc})") from exc
    os.close(handle)
    os.unlink(probe)
    return folder


def next_counter(folder: Path) -> int:
    """One more than the highest ``NNNNN`` name prefix in ``folder`` (0 if none).

    Like A1111, any entry whose name starts with digits followed by ``-`` or
    ``.`` counts, so numbering continues after images from other tools too.
    """
    highest = -1
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return 0
    for name in names:
        match = _COUNTER_RE.match(name)
        if match:
            highest = max(highest, int(match.group(1)))
    return highest + 1


def _png_bytes(image: Image.Image, infotext: str) -> bytes:
    """Encode ``image`` as PNG with the infotext in a ``parameters`` chunk.

    Encoding happens in memory first so that a bad image never leaves a
    half-written file, and so that encoder errors are not mistaken for
    folder problems.  Latin-1 text goes into tEXt (what A1111 and most
    readers expect); anything else needs iTXt, which is UTF-8.
    """
    info = PngImagePlugin.PngInfo()
    try:
        infotext.encode("latin-1")
    except UnicodeEncodeError:
        info.add_itxt(PARAMETERS_KEY, infotext)
    else:
        info.add_text(PARAMETERS_KEY, infotext)
    if image.mode not in _PNG_MODES:
        image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def _write_new_file(path: Path, data: bytes) -> bool:
    """Write ``data`` to ``path`` only if it does not exist yet.

    Returns False when the name is taken (another process won the race).
    A file we created but could not finish is removed: it is ours and
    incomplete, so keeping it would only leave a broken image.
    """
    try:
        handle = open(path, "xb")
    except FileExistsError:
        return False
    try:
        with handle:
            handle.write(data)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return True


def save_png(image: Image.Image, folder: Path | str, seed: int, infotext: str) -> Path:
    """Save ``image`` as ``NNNNN-SEED.png`` in ``folder`` and return its path.

    The counter starts one above the highest existing prefix; if another
    writer grabs that name first, the next number is tried.  Existing files
    are never opened for writing.
    """
    data = _png_bytes(image, infotext)
    folder = _make_folder(Path(folder))
    counter = next_counter(folder)
    for _ in range(_MAX_SAVE_ATTEMPTS):
        path = folder / f"{counter:05d}-{seed}.png"
        try:
            if _write_new_file(path, data):
                return path
        except OSError as exc:
            raise _folder_error(folder, f"writing {path.name} failed ({exc.strerror or exc})") from exc
        counter += 1
    raise _folder_error(folder, f"no free file name found after {_MAX_SAVE_ATTEMPTS} tries")


def save_input(image: Image.Image, folder: Path | str, short_hash: str) -> Path:
    """Keep a picture a refine starts from as ``HASH.png`` in ``folder`` (HOME/inputs),
    so its results can be re-created.  The same pixels are stored once; a different
    picture with the same short hash gets ``HASH-2.png`` and so on (never overwritten)."""
    folder = _make_folder(Path(folder))
    data = _png_bytes(image, "")
    for n in range(1, _MAX_SAVE_ATTEMPTS + 1):
        path = folder / (f"{short_hash}.png" if n == 1 else f"{short_hash}-{n}.png")
        try:
            if _write_new_file(path, data):
                return path
            with Image.open(path) as old:
                if old.mode == image.mode and old.size == image.size and old.tobytes() == image.tobytes():
                    return path
        except OSError as exc:
            raise _folder_error(folder, f"writing {path.name} failed ({exc.strerror or exc})") from exc
    raise _folder_error(folder, f"no free file name found after {_MAX_SAVE_ATTEMPTS} tries")


def find_input(folder: Path | str, short_hash: str) -> list[Path]:
    """The stored inputs whose short hash is ``short_hash`` (usually one)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob(f"{short_hash}*.png") if p.stem == short_hash or p.stem.startswith(short_hash + "-"))


# --------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------


def encode_user_comment(text: str) -> bytes:
    """EXIF UserComment bytes as A1111 writes them: ``UNICODE\\0`` + UTF-16-BE."""
    return _UNICODE_PREFIX + text.encode("utf-16-be")


def decode_user_comment(raw: bytes | str) -> str:
    """Decode an EXIF UserComment, honouring its 8-byte character-code prefix.

    The UNICODE prefix means UTF-16 big-endian in A1111's files (a BOM, if
    present, wins).  Unknown or undefined prefixes are read as UTF-8 with
    replacement, which is what other writers usually mean.
    """
    if isinstance(raw, str):
        return raw.rstrip("\x00")
    prefix, body = raw[:8], raw[8:]
    if prefix == _UNICODE_PREFIX:
        if body[:2] in (b"\xff\xfe", b"\xfe\xff"):
            text = body.decode("utf-16", errors="replace")
        else:
            text = body.decode("utf-16-be", errors="replace")
    elif prefix == _ASCII_PREFIX:
        text = body.decode("ascii", errors="replace")
    elif len(raw) >= 8 and prefix.strip(b"\x00") in (b"", b"JIS"):
        text = body.decode("utf-8", errors="replace")
    else:
        text = raw.decode("utf-8", errors="replace")
    return text.rstrip("\x00")


def _exif_comment(image: Image.Image) -> str | None:
    """The EXIF UserComment as text, or None when there is none."""
    try:
        exif = image.getexif()
        raw = exif.get_ifd(EXIF_IFD_POINTER).get(USER_COMMENT_TAG)
    except Exception:  # Damaged EXIF must not hide the PNG text.
        return None
    if not raw:
        return None
    return decode_user_comment(raw) or None


def _png_parameters(image: Image.Image) -> str | None:
    """The ``parameters`` text chunk, including chunks placed after the pixels."""
    value = image.info.get(PARAMETERS_KEY)
    if value is None and isinstance(image, PngImagePlugin.PngImageFile):
        value = image.text.get(PARAMETERS_KEY)
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    return str(value) if value is not None else None


def read_infotext(path: Path | str) -> str | None:
    """Return the generation parameters stored in an image, or None.

    Follows A1111's reading order: the PNG ``parameters`` chunk, overridden
    by an EXIF UserComment (JPEG/WEBP), else a GIF ``comment``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"cannot read parameters from '{path}': no such file")
    try:
        with Image.open(path) as image:
            text = _png_parameters(image)
            comment = _exif_comment(image)
            gif_comment = image.info.get("comment")
    except UnidentifiedImageError as exc:
        raise NotAnImageError(
            f"cannot read parameters from '{path}': it is not an image Pillow can open "
            "(expected PNG, JPEG, WEBP or GIF)"
        ) from exc
    if comment:
        return comment
    if text is None and gif_comment:
        if isinstance(gif_comment, bytes):
            return gif_comment.decode("utf-8", errors="replace")
        return str(gif_comment)
    return text
