"""SepGRPO configs: dataclasses with per-field comments, validation with reasons, YAML + ``--key=value``.

One run = ``rounds`` x ``schedule`` phases (default: one MLLM-GRPO phase, then one DiT-GRPO phase, the paper's
stage 4 -> stage 5). Each phase has its own section (``mllm:`` / ``dit:``) because each module is optimised with
its own rewards, learning rate and sampler. A YAML file holds the top-level fields plus the two sections;
overrides address section fields with a dot: ``--mllm.group_size=8 --dit.noise_level=0.7``.

Defaults follow the public references where the paper is silent (paper.md §7 items 6-8): the MLLM side follows
EasyR1 (clip 0.2 / 0.28, k3 KL 0.01, token-mean loss, lr 1e-6), the DiT side follows Flow-GRPO's SD3.5 configs
(noise level 0.7, clip 1e-4, KL 0.04, CFG 4.5, LoRA r 32 / alpha 64, lr 3e-4, adv clip 5, global std); the rollout
resolution / steps follow the paper's denoising reduction (20 steps at 512 px). All of them are choices.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..flow import SDE_KINDS
from ..train.config import _bad, coerce_scalar, read_yaml_mapping   # shared by every config

PHASES = ("mllm", "dit")
PROMPT_SOURCES = ("jsonl", "nano")
PARALLEL = ("none", "ddp", "fsdp2")
DEVICES = ("auto", "cpu", "cuda")
THINK_MODES = ("off", "on")
# Fields that may differ between a run and its resume without changing the maths.
RESUME_SAFE_FIELDS = frozenset({"resume", "allow_config_change", "log_every", "save_every", "keep_last",
                                "output_dir", "device", "eval_images", "progress", "compile"})


def _check_int(name: str, value: Any, lo: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise _bad(name, value, f"must be an integer >= {lo}", f"e.g. --{name}={max(lo, 1)}")


def _check_weights(name: str, weights: dict, allow_empty: bool = True) -> None:
    if not isinstance(weights, dict):
        raise _bad(name, weights, "must be a mapping name: weight", f"e.g. --{name}={{format: 0.2, nano: 1.0}}")
    if not weights and not allow_empty:
        raise _bad(name, weights, "is empty", f"e.g. --{name}={{nano: 1.0}}")
    for k, w in weights.items():
        if isinstance(w, bool) or not isinstance(w, (int, float)) or w != w or abs(w) == float("inf"):
            raise _bad(f"{name}.{k}", w, "a weight must be a finite number", f"e.g. {k}: 1.0")


# --------------------------------------------------------------------------------------------------- phases
@dataclass
class OptimConfig:
    """AdamW + LR schedule + LoRA fields shared by both phases."""

    lr: float = 1e-6                        # peak learning rate
    betas: tuple[float, float] = (0.9, 0.999)   # AdamW betas
    weight_decay: float = 0.01              # AdamW decoupled weight decay
    adam_eps: float = 1e-8                  # AdamW epsilon
    warmup_steps: int = 0                   # linear warm-up over this many optimizer steps of the phase kind
    max_grad_norm: float = 1.0              # gradient clipping (0 = off)
    micro_batch_size: int = 4               # samples per forward/backward (rollouts and update)
    updates_per_step: int = 1               # optimizer steps per rollout batch (> 1: later ones are off-policy
    #                                         and the PPO clip acts; 1 = on-policy, ratio exactly 1)
    lora: bool = False                      # train LoRA adapters instead of the full weights
    lora_rank: int = 16                     # adapter rank r
    lora_alpha: float = 32.0                # adapter scale alpha (effective scale alpha / r)
    lora_dropout: float = 0.0               # must stay 0: ratios need identical rollout / training forwards
    lora_target_modules: list[str] = field(default_factory=list)   # module names that get adapters
    scenario_weights: dict[str, float] = field(default_factory=dict)  # this phase's prompt mixture ({} = the run's)
    reward_weights: dict[str, float] = field(default_factory=dict)  # {} = the run's reward_weights
    reward_per_scenario: dict[str, dict[str, float]] = field(default_factory=dict)  # {} = the run's

    def _validate(self, prefix: str) -> None:
        self.betas = tuple(float(b) for b in self.betas)
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise _bad(f"{prefix}.betas", self.betas, "AdamW needs two values in [0, 1)", f"e.g. --{prefix}.betas=[0.9,0.999]")
        if not self.lr > 0 or self.lr != self.lr:
            raise _bad(f"{prefix}.lr", self.lr, "the learning rate must be > 0", f"e.g. --{prefix}.lr=1e-6")
        if self.weight_decay < 0 or self.adam_eps <= 0 or self.max_grad_norm < 0:
            raise _bad(f"{prefix}.weight_decay/adam_eps/max_grad_norm",
                       (self.weight_decay, self.adam_eps, self.max_grad_norm),
                       "need weight_decay >= 0, adam_eps > 0, max_grad_norm >= 0", "use the defaults")
        _check_int(f"{prefix}.warmup_steps", self.warmup_steps, 0)
        _check_int(f"{prefix}.micro_batch_size", self.micro_batch_size, 1)
        _check_int(f"{prefix}.updates_per_step", self.updates_per_step, 1)
        if self.lora:
            _check_int(f"{prefix}.lora_rank", self.lora_rank, 1)
            if not self.lora_alpha > 0:
                raise _bad(f"{prefix}.lora_alpha", self.lora_alpha, "must be > 0", f"e.g. --{prefix}.lora_alpha=32")
            if not self.lora_target_modules:
                raise _bad(f"{prefix}.lora_target_modules", self.lora_target_modules, "LoRA needs target modules",
                           f"e.g. --{prefix}.lora_target_modules=[q_proj,v_proj]")
        if self.lora_dropout != 0.0:
            raise _bad(f"{prefix}.lora_dropout", self.lora_dropout,
                       "dropout makes the training forward differ from the rollout forward (the on-policy ratio "
                       "would not be 1)", f"use --{prefix}.lora_dropout=0")
        _check_weights(f"{prefix}.scenario_weights", self.scenario_weights)
        if any(w < 0 for w in self.scenario_weights.values()) or (
                self.scenario_weights and sum(self.scenario_weights.values()) <= 0):
            raise _bad(f"{prefix}.scenario_weights", self.scenario_weights, "weights must be >= 0, one of them > 0",
                       "use 0 to leave a scenario out")
        _check_weights(f"{prefix}.reward_weights", self.reward_weights)
        for sc, w in self.reward_per_scenario.items():
            _check_weights(f"{prefix}.reward_per_scenario.{sc}", w, allow_empty=False)


def _check_anchor(prefix: str, weight: float, prompts_per_step: int, scenarios: dict[str, float]) -> None:
    """The anchoring fields every phase shares: a weight (0 = off), a prompt count and a scenario mixture."""
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not (weight >= 0 and math.isfinite(weight)):
        raise _bad(f"{prefix}.anchor_weight", weight, "must be a finite number >= 0 (0 = off)",
                   f"e.g. --{prefix}.anchor_weight=1.0")
    _check_int(f"{prefix}.anchor_prompts_per_step", prompts_per_step, 1)
    _check_weights(f"{prefix}.anchor_scenarios", scenarios)
    if any(w < 0 for w in scenarios.values()) or (scenarios and sum(scenarios.values()) <= 0):
        raise _bad(f"{prefix}.anchor_scenarios", scenarios, "weights must be >= 0, one of them > 0",
                   f"e.g. --{prefix}.anchor_scenarios={{text: 1.0, editing: 1.0}}")


@dataclass
class MLLMPhaseConfig(OptimConfig):
    """Stage 4, MLLM-GRPO: G thoughts per prompt, the frozen DiT renders each, token-level clipped GRPO."""

    steps: int = 10                         # optimizer steps per MLLM phase (one rollout batch each)
    prompts_per_step: int = 2               # prompts per process per step
    group_size: int = 4                     # G rollouts per prompt
    # --- think sampling
    temperature: float = 1.0                # sampling temperature (log-probs use the same temperature)
    top_p: float = 1.0                      # nucleus sampling (log-probs ignore the truncation, as EasyR1)
    top_k: int = 0                          # top-k sampling (0 = off)
    max_think_tokens: int = 256             # think budget; then `</think>` is forced (forced tokens get no loss)
    max_answer_tokens: int = 64             # answer budget after </think>
    max_image_pixels: int = 262144          # input images shown to the MLLM are shrunk below this
    # --- rendering by the frozen DiT
    features_from: str = "policy"           # "policy": the policy's own post-</think> states (as at inference);
    #                                         "reference": re-encode the answer with the frozen reference MLLM in
    #                                         the no-think layout (decouples reward from representation drift)
    render_steps: int = 20                  # Euler steps of the frozen DiT
    render_resolution: int = 512            # square render size in pixels
    render_guidance: float = 4.0            # text CFG of the renders (1 = off)
    # --- objective
    clip_low: float = 0.2                   # ratio clip 1 - clip_low
    clip_high: float = 0.28                 # ratio clip 1 + clip_high (asymmetric "clip-higher" when > clip_low)
    dual_clip: float = 0.0                  # dual clip c > 1 for negative advantages (0 = off)
    kl_coef: float = 0.01                   # beta of the k3 KL to the reference policy (0 = no reference pass)
    loss_agg: str = "token"                 # "token": mean over all tokens; "seq": per sequence, then mean
    drop_zero_adv: bool = True              # skip samples whose advantage is exactly 0 (tied groups)
    # --- feature anchoring: keep the no-think features the painter reads with thinking off close to the
    #     reference MLLM's (GRPO on think rollouts moves them as a side effect)
    anchor_weight: float = 0.0              # weight of the relative squared distance |f - f_ref|^2 / |f_ref|^2 (0 = off)
    anchor_prompts_per_step: int = 8        # no-think prompts per process per optimizer step
    anchor_scenarios: dict[str, float] = field(default_factory=dict)  # their mixture ({} = every image scenario)
    freeze_vision: bool = True              # full fine-tuning: keep the vision tower frozen
    lora_target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])

    def validate(self) -> None:
        self._validate("mllm")
        for name in ("steps", "prompts_per_step", "max_think_tokens", "max_answer_tokens", "render_steps"):
            _check_int(f"mllm.{name}", getattr(self, name), 1)
        _check_int("mllm.top_k", self.top_k, 0)
        if isinstance(self.group_size, bool) or not isinstance(self.group_size, int) or self.group_size < 2:
            raise _bad("mllm.group_size", self.group_size, "GRPO needs >= 2 samples per prompt to form an advantage",
                       "e.g. --mllm.group_size=4")
        if not self.temperature > 0 or not 0 < self.top_p <= 1:
            raise _bad("mllm.temperature/top_p", (self.temperature, self.top_p),
                       "need temperature > 0 and 0 < top_p <= 1 (GRPO samples; greedy groups would be tied)",
                       "e.g. --mllm.temperature=1.0 --mllm.top_p=1.0")
        if self.features_from not in ("policy", "reference"):
            raise _bad("mllm.features_from", self.features_from, "must be 'policy' or 'reference'",
                       "e.g. --mllm.features_from=policy")
        if self.render_resolution < 16 or self.max_image_pixels < 256:
            raise _bad("mllm.render_resolution/max_image_pixels", (self.render_resolution, self.max_image_pixels),
                       "too small", "e.g. --mllm.render_resolution=512")
        if self.render_guidance < 0:
            raise _bad("mllm.render_guidance", self.render_guidance, "must be >= 0", "e.g. 4.0")
        if not (0 <= self.clip_low < 1) or self.clip_high < 0:
            raise _bad("mllm.clip_low/clip_high", (self.clip_low, self.clip_high),
                       "need 0 <= clip_low < 1 and clip_high >= 0", "e.g. --mllm.clip_low=0.2 --mllm.clip_high=0.28")
        if self.dual_clip != 0 and self.dual_clip <= 1:
            raise _bad("mllm.dual_clip", self.dual_clip, "must be 0 (off) or > 1", "e.g. --mllm.dual_clip=3.0")
        if self.kl_coef < 0:
            raise _bad("mllm.kl_coef", self.kl_coef, "must be >= 0", "e.g. --mllm.kl_coef=0.01")
        if self.loss_agg not in ("token", "seq"):
            raise _bad("mllm.loss_agg", self.loss_agg, "must be 'token' or 'seq'", "e.g. --mllm.loss_agg=token")
        _check_anchor("mllm", self.anchor_weight, self.anchor_prompts_per_step, self.anchor_scenarios)


@dataclass
class DiTPhaseConfig(OptimConfig):
    """Stage 5, DiT-GRPO (Flow-GRPO): G SDE trajectories per prompt with per-step Gaussian log-probs."""

    steps: int = 10                         # optimizer steps per DiT phase (one rollout batch each)
    prompts_per_step: int = 2               # prompts per process per step
    group_size: int = 4                     # G images per prompt
    think: str = "on"                       # frozen MLLM conditions: "on" (greedy think) or "off" (no-think)
    max_think_tokens: int = 256             # think budget of the frozen MLLM
    max_answer_tokens: int = 64             # answer budget of the frozen MLLM
    # --- rollouts (denoising reduction: fewer steps, lower resolution than inference)
    num_steps: int = 20                     # denoising steps of a rollout
    resolution: int = 512                   # square rollout size in pixels
    noise_level: float = 0.7                # SDE noise level a (> 0)
    sde_type: str = "sde"                   # "sde": Flow-GRPO's SDE step; "cps": coefficients-preserving sampling
    same_noise: bool = False                # one initial noise for every image of a group
    guidance_scale: float = 4.5             # text CFG in rollouts AND in the training forward (1 = off)
    image_guidance_scale: float = 2.0       # reference-image CFG (editing prompts)
    detach_uncond: bool = False             # gradients through the conditional CFG branch only (train_sd3.py)
    # --- which steps are trained (and the only ones that get SDE noise; the rest are Euler)
    train_timesteps: str = "fraction"       # "fraction": the first int(num_steps * timestep_fraction) steps;
    #                                         "window": window_size consecutive steps starting in window_range
    timestep_fraction: float = 0.99         # Flow-GRPO default (skips the sharp last step)
    window_size: int = 2                    # steps per window (Flow-GRPO-Fast uses 2-3)
    window_range: list[int] = field(default_factory=lambda: [0, 10])  # [lo, hi) of window start indices
    # --- objective
    clip_range: float = 1e-4                # PPO clip epsilon of the per-step ratio
    adv_clip_max: float = 5.0               # |A| <= this
    adv_std: str = "global"                 # "global" (std over the whole batch) or "group"
    kl_coef: float = 0.04                   # beta of the closed-form step-mean KL to the reference DiT
    lr: float = 3e-4
    lora: bool = True
    lora_rank: int = 32
    lora_alpha: float = 64.0
    # --- velocity anchoring: keep the painter's guided velocity on prompts of other scenarios (e.g. the text
    #     rendering and editing that a composition run must not lose) close to the reference DiT's, along the
    #     reference's own Euler trajectories, at every step of the schedule (the KL sees trained steps only)
    anchor_weight: float = 0.0              # weight of the relative squared distance |v - v_ref|^2 / |v_ref|^2 (0 = off)
    anchor_prompts_per_step: int = 8        # anchored prompts per process per optimizer step
    anchor_scenarios: dict[str, float] = field(default_factory=dict)  # their mixture ({} = every image scenario)
    anchor_step_range: list[int] = field(default_factory=list)  # [lo, hi) of the rollout steps anchored ([] = all;
    #                                         e.g. the later, low-noise steps, where fine detail such as glyphs is drawn)
    lora_target_modules: list[str] = field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])
    trainable: list[str] = field(default_factory=lambda: ["*"])   # full fine-tuning: fnmatch patterns

    def validate(self) -> None:
        self._validate("dit")
        for name in ("steps", "prompts_per_step", "num_steps", "window_size", "max_think_tokens",
                     "max_answer_tokens"):
            _check_int(f"dit.{name}", getattr(self, name), 1)
        if isinstance(self.group_size, bool) or not isinstance(self.group_size, int) or self.group_size < 2:
            raise _bad("dit.group_size", self.group_size, "GRPO needs >= 2 images per prompt to form an advantage",
                       "e.g. --dit.group_size=4")
        if self.think not in THINK_MODES:
            raise _bad("dit.think", self.think, f"must be one of {THINK_MODES}", "e.g. --dit.think=on")
        if self.sde_type not in SDE_KINDS:
            raise _bad("dit.sde_type", self.sde_type, f"must be one of {SDE_KINDS}", "e.g. --dit.sde_type=cps")
        if not self.noise_level > 0:
            raise _bad("dit.noise_level", self.noise_level, "Flow-GRPO needs SDE noise (> 0) for log-probs; "
                       "0 is the Euler sampler", "e.g. --dit.noise_level=0.7")
        if self.resolution < 16:
            raise _bad("dit.resolution", self.resolution, "must be >= 16", "e.g. --dit.resolution=512")
        if self.guidance_scale < 0 or self.image_guidance_scale < 0:
            raise _bad("dit.guidance_scale", self.guidance_scale, "must be >= 0", "e.g. 4.5")
        if self.train_timesteps not in ("fraction", "window"):
            raise _bad("dit.train_timesteps", self.train_timesteps, "must be 'fraction' or 'window'",
                       "e.g. --dit.train_timesteps=fraction")
        if self.train_timesteps == "fraction":
            if not 0 < self.timestep_fraction <= 1 or int(self.num_steps * self.timestep_fraction) < 1:
                raise _bad("dit.timestep_fraction", self.timestep_fraction,
                           f"int(num_steps={self.num_steps} * fraction) must be >= 1", "e.g. 0.99 with 10 steps")
        else:
            lo, hi = (list(self.window_range) + [None, None])[:2]
            if len(self.window_range) != 2 or not (0 <= lo < hi) or hi + self.window_size - 1 > self.num_steps:
                raise _bad("dit.window_range", self.window_range,
                           f"need [lo, hi) with 0 <= lo < hi and hi - 1 + window_size <= num_steps={self.num_steps}",
                           f"e.g. --dit.window_range=[0,{max(1, self.num_steps // 2)}]")
        if not self.clip_range > 0 or not self.adv_clip_max > 0:
            raise _bad("dit.clip_range/adv_clip_max", (self.clip_range, self.adv_clip_max), "must be > 0",
                       "e.g. --dit.clip_range=1e-4 --dit.adv_clip_max=5")
        if self.adv_std not in ("global", "group"):
            raise _bad("dit.adv_std", self.adv_std, "must be 'global' or 'group'", "e.g. --dit.adv_std=global")
        if self.kl_coef < 0:
            raise _bad("dit.kl_coef", self.kl_coef, "must be >= 0", "e.g. --dit.kl_coef=0.04")
        if not self.lora and not self.trainable:
            raise _bad("dit.trainable", self.trainable, "nothing would be trained", "give patterns or --dit.lora=true")
        _check_anchor("dit", self.anchor_weight, self.anchor_prompts_per_step, self.anchor_scenarios)
        if self.anchor_step_range:
            lo, hi = (list(self.anchor_step_range) + [None, None])[:2]
            if (len(self.anchor_step_range) != 2 or not all(isinstance(v, int) and not isinstance(v, bool)
                                                            for v in (lo, hi)) or not 0 <= lo < hi <= self.num_steps):
                raise _bad("dit.anchor_step_range", self.anchor_step_range,
                           f"need [lo, hi) with 0 <= lo < hi <= num_steps={self.num_steps}, or [] for every step",
                           f"e.g. --dit.anchor_step_range=[{self.num_steps // 2},{self.num_steps}]")

    def anchor_steps(self) -> list[int]:
        """Indices of the rollout steps the velocity anchor holds."""
        lo, hi = self.anchor_step_range if self.anchor_step_range else (0, self.num_steps)
        return list(range(lo, hi))

    def trained_steps(self, window_start: int | None = None) -> list[int]:
        """Indices of the trained (and SDE) steps; ``window_start`` is drawn by the caller in window mode."""
        if self.train_timesteps == "fraction":
            return list(range(int(self.num_steps * self.timestep_fraction)))
        assert window_start is not None, "window mode needs a window start"
        return list(range(window_start, window_start + self.window_size))


# --------------------------------------------------------------------------------------------------- the run
@dataclass
class SepGRPOConfig:
    """A SepGRPO run: alternating MLLM-GRPO and DiT-GRPO phases over a prompt mixture."""

    # --- where things are
    model_dir: str = ""                     # released-layout checkpoint to start from (the stage-3 model)
    output_dir: str = "runs/sepgrpo"        # checkpoints/, final/ and logs/ are written here
    # --- schedule
    rounds: int = 1                         # how many times the schedule repeats
    schedule: list[str] = field(default_factory=lambda: ["mllm", "dit"])   # phases of one round, in order
    seed: int = 0                           # every rollout seed derives from (seed, phase, round, step, prompt, sample)
    # --- prompts
    prompt_source: str = "jsonl"            # "jsonl": train_prompts / eval_prompts files; "nano": nano families
    train_prompts: str = ""                 # JSONL of {"scenario", "prompt", optional "images", "meta"}
    eval_prompts: str = ""                  # held-out JSONL ("" = no held-out evaluation unless source is nano)
    scenario_weights: dict[str, float] = field(default_factory=dict)   # mixture weight per scenario ({} = every
    #                                                                    prompt equally likely); phases may override
    nano_families: dict[str, float] = field(default_factory=dict)      # source nano: family -> mixture weight (a
    #                                                                    family with weight 0 is only evaluated)
    nano_train_size: int = 2000             # source nano: training prompts generated per family
    nano_eval_size: int = 32                # source nano: held-out prompts per family
    # --- rewards (see thinkgen.rl.rewards; each phase may override them)
    reward_weights: dict[str, float] = field(default_factory=dict)     # name -> weight (default for every scenario)
    reward_per_scenario: dict[str, dict[str, float]] = field(default_factory=dict)  # scenario -> {name: weight}
    reward_kwargs: dict[str, dict] = field(default_factory=dict)       # name -> constructor kwargs
    reward_workers: int = 1                 # threads scoring asynchronously while the next work runs
    reward_modules: list[str] = field(default_factory=list)   # python modules imported first (they may register
    #                                                           rewards with thinkgen.rl.rewards.register_reward)
    # --- held-out evaluation between phases
    eval_before: bool = True                # evaluate the starting model too (the "before" numbers)
    eval_think: str = "on"                  # MLLM mode in evaluation (greedy decoding)
    eval_steps: int = 20                    # Euler steps in evaluation
    eval_resolution: int = 512              # square evaluation size
    eval_guidance: float = 4.0              # text CFG in evaluation
    eval_seeds: int = 1                     # images per held-out prompt (seeds 0..n-1)
    eval_max_prompts: int = 256             # cap on held-out prompts
    eval_images: int = 8                    # evaluation images logged to TensorBoard (0 = none)
    # --- system
    device: str = "auto"                    # "auto" (cuda:LOCAL_RANK if available), "cpu", "cuda"
    dtype: str = "float32"                  # weights dtype: "float32", or "bfloat16" (pure bf16 training, no fp32
    #                                         master copy; SDE / log-prob maths stay fp32)
    parallel: str = "none"                  # "none", "ddp" (both models replicated), "fsdp2" (both sharded)
    compile: bool = False                   # torch.compile the DiT's transformer blocks (rollouts, updates and
    #                                         evaluation; a one-off compile of ~1 min, then faster steps)
    progress: bool = True                   # tqdm bars on rank 0
    # --- logging / checkpoints
    log_every: int = 1                      # scalars every N steps
    save_every: int = 25                    # checkpoint every N steps (and always at the end of a phase)
    keep_last: int = 3                      # complete checkpoints kept (0 = all)
    resume: str = "auto"                    # "auto" (newest complete checkpoint), "never", or a step folder
    allow_config_change: list[str] = field(default_factory=list)   # fields allowed to differ on resume
    # --- phases
    mllm: MLLMPhaseConfig = field(default_factory=MLLMPhaseConfig)
    dit: DiTPhaseConfig = field(default_factory=DiTPhaseConfig)

    def __post_init__(self):
        if isinstance(self.mllm, dict):
            self.mllm = _build(MLLMPhaseConfig, self.mllm, "mllm")
        if isinstance(self.dit, dict):
            self.dit = _build(DiTPhaseConfig, self.dit, "dit")
        _check_int("rounds", self.rounds, 1)
        if not self.schedule or any(p not in PHASES for p in self.schedule):
            raise _bad("schedule", self.schedule, f"must be a non-empty list of {PHASES}", "e.g. --schedule=[mllm,dit]")
        if self.prompt_source not in PROMPT_SOURCES:
            raise _bad("prompt_source", self.prompt_source, f"must be one of {PROMPT_SOURCES}",
                       "e.g. --prompt_source=jsonl")
        if self.prompt_source == "nano" and not self.nano_families:
            raise _bad("nano_families", self.nano_families, "source nano needs at least one family with a weight",
                       "e.g. nano_families: {reasoning: 1.0, composition: 1.0}")
        _check_weights("scenario_weights", self.scenario_weights)
        _check_weights("nano_families", self.nano_families)
        if self.prompt_source == "nano":
            from .rollout import nano_scenario

            for name in self.nano_families:
                try:
                    nano_scenario(name)
                except ConfigError as e:
                    raise _bad("nano_families", name, str(e), "e.g. nano_families: {composition/counting: 1.0}")
        for name, w in list(self.scenario_weights.items()) + list(self.nano_families.items()):
            if w < 0:
                raise _bad(name, w, "mixture weights must be >= 0", "use 0 to leave a scenario out")
        if self.scenario_weights and sum(self.scenario_weights.values()) <= 0:
            raise _bad("scenario_weights", self.scenario_weights, "all weights are 0", "give one scenario a weight > 0")
        _check_weights("reward_weights", self.reward_weights)
        for sc, w in self.reward_per_scenario.items():
            _check_weights(f"reward_per_scenario.{sc}", w, allow_empty=False)
        if not isinstance(self.reward_kwargs, dict) or any(not isinstance(v, dict) for v in self.reward_kwargs.values()):
            raise _bad("reward_kwargs", self.reward_kwargs, "must map reward name -> {kwarg: value}",
                       "e.g. reward_kwargs: {clip_similarity: {model_dir: /models/siglip}}")
        for phase in set(self.schedule):
            pc = getattr(self, phase)
            if not (pc.reward_weights or pc.reward_per_scenario or self.reward_weights or self.reward_per_scenario):
                raise _bad(f"{phase}.reward_weights", {}, f"the {phase} phase has no reward",
                           "set reward_weights (e.g. {nano: 1.0}) or the phase's own reward_weights")
        if (self.eval_prompts or self.prompt_source == "nano") and not (self.reward_weights or self.reward_per_scenario):
            raise _bad("reward_weights", self.reward_weights, "held-out evaluation scores with the run's own reward, "
                       "which is empty", "set reward_weights (phases may still override theirs)")
        for name in ("nano_train_size", "nano_eval_size", "eval_steps", "eval_seeds", "log_every", "reward_workers"):
            _check_int(name, getattr(self, name), 1)
        for name in ("eval_max_prompts", "eval_images", "save_every", "keep_last"):
            _check_int(name, getattr(self, name), 0)
        if self.eval_think not in THINK_MODES:
            raise _bad("eval_think", self.eval_think, f"must be one of {THINK_MODES}", "e.g. --eval_think=on")
        if self.eval_resolution < 16 or self.eval_guidance < 0:
            raise _bad("eval_resolution/eval_guidance", (self.eval_resolution, self.eval_guidance),
                       "need resolution >= 16 and guidance >= 0", "e.g. --eval_resolution=512")
        if self.device not in DEVICES and not str(self.device).startswith("cuda:"):
            raise _bad("device", self.device, f"must be one of {DEVICES} or cuda:N", "e.g. --device=auto")
        if self.dtype not in ("float32", "bfloat16"):
            raise _bad("dtype", self.dtype, "must be 'float32' or 'bfloat16'", "e.g. --dtype=float32")
        if self.parallel not in PARALLEL:
            raise _bad("parallel", self.parallel, f"must be one of {PARALLEL}", "e.g. --parallel=ddp")
        if self.parallel == "fsdp2" and "mllm" in self.schedule and not (self.mllm.lora or self.mllm.freeze_vision):
            raise _bad("mllm.freeze_vision", self.mllm.freeze_vision, "under parallel=fsdp2 the vision tower is "
                       "replicated outside FSDP (HF generate calls it outside the root forward), so it cannot train",
                       "use --mllm.freeze_vision=true, or --parallel=ddp to train the vision tower")
        if not (self.resume in ("auto", "never") or self.resume):
            raise _bad("resume", self.resume, "must be 'auto', 'never' or a checkpoint folder", "e.g. --resume=auto")
        known = set(flat_field_names())
        for name in self.allow_config_change:
            if name not in known:
                raise _bad("allow_config_change", self.allow_config_change, f"{name!r} is not a config field",
                           "list field names, sections with a dot (mllm.lr)")
        for phase in PHASES:
            getattr(self, phase).validate()

    # ------------------------------------------------------------------ helpers
    def check_ready(self) -> None:
        """Checks that need the file system; called before any work."""
        if not self.model_dir:
            raise _bad("model_dir", self.model_dir, "no model folder given",
                       "pass --model_dir=PATH (released layout, e.g. the stage-3 checkpoint)")
        if not Path(self.model_dir).is_dir():
            raise _bad("model_dir", self.model_dir, "the folder does not exist", "pass an existing released-layout folder")
        if self.prompt_source == "jsonl":
            if not self.train_prompts:
                raise _bad("train_prompts", self.train_prompts, "source jsonl needs a prompt file",
                           "pass --train_prompts=PATH.jsonl")
            for name in ("train_prompts", "eval_prompts"):
                p = getattr(self, name)
                if p and not Path(p).is_file():
                    raise _bad(name, p, "the file does not exist", "fix the path")

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))

    def hash_dict(self) -> dict[str, Any]:
        """The fields that must match on resume (flattened; everything but RESUME_SAFE_FIELDS)."""
        flat = _flatten(self.to_dict())
        return {k: v for k, v in flat.items() if k not in RESUME_SAFE_FIELDS}

    def phase(self, name: str) -> MLLMPhaseConfig | DiTPhaseConfig:
        return getattr(self, name)

    def mixture_weights(self, phase: str) -> dict[str, float]:
        """Scenario weights of a phase's prompt mixture ({} = every prompt equally likely)."""
        own = self.phase(phase).scenario_weights
        if own:
            return dict(own)
        return dict(self.nano_families) if self.prompt_source == "nano" else dict(self.scenario_weights)

    def reward_spec(self, phase: str | None) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
        """(weights, per_scenario) of a phase (None = evaluation: the run's own)."""
        if phase is not None:
            pc = self.phase(phase)
            if pc.reward_weights or pc.reward_per_scenario:
                return dict(pc.reward_weights), dict(pc.reward_per_scenario)
        return dict(self.reward_weights), dict(self.reward_per_scenario)


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if k in PHASES and isinstance(v, dict) and not prefix:
            out.update(_flatten(v, f"{k}."))
        else:
            out[prefix + k] = v
    return out


