"""ThinkGen-Nano models, training entry points, evaluation and the shipped checkpoint (fast: tiny sizes)."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from thinkgen.nano import prompts, world
from thinkgen.nano.models import build_nano_tokenizer, nano_defaults
from thinkgen.pipeline import default_model_path
from thinkgen.tokenization import SPECIAL_TOKENS, THINK_TOKENS, check_special_tokens


@pytest.fixture(scope="module")
def tok():
    return build_nano_tokenizer()


def test_tokenizer_specials_come_from_the_tokenizer(tok):
    ids = check_special_tokens(tok)
    assert set(ids) == set(SPECIAL_TOKENS + THINK_TOKENS)
    assert len(set(ids.values())) == len(ids)


def test_tokenizer_vocabulary_words_are_single_tokens(tok):
    for w in prompts.vocabulary():
        assert len(tok.encode(w, add_special_tokens=False)) == 1, w
        if w.isalpha() and w.islower():
            assert len(tok.encode(" " + w, add_special_tokens=False)) == 1, w


def test_tokenizer_round_trips_prompts_and_sign_text(tok):
    texts = []
    for fam in prompts.FAMILIES:
        for s in prompts.generate(fam, 14, seed=5):
            texts += s.texts()
    rng = random.Random(0)
    for _ in range(50):   # unseen sign words tokenise letter by letter
        t = "".join(rng.choice(world.LETTERS) for _ in range(rng.randint(1, 4)))
        texts.append(f'a sign that says "{t}"')
        ids = tok.encode(f'"{t}"', add_special_tokens=False)
        pieces = [tok.decode([i]) for i in ids]
        assert "".join(pieces) == f'"{t}"'
        assert all(len(p.strip('" ')) <= 1 for p in pieces), pieces
    texts.append("two red circles left of a blue square")
    for t in texts:
        assert tok.decode(tok.encode(t, add_special_tokens=False)) == t


def test_sft_template_matches_think_and_chat(tok):
    """The SFT prompt of a generation record is the think-mode prompt minus '<think>\\n'; understanding records use
    exactly the prompt that chat() builds."""
    from thinkgen.mllm import build_prompt
    from thinkgen.train.mllm_sft import sft_texts

    p, a = sft_texts(tok, {"task_type": "t2i", "instruction": "x", "think": "t", "answer": "a red circle"})
    assert p + "<think>\n" == build_prompt(tok, "x", 0, "think")
    assert a == "<think>\nt\n</think>\n\na red circle<|im_end|>"
    p, a = sft_texts(tok, {"task_type": "understanding", "instruction": "how many shapes are there?",
                           "input_images": ["i.png"], "answer": "two"})
    chat = tok.apply_chat_template([{"role": "user", "content": [{"type": "image"},
                                                                 {"type": "text", "text": "how many shapes are there?"}]}],
                                   tokenize=False, add_generation_prompt=True)
    assert p == chat


def test_datasets_are_valid_jsonl(tmp_path):
    from thinkgen.nano.data import write_datasets
    from thinkgen.train.data import validate_jsonl

    paths = write_datasets(tmp_path, 24, 24, seed=3)
    assert validate_jsonl(paths["sft"], purpose="mllm") == []
    assert validate_jsonl(paths["dit"], purpose="dit") == []
    recs = [json.loads(x) for x in paths["sft"].read_text().splitlines()]
    assert {r["family"] for r in recs} == set(prompts.FAMILIES)
    for r in recs:   # the held-out split never appears in training data
        assert r["task_type"] in ("t2i", "edit", "understanding")


def test_dit_think_records_and_family_mix(tmp_path):
    """``think_fraction`` writes ``condition: think`` DiT records (user prompt + teacher-forced thought + the
    canonical instruction); ``dit_mix`` sets the family weights; the default call is unchanged by the option."""
    from thinkgen.nano.data import write_datasets
    from thinkgen.train.data import validate_jsonl

    a = write_datasets(tmp_path / "a", 8, 60, seed=3)
    b = write_datasets(tmp_path / "b", 8, 60, seed=3, think_fraction=0.0)
    assert a["dit"].read_text() == b["dit"].read_text()
    c = write_datasets(tmp_path / "c", 8, 60, seed=3, dit_mix={"text": 1.0, "editing": 1.0}, think_fraction=0.5)
    assert validate_jsonl(c["dit"], purpose="dit") == []
    recs = [json.loads(x) for x in c["dit"].read_text().splitlines()]
    assert {r["family"] for r in recs} <= {"text", "editing", "negative"}
    think = [r for r in recs if r.get("condition") == "think"]
    assert 0 < len(think) < len(recs)
    for r in think:
        assert r["prompt"] and r["think"].endswith(".") and not r["instruction"].startswith("\n")
    with pytest.raises(ValueError, match="think_fraction"):
        write_datasets(tmp_path / "d", 8, 8, think_fraction=1.5)


def test_train_nano_smoke_every_stage_then_eval(tmp_path):
    """`thinkgen train nano --preset smoke`: every stage runs 2 steps on tiny sizes, in the released layout,
    resumable (a rerun skips every stage), then the eval writes JSON, markdown and a grid on 2 samples per family."""
    from thinkgen.nano.train import main

    out = tmp_path / "run"
    assert main(["--out", str(out), "--preset", "smoke", "--jobs", "1"]) == 0
    for st in ("data", "vae", "mllm", "vision_pre", "und_data", "understand", "understand2", "understand3", "dit1",
               "dit2", "focus_data", "dit4", "align", "final", "eval"):
        assert (out / f"{st}.done").is_file(), st
    final = out / "final"
    # the painter is last continued on the final MLLM's own features (align) and that DiT ships
    assert (out / "align_base" / "mllm" / "model.safetensors").read_bytes() == \
        (final / "mllm" / "model.safetensors").read_bytes()
    assert (final / "transformer" / "diffusion_pytorch_model.safetensors").read_bytes() == \
        (out / "align" / "final" / "transformer_ema" / "diffusion_pytorch_model.safetensors").read_bytes()
    # the shipped MLLM is the last eye phase's (focus thoughts with binding words, whose tokens were appended to
    # phase 2's tokenizer before phase 3), trained from phase 2's
    focus = [json.loads(x) for x in (out / "data_und" / "focus" / "vqa.jsonl").read_text().splitlines()]
    from thinkgen.mllm import ThinkGenMLLM
    from thinkgen.nano.vision import BINDING_WORDS

    assert all(any(w in BINDING_WORDS for w in r["think"].split()) for r in focus if r["think"])

    shipped = ThinkGenMLLM.from_pretrained(final / "mllm", final / "processor")
    assert shipped.processor.tokenizer.tokenize(" cyanstar") == [" cyanstar"]
    assert (final / "mllm" / "model.safetensors").read_bytes() == \
        (out / "mllm" / "understand3" / "final" / "mllm" / "model.safetensors").read_bytes()
    for c in ("mllm", "processor", "transformer", "vae", "scheduler"):
        assert (final / c).is_dir()
    idx = json.loads((final / "model_index.json").read_text())
    assert idx["thinkgen_defaults"]["height"] == 64 and idx["thinkgen_defaults"]["think_do_sample"] is False
    res = json.loads((out / "eval" / "results.json").read_text())
    assert {"think_off", "think_on", "understanding"} <= set(res["summary"])
    assert (out / "eval" / "results.md").is_file() and (out / "eval" / "grid.png").is_file()
    assert main(["--out", str(out), "--preset", "smoke", "--jobs", "1"]) == 0     # resumable: all skipped


def test_vae_train_entry_point(tmp_path):
    from thinkgen.nano.vae_train import main

    assert main(["--out", str(tmp_path), "--preset", "smoke", "--steps", "2", "--batch-size", "2",
                 "--check-scenes", "4"]) == 0
    cfg = json.loads((tmp_path / "vae" / "config.json").read_text())
    assert cfg["scaling_factor"] > 0 and cfg["block_out_channels"] == [8, 16, 16]
    rep = json.loads((tmp_path / "vae_report.json").read_text())
    assert 0.0 <= rep["parse_rate"] <= 1.0


SHIPPED = default_model_path()


@pytest.mark.skipif(not (SHIPPED / "model_index.json").is_file(),
                    reason=f"no shipped nano checkpoint at {SHIPPED} (train one with runs/cpu.sh)")
def test_shipped_checkpoint_loads_and_generates():
    from thinkgen.pipeline import ThinkGenPipeline

    size = sum(p.stat().st_size for p in SHIPPED.rglob("*") if p.is_file())
    assert size <= 60 * 2**20
    d = json.loads((SHIPPED / "model_index.json").read_text())["thinkgen_defaults"]
    assert d["height"] == 64 and d["width"] == 64
    pipe = ThinkGenPipeline.from_pretrained()
    out = pipe("two red circles left of a blue square", think="off", height=64, width=64,
               num_inference_steps=4, seed=0)
    assert out.images[0].size == (64, 64)
    out = pipe("as many stars as a triangle has corners", think="on", height=64, width=64, num_inference_steps=2,
               seed=0, max_think_tokens=d["max_think_tokens"], max_answer_tokens=d["max_answer_tokens"],
               think_do_sample=False)
    assert "</think>" in out.thoughts[0] and out.instructions[0]
    assert isinstance(pipe.chat("how many shapes are there?", images=[out.images[0]], max_new_tokens=4), str)
    # understanding looks first: the thoughts describe the image exactly, then the short answer
    from thinkgen.mllm import split_thoughts
    from thinkgen.nano.vision import scene_caption

    scene = world.Scene((world.place("square", "red", "large", (1, 1)),), "AB")
    thoughts, answer = split_thoughts(pipe.chat("what does the sign say?", images=[world.render(scene)],
                                                max_new_tokens=128))
    assert thoughts == scene_caption(scene, binding=True) == "large red square redsquare centre , sign AB"
    assert answer == "AB"
    # phase 3: the thought ends with the question's key (and its binding word) restated next to its slot; the answer
    # is read from there
    from thinkgen.nano.vision import focus_thought

    scene = world.Scene((world.place("square", "red", "large", (0, 0)),
                         world.place("circle", "blue", "small", (1, 2))), "AB")
    thoughts, answer = split_thoughts(pipe.chat("where is the blue circle?", images=[world.render(scene)],
                                                max_new_tokens=128))
    assert thoughts == focus_thought(scene, "where is the blue circle?", binding=True)
    assert thoughts.endswith(" ; blue circle bluecircle middle right")
    assert answer == "middle right"
    thoughts, answer = split_thoughts(pipe.chat("what colour is the circle?", images=[world.render(scene)],
                                                max_new_tokens=128))
    assert thoughts.endswith(" ; circle blue") and answer == "blue"


@pytest.mark.parametrize("argv,needle", [
    (["train", "--set", "focus_think_fraction=2"], "focus_think_fraction=2"),
    (["train", "--set", "bogus=1"], "bogus"),
    (["train", "--set", "dit4_steps=-5"], "dit4_steps=-5"),
    (["train", "--set", "und3_n_qa=0"], "und3_n_qa=0"),
    (["train", "--set", "align_n_dit=0"], "align_n_dit=0"),
    (["train", "--set", "understand3_vqa_ratio=0.95"], "understand3_vqa_ratio=0.95"),
    (["train", "--preset", "smoke", "--set", "understand3_add_layers=2"], "understand3_add_layers=2"),
    (["train", "--set", "understand3_binding=2"], "understand3_binding=2 must be 0 or 1"),
    (["eval", "--n-composition", "-3"], "--n-composition=-3"),
    (["eval", "--seeds", "0"], "--seeds=0"),
])
def test_nano_commands_refuse_bad_numbers_before_writing(tmp_path, capsys, argv, needle):
    from thinkgen.nano.evaluate import main as eval_main
    from thinkgen.nano.train import main as train_main

    out = tmp_path / "out"
    with pytest.raises(SystemExit) as e:
        (train_main if argv[0] == "train" else eval_main)(argv[1:] + ["--out", str(out)])
    assert e.value.code == 2 and needle in capsys.readouterr().err
    assert not out.exists()


def test_expanded_mllm_is_written_once_and_atomically(tmp_path):
    """The recipe's block expansion before phase 3 writes the grown MLLM (+ processor) once; a resumed run reuses it."""
    from thinkgen.mllm import ThinkGenMLLM, build_tiny_mllm
    from thinkgen.nano.train import expanded_mllm
    from thinkgen.processor import ThinkGenProcessor
    from thinkgen.testing import TINY_WORDS
    from thinkgen.tokenization import build_tokenizer

    tok = build_tokenizer(TINY_WORDS)
    start = tmp_path / "start"
    ThinkGenMLLM(build_tiny_mllm(tok, num_layers=3), ThinkGenProcessor(tok)).save_pretrained(
        start / "mllm", start / "processor")
    dst = expanded_mllm(start, tmp_path / "mllm" / "understand3_expanded", 2)
    cfg = json.loads((dst / "mllm" / "config.json").read_text())
    assert cfg["text_config"]["num_hidden_layers"] == 5 and (dst / "processor").is_dir()
    assert sorted(p.name for p in dst.parent.iterdir()) == ["understand3_expanded"]      # no temporary left
    stamp = (dst / "mllm" / "model.safetensors").stat().st_mtime_ns
    assert expanded_mllm(start, dst, 2) == dst
    assert (dst / "mllm" / "model.safetensors").stat().st_mtime_ns == stamp
    # binding tokens (recipe understand3_binding): the tokenizer and both embeddings gain one row per binding word
    from thinkgen.nano.vision import BINDING_WORDS

    bound = expanded_mllm(start, tmp_path / "bound", binding_tokens=True)
    grown = ThinkGenMLLM.from_pretrained(bound / "mllm", bound / "processor")
    assert grown.model.config.text_config.vocab_size == len(tok) + len(BINDING_WORDS)
    assert grown.processor.tokenizer.tokenize(" a cyanstar") == tok.tokenize(" a") + [" cyanstar"]
    with pytest.raises(ValueError, match="nothing to grow"):
        expanded_mllm(start, tmp_path / "none")
