"""ThinkGen-Nano prompt families: seeded generators, think traces, canonical painter instructions, train/held-out split.

Families (``FAMILIES``) and categories (``CATEGORIES``):

* ``composition`` - GenEval's six categories adapted to shapes (``GENEVAL_CATEGORIES``: single_object, two_object,
  counting, colors, position, color_attr) plus ``compound`` (counts + colours + sizes + relations; training variety,
  not part of the GenEval-style overall). Prompt == instruction, empty think.
* ``reasoning`` - the painter cannot read the answer off the words: count_knowledge ("as many stars as a triangle has
  corners"), colour_knowledge ("a square the colour of a ripe banana"), arithmetic ("two plus three circles"),
  shape_knowledge ("a red shape with three corners"), combined (two facts). The think trace states every fact and
  ends with "so <instruction> ."; the instruction is the literal canonical caption.
* ``text`` - literal ('a sign that says "CAT"'), literal_scene (a group plus a sign), reasoned ('a sign that shows the
  sound a cow makes' -> "MOO").
* ``editing`` - input scene + instruction: recolour, remove, add, move, count, text, reasoned. ``target`` is an
  ``EditTarget`` (which objects must be where); the canonical instruction grammar is parsed by ``parse_edit``.
* ``reflection`` - prompt + a flawed canonical image (wrong count / colour / kind / relation / missing group / text,
  or no flaw) -> think names the error, ``answer`` = ``instruction`` = the corrected canonical caption.
* ``understanding`` - a question about a scene -> a short exact answer (count words, colours, shapes, sizes, yes/no,
  slot names, sign text).

Split: every sample has a ``key``; ``split_of(key)`` (SHA-256, ``HELDOUT_FRACTION``) decides train/held-out. For image
outputs (composition, reasoning, text, reflection) the key is the canonical form of the *target spec*, shared by all
families, so a held-out spec is never drawn as a training target anywhere (nor its equivalent, e.g. "B right of A").
Editing keys = input scene + instruction; understanding keys = scene + question.

Words: all text is lowercase words, punctuation tokens and sign letters (ALL-CAPS words are split into letters by
``world.words``); ``vocabulary()`` lists every word any generator can emit.
"""
from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass, field, replace
from typing import Callable

from PIL import Image

from thinkgen.errors import InvalidInputError
from thinkgen.nano.world import (
    COLOUR_NAMES, COUNT_WORDS, DEFAULT_COLOUR, DEFAULT_SIZE, KINDS, LETTERS, MAX_COUNT, MAX_TEXT, RELATIONS,
    SIZE_NAMES, SLOT_BY_NAME, SLOT_NAMES, GroupSpec, Obj, Scene, SceneSpec, free_slots, place, count_word,
    layout, normalise_text, plural, random_scene, relative_position, render, rendered_caption, slot_name, words)

FAMILIES: tuple[str, ...] = ("composition", "reasoning", "text", "editing", "reflection", "understanding")
GENEVAL_CATEGORIES: tuple[str, ...] = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
CATEGORIES: dict[str, tuple[str, ...]] = {
    "composition": GENEVAL_CATEGORIES + ("compound",),
    "reasoning": ("count_knowledge", "colour_knowledge", "arithmetic", "shape_knowledge", "combined"),
    "text": ("literal", "literal_scene", "reasoned"),
    "editing": ("recolour", "remove", "add", "move", "count", "text", "reasoned"),
    "reflection": ("count", "colour", "kind", "relation", "missing", "text", "correct"),
    "understanding": ("count", "colour", "shape", "size", "position", "where", "exists", "text"),
}
IMAGE_FAMILIES = ("composition", "reasoning", "text", "editing", "reflection")
HELDOUT_FRACTION = 0.2
SPLITS = ("train", "heldout")

# --------------------------------------------------------------------------------------------------------------------
# fact base
# --------------------------------------------------------------------------------------------------------------------
# (subject, noun singular, noun plural, count): "as many stars as <subject> has <plural>" -> "<subject> has N <noun>"
COUNT_FACTS: tuple[tuple[str, str, str, int], ...] = (
    ("a triangle", "corner", "corners", 3), ("a square", "corner", "corners", 4),
    ("a diamond", "corner", "corners", 4), ("a star", "point", "points", 5),
    ("a dog", "leg", "legs", 4), ("a cat", "leg", "legs", 4), ("a horse", "leg", "legs", 4),
    ("a bird", "leg", "legs", 2), ("a bird", "wing", "wings", 2), ("an insect", "leg", "legs", 6),
    ("a bee", "leg", "legs", 6), ("a bicycle", "wheel", "wheels", 2), ("a tricycle", "wheel", "wheels", 3),
    ("a car", "wheel", "wheels", 4), ("a hand", "finger", "fingers", 5), ("a face", "eye", "eyes", 2),
    ("a year", "season", "seasons", 4), ("a weekend", "day", "days", 2), ("a coin", "side", "sides", 2),
    ("a pentagon", "side", "sides", 5), ("a hexagon", "side", "sides", 6), ("a traffic light", "light", "lights", 3),
    ("a die", "face", "faces", 6), ("a stool", "leg", "legs", 3), ("a chair", "leg", "legs", 4),
    ("a table", "leg", "legs", 4), ("a unicorn", "horn", "horns", 1), ("a cyclops", "eye", "eyes", 1),
)
# "the colour of <thing>" -> colour ("<thing> is <colour>")
COLOUR_FACTS: tuple[tuple[str, str], ...] = (
    ("a ripe banana", "yellow"), ("a lemon", "yellow"), ("the sun", "yellow"), ("a sunflower", "yellow"),
    ("grass", "green"), ("a leaf", "green"), ("a frog", "green"), ("a lime", "green"), ("a cucumber", "green"),
    ("the sky", "blue"), ("a blueberry", "blue"), ("the sea", "blue"),
    ("a ripe strawberry", "red"), ("a ripe tomato", "red"), ("a fire engine", "red"), ("a cherry", "red"),
    ("an aubergine", "purple"), ("a plum", "purple"), ("lavender", "purple"), ("a violet", "purple"),
)
# (singular description, plural description, kind)
SHAPE_FACTS: tuple[tuple[str, str, str], ...] = (
    ("shape with three corners", "shapes with three corners", "triangle"),
    ("shape with five points", "shapes with five points", "star"),
    ("shape with no corners", "shapes with no corners", "circle"),
    ("shape with four right angles", "shapes with four right angles", "square"),
    ("shape like a tilted square", "shapes like a tilted square", "diamond"),
)
OPPOSITES: tuple[tuple[str, str], ...] = (
    ("UP", "DOWN"), ("IN", "OUT"), ("ON", "OFF"), ("YES", "NO"), ("HOT", "COLD"), ("WET", "DRY"), ("OLD", "NEW"),
    ("FAST", "SLOW"))
