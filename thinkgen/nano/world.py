"""ThinkGen-Nano synthetic world: scenes of flat coloured shapes on a 64x64 white canvas.

Everything here is deterministic and dependency-light (numpy + PIL).

World rules (the downstream painter learns these, the parser relies on them):

* Canvas ``CANVAS`` x ``CANVAS`` (64) RGB, white background, no antialiasing.
* 5 kinds (``KINDS``): circle, square, triangle (apex up), star (5 points, apex up), diamond. Every shape fills an
  axis-aligned box of side ``s`` (``SIZES``: small 12 px, large 18 px) centred on ``(cx, cy)``.
* 6 colours (``COLOURS``): red, yellow, green, cyan, blue, purple. They were picked 50-75 degrees apart in hue (the
  parser classifies by hue, which is invariant to mixing with the white background or black ink, i.e. to blur),
  with high chroma (far from the grey axis, so far from white, the light-grey sign box and black text).
* Objects sit on a 3x3 grid of slots (centres ``SLOT_CENTRES`` = 11, 32, 53 px); they never overlap and leave at
  least 3 px between boxes. Slot names: "top left" ... "centre" ... "bottom right" (``slot_name``).
* Text signs: 1-4 capital letters, own 5x7 bitmap font (``FONT``) drawn at 2x (10x14 px per glyph, 12 px advance),
  black on a light-grey sign box in a fixed banner at the bottom (``SIGN_BOX``). A scene with a sign only uses slot
  rows 0-1 for objects.
* Canonical layout (``layout(spec)`` with ``rng=None``) is a pure function of the spec, so every canonical caption
  has exactly one ground-truth image (easy to learn for a tiny DiT). Unspecified colour -> the kind's default colour
  (``DEFAULT_COLOUR``), unspecified size -> large. ``layout(spec, rng)`` gives random valid layouts instead.

Captions (``rendered_caption``) follow one small grammar, e.g. ``two red circles left of a blue square``,
``three small stars``, ``a green triangle and a sign that says "HI"``; ``scoring.caption_to_spec`` inverts it.
"""
from __future__ import annotations

import io
import math
import random
import re
from dataclasses import dataclass, replace
from typing import Iterable

import numpy as np
from PIL import Image, ImageFilter

from thinkgen.errors import InvalidInputError
from thinkgen.positions import relative_position as _geneval_relation

# --------------------------------------------------------------------------------------------------------------------
# constants
# --------------------------------------------------------------------------------------------------------------------
CANVAS = 64
BACKGROUND = (255, 255, 255)
KINDS: tuple[str, ...] = ("circle", "square", "triangle", "star", "diamond")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "yellow": (240, 215, 0),
    "green": (20, 175, 40),
    "cyan": (0, 185, 200),
    "blue": (40, 60, 220),
    "purple": (170, 40, 210),
}
COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)
SIZES: dict[str, int] = {"small": 12, "large": 18}
SIZE_NAMES: tuple[str, ...] = tuple(SIZES)
SIZE_SPLIT_PX = 15.0  # a fitted side below this is "small"
DEFAULT_COLOUR: dict[str, str] = {
    "circle": "red", "square": "blue", "triangle": "green", "star": "yellow", "diamond": "purple"}
DEFAULT_SIZE = "large"
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
MAX_COUNT = 6
MAX_TEXT = 4

SLOT_CENTRES: tuple[int, int, int] = (11, 32, 53)
ROW_WORDS = ("top", "middle", "bottom")
COL_WORDS = ("left", "middle", "right")

SIGN_BOX = (4, 45, 60, 63)  # x0, y0, x1, y1 (end exclusive)
SIGN_COLOUR = (225, 225, 225)
TEXT_COLOUR = (0, 0, 0)
TEXT_Y = 47
GLYPH_W, GLYPH_H, GLYPH_SCALE, GLYPH_GAP = 5, 7, 2, 2
GLYPH_ADVANCE = GLYPH_W * GLYPH_SCALE + GLYPH_GAP  # 12

COUNT_WORDS: tuple[str, ...] = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve")


def count_word(n: int) -> str:
    return COUNT_WORDS[n]


def plural(kind: str, n: int) -> str:
    return kind if n == 1 else kind + "s"


def slot_name(slot: tuple[int, int]) -> str:
    r, c = slot
    if (r, c) == (1, 1):
        return "centre"
    return f"{ROW_WORDS[r]} {COL_WORDS[c]}"


