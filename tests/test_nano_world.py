"""ThinkGen-Nano world: renderer, parser round trip, caption grammar, prompt families, split, scorers."""
from __future__ import annotations

import json
import random

import numpy as np
import pytest
from PIL import Image

from thinkgen.errors import InvalidInputError
from thinkgen.nano.parser import parse
from thinkgen.nano.prompts import (
    CATEGORIES, FAMILIES, GENEVAL_CATEGORIES, EditOp, Sample, apply_edit, edit_caption, generate, parse_edit,
    spec_key, split_of, vocabulary)
from thinkgen.nano.scoring import (
    aggregate, caption_to_spec, check_scene, failure_mode, normalise_answer, score, score_answer, spec_equivalent)
from thinkgen.nano.world import (
    COLOURS, KINDS, LETTERS, SIZES, GroupSpec, Obj, Scene, SceneSpec, degrade, join_words, layout, random_scene,
    relative_position, render, rendered_caption, slot_centre, words)


def _key(scene: Scene):
    return sorted((o.kind, o.colour, o.size, o.slot) for o in scene.objects), scene.text


def _obj(kind, colour, slot, size="large"):
    cx, cy = slot_centre(slot)
    return Obj(kind, colour, size, float(cx), float(cy))


def _spec(caption: str) -> SceneSpec:
    spec = caption_to_spec(caption)
    assert spec is not None, caption
    return spec


# ---------------------------------------------------------------------------------------------------- world / render
def test_world_constants():
    assert len(KINDS) >= 5 and len(COLOURS) == 6 and len(SIZES) == 2 and len(LETTERS) == 26
    img = render(Scene())
    assert img.size == (64, 64) and np.all(np.asarray(img) == 255)


def test_canonical_layout_is_deterministic_and_spatial():
    spec = _spec("two red circles left of a blue square")
    a, b = layout(spec), layout(spec)
    assert a == b and np.array_equal(np.asarray(render(a)), np.asarray(render(b)))
    circles = [o for o in a.objects if o.kind == "circle"]
    square = next(o for o in a.objects if o.kind == "square")
    assert len(circles) == 2 and all(o.colour == "red" for o in circles) and square.colour == "blue"
    assert all(o.cx < 32 for o in circles) and square.cx > 32
    assert all("left of" in relative_position(c, square) for c in circles)
    # unspecified colour -> the kind's default colour, unspecified size -> large
    star = layout(_spec("a star")).objects[0]
    assert (star.colour, star.size) == ("yellow", "large")


def test_random_layout_satisfies_spec():
    rng = random.Random(0)
    for caption in ["three small green triangles above two stars", "a circle right of a diamond",
                    'two blue squares and a sign that says "HI"', "six purple stars"]:
        spec = _spec(caption)
        for _ in range(5):
            sc = layout(spec, rng, jitter=2)
            assert check_scene(_composition_sample(spec), sc)["correct"], (caption, sc)


def test_layout_rejects_impossible_specs():
    with pytest.raises(InvalidInputError):
        layout(SceneSpec((GroupSpec("circle", 4), GroupSpec("square", 1)), "left of"))
    with pytest.raises(InvalidInputError):
        SceneSpec((GroupSpec("circle", 7),))
    with pytest.raises(InvalidInputError):
        SceneSpec((), None, "TOOLONG")


def test_geneval_relative_position_rule():
    a, b = _obj("circle", "red", (0, 0)), _obj("square", "blue", (1, 1))
    assert relative_position(a, b) == {"left of", "above"}  # diagonal -> two relations
    assert relative_position(b, a) == {"right of", "below"}
    c = Obj("circle", "red", "large", 32.0, 32.0)
    d = Obj("square", "blue", "large", 35.0, 32.0)  # offset 3 < 0.1 * (18 + 18): dead zone
    assert relative_position(c, d) == set()


# ---------------------------------------------------------------------------------------------------------- parser
def test_parser_round_trip_clean():
    rng = random.Random(2024)
    n, ok = 500, 0
    for _ in range(n):
        sc = random_scene(rng, jitter=3, unique=False, text_prob=0.3)
        ok += _key(parse(render(sc))) == _key(sc)
    assert ok / n >= 0.995, ok / n  # measured 1.000 (2,000 scenes)


