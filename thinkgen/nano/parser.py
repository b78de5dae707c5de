"""Exact scene parser for the nano world: image -> Scene (objects with kind, colour, size, box; sign text).

Method (numpy only, about 5-15 ms per 64x64 image on one CPU core):

1. Colour classes: per pixel chroma C = max(RGB) - min(RGB) and hue. Mixing a colour with white (a blurred edge) or
   with black scales C but keeps the hue, so every pixel gets the nearest palette hue as its class. Its coverage
   ``a`` of that colour = projection of (white - pixel) on (white - palette colour); this also uses luminance, which
   JPEG keeps at full resolution while it halves the chroma resolution.
2. Objects: 4-connected components of same-class pixels with C > max(30, noise floor + 20, 0.35 * the palette
   colour's chroma) and a > 0.5 (the 50 % level splits neighbours 3 px apart even after blur). Components whose soft
   mass (sum of the clipped coverage over the component dilated by 2 px) is below ``MIN_MASS`` are noise.
3. Kind: analysis by synthesis. For every kind the side follows from the mass (s = sqrt(m / area_fraction)) and the
   box centre from the centroid; the kind's 4x4-supersampled coverage, sharp and Gaussian-blurred (sigma 1), is
   compared with the soft mask; the lowest squared error wins. Size class: fitted side < 15 px -> small.
4. Colour of an object: chroma-weighted circular mean hue of its core, nearest palette hue.
5. Text: the sign box is the longest run of rows with > 24 light-grey pixels; inside it, ink = darkness relative to the
   sign's paper level; for 1-4 letters and +-1 px shifts around the ink's bounding box every 10x14 cell is matched
   against the 2x-scaled glyphs (sharp and blurred with sigma 1 and 1.5); the reading with the least total squared
   error (unexplained ink included) wins. No sign box -> no text.

Measured (2,000 random scenes, jitter, 30 % with signs): clean 100 % of scenes exact; blur 1 + noise 10 + JPEG 75
99.95 %; blur 1 + noise 15 + JPEG 60 99.45 %; blur 1.5 + noise 10 + JPEG 75 97.35 % (small diamonds / stars read as
circles). Text 100 % in all four.
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from PIL import Image

from thinkgen.errors import InvalidImageError
from thinkgen.nano.world import (
    CANVAS, COLOURS, GLYPH_ADVANCE, GLYPH_H, GLYPH_SCALE, GLYPH_W, KINDS, LETTERS, MAX_TEXT,
    SHAPE_STATS, SIZE_SPLIT_PX, Obj, Scene, glyph, shape_inside)

BG_CHROMA = 45.0          # pixels below this chroma count as background for the noise-floor estimate
SEED_COVER = 0.5          # seed pixels cover at least half a pixel with their colour
SEED_CHROMA_MIN = 30.0    # ... and have at least this chroma (0-255)
SEED_CHROMA_FRAC = 0.35   # ... and at least this fraction of their palette colour's chroma
SOFT_RENORM = 0.8         # renormalise coverage when an object's core covers less (lighter drawn colour)
SOFT_CLIP = 1.5           # upper clip of the coverage (darker drawn colour)
MIN_MASS = 25.0           # soft-mask mass (px) below which a component is noise (a small star is ~55 px)
TEXT_CHROMA_MAX = 60.0    # pixels more colourful than this are never text ink
SIGN_LIGHT_MAX = 243.0    # the sign box is 225 grey, the background 255 white
SIGN_MIN_RUN = 24         # a sign row has more light-grey pixels than this
_SUPER = 4                # supersampling of the shape templates
_BLURS = (0.0, 1.0)       # template blurs tried per object


def _hue(arr: np.ndarray) -> np.ndarray:
    r, g, b = arr[..., 0], arr[..., 1], arr[..., 2]
    return np.degrees(np.arctan2(math.sqrt(3) * (g - b), 2 * r - g - b)) % 360.0


PALETTE_HUE = {name: float(_hue(np.array(rgb, dtype=np.float64))) for name, rgb in COLOURS.items()}
_PAL_NAMES = list(PALETTE_HUE)
_PAL_VEC = np.array([[math.cos(math.radians(h)), math.sin(math.radians(h))] for h in PALETTE_HUE.values()])
_PAL_D = np.array([[255.0 - c for c in COLOURS[n]] for n in _PAL_NAMES])
_PAL_INK = _PAL_D / (_PAL_D * _PAL_D).sum(1, keepdims=True)  # ink @ _PAL_INK.T = coverage of each palette colour
_PAL_CHROMA = np.array([max(COLOURS[n]) - min(COLOURS[n]) for n in _PAL_NAMES], dtype=np.float64)


def to_array(image) -> np.ndarray:
    """PIL image or HxWx3 array (uint8 0-255, or float 0-1 / 0-255) -> float64 64x64x3 in 0-255."""
    if isinstance(image, Image.Image):
        img = image.convert("RGB")
        if img.size != (CANVAS, CANVAS):
            img = img.resize((CANVAS, CANVAS), Image.BOX if img.width > CANVAS else Image.BILINEAR)
        return np.asarray(img, dtype=np.float64)
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3):
        arr = np.moveaxis(arr, 0, -1)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, -1)
    if arr.ndim != 3 or arr.shape[-1] not in (1, 3):
        raise InvalidImageError(f"expected an HxWx3 image array, got shape {arr.shape}")
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, -1)
    is_float = arr.dtype.kind == "f"
    arr = arr.astype(np.float64)
    if is_float and arr.max(initial=0) <= 1.0 + 1e-6:
        arr = arr * 255.0
    if arr.shape[:2] != (CANVAS, CANVAS):
        return to_array(Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB"))
    return arr


def _label(mask: np.ndarray, cls: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """4-connected components of ``mask`` (neighbours must also share ``cls`` when given), by min-label propagation
    with pointer jumping. Returns (labels with 0 = none, count)."""
    h, w = mask.shape
    big = h * w + 1
    if cls is None:
        cls = np.zeros(mask.shape, dtype=np.int64)
    cp = np.pad(cls, 1, constant_values=-1)
    same = [cp[:-2, 1:-1] == cls, cp[2:, 1:-1] == cls, cp[1:-1, :-2] == cls, cp[1:-1, 2:] == cls]
    lab = np.where(mask, np.arange(1, h * w + 1).reshape(h, w), big)
    while True:
        p = np.pad(lab, 1, constant_values=big)
        nbs = [p[:-2, 1:-1], p[2:, 1:-1], p[1:-1, :-2], p[1:-1, 2:]]
        nb = lab
        for q, ok in zip(nbs, same):
            nb = np.minimum(nb, np.where(ok, q, big))
        flat = np.where(mask, nb, big).ravel()
        idx = np.where(flat < big, flat - 1, 0)
        jumped = np.where(mask.ravel(), np.minimum(flat, flat[idx]), big).reshape(h, w)
        if np.array_equal(jumped, lab):
            break
        lab = jumped
    lab = np.where(mask, lab, 0)
    uniq = np.unique(lab[lab > 0])
    remap = np.zeros(h * w + 2, dtype=np.int64)
    remap[uniq] = np.arange(1, len(uniq) + 1)
    return remap[lab], len(uniq)


def _gauss_kernel(sigma: float) -> np.ndarray:
    r = max(1, int(math.ceil(3 * sigma)))
    x = np.arange(-r, r + 1)
    k = np.exp(-x * x / (2 * sigma * sigma))
    return k / k.sum()


@lru_cache(maxsize=512)
def _blur_matrix(n: int, sigma: float) -> np.ndarray:
    """n x n matrix of a truncated Gaussian filter with zero padding (rows: output pixel)."""
    k = _gauss_kernel(sigma)
    r = len(k) // 2
    m = np.zeros((n, n))
    for i in range(n):
        for j in range(max(0, i - r), min(n, i + r + 1)):
            m[i, j] = k[j - i + r]
    return m


def _blur(a: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of a 2-D array (zero padding)."""
    if sigma <= 0:
        return a
    return _blur_matrix(a.shape[0], sigma) @ a @ _blur_matrix(a.shape[1], sigma).T


