"""Train ThinkGen-Nano from scratch: data -> VAE || MLLM SFT -> vision tower -> DiT stage 1 -> DiT stage 2 -> focus
continuation -> final.

    thinkgen train nano --out runs/nano [--preset smoke|cpu2h|quick|full] [--device cpu|cuda] [--jobs 2]
                        [--set KEY=VALUE ...] [--skip-eval] [--stages a,b,...] [--final-from-checkpoint]

Every stage writes into ``OUT/<stage>/`` and a ``OUT/<stage>.done`` marker; a rerun skips finished stages (and the
project trainers resume unfinished ones from their last checkpoint). Stages:

1. ``data``   - ``thinkgen.nano.data.write_datasets``: SFT + DiT JSONL (train split only) and rendered images.
2. ``vae``    - ``thinkgen.nano.vae_train``: AutoencoderKL x4 on rendered scenes, scale / shift from latent stats.
   With ``--jobs 2`` it runs in a subprocess on one thread while the MLLM SFT uses the other.
3. ``mllm``   - tokenizer (``models.build_nano_tokenizer``) + random tiny Qwen3-VL, then the project's MLLM SFT
   (``thinkgen.train.mllm_sft.train_mllm``, vision tower trained too); ``mllm2``: a second SFT phase (fresh
   warm-up + cosine) from the first.
4. ``vision`` - the vision tower alone (language model frozen) on the image-input SFT records. The DiT's features
   are text-only no-think features, so they are unchanged by this stage (``stage_final`` checks it).
   ``vision_pre`` - dense pretraining of that tower (``thinkgen.nano.vision``): every merged visual token predicts
   the kind / colour / size / sign letter covering its cell, the concatenated tokens the 3x3 slots, on fresh exact
   scenes at ``understand_side`` px (16 tokens per scene at 128 px).
   ``und_data`` + ``understand`` - MLLM SFT (project trainer) on scene captions + VQA whose answers follow a think
   trace describing the scene, with the generation SFT records; the text-only DiT features stay anchored to the
   vision-stage MLLM (``anchor_weight``), so the DiT stages below (trained on that MLLM's features) still fit.
   ``understand2``: the thoughts down-weighted so the answer gets the signal; ``understand3``: fresh VQA whose
   thought ends with the question's key restated next to what follows it in the caption (``focus_thought``).
   ``final`` ships the last of these MLLMs (its processor at ``understand_side``).
5. ``dit1``   - the project's DiT trainer, paper stage 1: connector (caption embedder) + prepad states only,
   pseudo-CoT no-think features of the frozen SFT MLLM.
6. ``dit2``   - paper stage 2: the whole DiT on the same pseudo-CoT data (composition, reasoning targets, text,
   editing and reflection with references), CFG dropout, EMA; ``dit3``: an optional continuation of stage 2 from
   its EMA weights (fresh warm-up + cosine).
   ``focus_data`` + ``dit4``: a second DiT set (``FOCUS_MIX``: text rendering and editing weighted up, 40 % of the
   pairs as ``condition: think`` records) and a continuation on it from the dit3 EMA weights.
7. ``final``  - ``ThinkGenPipeline.save_pretrained`` in the released layout (EMA transformer, vision-stage MLLM, the
   processor at the SFT image size), ``thinkgen_defaults`` in model_index.json.
8. ``eval``   - ``thinkgen.nano.evaluate`` on held-out prompts (small; the full table is a separate command).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch

STAGES = ("data", "vae", "mllm", "mllm2", "vision", "vision_pre", "und_data", "understand", "understand2",
          "understand3", "dit1", "dit2", "dit3", "focus_data", "dit4", "align", "final", "eval")
# ``dit4`` ("focus"): a continuation on a second DiT set weighted to text rendering and editing, a share of it in the
# think-on feature format (``condition: think`` records), so the painter also learns the features it sees with think
# on. Family weights of that set:
# MLLM only: can run next to the DiT stages
EYE_STAGES = ("vision_pre", "und_data", "understand", "understand2", "understand3")
DIT_STAGES = ("dit1", "dit2", "dit3", "focus_data", "dit4")
FOCUS_MIX = {"composition": 1.5, "reasoning": 0.75, "text": 3.0, "editing": 4.0, "reflection": 0.5}
# ``align``: the DiT stages read the vision-stage MLLM's text features (they run next to the eye stages), the shipped
# MLLM is the last eye phase's. ``align`` continues the DiT on the features of that final MLLM, on a fresh set weighted
# to editing and text rendering (the continuation that lifted held-out editing 0.32 -> 0.63, bench/results/nano_eval.md):
ALIGN_MIX = {"composition": 1.5, "reasoning": 0.75, "text": 3.0, "editing": 5.0, "reflection": 0.75}


@dataclass(frozen=True)
class Recipe:
    sizes: str
    n_sft: int
    n_dit: int
    vae_steps: int
    vae_batch: int
    mllm_steps: int
    mllm_batch: int
    mllm_lr: float
    dit1_steps: int
    dit2_steps: int
    dit_batch: int
    dit1_lr: float
    dit2_lr: float
    dit2_ema: float = 0.998
    dit3_steps: int = 0          # optional continuation of stage 2 from its EMA weights (fresh warm-up + cosine)
    dit3_lr: float = 4e-4
    mllm2_steps: int = 0         # second SFT phase (fresh warm-up + cosine) continuing from the first
    mllm2_lr: float = 1.5e-3
    vision_steps: int = 0        # vision-tower-only SFT on the image-input records (language model frozen)
    vision_lr: float = 1e-3
    dit4_steps: int = 0          # "focus" continuation (FOCUS_MIX, think-format share) from the dit3 / dit2 EMA weights
    dit4_lr: float = 5e-4
    focus_n_dit: int = 16000     # DiT pairs of the focus set (data_focus/dit.jsonl)
    focus_think_fraction: float = 0.4
    # understanding ("eyes"): dense pretraining of the vision tower on exact per-token labels (thinkgen.nano.vision),
    # then SFT on captions + VQA with the text-only DiT features anchored to the vision-stage MLLM. The MLLM then
    # sees scenes at understand_side px (16 visual tokens at 128 instead of 4 at 64).
    understand_side: int = 128
    vision_pre_steps: int = 0
    vision_pre_lr: float = 2e-3
    und_n_qa: int = 12000
    und_n_captions: int = 12000
    understand_steps: int = 0
    understand_lr: float = 1e-3
    understand_anchor: float = 30.0
    understand2_steps: int = 0       # continuation with the think block down-weighted (the answer gets the signal)
    understand2_lr: float = 5e-4
    understand2_think_weight: float = 0.1
    # phase 3: fresh VQA whose think trace ends with the question's key restated (vision.focus_thought), so the
    # answer is read next to the key (an induction-style copy) instead of by a two-hop lookup in the caption
    und3_n_qa: int = 120000
    understand3_steps: int = 0
    understand3_lr: float = 5e-4
    understand3_think_weight: float = 0.5
    understand3_vqa_ratio: float = 0.7   # share of the batch for the focus VQA (captions 0.1, generation the rest)
    # block expansion before phase 3: this many new language-model layers (zeroed copies, the model's function and
    # DiT features unchanged at the start; thinkgen.train.models.expand_mllm_layers). On nano, 2 or 4 more layers
    # did not lift understanding (bench/results/nano_understanding.md, session 11), so every preset keeps 0
    understand3_add_layers: int = 0
    # 1: phase 3's focus thoughts carry binding words ("small cyan star cyanstar top left ; cyan star cyanstar top
    # left"; vision.BINDING_WORDS), whose tokens are appended to the tokenizer before phase 3 (expanded_mllm)
    understand3_binding: int = 0
    align_steps: int = 0         # DiT continuation on the final MLLM's features (ALIGN_MIX), after the eye stages
    align_lr: float = 3e-4
    align_n_dit: int = 40000
    sample_steps: int = 20
    eval_n: int = 8
    eval_seeds: int = 2

    def __post_init__(self):
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "sizes":
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                raise ValueError(f"recipe {f.name}={v!r} must be a number >= 0 (e.g. --set {f.name}=...)")
        if self.understand_side % 32 or self.understand_side < 32:
            raise ValueError(f"recipe understand_side={self.understand_side!r} must be a multiple of 32 (16 px patches "
                             "merged 2x2), e.g. --set understand_side=128")
        for name in ("n_sft", "n_dit", "vae_batch", "mllm_batch", "dit_batch", "sample_steps", "eval_seeds"):
            if getattr(self, name) < 1:
                raise ValueError(f"recipe {name}={getattr(self, name)!r} must be >= 1")
        if self.understand3_steps > 0 and self.und3_n_qa < 1:
            raise ValueError(f"recipe und3_n_qa={self.und3_n_qa!r} must be >= 1 when understand3_steps > 0 "
                             "(e.g. --set und3_n_qa=40000)")
        if not 0.0 < self.understand3_vqa_ratio < 0.9:
            raise ValueError(f"recipe understand3_vqa_ratio={self.understand3_vqa_ratio!r} must be in (0, 0.9): "
                             "captions take 0.1 of the batch, generation records the rest (e.g. --set "
                             "understand3_vqa_ratio=0.7)")
        if self.understand3_add_layers > 0:
            from thinkgen.nano.models import sizes as nano_sizes

            if (n := nano_sizes(self.sizes).mllm_layers) < 3:
                raise ValueError(f"recipe understand3_add_layers={self.understand3_add_layers!r} needs an MLLM with "
                                 f">= 3 decoder layers (sizes {self.sizes!r} has {n}); use --set "
                                 "understand3_add_layers=0")
        if self.understand3_binding not in (0, 1):
            raise ValueError(f"recipe understand3_binding={self.understand3_binding!r} must be 0 or 1 (1: focus "
                             "thoughts with binding words)")
        if self.align_steps > 0 and self.align_n_dit < 1:
            raise ValueError(f"recipe align_n_dit={self.align_n_dit!r} must be >= 1 when align_steps > 0 "
                             "(e.g. --set align_n_dit=40000)")
        if self.dit4_steps > 0 and self.focus_n_dit < 1:
            raise ValueError(f"recipe focus_n_dit={self.focus_n_dit!r} must be >= 1 when dit4_steps > 0")
        if not 0.0 <= self.focus_think_fraction <= 1.0:
            raise ValueError(f"recipe focus_think_fraction={self.focus_think_fraction!r} must be in [0, 1] "
                             "(e.g. --set focus_think_fraction=0.4)")


RECIPES: dict[str, Recipe] = {
    "smoke": Recipe("smoke", n_sft=24, n_dit=24, vae_steps=2, vae_batch=2, mllm_steps=2, mllm_batch=2, mllm_lr=1e-3,
                    mllm2_steps=2, vision_steps=2, vision_pre_steps=2, und_n_qa=8, und_n_captions=8,
                    understand_steps=2, understand2_steps=2, understand3_steps=2, und3_n_qa=8, understand_side=64,
                    dit3_steps=2, dit4_steps=2, align_steps=2, align_n_dit=24,
                    focus_n_dit=24, understand3_binding=1,
                    dit1_steps=2, dit2_steps=2, dit_batch=2, dit1_lr=1e-3, dit2_lr=1e-3, sample_steps=2, eval_n=2,
                    eval_seeds=1),
    # the shipped checkpoint's recipe. NOT timed end to end on the 2-core box: by its parts, data..dit3 ~81 min and
    # focus_data + dit4 ~53 min (1 thread), i.e. about 2 h 15 min; the eye stages (~46 min, then understand3's 21,000
    # steps ~125 min at 2.6-3 it/s on 1 thread) run next to the DiT stages with --jobs 2, so about 2 h 50 min in all,
    # then ``align`` (7,000 steps, ~1 h 40 min on 1 thread at ~1.2 it/s; it needs the final MLLM so it runs after the
    # eye stages): about 4 h 30 min. The shipped DiT was made as stage 3 -> DiT-GRPO -> two align-style continuations
    # (bench/nano_dit_focus.py, 4,000 + 3,000 steps on 20,000 fresh pairs each); the recipe runs one 7,000-step
    # ``align`` on 40,000 pairs instead, not run at full size. ``--set align_steps=0`` gives the stage-3 checkpoint.
    # The shipped MLLM's phase 3 was six restarted runs (3,000 x 3 + 4,000 x 3 steps, a fresh 40,000-question draw
    # each, focus_thought v1, v2, v3, then v3b), then the binding tokens appended and one 6,000-step run with binding
    # thoughts (bench/results/nano_understanding.md, session 12); understand3 runs them as one phase with binding
    # thoughts from the start.
    "quick": Recipe("quick", n_sft=6000, n_dit=6000, vae_steps=800, vae_batch=16, mllm_steps=700, mllm_batch=16,
                    mllm_lr=2e-3, dit1_steps=100, dit2_steps=4000, dit_batch=16, dit1_lr=2e-3, dit2_lr=1e-3,
                    mllm2_steps=1600, vision_steps=1000, dit3_steps=2400, dit4_steps=4000, vision_pre_steps=3000,
                    understand_steps=4000, understand2_steps=1500, understand3_steps=21000, understand3_binding=1,
                    align_steps=7000),
    # the from-scratch budget of issue 4: everything (data, VAE, MLLM SFT, eyes, DiT stages 1-2, align) in at most
    # 2 h on a 2-core CPU with the default --jobs 2. Stage 2 runs next to the eye stages (one thread each), align
    # replaces dit3 / dit4 (it continues stage 2 on the final MLLM's features), fewer eye steps than ``quick``.
    # Measured end to end: 1 h 43 min on this 2-core box (2026-11-27, bench/results/nano_cpu2h.md, quality there).
    # It keeps the measured phase 3 (no binding thoughts; ``--set understand3_binding=1`` gives them, not timed).
    "cpu2h": Recipe("quick", n_sft=6000, n_dit=6000, vae_steps=800, vae_batch=16, mllm_steps=700, mllm_batch=16,
                    mllm_lr=2e-3, dit1_steps=100, dit2_steps=4000, dit_batch=16, dit1_lr=2e-3, dit2_lr=1e-3,
                    mllm2_steps=1000, vision_steps=800, dit3_steps=0, dit4_steps=0, vision_pre_steps=2000,
                    understand_steps=3000, understand2_steps=1000, understand3_steps=4500, und3_n_qa=40000,
                    align_steps=3000, align_n_dit=20000),
    # bigger DiT and longer schedules, for a GPU or dedicated cores (NOT measured)
    "full": Recipe("full", n_sft=12000, n_dit=12000, vae_steps=1200, vae_batch=16, mllm_steps=1800, mllm_batch=16,
                   mllm_lr=2e-3, dit1_steps=200, dit2_steps=6000, dit_batch=16, dit1_lr=2e-3, dit2_lr=1e-3,
                   mllm2_steps=2000, vision_steps=1500, dit3_steps=3000, dit4_steps=4000, vision_pre_steps=3000,
                   understand_steps=6000, understand2_steps=2000, understand3_steps=21000, understand3_binding=1,
                   align_steps=7000),
}


def _log(msg: str) -> None:
    print(f"[nano {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _done(out: Path, stage: str) -> bool:
    return (out / f"{stage}.done").is_file()


def _mark(out: Path, stage: str, info: dict) -> None:
    (out / f"{stage}.done").write_text(json.dumps(info, indent=2) + "\n")


def _copy(src: Path, dst: Path) -> None:
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)


# ------------------------------------------------------------------------------------------------------- stages
def stage_data(out: Path, r: Recipe, seed: int) -> None:
    from thinkgen.nano.data import write_datasets

    write_datasets(out / "data", r.n_sft, r.n_dit, seed=seed)


def stage_focus_data(out: Path, r: Recipe, seed: int) -> None:
    from thinkgen.nano.data import write_datasets

    write_datasets(out / "data_focus", 8000, r.focus_n_dit, seed=seed + 11, dit_mix=FOCUS_MIX,
                   think_fraction=r.focus_think_fraction)


def vae_command(out: Path, r: Recipe, seed: int, device: str) -> list[str]:
    return [sys.executable, "-m", "thinkgen.nano.vae_train", "--out", str(out / "vae"), "--preset", r.sizes,
            "--steps", str(r.vae_steps), "--batch-size", str(r.vae_batch), "--seed", str(seed), "--device", device,
            "--check-scenes", "10" if r.sizes == "smoke" else "200"]


def stage_mllm_base(out: Path, r: Recipe, seed: int) -> Path:
    """Random tiny Qwen3-VL + nano tokenizer + processor in ``OUT/mllm/base`` (mllm/, processor/)."""
    from thinkgen.nano.models import build_mllm, build_nano_tokenizer, sizes

    base = out / "mllm" / "base"
    if not (base / "mllm").is_dir():
        tok = build_nano_tokenizer()
        m = build_mllm(tok, sizes(r.sizes), seed=seed)
        tmp = out / "mllm" / ".base.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        m.save_pretrained(tmp / "mllm", tmp / "processor")
        os.replace(tmp, base)
    return base


def stage_mllm(out: Path, r: Recipe, seed: int, device: str, overrides: dict) -> Path:
    from thinkgen.nano.models import sizes
    from thinkgen.train.config import mllm_sft
    from thinkgen.train.mllm_sft import train_mllm

    base = stage_mllm_base(out, r, seed)
    cfg = mllm_sft(**{**dict(
        model_dir=str(base), data=[str(out / "data" / "sft.jsonl")], output_dir=str(out / "mllm" / "run"),
        seed=seed, lr=r.mllm_lr, warmup_steps=max(1, min(50, r.mllm_steps // 10)), lr_schedule="cosine",
        min_lr_ratio=0.05, max_steps=r.mllm_steps, batch_size=r.mllm_batch, max_seq_len=512,
        max_image_pixels=sizes(r.sizes).vision_side ** 2, freeze_vision=False, weight_decay=0.0, device=device,
        log_every=25, save_every=max(100, r.mllm_steps // 4), keep_last=1, shuffle_buffer=2000), **overrides.get("mllm", {})})
    return train_mllm(cfg)


def stage_mllm2(out: Path, r: Recipe, seed: int, device: str, overrides: dict) -> Path:
    """Second SFT phase from ``OUT/mllm/run/final`` into ``OUT/mllm/run2`` (skipped when mllm2_steps = 0)."""
    from thinkgen.train.config import mllm_sft
    from thinkgen.train.mllm_sft import train_mllm

    from thinkgen.nano.models import sizes

    if r.mllm2_steps <= 0:
        return out / "mllm" / "run" / "final"
    cfg = mllm_sft(**{**dict(
        model_dir=str(out / "mllm" / "run" / "final"), data=[str(out / "data" / "sft.jsonl")],
        output_dir=str(out / "mllm" / "run2"), seed=seed + 1, lr=r.mllm2_lr, warmup_steps=20, lr_schedule="cosine",
        min_lr_ratio=0.05, max_steps=r.mllm2_steps, batch_size=r.mllm_batch, max_seq_len=512,
        max_image_pixels=sizes(r.sizes).vision_side ** 2, freeze_vision=False, weight_decay=0.0, device=device,
        log_every=25, save_every=200, keep_last=1, shuffle_buffer=2000), **overrides.get("mllm2", {})})
    return train_mllm(cfg)


def sft_final(out: Path) -> Path:
    run2 = out / "mllm" / "run2" / "final"
    return run2 if (run2 / "mllm").is_dir() else out / "mllm" / "run" / "final"


def stage_vision(out: Path, r: Recipe, seed: int, device: str) -> Path | None:
    """Train only the vision tower (``model.visual.*``, deepstack mergers included) on the SFT records that carry
    an input image (understanding, editing, reflection), with the SFT loss. The language model is frozen, so the
    DiT's text-only (no-think) features are exactly those of the SFT MLLM: this stage can run next to DiT training.
    Writes ``OUT/mllm/vision/{mllm,processor}``; ``stage_final`` takes the vision weights from there."""
    import json as _json
    import random as _random

    from thinkgen.mllm import ThinkGenMLLM
    from PIL import Image
    from thinkgen.train.mllm_sft import build_sft_batch, save_mllm_folder

    if r.vision_steps <= 0:
        return None
    src = sft_final(out)
    from thinkgen.nano.models import build_processor, sizes

    mllm = ThinkGenMLLM.from_pretrained(src / "mllm", src / "processor")
    mllm.processor = build_processor(mllm.processor.tokenizer, sizes(r.sizes))   # the size the SFT used
    net, proc = mllm.model, mllm.processor
    px = proc.min_pixels
    data_path = out / "data" / "sft.jsonl"
    recs = [_json.loads(x) for x in data_path.read_text().splitlines() if x.strip()]
    recs = [x for x in recs if x.get("input_images")]
    for x in recs:
        x["images"] = [Image.open(data_path.parent / p_).convert("RGB") for p_ in x["input_images"]]
    for name, p_ in net.named_parameters():
        p_.requires_grad_(".visual." in f".{name}")
    params = [p_ for p_ in net.parameters() if p_.requires_grad]
    opt = torch.optim.AdamW(params, lr=r.vision_lr, betas=(0.9, 0.95), weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s_: min(1.0, (s_ + 1) / 20) * max(0.05, 0.5 * (
        1 + __import__("math").cos(__import__("math").pi * min(s_, r.vision_steps) / r.vision_steps))))
    rng = _random.Random(seed + 2)
    net.to(device).train()
    net.config.use_cache = False
    t0 = time.time()
    for step in range(1, r.vision_steps + 1):
        batch = build_sft_batch(proc, rng.sample(recs, min(r.mllm_batch, len(recs))), 512, px)
        batch = {k: v.to(device) for k, v in batch.items()}
        loss = net(**batch, use_cache=False).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if step % 25 == 0 or step == r.vision_steps:
            _log(f"vision step {step}/{r.vision_steps} loss {float(loss.detach()):.4f} ({time.time() - t0:.0f} s)")
    net.eval()
    dst = out / "mllm" / "vision"
    tmp = out / "mllm" / ".vision.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    save_mllm_folder(tmp / "mllm", net, net.state_dict())
    proc.save_pretrained(tmp / "processor")
    if dst.exists():
        shutil.rmtree(dst)
    os.replace(tmp, dst)
    return dst


def vision_final(out: Path) -> Path:
    """The MLLM the DiT stages train on: the vision stage's (same language model as SFT) or the SFT result."""
    vision = out / "mllm" / "vision"
    return vision if (vision / "mllm").is_dir() else sft_final(out)