def test_parser_round_trip_degraded():
    """Gaussian blur radius 1, additive noise sigma 10/255, JPEG quality 75."""
    rng = random.Random(7)
    n, ok = 300, 0
    for _ in range(n):
        sc = random_scene(rng, jitter=3, unique=False, text_prob=0.3)
        ok += _key(parse(degrade(render(sc), rng))) == _key(sc)
    assert ok / n >= 0.98, ok / n  # measured 0.998 (2,000 scenes)


def test_parser_boxes_and_inputs():
    sc = Scene((_obj("triangle", "green", (0, 2)), _obj("star", "cyan", (1, 0), "small")), "QZ")
    img = render(sc)
    for inp in (img, np.asarray(img), np.asarray(img).astype(np.float32) / 255.0, img.resize((256, 256))):
        p = parse(inp)
        assert _key(p) == _key(sc)
    p = parse(img)
    for o, q in zip(sorted(sc.objects, key=lambda o: o.kind), sorted(p.objects, key=lambda o: o.kind)):
        assert abs(o.cx - q.cx) < 1.0 and abs(o.cy - q.cy) < 1.0 and abs(o.s - q.s) < 1.5
    assert parse(render(Scene())) == Scene()
    # an off-white, darker image (generated backgrounds drift) is white-balanced first
    dark = Image.fromarray((np.asarray(img).astype(np.float64) * 0.85).astype(np.uint8))
    assert _key(parse(dark)) == _key(sc)


# ------------------------------------------------------------------------------------------------- caption grammar
def test_caption_grammar_round_trip():
    for fam in ("composition", "reasoning", "text"):
        for s in generate(fam, 40, seed=1):
            spec = caption_to_spec(s.instruction)
            assert spec == s.target and rendered_caption(spec) == s.instruction
    assert caption_to_spec('A RED circle and a sign that says " H I ".') == \
        SceneSpec((GroupSpec("circle", 1, "red"),), None, "HI")
    assert spec_equivalent(_spec("a circle right of a square"), _spec("a square left of a circle"))
    assert spec_equivalent(_spec("a red star and a blue circle"), _spec("a blue circle and a red star"))
    for bad in ["two red circle", "a red circles", "seven stars", "a purple hexagon", "a circle near a square", ""]:
        assert caption_to_spec(bad) is None, bad


def test_words_and_join_words():
    t = 'a bird has two legs. so two red circles, all "OK"?'
    assert words(t) == ["a", "bird", "has", "two", "legs", ".", "so", "two", "red", "circles", ",", "all", '"', "O",
                        "K", '"', "?"]
    assert join_words(words(t)) == t


# ------------------------------------------------------------------------------------------------------ generators
def test_generators_deterministic_and_seeded():
    for fam in FAMILIES:
        a = [s.to_dict() for s in generate(fam, 14, seed=11)]
        b = [s.to_dict() for s in generate(fam, 14, seed=11)]
        c = [s.to_dict() for s in generate(fam, 14, seed=12)]
        assert a == b and a != c, fam
        assert {s["category"] for s in a} == set(CATEGORIES[fam])


def test_sample_json_round_trip():
    for fam in FAMILIES:
        for s in generate(fam, 8, seed=2):
            d = json.loads(json.dumps(s.to_dict()))
            s2 = Sample.from_dict(d)
            assert s2.to_dict() == s.to_dict()
            if s.has_image_output:
                assert np.array_equal(np.asarray(s2.target_image()), np.asarray(s.target_image()))


def test_train_heldout_disjoint():
    train_spec_keys: set[str] = set()
    held_spec_keys: set[str] = set()
    for fam in FAMILIES:
        tr = generate(fam, 140, seed=0, split="train")
        he = generate(fam, 70, seed=0, split="heldout")
        assert all(s.split == "train" and split_of(s.key) == "train" for s in tr)
        assert all(s.split == "heldout" and split_of(s.key) == "heldout" for s in he)
        assert not {s.key for s in tr} & {s.key for s in he}, fam
        assert {s.category for s in he} == set(CATEGORIES[fam])  # every category has held-out items
        for s in tr + he:
            if isinstance(s.target, SceneSpec):
                assert s.key == spec_key(s.target)
                (train_spec_keys if s.split == "train" else held_spec_keys).add(s.key)
    # a held-out image target is never a training target in any family (equivalent specs share a key)
    assert not train_spec_keys & held_spec_keys


