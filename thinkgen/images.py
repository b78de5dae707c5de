"""Image decode policy, shared by the Python API, the CLI and any server.

Every input image goes through :func:`load_image`. The policy (reliability target I2):

1. at most ``MAX_FILE_BYTES`` bytes before Pillow sees them;
2. formats PNG, JPEG, WebP and GIF (first frame) only;
3. pixel and side caps checked from the header, before decoding;
4. decoding is forced (``load()``), so truncated files fail here and not mid-generation;
5. EXIF orientation applied; alpha / palette transparency composited on white; 16-bit scaled;
6. aspect ratio and minimum side checked.
"""
from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from .errors import InvalidImageError

ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP", "GIF")
MAX_FILE_BYTES = 10 * 1024 * 1024
MAX_PIXELS = 40_000_000
MAX_SIDE = 8192
MIN_SIDE = 8
MAX_ASPECT = 200.0
MAX_REFERENCE_IMAGES = 5


def _name(source) -> str:
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    return "<image>"


def _read_bytes(source) -> bytes:
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise InvalidImageError(f"image file {str(path)!r} does not exist or is not a file")
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise InvalidImageError(f"image file {str(path)!r} is {size} bytes; the limit is {MAX_FILE_BYTES}")
        return path.read_bytes()
    if isinstance(source, (bytes, bytearray)):
        if len(source) > MAX_FILE_BYTES:
            raise InvalidImageError(f"image is {len(source)} bytes; the limit is {MAX_FILE_BYTES}")
        return bytes(source)
    raise InvalidImageError(f"unsupported image source of type {type(source).__name__}; pass a path, bytes or a PIL image")


def _check_size(w: int, h: int, name: str) -> None:
    if w <= 0 or h <= 0:
        raise InvalidImageError(f"image {name} has size {w}x{h}: it has no pixels")
    if w * h > MAX_PIXELS or max(w, h) > MAX_SIDE:
        raise InvalidImageError(
            f"image {name} is {w}x{h}; the limits are {MAX_PIXELS} pixels and {MAX_SIDE} px per side: downscale it first"
        )
    if min(w, h) < MIN_SIDE:
        raise InvalidImageError(f"image {name} is {w}x{h}; each side must be at least {MIN_SIDE} px")
    if max(w, h) / min(w, h) > MAX_ASPECT:
        raise InvalidImageError(f"image {name} is {w}x{h}; the aspect ratio must be at most {MAX_ASPECT:g}")


def _to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode == "F":
        raise InvalidImageError("floating-point (mode F) images are not supported; convert to 8-bit RGB")
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        if mode == "I":
            hi = float(arr.max()) if arr.size else 1.0
            arr = arr / max(hi, 1.0) * 255.0
        else:
            arr = arr / 257.0
        img = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L")
        mode = "L"
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    return img.convert("RGB")


def load_image(source) -> Image.Image:
    """Decode ``source`` (path, bytes or PIL image) into an RGB PIL image under the policy above."""
    name = _name(source)
    if isinstance(source, Image.Image):
        _check_size(source.width, source.height, name)
        img = source
    else:
        data = _read_bytes(source)
        if not data:
            raise InvalidImageError(f"image {name} is empty (0 bytes)")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            try:
                img = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
            except Image.DecompressionBombWarning as e:
                raise InvalidImageError(f"image {name} is too large to decode safely: {e}") from None
            except Image.DecompressionBombError as e:
                raise InvalidImageError(f"image {name} is too large to decode safely: {e}") from None
            except Exception:
                raise InvalidImageError(
                    f"image {name} could not be read: unsupported format or not an image; allowed: "
                    + ", ".join(ALLOWED_FORMATS)
                ) from None
            _check_size(img.width, img.height, name)
            if getattr(img, "is_animated", False):
                warnings.warn(f"image {name} is animated; using its first frame", stacklevel=2)
                img.seek(0)
            try:
                img.load()
            except Exception as e:
                raise InvalidImageError(f"image {name} is truncated or corrupt ({e}); re-export it") from None
    img = ImageOps.exif_transpose(img)
    _check_size(img.width, img.height, name)
    return _to_rgb(img)


def save_png_atomic(image: Image.Image, path: str | os.PathLike, text: dict[str, str] | None = None) -> None:
    """Write ``image`` as PNG through a temporary file and a rename (no partial files)."""
    from PIL.PngImagePlugin import PngInfo

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    info = PngInfo()
    for k, v in (text or {}).items():
        info.add_text(k, v)
    try:
        image.save(tmp, format="PNG", pnginfo=info)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
