"""The text an image carries, read without decoding a single pixel.

png-info only needs the ``parameters`` text, so it must not pay for the
pixels: a 900 KB PNG can declare 13000x13000 pixels (half a gigabyte once
decoded).  This module walks the container instead:

* PNG: the chunk list.  IDAT is stepped over without being decompressed;
  tEXt, zTXt and iTXt anywhere in the file (after IDAT too) are read, and the
  compressed ones are inflated with a hard cap on their output, so a
  compressed "text bomb" costs at most :data:`MAX_TEXT_BYTES`.
* JPEG: the marker segments up to the start of the scan, for the EXIF block.
* WebP: the RIFF chunks, for the EXIF chunk.  (Pillow's WebP reader sets up a
  decoder for the whole canvas as soon as the file is opened.)

EXIF blocks are handed to Pillow's EXIF parser, which reads tags only.
Torch-free and Pillow-light: nothing here decodes an image.
"""
from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field
from typing import Iterator, Optional

from PIL import Image

from .outputs import decode_user_comment

__all__ = ["ImageMetaError", "ImageText", "MAX_TEXT_BYTES", "MAX_TEXT_TOTAL", "read_image_text"]

#: the most text one chunk may hold (after decompression)
MAX_TEXT_BYTES = 1 << 20
#: the most text all chunks of one image may hold together
MAX_TEXT_TOTAL = 4 << 20
#: the largest EXIF block we hand to the EXIF parser
MAX_EXIF_BYTES = 1 << 20

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PARAMETERS_KEY = "parameters"
_EXIF_IFD, _USER_COMMENT = 0x8769, 0x9286
_MiB = 1 << 20


class ImageMetaError(ValueError):
    """The bytes are not an image we can read text from; the message says why."""


@dataclass(frozen=True)
class ImageText:
    """What :func:`read_image_text` found."""

    format: str  # "PNG", "JPEG" or "WEBP"
    parameters: str = ""  # the infotext ("" when there is none)
    items: dict[str, str] = field(default_factory=dict)  # the other text chunks (PNG)
    skipped: list[str] = field(default_factory=list)  # text chunks left out, and why


def read_image_text(raw: bytes) -> ImageText:
    """The infotext and other text of a PNG, JPEG or WebP file, pixels untouched."""
    if raw.startswith(PNG_SIGNATURE):
        return _png_text(raw)
    if raw[:3] == b"\xff\xd8\xff":
        return _with_exif("JPEG", _jpeg_exif(raw))
    if raw[:4] == b"RIFF" and raw[8:12] == b"WEBP":
        return _with_exif("WEBP", _webp_exif(raw))
    raise ImageMetaError(f"not a PNG, JPEG or WebP file (it starts with {raw[:8]!r})")


# ---------------------------------------------------------------- PNG


def _png_chunks(raw: bytes) -> Iterator[tuple[bytes, int, int]]:
    """``(type, start, length)`` of each chunk up to IEND; data is not touched."""
    pos = len(PNG_SIGNATURE)
    first = True
    while pos < len(raw):
        if pos + 8 > len(raw):
            raise ImageMetaError(f"the PNG is cut off at byte {pos}, inside a chunk header")
        length, kind = struct.unpack_from(">I4s", raw, pos)
        start = pos + 8
        if length > 0x7FFFFFFF or start + length + 4 > len(raw):
            raise ImageMetaError(f"the PNG is cut off: chunk {kind!r} at byte {pos} needs {length} bytes, the file ends before that")
        if first and kind != b"IHDR":
            raise ImageMetaError(f"not a valid PNG: the first chunk is {kind!r}, not IHDR")
        first = False
        yield kind, start, length
        if kind == b"IEND":
            return
        pos = start + length + 4
    raise ImageMetaError(f"the PNG is cut off at byte {pos}: it ends without its IEND chunk")


def _chunk_data(raw: bytes, kind: bytes, start: int, length: int) -> bytes:
    """A chunk's data, its CRC checked (a damaged chunk is not silently believed)."""
    data = raw[start:start + length]
    (crc,) = struct.unpack_from(">I", raw, start + length)
    if zlib.crc32(data, zlib.crc32(kind)) & 0xFFFFFFFF != crc:
        raise ImageMetaError(f"the PNG's {kind.decode('latin-1')} chunk at byte {start - 8} is damaged (CRC mismatch)")
    return data


def _inflate(data: bytes, limit: int) -> Optional[bytes]:
    """zlib-decompress at most ``limit`` bytes; None when there would be more."""
    inflater = zlib.decompressobj()
    out = inflater.decompress(data, limit + 1)
    return None if len(out) > limit else out


