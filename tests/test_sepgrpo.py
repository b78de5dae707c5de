"""SepGRPO: configs, prompts, rollouts, on-policy ratios, updates, export, resume after kills.

Everything runs on the tiny random pipeline at 32x32 with 2-3 steps and G = 2-3. Rewards are deterministic toys
(image brightness, answer length) so the maths-sensitive checks do not depend on a scorer.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from thinkgen.checkpoint import FaultInjected
from thinkgen.errors import ConfigError
from thinkgen.rl.config import load_config
from thinkgen.rl.rewards import REWARDS, register_reward
from thinkgen.rl.rollout import PromptItem, PromptMixture, derive_seed, load_jsonl_prompts, plan_micro_batches


# ----------------------------------------------------------------------------------------------- toy rewards
class ToyBrightness:
    """Mean pixel value in [0, 1]."""

    def __call__(self, images, prompts, meta):
        return torch.tensor([float(np.asarray(im, dtype=np.float32).mean() / 255.0) for im in images])


class ToyConstant:
    """Every sample ties: no group carries a learning signal."""

    def __call__(self, images, prompts, meta):
        return torch.full((len(images),), 0.5)


class ToyAnswerLength:
    """Characters of the painter's instruction / 10."""

    def __call__(self, images, prompts, meta):
        return torch.tensor([len(m.get("instruction", "")) / 10.0 for m in meta])


for _name, _cls in (("toy_brightness", ToyBrightness), ("toy_answer_length", ToyAnswerLength),
                    ("toy_constant", ToyConstant)):
    if _name not in REWARDS:      # this module is also imported by the 2-process run (reward_modules)
        register_reward(_name)(_cls)

PROMPTS = [
    {"scenario": "composition", "prompt": "two red circles left of a blue square"},
    {"scenario": "composition", "prompt": "a green triangle"},
    {"scenario": "reasoning", "prompt": "as many stars as a square has sides"},
]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models on a shared 2-core machine: one intra-op thread is ~10x faster than two contended ones."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("prompts") / "prompts.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in PROMPTS))
    return p


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = {**out[k], **v} if k in ("mllm", "dit") else v
    return out


def tiny_values(ckpt, out, prompts, **over) -> dict:
    base = dict(
        model_dir=str(ckpt), output_dir=str(out), train_prompts=str(prompts), device="cpu", progress=False,
        reward_weights={"toy_brightness": 1.0, "toy_answer_length": 1.0}, eval_before=False, save_every=0,
        mllm=dict(steps=1, prompts_per_step=2, group_size=2, max_think_tokens=4, max_answer_tokens=3,
                  render_steps=2, render_resolution=32, micro_batch_size=4, lr=1e-3),
        dit=dict(steps=1, prompts_per_step=1, group_size=3, num_steps=3, resolution=32, think="off",
                 micro_batch_size=3, lr=1e-3, timestep_fraction=0.7),
    )
    return _merge(base, over)


def tiny_cfg(ckpt, out, prompts, **over):
    return load_config(None, tiny_values(ckpt, out, prompts, **over))