_OFFS = (np.arange(_SUPER) + 0.5) / _SUPER


def coverage(kind: str, cx: float, cy: float, s: float, x0: int, y0: int, w: int, h: int) -> np.ndarray:
    """Fraction of each pixel of the window [x0, x0+w) x [y0, y0+h) covered by the shape (4x4 supersampling)."""
    xs = (np.arange(x0, x0 + w)[:, None] + _OFFS[None, :]).ravel()
    ys = (np.arange(y0, y0 + h)[:, None] + _OFFS[None, :]).ravel()
    u = (xs[None, :] - cx) / (s / 2)
    v = (ys[:, None] - cy) / (s / 2)
    m = shape_inside(kind, u, v).astype(np.float64)
    return m.reshape(h, _SUPER, w, _SUPER).mean(axis=(1, 3))


def _nearest_colour(hues: np.ndarray, weights: np.ndarray) -> str:
    rad = np.radians(hues)
    vec = np.array([(weights * np.cos(rad)).sum(), (weights * np.sin(rad)).sum()])
    return _PAL_NAMES[int(np.argmax(_PAL_VEC @ vec))]


def _fit_errors(soft: np.ndarray, valid: np.ndarray, x0: int, y0: int):
    """For one component's soft mask: per kind the fitted (cx, cy, s) and the errors for every template blur."""
    h, w = soft.shape
    m = float(soft.sum())
    yy, xx = np.mgrid[0:h, 0:w]
    mx = float((soft * (xx + 0.5)).sum() / m) + x0
    my = float((soft * (yy + 0.5)).sum() / m) + y0
    fits, errs = [], np.zeros((len(KINDS), len(_BLURS)))
    for ki, kind in enumerate(KINDS):
        area, ou, ov = SHAPE_STATS[kind]
        s = math.sqrt(m / area)
        cx, cy = mx - ou * s, my - ov * s
        cov = coverage(kind, cx, cy, s, x0, y0, w, h)
        fits.append((cx, cy, s))
        for bi, sigma in enumerate(_BLURS):
            errs[ki, bi] = float((((soft - _blur(cov, sigma)) ** 2) * valid).sum()) / m
    return fits, errs


