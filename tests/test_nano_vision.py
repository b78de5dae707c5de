"""Nano vision pretraining targets, the understanding-stage data, and think-then-answer scoring."""
from __future__ import annotations

import json
import random
from pathlib import Path

import torch

from thinkgen.nano import world as W
from thinkgen.nano.vision import (CAPTION_QUESTION, cell_targets, focus_thought, pretrain_vision, scene_caption,
                                  slot_targets, write_understanding_data)

K, C, S, L = (lambda name: 1 + W.KINDS.index(name)), (lambda c: 1 + W.COLOUR_NAMES.index(c)), \
    (lambda s: 1 + W.SIZE_NAMES.index(s)), (lambda ch: 1 + W.LETTERS.index(ch))


def scene():
    return W.Scene((W.place("square", "red", "large", (0, 0)), W.place("circle", "blue", "small", (1, 2))), "AB")


def test_cell_targets_label_the_covering_object_and_letter():
    t = cell_targets(scene(), 4)                       # 16 px cells, row-major
    assert t.shape == (16, 4)
    assert t[0].tolist() == [K("square"), C("red"), S("large"), 0]          # the square covers cell (0, 0)
    assert t[15].tolist() == [0, 0, 0, 0]                                     # bottom-right corner: nothing
    circle_cell = 2 * 4 + 3                            # circle centre (53, 32): column 3, the row below y = 32
    assert t[circle_cell, :3].tolist() == [K("circle"), C("blue"), S("small")]
    # sign "AB" is centred: A at x 21..30, B at x 33..42, rows 47..60 -> mostly row 3, columns 1 and 2
    assert t[3 * 4 + 1, 3].item() == L("A") and t[3 * 4 + 2, 3].item() == L("B")
    assert (t[:, 3] > 0).sum() <= 6 and not (t[:8, 3] > 0).any()           # letters only in the bottom rows
    g2 = cell_targets(scene(), 2)                      # coarser grid: the square's quadrant is top left
    assert g2[0, :3].tolist() == [K("square"), C("red"), S("large")]


def test_slot_targets_and_caption():
    t = slot_targets(scene())
    assert t.shape == (9 + W.MAX_TEXT, 4)
    assert t[0, :3].tolist() == [K("square"), C("red"), S("large")]
    assert t[5, :3].tolist() == [K("circle"), C("blue"), S("small")]
    assert (t[[1, 2, 3, 4, 6, 7, 8]] == 0).all()
    assert t[9:, 3].tolist() == [L("A"), L("B"), 0, 0]
    assert scene_caption(scene()) == "large red square top left , small blue circle middle right , sign AB"
    assert scene_caption(W.Scene((W.place("star", "green", "small", (1, 1)),))) == "small green star centre"


def test_pretrain_vision_trains_only_the_tower_and_reports_probe_accuracy():
    from thinkgen.nano.models import build_mllm, build_nano_tokenizer, sizes

    mllm = build_mllm(build_nano_tokenizer(), sizes("smoke"), seed=0)
    before = {k: v.clone() for k, v in mllm.model.state_dict().items()}
    mllm.model.requires_grad_(False)
    acc = pretrain_vision(mllm, steps=3, batch_size=4, n_heldout=8, log_every=0)
    assert set(acc) == {f"{w}_{h}" for w in ("token", "slot") for h in ("kind", "colour", "size", "letter")}
    assert all(0.0 <= v <= 1.0 for v in acc.values())
    after = mllm.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("model.visual.") for k in changed)
    assert not any(p.requires_grad for p in mllm.model.parameters())         # requires_grad flags restored


def test_focus_thought_restates_the_key_next_to_its_answer():
    cap = scene_caption(scene())
    assert focus_thought(scene(), "where is the blue circle?") == cap + " ; blue circle middle right"
    assert focus_thought(scene(), "is there a red square ?") == cap + " ; red square top left"
    assert focus_thought(scene(), "is there a red circle?") == cap + " ; red circle none"
    assert focus_thought(scene(), "what shape is the red object?") == cap + " ; red square"
    assert focus_thought(scene(), "what colour is the circle?") == cap + " ; circle blue"
    assert focus_thought(scene(), "is the red square small or large?") == cap + " ; red square large"
    assert focus_thought(scene(), "how many squares are there?") == cap + " ; red square"
    assert focus_thought(scene(), "how many green shapes are there?") == cap + " ; none"
    assert W.relative_position(scene().objects[0], scene().objects[1]) == {"left of"}
    assert focus_thought(scene(), "is the red square left of the blue circle?") == \
        cap + " ; red square top left ; blue circle middle right ; left of yes , right of no , above no , below no ; left of yes"
    assert focus_thought(scene(), "is the red square below the green circle?") == \
        cap + " ; red square top left ; green circle none ; none"
    for q in ("how many shapes are there?", "what does the sign say?"):
        assert focus_thought(scene(), q) == cap


