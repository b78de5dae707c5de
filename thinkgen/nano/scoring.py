"""Exact scorers for the nano prompt families, built on the parser.

* ``score(sample, image)`` for image outputs -> ``{"correct": bool, "score": float in [0, 1], "details": {...}}``.
  ``correct`` is the strict benchmark verdict; ``score`` is a partial credit for RL rewards (1.0 iff correct, at most
  0.95 otherwise).

  - composition, GenEval categories: GenEval's rules (evaluation/evaluate_images.py) adapted to shapes. Detection =
    the parser (no confidence, so every parsed object is kept; GenEval's 0.3 / 0.9 score thresholds and 16-object cap
    have no counterpart). For each include group in order: the objects of its kind must number >= count ("expected
    kind>=count"), those with the requested colour (and size, when given) >= count; with a position, every found
    object must stand in the relation (GenEval's ``relative_position``: box centres, 0.1*(dimA+dimB) dead zone, 0.5
    cut) to every found object of the reference group. Deviation: GenEval keeps the top-``count`` detections by
    confidence; we keep all matching objects (stricter, deterministic). counting adds GenEval's exclude rule (no
    count+1 objects of the kind), i.e. the count is exact. Extra objects of other kinds and signs are ignored.
  - composition "compound", reasoning, text, reflection: strict - every group's matching objects number exactly
    ``count``, no other objects, the relation holds for every pair, sign text exact (and no sign when none asked).
  - editing: exact target - every anchored target object at its slot, free ones anywhere, nothing else, sign text
    exact.
* ``score_answer(sample, text)`` for text outputs: understanding (normalised exact answer), reflection / composition /
  reasoning / text (``caption_to_spec(text)`` equivalent to the target spec), editing (the parsed edit applied to the
  input scene gives the target).
* ``caption_to_spec(caption)``: parser of the canonical caption grammar (inverse of ``world.rendered_caption``).
* ``aggregate(records)``: per-family / per-category accuracy, composition overall = unweighted mean of the six GenEval
  categories (GenEval's summary_scores.py rule).
"""
from __future__ import annotations

import re
from collections import defaultdict

from thinkgen.errors import InvalidInputError
from thinkgen.nano.parser import parse
from thinkgen.nano.prompts import (
    GENEVAL_CATEGORIES, EditTarget, Sample, apply_edit, parse_edit, sample_uid)
from thinkgen.nano.world import (
    COLOUR_NAMES, COUNT_WORDS, KINDS, MAX_COUNT, SIZE_NAMES, GroupSpec, Obj, Scene, SceneSpec,
    normalise_text, relative_position)

_K = "|".join(KINDS)
_C = "|".join(COLOUR_NAMES)
_S = "|".join(SIZE_NAMES)
_N = "|".join(["a", "an", "one"] + list(COUNT_WORDS[2:MAX_COUNT + 1]))
_GROUP = re.compile(rf"^({_N})(?: ({_S}))?(?: ({_C}))? ({_K})(s?)$")
_SIGN = re.compile(r'^(?:(.*) and )?a sign that says "([A-Z]{1,4})"$')
_REL_SPLIT = re.compile(r" (left of|right of|above|below|and) ")


def _lower_outside_quotes(text: str) -> str:
    parts = text.split('"')
    return '"'.join(p if i % 2 else p.lower() for i, p in enumerate(parts))


def _group(phrase: str) -> GroupSpec | None:
    m = _GROUP.match(phrase.strip())
    if not m:
        return None
    n = 1 if m.group(1) in ("a", "an", "one") else COUNT_WORDS.index(m.group(1))
    if (n == 1) != (m.group(5) == ""):
        return None
    return GroupSpec(m.group(4), n, m.group(3), m.group(2))


def caption_to_spec(caption: str) -> SceneSpec | None:
    """Parse a canonical caption ("two red circles left of a blue square", 'a sign that says "HI"', ...) into a
    SceneSpec; None when the text is not in the grammar or the spec is invalid. Tolerates case, spacing, spaced sign
    letters ('" H I "') and a final period."""
    if not isinstance(caption, str):
        return None
    t = normalise_text(_lower_outside_quotes(caption)).strip()
    t = re.sub(r"\s*\.\s*$", "", t).strip()
    text = None
    m = _SIGN.match(t)
    if m:
        text = m.group(2)
        t = (m.group(1) or "").strip()
    groups: list[GroupSpec] = []
    rel = None
    if t:
        pieces = _REL_SPLIT.split(t)
        if len(pieces) == 1:
            g = _group(pieces[0])
            if g is None:
                return None
            groups = [g]
        elif len(pieces) == 3:
            g1, g2 = _group(pieces[0]), _group(pieces[2])
            if g1 is None or g2 is None:
                return None
            groups = [g1, g2]
            rel = None if pieces[1] == "and" else pieces[1]
        else:
            return None
    try:
        return SceneSpec(tuple(groups), rel, text)
    except InvalidInputError:
        return None