def test_vocabulary_covers_generated_text():
    vocab = set(vocabulary())
    assert {"circle", "circles", "red", "left", "A", "Z", '"', ".", "?"} <= vocab
    for fam in FAMILIES:
        for split in ("train", "heldout"):
            for s in generate(fam, 70, seed=5, split=split):
                for t in s.texts():
                    assert set(words(t)) <= vocab, (t, set(words(t)) - vocab)
                    assert join_words(words(t)) == t


def test_reasoning_think_derives_answer():
    for s in generate("reasoning", 25, seed=3):
        assert s.think.endswith(f"so {s.instruction}.") and s.prompt != s.instruction
        spec = caption_to_spec(s.instruction)
        if s.category == "count_knowledge":  # "a stool has three legs. so three blue squares."
            n = spec.groups[0].count
            assert f"has {['', 'one', 'two', 'three', 'four', 'five', 'six'][n]} " in s.think
            assert s.instruction.split()[0] not in s.prompt.split()[:1]  # the count is not in the prompt's head
        if s.category == "colour_knowledge":
            assert spec.groups[0].colour in s.think and spec.groups[0].colour not in s.prompt.split()


# ---------------------------------------------------------------------------------------------------------- scorers
def _composition_sample(spec: SceneSpec, category: str = "compound") -> Sample:
    return Sample("composition", category, rendered_caption(spec), rendered_caption(spec), "", spec)


def _scene(*objs, text=None):
    return Scene(tuple(objs), text)


def test_scorer_counting():
    s = _composition_sample(_spec("three stars"), "counting")
    three = [_obj("star", "yellow", sl) for sl in [(1, 0), (1, 1), (1, 2)]]
    assert check_scene(s, _scene(*three))["correct"]
    four = _scene(*three, _obj("star", "red", (0, 0)))
    r = check_scene(s, four)
    assert not r["correct"] and 0 < r["score"] < 1  # GenEval exclude rule: count+1 is wrong
    assert not check_scene(s, _scene(*three[:2]))["correct"]
    assert check_scene(s, _scene(*three, _obj("circle", "red", (0, 0))))["correct"]  # other kinds are ignored
    # image path
    assert score(s, render(_scene(*three)))["correct"] and not score(s, render(four))["correct"]


def test_scorer_colours_and_attribution():
    s = _composition_sample(_spec("a green diamond"), "colors")
    assert check_scene(s, _scene(_obj("diamond", "green", (1, 1))))["correct"]
    assert not check_scene(s, _scene(_obj("diamond", "cyan", (1, 1))))["correct"]
    s = _composition_sample(_spec("a red circle and a blue square"), "color_attr")
    good = _scene(_obj("circle", "red", (1, 0)), _obj("square", "blue", (1, 2)))
    swapped = _scene(_obj("circle", "blue", (1, 0)), _obj("square", "red", (1, 2)))
    assert check_scene(s, good)["correct"] and not check_scene(s, swapped)["correct"]
    s = _composition_sample(_spec("a small red circle"), "colors")
    assert not check_scene(s, _scene(_obj("circle", "red", (1, 1), "large")))["correct"]


def test_scorer_position():
    s = _composition_sample(_spec("a circle left of a square"), "position")
    assert check_scene(s, _scene(_obj("circle", "red", (1, 0)), _obj("square", "blue", (1, 2))))["correct"]
    r = check_scene(s, _scene(_obj("circle", "red", (1, 2)), _obj("square", "blue", (1, 0))))
    assert not r["correct"] and "expected left of" in r["details"]["reasons"]
    assert not check_scene(s, _scene(_obj("circle", "red", (0, 1)), _obj("square", "blue", (2, 1))))["correct"]
    assert not check_scene(s, _scene(_obj("circle", "red", (1, 0))))["correct"]  # reference group missing
    s = _composition_sample(_spec("two stars above a diamond"), "compound")
    sc = _scene(_obj("star", "red", (0, 0)), _obj("star", "red", (0, 2)), _obj("diamond", "red", (2, 1)))
    assert check_scene(s, sc)["correct"]
    sc2 = _scene(_obj("star", "red", (0, 0)), _obj("star", "red", (2, 2)), _obj("diamond", "red", (1, 1)))
    assert not check_scene(s, sc2)["correct"]  # every star must be above the diamond