SLOT_NAMES: dict[tuple[int, int], str] = {(r, c): slot_name((r, c)) for r in range(3) for c in range(3)}
SLOT_BY_NAME: dict[str, tuple[int, int]] = {v: k for k, v in SLOT_NAMES.items()}

# --------------------------------------------------------------------------------------------------------------------
# bitmap font (own 5x7 design, '#' = ink)
# --------------------------------------------------------------------------------------------------------------------
_FONT_ROWS = {
    "A": (".###.", "#...#", "#...#", "#####", "#...#", "#...#", "#...#"),
    "B": ("####.", "#...#", "#...#", "####.", "#...#", "#...#", "####."),
    "C": (".####", "#....", "#....", "#....", "#....", "#....", ".####"),
    "D": ("###..", "#..#.", "#...#", "#...#", "#...#", "#..#.", "###.."),
    "E": ("#####", "#....", "#....", "####.", "#....", "#....", "#####"),
    "F": ("#####", "#....", "#....", "####.", "#....", "#....", "#...."),
    "G": (".####", "#....", "#....", "#..##", "#...#", "#...#", ".####"),
    "H": ("#...#", "#...#", "#...#", "#####", "#...#", "#...#", "#...#"),
    "I": ("#####", "..#..", "..#..", "..#..", "..#..", "..#..", "#####"),
    "J": ("#####", "...#.", "...#.", "...#.", "...#.", "#..#.", ".##.."),
    "K": ("#...#", "#..#.", "#.#..", "##...", "#.#..", "#..#.", "#...#"),
    "L": ("#....", "#....", "#....", "#....", "#....", "#....", "#####"),
    "M": ("#...#", "##.##", "#.#.#", "#.#.#", "#...#", "#...#", "#...#"),
    "N": ("#...#", "##..#", "#.#.#", "#..##", "#...#", "#...#", "#...#"),
    "O": (".###.", "#...#", "#...#", "#...#", "#...#", "#...#", ".###."),
    "P": ("####.", "#...#", "#...#", "####.", "#....", "#....", "#...."),
    "Q": (".###.", "#...#", "#...#", "#...#", "#.#.#", "#..#.", ".##.#"),
    "R": ("####.", "#...#", "#...#", "####.", "#.#..", "#..#.", "#...#"),
    "S": (".####", "#....", "#....", ".###.", "....#", "....#", "####."),
    "T": ("#####", "..#..", "..#..", "..#..", "..#..", "..#..", "..#.."),
    "U": ("#...#", "#...#", "#...#", "#...#", "#...#", "#...#", ".###."),
    "V": ("#...#", "#...#", "#...#", "#...#", ".#.#.", ".#.#.", "..#.."),
    "W": ("#...#", "#...#", "#...#", "#.#.#", "#.#.#", "##.##", "#...#"),
    "X": ("#...#", "#...#", ".#.#.", "..#..", ".#.#.", "#...#", "#...#"),
    "Y": ("#...#", "#...#", ".#.#.", "..#..", "..#..", "..#..", "..#.."),
    "Z": ("#####", "....#", "...#.", "..#..", ".#...", "#....", "#####"),
}
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
FONT: dict[str, np.ndarray] = {
    ch: np.array([[c == "#" for c in row] for row in rows], dtype=bool) for ch, rows in _FONT_ROWS.items()}


def glyph(ch: str) -> np.ndarray:
    """The 2x-scaled glyph of ``ch`` as a (14, 10) bool array."""
    return np.kron(FONT[ch], np.ones((GLYPH_SCALE, GLYPH_SCALE), dtype=bool)).astype(bool)


def text_origin(n: int) -> tuple[int, int]:
    """Top-left pixel of the first glyph of an n-letter sign (text is centred in the sign box)."""
    width = n * GLYPH_ADVANCE - GLYPH_GAP
    return (CANVAS - width) // 2, TEXT_Y


def check_text(text: str) -> str:
    if not isinstance(text, str) or not (1 <= len(text) <= MAX_TEXT) or any(ch not in LETTERS for ch in text):
        raise InvalidInputError(f"sign text {text!r} must be 1-{MAX_TEXT} capital letters A-Z")
    return text


# --------------------------------------------------------------------------------------------------------------------
# shape geometry: every kind inside the unit box [-1, 1]^2 (v grows downwards)
# --------------------------------------------------------------------------------------------------------------------
STAR_INNER = 0.45