SOUNDS: tuple[tuple[str, str], ...] = (
    ("a cow", "MOO"), ("a dog", "WOOF"), ("a cat", "MEOW"), ("a sheep", "BAA"), ("an owl", "HOOT"), ("a bee", "BUZZ"),
    ("a snake", "HISS"))
BACKWARD_WORDS: tuple[str, ...] = ("CAT", "DOG", "SUN", "MAP", "STAR", "FROG", "BIRD", "FISH", "TREE", "CAKE", "LAMP",
                                   "BOX", "HAT", "PEN", "CUP")
SIGN_WORDS: tuple[str, ...] = ("CAT", "DOG", "SUN", "HI", "OK", "YES", "NO", "STOP", "GO", "OPEN", "SHOP", "CAFE",
                               "EXIT", "BUS", "TAXI", "HOME", "LOVE", "COOL", "STAR", "MOON", "SALE", "FOOD", "BOOK",
                               "PARK", "ZOO", "TOY", "JAM", "FIZZ", "QUIZ", "WAX")
ORDINALS = {2: "two", 3: "three", 4: "four"}

# every fixed phrase that generators emit (placeholders in braces are removed when building the vocabulary)
TEMPLATES: tuple[str, ...] = (
    "as many {g} as {subject} has {noun}", "{subject} has {n} {noun}", "so {instruction} .",
    "{g} the colour of {thing}", "{thing} is {colour}", "{a} plus {b} {g}", "{a} minus {b} {g}",
    "as many {g} as {a} times {b}", "{a} plus {b} is {n}", "{a} minus {b} is {n}", "{a} times {b} is {n}",
    "a {shape}", "{n} {shapes}", "a {shape} is a {kind}", "{g} {rel} the {shape}", "{g} , all the colour of {thing}",
    'a sign that says "{t}"', "{g} and a sign that says", 'a sign that shows {p}',
    "the first letter of the alphabet", "the last letter of the alphabet", "the letter after {X}",
    "the letter before {X}", "the first {n} letters of the alphabet", "the last {n} letters of the alphabet",
    "the colour of {thing} in capitals", "{a} plus {b} as a word", "the opposite of {X}", "the sound {animal} makes",
    "{animal} says {X}", "the word {X} backwards", "{X} backwards is {Y}", "{p} is {X}", "the opposite of {X} is {Y}",
    "{colour} in capitals is {X}",
    "make the {c} {k} {c2}", "remove the {c} {k}", "add {g}", "add {g} at the {slot}", "move the {c} {k} to the {slot}",
    "change the number of {c} {k} to {n}", 'change the sign to say "{t}"', "make the {c} {k} the colour of {thing}",
    "remove the {shape}", "add as many {g} as {subject} has {noun}", "change the number of {c} {k} to {a} plus {b}",
    'change the sign to show {p}', "the {shape} is the {c} {k}",
    "the request is {caption} .", "the picture shows {caption} .", "it matches .", "the count is wrong .",
    "the colour is wrong .", "the shape is wrong .", "the position is wrong .", "something is missing .",
    "the text is wrong .", "so the instruction is {caption} .", "nothing",
    "how many {k} are there ?", "how many {c} shapes are there ?", "how many shapes are there ?",
    "what colour is the {k} ?", "what shape is the {c} object ?", "is the {c} {k} small or large ?",
    "is the {c} {k} {rel} the {c2} {k2} ?", "where is the {c} {k} ?", "is there a {c} {k} ?",
    "what does the sign say ?", "yes", "no", "centre", "top middle left right bottom",
)

# --------------------------------------------------------------------------------------------------------------------
# data classes
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ObjTarget:
    """One object an edited image must contain; ``size`` / ``slot`` None = any size / any (free) slot."""
    kind: str
    colour: str | None
    size: str | None = None
    slot: tuple[int, int] | None = None

    def matches(self, o: Obj) -> bool:
        return (o.kind == self.kind and (self.colour is None or o.colour == self.colour)
                and (self.size is None or o.size == self.size) and (self.slot is None or o.slot == self.slot))

    def to_dict(self) -> dict:
        return {"kind": self.kind, "colour": self.colour, "size": self.size,
                "slot": list(self.slot) if self.slot else None}

    @classmethod
    def from_dict(cls, d: dict) -> "ObjTarget":
        return cls(d["kind"], d.get("colour"), d.get("size"), tuple(d["slot"]) if d.get("slot") else None)


@dataclass(frozen=True)
class EditTarget:
    """What an edited image must show: exactly these objects (anchored ones at their slots) and this sign text.
    ``scene`` is the canonical ground truth (free objects in the first free slots in reading order)."""
    objects: tuple[ObjTarget, ...]
    text: str | None
    scene: Scene

    def key(self) -> str:
        objs = sorted(f"{o.kind}:{o.colour}:{o.size}:{o.slot}" for o in self.objects)
        return "|".join(objs) + f"#{self.text or ''}"

    def to_dict(self) -> dict:
        return {"objects": [o.to_dict() for o in self.objects], "text": self.text, "scene": self.scene.to_dict()}

    @classmethod
    def from_dict(cls, d: dict) -> "EditTarget":
        return cls(tuple(ObjTarget.from_dict(o) for o in d["objects"]), d.get("text"), Scene.from_dict(d["scene"]))


@dataclass(frozen=True)
class EditOp:
    """One canonical edit. op: recolour | remove | add | move | count | text."""
    op: str
    kind: str | None = None
    colour: str | None = None
    new_colour: str | None = None
    size: str | None = None
    count: int = 1
    slot: tuple[int, int] | None = None
    text: str | None = None