def parse_objects(arr: np.ndarray, return_details: bool = False):
    """Objects of a float 64x64x3 image (0-255); with ``return_details`` also per-object fit diagnostics."""
    chroma = arr.max(-1) - arr.min(-1)
    hue = _hue(arr)
    ink = 255.0 - arr
    bg = chroma[chroma < BG_CHROMA]
    floor = float(np.median(bg)) if bg.size else 0.0
    rad = np.radians(hue)
    cls = np.argmax(np.stack([np.cos(rad), np.sin(rad)], -1) @ _PAL_VEC.T, -1)
    cover = np.take_along_axis(ink @ _PAL_INK.T, cls[..., None], -1)[..., 0]  # coverage of the pixel's own colour
    seed = (chroma > np.maximum(max(SEED_CHROMA_MIN, floor + 20.0), SEED_CHROMA_FRAC * _PAL_CHROMA[cls])) & \
        (cover > SEED_COVER)
    labels, n = _label(seed, cls)
    objs, details, found = [], [], []
    for i in range(1, n + 1):
        comp = labels == i
        if comp.sum() < 4:
            continue
        peak = float(np.percentile(chroma[comp], 90))
        core = comp & (chroma >= 0.5 * peak)
        colour = _nearest_colour(hue[core], chroma[core])
        ys, xs = np.nonzero(comp)
        x0, x1 = max(0, xs.min() - 4), min(CANVAS, xs.max() + 5)
        y0, y1 = max(0, ys.min() - 4), min(CANVAS, ys.max() + 5)
        win = (slice(y0, y1), slice(x0, x1))
        valid = (labels[win] == 0) | (labels[win] == i)
        # coverage estimate: projection of (white - pixel) on (white - colour); uses luminance too, which JPEG keeps
        # at full resolution while it halves the chroma resolution
        d = 255.0 - np.asarray(COLOURS[colour], dtype=np.float64)
        a = (ink[win] @ d) / float(d @ d)
        a_core = float(np.percentile(a[comp[win]], 90))
        scale = a_core if a_core < SOFT_RENORM else 1.0
        soft = np.clip(a / scale, 0, SOFT_CLIP) * valid
        near = comp.copy()
        for _ in range(2):
            p = np.pad(near, 1)
            near = p[1:-1, 1:-1] | p[:-2, 1:-1] | p[2:, 1:-1] | p[1:-1, :-2] | p[1:-1, 2:] | p[:-2, :-2] | \
                p[:-2, 2:] | p[2:, :-2] | p[2:, 2:]
        soft = soft * near[win]
        m = float(soft.sum())
        if m < MIN_MASS:
            continue
        fits, errs = _fit_errors(soft, valid.astype(np.float64), x0, y0)
        found.append((colour, fits, errs, m))
    for colour, fits, errs, m in found:
        ki, bi = np.unravel_index(int(np.argmin(errs)), errs.shape)
        cx, cy, s = fits[ki]
        size = "small" if s < SIZE_SPLIT_PX else "large"
        objs.append(Obj(KINDS[ki], colour, size, round(float(cx), 2), round(float(cy), 2), round(float(s), 2)))
        details.append({"kind": KINDS[ki], "colour": colour, "mass": m, "fit_error": float(errs[ki, bi]),
                        "side": s, "blur": _BLURS[bi]})
    return (objs, details) if return_details else objs


# --------------------------------------------------------------------------------------------------------------------
# text
# --------------------------------------------------------------------------------------------------------------------
_GLYPHS = np.stack([glyph(ch).astype(np.float64) for ch in LETTERS])  # (26, 14, 10)
_GLYPH_SETS = np.stack([_GLYPHS] + [np.stack([_blur(np.pad(g, 5), sig)[5:-5, 5:-5] for g in _GLYPHS])
                                    for sig in (1.0, 1.5)])  # (3, 26, 14, 10): sharp and blurred glyphs