def flat_field_names() -> list[str]:
    names = [f.name for f in dataclasses.fields(SepGRPOConfig) if f.name not in PHASES]
    names += [f"mllm.{f.name}" for f in dataclasses.fields(MLLMPhaseConfig)]
    names += [f"dit.{f.name}" for f in dataclasses.fields(DiTPhaseConfig)]
    return names


# --------------------------------------------------------------------------------------------------- loading
def _coerce(name: str, value: Any, tp) -> Any:
    """Check / convert a YAML value to the annotated type; ConfigError naming the field otherwise."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp in (bool, int, float, str):
        return coerce_scalar(name, value, tp)
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise _bad(name, value, "expected a list", f"e.g. --{name}=[a,b]")
        elem = args[0] if args else str
        out = [_coerce(name, v, elem) for v in value]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise _bad(name, value, "expected a mapping", f"e.g. --{name}={{key: 1.0}}")
        vt = args[1] if len(args) == 2 else Any
        if vt in (float, int):
            return {str(k): _coerce(f"{name}.{k}", v, vt) for k, v in value.items()}
        if typing.get_origin(vt) is dict:
            return {str(k): _coerce(f"{name}.{k}", v, vt) for k, v in value.items()}
        return {str(k): v for k, v in value.items()}
    return value


def _build(cls, values: dict[str, Any], where: str):
    if not isinstance(values, dict):
        raise ConfigError(f"section {where!r} must be a mapping of field: value, got {values!r}")
    valid = [f.name for f in dataclasses.fields(cls)]
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for k, v in values.items():
        if k not in valid:
            close = difflib.get_close_matches(k, valid, n=3)
            hint = f"did you mean {', '.join(close)}?" if close else f"valid keys: {', '.join(valid)}"
            raise ConfigError(f"unknown config key {k!r} in {where}; {hint}")
        if k in PHASES and cls is SepGRPOConfig:
            kwargs[k] = v
            continue
        kwargs[k] = _coerce(f"{where}.{k}" if where in PHASES else k, v, hints[k])
    return cls(**kwargs)


def parse_overrides(argv) -> dict[str, Any]:
    """``["--mllm.lr=1e-6", "--rounds=2"]`` -> nested ``{"mllm": {"lr": 1e-6}, "rounds": 2}`` (values parsed as YAML)."""
    import yaml

    out: dict[str, Any] = {}
    for arg in argv:
        if not arg.startswith("--") or "=" not in arg:
            raise ConfigError(f"override {arg!r} is not of the form --key=value")
        key, raw = arg[2:].split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        parts = key.split(".")
        if len(parts) > 2 or (len(parts) == 2 and parts[0] not in PHASES):
            raise ConfigError(f"override --{key}: only the sections {PHASES} take a dotted key (e.g. --mllm.lr=1e-6)")
        parts = [p.replace("-", "_") for p in parts]
        if len(parts) == 2:
            out.setdefault(parts[0], {})
            if not isinstance(out[parts[0]], dict):
                raise ConfigError(f"override --{key} conflicts with --{parts[0]}=...")
            out[parts[0]][parts[1]] = value
        else:
            out[parts[0]] = value
    return out


def build_config(values: dict[str, Any], where: str = "config") -> SepGRPOConfig:
    return _build(SepGRPOConfig, dict(values), where)


def load_config(path: str | os.PathLike | None = None, overrides=()) -> SepGRPOConfig:
    """YAML file (optional) + overrides (``--key=value`` strings or a nested dict) -> validated config."""
    values = read_yaml_mapping(path)
    extra = overrides if isinstance(overrides, dict) else parse_overrides(overrides)
    for k, v in extra.items():
        if k in PHASES and isinstance(v, dict) and isinstance(values.get(k), dict):
            values[k] = {**values[k], **v}
        else:
            values[k] = v
    return build_config(values, where=str(path) if path else "overrides")


def config_to_yaml(cfg: SepGRPOConfig) -> str:
    import yaml

    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