@dataclass
class Sample:
    """One example. MLLM text target: ``think`` then ``instruction`` (image families) or ``answer`` (understanding,
    reflection). DiT pairs: (``instruction``, ``target_image()``), for editing with ``input_image()`` as reference."""
    family: str
    category: str
    prompt: str
    instruction: str = ""
    think: str = ""
    target: SceneSpec | EditTarget | None = None
    input_scene: Scene | None = None
    question: str = ""
    answer: str = ""
    split: str = "train"
    key: str = ""
    meta: dict = field(default_factory=dict)

    @property
    def has_image_output(self) -> bool:
        return self.family in IMAGE_FAMILIES

    def target_scene(self, rng: random.Random | None = None) -> Scene | None:
        """Ground-truth output scene (canonical layout when rng is None), None for understanding."""
        if isinstance(self.target, EditTarget):
            return self.target.scene
        if isinstance(self.target, SceneSpec):
            return layout(self.target, rng)
        return None

    def target_image(self, rng: random.Random | None = None) -> Image.Image | None:
        sc = self.target_scene(rng)
        return render(sc) if sc is not None else None

    def input_image(self) -> Image.Image | None:
        return render(self.input_scene) if self.input_scene is not None else None

    def texts(self) -> list[str]:
        return [t for t in (self.prompt, self.think, self.instruction, self.question, self.answer) if t]

    def to_dict(self) -> dict:
        t = self.target
        tk = "spec" if isinstance(t, SceneSpec) else "edit" if isinstance(t, EditTarget) else None
        return {"family": self.family, "category": self.category, "prompt": self.prompt,
                "instruction": self.instruction, "think": self.think, "question": self.question,
                "answer": self.answer, "split": self.split, "key": self.key, "meta": dict(self.meta),
                "target_type": tk, "target": t.to_dict() if t is not None else None,
                "input_scene": self.input_scene.to_dict() if self.input_scene is not None else None}

    @classmethod
    def from_dict(cls, d: dict) -> "Sample":
        tk, t = d.get("target_type"), d.get("target")
        target = SceneSpec.from_dict(t) if tk == "spec" else EditTarget.from_dict(t) if tk == "edit" else None
        inp = Scene.from_dict(d["input_scene"]) if d.get("input_scene") else None
        return cls(d["family"], d["category"], d["prompt"], d.get("instruction", ""), d.get("think", ""), target,
                   inp, d.get("question", ""), d.get("answer", ""), d.get("split", "train"), d.get("key", ""),
                   dict(d.get("meta", {})))


# --------------------------------------------------------------------------------------------------------------------
# split
# --------------------------------------------------------------------------------------------------------------------


def _unit_hash(key: str) -> float:
    return int(hashlib.sha256(key.encode("utf-8")).hexdigest()[:12], 16) / float(16 ** 12)


def split_of(key: str) -> str:
    return "heldout" if _unit_hash(key) < HELDOUT_FRACTION else "train"


def spec_key(spec: SceneSpec) -> str:
    """Split key of an image target: the canonical caption of the canonical (order-normalised) spec."""
    return "spec:" + rendered_caption(spec.canonical())


# --------------------------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------------------------


def _nw(n: int) -> str:
    return count_word(n)


def _think(facts: list[str], instruction: str) -> str:
    return " . ".join(facts) + f" . so {instruction} ."


def _rand_group(rng: random.Random, count: int = 1, kind: str | None = None, colour: bool | str = False,
                size: bool = False) -> GroupSpec:
    k = kind or rng.choice(KINDS)
    c = colour if isinstance(colour, str) else (rng.choice(COLOUR_NAMES) if colour else None)
    s = rng.choice(SIZE_NAMES) if size else None
    return GroupSpec(k, count, c, s)


def _image_sample(family: str, category: str, prompt: str, spec: SceneSpec, think: str = "", **meta) -> "Sample":
    instr = rendered_caption(spec)
    return Sample(family, category, prompt, instr, think, spec, key=spec_key(spec), meta=meta)


def _fits(spec: SceneSpec) -> bool:
    try:
        layout(spec)
        return True
    except InvalidInputError:
        return False


# --------------------------------------------------------------------------------------------------------------------
# (a) composition
# --------------------------------------------------------------------------------------------------------------------


def _composition(rng: random.Random, cat: str) -> Sample | None:
    if cat == "single_object":
        size = rng.choice([None, None, "small", "large"])
        spec = SceneSpec((GroupSpec(rng.choice(KINDS), 1, None, size),))
    elif cat == "two_object":
        k1, k2 = rng.sample(KINDS, 2)
        spec = SceneSpec((GroupSpec(k1), GroupSpec(k2)))
    elif cat == "counting":
        spec = SceneSpec((GroupSpec(rng.choice(KINDS), rng.randint(2, MAX_COUNT)),))
    elif cat == "colors":
        size = rng.choice([None, None, "small", "large"])
        spec = SceneSpec((GroupSpec(rng.choice(KINDS), 1, rng.choice(COLOUR_NAMES), size),))
    elif cat == "position":
        k1, k2 = rng.sample(KINDS, 2)
        spec = SceneSpec((GroupSpec(k1), GroupSpec(k2)), rng.choice(RELATIONS))
    elif cat == "color_attr":
        k1, k2 = rng.sample(KINDS, 2)
        c1, c2 = rng.sample(COLOUR_NAMES, 2)
        spec = SceneSpec((GroupSpec(k1, 1, c1), GroupSpec(k2, 1, c2)))
    elif cat == "compound":
        two = rng.random() < 0.7
        if not two:
            g = _rand_group(rng, rng.randint(1, MAX_COUNT), colour=True, size=rng.random() < 0.3)
            spec = SceneSpec((g,))
        else:
            rel = rng.choice(RELATIONS + (None,))
            g1 = _rand_group(rng, rng.randint(1, 3), colour=rng.random() < 0.85, size=rng.random() < 0.25)
            g2 = _rand_group(rng, rng.randint(1, 3), colour=rng.random() < 0.85, size=rng.random() < 0.25)
            if g1.kind == g2.kind and (g1.colour is None or g2.colour is None or g1.colour == g2.colour):
                return None
            spec = SceneSpec((g1, g2), rel)
    else:
        raise InvalidInputError(f"unknown composition category {cat!r}")
    if not _fits(spec):
        return None
    caption = rendered_caption(spec)
    return _image_sample("composition", cat, caption, spec)


# --------------------------------------------------------------------------------------------------------------------
# (b) reasoning
# --------------------------------------------------------------------------------------------------------------------


def _adj_noun(g: GroupSpec, n_for_plural: int = 2) -> str:
    """'red circles' style noun phrase (no count)."""
    parts = [p for p in (g.size, g.colour) if p] + [plural(g.kind, n_for_plural)]
    return " ".join(parts)


