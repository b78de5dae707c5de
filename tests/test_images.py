"""Image decode policy (reliability I1/I2 rows for images)."""
import io
import warnings

import numpy as np
import pytest
from PIL import Image

from thinkgen.errors import InvalidImageError
from thinkgen.images import load_image, save_png_atomic


def _png_bytes(img: Image.Image, fmt="PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_plain_rgb_roundtrip(tmp_path):
    img = Image.new("RGB", (32, 24), (10, 20, 30))
    p = tmp_path / "a.png"
    img.save(p)
    out = load_image(p)
    assert out.mode == "RGB" and out.size == (32, 24)
    assert out.getpixel((0, 0)) == (10, 20, 30)


@pytest.mark.parametrize(
    "data, match",
    [
        (b"", "empty"),
        (b"\x00\x01garbage" * 10, "could not be read"),
        (b"hello, I am text pretending to be a png", "could not be read"),
        (b'<svg xmlns="http://www.w3.org/2000/svg"></svg>', "could not be read"),
    ],
)
def test_bad_bytes(data, match):
    with pytest.raises(InvalidImageError, match=match):
        load_image(data)


def test_unsupported_formats_refused():
    img = Image.new("RGB", (16, 16))
    for fmt in ("BMP", "TIFF", "ICO"):
        with pytest.raises(InvalidImageError, match="allowed"):
            load_image(_png_bytes(img, fmt))


def test_truncated_png_and_jpeg():
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    for fmt in ("PNG", "JPEG"):
        data = _png_bytes(img, fmt)
        with pytest.raises(InvalidImageError, match="truncated|could not be read"):
            load_image(data[: len(data) // 2])


def test_missing_file(tmp_path):
    with pytest.raises(InvalidImageError, match="does not exist"):
        load_image(tmp_path / "nope.png")


def test_size_limits():
    with pytest.raises(InvalidImageError, match="at least"):
        load_image(_png_bytes(Image.new("RGB", (4, 64))))
    with pytest.raises(InvalidImageError, match="aspect"):
        load_image(Image.new("RGB", (8, 1700)))
    # a gigantic image is refused from its header, before decoding
    big = Image.new("1", (9000, 9000))
    with pytest.raises(InvalidImageError, match="limits"):
        load_image(_png_bytes(big))


def test_zero_pixel_pil_image():
    with pytest.raises(InvalidImageError, match="no pixels"):
        load_image(Image.new("RGB", (0, 0)))


def test_alpha_composited_on_white():
    img = Image.new("RGBA", (16, 16), (255, 0, 0, 0))
    out = load_image(_png_bytes(img))
    assert out.getpixel((3, 3)) == (255, 255, 255)


def test_16bit_scaled_not_clipped():
    arr = np.full((16, 16), 40000, dtype=np.uint16)
    img = Image.new("I;16", (16, 16))
    img.frombytes(arr.astype("<u2").tobytes())
    out = load_image(_png_bytes(img))
    assert abs(out.getpixel((0, 0))[0] - 156) <= 1


def test_exif_orientation_applied():
    img = Image.new("RGB", (40, 20), (0, 255, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90
    out = load_image(_png_bytes(img, "JPEG", exif=exif.tobytes()))
    assert out.size == (20, 40)


def test_animated_gif_first_frame_with_warning():
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        out = load_image(buf.getvalue())
    assert any("animated" in str(x.message) for x in w)
    r, g, b = out.getpixel((0, 0))
    assert r > 200 and b < 50


def test_cmyk_and_grey_converted():
    assert load_image(_png_bytes(Image.new("L", (16, 16), 128))).getpixel((0, 0)) == (128, 128, 128)
    assert load_image(_png_bytes(Image.new("CMYK", (16, 16), (0, 0, 0, 0)), "JPEG")).mode == "RGB"


def test_save_png_atomic_leaves_no_tmp(tmp_path):
    img = Image.new("RGB", (8, 8))
    save_png_atomic(img, tmp_path / "x.png", text={"k": "v"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.png"]
    assert Image.open(tmp_path / "x.png").text["k"] == "v"
