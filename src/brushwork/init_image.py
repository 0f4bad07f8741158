"""Init images for img2img: read, check, hash, flatten and resize them.

Pure Pillow + numpy (no torch).  The size of an uploaded picture is read from
its header before a single pixel is decoded, so a tiny file that declares a
huge canvas is refused cheaply.  Resizing follows AUTOMATIC1111's resize modes.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import io
import re
import struct
import warnings
from pathlib import Path
from typing import Optional, Union

import numpy as np
from PIL import Image, ImageOps

__all__ = [
    "ImageInputError",
    "MAX_INPUT_PIXELS",
    "MAX_INPUT_BYTES",
    "RESIZE_MODES",
    "resize_mode_name",
    "open_image",
    "decode_base64_image",
    "read_image_file",
    "image_hash",
    "flatten",
    "resize_image",
    "working_size",
]

#: the largest picture accepted (width * height)
MAX_INPUT_PIXELS = 50_000_000
#: the largest file accepted (bytes), also bounds base64 text to 4/3 of this
MAX_INPUT_BYTES = 200 * 1024 * 1024
MAX_BASE64_CHARS = MAX_INPUT_BYTES * 4 // 3 + 4

#: AUTOMATIC1111's resize modes, in the order of its resize_mode numbers 0..3
RESIZE_MODES = ("just resize", "crop and resize", "resize and fill", "latent upscale")

_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")
_NOT_AN_IMAGE = "the {what} is not a PNG, JPEG or WebP picture ({why}); send the picture file itself"


class ImageInputError(ValueError):
    """An input picture (or a setting about it) cannot be used; the message says why and what to do."""


# --- names -----------------------------------------------------------------


def _choice(value, names: tuple[str, ...], what: str, error: type = None) -> str:
    """``value`` as one of ``names``: an index (int) or a name, case- and separator-insensitive."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(names):
        return names[value]
    if isinstance(value, str):
        key = " ".join(value.strip().lower().replace("_", " ").replace("-", " ").split())
        if key.isdigit() and int(key) < len(names):
            return names[int(key)]
        if key in names:
            return key
    valid = ", ".join(f"{i} = {n!r}" for i, n in enumerate(names))
    raise (error or ImageInputError)(f"{what} {value!r} is not known; use one of: {valid}")


def resize_mode_name(value) -> str:
    """The resize mode name for an A1111 number (0..3) or a name such as "crop_and_resize"."""
    return _choice(value, RESIZE_MODES, "resize mode")


# --- reading ---------------------------------------------------------------


def _header_size(data: bytes) -> Optional[tuple[int, int]]:
    """(width, height) declared by a PNG, GIF, BMP, WebP or JPEG header; None if not found."""
    try:
        if data.startswith(b"\x89PNG\r\n\x1a\n") and data[12:16] == b"IHDR":
            return struct.unpack(">II", data[16:24])
        if data[:6] in (b"GIF87a", b"GIF89a"):
            return struct.unpack("<HH", data[6:10])
        if data.startswith(b"BM"):
            if struct.unpack("<I", data[14:18])[0] == 12:  # OS/2 core header: 16-bit sizes
                return struct.unpack("<HH", data[18:22])
            w, h = struct.unpack("<ii", data[18:26])
            return abs(w), abs(h)
        if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
            return _webp_size(data)
        if data.startswith(b"\xff\xd8"):
            return _jpeg_size(data)
    except struct.error:
        return None
    return None


def _webp_size(data: bytes) -> Optional[tuple[int, int]]:
    chunk = data[12:16]
    if chunk == b"VP8X":
        w = int.from_bytes(data[24:27], "little") + 1
        h = int.from_bytes(data[27:30], "little") + 1
        return w, h
    if chunk == b"VP8L" and data[20:21] == b"\x2f":
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":
        w, h = struct.unpack("<HH", data[26:30])
        return w & 0x3FFF, h & 0x3FFF
    return None


def _jpeg_size(data: bytes) -> Optional[tuple[int, int]]:
    pos, end = 2, min(len(data), 1 << 24)
    while pos + 4 <= end:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:
            pos += 1
            continue
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        length = struct.unpack(">H", data[pos + 2 : pos + 4])[0]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            h, w = struct.unpack(">HH", data[pos + 5 : pos + 9])
            return w, h
        if marker == 0xDA:
            return None
        pos += 2 + length
    return None