def _arith(rng: random.Random, lo: int = 1, hi: int = MAX_COUNT) -> tuple[str, int, str]:
    """(expression words, value, fact sentence) with value in [lo, hi]."""
    while True:
        op = rng.choice(["plus", "minus", "times"])
        a, b = rng.randint(1, 6), rng.randint(1, 6)
        v = a + b if op == "plus" else a - b if op == "minus" else a * b
        if op == "times" and (a == 1 or b == 1):
            continue
        if lo <= v <= hi:
            expr = f"{_nw(a)} {op} {_nw(b)}"
            return expr, v, f"{expr} is {_nw(v)}"


def _reasoning(rng: random.Random, cat: str) -> Sample | None:
    if cat == "count_knowledge":
        subj, sg, pl, n = rng.choice(COUNT_FACTS)
        g = _rand_group(rng, n, colour=rng.random() < 0.6, size=rng.random() < 0.2)
        prompt = f"as many {_adj_noun(g)} as {subj} has {pl}"
        spec = SceneSpec((g,))
        facts = [f"{subj} has {_nw(n)} {sg if n == 1 else pl}"]
    elif cat == "colour_knowledge":
        thing, colour = rng.choice(COLOUR_FACTS)
        n = rng.choice([1, 1, 1, 2, 3, 4])
        g = _rand_group(rng, n, colour=colour, size=rng.random() < 0.2)
        head = ("a" if n == 1 else _nw(n)) + " " + " ".join([p for p in (g.size,) if p] + [plural(g.kind, n)])
        prompt = f"{head} the colour of {thing}"
        spec = SceneSpec((g,))
        facts = [f"{thing} is {colour}"]
    elif cat == "arithmetic":
        expr, n, fact = _arith(rng)
        g = _rand_group(rng, n, colour=rng.random() < 0.6, size=rng.random() < 0.2)
        if rng.random() < 0.5 and " times " not in expr:
            prompt = f"{expr} {_adj_noun(g)}"
        else:
            prompt = f"as many {_adj_noun(g)} as {expr}"
        spec = SceneSpec((g,))
        facts = [fact]
    elif cat == "shape_knowledge":
        sg, pl, kind = rng.choice(SHAPE_FACTS)
        if rng.random() < 0.5:
            n = rng.randint(1, 4)
            c = rng.choice(COLOUR_NAMES) if rng.random() < 0.7 else None
            g = GroupSpec(kind, n, c)
            adj = (c + " ") if c else ""
            prompt = (f"a {adj}{sg}" if n == 1 else f"{_nw(n)} {adj}{pl}")
            spec = SceneSpec((g,))
        else:
            other = _rand_group(rng, rng.randint(1, 2), colour=True)
            if other.kind == kind:
                return None
            rel = rng.choice(RELATIONS)
            c = rng.choice(COLOUR_NAMES) if rng.random() < 0.5 else None
            g = GroupSpec(kind, 1, c)
            prompt = f"{other.phrase()} {rel} the {(c + ' ') if c else ''}{sg}"
            spec = SceneSpec((other, g), rel)
        facts = [f"a {sg} is a {kind}"]
    elif cat == "combined":
        if rng.random() < 0.5:
            subj, sg, pl, n = rng.choice(COUNT_FACTS)
            thing, colour = rng.choice(COLOUR_FACTS)
            g = _rand_group(rng, n, colour=colour)
            prompt = f"as many {plural(g.kind, 2)} as {subj} has {pl} , all the colour of {thing}"
            facts = [f"{subj} has {_nw(n)} {sg if n == 1 else pl}", f"{thing} is {colour}"]
            spec = SceneSpec((g,))
        else:
            thing, colour = rng.choice(COLOUR_FACTS)
            sg, pl, kind = rng.choice(SHAPE_FACTS)
            expr, n, afact = _arith(rng, 1, 3)
            g1 = GroupSpec(kind, n, colour)
            other = _rand_group(rng, rng.randint(1, 2), colour=True)
            if other.kind == kind:
                return None
            rel = rng.choice(RELATIONS)
            prompt = f"as many {pl} as {expr} , the colour of {thing} , {rel} {other.phrase()}"
            facts = [afact, f"a {sg} is a {kind}", f"{thing} is {colour}"]
            spec = SceneSpec((g1, other), rel)
    else:
        raise InvalidInputError(f"unknown reasoning category {cat!r}")
    if not _fits(spec):
        return None
    instr = rendered_caption(spec)
    return _image_sample("reasoning", cat, prompt, spec, _think(facts, instr))


# --------------------------------------------------------------------------------------------------------------------
# (c) text rendering
# --------------------------------------------------------------------------------------------------------------------


def _random_text(rng: random.Random) -> str:
    if rng.random() < 0.5:
        return rng.choice(SIGN_WORDS)
    return "".join(rng.choice(LETTERS) for _ in range(rng.randint(1, MAX_TEXT)))


def text_fact(rng: random.Random) -> tuple[str, str, str]:
    """(phrase, fact sentence, answer text) for a reasoned sign."""
    kind = rng.choice(["first", "last", "after", "before", "firstn", "lastn", "colour", "number", "opposite",
                       "sound", "backwards"])
    if kind == "first":
        return "the first letter of the alphabet", "the first letter of the alphabet is A", "A"
    if kind == "last":
        return "the last letter of the alphabet", "the last letter of the alphabet is Z", "Z"
    if kind == "after":
        i = rng.randint(0, 24)
        return f"the letter after {LETTERS[i]}", f"the letter after {LETTERS[i]} is {LETTERS[i + 1]}", LETTERS[i + 1]
    if kind == "before":
        i = rng.randint(1, 25)
        return f"the letter before {LETTERS[i]}", f"the letter before {LETTERS[i]} is {LETTERS[i - 1]}", LETTERS[i - 1]
    if kind == "firstn":
        n = rng.randint(2, 4)
        t = LETTERS[:n]
        return (f"the first {ORDINALS[n]} letters of the alphabet",
                f"the first {ORDINALS[n]} letters of the alphabet are {' '.join(t)}", t)
    if kind == "lastn":
        n = rng.randint(2, 3)
        t = LETTERS[-n:]
        return (f"the last {ORDINALS[n]} letters of the alphabet",
                f"the last {ORDINALS[n]} letters of the alphabet are {' '.join(t)}", t)
    if kind == "colour":
        thing, colour = rng.choice([f for f in COLOUR_FACTS if len(f[1]) <= MAX_TEXT])
        return f"the colour of {thing} in capitals", f"{thing} is {colour} . {colour} in capitals is " \
                                                     f"{colour.upper()}", colour.upper()
    if kind == "number":
        while True:
            a, b = rng.randint(1, 5), rng.randint(1, 5)
            word = COUNT_WORDS[a + b] if a + b < len(COUNT_WORDS) else ""
            if word and len(word) <= MAX_TEXT:
                return f"{_nw(a)} plus {_nw(b)} as a word", f"{_nw(a)} plus {_nw(b)} is {word}", word.upper()
    if kind == "opposite":
        a, b = rng.choice(OPPOSITES)
        if rng.random() < 0.5:
            a, b = b, a
        return f"the opposite of {a}", f"the opposite of {a} is {b}", b
    if kind == "sound":
        animal, snd = rng.choice(SOUNDS)
        return f"the sound {animal} makes", f"{animal} says {snd}", snd
    w = rng.choice(BACKWARD_WORDS)
    return f"the word {w} backwards", f"{w} backwards is {w[::-1]}", w[::-1]