def test_binding_words_bind_colour_and_kind_in_caption_and_keys():
    from thinkgen.nano.vision import BINDING_WORDS, binding_word

    assert binding_word("cyan", "star") == "cyanstar" and BINDING_WORDS["cyanstar"] == "cyan star"
    assert len(BINDING_WORDS) == len(W.COLOUR_NAMES) * len(W.KINDS)
    cap = scene_caption(scene(), binding=True)
    assert cap == "large red square redsquare top left , small blue circle bluecircle middle right , sign AB"
    assert focus_thought(scene(), "where is the blue circle?", binding=True) == \
        cap + " ; blue circle bluecircle middle right"
    assert focus_thought(scene(), "is there a red circle?", binding=True) == cap + " ; red circle redcircle none"
    assert focus_thought(scene(), "is the red square small or large?", binding=True) == \
        cap + " ; red square redsquare large"
    assert focus_thought(scene(), "how many squares are there?", binding=True) == cap + " ; redsquare"
    assert focus_thought(scene(), "how many green shapes are there?", binding=True) == cap + " ; none"
    assert focus_thought(scene(), "is the red square left of the blue circle?", binding=True) == \
        cap + " ; red square redsquare top left ; blue circle bluecircle middle right ; left of yes , right of no , " \
        "above no , below no ; left of yes"
    assert focus_thought(scene(), "what does the sign say?", binding=True) == cap


def test_understanding_data_focus_thoughts(tmp_path):
    from thinkgen.nano.prompts import generate

    paths = write_understanding_data(tmp_path / "und", 40, 0, seed=3, focus=True)
    vqa = [json.loads(x) for x in paths["vqa"].read_text().splitlines()]
    samples = generate("understanding", 40, seed=3, split="train")
    assert [r["instruction"] for r in vqa] == [s.question for s in samples]
    assert [r["think"] for r in vqa] == [focus_thought(s.input_scene, s.question) for s in samples]
    assert any(" ; " in r["think"] for r in vqa)
    bound = write_understanding_data(tmp_path / "bound", 40, 0, seed=3, focus=True, binding=True)
    vqa = [json.loads(x) for x in bound["vqa"].read_text().splitlines()]
    assert [r["think"] for r in vqa] == [focus_thought(s.input_scene, s.question, True) for s in samples]


def test_understanding_data_category_order_weights_the_share(tmp_path):
    paths = write_understanding_data(tmp_path / "und", 30, 0, seed=3, focus=True,
                                     categories=("count", "count", "exists"))
    cats = [json.loads(x)["category"] for x in paths["vqa"].read_text().splitlines()]
    assert cats.count("count") == 20 and cats.count("exists") == 10


def test_understanding_data_thinks_in_captions(tmp_path):
    from thinkgen.nano.data import write_datasets

    src = write_datasets(tmp_path / "data", 40, 4, seed=0)["sft"]
    paths = write_understanding_data(tmp_path / "und", 12, 5, seed=3, sft_jsonl=src)
    vqa = [json.loads(x) for x in paths["vqa"].read_text().splitlines()]
    assert len(vqa) == 12 and all(r["task_type"] == "understanding" and r["think"] and r["answer"] for r in vqa)
    from thinkgen.nano.parser import parse
    from PIL import Image

    for r in vqa[:4]:                                  # the think trace describes the record's own image
        img = Image.open(paths["vqa"].parent / r["input_images"][0])
        assert r["think"] == scene_caption(parse(img))
    caps = [json.loads(x) for x in paths["captions"].read_text().splitlines()]
    assert len(caps) == 5 and all(r["instruction"] == CAPTION_QUESTION and r["answer"] for r in caps)
    gen = [json.loads(x) for x in paths["sft_gen"].read_text().splitlines()]
    n_gen = sum(json.loads(x)["task_type"] != "understanding" for x in Path(src).read_text().splitlines())
    assert len(gen) == n_gen and all(r["task_type"] != "understanding" for r in gen)
    for r in gen:
        for p in r.get("input_images", []) + ([r["output_image"]] if r.get("output_image") else []):
            assert Path(p).is_absolute() and Path(p).is_file()


def test_split_thoughts():
    from thinkgen.mllm import split_thoughts

    assert split_thoughts("<think>\nsmall red square centre\n</think>\n\nred") == ("small red square centre", "red")
    assert split_thoughts("red") == ("", "red")
    assert split_thoughts("<think>\na\n</think>") == ("a", "")


def test_training_scenes_are_seeded():
    from thinkgen.nano.vision import random_training_scene

    a = [random_training_scene(random.Random(4)).signature() for _ in range(2)]
    assert a[0] == a[1]