def test_scorer_strict_and_text():
    s = Sample("reasoning", "count_knowledge", "as many yellow stars as a triangle has corners", "three yellow stars",
               "a triangle has three corners. so three yellow stars.", _spec("three yellow stars"))
    three = [_obj("star", "yellow", sl) for sl in [(1, 0), (1, 1), (1, 2)]]
    assert check_scene(s, _scene(*three))["correct"]
    r = check_scene(s, _scene(*three, _obj("circle", "red", (0, 0))))
    assert not r["correct"] and r["score"] < 1  # strict: nothing else may be drawn
    assert not check_scene(s, _scene(*three[:2], _obj("star", "green", (1, 2))))["correct"]
    t = Sample("text", "literal", "", "", "", _spec('a sign that says "CAT"'))
    assert score(t, render(Scene((), "CAT")))["correct"]
    r = score(t, render(Scene((), "CAR")))
    assert not r["correct"] and r["score"] == pytest.approx(2 / 3)
    assert not score(t, render(Scene()))["correct"]
    assert not score(t, render(Scene((_obj("star", "red", (0, 0)),), "CAT")))["correct"]  # nothing else allowed


def test_failure_mode_names_what_went_wrong():
    def mode(sample, *objs, text=None):
        scene = Scene(tuple(objs), text)
        return failure_mode(sample, scene, check_scene(sample, scene))

    pos = _composition_sample(_spec("a circle right of a diamond"), "position")
    assert mode(pos, _obj("diamond", "red", (1, 0)), _obj("circle", "blue", (1, 2))) is None
    # the painter's typical error: the second-named kind drawn in the first one's place
    assert mode(pos, _obj("diamond", "red", (1, 0)), _obj("diamond", "blue", (1, 2))) == "binding"
    assert mode(pos, _obj("diamond", "red", (1, 0)), _obj("square", "blue", (1, 2))) == "missing"
    assert mode(pos, _obj("circle", "red", (1, 0)), _obj("diamond", "blue", (1, 2))) == "relation"
    cnt = _composition_sample(_spec("three stars"), "counting")
    assert mode(cnt, *[_obj("star", "red", (1, c)) for c in range(2)]) == "count"
    assert mode(cnt, *[_obj("star", "red", (r, c)) for r in (0, 1) for c in range(2)]) == "count"   # exact
    col = _composition_sample(_spec("a red circle and a blue square"), "color_attr")
    assert mode(col, _obj("circle", "blue", (1, 0)), _obj("square", "red", (1, 2))) == "colour"
    big = _composition_sample(_spec("a small red circle"), "colors")
    assert mode(big, _obj("circle", "red", (1, 1), "large")) == "size"        # the colour is right
    strict = Sample("reasoning", "count_knowledge", "", "", "", _spec("three yellow stars"))
    three = [_obj("star", "yellow", (1, c)) for c in range(3)]
    assert mode(strict, *three, _obj("circle", "red", (0, 0))) == "extra"
    sign = Sample("text", "literal", "", "", "", _spec('a sign that says "CAT"'))
    assert mode(sign, text="CAR") == "text"
    from thinkgen.nano.evaluate import failure_counts

    recs = [{"think": "off", "family": "composition", "category": "position", "failure": f}
            for f in ("binding", "binding", "relation", None)]
    assert failure_counts(recs) == {"think_off": {"composition/position": {"binding": 2, "relation": 1}}}