def spec_equivalent(a: SceneSpec | None, b: SceneSpec | None) -> bool:
    return a is not None and b is not None and a.canonical() == b.canonical()


def _edit_distance(a: str, b: str) -> int:
    from thinkgen.rl.rewards import levenshtein

    return levenshtein(a, b)


def _text_similarity(want: str | None, got: str | None) -> float:
    if want is None:
        return 1.0 if got is None else 0.0
    got = got or ""
    return max(0.0, 1.0 - _edit_distance(want, got) / max(len(want), len(got), 1))


def _ratio(a: int, b: int) -> float:
    return 1.0 if a == b else min(a, b) / max(a, b)


def _finish(correct: bool, parts: list[float], details: dict) -> dict:
    partial = sum(parts) / len(parts) if parts else 0.0
    return {"correct": bool(correct), "score": 1.0 if correct else min(0.95, partial), "details": details}


# --------------------------------------------------------------------------------------------------------------------
# image checks
# --------------------------------------------------------------------------------------------------------------------


def geneval_check(spec: SceneSpec, scene: Scene, exact_count: bool = False) -> dict:
    """GenEval's include/exclude/position rules on a parsed scene (see module doc)."""
    objs = list(scene.objects)
    correct, reasons, parts = True, [], []
    found_groups: list[list[Obj] | None] = []
    for i, g in enumerate(spec.groups):
        of_kind = [o for o in objs if o.kind == g.kind]
        found = [o for o in of_kind if g.matches(o)]
        ok = True
        if len(of_kind) < g.count:
            ok = False
            reasons.append(f"expected {g.kind}>={g.count}, found {len(of_kind)}")
        elif len(found) < g.count:
            ok = False
            reasons.append(f"expected {g.colour or ''} {g.size or ''} {g.kind}>={g.count}, found {len(found)}")
        if exact_count and len(of_kind) >= g.count + 1:
            ok = False
            reasons.append(f"expected {g.kind}<{g.count + 1}, found {len(of_kind)}")
        parts.append(_ratio(len(found), g.count) if not exact_count else
                     min(_ratio(len(found), g.count), _ratio(len(of_kind), g.count)))
        found_groups.append(found if ok else None)
        correct &= ok
    if spec.relation is not None:
        a, b = found_groups
        if a is None or b is None:
            correct = False
            parts.append(0.0)
            reasons.append("position: a group did not match")
        else:
            pairs = [spec.relation in relative_position(x, y) for x in a for y in b]
            if not all(pairs):
                correct = False
                reasons.append(f"expected {spec.relation}")
            parts.append(sum(pairs) / len(pairs))
    return _finish(correct, parts, {"rule": "geneval", "reasons": reasons})


def _assign(spec: SceneSpec, objs: list[Obj]) -> list[list[Obj]]:
    """Objects matching each group; an object matching several groups goes to the most specific one."""
    spec_level = [(g.colour is not None) + (g.size is not None) for g in spec.groups]
    out: list[list[Obj]] = [[] for _ in spec.groups]
    for o in objs:
        cands = [i for i, g in enumerate(spec.groups) if g.matches(o)]
        if cands:
            out[max(cands, key=lambda i: spec_level[i])].append(o)
    return out


def strict_check(spec: SceneSpec, scene: Scene) -> dict:
    """Exact counts per group, no other objects, relation for every pair, exact sign text."""
    objs = list(scene.objects)
    groups = _assign(spec, objs)
    correct, reasons, parts = True, [], []
    for g, found in zip(spec.groups, groups):
        if len(found) != g.count:
            correct = False
            reasons.append(f"expected {g.phrase()}, found {len(found)}")
        parts.append(_ratio(len(found), g.count))
    expected = sum(g.count for g in spec.groups)
    if len(objs) != expected:
        correct = False
        reasons.append(f"expected {expected} objects in all, found {len(objs)}")
    if expected or objs:
        parts.append(_ratio(len(objs), expected) if expected else 0.0)
    if spec.relation is not None:
        a, b = groups
        pairs = [spec.relation in relative_position(x, y) for x in a for y in b]
        if not pairs or not all(pairs):
            correct = False
            reasons.append(f"expected {spec.relation}")
        parts.append(sum(pairs) / len(pairs) if pairs else 0.0)
    text_ok = scene.text == spec.text
    if not text_ok:
        correct = False
        reasons.append(f"expected sign {spec.text!r}, found {scene.text!r}")
    if spec.text is not None or scene.text is not None:
        parts.append(_text_similarity(spec.text, scene.text))
    return _finish(correct, parts, {"rule": "strict", "reasons": reasons, "text_correct": text_ok})


