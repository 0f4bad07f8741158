"""Init images: reading (with the size checked before decoding), hashing, flattening, resizing."""
import base64
import hashlib
import io
import struct
import subprocess
import sys
import warnings

import numpy as np
import pytest
from PIL import Image, ImageFile

from brushwork import init_image
from brushwork.init_image import (
    MAX_INPUT_PIXELS,
    RESIZE_MODES,
    ImageInputError,
    decode_base64_image,
    flatten,
    image_hash,
    open_image,
    read_image_file,
    resize_image,
    resize_mode_name,
    working_size,
)


def png_bytes(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG", **kw)
    return buf.getvalue()


def halves(size=(200, 100), left=(255, 0, 0), right=(0, 0, 255)) -> Image.Image:
    img = Image.new("RGB", size, right)
    img.paste(left, (0, 0, size[0] // 2, size[1]))
    return img


# --- names -----------------------------------------------------------------


@pytest.mark.parametrize("value, name", [(0, "just resize"), (1, "crop and resize"), (2, "resize and fill"),
                                         (3, "latent upscale"), ("Crop_And_Resize", "crop and resize"),
                                         ("resize-and-fill", "resize and fill"), ("  JUST resize ", "just resize"),
                                         ("2", "resize and fill")])
def test_resize_mode_names(value, name):
    assert resize_mode_name(value) == name


@pytest.mark.parametrize("bad", [4, -1, "stretch", None, True, 1.0])
def test_bad_resize_mode_lists_the_choices(bad):
    with pytest.raises(ImageInputError) as err:
        resize_mode_name(bad)
    msg = str(err.value)
    assert repr(bad) in msg
    for i, name in enumerate(RESIZE_MODES):
        assert f"{i} = {name!r}" in msg


# --- reading ---------------------------------------------------------------


def refuse_decoding(monkeypatch):
    def boom(self, *a, **k):
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", boom)
    monkeypatch.setattr(Image.Image, "load", boom)


@pytest.mark.parametrize("mode, size, fmt", [("1", (12000, 9000), "PNG"), ("L", (8000, 7500), "PNG"),
                                             ("1", (15000, 15000), "PNG"), ("L", (8000, 8000), "GIF")])
def test_a_huge_picture_is_refused_without_decoding(monkeypatch, mode, size, fmt):
    buf = io.BytesIO()
    Image.new(mode, size).save(buf, fmt)
    data = buf.getvalue()
    assert len(data) < 2_000_000  # a tiny file declaring a huge canvas
    refuse_decoding(monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DecompressionBombWarning may come first
        with pytest.raises(ImageInputError) as err:
            open_image(data)
    msg = str(err.value)
    w, h = size
    assert f"{w}x{h}" in msg
    assert f"{w * h / 1e6:.1f} megapixels" in msg
    assert "50 megapixel limit" in msg and "downscale" in msg


def small(fmt: str, **kw) -> bytearray:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (9, 9, 9)).save(buf, fmt, **kw)
    return bytearray(buf.getvalue())


def jpeg_declaring(w: int, h: int) -> bytes:
    data = small("JPEG")
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", h, w)
    return bytes(data)


def webp_lossy_declaring(w: int, h: int) -> bytes:
    data = small("WEBP", quality=50)
    assert data[12:16] == b"VP8 "
    data[26:30] = struct.pack("<HH", w, h)
    return bytes(data)


def webp_lossless_declaring(w: int, h: int) -> bytes:
    data = small("WEBP", lossless=True)
    assert data[12:16] == b"VP8L"
    bits = int.from_bytes(data[21:25], "little") & ~((1 << 28) - 1)
    data[21:25] = (bits | (w - 1) | ((h - 1) << 14)).to_bytes(4, "little")
    return bytes(data)


@pytest.mark.parametrize("make", [jpeg_declaring, webp_lossy_declaring, webp_lossless_declaring])
def test_jpeg_and_webp_headers_are_read_before_decoding(monkeypatch, make):
    assert init_image._header_size(make(16, 16)) == (16, 16)
    assert init_image._header_size(make(16000, 4000)) == (16000, 4000)
    data = make(16000, 4000)
    refuse_decoding(monkeypatch)
    monkeypatch.setattr(Image, "open", lambda *a, **k: pytest.fail("opened by Pillow"))
    with pytest.raises(ImageInputError, match="16000x4000 \\(64.0 megapixels\\)"):
        open_image(data)


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP", "GIF", "BMP"])
def test_small_pictures_of_each_format_decode(fmt):
    buf = io.BytesIO()
    Image.new("RGB", (24, 16), (250, 10, 10)).save(buf, fmt)
    assert init_image._header_size(buf.getvalue()) == (24, 16)
    img = open_image(buf.getvalue())
    assert img.size == (24, 16)
    r, g, b = img.convert("RGB").getpixel((12, 8))
    assert r > 230 and g < 30 and b < 30


def test_the_stage_modules_do_not_import_torch():
    code = "import sys, brushwork.init_image, brushwork.masks, brushwork.outpaint; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_just_under_the_limit_is_accepted():
    w, h = 10000, 5000
    assert w * h == MAX_INPUT_PIXELS
    img = open_image(png_bytes(Image.new("1", (w, h))))
    assert img.size == (w, h)


@pytest.mark.parametrize("data, why", [(b"", "empty"), (b"hello, this is text\n", "unknown file format"),
                                       (b"%PDF-1.4 not a picture", "unknown file format")])
def test_not_a_picture_is_refused(data, why):
    with pytest.raises(ImageInputError) as err:
        open_image(data)
    assert str(err.value).startswith("the init image is not a PNG, JPEG or WebP picture (")
    assert why in str(err.value)


def test_a_truncated_picture_is_refused():
    rng = np.random.default_rng(0)
    data = png_bytes(Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)))
    with pytest.raises(ImageInputError, match="not a PNG, JPEG or WebP picture"):
        open_image(data[: len(data) // 2])


def test_the_name_of_the_input_is_in_the_message():
    with pytest.raises(ImageInputError, match="^the mask is not a PNG"):
        open_image(b"nope", what="mask")


def test_rgba_stays_rgba_and_pixels_are_exact():
    rng = np.random.default_rng(1)
    arr = rng.integers(0, 255, (20, 30, 4), dtype=np.uint8)
    img = open_image(png_bytes(Image.fromarray(arr, "RGBA")))
    assert img.mode == "RGBA" and img.size == (30, 20)
    assert np.array_equal(np.asarray(img), arr)


def test_exif_orientation_is_applied():
    src = halves((20, 10))  # red left, blue right
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    img = open_image(png_bytes(src, exif=exif.tobytes()))
    assert img.size == (10, 20)
    assert img.getpixel((5, 2)) == (255, 0, 0)  # the left half is now on top
    assert img.getpixel((5, 17)) == (0, 0, 255)


def test_an_animated_picture_gives_its_first_frame():
    frames = [Image.new("RGB", (16, 16), (255, 0, 0)), Image.new("RGB", (16, 16), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, "PNG", save_all=True, append_images=frames[1:])
    img = open_image(buf.getvalue())
    assert img.convert("RGB").getpixel((8, 8)) == (255, 0, 0)


def test_base64_and_data_url_decode():
    data = png_bytes(halves((8, 4)))
    raw = base64.b64encode(data).decode()
    for text in (raw, "data:image/png;base64," + raw, raw.rstrip("="), raw[:20] + "\n" + raw[20:]):
        img = decode_base64_image(text)
        assert img.size == (8, 4) and img.getpixel((0, 0)) == (255, 0, 0) and img.getpixel((7, 0)) == (0, 0, 255)


@pytest.mark.parametrize("text, match", [("!!!not base64!!!", "not valid base64"), ("", "is empty"),
                                         ("data:image/png,abcd", "without ';base64'"),
                                         (base64.b64encode(b"plain text").decode(), "not a PNG, JPEG or WebP")])
def test_bad_base64_is_refused(text, match):
    with pytest.raises(ImageInputError, match=match):
        decode_base64_image(text)


def test_overlong_base64_is_refused_before_decoding(monkeypatch):
    monkeypatch.setattr(init_image, "MAX_BASE64_CHARS", 100)
    monkeypatch.setattr(init_image.base64, "b64decode", lambda *a, **k: pytest.fail("decoded"))
    with pytest.raises(ImageInputError) as err:
        decode_base64_image("A" * 5000)
    assert "5000 characters" in str(err.value) and "limit of 100" in str(err.value)


def test_read_image_file(tmp_path):
    (tmp_path / "a.png").write_bytes(png_bytes(halves((6, 2))))
    assert read_image_file(tmp_path / "a.png").getpixel((0, 0)) == (255, 0, 0)
    with pytest.raises(ImageInputError, match="does not exist") as err:
        read_image_file(tmp_path / "missing.png")
    assert "missing.png" in str(err.value)
    with pytest.raises(ImageInputError, match="is a folder"):
        read_image_file(tmp_path)
    (tmp_path / "notes.txt").write_text("just text")
    with pytest.raises(ImageInputError, match="'notes.txt' is not a PNG"):
        read_image_file(tmp_path / "notes.txt")


# --- pixels ----------------------------------------------------------------


def test_image_hash_is_a1111s_form():
    img = halves((10, 10))
    assert image_hash(img) == hashlib.sha256(img.tobytes()).hexdigest()[:8]
    assert len(image_hash(img)) == 8
    assert image_hash(img.convert("RGBA")) == image_hash(img)
    assert image_hash(img) != image_hash(halves((10, 10), left=(254, 0, 0)))


def test_flatten():
    arr = np.zeros((1, 3, 4), np.uint8)
    arr[0, 0] = (255, 0, 0, 0)  # transparent
    arr[0, 1] = (0, 0, 0, 128)  # half black
    arr[0, 2] = (0, 255, 0, 255)  # opaque green
    out = flatten(Image.fromarray(arr, "RGBA"))
    assert out.mode == "RGB"
    px = np.asarray(out).astype(int)
    assert px[0, 0].tolist() == [255, 255, 255]
    assert all(abs(v - 127) <= 1 for v in px[0, 1])
    assert px[0, 2].tolist() == [0, 255, 0]
    assert flatten(Image.fromarray(arr, "RGBA"), background=(0, 0, 0)).getpixel((0, 0)) == (0, 0, 0)
    assert flatten(Image.new("L", (2, 2), 77)).getpixel((1, 1)) == (77, 77, 77)


def test_just_resize_stretches():
    out = resize_image(halves((200, 100)), "just resize", 64, 128)
    assert out.size == (64, 128)
    assert out.getpixel((5, 64)) == (255, 0, 0) and out.getpixel((58, 64)) == (0, 0, 255)


def test_crop_and_resize_keeps_the_centre():
    out = resize_image(halves((200, 100)), "crop and resize", 100, 100)
    assert out.size == (100, 100)
    px = np.asarray(out).astype(int)
    # the centre 100 of 200 columns: red then blue, the split in the middle
    assert (px[:, :45] == (255, 0, 0)).all() and (px[:, 55:] == (0, 0, 255)).all()
    tall = resize_image(halves((100, 200)), 1, 50, 50)  # portrait: crop top and bottom
    assert tall.size == (50, 50)
    assert tall.getpixel((10, 25)) == (255, 0, 0) and tall.getpixel((40, 25)) == (0, 0, 255)


def stripes(size, first, second, horizontal=True):
    w, h = size
    img = Image.new("RGB", size, second)
    img.paste(first, (0, 0, w, h // 2) if horizontal else (0, 0, w // 2, h))
    return img


def test_resize_and_fill_stretches_the_edges():
    img = stripes((200, 100), (0, 200, 0), (250, 250, 0))  # green top, yellow bottom
    out = resize_image(img, "resize and fill", 100, 100)
    px = np.asarray(out).astype(int)
    assert out.size == (100, 100)
    # the picture is 100x50 at rows 25..74; the bands repeat its edge rows exactly
    assert (px[:25] == px[25]).all() and (px[75:] == px[74]).all()
    assert (px[0] == (0, 200, 0)).all() and (px[99] == (250, 250, 0)).all()
    assert px.sum(axis=2).min() > 150  # no black bars anywhere

    side = resize_image(stripes((100, 200), (255, 0, 0), (0, 0, 255), horizontal=False), 2, 100, 100)
    px = np.asarray(side).astype(int)
    assert (px[:, :25] == px[:, 25:26]).all() and (px[:, 75:] == px[:, 74:75]).all()
    assert (px[:, 0] == (255, 0, 0)).all() and (px[:, 99] == (0, 0, 255)).all()


def test_resize_and_fill_same_aspect_is_a_plain_resize():
    img = halves((64, 32))
    assert np.array_equal(np.asarray(resize_image(img, "resize and fill", 128, 64)),
                          np.asarray(resize_image(img, "just resize", 128, 64)))


def test_resize_keeps_alpha():
    out = resize_image(Image.new("RGBA", (40, 20), (10, 20, 30, 100)), "resize and fill", 20, 20)
    assert out.mode == "RGBA" and out.getpixel((10, 0))[3] == 100 and out.getpixel((10, 10))[3] == 100


def test_latent_upscale_is_not_a_pixel_mode():
    with pytest.raises(ValueError, match="latent"):
        resize_image(halves(), "latent upscale", 64, 64)


@pytest.mark.parametrize("args, size", [
    ((512, 768), (512, 768)),
    ((1000, 500, 512), (512, 256)),
    ((1000, 750, None, 512), (680, 512)),  # 682.7 -> 680
    ((1000, 750, 513, 300), (512, 304)),  # both given: rounded to 8
    ((10000, 5000), (4096, 2048)),  # too big: scaled down, aspect kept
    ((100, 20), (320, 64)),  # too small: scaled up, aspect kept
    ((3000, 3000, 8192), (4096, 4096)),
    ((1024, 1024, None, None, 1024, 64), (1024, 1024)),
    ((4000, 2000, None, None, 1024), (1024, 512)),
    ((517, 389), (520, 392)),
])
def test_working_size(args, size):
    w, h = working_size(*args)
    assert (w, h) == size
    assert w % 8 == 0 and h % 8 == 0


@pytest.mark.parametrize("args", [(0, 10), (10, 10, 0), (10, 10, None, -8), (10, 10, 1.5)])
def test_working_size_refuses_bad_sizes(args):
    with pytest.raises(ImageInputError):
        working_size(*args)