def _text(rng: random.Random, cat: str) -> Sample | None:
    if cat == "literal":
        spec = SceneSpec((), None, _random_text(rng))
        return _image_sample("text", cat, rendered_caption(spec), spec)
    if cat == "literal_scene":
        g = _rand_group(rng, rng.randint(1, 3), colour=rng.random() < 0.7, size=rng.random() < 0.2)
        spec = SceneSpec((g,), None, _random_text(rng))
        return _image_sample("text", cat, rendered_caption(spec), spec)
    if cat == "reasoned":
        phrase, fact, t = text_fact(rng)
        spec = SceneSpec((), None, t)
        instr = rendered_caption(spec)
        return _image_sample("text", cat, f"a sign that shows {phrase}", spec, _think([fact], instr))
    raise InvalidInputError(f"unknown text category {cat!r}")


# --------------------------------------------------------------------------------------------------------------------
# (d) editing: canonical grammar, application, generator
# --------------------------------------------------------------------------------------------------------------------
_K = "|".join(KINDS)
_C = "|".join(COLOUR_NAMES)
_S = "|".join(SIZE_NAMES)
_N = "|".join(COUNT_WORDS[1:MAX_COUNT + 1])
_SLOTS = "|".join(sorted(SLOT_BY_NAME, key=len, reverse=True))
_GROUP_RE = rf"(a|{_N})(?: ({_S}))?(?: ({_C}))? ({_K})(s?)"
_EDIT_RES: list[tuple[str, re.Pattern]] = [
    ("recolour", re.compile(rf"^make the ({_C}) ({_K}) ({_C})$")),
    ("remove", re.compile(rf"^remove the ({_C}) ({_K})$")),
    ("move", re.compile(rf"^move the ({_C}) ({_K}) to the ({_SLOTS})$")),
    ("count", re.compile(rf"^change the number of ({_C}) ({_K})s to ({'|'.join(COUNT_WORDS[1:MAX_COUNT + 1])})$")),
    ("text", re.compile(r'^change the sign to say "([A-Z]{1,4})"$')),
    ("add", re.compile(rf"^add {_GROUP_RE}(?: at the ({_SLOTS}))?$")),
]


def edit_caption(op: EditOp) -> str:
    """Canonical edit instruction text."""
    if op.op == "recolour":
        return f"make the {op.colour} {op.kind} {op.new_colour}"
    if op.op == "remove":
        return f"remove the {op.colour} {op.kind}"
    if op.op == "move":
        return f"move the {op.colour} {op.kind} to the {slot_name(op.slot)}"
    if op.op == "count":
        return f"change the number of {op.colour} {plural(op.kind, 2)} to {_nw(op.count)}"
    if op.op == "text":
        return f'change the sign to say "{op.text}"'
    if op.op == "add":
        s = "add " + GroupSpec(op.kind, op.count, op.colour, op.size).phrase()
        return s + (f" at the {slot_name(op.slot)}" if op.slot is not None else "")
    raise InvalidInputError(f"unknown edit op {op.op!r}")


def parse_edit(text: str) -> EditOp | None:
    """Parse a canonical edit instruction (see ``edit_caption``); None when it is not one."""
    t = normalise_text(text).strip().rstrip(" .")
    for name, rx in _EDIT_RES:
        m = rx.match(t)
        if not m:
            continue
        if name == "recolour":
            return EditOp("recolour", m.group(2), m.group(1), new_colour=m.group(3))
        if name == "remove":
            return EditOp("remove", m.group(2), m.group(1))
        if name == "move":
            return EditOp("move", m.group(2), m.group(1), slot=SLOT_BY_NAME[m.group(3)])
        if name == "count":
            return EditOp("count", m.group(2), m.group(1), count=COUNT_WORDS.index(m.group(3)))
        if name == "text":
            return EditOp("text", text=m.group(1))
        n = 1 if m.group(1) == "a" else COUNT_WORDS.index(m.group(1))
        if (n == 1) != (m.group(5) == ""):
            return None
        slot = SLOT_BY_NAME[m.group(6)] if m.group(6) else None
        if slot is not None and n != 1:
            return None
        return EditOp("add", m.group(4), m.group(3), size=m.group(2), count=n, slot=slot)
    return None


def _anchored(o: Obj) -> ObjTarget:
    return ObjTarget(o.kind, o.colour, o.size, o.slot)