def _text_chunk(kind: bytes, data: bytes) -> tuple[str, Optional[str]]:
    """``(key, text)`` of a tEXt/zTXt/iTXt chunk; text None when it is over the cap.
    Raises zlib.error / ValueError for a malformed chunk."""
    key, sep, rest = data.partition(b"\0")
    if not sep or not key:
        raise ValueError("no keyword")
    name = key.decode("latin-1")
    if kind == b"tEXt":
        return name, rest.decode("latin-1") if len(rest) <= MAX_TEXT_BYTES else None
    if kind == b"zTXt":
        if rest[:1] != b"\0":
            raise ValueError("unknown compression method")
        body = _inflate(rest[1:], MAX_TEXT_BYTES)
        return name, None if body is None else body.decode("latin-1")
    if len(rest) < 2:
        raise ValueError("iTXt chunk too short")
    compressed, method, rest = rest[0], rest[1], rest[2:]
    _lang, _, rest = rest.partition(b"\0")
    _translated, _, body = rest.partition(b"\0")
    if compressed:
        if method != 0:
            raise ValueError("unknown compression method")
        body = _inflate(body, MAX_TEXT_BYTES)
    elif len(body) > MAX_TEXT_BYTES:
        body = None
    return name, None if body is None else body.decode("utf-8", errors="replace")


def _png_text(raw: bytes) -> ImageText:
    texts: dict[str, str] = {}
    skipped: list[str] = []
    exif = b""
    total = 0
    for kind, start, length in _png_chunks(raw):
        if kind == b"eXIf" and not exif and length <= MAX_EXIF_BYTES:
            exif = _chunk_data(raw, kind, start, length)
        if kind not in (b"tEXt", b"zTXt", b"iTXt"):
            continue
        data = _chunk_data(raw, kind, start, length)
        try:
            key, text = _text_chunk(kind, data)
        except (ValueError, zlib.error) as exc:
            skipped.append(f"a {kind.decode()} chunk at byte {start - 8} is malformed ({exc})")
            continue
        if text is None:
            if key == PARAMETERS_KEY:
                raise ImageMetaError(f"the image's {key!r} text is longer than {MAX_TEXT_BYTES // _MiB} MiB; no real infotext is that long")
            skipped.append(f"text {key!r} is longer than {MAX_TEXT_BYTES // _MiB} MiB")
            continue
        total += len(text)
        if total > MAX_TEXT_TOTAL:
            raise ImageMetaError(f"the image holds more than {MAX_TEXT_TOTAL // _MiB} MiB of text; no generated image carries that much")
        texts[key] = text
    parameters = texts.pop(PARAMETERS_KEY, "") or _exif_comment(exif)
    return ImageText("PNG", parameters, texts, skipped)


# ---------------------------------------------------------------- JPEG, WebP


def _jpeg_exif(raw: bytes) -> bytes:
    """The first APP1 ``Exif`` segment's data (b"" when none), read up to the scan."""
    pos = 2
    while pos + 4 <= len(raw):
        if raw[pos] != 0xFF:
            raise ImageMetaError(f"not a valid JPEG: expected a marker at byte {pos}")
        marker = raw[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # no length
            pos += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image, start of scan: no metadata after
            return b""
        (length,) = struct.unpack_from(">H", raw, pos + 2)
        if length < 2 or pos + 2 + length > len(raw):
            raise ImageMetaError(f"the JPEG is cut off or damaged at byte {pos}")
        data = raw[pos + 4:pos + 2 + length]
        if marker == 0xE1 and data.startswith(b"Exif\0\0"):
            return data
        pos += 2 + length
    raise ImageMetaError(f"the JPEG is cut off at byte {pos}, before its image data")


def _webp_exif(raw: bytes) -> bytes:
    """The EXIF chunk's data of a WebP (RIFF) file, b"" when none."""
    pos = 12
    while pos + 8 <= len(raw):
        kind, length = struct.unpack_from("<4sI", raw, pos)
        if pos + 8 + length > len(raw):
            raise ImageMetaError(f"the WebP is cut off: chunk {kind!r} at byte {pos} needs {length} bytes")
        if kind == b"EXIF":
            return raw[pos + 8:pos + 8 + length]
        pos += 8 + length + (length & 1)
    return b""


def _with_exif(fmt: str, exif: bytes) -> ImageText:
    if len(exif) > MAX_EXIF_BYTES:
        return ImageText(fmt, skipped=[f"the EXIF block is larger than {MAX_EXIF_BYTES // _MiB} MiB"])
    return ImageText(fmt, _exif_comment(exif))


def _exif_comment(exif: bytes) -> str:
    """EXIF UserComment as text ("" when absent or unreadable: damaged EXIF must not
    hide the rest)."""
    if not exif:
        return ""
    try:
        tags = Image.Exif()
        tags.load(exif)
        raw = tags.get_ifd(_EXIF_IFD).get(_USER_COMMENT)
    except Exception:  # noqa: BLE001 - EXIF from the wild is often broken
        return ""
    return decode_user_comment(raw) if raw else ""