def _check_pixels(size: tuple[int, int], what: str) -> None:
    w, h = size
    if w * h > MAX_INPUT_PIXELS:
        raise ImageInputError(
            f"the {what} is {w}x{h} ({w * h / 1e6:.1f} megapixels), more than the "
            f"{MAX_INPUT_PIXELS / 1e6:.0f} megapixel limit; downscale it (e.g. to 2048 pixels on the long side) and send it again"
        )


def open_image(data: bytes, what: str = "init image") -> Image.Image:
    """Decode picture bytes into a loaded image (EXIF rotation applied, first frame, mode kept)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ImageInputError(f"the {what} must be the bytes of a picture file, not {type(data).__name__}")
    data = bytes(data)
    if not data:
        raise ImageInputError(_NOT_AN_IMAGE.format(what=what, why="the data is empty"))
    if len(data) > MAX_INPUT_BYTES:
        raise ImageInputError(
            f"the {what} is {len(data) / 2**20:.0f} MB, more than the {MAX_INPUT_BYTES >> 20} MB limit; send a smaller file"
        )
    declared = _header_size(data)
    if declared is not None:  # before Pillow sees it: its own bomb checks never run first
        _check_pixels(declared, what)
    try:
        with warnings.catch_warnings():  # our size message, not Pillow's bomb warning
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data), formats=_FORMATS)
        _check_pixels(im.size, what)  # the authoritative size, still undecoded
        im.load()  # an animation opens on its first frame; only that one is decoded
        out = ImageOps.exif_transpose(im)
        out.load()
    except ImageInputError:
        raise
    except Image.DecompressionBombError as exc:
        match = re.search(r"\((\d+) pixels\)", str(exc))
        pixels = f"{int(match.group(1)) / 1e6:.1f} megapixels" if match else "too many pixels"
        raise ImageInputError(
            f"the {what} has {pixels}, more than the {MAX_INPUT_PIXELS / 1e6:.0f} megapixel limit; downscale it and send it again"
        ) from None
    except Image.UnidentifiedImageError:
        why = f"unknown file format; it starts with {data[:12]!r}"
        raise ImageInputError(_NOT_AN_IMAGE.format(what=what, why=why)) from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError) as exc:
        why = str(exc) or type(exc).__name__
        if "truncated" in why or isinstance(exc, EOFError):
            why = f"the file is truncated or damaged: {why}"
        raise ImageInputError(_NOT_AN_IMAGE.format(what=what, why=why)) from None
    return out


_DATA_URL = re.compile(r"^data:([^,;]*)((?:;[^,;]*)*),", re.IGNORECASE)


def decode_base64_image(text: str, what: str = "init image") -> Image.Image:
    """Decode raw base64 or a ``data:image/...;base64,`` URL into an image."""
    if not isinstance(text, str):
        raise ImageInputError(f"the {what} must be base64 text, not {type(text).__name__}")
    if len(text) > MAX_BASE64_CHARS + 1000:
        raise ImageInputError(
            f"the {what} is {len(text)} characters of base64, more than the limit of {MAX_BASE64_CHARS} "
            f"({MAX_INPUT_BYTES >> 20} MB decoded); send a smaller picture"
        )
    body = text.strip()
    match = _DATA_URL.match(body)
    if match:
        if "base64" not in match.group(2).lower():
            raise ImageInputError(f"the {what} is a data URL without ';base64'; send it as data:image/png;base64,...")
        body = body[match.end() :]
    body = "".join(body.split())
    if not body:
        raise ImageInputError(f"the {what} is empty; send the picture as base64 text")
    body += "=" * (-len(body) % 4)
    try:
        data = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ImageInputError(
            f"the {what} is not valid base64 ({exc}); send the file's bytes base64-encoded, optionally as a data: URL"
        ) from None
    return open_image(data, what)


def read_image_file(path: Union[str, Path], what: str = "init image") -> Image.Image:
    """Read a picture file from disk into an image."""
    p = Path(path).expanduser()
    if not p.exists():
        raise ImageInputError(f"the {what} {str(p)!r} does not exist; check the path")
    if p.is_dir():
        raise ImageInputError(f"the {what} {str(p)!r} is a folder, not a picture file; name the file itself")
    try:
        size = p.stat().st_size
        if size > MAX_INPUT_BYTES:
            raise ImageInputError(
                f"the {what} {str(p)!r} is {size / 2**20:.0f} MB, more than the {MAX_INPUT_BYTES >> 20} MB limit; use a smaller file"
            )
        data = p.read_bytes()
    except OSError as exc:
        raise ImageInputError(f"the {what} {str(p)!r} cannot be read ({exc.strerror or exc}); check its permissions") from None
    return open_image(data, f"{what} {p.name!r}" if what == "init image" else what)


# --- pixels ----------------------------------------------------------------


def image_hash(img: Image.Image) -> str:
    """The first 8 hex digits of sha256 over the RGB pixels (A1111's "Init image hash")."""
    return hashlib.sha256(img.convert("RGB").tobytes()).hexdigest()[:8]


def _has_alpha(img: Image.Image) -> bool:
    return img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info


def flatten(img: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """An RGB copy: transparency composited onto ``background``."""
    if not _has_alpha(img):
        return img.convert("RGB")
    rgba = img.convert("RGBA")
    base = Image.new("RGBA", rgba.size, tuple(background) + (255,))
    return Image.alpha_composite(base, rgba).convert("RGB")


def _scaled(img: Image.Image, width: int, height: int) -> Image.Image:
    return img.resize((max(1, width), max(1, height)), Image.Resampling.LANCZOS)


def resize_image(img: Image.Image, mode: str, width: int, height: int) -> Image.Image:
    """Resize to (width, height) by an A1111 resize mode (Lanczos); "latent upscale" is for latents only."""
    mode = resize_mode_name(mode)
    if width < 1 or height < 1:
        raise ValueError(f"the target size {width}x{height} is not positive; give a width and height of at least 1")
    if mode == "latent upscale":
        raise ValueError("'latent upscale' resizes latents, not pixels; resize the latents in the engine instead")
    if img.mode not in ("RGB", "RGBA", "L", "LA"):
        img = img.convert("RGBA" if _has_alpha(img) else "RGB")
    if mode == "just resize":
        return _scaled(img, width, height)
    iw, ih = img.size
    target, source = width / height, iw / ih
    if mode == "crop and resize":  # cover the box, then centre-crop
        sw = width if target > source else iw * height // ih
        sh = height if target <= source else ih * width // iw
        left, top = sw // 2 - width // 2, sh // 2 - height // 2
        return _scaled(img, sw, sh).crop((left, top, left + width, top + height))
    # resize and fill: fit inside, centre, stretch the edge rows/columns into the bands
    sw = width if target < source else iw * height // ih
    sh = height if target >= source else ih * width // iw
    sw, sh = max(1, min(sw, width)), max(1, min(sh, height))
    arr = np.asarray(_scaled(img, sw, sh))
    left, top = width // 2 - sw // 2, height // 2 - sh // 2
    pad = [(top, height - sh - top), (left, width - sw - left)] + [(0, 0)] * (arr.ndim - 2)
    return Image.fromarray(np.pad(arr, pad, mode="edge"), img.mode)


def _round8(value: float) -> int:
    return max(8, int(value / 8 + 0.5) * 8)


def working_size(
    image_w: int,
    image_h: int,
    width: Optional[int] = None,
    height: Optional[int] = None,
    max_side: int = 4096,
    min_side: int = 64,
) -> tuple[int, int]:
    """The generation size for an init image: given sides kept, missing ones from its aspect ratio,
    rounded to multiples of 8 and clamped to [min_side, max_side]."""
    if image_w < 1 or image_h < 1:
        raise ImageInputError(f"the image size {image_w}x{image_h} is not positive; send a real picture")
    for name, v in (("width", width), ("height", height)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ImageInputError(f"{name}={v!r} is not a positive whole number; give e.g. 512 or leave it out")
    if width is not None and height is not None:
        w, h = float(width), float(height)
    elif width is not None:
        w, h = float(width), width * image_h / image_w
    elif height is not None:
        w, h = height * image_w / image_h, float(height)
    else:
        w, h = float(image_w), float(image_h)
    if max(w, h) > max_side:  # clamp keeping the aspect ratio
        s = max_side / max(w, h)
        w, h = w * s, h * s
    if min(w, h) < min_side:
        s = min_side / min(w, h)
        w, h = w * s, h * s
    w, h = _round8(w), _round8(h)
    return min(max(w, min_side), max_side), min(max(h, min_side), max_side)