def test_scorer_editing():
    sc = Scene((_obj("circle", "red", (0, 0)), _obj("square", "blue", (1, 1))))
    op = parse_edit("make the red circle green")
    assert op == EditOp("recolour", "circle", "red", new_colour="green")
    tgt = apply_edit(sc, op)
    s = Sample("editing", "recolour", edit_caption(op), edit_caption(op), "", tgt, sc)
    assert score(s, render(tgt.scene))["correct"]
    assert not score(s, render(sc))["correct"]  # unchanged input
    moved = Scene((_obj("circle", "green", (0, 1)), _obj("square", "blue", (1, 1))))
    assert not check_scene(s, moved)["correct"]  # anchored object moved
    add = apply_edit(sc, parse_edit("add two yellow stars"))
    s2 = Sample("editing", "add", "", "", "", add, sc)
    anywhere = Scene(sc.objects + (_obj("star", "yellow", (2, 2)), _obj("star", "yellow", (2, 0))))
    assert check_scene(s2, anywhere)["correct"]  # unanchored additions may go to any free slot
    assert score_answer(s, "make the red circle green")["correct"]
    assert not score_answer(s, "make the red circle blue")["correct"]
    assert apply_edit(sc, parse_edit("remove the green circle")) is None
    assert parse_edit("paint everything") is None


def test_scorer_answers():
    u = Sample("understanding", "count", "how many stars are there?", question="q", answer="three")
    assert score_answer(u, "3")["correct"] and score_answer(u, "Three.")["correct"]
    assert not score_answer(u, "four")["correct"]
    w = Sample("understanding", "where", "q", answer="centre")
    assert score_answer(w, "the center")["correct"]
    t = Sample("understanding", "text", "q", answer="CAT")
    assert score_answer(t, '"C A T"')["correct"] and not score_answer(t, "CAR")["correct"]
    r = next(s for s in generate("reflection", 14, seed=1) if s.category == "count")
    assert score_answer(r, r.answer)["correct"]
    assert not score_answer(r, r.meta["shown"])["correct"]
    assert normalise_answer("It is Yes!") == "yes"


def test_ground_truth_images_score_correct():
    rng = random.Random(0)
    records, degraded_ok = [], []
    for fam in FAMILIES:
        for s in generate(fam, 14, seed=9, split="heldout"):
            if fam == "understanding":
                assert score_answer(s, s.answer)["correct"]
                continue
            res = score(s, s.target_image())
            assert res["correct"], (s.instruction, res)
            assert res["score"] == 1.0
            records.append((s, res))
            if fam == "reflection":
                bad = score(s, s.input_image())
                assert bad["correct"] == (s.category == "correct"), s.meta
            if fam in ("composition", "reasoning", "text"):
                degraded_ok.append(score(s, degrade(s.target_image(rng), rng))["correct"])
    assert sum(degraded_ok) >= 0.9 * len(degraded_ok)
    agg = aggregate(records)
    assert agg["composition"]["overall"] == 1.0
    assert set(agg["composition"]["categories"]) >= set(GENEVAL_CATEGORIES)


def test_understanding_answers_match_scene():
    for s in generate("understanding", 40, seed=4):
        sc = s.input_scene
        if s.category == "text":
            assert s.answer == sc.text
        if s.category == "count" and s.question == "how many shapes are there?":
            assert normalise_answer(s.answer) == normalise_answer(str(len(sc.objects)))
        assert _key(parse(s.input_image())) == _key(sc)


def test_eval_repeats_draw_new_noise_and_specs_are_counted():
    """Held-out two_object has 2 specs: 10 prompts repeat them, and each repeat gets new seeds (not the same images
    counted again); the summary says how many distinct prompts each accuracy rests on."""
    from thinkgen.nano.evaluate import sample_seeds
    from thinkgen.nano.prompts import sample_uid

    samples = generate("composition", 10, seed=1234, split="heldout", categories=("two_object",))
    uids = [sample_uid(s) for s in samples]
    first = sample_seeds(samples, seeds=2, base=5)
    pairs = [(u, f + j) for u, f in zip(uids, first) for j in range(2)]
    assert len(set(pairs)) == len(pairs)                       # no (prompt, seed) image drawn twice
    assert first[0] == 5 and len(set(uids)) < len(uids)
    agg = aggregate([(s, {"correct": True}) for s in samples])
    assert agg["composition"]["distinct_prompts"] == {"two_object": len(set(uids))}