def stage_vision_pre(out: Path, r: Recipe, seed: int, device: str) -> Path | None:
    """Dense pretraining of the vision tower (``thinkgen.nano.vision.pretrain_vision``) from the vision-stage MLLM,
    with the processor at ``understand_side`` px. Writes ``OUT/mllm/vision_pre/{mllm,processor}``."""
    from thinkgen.mllm import ThinkGenMLLM
    from thinkgen.nano.vision import pretrain_vision
    from thinkgen.processor import ThinkGenProcessor

    if r.vision_pre_steps <= 0:
        return None
    src = vision_final(out)
    mllm = ThinkGenMLLM.from_pretrained(src / "mllm", src / "processor").to(device)
    px = r.understand_side ** 2
    mllm.processor = ThinkGenProcessor(mllm.processor.tokenizer, min_pixels=px, max_pixels=px)
    acc = pretrain_vision(mllm, r.vision_pre_steps, lr=r.vision_pre_lr, seed=seed + 3, log=_log)
    _log(f"vision_pre: held-out probe accuracies {acc}")
    dst = out / "mllm" / "vision_pre"
    tmp = out / "mllm" / ".vision_pre.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    mllm.to("cpu").save_pretrained(tmp / "mllm", tmp / "processor")
    (tmp / "probe_accuracy.json").write_text(json.dumps(acc, indent=2) + "\n")
    if dst.exists():
        shutil.rmtree(dst)
    os.replace(tmp, dst)
    return dst