def _star_polygon() -> np.ndarray:
    pts = []
    for k in range(10):
        ang = -math.pi / 2 + k * math.pi / 5
        r = 1.0 if k % 2 == 0 else STAR_INNER
        pts.append((r * math.cos(ang), r * math.sin(ang)))
    p = np.array(pts)
    lo, hi = p.min(0), p.max(0)
    return (p - lo) / (hi - lo) * 2.0 - 1.0  # stretch to fill the box exactly


STAR_POLY = _star_polygon()


def _in_polygon(u: np.ndarray, v: np.ndarray, poly: np.ndarray) -> np.ndarray:
    inside = np.zeros(np.broadcast(u, v).shape, dtype=bool)
    n = len(poly)
    for i in range(n):
        x1, y1 = poly[i]
        x2, y2 = poly[(i + 1) % n]
        if y1 == y2:
            continue
        cond = (y1 > v) != (y2 > v)
        xint = x1 + (v - y1) * (x2 - x1) / (y2 - y1)
        inside ^= cond & (u < xint)
    return inside


def shape_inside(kind: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Boolean membership of unit-box coordinates (u, v) in ``kind``."""
    box = (np.abs(u) <= 1) & (np.abs(v) <= 1)
    if kind == "circle":
        return u * u + v * v <= 1.0
    if kind == "square":
        return box
    if kind == "diamond":
        return np.abs(u) + np.abs(v) <= 1.0
    if kind == "triangle":
        return box & (np.abs(u) <= (v + 1.0) / 2.0)
    if kind == "star":
        return box & _in_polygon(u, v, STAR_POLY)
    raise InvalidInputError(f"unknown shape kind {kind!r}; expected one of {KINDS}")


def _unit_stats(kind: str, n: int = 400) -> tuple[float, float, float]:
    """(area fraction of the box, centroid offset u, centroid offset v in units of the side s)."""
    t = (np.arange(n) + 0.5) / n * 2 - 1
    u, v = np.meshgrid(t, t)
    m = shape_inside(kind, u, v)
    return float(m.mean()), float(u[m].mean() / 2), float(v[m].mean() / 2)


SHAPE_STATS: dict[str, tuple[float, float, float]] = {k: _unit_stats(k) for k in KINDS}

# --------------------------------------------------------------------------------------------------------------------
# scene dataclasses
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Obj:
    """One object. (cx, cy): centre of its box in pixels (continuous coordinates, pixel x spans [x, x+1));
    ``s``: box side in pixels (defaults to the size class's side)."""
    kind: str
    colour: str
    size: str = DEFAULT_SIZE
    cx: float = 32.0
    cy: float = 32.0
    s: float = 0.0

    def __post_init__(self):
        if self.kind not in KINDS:
            raise InvalidInputError(f"unknown shape kind {self.kind!r}; expected one of {KINDS}")
        if self.colour not in COLOURS:
            raise InvalidInputError(f"unknown colour {self.colour!r}; expected one of {COLOUR_NAMES}")
        if self.size not in SIZES:
            raise InvalidInputError(f"unknown size {self.size!r}; expected one of {SIZE_NAMES}")
        if not self.s:
            object.__setattr__(self, "s", float(SIZES[self.size]))

    @property
    def box(self) -> tuple[float, float, float, float]:
        h = self.s / 2
        return (self.cx - h, self.cy - h, self.cx + h, self.cy + h)

    @property
    def slot(self) -> tuple[int, int]:
        return (nearest_slot_index(self.cy), nearest_slot_index(self.cx))

    def describe(self) -> str:
        return f"{self.size} {self.colour} {self.kind}"

    def to_dict(self) -> dict:
        return {"kind": self.kind, "colour": self.colour, "size": self.size, "cx": self.cx, "cy": self.cy, "s": self.s}

    @classmethod
    def from_dict(cls, d: dict) -> "Obj":
        return cls(d["kind"], d["colour"], d.get("size", DEFAULT_SIZE), float(d["cx"]), float(d["cy"]),
                   float(d.get("s", 0.0)))


def nearest_slot_index(p: float) -> int:
    return int(np.argmin([abs(p - c) for c in SLOT_CENTRES]))


def slot_centre(slot: tuple[int, int]) -> tuple[int, int]:
    """(cx, cy) of a slot given as (row, col)."""
    return SLOT_CENTRES[slot[1]], SLOT_CENTRES[slot[0]]


@dataclass(frozen=True)
class Scene:
    objects: tuple[Obj, ...] = ()
    text: str | None = None

    def __post_init__(self):
        object.__setattr__(self, "objects", tuple(sorted(self.objects, key=lambda o: (round(o.cy), round(o.cx)))))
        if self.text == "":
            object.__setattr__(self, "text", None)
        if self.text is not None:
            check_text(self.text)

    def signature(self) -> str:
        """Stable string: the objects by slot (kind, colour, size) and the text. Used for keys and equality."""
        parts = [f"{o.slot[0]}{o.slot[1]}:{o.size}:{o.colour}:{o.kind}" for o in self.objects]
        return "|".join(parts) + f"#{self.text or ''}"

    def to_dict(self) -> dict:
        return {"objects": [o.to_dict() for o in self.objects], "text": self.text}

    @classmethod
    def from_dict(cls, d: dict) -> "Scene":
        return cls(tuple(Obj.from_dict(o) for o in d.get("objects", [])), d.get("text"))


@dataclass(frozen=True)
class GroupSpec:
    """``count`` objects of ``kind``; ``colour`` / ``size`` None = unspecified (any)."""
    kind: str
    count: int = 1
    colour: str | None = None
    size: str | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise InvalidInputError(f"unknown shape kind {self.kind!r}; expected one of {KINDS}")
        if not (1 <= int(self.count) <= MAX_COUNT):
            raise InvalidInputError(f"count {self.count} out of range 1-{MAX_COUNT}")
        if self.colour is not None and self.colour not in COLOURS:
            raise InvalidInputError(f"unknown colour {self.colour!r}; expected one of {COLOUR_NAMES}")
        if self.size is not None and self.size not in SIZES:
            raise InvalidInputError(f"unknown size {self.size!r}; expected one of {SIZE_NAMES}")

    def matches(self, o: Obj) -> bool:
        return (o.kind == self.kind and (self.colour is None or o.colour == self.colour)
                and (self.size is None or o.size == self.size))

    def phrase(self) -> str:
        words = ["a" if self.count == 1 else count_word(self.count)]
        if self.size:
            words.append(self.size)
        if self.colour:
            words.append(self.colour)
        words.append(plural(self.kind, self.count))
        return " ".join(words)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "count": self.count, "colour": self.colour, "size": self.size}


@dataclass(frozen=True)
class SceneSpec:
    """What an image must show: 0-2 groups, an optional relation (groups[0] REL groups[1]), an optional sign."""
    groups: tuple[GroupSpec, ...] = ()
    relation: str | None = None
    text: str | None = None

    def __post_init__(self):
        object.__setattr__(self, "groups", tuple(self.groups))
        if self.text == "":
            object.__setattr__(self, "text", None)
        if self.text is not None:
            check_text(self.text)
        if len(self.groups) > 2:
            raise InvalidInputError(f"a spec has at most 2 groups, got {len(self.groups)}")
        if not self.groups and self.text is None:
            raise InvalidInputError("a spec needs at least one group or a sign text")
        if self.relation is not None:
            if self.relation not in RELATIONS:
                raise InvalidInputError(f"unknown relation {self.relation!r}; expected one of {RELATIONS}")
            if len(self.groups) != 2:
                raise InvalidInputError("a relation needs exactly 2 groups")

    def to_dict(self) -> dict:
        return {"groups": [g.to_dict() for g in self.groups], "relation": self.relation, "text": self.text}

    @classmethod
    def from_dict(cls, d: dict) -> "SceneSpec":
        return cls(tuple(GroupSpec(g["kind"], int(g.get("count", 1)), g.get("colour"), g.get("size"))
                         for g in d.get("groups", [])), d.get("relation"), d.get("text"))

    def canonical(self) -> "SceneSpec":
        """Equivalent normal form: 'right of'/'below' become 'left of'/'above' with the groups swapped; groups joined
        by 'and' are sorted. Two specs mean the same iff their canonical forms are equal."""
        g, rel = self.groups, self.relation
        if rel == "right of":
            g, rel = (g[1], g[0]), "left of"
        elif rel == "below":
            g, rel = (g[1], g[0]), "above"
        elif rel is None and len(g) == 2:
            g = tuple(sorted(g, key=lambda x: (x.kind, x.colour or "", x.size or "", x.count)))
        return SceneSpec(g, rel, self.text)


def rendered_caption(spec: SceneSpec) -> str:
    """The canonical caption of a spec (the painter instruction the nano DiT is trained on)."""
    parts = []
    if spec.groups:
        parts.append(spec.groups[0].phrase())
        if len(spec.groups) == 2:
            parts.append(spec.relation or "and")
            parts.append(spec.groups[1].phrase())
    if spec.text is not None:
        sign = f'a sign that says "{spec.text}"'
        parts.append(("and " + sign) if parts else sign)
    return " ".join(parts)


# --------------------------------------------------------------------------------------------------------------------
# GenEval position rule (one implementation for the nano scorers and the GenEval reward: thinkgen.positions)
# --------------------------------------------------------------------------------------------------------------------
def relative_position(a: Obj, b: Obj) -> set[str]:
    """Relations that hold for A relative to B under GenEval's rule (thinkgen.positions)."""
    return _geneval_relation(a.box, b.box)


# --------------------------------------------------------------------------------------------------------------------
# layout
# --------------------------------------------------------------------------------------------------------------------
_DICE = {1: [(1, 1)], 2: [(1, 0), (1, 2)], 3: [(1, 0), (1, 1), (1, 2)], 4: [(0, 0), (0, 2), (2, 0), (2, 2)],
         5: [(0, 0), (0, 2), (1, 1), (2, 0), (2, 2)], 6: [(0, 0), (0, 1), (0, 2), (2, 0), (2, 1), (2, 2)]}
_DICE_TEXT = {1: [(1, 1)], 2: [(1, 0), (1, 2)], 3: [(1, 0), (1, 1), (1, 2)], 4: [(0, 0), (0, 2), (1, 0), (1, 2)],
              5: [(0, 0), (0, 1), (0, 2), (1, 0), (1, 2)], 6: [(r, c) for r in range(2) for c in range(3)]}
_LINE = {1: [1], 2: [0, 2], 3: [0, 1, 2]}
_LINE_TEXT = {1: [1], 2: [0, 1]}


def _canonical_slots(spec: SceneSpec) -> list[list[tuple[int, int]]]:
    has_text = spec.text is not None
    g = spec.groups
    if len(g) == 0:
        return []
    if len(g) == 1:
        return [list((_DICE_TEXT if has_text else _DICE)[g[0].count])]
    a, b = g[0].count, g[1].count
    rel = spec.relation or "left of"
    if rel in ("left of", "right of"):
        lines = _LINE_TEXT if has_text else _LINE
        if a not in lines or b not in lines:
            raise InvalidInputError(f"'{rendered_caption(spec)}': side-by-side groups hold at most {max(lines)} "
                                    "objects each" + (" with a sign" if has_text else ""))
        ca, cb = (0, 2) if rel == "left of" else (2, 0)
        return [[(r, ca) for r in lines[a]], [(r, cb) for r in lines[b]]]
    if a > 3 or b > 3:
        raise InvalidInputError(f"'{rendered_caption(spec)}': stacked groups hold at most 3 objects each")
    top, bottom = (0, 1) if has_text else (0, 2)
    ra, rb = (top, bottom) if rel == "above" else (bottom, top)
    return [[(ra, c) for c in _LINE[a]], [(rb, c) for c in _LINE[b]]]


def free_slots(has_text: bool) -> list[tuple[int, int]]:
    """Slots objects may use, in reading order (rows 0-1 only when the scene has a sign)."""
    rows = 2 if has_text else 3
    return [(r, c) for r in range(rows) for c in range(3)]


def place(kind: str, colour: str, size: str, slot: tuple[int, int], jitter: tuple[int, int] = (0, 0)) -> Obj:
    """An object centred on a slot (plus an integer jitter)."""
    cx, cy = slot_centre(slot)
    return Obj(kind, colour, size, float(cx + jitter[0]), float(cy + jitter[1]))


def max_jitter(size: str) -> int:
    """Largest per-axis offset from the slot centre that keeps the box inside the canvas and >= 1 px from the
    neighbouring slots' boxes (``_jittered`` also keeps >= MIN_GAP px between the actual boxes)."""
    return 1 if size == "large" else 3


MIN_GAP = 2


def _gap(a: Obj, b: Obj) -> float:
    ax0, ay0, ax1, ay1 = a.box
    bx0, by0, bx1, by1 = b.box
    return max(bx0 - ax1, ax0 - bx1, by0 - ay1, ay0 - by1)


def _jittered(objs: list[Obj], rng: random.Random, jitter: int) -> list[Obj]:
    """Apply integer jitter object by object, dropping an object's jitter when it would come closer than MIN_GAP px
    to an already placed object."""
    out: list[Obj] = []
    for o in objs:
        j = min(jitter, max_jitter(o.size))
        moved = replace(o, cx=o.cx + rng.randint(-j, j), cy=o.cy + rng.randint(-j, j))
        out.append(moved if all(_gap(moved, p) >= MIN_GAP for p in out) else o)
    return out


def _relations_hold(spec: SceneSpec, groups: list[list[Obj]]) -> bool:
    if spec.relation is None:
        return True
    return all(spec.relation in relative_position(a, b) for a in groups[0] for b in groups[1])


def layout(spec: SceneSpec, rng: random.Random | None = None, jitter: int = 0) -> Scene:
    """Scene for a spec. ``rng=None``: the canonical layout (a pure function of the spec; unspecified colour = the
    kind's default colour, unspecified size = large). With ``rng``: random slots satisfying the relation, random
    colour/size for unspecified attributes, and integer jitter up to ``min(jitter, max_jitter(size))`` px."""
    has_text = spec.text is not None
    total = sum(g.count for g in spec.groups)
    if total > len(free_slots(has_text)):
        raise InvalidInputError(f"'{rendered_caption(spec)}' has {total} objects; at most "
                                f"{len(free_slots(has_text))} fit" + (" with a sign" if has_text else ""))
    if rng is None:
        objs = []
        for g, slots in zip(spec.groups, _canonical_slots(spec)):
            for sl in slots:
                objs.append(place(g.kind, g.colour or DEFAULT_COLOUR[g.kind], g.size or DEFAULT_SIZE, sl))
        return Scene(tuple(objs), spec.text)
    attrs = [[(g.colour or rng.choice(COLOUR_NAMES), g.size or rng.choice(SIZE_NAMES)) for _ in range(g.count)]
             for g in spec.groups]
    free = free_slots(has_text)
    for _ in range(300):
        slots = rng.sample(free, total)
        flat, sizes, i = [], [], 0
        for g, at in zip(spec.groups, attrs):
            for colour, size in at:
                flat.append(place(g.kind, colour, size, slots[i]))
                i += 1
            sizes.append(len(at))
        flat = _jittered(flat, rng, jitter)
        groups, i = [], 0
        for k in sizes:
            groups.append(flat[i:i + k])
            i += k
        if _relations_hold(spec, groups):
            return Scene(tuple(o for grp in groups for o in grp), spec.text)
    canon = layout(spec)
    it = iter(o for at in attrs for o in at)
    return Scene(tuple(replace(o, colour=c, size=s, s=float(SIZES[s])) for o, (c, s) in zip(canon.objects, it)),
                 spec.text)


def random_scene(rng: random.Random, n_objects: int | None = None, text_prob: float = 0.3, jitter: int = 0,
                 unique: bool = True) -> Scene:
    """A random scene of 1-6 objects in distinct slots (unique (colour, kind) pairs when ``unique``) and, with
    probability ``text_prob``, a random 1-4 letter sign."""
    text = None
    if rng.random() < text_prob:
        text = "".join(rng.choice(LETTERS) for _ in range(rng.randint(1, MAX_TEXT)))
    free = free_slots(text is not None)
    n = n_objects if n_objects is not None else rng.randint(1, min(6, len(free)))
    n = min(n, len(free))
    slots = rng.sample(free, n)
    used, objs = set(), []
    for sl in slots:
        while True:
            kind, colour = rng.choice(KINDS), rng.choice(COLOUR_NAMES)
            if not unique or (kind, colour) not in used:
                break
        used.add((kind, colour))
        objs.append(place(kind, colour, rng.choice(SIZE_NAMES), sl))
    return Scene(tuple(_jittered(objs, rng, jitter)), text)


# --------------------------------------------------------------------------------------------------------------------
# rendering
# --------------------------------------------------------------------------------------------------------------------


def object_mask(o: Obj, canvas: int = CANVAS) -> np.ndarray:
    """Aliased (pixel-centre sampled) mask of one object."""
    y, x = np.mgrid[0:canvas, 0:canvas]
    u = (x + 0.5 - o.cx) / (o.s / 2)
    v = (y + 0.5 - o.cy) / (o.s / 2)
    return shape_inside(o.kind, u, v)


def render(scene: Scene) -> Image.Image:
    """Render a scene: white 64x64 canvas, flat shapes, then the sign (if any)."""
    arr = np.empty((CANVAS, CANVAS, 3), dtype=np.uint8)
    arr[:] = BACKGROUND
    for o in scene.objects:
        arr[object_mask(o)] = COLOURS[o.colour]
    if scene.text:
        x0, y0, x1, y1 = SIGN_BOX
        arr[y0:y1, x0:x1] = SIGN_COLOUR
        tx, ty = text_origin(len(scene.text))
        for i, ch in enumerate(scene.text):
            g = glyph(ch)
            gx = tx + i * GLYPH_ADVANCE
            arr[ty:ty + g.shape[0], gx:gx + g.shape[1]][g] = TEXT_COLOUR
    return Image.fromarray(arr, "RGB")


def degrade(image: Image.Image, rng: random.Random | np.random.Generator | int | None = None, blur: float = 1.0,
            noise: float = 10.0, jpeg: int | None = 75) -> Image.Image:
    """Generated-image-like degradation: Gaussian blur (PIL radius), additive Gaussian noise (sigma in 0-255 units),
    then JPEG re-encoding at quality ``jpeg`` (None = skip)."""
    if not isinstance(rng, np.random.Generator):
        seed = rng.getrandbits(32) if isinstance(rng, random.Random) else rng
        rng = np.random.default_rng(seed)
    img = image.convert("RGB")
    if blur:
        img = img.filter(ImageFilter.GaussianBlur(blur))
    if noise:
        arr = np.asarray(img, dtype=np.float32) + rng.normal(0, noise, (img.height, img.width, 3))
        img = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "RGB")
    if jpeg:
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=int(jpeg))
        buf.seek(0)
        img = Image.open(buf).convert("RGB")
    return img


