"""Training data: JSONL validation, streaming / sharding / resume, mixture ratios, buckets, CFG dropout, configs."""
from __future__ import annotations

import json
import math
import random

import pytest
import torch
from PIL import Image

from thinkgen.errors import ConfigError
from thinkgen.train.config import (CONNECTOR_PATTERNS, DiTTrainConfig, MLLMSFTConfig, load_config, parse_overrides,
                                   stage1, stage2, stage3)
from thinkgen.train.data import (DataError, DiTBatcher, JsonlSource, MixtureDataset, apply_cfg_dropout, bucket_size,
                                 build_mixture, capped_size, check_jsonl, validate_jsonl)


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def make_image(path, w=32, h=32, color=(200, 30, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (w, h), color).save(path)
    return path


@pytest.fixture
def records_file(tmp_path):
    rows = [{"task_type": "t2i", "instruction": f"sample {i}", "output_image": "img.png", "n": i} for i in range(50)]
    make_image(tmp_path / "img.png")
    return write_jsonl(tmp_path / "data.jsonl", rows)


# ------------------------------------------------------------------------------------------------ validation
def test_validator_names_file_line_and_field(tmp_path):
    make_image(tmp_path / "ok.png")
    path = write_jsonl(tmp_path / "bad.jsonl", [
        {"task_type": "t2i", "instruction": "fine", "output_image": "ok.png"},          # 1 ok
        "{not json",                                                                      # 2
        {"task_type": "t2i", "instruction": 3, "output_image": "ok.png"},               # 3
        {"task_type": "edit", "instruction": "x", "output_image": "ok.png"},            # 4 edit without inputs
        {"task_type": "t2i", "instruction": "y"},                                         # 5 no output image
        {"task_type": "t2i", "instruction": "z", "output_image": "missing.png"},        # 6 file missing
        "[1, 2]",                                                                         # 7 not an object
        {"task_type": "t2i", "instruction": "w", "output_image": "ok.png", "think": 5},  # 8 bad think
    ])
    problems = validate_jsonl(path)
    text = "\n".join(problems)
    assert f"{path}:2: not valid JSON" in text
    assert f"{path}:3: field 'instruction'" in text
    assert f"{path}:4: field 'input_images'" in text
    assert f"{path}:5: field 'output_image'" in text
    assert f"{path}:6: field 'output_image'" in text and "missing.png" in text
    assert f"{path}:7: expected a JSON object" in text
    assert f"{path}:8: field 'think'" in text
    assert not any(p.startswith(f"{path}:1:") for p in problems)
    with pytest.raises(DataError, match=r"bad\.jsonl:2") as e:
        check_jsonl(path)
    assert isinstance(e.value, ConfigError)


def test_validator_mllm_purpose(tmp_path):
    make_image(tmp_path / "a.png")
    path = write_jsonl(tmp_path / "u.jsonl", [
        {"task_type": "understanding", "instruction": "what", "input_images": ["a.png"]},   # no answer
        {"task_type": "understanding", "instruction": "what", "input_images": ["a.png"], "answer": "a cat"},
    ])
    assert validate_jsonl(path, purpose="mllm") == [f"{path}:1: field 'answer': required for understanding "
                                                     "samples in MLLM SFT"]
    assert validate_jsonl(tmp_path / "nope.jsonl")[0].endswith("file does not exist")


def test_bad_record_while_streaming_names_line(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"task_type": "t2i", "instruction": "a", "output_image": "x.png"},
                                              {"task_type": "t2i", "output_image": "x.png"}])
    src = JsonlSource(path, shuffle_buffer=1, repeat=False)
    next(src)
    with pytest.raises(DataError, match=r"d\.jsonl:2: field 'instruction'"):
        next(src)


# ------------------------------------------------------------------------------------------------ streaming
def test_relative_paths_resolve_against_the_jsonl_folder(records_file):
    rec = next(JsonlSource(records_file, shuffle_buffer=1))
    assert rec["output_image"] == str(records_file.parent / "img.png")
    assert rec["_line"] == 1 and rec["_file"] == str(records_file)