def apply_edit(scene: Scene, op: EditOp) -> EditTarget | None:
    """Apply a canonical edit to a scene; None when it does not apply (missing / ambiguous referent, no room...)."""
    objs = list(scene.objects)
    free = [s for s in free_slots(scene.text is not None) if s not in {o.slot for o in objs}]
    if op.op in ("recolour", "remove", "move"):
        ref = [o for o in objs if o.kind == op.kind and o.colour == op.colour]
        if len(ref) != 1:
            return None
        r = ref[0]
        rest = [o for o in objs if o is not r]
        if op.op == "recolour":
            if op.new_colour == r.colour or any(o.kind == r.kind and o.colour == op.new_colour for o in rest):
                return None
            new = replace(r, colour=op.new_colour)
            objs2, targets = rest + [new], [_anchored(o) for o in rest] + [_anchored(new)]
        elif op.op == "remove":
            objs2, targets = rest, [_anchored(o) for o in rest]
        else:
            if op.slot not in free:
                return None
            new = place(r.kind, r.colour, r.size, op.slot)
            objs2, targets = rest + [new], [_anchored(o) for o in rest] + [_anchored(new)]
        return EditTarget(tuple(targets), scene.text, Scene(tuple(objs2), scene.text))
    if op.op == "add":
        colour = op.colour or DEFAULT_COLOUR[op.kind]
        if any(o.kind == op.kind and o.colour == colour for o in objs):
            return None
        if op.slot is not None:
            if op.count != 1 or op.slot not in free:
                return None
            new = [place(op.kind, colour, op.size or DEFAULT_SIZE, op.slot)]
            tnew = [ObjTarget(op.kind, op.colour, op.size, op.slot)]
        else:
            if op.count > len(free):
                return None
            new = [place(op.kind, colour, op.size or DEFAULT_SIZE, s) for s in free[:op.count]]
            tnew = [ObjTarget(op.kind, op.colour, op.size, None) for _ in new]
        return EditTarget(tuple([_anchored(o) for o in objs] + tnew), scene.text,
                          Scene(tuple(objs + new), scene.text))
    if op.op == "count":
        grp = [o for o in objs if o.kind == op.kind and o.colour == op.colour]
        if not grp or op.count == len(grp) or not (1 <= op.count <= MAX_COUNT):
            return None
        rest = [o for o in objs if not (o.kind == op.kind and o.colour == op.colour)]
        size = grp[0].size
        if any(o.size != size for o in grp):
            return None
        if op.count > len(grp):
            extra = op.count - len(grp)
            if extra > len(free):
                return None
            grp2 = grp + [place(op.kind, op.colour, size, s) for s in free[:extra]]
        else:
            grp2 = grp[:op.count]  # objects are in reading order: the last ones go
        targets = [_anchored(o) for o in rest] + [ObjTarget(op.kind, op.colour, size, None) for _ in grp2]
        return EditTarget(tuple(targets), scene.text, Scene(tuple(rest + grp2), scene.text))
    if op.op == "text":
        if scene.text is None or op.text == scene.text:
            return None
        return EditTarget(tuple(_anchored(o) for o in objs), op.text, Scene(tuple(objs), op.text))
    raise InvalidInputError(f"unknown edit op {op.op!r}")


def _edit_scene(rng: random.Random, n_lo: int = 2, n_hi: int = 4, text_prob: float = 0.2) -> Scene:
    return random_scene(rng, rng.randint(n_lo, n_hi), text_prob=text_prob)


def _editing(rng: random.Random, cat: str) -> Sample | None:
    facts: list[str] = []
    prompt = None
    if cat in ("recolour", "remove", "move"):
        sc = _edit_scene(rng)
        r = rng.choice(sc.objects)
        if cat == "recolour":
            op = EditOp("recolour", r.kind, r.colour, new_colour=rng.choice([c for c in COLOUR_NAMES if c != r.colour]))
        elif cat == "remove":
            op = EditOp("remove", r.kind, r.colour)
        else:
            free = [s for s in free_slots(sc.text is not None) if s not in {o.slot for o in sc.objects}]
            if not free:
                return None
            op = EditOp("move", r.kind, r.colour, slot=rng.choice(free))
    elif cat == "add":
        sc = _edit_scene(rng, 1, 4)
        free = [s for s in free_slots(sc.text is not None) if s not in {o.slot for o in sc.objects}]
        kind = rng.choice(KINDS)
        colour = rng.choice(COLOUR_NAMES) if rng.random() < 0.85 else None
        size = rng.choice(SIZE_NAMES) if rng.random() < 0.3 else None
        if rng.random() < 0.5 and free:
            op = EditOp("add", kind, colour, size=size, slot=rng.choice(free))
        else:
            op = EditOp("add", kind, colour, size=size, count=rng.randint(1, min(3, max(1, len(free)))))
    elif cat == "count":
        sc = _count_scene(rng) if rng.random() < 0.8 else _edit_scene(rng, 1, 3)
        grp_key = rng.choice(sorted({(o.kind, o.colour) for o in sc.objects}))
        m = sum(o.kind == grp_key[0] and o.colour == grp_key[1] for o in sc.objects)
        n = rng.choice([k for k in range(1, MAX_COUNT + 1) if k != m])
        op = EditOp("count", grp_key[0], grp_key[1], count=n)
    elif cat == "text":
        sc = random_scene(rng, rng.randint(0, 3), text_prob=1.0)
        op = EditOp("text", text=_random_text(rng))
    elif cat == "reasoned":
        sub = rng.choice(["colour", "remove", "add", "count", "text"])
        if sub == "colour":
            sc = _edit_scene(rng)
            r = rng.choice(sc.objects)
            thing, colour = rng.choice(COLOUR_FACTS)
            op = EditOp("recolour", r.kind, r.colour, new_colour=colour)
            prompt = f"make the {r.colour} {r.kind} the colour of {thing}"
            facts = [f"{thing} is {colour}"]
        elif sub == "remove":
            sc = _edit_scene(rng)
            sg, pl, kind = rng.choice(SHAPE_FACTS)
            ref = [o for o in sc.objects if o.kind == kind]
            if len(ref) != 1:
                return None
            r = ref[0]
            op = EditOp("remove", r.kind, r.colour)
            prompt = f"remove the {sg}"
            facts = [f"a {sg} is a {kind}", f"the {sg} is the {r.colour} {kind}"]
        elif sub == "add":
            sc = _edit_scene(rng, 1, 3, text_prob=0.0)
            subj, sgn, pl, n = rng.choice(COUNT_FACTS)
            g = _rand_group(rng, n, colour=rng.random() < 0.7)
            op = EditOp("add", g.kind, g.colour, count=n)
            prompt = f"add as many {_adj_noun(g)} as {subj} has {pl}"
            facts = [f"{subj} has {_nw(n)} {sgn if n == 1 else pl}"]
        elif sub == "count":
            sc = _count_scene(rng)
            keys = sorted({(o.kind, o.colour) for o in sc.objects
                           if sum(p.kind == o.kind and p.colour == o.colour for p in sc.objects) >= 2})
            if not keys:
                return None
            k, c = rng.choice(keys)
            expr, n, afact = _arith(rng, 1, MAX_COUNT)
            if " times " in expr:
                return None
            op = EditOp("count", k, c, count=n)
            prompt = f"change the number of {c} {plural(k, 2)} to {expr}"
            facts = [afact]
        else:
            sc = random_scene(rng, rng.randint(0, 3), text_prob=1.0)
            phrase, fact, t = text_fact(rng)
            op = EditOp("text", text=t)
            prompt = f"change the sign to show {phrase}"
            facts = [fact]
    else:
        raise InvalidInputError(f"unknown editing category {cat!r}")
    target = apply_edit(sc, op)
    if target is None:
        return None
    instr = edit_caption(op)
    think = _think(facts, instr) if facts else ""
    return Sample("editing", cat, prompt or instr, instr, think, target, sc,
                  key=f"edit:{sc.signature()}:{instr}", meta={"op": op.op})