def stage_und_data(out: Path, r: Recipe, seed: int) -> dict | None:
    from thinkgen.nano.vision import write_understanding_data

    if r.understand_steps <= 0:
        return None
    paths = write_understanding_data(out / "data_und", r.und_n_qa, r.und_n_captions, seed=seed + 21,
                                     sft_jsonl=out / "data" / "sft.jsonl")
    if r.understand3_steps > 0:
        paths["vqa_focus"] = write_understanding_data(out / "data_und" / "focus", r.und3_n_qa, 0, seed=seed + 23,
                                                      focus=True, binding=bool(r.understand3_binding))["vqa"]
    return paths


def understand_final(out: Path) -> Path | None:
    for d in (out / "mllm" / s_ / "final" for s_ in ("understand3", "understand2", "understand")):
        if (d / "mllm").is_dir():
            return d
    return None


def eye_sft_fields(r: Recipe, phase: int, start: Path, vqa: Path, und_dir: Path, output_dir: Path,
                   anchor_model_dir: Path, *, seed: int, lr: float, steps: int, think_weight: float, device: str,
                   vqa_ratio: float | None = None) -> dict:
    """MLLM SFT config fields of an eye phase (shared by ``stage_understand`` and bench/nano_focus_phase.py): VQA
    from ``vqa``, captions and generation records from ``und_dir``, DiT features anchored to ``anchor_model_dir``.
    Phase 3 gives the answers most of the batch (``vqa_ratio``, default 0.6; captions 0.1, generation the rest)."""
    if phase == 3:
        ratios = (0.6, 0.1, 0.3) if vqa_ratio is None else (vqa_ratio, 0.1, 0.9 - vqa_ratio)
    else:
        ratios = (0.35, 0.3, 0.35)
    return dict(
        model_dir=str(start), data=[{"path": str(vqa), "ratio": ratios[0]},
                                    {"path": str(und_dir / "captions.jsonl"), "ratio": ratios[1]},
                                    {"path": str(und_dir / "sft_gen.jsonl"), "ratio": ratios[2]}],
        output_dir=str(output_dir), seed=seed, lr=lr, warmup_steps=50 if phase > 1 else 100,
        lr_schedule="cosine", min_lr_ratio=0.05, max_steps=steps, batch_size=r.mllm_batch,
        think_loss_weight=think_weight,
        anchor_images=phase > 1,   # phases 2-3 also hold the edits' features (the DiT reads them with a reference image)
        max_seq_len=512, max_image_pixels=r.understand_side ** 2, freeze_vision=False, weight_decay=0.0,
        loss_reduction="sample", anchor_weight=r.understand_anchor, anchor_model_dir=str(anchor_model_dir),
        device=device, log_every=50, save_every=250, keep_last=1, shuffle_buffer=2000)