def test_rank_shards_partition_an_epoch(records_file):
    seen = []
    for rank in range(3):
        src = JsonlSource(records_file, rank=rank, world_size=3, shuffle_buffer=7, repeat=False, seed=1)
        seen += [r["_line"] for r in src]
    assert sorted(seen) == list(range(1, 51))


def test_shuffle_is_seeded_and_epochs_reshuffle(records_file):
    a = [next(s)["_line"] for s in [JsonlSource(records_file, shuffle_buffer=10, seed=3)] for _ in range(100)]
    b = [next(s)["_line"] for s in [JsonlSource(records_file, shuffle_buffer=10, seed=3)] for _ in range(100)]
    c = [next(s)["_line"] for s in [JsonlSource(records_file, shuffle_buffer=10, seed=4)] for _ in range(100)]
    assert a == b and a != c
    assert sorted(a[:50]) == list(range(1, 51)) and sorted(a[50:]) == list(range(1, 51))   # each epoch complete
    assert a[:50] != list(range(1, 51)) and a[:50] != a[50:]


def test_source_state_resumes_exactly_across_epochs(records_file):
    ref = JsonlSource(records_file, shuffle_buffer=8, seed=5, rank=1, world_size=2)
    expected = [next(ref)["_line"] for _ in range(80)]
    src = JsonlSource(records_file, shuffle_buffer=8, seed=5, rank=1, world_size=2)
    first = [next(src)["_line"] for _ in range(37)]
    state = json.loads(json.dumps(src.state_dict()))            # plain data (survives any serialisation)
    fresh = JsonlSource(records_file, shuffle_buffer=8, seed=5, rank=1, world_size=2)
    fresh.load_state_dict(state)
    assert first + [next(fresh)["_line"] for _ in range(43)] == expected
    other_rank = JsonlSource(records_file, rank=0, world_size=2)
    with pytest.raises(ConfigError, match="rank 1/2"):
        other_rank.load_state_dict(state)


def test_state_survives_torch_save_weights_only(records_file, tmp_path):
    from thinkgen.checkpoint import load_state, save_state

    mix = build_mixture([(str(records_file), 1.0), (str(records_file), 2.0)], seed=2, shuffle_buffer=4)
    for _ in range(13):
        next(mix)
    save_state(mix.state_dict(), tmp_path / "s.pt")
    expected = [next(mix)["_line"] for _ in range(20)]
    mix2 = build_mixture([(str(records_file), 1.0), (str(records_file), 2.0)], seed=2, shuffle_buffer=4)
    mix2.load_state_dict(load_state(tmp_path / "s.pt"))
    assert [next(mix2)["_line"] for _ in range(20)] == expected


class _Const:
    """An infinite source yielding its own name (for mixture statistics)."""

    def __init__(self, name):
        self.name = name

    def __next__(self):
        return {"src": self.name}

    def state_dict(self):
        return {}

    def load_state_dict(self, s):
        pass


def test_mixture_ratios_really_apply():
    n = 20000
    mix = MixtureDataset([(_Const("a"), 3.0), (_Const("b"), 1.0), (_Const("c"), 0.5)], seed=0)
    counts = {"a": 0, "b": 0, "c": 0}
    for _ in range(n):
        counts[next(mix)["src"]] += 1
    for name, r in (("a", 3.0), ("b", 1.0), ("c", 0.5)):
        p = r / 4.5
        sd = math.sqrt(p * (1 - p) / n)
        assert abs(counts[name] / n - p) < 5 * sd, (name, counts)


def test_mixture_drops_exhausted_finite_sources(records_file, tmp_path):
    small = write_jsonl(tmp_path / "small.jsonl", [{"task_type": "t2i", "instruction": "s", "output_image": "i.png"}])
    mix = build_mixture([(str(small), 100.0), (str(records_file), 1.0)], repeat=False, shuffle_buffer=3)
    out = list(mix)
    assert len(out) == 51 and mix.counts == [1, 50]
    with pytest.raises(ConfigError, match="ratio"):
        MixtureDataset([(_Const("a"), 0.0)])