def _count_scene(rng: random.Random) -> Scene:
    """A scene with one group of 2-3 identical objects (same kind, colour, size) plus 0-2 other objects."""
    text = None if rng.random() < 0.8 else "".join(rng.choice(LETTERS) for _ in range(rng.randint(1, 4)))
    free = free_slots(text is not None)
    m = rng.randint(2, 3)
    others = rng.randint(0, min(2, len(free) - m))
    slots = rng.sample(free, m + others)
    kind, colour, size = rng.choice(KINDS), rng.choice(COLOUR_NAMES), rng.choice(SIZE_NAMES)
    objs = [place(kind, colour, size, s) for s in slots[:m]]
    used = {(kind, colour)}
    for s in slots[m:]:
        while True:
            k, c = rng.choice(KINDS), rng.choice(COLOUR_NAMES)
            if (k, c) not in used:
                break
        used.add((k, c))
        objs.append(place(k, c, rng.choice(SIZE_NAMES), s))
    return Scene(tuple(objs), text)


# --------------------------------------------------------------------------------------------------------------------
# (e) reflection
# --------------------------------------------------------------------------------------------------------------------
_REFLECT_SOURCES = (("composition", ("counting", "colors", "position", "color_attr", "compound")),
                    ("reasoning", CATEGORIES["reasoning"]),
                    ("text", ("literal", "literal_scene", "reasoned")))
_FLAW_WORDS = {"count": "the count is wrong", "colour": "the colour is wrong", "kind": "the shape is wrong",
               "relation": "the position is wrong", "missing": "something is missing", "text": "the text is wrong"}
_OPPOSITE_REL = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


def _filled(spec: SceneSpec) -> SceneSpec:
    """The spec with the canonical render's colours filled in (what the canonical image visibly shows)."""
    return SceneSpec(tuple(replace(g, colour=g.colour or DEFAULT_COLOUR[g.kind]) for g in spec.groups),
                     spec.relation, spec.text)


def _flaw(rng: random.Random, spec: SceneSpec, flaw: str) -> SceneSpec | None:
    gs = list(spec.groups)
    if flaw == "count" and gs:
        i = rng.randrange(len(gs))
        n = gs[i].count + rng.choice([-1, 1])
        if not (1 <= n <= MAX_COUNT):
            return None
        gs[i] = replace(gs[i], count=n)
        return SceneSpec(tuple(gs), spec.relation, spec.text)
    if flaw == "colour":
        idx = [i for i, g in enumerate(gs) if g.colour is not None]
        if not idx:
            return None
        i = rng.choice(idx)
        gs[i] = replace(gs[i], colour=rng.choice([c for c in COLOUR_NAMES if c != gs[i].colour]))
        return SceneSpec(tuple(gs), spec.relation, spec.text)
    if flaw == "kind" and gs:
        i = rng.randrange(len(gs))
        used = {g.kind for g in gs}
        gs[i] = replace(gs[i], kind=rng.choice([k for k in KINDS if k not in used]))
        return SceneSpec(tuple(gs), spec.relation, spec.text)
    if flaw == "relation" and spec.relation:
        return SceneSpec(tuple(gs), _OPPOSITE_REL[spec.relation], spec.text)
    if flaw == "missing" and (len(gs) == 2 or (gs and spec.text)):
        if len(gs) == 2:
            keep = rng.randrange(2)
            return SceneSpec((gs[keep],), None, spec.text)
        return SceneSpec(tuple(gs), None, None)
    if flaw == "text" and spec.text:
        t = list(spec.text)
        i = rng.randrange(len(t))
        t[i] = rng.choice([c for c in LETTERS if c != t[i]])
        return SceneSpec(tuple(gs), spec.relation, "".join(t))
    return None


def _reflection(rng: random.Random, cat: str) -> Sample | None:
    fam, cats = rng.choice(_REFLECT_SOURCES)
    if cat == "text":
        fam, cats = "text", ("literal", "literal_scene", "reasoned")
    if cat == "relation":
        fam, cats = rng.choice([("composition", ("position", "compound")), ("reasoning", ("shape_knowledge",))])
    src = _MAKERS[fam](rng, rng.choice(cats))
    if src is None:
        return None
    spec = src.target
    if cat == "correct":
        shown = spec
    else:
        shown = _flaw(rng, spec, cat)
        if shown is None or not _fits(shown) or shown.canonical() == spec.canonical():
            return None
    flawed_scene = layout(shown)
    correct = rendered_caption(spec)
    facts = [s for s in src.think.split(" . ")[:-1]] if src.think else []
    lines = facts + [f"the request is {correct}", f"the picture shows {rendered_caption(_filled(shown))}"]
    lines.append("it matches" if cat == "correct" else _FLAW_WORDS[cat])
    think = " . ".join(lines) + f" . so the instruction is {correct} ."
    return Sample("reflection", cat, src.prompt, correct, think, spec, flawed_scene, answer=correct,
                  key=spec_key(spec), meta={"source_family": src.family, "source_category": src.category,
                                            "shown": rendered_caption(shown)})


# --------------------------------------------------------------------------------------------------------------------
# (f) understanding
# --------------------------------------------------------------------------------------------------------------------