def edit_check(target: EditTarget, scene: Scene) -> dict:
    objs = list(scene.objects)
    left = list(range(len(objs)))
    matched = 0
    reasons = []
    order = sorted(range(len(target.objects)), key=lambda i: target.objects[i].slot is None)  # anchored first
    for ti in order:
        t = target.objects[ti]
        hit = next((j for j in left if t.matches(objs[j])), None)
        if hit is None:
            reasons.append(f"missing {t.colour or ''} {t.kind}" + (f" at {t.slot}" if t.slot else ""))
        else:
            left.remove(hit)
            matched += 1
    if left:
        reasons.append(f"{len(left)} unexpected object(s)")
    text_ok = scene.text == target.text
    if not text_ok:
        reasons.append(f"expected sign {target.text!r}, found {scene.text!r}")
    correct = matched == len(target.objects) and not left and text_ok
    denom = max(len(target.objects), len(objs), 1)
    parts = [matched / denom]
    if target.text is not None or scene.text is not None:
        parts.append(_text_similarity(target.text, scene.text))
    return _finish(correct, parts, {"rule": "edit", "reasons": reasons, "text_correct": text_ok})


def check_scene(sample: Sample, scene: Scene) -> dict:
    """Score an already parsed scene against a sample's target (see ``score``)."""
    if sample.family == "understanding":
        raise InvalidInputError("understanding samples are answered in text: use score_answer(sample, text)")
    if isinstance(sample.target, EditTarget):
        return edit_check(sample.target, scene)
    if not isinstance(sample.target, SceneSpec):
        raise InvalidInputError(f"sample of family {sample.family!r} has no image target")
    if sample.family == "composition" and sample.category in GENEVAL_CATEGORIES:
        return geneval_check(sample.target, scene, exact_count=sample.category == "counting")
    return strict_check(sample.target, scene)


def score(sample: Sample, image) -> dict:
    """Parse ``image`` (PIL image or HxWx3 array) and score it against ``sample``."""
    scene = parse(image)
    out = check_scene(sample, scene)
    out["details"]["parsed"] = scene.to_dict()
    return out


FAILURE_MODES = ("binding", "missing", "count", "colour", "size", "relation", "text", "extra", "edit")


def failure_mode(sample: Sample, scene: Scene, result: dict) -> str | None:
    """What went wrong in a scored image, as one word (None when ``result`` is correct). First match wins:

    ``binding``  a request for two or more kinds where a named kind is missing while another named kind appears more
                 often than asked (the painter drew kind B in kind A's place: "a circle right of a diamond" -> two
                 diamonds); ``missing`` a named kind absent; ``count`` a kind present in the wrong number;
                 ``colour`` / ``size`` the kinds right, an attribute wrong; ``relation`` the groups right, their
                 placement wrong; ``text`` only the sign wrong; ``extra`` only unrequested objects (strict rules);
                 ``edit`` an editing target missed (editing is not broken down further).
    A reading aid for evaluation records (``thinkgen eval nano`` stores it per image), not a benchmark rule.
    """
    if result["correct"]:
        return None
    target = sample.target
    if isinstance(target, EditTarget):
        return "edit"
    if not isinstance(target, SceneSpec):
        raise InvalidInputError(f"sample of family {sample.family!r} has no image target")
    want: dict[str, int] = defaultdict(int)
    for g in target.groups:
        want[g.kind] += g.count
    got: dict[str, int] = defaultdict(int)
    for o in scene.objects:
        got[o.kind] += 1
    absent = [k for k in want if got[k] == 0]
    if absent and len(want) > 1 and any(got[k] > want[k] for k in want if k not in absent):
        return "binding"
    if absent:
        return "missing"
    geneval = sample.family == "composition" and sample.category in GENEVAL_CATEGORIES
    exact = not geneval or sample.category == "counting"
    if any(got[k] < n or (exact and got[k] > n) for k, n in want.items()):
        return "count"
    for attr in ("colour", "size"):
        for g in target.groups:
            want_attr = getattr(g, attr)
            if want_attr is not None and sum(o.kind == g.kind and getattr(o, attr) == want_attr
                                             for o in scene.objects) < g.count:
                return attr
    if target.relation is not None and any("expected " + target.relation == r or r.startswith("position")
                                           for r in result["details"].get("reasons", [])):
        return "relation"
    if scene.text != target.text:
        return "text"
    return "extra"