# ------------------------------------------------------------------------------------------------ images
@pytest.mark.parametrize("w,h,maxp,side,expected", [
    (32, 32, 1024**2, 2048, (32, 32)),          # never upscale
    (4000, 3000, 1024**2, 2048, (1168, 880)),   # area cap (ratio 0.2956), floor to 16
    (5000, 100, 1024**2, 2048, (2048, 32)),     # side cap (floor 40 -> 32)
    (1030, 1030, 1024**2, 2048, (1024, 1024)),
    (40, 23, 1024**2, 2048, (32, 16)),
])
def test_capped_size_matches_reference(w, h, maxp, side, expected):
    assert capped_size(w, h, maxp, side) == expected


def test_bucket_size_snaps_ratio_without_upscaling():
    w, h = bucket_size(1000, 760, 512 * 512, 2048)
    assert w % 16 == 0 and h % 16 == 0 and w * h <= 512 * 512
    assert abs(w / h - 4 / 3) < 0.05
    w, h = bucket_size(100, 70, 1024**2, 2048)
    assert w <= 100 and h <= 70


def test_batches_have_one_output_size_and_resume_exactly(tmp_path):
    rows = []
    for i, (w, h) in enumerate([(32, 32), (48, 32), (32, 48), (32, 32), (48, 32), (32, 48)] * 3):
        make_image(tmp_path / f"o{i}.png", w, h, (10 * i, 50, 90))
        row = {"task_type": "t2i", "instruction": f"img {i}", "output_image": f"o{i}.png"}
        if i % 4 == 1:
            make_image(tmp_path / f"in{i}.png", 64, 40)
            row.update(task_type="edit", input_images=[f"in{i}.png"])
        rows.append(row)
    path = write_jsonl(tmp_path / "d.jsonl", rows)

    def batcher():
        return DiTBatcher(build_mixture([(str(path), 1.0)], seed=0, shuffle_buffer=5), 2, max_output_pixels=48 * 48,
                          max_input_pixels=[32 * 32], prompt_dropout_prob=0.3, ref_dropout_prob=0.5, seed=0)

    b = batcher()
    batches = [next(b) for _ in range(12)]
    for batch in batches:
        assert batch.images.shape[0] == 2 and batch.images.shape[1] == 3
        assert batch.images.min() >= -1 and batch.images.max() <= 1
        for ins in batch.input_images:
            for x in ins:
                assert x.shape[1] * x.shape[2] <= 32 * 32 and x.shape[1] % 16 == 0 and x.shape[2] % 16 == 0
    assert len({tuple(bb.images.shape[-2:]) for bb in batches}) == 3
    # resume mid-stream (pending buckets included): the next batches are identical
    b1 = batcher()
    for _ in range(5):
        next(b1)
    state = b1.state_dict()
    want = [next(b1) for _ in range(6)]
    b2 = batcher()
    b2.load_state_dict(state)
    got = [next(b2) for _ in range(6)]
    for x, y in zip(want, got):
        assert torch.equal(x.images, y.images) and x.instructions == y.instructions and x.image_keys == y.image_keys


def test_bad_image_error_names_line_and_field(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"not an image at all")
    path = write_jsonl(tmp_path / "d.jsonl", [{"task_type": "t2i", "instruction": "x", "output_image": "broken.png"}])
    b = DiTBatcher(build_mixture([(str(path), 1.0)]), 1)
    with pytest.raises(DataError, match=r"d\.jsonl:1: field 'output_image'"):
        next(b)