def _understanding(rng: random.Random, cat: str) -> Sample | None:
    sc = random_scene(rng, rng.randint(1, 5), text_prob=1.0 if cat == "text" else 0.3)
    objs = sc.objects
    if cat == "count":
        mode = rng.choice(["kind", "colour", "all"])
        if mode == "kind":
            k = rng.choice(KINDS)
            q, a = f"how many {plural(k, 2)} are there ?", _nw(sum(o.kind == k for o in objs))
        elif mode == "colour":
            c = rng.choice(COLOUR_NAMES)
            q, a = f"how many {c} shapes are there ?", _nw(sum(o.colour == c for o in objs))
        else:
            q, a = "how many shapes are there ?", _nw(len(objs))
    elif cat == "colour":
        kinds = [o for o in objs if sum(p.kind == o.kind for p in objs) == 1]
        if not kinds:
            return None
        o = rng.choice(kinds)
        q, a = f"what colour is the {o.kind} ?", o.colour
    elif cat == "shape":
        cols = [o for o in objs if sum(p.colour == o.colour for p in objs) == 1]
        if not cols:
            return None
        o = rng.choice(cols)
        q, a = f"what shape is the {o.colour} object ?", o.kind
    elif cat == "size":
        o = rng.choice(objs)
        q, a = f"is the {o.colour} {o.kind} small or large ?", o.size
    elif cat == "position":
        if len(objs) < 2:
            return None
        o1, o2 = rng.sample(objs, 2)
        rels = relative_position(o1, o2)
        want_yes = rng.random() < 0.5
        pool = sorted(rels) if want_yes else sorted(set(RELATIONS) - rels)
        if not pool:
            return None
        rel = rng.choice(pool)
        q = f"is the {o1.colour} {o1.kind} {rel} the {o2.colour} {o2.kind} ?"
        a = "yes" if rel in rels else "no"
    elif cat == "where":
        o = rng.choice(objs)
        q, a = f"where is the {o.colour} {o.kind} ?", slot_name(o.slot)
    elif cat == "exists":
        if rng.random() < 0.5:
            o = rng.choice(objs)
            k, c = o.kind, o.colour
        else:
            present = {(o.kind, o.colour) for o in objs}
            k, c = rng.choice([(k, c) for k in KINDS for c in COLOUR_NAMES if (k, c) not in present])
        q = f"is there a {c} {k} ?"
        a = "yes" if any(o.kind == k and o.colour == c for o in objs) else "no"
    elif cat == "text":
        q, a = "what does the sign say ?", sc.text
    else:
        raise InvalidInputError(f"unknown understanding category {cat!r}")
    return Sample("understanding", cat, q, "", "", None, sc, question=q, answer=a,
                  key=f"vqa:{sc.signature()}:{q}")


# --------------------------------------------------------------------------------------------------------------------
# public generator
# --------------------------------------------------------------------------------------------------------------------
_MAKERS: dict[str, Callable[[random.Random, str], Sample | None]] = {
    "composition": _composition, "reasoning": _reasoning, "text": _text, "editing": _editing,
    "reflection": _reflection, "understanding": _understanding}


def sample_uid(s: Sample) -> str:
    """Identity of a drawn sample: prompt + input scene (+ the image a reflection sample shows)."""
    return f"{s.prompt}|{s.input_scene.signature() if s.input_scene else ''}|{s.meta.get('shown', '')}"


def generate(family: str, n: int, seed: int = 0, split: str = "train", categories: tuple[str, ...] | None = None,
             unique: bool = True) -> list[Sample]:
    """``n`` samples of ``family`` (categories in round-robin order), deterministic in (family, n, seed, split,
    categories). Only samples whose key falls in ``split`` are kept. With ``unique``, a prompt (+ input scene) is not
    repeated unless the category's space is exhausted."""
    if family not in _MAKERS:
        raise InvalidInputError(f"unknown family {family!r}; expected one of {FAMILIES}")
    if split not in SPLITS:
        raise InvalidInputError(f"unknown split {split!r}; expected one of {SPLITS}")
    cats = tuple(categories) if categories else CATEGORIES[family]
    for c in cats:
        if c not in CATEGORIES[family]:
            raise InvalidInputError(f"unknown {family} category {c!r}; expected one of {CATEGORIES[family]}")
    rng = random.Random(f"thinkgen-nano|{family}|{seed}|{split}|{','.join(cats)}")
    out: list[Sample] = []
    seen: set[str] = set()
    exhausted: set[str] = set()  # categories whose unique space ran out: duplicates allowed from then on
    for i in range(n):
        cat = cats[i % len(cats)]
        chosen = fallback = None
        for attempt in range(2000):
            s = _MAKERS[family](rng, cat)
            if s is None or split_of(s.key) != split:
                continue
            if not unique or cat in exhausted or sample_uid(s) not in seen:
                chosen = s
                break
            fallback = fallback or s
            if attempt > 300:
                exhausted.add(cat)
                break
        chosen = chosen or fallback
        if chosen is None:
            raise InvalidInputError(f"could not draw a {split} sample of {family}/{cat}")
        chosen.split = split
        for name in ("prompt", "think", "instruction", "question", "answer"):
            setattr(chosen, name, normalise_text(getattr(chosen, name)))
        seen.add(sample_uid(chosen))
        out.append(chosen)
    return out


def vocabulary() -> list[str]:
    """Every word (``world.words`` units) any generator can put into prompt / think / instruction / question /
    answer, sorted. Includes the 26 sign letters and the punctuation tokens . , ? " :"""
    vocab: set[str] = set()

    def add(text: str) -> None:
        vocab.update(words(re.sub(r"\{[^}]*\}", " ", text)))

    for t in TEMPLATES:
        add(t)
    for subj, sg, pl, _ in COUNT_FACTS:
        add(f"{subj} {sg} {pl}")
    for thing, colour in COLOUR_FACTS:
        add(f"{thing} {colour}")
    for sg, pl, kind in SHAPE_FACTS:
        add(f"{sg} {pl} {kind}")
    for animal, _ in SOUNDS:
        add(animal)
    for w in KINDS + COLOUR_NAMES + SIZE_NAMES + RELATIONS + COUNT_WORDS + tuple(ORDINALS.values()):
        add(w)
        add(plural(w, 2) if w in KINDS else w)
    for name in SLOT_NAMES.values():
        add(name)
    add("a an and the of is are so plus minus times as many has says in capitals word letter letters after before "
        "first last alphabet backwards opposite sound makes colour shape shapes sign that says shows")
    vocab.update(LETTERS)
    vocab.update(['.', ',', '?', '"', ':'])
    return sorted(vocab)


__all__ = ["FAMILIES", "CATEGORIES", "GENEVAL_CATEGORIES", "IMAGE_FAMILIES", "HELDOUT_FRACTION", "Sample",
           "EditTarget", "ObjTarget", "EditOp", "generate", "sample_uid", "vocabulary", "split_of", "spec_key",
           "edit_caption", "parse_edit", "apply_edit", "COUNT_FACTS", "COLOUR_FACTS", "SHAPE_FACTS", "text_fact"]