def stage_understand(out: Path, r: Recipe, seed: int, device: str, overrides: dict,
                     phase: int = 1) -> Path | None:
    """The project's MLLM SFT from ``vision_pre`` on captions + VQA (answers after a think trace that describes the
    scene) + the generation SFT records (with their think traces), vision tower trained, per-sample loss, text-only
    DiT features anchored to the vision-stage MLLM (``anchor_weight``), so the DiT trained on that MLLM's features
    keeps its conditioning. ``phase`` 2: from phase 1's result, thoughts down-weighted, edits anchored too; ``phase``
    3: from phase 2's result on fresh VQA whose thoughts end with the question's key restated (``focus_thought``)."""
    from thinkgen.train.config import mllm_sft
    from thinkgen.train.mllm_sft import train_mllm

    steps, lr, think_weight = {1: (r.understand_steps, r.understand_lr, 1.0),
                               2: (r.understand2_steps, r.understand2_lr, r.understand2_think_weight),
                               3: (r.understand3_steps, r.understand3_lr, r.understand3_think_weight)}[phase]
    if steps <= 0:
        return None
    d = out / "data_und"
    start = out / "mllm" / "vision_pre"
    if phase > 1:       # the previous phase's result (phase 3 from phase 1's when phase 2 is switched off)
        prev = [f"understand{'' if k == 1 else k}" for k in range(phase - 1, 0, -1)]
        start = next(out / "mllm" / n / "final" for n in prev if (out / "mllm" / n / "final" / "mllm").is_dir())
    elif not (start / "mllm").is_dir():
        start = vision_final(out)
    name = "understand" if phase == 1 else f"understand{phase}"
    vqa = d / "focus" / "vqa.jsonl" if phase == 3 else d / "vqa.jsonl"
    if phase == 3 and (r.understand3_add_layers > 0 or r.understand3_binding):
        start = expanded_mllm(start, out / "mllm" / "understand3_expanded", r.understand3_add_layers,
                              binding_tokens=bool(r.understand3_binding))
    cfg = mllm_sft(**{**eye_sft_fields(r, phase, start, vqa, d, out / "mllm" / name, vision_final(out),
                                       seed=seed + 2 + 2 * phase, lr=lr, steps=steps, think_weight=think_weight,
                                       device=device, vqa_ratio=r.understand3_vqa_ratio if phase == 3 else None),
                      **overrides.get(name, {})})
    return train_mllm(cfg)