# ------------------------------------------------------------------------------------------------ CFG dropout
def test_cfg_dropout_rates_and_refs_only_with_prompt():
    rng = random.Random(0)
    rec = {"instruction": "a cat", "input_images": ["x.png"]}
    n, dropped, refs, refs_without_prompt = 20000, 0, 0, 0
    for _ in range(n):
        out = apply_cfg_dropout(rec, rng, prompt_p=0.2, ref_p=0.5)
        dropped += out["prompt_dropped"]
        refs += out["refs_dropped"]
        refs_without_prompt += out["refs_dropped"] and not out["prompt_dropped"]
        if out["prompt_dropped"]:
            assert out["instruction"] == ""
    assert refs_without_prompt == 0
    assert abs(dropped / n - 0.2) < 0.015
    assert abs(refs / n - 0.1) < 0.012
    assert rec == {"instruction": "a cat", "input_images": ["x.png"]}          # input not mutated
    assert apply_cfg_dropout(rec, rng, 0.0, 1.0)["instruction"] == "a cat"


# ------------------------------------------------------------------------------------------------ configs
@pytest.mark.parametrize("kwargs,field", [
    (dict(lr=-1.0), "lr"), (dict(batch_size=0), "batch_size"), (dict(stage="stage9"), "stage"),
    (dict(max_steps=0), "max_steps"), (dict(betas=(0.9, 1.5)), "betas"), (dict(prompt_dropout_prob=1.5), "prompt_dropout_prob"),
    (dict(lr_schedule="linear"), "lr_schedule"), (dict(parallel="zero3"), "parallel"), (dict(ema_decay=1.0), "ema_decay"),
    (dict(data=[{"path": "a.jsonl", "ratio": 0}]), "data.ratio"), (dict(stage="custom"), "trainable"),
    (dict(lora=True, lora_rank=0), "lora_rank"), (dict(grad_accum_steps=0), "grad_accum_steps"),
])
def test_bad_config_values_refused(kwargs, field):
    with pytest.raises(ConfigError, match=rf"^{field}=") as e:
        DiTTrainConfig(**kwargs)
    assert "e.g." in str(e.value) or "use" in str(e.value) or "give" in str(e.value)


def test_stage_presets():
    assert stage1().trainable == CONNECTOR_PATTERNS and stage1().max_output_pixels == 512 * 512
    assert stage2().trainable == ["*"] and stage3().trainable == ["*"]
    assert stage3().lr < stage2().lr
    lora = stage3(lora=True)
    assert lora.lora_target_modules == ["to_q", "to_k", "to_v", "to_out.0"]
    assert MLLMSFTConfig().lora_target_modules == ["q_proj", "k_proj", "v_proj", "o_proj"]


def test_yaml_and_cli_overrides(tmp_path):
    y = tmp_path / "cfg.yaml"
    y.write_text("stage: stage1\nmodel_dir: m\ndata:\n  - {path: a.jsonl, ratio: 2}\n  - b.jsonl\nlr: 3.0e-4\n")
    cfg = load_config("dit", y, ["--batch_size=4", "--betas=[0.8,0.9]", "--lora=true", "--max-steps=7"])
    assert cfg.stage == "stage1" and cfg.trainable == CONNECTOR_PATTERNS and cfg.max_output_pixels == 512 * 512
    assert [(d.path, d.ratio) for d in cfg.data] == [("a.jsonl", 2.0), ("b.jsonl", 1.0)]
    assert cfg.lr == 3e-4 and cfg.batch_size == 4 and cfg.betas == (0.8, 0.9) and cfg.lora and cfg.max_steps == 7
    y.write_text("lr: 1e-4\nlearning_rate: 2\n")
    with pytest.raises(ConfigError, match="unknown config key 'learning_rate'"):
        load_config("dit", y)
    with pytest.raises(ConfigError, match="batch_size=.*integer"):
        load_config("dit", None, ["--batch_size=two"])
    with pytest.raises(ConfigError, match="not of the form"):
        parse_overrides(["--lr"])
    m = load_config("mllm", None, {"lr": 2e-5, "max_seq_len": 64})
    assert isinstance(m, MLLMSFTConfig) and m.max_seq_len == 64
    with pytest.raises(ConfigError, match="max_seq_len"):
        load_config("mllm", None, {"max_seq_len": 2})