# --------------------------------------------------------------------------------------------------------------------
# word-level text convention (shared with the nano tokenizer)
# --------------------------------------------------------------------------------------------------------------------
PUNCT = ".,?!:;\""
_TOKEN_RE = re.compile(r"[A-Za-z]+|[0-9]+|[^\sA-Za-z0-9]")
_ATTACH_LEFT = set(".,?!:;")


def words(text: str) -> list[str]:
    """Split text into vocabulary words: lowercase words, digit runs, single punctuation marks, and ALL-CAPS words
    split into single capital letters (sign text "CAT" -> "C", "A", "T"). Mixed-case words are lowercased."""
    out: list[str] = []
    for tok in _TOKEN_RE.findall(text):
        if tok.isalpha() and tok.isupper():
            out.extend(tok)
        elif tok.isalpha():
            out.append(tok.lower())
        else:
            out.append(tok)
    return out


def join_words(tokens: Iterable[str]) -> str:
    """Inverse of ``words`` for nano text: consecutive capital letters are glued into one word, ``. , ? ! : ;`` stick
    to the previous word, double quotes alternate open (sticks right) / close (sticks left)."""
    out = ""
    prev = None  # 'letter' | 'open' | 'other' | None
    quote_open = False
    for tok in tokens:
        if not tok:
            continue
        is_letter = len(tok) == 1 and tok.isupper()
        if tok == '"':
            if quote_open:
                out += '"'
                prev = "other"
            else:
                out += (" " if out else "") + '"'
                prev = "open"
            quote_open = not quote_open
            continue
        if tok in _ATTACH_LEFT or prev == "open" or (is_letter and prev == "letter") or not out:
            out += tok
        else:
            out += " " + tok
        prev = "letter" if is_letter else "other"
    return out


def normalise_text(text: str) -> str:
    return join_words(words(text))


__all__ = [
    "CANVAS", "KINDS", "COLOURS", "COLOUR_NAMES", "SIZES", "SIZE_NAMES", "DEFAULT_COLOUR", "DEFAULT_SIZE", "RELATIONS",
    "MAX_COUNT", "MAX_TEXT", "SLOT_CENTRES", "SLOT_NAMES", "SLOT_BY_NAME", "SIGN_BOX", "LETTERS", "FONT", "COUNT_WORDS",
    "Obj", "Scene", "GroupSpec", "SceneSpec", "rendered_caption", "relative_position", "layout", "random_scene",
    "render", "degrade", "free_slots", "place", "words", "join_words", "normalise_text", "slot_name", "slot_centre", "glyph", "shape_inside",
    "count_word", "plural",
]