def _snapshot(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


# ----------------------------------------------------------------------------------------------- configs
BAD = [
    ({"mllm": {"group_size": 1}}, "GRPO needs >= 2 samples per prompt"),
    ({"dit": {"group_size": 1}}, "GRPO needs >= 2 images per prompt"),
    ({"dit": {"noise_level": 0.0}}, "Flow-GRPO needs SDE noise"),
    ({"schedule": ["mllm", "vae"]}, "schedule"),
    ({"mllm": {"lora_dropout": 0.1}}, "on-policy ratio"),
    ({"dit": {"train_timesteps": "window", "window_range": [2, 3], "window_size": 2}}, "window_range"),
    ({"prompt_source": "nano"}, "source nano needs at least one family"),
    ({"reward_weights": {}}, "has no reward"),
    ({"mllm": {"temperature": 0.0}}, "greedy groups would be tied"),
    ({"mllm": {"features_from": "dit"}}, "features_from"),
    ({"mllm": {"dual_clip": 0.5}}, "dual_clip"),
    ({"dit": {"adv_std": "batch"}}, "adv_std"),
    ({"dit": {"sde_type": "ode"}}, "sde_type"),
    ({"rounds": 0}, "rounds"),
    ({"parallel": "deepspeed"}, "parallel"),
    ({"parallel": "fsdp2", "mllm": {"freeze_vision": False}}, "vision tower is replicated"),
    ({"mllm": {"group_sise": 4}}, "did you mean group_size"),
    ({"mllm": {"group_size": "four"}}, "expected an integer"),
    ({"allow_config_change": ["mllm.nope"]}, "not a config field"),
    ({"mllm": {"anchor_weight": -1.0}}, "anchor_weight"),
    ({"mllm": {"anchor_prompts_per_step": 0}}, "anchor_prompts_per_step"),
    ({"mllm": {"anchor_scenarios": {"a": -1.0}}}, "anchor_scenarios"),
    ({"dit": {"anchor_weight": float("nan")}}, r"dit\.anchor_weight"),
    ({"dit": {"anchor_prompts_per_step": 0}}, r"dit\.anchor_prompts_per_step"),
    ({"dit": {"anchor_scenarios": {"a": 0.0}}}, r"dit\.anchor_scenarios"),
    ({"dit": {"anchor_step_range": [2, 99]}}, r"dit\.anchor_step_range"),
]


@pytest.mark.parametrize("over,reason", BAD, ids=[r for _, r in BAD])
def test_bad_configs_refused_with_reason(tmp_path, over, reason):
    with pytest.raises(ConfigError, match=reason):
        tiny_cfg(tmp_path, tmp_path / "out", tmp_path / "p.jsonl", **over)


def test_cli_print_config_overrides_and_exit_codes(tmp_path, capsys, prompts_file):
    import yaml

    from thinkgen.cli import main as cli_main
    from thinkgen.rl.sepgrpo import main

    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(yaml.safe_dump(tiny_values(tmp_path / "ckpt", tmp_path / "out", prompts_file)))
    assert main(["--config", str(cfg_file), "--print-config", "--mllm.group_size=8", "--rounds=2"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["mllm"]["group_size"] == 8 and printed["rounds"] == 2 and printed["dit"]["group_size"] == 3
    assert cli_main(["train", "sepgrpo", "--config", str(cfg_file), "--dit.group_size=1"]) == 2
    assert "GRPO needs >= 2" in capsys.readouterr().err
    assert cli_main(["train", "sepgrpo", "--config", str(cfg_file), "--foo.bar=1"]) == 2
    # file-system checks happen before any work
    assert cli_main(["train", "sepgrpo", "--config", str(cfg_file)]) == 2
    assert "model_dir" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------- prompts
def test_mixture_is_stateless_and_weighted(prompts_file):
    items = load_jsonl_prompts(prompts_file)
    mix = PromptMixture(items, {"composition": 1.0, "reasoning": 0.0})
    a = mix.draw(20, (0, "mllm", 0, 3))
    assert [x.uid for x in a] == [x.uid for x in mix.draw(20, (0, "mllm", 0, 3))]
    assert {x.scenario for x in a} == {"composition"}
    assert [x.uid for x in a] != [x.uid for x in mix.draw(20, (0, "mllm", 0, 4))]
    with pytest.raises(ConfigError, match="without prompts"):
        PromptMixture(items, {"editing": 1.0})
    assert derive_seed(1, "a", 2) == derive_seed(1, "a", 2) != derive_seed(1, "a", 3)


def test_jsonl_errors_name_the_line(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text(json.dumps(PROMPTS[0]) + "\n" + json.dumps({"scenario": "x", "prompt": ""}) + "\n")
    with pytest.raises(ConfigError, match=r"bad.jsonl:2.*prompt"):
        load_jsonl_prompts(p)
    p.write_text(json.dumps({"scenario": "x", "prompt": "a", "images": ["missing.png"]}) + "\n")
    with pytest.raises(ConfigError, match="does not exist"):
        load_jsonl_prompts(p)
    p.write_text(json.dumps({"scenario": "vqa", "prompt": "how many?", "output": "text", "meta": {"answer": "2"}})
                 + "\n" + json.dumps({"scenario": "x", "prompt": "a", "output": "video"}) + "\n")
    with pytest.raises(ConfigError, match=r"bad.jsonl:2: 'output' must be one of \('image', 'text'\)"):
        load_jsonl_prompts(p)
    p.write_text(json.dumps({"scenario": "vqa", "prompt": "how many?", "output": "text"}) + "\n")
    assert [(it.output, it.prompt_mode) for it in load_jsonl_prompts(p)] == [("text", "chat")]


def test_micro_batch_plan_pads_with_dummies():
    assert plan_micro_batches([0, 2, 3], 2, min_batches=3) == [([0, 2], False), ([3], False), ([0], True)]
    assert plan_micro_batches([], 2, min_batches=1) == [([0], True)]


# ----------------------------------------------------------------------------------------------- MLLM rollouts
def test_text_rollouts_forced_tokens_and_logps():
    from PIL import Image

    from thinkgen.mllm import FORCE_CLOSE_TEXT
    from thinkgen.rl.config import MLLMPhaseConfig
    from thinkgen.rl.mllm_grpo import collect_text_rollouts, sequence_batch, token_logps
    from thinkgen.testing import build_tiny_pipeline

    pipe = build_tiny_pipeline(0)
    mllm = pipe.mllm
    cfg = MLLMPhaseConfig(group_size=2, max_think_tokens=5, max_answer_tokens=3, temperature=0.7)
    cfg.validate()
    items = [PromptItem("composition", "a red circle"),
             PromptItem("editing", "make it blue", images=[Image.new("RGB", (32, 32), (200, 30, 30))])]
    roll = collect_text_rollouts(mllm, items, cfg, [[1, 2], [3, 4]])
    n_close = len(mllm.tokenizer.encode(FORCE_CLOSE_TEXT, add_special_tokens=False))
    for ids, mask, tl in zip(roll.completion_ids, roll.completion_mask, roll.think_lengths):
        assert tl == 5            # the random model never closes: the budget forces </think>
        assert mask == [True] * 5 + [False] * n_close + [True] * (len(ids) - 5 - n_close)
    assert roll.vision[0] == {} and "pixel_values" in roll.vision[1]
    # same seeds -> same rollouts (per-sample generators)
    again = collect_text_rollouts(mllm, items, cfg, [[1, 2], [3, 4]])
    assert again.completion_ids == roll.completion_ids

    # batched, right-padded log-probs == one unpadded forward per sample (text and image prompts)
    batch = sequence_batch(roll, [0, 1, 2, 3], mllm.tokenizer.pad_token_id, mllm.processor.image_token_id)
    with torch.no_grad():
        lp = token_logps(mllm.model, batch, cfg.temperature, mllm.device)
        for b in range(4):
            one = sequence_batch(roll, [b], mllm.tokenizer.pad_token_id, mllm.processor.image_token_id)
            kw = {"input_ids": one["input_ids"], "attention_mask": one["attention_mask"]}
            if "pixel_values" in one:
                kw.update(pixel_values=one["pixel_values"], image_grid_thw=one["image_grid_thw"],
                          mm_token_type_ids=one["mm_token_type_ids"])
            logits = mllm.model(**kw).logits[0].float() / cfg.temperature
            P = len(roll.prompt_ids[b // 2])
            ids = torch.tensor(roll.completion_ids[b])
            ref = torch.log_softmax(logits[P - 1:P - 1 + len(ids)], -1).gather(-1, ids[:, None]).squeeze(-1)
            ref = ref * torch.tensor(roll.completion_mask[b])
            torch.testing.assert_close(lp[b, : len(ids)], ref, atol=2e-5, rtol=0)
            assert (lp[b, len(ids):] == 0).all()


# ----------------------------------------------------------------------------------------------- updates
def test_mllm_step_on_policy_and_only_trainable_change(tiny_ckpt, prompts_file, tmp_path):
    from thinkgen.rl.sepgrpo import build_run, close_run, mllm_step

    cfg = tiny_cfg(tiny_ckpt, tmp_path / "out", prompts_file, schedule=["mllm"],
                   mllm={"drop_zero_adv": False, "kl_coef": 0.05})
    run = build_run(cfg)
    try:
        model = run.pipe.mllm.model
        before, dit_before = _snapshot(model), _snapshot(run.pipe.transformer)
        stats = mllm_step(run, 0, 0)
        assert stats["mllm/ratio_mean"] == 1.0 and stats["mllm/clip_frac"] == 0.0   # on-policy: exactly 1
        assert stats["mllm/kl"] == 0.0                                                # policy == reference
        assert stats["mllm/zero_adv_frac"] < 1.0
        after = _snapshot(model)
        trainable = {n for n, _ in run.phases["mllm"].trainable}
        assert trainable and not any(n.startswith("model.visual.") for n in trainable)   # vision tower frozen
        for k in before:
            changed = not torch.equal(before[k], after[k])
            assert changed == (k in trainable), f"{k}: changed={changed}, trainable={k in trainable}"
        assert all(torch.equal(v, run.pipe.transformer.state_dict()[k]) for k, v in dit_before.items())
        # a second step is off-policy w.r.t. the reference: the k3 KL is now positive
        assert mllm_step(run, 0, 1)["mllm/kl"] > 0
    finally:
        close_run(run)


def test_feature_anchor_pulls_the_no_think_features_back(tiny_ckpt, prompts_file, tmp_path):
    """mllm.anchor_weight: the anchor term is 0 on-policy, is logged, and its gradient moves drifted no-think
    features (the ones the painter reads with thinking off) back towards the reference MLLM's."""
    from thinkgen.rl.mllm_grpo import feature_anchor_update
    from thinkgen.rl.sepgrpo import _optimizer_step, build_run, close_run, mllm_step
    from thinkgen.train.mllm_sft import anchor_loss

    cfg = tiny_cfg(tiny_ckpt, tmp_path / "out", prompts_file, schedule=["mllm"],
                   mllm={"kl_coef": 0.0, "anchor_weight": 1.0, "anchor_prompts_per_step": 3, "lr": 3e-3})
    run = build_run(cfg)
    try:
        ph, mllm = run.phases["mllm"], run.pipe.mllm
        assert ph.reference is not None                     # the anchor needs the frozen reference
        stats = mllm_step(run, 0, 0)
        assert stats["mllm/anchor"] == 0.0                  # policy == reference before the first update
        items = run.mixtures["mllm_anchor"].draw(3, ("anchor-test",))

        def distance() -> float:
            prompts, n_images = [it.prompt for it in items], [len(it.images) for it in items]
            with torch.no_grad(), ph.reference() as ref_model:
                ref, _ = mllm.nothink_features(prompts, n_images, model=ref_model)
            with torch.no_grad():
                feats, mask = mllm.nothink_features(prompts, n_images)
                return float(anchor_loss(feats, ref, mask))

        with torch.no_grad():                               # drift: perturb every trained weight
            g = torch.Generator().manual_seed(0)
            for _, p in ph.trainable:
                p.add_(0.05 * p.std() * torch.randn(p.shape, generator=g))
        before = distance()
        for _ in range(5):
            got = feature_anchor_update(ph.policy, ph.reference, mllm, items, 1.0)
            _optimizer_step(ph)
        assert before > 0 and got["anchor"] > 0
        assert distance() < 0.5 * before
    finally:
        close_run(run)


@pytest.mark.parametrize("step_range", [[], [1, 3]], ids=["every step", "steps 1-2"])
def test_velocity_anchor_pulls_the_painter_back(tiny_ckpt, prompts_file, tmp_path, step_range):
    """dit.anchor_weight: the reference's trajectories are kept with its velocities at the anchored steps, the anchor
    term is 0 on-policy and logged, and its gradient moves a drifted DiT's velocity back towards the reference's."""
    from thinkgen.rl.dit_grpo import mllm_conditions, reference_trajectories, velocity_anchor_update
    from thinkgen.rl.sepgrpo import _optimizer_step, build_run, close_run, dit_step
    from thinkgen.sampling import Guidance, guided_velocity

    cfg = tiny_cfg(tiny_ckpt, tmp_path / "out", prompts_file, schedule=["dit"],
                   dit={"kl_coef": 0.0, "anchor_weight": 1.0, "anchor_prompts_per_step": 3, "lr": 3e-3,
                        "anchor_step_range": step_range})
    run = build_run(cfg)
    try:
        ph, pipe, pc = run.phases["dit"], run.pipe, cfg.dit
        assert ph.reference is not None                     # the anchor needs the frozen reference
        stats = dit_step(run, 0, 0)
        assert stats["dit/anchor"] == 0.0                   # policy == reference before the first update
        items = run.mixtures["dit_anchor"].draw(3, ("anchor-test",))
        enc = mllm_conditions(pipe.mllm, items, pc.think, pc.max_think_tokens, pc.max_answer_tokens)
        anchor = reference_trajectories(pipe, ph.reference, items, enc, pc, [11, 12, 13])
        S = pc.num_steps
        steps = list(range(*step_range)) if step_range else list(range(S))
        assert anchor.steps == steps
        assert anchor.states.shape[:2] == (3, S + 1) and anchor.velocities.shape[:2] == (3, len(steps))
        guidance = Guidance(text_scale=pc.guidance_scale, image_scale=pc.image_guidance_scale)

        def distance() -> float:   # the anchor's distance, recomputed independently at every step
            with torch.no_grad():
                d = 0.0
                for k, j in enumerate(steps):
                    x = anchor.states[:, j]
                    v = guided_velocity(ph.policy, x, anchor.timesteps[j].to(x.dtype), anchor.cond, anchor.neg,
                                        guidance, j, S).float()
                    d += float((v - anchor.velocities[:, k]).pow(2).sum() / anchor.velocities[:, k].pow(2).sum())
                return d / len(steps)

        with torch.no_grad():                               # drift: perturb every trained weight
            g = torch.Generator().manual_seed(0)
            for _, p in ph.trainable:
                p.add_(0.02 + 0.05 * p.std() * torch.randn(p.shape, generator=g))
        before = distance()
        got = velocity_anchor_update(ph.policy, anchor, pc, 1.0)
        assert before > 0 and got["anchor"] == pytest.approx(before, rel=1e-4)
        _optimizer_step(ph)
        for _ in range(4):
            velocity_anchor_update(ph.policy, anchor, pc, 1.0)
            _optimizer_step(ph)
        assert distance() < 0.5 * before
    finally:
        close_run(run)


@pytest.mark.parametrize("phase", ["mllm", "dit"])
def test_anchor_scenarios_without_image_prompts_are_refused(tiny_ckpt, prompts_file, tmp_path, phase):
    from thinkgen.rl.sepgrpo import build_run

    cfg = tiny_cfg(tiny_ckpt, tmp_path / "out", prompts_file, schedule=[phase],
                   **{phase: {"anchor_weight": 1.0, "anchor_scenarios": {"no_such_scenario": 1.0}}})
    with pytest.raises(ConfigError, match=phase + r"\.anchor_scenarios .*no_such_scenario"):
        build_run(cfg)
    assert not (tmp_path / "out" / "config.yaml").exists()   # refused before anything is written


def test_clip_acts_on_off_policy_updates(tiny_ckpt, prompts_file, tmp_path):
    from thinkgen.rl.sepgrpo import build_run, close_run, mllm_step

    cfg = tiny_cfg(tiny_ckpt, tmp_path / "out", prompts_file, schedule=["mllm"],
                   mllm={"updates_per_step": 2, "micro_batch_size": 2, "drop_zero_adv": False, "lr": 3e-2,
                         "clip_low": 1e-3, "clip_high": 1e-3, "kl_coef": 0.0, "features_from": "reference"})
    run = build_run(cfg)
    try:
        stats = mllm_step(run, 0, 0)
        # the second update sees the first one's weights: ratios move and the tight clip activates
        assert stats["mllm/ratio_mean"] != 1.0
        assert stats["mllm/clip_frac"] > 0
    finally:
        close_run(run)


def test_dit_step_with_cps_is_on_policy(tiny_ckpt, prompts_file, tmp_path):
    """dit.sde_type=cps: rollouts and the training recomputation use the same CPS step, so the first update is
    on-policy (ratio 1, nothing clipped) and the trainable weights move."""
    from thinkgen.rl.sepgrpo import build_run, close_run, dit_step

    cfg = tiny_cfg(tiny_ckpt, tmp_path / "out", prompts_file, dit={"sde_type": "cps", "kl_coef": 0.0})
    run = build_run(cfg)
    try:
        before = _snapshot(run.pipe.transformer)
        ds = dit_step(run, 0, 0)
        assert abs(ds["dit/ratio_mean"] - 1.0) < 1e-6 and ds["dit/clip_frac"] == 0.0
        after = _snapshot(run.pipe.transformer)
        assert any(not torch.equal(before[k], after[k]) for k in before)
    finally:
        close_run(run)


def test_dit_and_mllm_lora_steps_and_export(tiny_ckpt, prompts_file, tmp_path):
    from thinkgen.pipeline import ThinkGenPipeline
    from thinkgen.rl.sepgrpo import build_run, close_run, dit_step, mllm_step, save_checkpoint

    cfg = tiny_cfg(tiny_ckpt, tmp_path / "out", prompts_file,
                   mllm={"lora": True, "lora_rank": 4, "lora_alpha": 8.0, "kl_coef": 0.0},
                   dit={"lora": True, "lora_rank": 4, "lora_alpha": 8.0, "kl_coef": 0.04})
    run = build_run(cfg)
    try:
        dit, mllm_model = run.pipe.transformer, run.pipe.mllm.model
        d0, m0 = _snapshot(dit), _snapshot(mllm_model)
        ms = mllm_step(run, 0, 0)
        ds = dit_step(run, 0, 0)
        assert abs(ds["dit/ratio_mean"] - 1.0) < 1e-6 and ds["dit/clip_frac"] == 0.0     # on-policy
        assert ds["dit/kl"] == 0.0 and ds["dit/trained_steps"] == 2.0                   # int(3 * 0.7) steps
        assert ms["mllm/ratio_mean"] == 1.0
        for module, snap in ((dit, d0), (mllm_model, m0)):
            now = _snapshot(module)
            for k in snap:
                changed = not torch.equal(snap[k], now[k])
                if "ref_image_refiner" in k:   # unused without input images: no gradient, no change
                    assert not changed, k
                else:
                    assert changed == ("lora_" in k), f"{k}: changed={changed}"
        # the checkpoint's model/ folder is the released layout with LoRA merged: same outputs as the live models
        run.pos.global_step = 2
        ckpt = save_checkpoint(run)
        loaded = ThinkGenPipeline.from_pretrained(ckpt / "model")
        g = torch.Generator().manual_seed(0)
        x, feats = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 5, 64, generator=g)
        mask = torch.ones(2, 5, dtype=torch.bool)
        with torch.no_grad():
            torch.testing.assert_close(loaded.transformer(x, torch.tensor([0.3, 0.6]), feats, mask),
                                       dit(x, torch.tensor([0.3, 0.6]), feats, mask), atol=1e-5, rtol=1e-4)
            ids = torch.tensor([[5 + i for i in range(12)]])
            torch.testing.assert_close(loaded.mllm.model(input_ids=ids).logits, mllm_model(input_ids=ids).logits,
                                       atol=1e-5, rtol=1e-4)
    finally:
        close_run(run)


def test_tied_groups_change_nothing(tiny_ckpt, prompts_file, tmp_path):
    from thinkgen.rl.sepgrpo import build_run, close_run, dit_step

    cfg = tiny_cfg(tiny_ckpt, tmp_path / "out", prompts_file, schedule=["dit"], reward_weights={"toy_constant": 1.0},
                   dit={"lora": False, "kl_coef": 0.0, "weight_decay": 0.1})
    run = build_run(cfg)
    try:
        before = _snapshot(run.pipe.transformer)
        stats = dit_step(run, 0, 0)
        assert stats["dit/zero_adv_frac"] == 1.0 and stats["dit/skipped"] == 1.0
        assert all(torch.equal(v, run.pipe.transformer.state_dict()[k]) for k, v in before.items())
    finally:
        close_run(run)


# ----------------------------------------------------------------------------------------------- resume
def _final_weights(out: Path) -> dict[str, str]:
    import hashlib

    return {p.relative_to(out).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((out / "final").rglob("*.safetensors"))}


def _metric_lines(out: Path) -> list[dict]:
    lines = [json.loads(l) for l in (out / "logs" / "metrics.jsonl").read_text().splitlines() if l.strip()]
    return [{k: v for k, v in r.items() if k != "step_time_s"} for r in lines]


def test_resume_after_kills_is_exact(tiny_ckpt, prompts_file, tmp_path, monkeypatch):
    """Kills after the first step (before any checkpoint), inside the checkpoint write at the MLLM -> DiT switch and
    inside the first DiT rollout: the
    resumed run ends with bit-identical weights and the same metric lines (no duplicates) as an uninterrupted run."""
    from thinkgen.rl.sepgrpo import train_sepgrpo

    over = dict(save_every=1, eval_before=True, eval_prompts=str(prompts_file), eval_max_prompts=2, eval_steps=2, eval_resolution=32,
                mllm={"steps": 2}, dit={"steps": 2})
    ref_out = tmp_path / "ref"
    train_sepgrpo(tiny_cfg(tiny_ckpt, ref_out, prompts_file, **over))

    out = tmp_path / "killed"
    cfg = tiny_cfg(tiny_ckpt, out, prompts_file, **over)
    for fault in ("step:1", "ckpt_write:2:1", "rollout:3"):
        monkeypatch.setenv("THINKGEN_FAULT", fault)
        with pytest.raises(FaultInjected):
            train_sepgrpo(cfg)
    monkeypatch.delenv("THINKGEN_FAULT")
    train_sepgrpo(cfg)

    assert _final_weights(out) == _final_weights(ref_out) and _final_weights(out)
    assert _metric_lines(out) == _metric_lines(ref_out)
    steps = [r["step"] for r in _metric_lines(out) if "eval/overall" not in r]
    assert steps == sorted(set(steps)) == [1, 2, 3, 4]
    summary = json.loads((out / "eval_summary.json").read_text())
    assert summary["before"]["step"] == 0 and summary["after"]["step"] == 4


def test_resume_refuses_changed_config(tiny_ckpt, prompts_file, tmp_path):
    from thinkgen.rl.sepgrpo import build_run, close_run, save_checkpoint

    cfg = tiny_cfg(tiny_ckpt, tmp_path / "out", prompts_file, schedule=["dit"])
    run = build_run(cfg)
    run.pos.global_step = 1
    save_checkpoint(run)
    close_run(run)
    with pytest.raises(ConfigError, match="dit.lr"):
        build_run(tiny_cfg(tiny_ckpt, tmp_path / "out", prompts_file, schedule=["dit"], dit={"lr": 5e-4}))
    run = build_run(tiny_cfg(tiny_ckpt, tmp_path / "out", prompts_file, schedule=["dit"], dit={"lr": 5e-4},
                             allow_config_change=["dit.lr"]))
    try:   # the allowed change is applied, not overwritten by the checkpoint's optimiser state
        assert run.resumed and run.pos.global_step == 1
        assert run.phases["dit"].optimizer.param_groups[0]["lr"] == pytest.approx(5e-4)
        assert run.phases["dit"].scheduler.get_last_lr() == [pytest.approx(5e-4)]
    finally:
        close_run(run)


def test_compile_is_resume_safe_and_compiles_the_dit_blocks(tiny_ckpt, prompts_file, tmp_path):
    """``compile: true`` changes speed, not maths: a run may resume with it toggled, and the DiT blocks are compiled
    (lazily: nothing compiles until the first call); the checkpoint keeps the eager parameter names."""
    from thinkgen.rl.sepgrpo import build_run, close_run, save_checkpoint

    run = build_run(tiny_cfg(tiny_ckpt, tmp_path / "out", prompts_file, schedule=["dit"]))
    run.pos.global_step = 1
    save_checkpoint(run)
    names = list(run.pipe.transformer.state_dict())
    close_run(run)
    run = build_run(tiny_cfg(tiny_ckpt, tmp_path / "out", prompts_file, schedule=["dit"], compile=True))
    try:
        assert run.resumed and run.pos.global_step == 1
        dit = run.pipe.transformer
        assert dit._blocks_compiled and all(blk._compiled_call_impl is not None for blk in dit.layers)
        assert list(dit.state_dict()) == names
    finally:
        close_run(run)


def test_resume_from_a_checkpoint_older_than_a_config_field(tiny_ckpt, prompts_file, tmp_path, monkeypatch):
    """A field added to thinkgen after the checkpoint was written (here dit.detach_uncond, left out of the saved
    config) is unchanged at its default and a change when set otherwise."""
    from thinkgen.rl.config import SepGRPOConfig
    from thinkgen.rl.sepgrpo import build_run, close_run, save_checkpoint

    run = build_run(tiny_cfg(tiny_ckpt, tmp_path / "out", prompts_file, schedule=["dit"]))
    run.pos.global_step = 1
    full = SepGRPOConfig.hash_dict
    with monkeypatch.context() as m:   # the checkpoint of a thinkgen without the field
        m.setattr(SepGRPOConfig, "hash_dict", lambda self: {k: v for k, v in full(self).items()
                                                            if k != "dit.detach_uncond"})
        save_checkpoint(run)
    close_run(run)
    with pytest.raises(ConfigError, match=r"dit.detach_uncond: None -> True"):
        build_run(tiny_cfg(tiny_ckpt, tmp_path / "out", prompts_file, schedule=["dit"], dit={"detach_uncond": True}))
    run = build_run(tiny_cfg(tiny_ckpt, tmp_path / "out", prompts_file, schedule=["dit"]))
    try:
        assert run.resumed and run.pos.global_step == 1
    finally:
        close_run(run)


# ----------------------------------------------------------------------------------------------- nano reward
def test_bench_toy_rewards_register_and_score():
    """bench/toy_rewards.py (the sanity reward of bench/results/sepgrpo_nano_proof7.md) loads through
    ``reward_modules`` and scores a black image 1 and a white one 0 for darkness."""
    from PIL import Image

    from thinkgen.rl.rewards import build_reward

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import bench.toy_rewards  # noqa: F401  (registers image_brightness / image_darkness)

    ims = [Image.new("RGB", (8, 8), (0, 0, 0)), Image.new("RGB", (8, 8), (255, 255, 255))]
    dark = build_reward("image_darkness")(ims, ["a", "b"], [{}, {}])
    bright = build_reward("image_brightness")(ims, ["a", "b"], [{}, {}])
    assert dark.tolist() == [1.0, 0.0] and bright.tolist() == [0.0, 1.0]


def test_nano_reward_uses_the_nano_scorer(monkeypatch):
    import types

    from PIL import Image

    from thinkgen.rl.rewards import build_reward

    fake = types.ModuleType("thinkgen.nano.scoring")
    fake.score = lambda sample, image: {"score": 0.25, "correct": False} if sample == "bad" else {"score": 1.0, "correct": True}
    monkeypatch.setitem(sys.modules, "thinkgen.nano.scoring", fake)
    import thinkgen.nano
    monkeypatch.setattr(thinkgen.nano, "scoring", fake, raising=False)
    img = Image.new("RGB", (8, 8))
    meta = [{"sample": "good"}, {"sample": "bad"}, {}]
    out = build_reward("nano")([img] * 3, ["a", "b", "c"], meta)
    assert out[:2].tolist() == [1.0, 0.25] and torch.isnan(out[2])
    assert build_reward("nano_correct")([img] * 2, ["a", "b"], meta[:2]).tolist() == [1.0, 0.0]


def test_nano_prompt_source_scores_its_own_targets():
    from thinkgen.rl.rewards import build_reward
    from thinkgen.rl.rollout import nano_prompt_items

    items = nano_prompt_items(["composition", "editing"], "heldout", 2, seed=0)
    assert [it.scenario for it in items] == ["composition"] * 2 + ["editing"] * 2
    assert not items[0].images and len(items[2].images) == 1
    # the ground-truth image of each sample scores 1 under the nano reward
    targets = [it.meta["sample"].target_image() for it in items]
    r = build_reward("nano_correct")(targets, [it.prompt for it in items], [it.reward_meta() for it in items])
    assert r.tolist() == [1.0] * 4
    # an understanding item: its gold answer scores 1 under nano_answer
    und = nano_prompt_items(["understanding"], "train", 2, seed=0)
    meta = [it.reward_meta(instruction=it.meta["sample"].answer) for it in und]
    assert build_reward("nano_answer")([None, None], [it.prompt for it in und], meta).tolist() == [1.0, 1.0]


def test_nano_answer_reward_scores_the_text_answer_not_the_image():
    from PIL import Image

    from thinkgen.nano.prompts import generate
    from thinkgen.rl.rewards import build_reward

    s = generate("reasoning", 1, seed=0, split="heldout")[0]
    blank = Image.new("RGB", (64, 64))                   # the image is never looked at
    meta = [{"sample": s, "instruction": s.instruction}, {"sample": s, "instruction": "a red circle above"},
            {"sample": s}, {"instruction": s.instruction}]
    out = build_reward("nano_answer")([blank] * 4, [s.prompt] * 4, meta)
    assert out[:2].tolist() == [1.0, 0.0] and torch.isnan(out[2:]).all()


# ----------------------------------------------------------------------------------------------- shipped configs
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("name", ["sepgrpo_nano.yaml", "sepgrpo_thinkgen.yaml"])
def test_shipped_configs_validate(name):
    cfg = load_config(CONFIGS / name)
    assert cfg.schedule == ["mllm", "dit"]


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("sepgrpo_*.yaml")), ids=lambda p: p.name)
def test_every_committed_sepgrpo_config_validates(path):
    cfg = load_config(path)               # the benchmark configs behind bench/results/*.md stay loadable
    assert cfg.schedule and set(cfg.schedule) <= {"mllm", "dit"}


def test_nano_source_end_to_end(tiny_ckpt, tmp_path):
    """The nano config's path on the tiny pipeline: nano prompts (an editing prompt with its input image in both
    phases), nano rewards, held-out evaluation per family, the final export."""
    from thinkgen.pipeline import ThinkGenPipeline
    from thinkgen.rl.sepgrpo import train_sepgrpo

    cfg = load_config(CONFIGS / "sepgrpo_nano.yaml", [
        f"--model_dir={tiny_ckpt}", f"--output_dir={tmp_path / 'out'}", "--device=cpu", "--progress=false",
        "--nano_families={reasoning: 1.0, editing: 1.0, text: 0.0}", "--nano_train_size=3", "--nano_eval_size=1",
        "--eval_steps=2", "--eval_seeds=1", "--eval_images=2", "--save_every=0",
        "--mllm.scenario_weights={editing: 1.0}", "--mllm.steps=1", "--mllm.prompts_per_step=1",
        "--mllm.group_size=2", "--mllm.max_think_tokens=4", "--mllm.max_answer_tokens=3", "--mllm.render_steps=2",
        "--dit.scenario_weights={editing: 1.0}", "--dit.steps=1", "--dit.prompts_per_step=1", "--dit.group_size=2",
        "--dit.max_think_tokens=4", "--dit.max_answer_tokens=3", "--dit.num_steps=4", "--dit.window_size=2",
        "--dit.window_range=[0,2]"])
    final = train_sepgrpo(cfg)
    lines = [json.loads(l) for l in (tmp_path / "out" / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert any("mllm/reward/editing" in r for r in lines) and any("dit/reward/editing" in r for r in lines)
    evals = [r for r in lines if "eval/overall" in r]
    assert len(evals) == 3 and {"eval/reasoning", "eval/editing", "eval/text"} <= set(evals[0])
    assert ThinkGenPipeline.from_pretrained(final).transformer is not None


def test_nano_category_scenarios():
    """A nano scenario may name one category ("composition/counting"): its prompts are only that category, the
    scenario is the name given, and an unknown family or category is refused naming it."""
    from thinkgen.rl.rollout import nano_prompt_items

    items = nano_prompt_items(["composition/counting", "editing"], "heldout", 4, seed=0)
    counting = [it for it in items if it.scenario == "composition/counting"]
    assert len(counting) == 4 and all(it.meta["sample"].category == "counting" for it in counting)
    assert {it.meta["sample"].category for it in items if it.scenario == "editing"} and \
        all(it.images for it in items if it.scenario == "editing")
    with pytest.raises(ConfigError, match="counting_stars"):
        nano_prompt_items(["composition/counting_stars"], "train", 1, seed=0)
    with pytest.raises(ConfigError, match="painting"):
        nano_prompt_items(["painting"], "train", 1, seed=0)
    und = nano_prompt_items(["understanding/count"], "train", 2, seed=0)
    assert all(it.output == "text" and it.prompt_mode == "chat" and len(it.images) == 1 for it in und)
    assert all(it.output == "image" and it.prompt_mode == "think" for it in counting)
    with pytest.raises(ConfigError, match="counting_stars"):
        load_config(CONFIGS / "sepgrpo_nano.yaml", ["--nano_families={composition/counting_stars: 1.0}"])


# ----------------------------------------------------------------------------------------------- direction
def _dit_rollout_logps(dit, roll, cfg) -> torch.Tensor:
    """(B, S_trained) per-step log-probs of the stored transitions under ``dit`` (the update's recomputation)."""
    from thinkgen import flow
    from thinkgen.sampling import Guidance, guided_velocity

    ts = roll.timesteps
    S = ts.numel() - 1
    guidance = Guidance(text_scale=cfg.guidance_scale, image_scale=cfg.image_guidance_scale)
    out = []
    with torch.no_grad():
        for j in roll.train_steps:
            x, x_next = roll.states[:, j], roll.states[:, j + 1]
            v = guided_velocity(dit, x, ts[j].to(x.dtype), roll.cond, roll.neg, guidance, j, S)
            out.append(flow.sde_step(x, v, ts[j], ts[j + 1], cfg.noise_level, x_next=x_next,
                                     t_min=ts[1] if S > 1 else None, kind=cfg.sde_type).logp)
    return torch.stack(out, dim=1)


@pytest.mark.parametrize("sde_type", ["sde", "cps"])
def test_dit_update_raises_the_logprob_of_advantaged_samples(tiny_ckpt, prompts_file, tmp_path, sde_type):
    """The sign of the whole DiT-GRPO path: after one update with arbitrary advantages A, the stored transitions'
    log-probs move along A (sum_i A_i (logp_new - logp_old) > 0), and with -A the other way. (First Adam step:
    the parameter change is lr * sign(grad), so to first order the objective sum_i A_i logp_i must rise.)"""
    from thinkgen.rl.dit_grpo import collect_image_rollouts, dit_grpo_update, mllm_conditions
    from thinkgen.rl.sepgrpo import _optimizer_step, build_run, close_run

    moves = []
    for sign in (1.0, -1.0):
        cfg = tiny_cfg(tiny_ckpt, tmp_path / f"out{sign}", prompts_file, schedule=["dit"],
                       dit={"sde_type": sde_type, "kl_coef": 0.0, "lr": 1e-4, "group_size": 4, "micro_batch_size": 8})
        run = build_run(cfg)
        try:
            ph, pipe = run.phases["dit"], run.pipe
            items = run.mixtures["dit"].draw(2, ("direction",))
            enc = mllm_conditions(pipe.mllm, items, "off", 8, 8)
            seeds = [[100 * p + g for g in range(4)] for p in range(2)]
            roll = collect_image_rollouts(pipe, ph.module, items, enc, ph.cfg, seeds, ph.cfg.trained_steps(None))
            old = _dit_rollout_logps(ph.module, roll, ph.cfg)
            assert torch.allclose(old, roll.logps[:, roll.train_steps], atol=1e-4)   # = the rollout's own
            adv = sign * torch.tensor([1.0, -0.5, 0.7, -1.2, 0.3, -0.9, 1.5, -0.9])
            plan = plan_micro_batches(range(roll.batch_size), ph.cfg.micro_batch_size)
            dit_grpo_update(ph.policy, ph.reference, roll, adv, plan, ph.cfg)
            _optimizer_step(ph)
            new = _dit_rollout_logps(ph.module, roll, ph.cfg)
            moves.append(float((adv[:, None] * (new - old)).sum()))
        finally:
            close_run(run)
    assert moves[0] > 0 and moves[1] > 0, moves


def test_mllm_update_raises_the_logprob_of_advantaged_rollouts(tiny_ckpt, prompts_file, tmp_path):
    """The sign of the MLLM-GRPO path: one update with advantages A moves the rollouts' token log-probs along A."""
    from thinkgen.rl.mllm_grpo import collect_text_rollouts, mllm_grpo_update, rollout_logps
    from thinkgen.rl.sepgrpo import _optimizer_step, build_run, close_run

    moves = []
    for sign in (1.0, -1.0):
        cfg = tiny_cfg(tiny_ckpt, tmp_path / f"out{sign}", prompts_file, schedule=["mllm"],
                       mllm={"kl_coef": 0.0, "lr": 1e-4, "group_size": 4, "micro_batch_size": 8})
        run = build_run(cfg)
        try:
            ph, pipe = run.phases["mllm"], run.pipe
            items = run.mixtures["mllm"].draw(2, ("direction",))
            roll = collect_text_rollouts(pipe.mllm, items, ph.cfg, [[100 * p + g for g in range(4)] for p in range(2)])
            plan = plan_micro_batches(range(roll.batch_size), ph.cfg.micro_batch_size)
            with torch.no_grad():
                roll.old_logps = rollout_logps(ph.module, roll, plan, pipe.mllm, ph.cfg.temperature)
            adv = sign * torch.tensor([1.0, -0.5, 0.7, -1.2, 0.3, -0.9, 1.5, -0.9])
            mllm_grpo_update(ph.policy, roll, adv, plan, pipe.mllm, ph.cfg)
            _optimizer_step(ph)
            with torch.no_grad():
                new = rollout_logps(ph.module, roll, plan, pipe.mllm, ph.cfg.temperature)
            mask = torch.zeros_like(new)
            for b, m in enumerate(roll.completion_mask):
                mask[b, : len(m)] = torch.tensor(m, dtype=torch.float32)
            moves.append(float((adv[:, None] * (new - roll.old_logps) * mask).sum()))
        finally:
            close_run(run)
    assert moves[0] > 0 and moves[1] > 0, moves


# ----------------------------------------------------------------------------------------------- text-output scenarios
def test_understanding_scenario_rollouts_rewards_and_step(tiny_ckpt, tmp_path):
    """Understanding prompts (answered in text) in MLLM-GRPO: sampled on the chat prompt, never rendered (image
    None), scored by a text reward only, while image prompts in the same batch are rendered and scored as usual."""
    from thinkgen.mllm import build_prompt
    from thinkgen.rl.mllm_grpo import collect_text_rollouts, render_rollouts
    from thinkgen.rl.rewards import CombinedReward
    from thinkgen.rl.rollout import nano_prompt_items
    from thinkgen.rl.sepgrpo import build_run, close_run, mllm_step

    cfg = load_config(CONFIGS / "sepgrpo_nano.yaml", [
        f"--model_dir={tiny_ckpt}", f"--output_dir={tmp_path / 'out'}", "--device=cpu", "--progress=false",
        "--schedule=[mllm]", "--nano_families={understanding: 1.0, reasoning: 1.0}", "--nano_train_size=3",
        "--mllm.scenario_weights={}",
        "--nano_eval_size=1", "--eval_steps=2", "--eval_seeds=1", "--save_every=0",
        "--reward_per_scenario={understanding: {nano_answer: 1.0}}",
        "--mllm.reward_per_scenario={understanding: {nano_answer: 1.0, format: 0.1}}",
        "--mllm.steps=1", "--mllm.prompts_per_step=2", "--mllm.group_size=2", "--mllm.max_think_tokens=4",
        "--mllm.max_answer_tokens=3", "--mllm.render_steps=2", "--mllm.render_resolution=32"])
    run = build_run(cfg)
    try:
        mc = cfg.mllm
        items = nano_prompt_items(["understanding", "reasoning"], "train", 1, seed=0)
        roll = collect_text_rollouts(run.pipe.mllm, items, mc, [[1, 2], [3, 4]])
        chat = run.pipe.mllm.processor([build_prompt(run.pipe.mllm.tokenizer, items[0].prompt, 1, "chat")],
                                       [items[0].load_images()], padding_side="right")["input_ids"][0].tolist()
        assert roll.prompt_ids[0] == chat
        render_rollouts(run.pipe, run.pipe.transformer, roll, mc, [5, 6])
        assert roll.images[0] is None and roll.images[1] is None
        assert all(im is not None and im.size == (32, 32) for im in roll.images[2:])
        weights, per_scenario = cfg.reward_spec("mllm")
        total, parts = CombinedReward(weights, per_scenario).compute(*roll.reward_inputs())
        assert not torch.isnan(total).any()
        assert torch.isnan(parts["nano"][:2]).all() and not torch.isnan(parts["nano"][2:]).any()
        assert torch.isnan(parts["nano_answer"][2:]).all() and not torch.isnan(parts["nano_answer"][:2]).any()
        stats = mllm_step(run, 0, 0)
        assert stats["mllm/reward/understanding"] == stats["mllm/reward/understanding"]      # scored, not NaN
        from thinkgen.rl.sepgrpo import evaluate
        metrics, _ = evaluate(run)
        assert {"eval/understanding", "eval/reasoning"} <= set(metrics) and metrics["eval/count"] == 2
    finally:
        close_run(run)


@pytest.mark.parametrize("over,reason", [
    (["--schedule=[mllm, dit]", "--reward_per_scenario={understanding: {nano_answer: 1.0}}",
      "--mllm.reward_per_scenario={understanding: {nano_answer: 1.0}}"], "dit phase would draw text-output"),
    (["--schedule=[mllm]", "--reward_per_scenario={understanding: {nano_answer: 1.0}}"], "answered in text"),
    (["--schedule=[mllm]", "--mllm.reward_per_scenario={understanding: {nano_answer: 1.0}}"], "held-out rewards"),
], ids=["dit", "mllm-image-reward", "eval-image-reward"])
def test_understanding_scenario_bad_configs(tiny_ckpt, tmp_path, over, reason):
    from thinkgen.rl.sepgrpo import build_run

    cfg = load_config(CONFIGS / "sepgrpo_nano.yaml", [
        f"--model_dir={tiny_ckpt}", f"--output_dir={tmp_path / 'out'}", "--device=cpu", "--progress=false",
        "--nano_families={understanding: 1.0, reasoning: 1.0}", "--nano_train_size=2", "--nano_eval_size=1",
        "--mllm.scenario_weights={}", "--dit.scenario_weights={}", *over])
    with pytest.raises(ConfigError, match=reason):
        build_run(cfg)


def test_split_painter_bench_routes_steps_by_noise_level(tmp_path, capsys, bench_module):
    """bench/split_painter.py: its painter sends steps with t < split to the HIGH DiT and the rest to LOW (CFG
    branches together), split 1.0 paints exactly as HIGH alone, a call mixing both sides is refused, and bad
    arguments exit 2 naming the value before anything is loaded or written."""
    from thinkgen.testing import build_tiny_pipeline

    mod = bench_module("split_painter")

    high, low = build_tiny_pipeline(0), build_tiny_pipeline(1)
    kw = dict(height=32, width=32, num_inference_steps=4, seed=3)
    alone = np.asarray(high("a red circle", **kw).images[0])
    seen = {"high": [], "low": []}
    hooks = [m.register_forward_hook(lambda mod_, args, out, k=k: seen[k].append(args[1].reshape(-1).tolist()))
             for k, m in (("high", high.transformer), ("low", low.transformer))]
    dit_high = high.transformer
    high.transformer = mod.SplitPainter(dit_high, low.transformer, 1.0)
    assert (np.asarray(high("a red circle", **kw).images[0]) == alone).all()
    assert seen["low"] == [] and len(seen["high"]) == 4
    seen["high"].clear()
    high.transformer = mod.SplitPainter(dit_high, low.transformer, 0.5)
    split = np.asarray(high("a red circle", **kw).images[0])
    assert seen["high"] and seen["low"]
    assert all(t < 0.5 for call in seen["high"] for t in call) and all(t >= 0.5 for call in seen["low"] for t in call)
    assert not (split == alone).all()
    for h in hooks:
        h.remove()
    with pytest.raises(ValueError, match="mixes t on both sides"):
        high.transformer(torch.zeros(2, 4, 8, 8), torch.tensor([0.2, 0.8]))

    ckpt = tmp_path / "not_a_checkpoint"
    ckpt.mkdir()
    for argv, needle in ((["--split", "0"], "--split=0.0 must be in (0, 1]"),
                         (["--split", "nan"], "--split=nan"),
                         (["--split", "0.5", "--", "--seeds", "0"], "--seeds=0 must be >= 1"),
                         (["--split", "0.5", "--", "--out", "x"], "--out after '--' is set by split_painter.py"),
                         (["--split", "0.5", "--", "--model", "x"], "name the checkpoints with --high and --low")):
        with pytest.raises(SystemExit):
            mod.main(["--high", str(tmp_path), "--low", str(tmp_path), "--out", str(tmp_path / "o")] + argv)
        assert needle in capsys.readouterr().err, argv
    with pytest.raises(SystemExit):
        mod.main(["--high", str(ckpt), "--low", str(ckpt), "--split", "0.5", "--out", str(tmp_path / "o")])
    assert "is not a ThinkGen checkpoint folder" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