_GH, _GW = GLYPH_H * GLYPH_SCALE, GLYPH_W * GLYPH_SCALE


def darkness(arr: np.ndarray, paper: float = 225.0) -> np.ndarray:
    """Text-ink strength in [0, 1] per pixel (0 = the sign's grey ``paper``, 1 = black); colourful pixels are 0."""
    chroma = arr.max(-1) - arr.min(-1)
    light = arr.mean(-1)
    d = np.clip((paper - 10.0 - light) / (paper - 30.0), 0, 1)
    d[chroma > TEXT_CHROMA_MAX] = 0
    return d


def sign_region(arr: np.ndarray) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1) of the light-grey sign box, or None. Rows/columns count as sign where more than
    SIGN_MIN_RUN pixels are sign-grey (low chroma, lighter than ink, darker than the white background) or ink."""
    chroma = arr.max(-1) - arr.min(-1)
    light = arr.mean(-1)
    grey = (chroma < 40) & (light < SIGN_LIGHT_MAX)
    on = grey.sum(1) > SIGN_MIN_RUN
    best, start = (0, 0), None  # longest run of consecutive sign rows
    for y, flag in enumerate(list(on) + [False]):
        if flag and start is None:
            start = y
        elif not flag and start is not None:
            if y - start > best[1] - best[0]:
                best = (start, y)
            start = None
    y0, y1 = best
    if y1 - y0 < 8:
        return None
    cols = np.nonzero(grey[y0:y1].sum(0) > (y1 - y0) // 2)[0]
    if len(cols) < 12:
        return None
    return int(cols.min()), y0, int(cols.max()) + 1, y1


def read_text(arr: np.ndarray) -> str | None:
    """Sign text, or None when there is no sign box or no ink on it."""
    region = sign_region(arr)
    if region is None:
        return None
    x0, y0, x1, y1 = region
    paper = float(np.percentile(arr[y0:y1, x0:x1].mean(-1), 80))
    d = np.zeros(arr.shape[:2])
    d[y0:y1, x0:x1] = darkness(arr, paper)[y0:y1, x0:x1]
    ink = d > 0.35
    if ink.sum() < 6:
        return None
    ys, xs = np.nonzero(ink)
    bx0, bx1, by0, by1 = xs.min(), xs.max(), ys.min(), ys.max()
    pad = 64
    dp = np.pad(d, pad)
    d2 = dp * dp
    total = float(d2.sum())
    best = None
    for n in range(1, MAX_TEXT + 1):
        width = n * GLYPH_ADVANCE - (GLYPH_ADVANCE - _GW)
        if bx1 - bx0 + 1 > width + 2 or by1 - by0 + 1 > _GH + 2:
            continue
        for ty in range(by1 + 1 - _GH - 1, by0 + 2):
            for tx in range(bx1 + 1 - width - 1, bx0 + 2):
                cells = np.stack([dp[ty + pad:ty + pad + _GH, tx + pad + k * GLYPH_ADVANCE:
                                     tx + pad + k * GLYPH_ADVANCE + _GW] for k in range(n)])  # (n,14,10)
                e = ((cells[None, :, None] - _GLYPH_SETS[:, None]) ** 2).sum((3, 4)).min(0)  # (n, 26)
                pick = e.argmin(1)
                err = float(e.min(1).sum()) + total - float((cells ** 2).sum())
                if best is None or err < best[0] - 1e-9:
                    best = (err, "".join(LETTERS[j] for j in pick))
    return best[1] if best else None


def white_balance(arr: np.ndarray) -> np.ndarray:
    """Scale each channel so the background (the 75th percentile of the low-chroma pixels) becomes white."""
    chroma = arr.max(-1) - arr.min(-1)
    low = arr[chroma < 30]
    if len(low) < 256:
        return arr
    bg = np.percentile(low, 75, axis=0)
    if bg.min() < 128 or bg.min() >= 254.5:
        return arr
    return np.clip(arr * (255.0 / bg), 0, 255)


def parse(image, return_details: bool = False):
    """Parse a nano image (PIL image or HxWx3 array; other sizes are resized to 64x64) into a Scene.

    Parsed objects carry the fitted box side ``s`` (continuous) and centre; ``size`` is its class."""
    arr = white_balance(to_array(image))
    objs, det = parse_objects(arr, return_details=True)
    scene = Scene(tuple(objs), read_text(arr))
    return (scene, det) if return_details else scene


__all__ = ["parse", "white_balance", "parse_objects", "read_text", "darkness", "coverage", "to_array", "PALETTE_HUE"]