# --------------------------------------------------------------------------------------------------------------------
# text answers
# --------------------------------------------------------------------------------------------------------------------
_ARTICLES = re.compile(r"^(?:the answer is |it is |it's |there are |there is |the |a |an )+")


def normalise_answer(text: str, category: str = "") -> str:
    """Canonical short answer: sign text -> capital letters only; otherwise lowercase words, no punctuation,
    digits -> number words, leading articles dropped, 'center' -> 'centre'."""
    if text is None:
        return ""
    if category == "text":
        return re.sub(r"[^A-Za-z]", "", text).upper()
    t = normalise_text(text).lower()
    t = re.sub(r"[^a-z0-9 ]", " ", t)
    t = re.sub(r"\b(\d+)\b", lambda m: COUNT_WORDS[int(m.group(1))] if int(m.group(1)) < len(COUNT_WORDS)
               else m.group(1), t)
    t = " ".join(t.split())
    t = _ARTICLES.sub("", t)
    t = t.replace("center", "centre")
    if t in ("middle", "middle middle", "centre middle", "middle centre"):
        t = "centre"
    return t


def score_answer(sample: Sample, text: str) -> dict:
    """Score a text output: the MLLM's answer (understanding), corrected instruction (reflection), painter
    instruction (composition / reasoning / text) or edit instruction (editing)."""
    if sample.family == "understanding":
        want = normalise_answer(sample.answer, sample.category)
        got = normalise_answer(text, sample.category)
        ok = want == got
        return {"correct": ok, "score": 1.0 if ok else 0.0, "details": {"expected": want, "got": got}}
    if sample.family == "editing":
        op = parse_edit(text or "")
        tgt = apply_edit(sample.input_scene, op) if op is not None and sample.input_scene is not None else None
        ok = tgt is not None and isinstance(sample.target, EditTarget) and tgt.key() == sample.target.key()
        return {"correct": ok, "score": 1.0 if ok else 0.0,
                "details": {"parsed": op.__dict__ if op is not None else None}}
    spec = caption_to_spec(text or "")
    ok = spec_equivalent(spec, sample.target if isinstance(sample.target, SceneSpec) else None)
    part = 0.0
    if spec is not None and isinstance(sample.target, SceneSpec):
        part = strict_check(sample.target, _spec_scene(spec))["score"] if not ok else 1.0
    return {"correct": ok, "score": 1.0 if ok else part,
            "details": {"parsed": spec.to_dict() if spec is not None else None}}


def _spec_scene(spec: SceneSpec) -> Scene:
    from thinkgen.nano.world import layout
    try:
        return layout(spec)
    except InvalidInputError:
        return Scene((), spec.text)


# --------------------------------------------------------------------------------------------------------------------
# aggregation
# --------------------------------------------------------------------------------------------------------------------


def aggregate(records) -> dict:
    """records: iterable of (sample, result dict). Returns {family: {"categories": {cat: acc}, "overall": x,
    "n": n, "distinct_prompts": {cat: n}}}; composition overall = mean of the six GenEval category accuracies
    that are present. ``distinct_prompts``: how many different prompts (+ input scenes) each accuracy rests on."""
    acc: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    uids: dict[str, dict[str, set]] = defaultdict(lambda: defaultdict(set))
    for s, r in records:
        acc[s.family][s.category].append(1.0 if r["correct"] else 0.0)
        uids[s.family][s.category].add(sample_uid(s))
    out = {}
    for fam, cats in acc.items():
        per = {c: sum(v) / len(v) for c, v in cats.items()}
        if fam == "composition":
            ge = [per[c] for c in GENEVAL_CATEGORIES if c in per]
            overall = sum(ge) / len(ge) if ge else float("nan")
        else:
            allv = [x for v in cats.values() for x in v]
            overall = sum(allv) / len(allv)
        out[fam] = {"categories": per, "overall": overall, "n": sum(len(v) for v in cats.values()),
                    "distinct_prompts": {c: len(u) for c, u in uids[fam].items()}}
    return out


__all__ = ["score", "score_answer", "check_scene", "caption_to_spec", "spec_equivalent", "geneval_check",
           "strict_check", "edit_check", "normalise_answer", "aggregate", "failure_mode", "FAILURE_MODES"]