def expanded_mllm(start: Path, dst: Path, add: int = 0, head_factor: int = 1, intermediate_size: int | None = None,
                  binding_tokens: bool = False) -> Path:
    """``start`` (mllm/ + processor/) grown by ``add`` decoder layers (block expansion) and/or widened
    (``head_factor`` times the attention heads, an MLP of ``intermediate_size`` units; ``widen_mllm``), checked to
    give the same DiT features (8 held-out composition prompts) and the same greedy answers (8 held-out questions) as
    ``start``, then written atomically to ``dst``; reused when ``dst/mllm`` exists (a resumed run). With
    ``binding_tokens`` the tokenizer and embeddings also gain one token per ``vision.BINDING_WORDS`` word (for focus
    thoughts with binding words). Nothing is written if the check fails; ``ValueError`` for nothing to grow, a
    deepening of a model with < 3 layers, a widening that would shrink the MLP, or binding words already present."""
    from thinkgen.errors import CheckpointError
    from thinkgen.mllm import ThinkGenMLLM
    from thinkgen.nano.evaluate import EVAL_SEED
    from thinkgen.nano.prompts import generate
    from thinkgen.nano.vision import BINDING_WORDS
    from thinkgen.train.models import add_word_tokens, expand_mllm_layers, widen_mllm

    if (dst / "mllm").is_dir():
        return dst
    widen = head_factor != 1 or intermediate_size is not None
    if add == 0 and not widen and not binding_tokens:
        raise ValueError("nothing to grow: give add >= 1 new layers, head_factor > 1, a larger intermediate_size or "
                         "binding tokens")
    old = ThinkGenMLLM.from_pretrained(start / "mllm", start / "processor")
    model, order = old.model, list(range(old.model.config.text_config.num_hidden_layers))
    if add:
        model, order = expand_mllm_layers(model, add)
    if widen:
        model = widen_mllm(model, head_factor, intermediate_size)
    processor = old.processor
    if binding_tokens:
        processor = copy.deepcopy(old.processor)
        if model is old.model:
            model = copy.deepcopy(old.model)
        add_word_tokens(model, processor.tokenizer, list(BINDING_WORDS), BINDING_WORDS)
    new = ThinkGenMLLM(model, processor)
    prompts = [s.prompt for s in generate("composition", 8, seed=EVAL_SEED, split="heldout")]
    qs = generate("understanding", 8, seed=EVAL_SEED, split="heldout")
    with torch.no_grad():
        fa, fb = old.encode_instructions(prompts).features, new.encode_instructions(prompts).features
    drift = float((fa - fb).abs().max())
    answers = [m.think([q.question for q in qs], [[q.input_image()] for q in qs], mode="chat", do_sample=False,
                       max_think_tokens=160, max_answer_tokens=16).instructions for m in (old, new)]
    if drift > 1e-5 or answers[0] != answers[1]:
        raise CheckpointError(f"the expanded MLLM differs from {start} (feature max diff {drift:.2e}, greedy answers "
                              f"equal {answers[0] == answers[1]}); nothing written")
    tmp = dst.with_name(f".{dst.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    new.save_pretrained(tmp / "mllm", tmp / "processor")
    os.replace(tmp, dst)
    tc = model.config.text_config
    _log(f"MLLM grown to {len(order)} layers (order {order}), {tc.num_attention_heads} heads / "
         f"{tc.num_key_value_heads} kv heads, MLP {tc.intermediate_size}, vocabulary {tc.vocab_size}; feature max "
         f"diff {drift:.2e}; "
         f"{len(qs)} greedy answers equal; wrote {dst}")
    return dst


def feature_drift(a, b, prompts: list[str]) -> float:
    """Relative L2 distance of the no-think DiT features two MLLMs give the same prompts."""
    with torch.no_grad():
        fa, fb = a.encode_instructions(prompts).features, b.encode_instructions(prompts).features
    return float(((fa - fb).pow(2).sum() / fa.pow(2).sum()).sqrt())


def assemble_base(out: Path, r: Recipe, seed: int) -> Path:
    """Released-layout folder for the DiT trainer: SFT MLLM + trained VAE + random DiT + scheduler."""
    from thinkgen.loading import load_vae_strict
    from thinkgen.mllm import ThinkGenMLLM
    from thinkgen.nano.models import build_dit, nano_defaults, sizes
    from thinkgen.pipeline import ThinkGenPipeline
    from thinkgen.scheduler import ThinkGenScheduler

    root = out / "dit_base"
    if (root / "model_index.json").is_file():
        return root
    sft = sft_final(out)
    mllm = ThinkGenMLLM.from_pretrained(sft / "mllm", sft / "processor")
    vae = load_vae_strict(out / "vae" / "vae")
    pipe = ThinkGenPipeline(mllm, build_dit(sizes(r.sizes), seed=seed), vae, ThinkGenScheduler(), name="nano-base")
    pipe.save_pretrained(root)
    write_defaults(root, r)
    return root


def write_defaults(root: Path, r: Recipe) -> None:
    from thinkgen.nano.models import nano_defaults

    idx = json.loads((root / "model_index.json").read_text())
    idx["thinkgen_defaults"] = nano_defaults(r.sample_steps)
    tmp = root / ".model_index.json.tmp"
    tmp.write_text(json.dumps(idx, indent=2) + "\n")
    os.replace(tmp, root / "model_index.json")


def stage_dit(out: Path, r: Recipe, seed: int, device: str, which: str, overrides: dict) -> Path:
    from thinkgen.train.config import stage1, stage2
    from thinkgen.train.dit_trainer import train_dit

    if which == "dit1":
        model_dir = assemble_base(out, r, seed)
    elif which == "dit2":
        model_dir = out / "dit1" / "final"
    else:   # dit3 / dit4 continue from the previous result in the released layout (EMA transformer)
        model_dir = out / f"{which}_base"
        prev = "dit2" if which == "dit3" or not (out / "dit3").is_dir() else "dit3"
        if not (model_dir / "model_index.json").is_file():
            tmp = stage_final(out, r, dest=out / f".{which}_base.tmp", source=prev)
            os.replace(tmp, model_dir)
    steps = {"dit1": r.dit1_steps, "dit2": r.dit2_steps, "dit3": r.dit3_steps, "dit4": r.dit4_steps}[which]
    data = out / ("data_focus" if which == "dit4" else "data") / "dit.jsonl"
    cache = {"dit3": "_dit3", "dit4": "_dit4"}.get(which, "")
    preset = stage1 if which == "dit1" else stage2
    cfg = preset(**{**dict(
        model_dir=str(model_dir), data=[str(data)], output_dir=str(out / which), seed=seed + (5 if which == "dit4" else 0),
        lr={"dit1": r.dit1_lr, "dit2": r.dit2_lr, "dit3": r.dit3_lr, "dit4": r.dit4_lr}[which],
        warmup_steps=max(1, min(50, steps // 10)),
        lr_schedule="constant" if which == "dit1" else "cosine", min_lr_ratio=0.05, max_steps=steps,
        ema_decay=0.0 if which == "dit1" else r.dit2_ema,
        batch_size=r.dit_batch, weight_decay=0.0, max_output_pixels=64 * 64, max_input_pixels=[64 * 64],
        prompt_dropout_prob=0.1, ref_dropout_prob=0.5,
        feature_cache_dir=str(out / "cache" / f"features{cache}"),
        latent_cache_dir=str(out / "cache" / f"latents{cache}"), max_text_tokens=128, device=device, log_every=25,
        save_every=100, keep_last=2, shuffle_buffer=2000, export_full_model=True),
        **overrides.get(which, {})})
    return train_dit(cfg)


def dit_align(start: Path, run_dir: Path, *, data_seed: int, steps: int, lr: float, n_dit: int,
              batch_size: int = 16, mix: dict[str, float] | None = None, think_fraction: float = 0.4,
              device: str = "cpu", overrides: dict | None = None) -> Path:
    """Continue the DiT of the released-layout ``start`` with the text features of ``start``'s own MLLM, on ``n_dit``
    fresh train-split pairs (``mix``, default ``ALIGN_MIX``; ``think_fraction`` in the think-on format). Writes
    ``run_dir/data`` and the trainer's ``run_dir/{checkpoints,final}``; returns ``run_dir/final`` (EMA transformer in
    ``transformer_ema/``)."""
    from thinkgen.nano.data import write_datasets
    from thinkgen.train.config import stage2
    from thinkgen.train.dit_trainer import train_dit

    data = run_dir / "data"
    if not (data / "dit.jsonl").is_file():
        write_datasets(data, 200, n_dit, seed=data_seed, dit_mix=mix or ALIGN_MIX, think_fraction=think_fraction)
    cfg = stage2(**{**dict(
        model_dir=str(start), data=[str(data / "dit.jsonl")], output_dir=str(run_dir), seed=data_seed, lr=lr,
        warmup_steps=max(1, min(50, steps // 10)), lr_schedule="cosine", min_lr_ratio=0.05, max_steps=steps,
        ema_decay=0.998, batch_size=batch_size, weight_decay=0.0, max_output_pixels=64 * 64,
        max_input_pixels=[64 * 64], prompt_dropout_prob=0.1, ref_dropout_prob=0.5,
        feature_cache_dir=str(run_dir / "cache" / "features"), latent_cache_dir=str(run_dir / "cache" / "latents"),
        max_text_tokens=128, device=device, log_every=25, save_every=500, keep_last=2, shuffle_buffer=2000,
        export_full_model=True), **(overrides or {})})
    return train_dit(cfg)


def stage_align(out: Path, r: Recipe, seed: int, device: str, overrides: dict) -> Path | None:
    """``align``: the newest DiT stage's result with the final (eye-stage) MLLM, continued on that MLLM's features."""
    if r.align_steps <= 0:
        return None
    base = out / "align_base"
    if not (base / "model_index.json").is_file():
        tmp = stage_final(out, r, dest=out / ".align_base.tmp", source=newest_dit_stage(out, r, with_align=False),
                          final_mllm=True)
        os.replace(tmp, base)
    return dit_align(base, out / "align", data_seed=seed + 21, steps=r.align_steps, lr=r.align_lr,
                     n_dit=r.align_n_dit, batch_size=r.dit_batch, device=device, overrides=overrides.get("align"))


def newest_dit_stage(out: Path, r: Recipe, with_align: bool = True) -> str:
    """The last DiT stage that the recipe runs and that has a folder in ``out`` (align, dit4, dit3, else dit2)."""
    order = (("align", r.align_steps),) * with_align + (("dit4", r.dit4_steps), ("dit3", r.dit3_steps), ("dit2", 1))
    return next(s_ for s_, n_ in order if n_ > 0 and (out / s_).is_dir())


def newest_checkpoint(run: Path) -> Path | None:
    ck = sorted(p for p in (run / "checkpoints").glob("step-*") if (p / "manifest.json").is_file())
    return ck[-1] if ck else None


def stage_final(out: Path, r: Recipe, from_checkpoint: bool = False, dest: Path | None = None,
                source: str | None = None, final_mllm: bool | None = None) -> Path:
    """Released layout in ``OUT/final`` from the stage-2 export (EMA weights when present). ``from_checkpoint``:
    use the newest complete stage-2 checkpoint instead (a run stopped before its last step; EMA when saved)."""
    from safetensors.torch import load_file

    from thinkgen.models.dit import ThinkGenTransformer2DModel
    from thinkgen.pipeline import ThinkGenPipeline

    base = ThinkGenPipeline.from_pretrained(out / "dit1" / "final")
    vision = out / "mllm" / "vision"
    if (vision / "mllm").is_dir():      # vision-tower-only stage: same language model, better eyes
        from thinkgen.mllm import ThinkGenMLLM

        vm = ThinkGenMLLM.from_pretrained(vision / "mllm", vision / "processor")
        lm_old = {k: v for k, v in base.mllm.model.state_dict().items() if ".visual." not in f".{k}"}
        lm_new = {k: v for k, v in vm.model.state_dict().items() if ".visual." not in f".{k}"}
        if any(not torch.equal(lm_old[k], lm_new[k]) for k in lm_old):
            raise SystemExit("the vision stage changed language-model weights; refusing to mix it with the DiT")
        base = ThinkGenPipeline(vm, base.transformer, base.vae, base.scheduler)
    und = understand_final(out)
    und_mllm = None
    if final_mllm is None:
        final_mllm = dest is None
    if und is not None and final_mllm:       # the shipped MLLM; DiT-stage bases keep the vision-stage one
        from thinkgen.mllm import ThinkGenMLLM
        from thinkgen.nano.prompts import generate

        und_mllm = ThinkGenMLLM.from_pretrained(und / "mllm", und / "processor")
        prompts = [s_.prompt for f_ in ("composition", "text", "reasoning")
                   for s_ in generate(f_, 16, seed=5, split="heldout")]
        _log(f"final: understanding MLLM; no-think DiT feature drift vs the vision-stage MLLM "
             f"{feature_drift(base.mllm, und_mllm, prompts):.4f} (relative L2, 48 held-out prompts)")
    if source is None:
        source = newest_dit_stage(out, r)
    src = out / source / "final"
    if from_checkpoint or not (src / "transformer").is_dir():
        ck = newest_checkpoint(out / source)
        if ck is None:
            raise SystemExit(f"no export or checkpoint under {out / source}")
        _log(f"final: from checkpoint {ck}")
        dit = ThinkGenTransformer2DModel.from_pretrained(ck / "transformer")
        ema = ck / "trainer_state" / "ema.safetensors"
        if ema.is_file():
            state = dit.state_dict()
            state.update(load_file(str(ema)))
            dit.load_state_dict(state, strict=True)
    else:
        sub = "transformer_ema" if (src / "transformer_ema").is_dir() else "transformer"
        dit = ThinkGenTransformer2DModel.from_pretrained(src / sub)
    dit = dit.eval().requires_grad_(False)
    from thinkgen.nano.models import build_processor, sizes

    base.mllm.processor = build_processor(base.mllm.processor.tokenizer, sizes(r.sizes))  # SFT image size
    if und_mllm is not None:
        base = ThinkGenPipeline(und_mllm, base.transformer, base.vae, base.scheduler)   # its own processor (128 px)
    pipe = ThinkGenPipeline(base.mllm, dit, base.vae, base.scheduler, name="thinkgen-nano")
    dest = dest or out / "final"
    pipe.save_pretrained(dest)
    write_defaults(dest, r)
    return dest


def checkpoint_mb(root: Path) -> float:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) / 2**20


# ------------------------------------------------------------------------------------------------------- main
def _parse_sets(items: list[str]) -> tuple[dict, dict]:
    """``--set mllm_steps=100`` (recipe fields) or ``--set dit2.lr=1e-3`` (trainer config fields of a stage)."""
    import yaml

    recipe, trainer = {}, {}
    for it in items:
        if "=" not in it:
            raise SystemExit(f"--set needs KEY=VALUE, got {it!r}")
        k, v = it.split("=", 1)
        v = yaml.safe_load(v)
        if "." in k:
            st, f = k.split(".", 1)
            trainer.setdefault(st, {})[f] = v
        else:
            recipe[k] = v
    return recipe, trainer


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="thinkgen train nano", description="Train ThinkGen-Nano from scratch.")
    p.add_argument("--out", required=True, type=Path, help="run folder (resumable: finished stages are skipped)")
    p.add_argument("--preset", default="quick", choices=sorted(RECIPES),
                   help="smoke (seconds), cpu2h (from scratch in under 2 h on 2 CPU cores), quick, full")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=2, help="2: train the VAE in a subprocess next to the MLLM SFT")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    p.add_argument("--stages", default=",".join(STAGES), help="comma list of stages to run (default: all)")
    p.add_argument("--set", dest="sets", action="append", default=[],
                   help="override a recipe field (mllm_steps=100) or a trainer field (dit2.lr=1e-3)")
    p.add_argument("--skip-eval", action="store_true")
    p.add_argument("--final-from-checkpoint", action="store_true",
                   help="build final/ from the newest stage-2 checkpoint (after stopping stage 2 early)")
    a = p.parse_args(argv)
    rset, tset = _parse_sets(a.sets)
    unknown = sorted(set(rset) - {f.name for f in fields(Recipe)})
    if unknown:
        p.error(f"--set names unknown recipe fields {unknown}; see thinkgen.nano.train.Recipe")
    try:
        r = replace(RECIPES[a.preset], **rset)
    except ValueError as e:
        p.error(str(e))   # exit 2 before any stage runs
    out = a.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "recipe.json").write_text(json.dumps({"preset": a.preset, **asdict(r), "overrides": tset}, indent=2) + "\n")
    want = [s for s in a.stages.split(",") if s]
    if a.skip_eval and "eval" in want:
        want.remove("eval")
    if a.threads:
        torch.set_num_threads(a.threads)
    times: dict[str, float] = {}

    def run(stage: str, fn) -> None:
        if stage not in want:
            return
        if _done(out, stage):
            _log(f"{stage}: done already, skipped")
            return
        _log(f"{stage}: start")
        t = time.time()
        res = fn()
        times[stage] = round(time.time() - t, 1)
        _mark(out, stage, {"seconds": times[stage], "result": str(res) if res is not None else None})
        _log(f"{stage}: finished in {times[stage]} s")

    run("data", lambda: stage_data(out, r, a.seed))

    vae_proc = None
    if "vae" in want and not _done(out, "vae"):
        cmd = vae_command(out, r, a.seed, a.device)
        if a.jobs >= 2 and "mllm" in want and not _done(out, "mllm") and a.device == "cpu":
            env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
            _log("vae: start (subprocess, 1 thread, log in vae.log)")
            vae_t0 = time.time()
            (out / "vae").mkdir(exist_ok=True)
            vae_proc = subprocess.Popen(cmd, env=env, stdout=open(out / "vae.log", "w"), stderr=subprocess.STDOUT)
            torch.set_num_threads(1)
        else:
            run("vae", lambda: subprocess.run(cmd, check=True))
    run("mllm", lambda: stage_mllm(out, r, a.seed, a.device, tset))
    if vae_proc is not None:
        rc = vae_proc.wait()
        if rc != 0:
            raise SystemExit(f"VAE training failed (exit {rc}); see {out / 'vae.log'}")
        times["vae"] = round(time.time() - vae_t0, 1)
        _mark(out, "vae", {"seconds": times["vae"], "result": str(out / "vae" / "vae")})
        _log(f"vae: finished in {times['vae']} s")
        torch.set_num_threads(a.threads or os.cpu_count() or 1)
    run("mllm2", lambda: stage_mllm2(out, r, a.seed, a.device, tset))
    run("vision", lambda: stage_vision(out, r, a.seed, a.device))
    eyes = [s_ for s_ in EYE_STAGES if s_ in want and not _done(out, s_)]
    eyes_proc = None
    if eyes and a.jobs >= 2 and a.device == "cpu" and any(s_ in want for s_ in DIT_STAGES):
        # the eye stages need only the vision-stage MLLM and the DiT stages never read their result: run them in a
        # subprocess on one thread next to the DiT stages (they join before ``final``)
        cmd = [sys.executable, "-m", "thinkgen.nano.train", "--out", str(out), "--preset", a.preset, "--seed",
               str(a.seed), "--device", a.device, "--jobs", "1", "--threads", "1", "--stages", ",".join(eyes)]
        for it in a.sets:
            cmd += ["--set", it]
        _log(f"{','.join(eyes)}: start (subprocess, 1 thread, log in eyes.log)")
        eyes_proc = subprocess.Popen(cmd, env=dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1"),
                                     stdout=open(out / "eyes.log", "w"), stderr=subprocess.STDOUT)
        torch.set_num_threads(max(1, (a.threads or os.cpu_count() or 2) - 1))
    else:
        run("vision_pre", lambda: stage_vision_pre(out, r, a.seed, a.device))
        run("und_data", lambda: stage_und_data(out, r, a.seed))
        run("understand", lambda: stage_understand(out, r, a.seed, a.device, tset))
        run("understand2", lambda: stage_understand(out, r, a.seed, a.device, tset, phase=2))
        run("understand3", lambda: stage_understand(out, r, a.seed, a.device, tset, phase=3))
    run("dit1", lambda: stage_dit(out, r, a.seed, a.device, "dit1", tset))
    run("dit2", lambda: stage_dit(out, r, a.seed, a.device, "dit2", tset))
    run("dit3", lambda: stage_dit(out, r, a.seed, a.device, "dit3", tset) if r.dit3_steps > 0 else None)
    run("focus_data", lambda: stage_focus_data(out, r, a.seed) if r.dit4_steps > 0 else None)
    run("dit4", lambda: stage_dit(out, r, a.seed, a.device, "dit4", tset) if r.dit4_steps > 0 else None)
    if eyes_proc is not None:
        rc = eyes_proc.wait()
        if rc != 0:
            raise SystemExit(f"the eye stages failed (exit {rc}); see {out / 'eyes.log'}")
        torch.set_num_threads(a.threads or os.cpu_count() or 1)
    run("align", lambda: stage_align(out, r, a.seed, a.device, tset))
    run("final", lambda: stage_final(out, r, a.final_from_checkpoint))
    if "final" in want and (out / "final").is_dir():
        _log(f"final checkpoint {out / 'final'}: {checkpoint_mb(out / 'final'):.1f} MB")

    def _eval():
        from thinkgen.nano.evaluate import main as eval_main

        return eval_main(["--model", str(out / "final"), "--out", str(out / "eval"), "--seeds", str(r.eval_seeds),
                          "--n-per-family", str(r.eval_n), "--device", a.device])

    run("eval", _eval)
    (out / "times.json").write_text(json.dumps(
        {s: json.loads((out / f"{s}.done").read_text()).get("seconds") for s in STAGES if _done(out, s)},
        indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
