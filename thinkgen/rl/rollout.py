"""What both SepGRPO phases share: prompts, seeds, rollout hand-offs, rendering, references, the nano reward.

Hand-offs (batch layout: the G samples of a prompt are contiguous, sample b belongs to prompt b // G):

* ``PromptItem``   one prompt of a scenario (+ input images, + per-prompt facts for the reward).
* ``TextRollout``  MLLM-GRPO: prompt ids, completion ids and mask, old / reference token log-probs, and the
                   post-``</think>`` features the frozen DiT rendered from.
* ``ImageRollout`` DiT-GRPO: DiT conditions, the timestep grid, every state x_0..x_S and the per-step
                   log-probs of the SDE steps, and which steps are trained.

Randomness is never drawn from a global stream: a prompt draw, a think sample or an initial noise is seeded by
``derive_seed(run seed, phase, round, step, prompt index, sample index)``, so a resumed run re-draws exactly
what the killed run would have drawn, whatever happened before.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from PIL import Image
from torch import Tensor

from ..errors import ConfigError
from ..mllm import DEFAULT_NEGATIVE_PROMPT
from ..models.vae import latents_to_pil, vae_scale_factor
from ..sampling import DiTConditions, Guidance, sample
from .rewards import MissingDependencyError, register_reward

__all__ = [
    "PromptItem", "TextRollout", "ImageRollout", "derive_seed",
    "load_jsonl_prompts", "nano_prompt_items", "nano_scenario", "PromptMixture",
    "latent_shape", "initial_noise", "reference_latents", "negative_conditions", "decode_images", "render",
    "FrozenReference", "adapters_disabled", "plan_micro_batches", "NanoReward",
]


# --------------------------------------------------------------------------------------------------- prompts
OUTPUTS = ("image", "text")


@dataclass
class PromptItem:
    """One training / evaluation prompt."""

    scenario: str                                        # e.g. "composition", "reasoning", "text", "editing"
    prompt: str                                          # the user's instruction
    images: list = field(default_factory=list)           # input images (PIL, or paths loaded on first use)
    meta: dict = field(default_factory=dict)             # facts for the reward (e.g. {"sample": ...}, {"text": ...})
    uid: str = ""                                        # stable id (file:line or family:split:index)
    output: str = "image"    # "image": the DiT renders it, rewards score the image; "text": the MLLM's answer is
                             # the output (understanding): MLLM-GRPO only, never rendered, rewards read
                             # meta["instruction"] and receive None for the image

    def __post_init__(self):
        if self.output not in OUTPUTS:
            raise ConfigError(f"prompt {self.uid or self.prompt!r}: output must be one of {OUTPUTS}, got {self.output!r}")

    def load_images(self) -> list[Image.Image]:
        from ..images import load_image

        return [im if isinstance(im, Image.Image) else load_image(im) for im in self.images]

    @property
    def prompt_mode(self) -> str:
        """The MLLM prompt of a think rollout: "think" (ThinkGen generation prompt) or "chat" (text output)."""
        return "chat" if self.output == "text" else "think"

    def reward_meta(self, **extra) -> dict:
        return {**self.meta, "scenario": self.scenario, "uid": self.uid, **extra}


def load_jsonl_prompts(path: str | Path) -> list[PromptItem]:
    """``{"scenario": str, "prompt": str, "images": [paths]?, "meta": {...}?, "output": "image" | "text"?}`` per
    line; paths are relative to the file; ``output`` "text" marks a prompt answered in text (e.g. a VQA question with
    ``meta.answer``), trained by MLLM-GRPO without rendering. Every problem is a ConfigError naming the line."""
    path = Path(path)
    items = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{where} is not valid JSON ({e})") from None
        if not isinstance(rec, dict):
            raise ConfigError(f"{where} must be a JSON object")
        unknown = set(rec) - {"scenario", "prompt", "images", "meta", "output"}
        if unknown:
            raise ConfigError(f"{where} has unknown keys {sorted(unknown)}; allowed: scenario, prompt, images, meta, "
                              "output")
        scenario, prompt = rec.get("scenario"), rec.get("prompt")
        if not isinstance(scenario, str) or not scenario:
            raise ConfigError(f"{where}: 'scenario' must be a non-empty string, got {scenario!r}")
        if not isinstance(prompt, str) or not prompt.strip():
            raise ConfigError(f"{where}: 'prompt' must be a non-empty string, got {prompt!r}")
        images = rec.get("images") or []
        if not isinstance(images, list) or not all(isinstance(p, str) for p in images):
            raise ConfigError(f"{where}: 'images' must be a list of paths")
        images = [p if Path(p).is_absolute() else str(path.parent / p) for p in images]
        for p in images:
            if not Path(p).is_file():
                raise ConfigError(f"{where}: image {p} does not exist")
        meta = rec.get("meta") or {}
        if not isinstance(meta, dict):
            raise ConfigError(f"{where}: 'meta' must be an object")
        output = rec.get("output", "image")
        if output not in OUTPUTS:
            raise ConfigError(f"{where}: 'output' must be one of {OUTPUTS}, got {output!r}")
        items.append(PromptItem(scenario, prompt, images, meta, uid=where, output=output))
    if not items:
        raise ConfigError(f"{path} holds no prompts")
    return items


NANO_IMAGE_FAMILIES = ("composition", "reasoning", "text", "editing", "reflection")
NANO_TEXT_FAMILIES = ("understanding",)       # answered in text: MLLM-GRPO only (reward: nano_answer)


def nano_scenario(name: str) -> tuple[str, tuple[str, ...] | None]:
    """``"family"`` or ``"family/category"`` -> (family, categories or None); ConfigError naming the fix."""
    from ..nano import prompts as nano_prompts

    fam, _, cat = name.partition("/")
    if fam not in NANO_IMAGE_FAMILIES + NANO_TEXT_FAMILIES:
        raise ConfigError(f"nano scenario {name!r}: unknown family {fam!r}; use one of "
                          f"{NANO_IMAGE_FAMILIES + NANO_TEXT_FAMILIES}, optionally as family/category")
    if not cat:
        return fam, None
    if cat not in nano_prompts.CATEGORIES[fam]:
        raise ConfigError(f"nano scenario {name!r}: unknown {fam} category {cat!r}; expected one of "
                          f"{nano_prompts.CATEGORIES[fam]}")
    return fam, (cat,)


def nano_prompt_items(families: Sequence[str], split: str, per_family: int, seed: int) -> list[PromptItem]:
    """Prompts of the ThinkGen-Nano families (``thinkgen.nano.prompts.generate``), scenario = the name given.

    A name is a family (``"composition"``: its categories in turn) or one category of it
    (``"composition/counting"``), so a mixture can weight the categories that still have headroom. The input image
    (editing, reflection, understanding) is the sample's rendered ``input_scene``; the sample itself goes to
    ``meta["sample"]`` for the ``nano`` / ``nano_correct`` / ``nano_answer`` rewards. Understanding items are
    text-output items (``output="text"``: MLLM-GRPO only, rewarded with ``nano_answer``).
    """
    from ..nano import prompts as nano_prompts

    items = []
    for name in families:
        fam, cats = nano_scenario(name)
        for i, s in enumerate(nano_prompts.generate(fam, per_family, seed=seed, split=split, categories=cats)):
            image = s.input_image()
            items.append(PromptItem(name, s.prompt, [image] if image is not None else [], {"sample": s},
                                    uid=f"nano:{name}:{split}:{seed}:{i}",
                                    output="text" if fam in NANO_TEXT_FAMILIES else "image"))
    return items


class PromptMixture:
    """Weighted scenario mixture: draw a scenario by weight, then a prompt of it uniformly.

    Stateless: ``draw(n, key)`` depends only on ``key`` (a tuple such as (seed, "mllm", round, step)), so resuming
    needs no sampler state. Empty ``weights`` = every prompt equally likely. Scenarios missing from ``weights`` or
    with weight 0 are not drawn; a positive weight for a scenario without prompts is an error (naming ``field``).
    """

    def __init__(self, items: list[PromptItem], weights: dict[str, float] | None = None,
                 field: str = "scenario_weights"):
        if not items:
            raise ConfigError("the prompt mixture is empty")
        self.by_scenario: dict[str, list[PromptItem]] = {}
        for it in items:
            self.by_scenario.setdefault(it.scenario, []).append(it)
        if weights:
            missing = sorted({k for k, w in weights.items() if w > 0} - set(self.by_scenario))
            if missing:
                raise ConfigError(f"{field} name scenarios without prompts: {missing}; "
                                  f"the prompts have {sorted(self.by_scenario)}")
            self.weights = {k: float(w) for k, w in weights.items() if w > 0}
        else:
            self.weights = {k: float(len(v)) for k, v in self.by_scenario.items()}
        self.names = sorted(self.weights)

    def outputs(self) -> dict[str, set[str]]:
        """{scenario: the outputs ("image" / "text") of its prompts} for the scenarios this mixture draws."""
        return {k: {it.output for it in self.by_scenario[k]} for k in self.names}

    def draw(self, n: int, key: tuple) -> list[PromptItem]:
        rng = random.Random(derive_seed(*key))
        scenarios = rng.choices(self.names, weights=[self.weights[k] for k in self.names], k=n)
        return [rng.choice(self.by_scenario[s]) for s in scenarios]


# --------------------------------------------------------------------------------------------------- seeds
def derive_seed(*parts) -> int:
    """A 63-bit seed from any tuple of ints / strings (sha256, stable across processes and Python versions)."""
    h = hashlib.sha256("/".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


# --------------------------------------------------------------------------------------------------- hand-offs
@dataclass
class TextRollout:
    """B = P * G think samples (MLLM-GRPO). Lists are per prompt (P) or per sample (B) as noted."""

    items: list[PromptItem]                 # P prompts
    group_size: int                         # G
    prompt_ids: list[list[int]]             # P: prompt tokens (vision placeholders expanded)
    vision: list[dict[str, Tensor]]         # P: pixel_values / image_grid_thw of the prompt ({} without images)
    completion_ids: list[list[int]]         # B: generated tokens, final stop token included
    completion_mask: list[list[bool]]       # B: True = sampled by the policy (forced `</think>` tokens: False)
    thoughts: list[str]                     # B: generated text (think span + answer)
    instructions: list[str]                 # B: answer after </think> (what the painter read)
    finished: list[bool]                    # B: False when a budget cut the sample
    think_lengths: list[int]                # B: tokens before the first </think>
    features: Tensor                        # (B, L, F) post-</think> features the DiT rendered from
    feature_mask: Tensor                    # (B, L) bool
    old_logps: Tensor | None = None         # (B, T) token log-probs of the rollout policy (0 on padding)
    ref_logps: Tensor | None = None         # (B, T) token log-probs of the reference policy
    images: list[Image.Image | None] = field(default_factory=list)   # B renders of the frozen DiT (None: text output)

    @property
    def batch_size(self) -> int:
        return len(self.completion_ids)

    def item(self, b: int) -> PromptItem:
        return self.items[b // self.group_size]

    def reward_inputs(self) -> tuple[list[Image.Image], list[str], list[dict]]:
        prompts = [self.item(b).prompt for b in range(self.batch_size)]
        meta = [self.item(b).reward_meta(thought=self.thoughts[b], instruction=self.instructions[b])
                for b in range(self.batch_size)]
        return self.images, prompts, meta


@dataclass
class ImageRollout:
    """B = P * G DiT trajectories (DiT-GRPO)."""

    items: list[PromptItem]                 # P prompts
    group_size: int                         # G
    cond: DiTConditions                     # B conditions (the frozen MLLM's features, reference latents)
    neg: DiTConditions | None               # B negative conditions (None without CFG)
    timesteps: Tensor                       # (S + 1,) the rollout grid
    states: Tensor                          # (B, S + 1, C, h, w) x_0 (noise) .. x_S (sample)
    logps: Tensor                           # (B, S) log p(x_{i+1} | x_i) of the SDE steps (0 on Euler steps)
    train_steps: list[int]                  # step indices that are trained (and were sampled with the SDE)
    thoughts: list[str]                     # P: the frozen MLLM's thought per prompt ("" with think off)
    instructions: list[str]                 # P: the frozen MLLM's answer per prompt
    images: list[Image.Image] = field(default_factory=list)   # B decoded samples

    @property
    def batch_size(self) -> int:
        return self.states.shape[0]


# --------------------------------------------------------------------------------------------------- rendering
def latent_shape(pipe, resolution: int) -> tuple[int, int, int]:
    """(C, h, w) of a square ``resolution`` image, rounded down to the DiT's size multiple."""
    m = pipe.size_multiple
    side = max(m, resolution // m * m)
    f = vae_scale_factor(pipe.vae)
    return pipe.transformer.config.in_channels, side // f, side // f


def initial_noise(seeds: Sequence[int], shape: tuple[int, int, int], device, dtype) -> Tensor:
    """(B, C, h, w) standard normal noise, sample i drawn from its own CPU generator (batch-independent)."""
    return torch.stack([torch.randn(shape, generator=torch.Generator("cpu").manual_seed(int(s)), dtype=torch.float32)
                        for s in seeds]).to(device=device, dtype=dtype)


def reference_latents(pipe, items: Sequence[PromptItem], resolution: int) -> list[list[Tensor]] | None:
    """Per prompt, the VAE latents of its input images (None when no prompt has images)."""
    lists = [it.load_images() for it in items]
    if not any(lists):
        return None
    return pipe.encode_references(lists, resolution * resolution, resolution)


def negative_conditions(mllm, batch: int, device, dtype) -> DiTConditions:
    """The reference negative prompt through the no-think template, repeated ``batch`` times."""
    enc = mllm.encode_instructions([DEFAULT_NEGATIVE_PROMPT], [0], mode="negative")
    return DiTConditions(enc.features.to(device, dtype), enc.mask.to(device), None).select([0] * batch)


def decode_images(pipe, latents: Tensor) -> list[Image.Image]:
    return latents_to_pil(pipe.vae, latents.to(pipe.vae.dtype))


@torch.no_grad()
def render(pipe, dit, cond: DiTConditions, seeds: Sequence[int], *, steps: int, resolution: int,
           guidance_scale: float, batch_size: int) -> list[Image.Image]:
    """Euler renders (the inference sampler) of ``cond`` at a square ``resolution``; ``seeds[b]`` seeds sample
    b's initial noise. Text CFG with the reference negative prompt when ``guidance_scale > 1``."""
    B = cond.batch_size
    dev, dt = pipe.device, pipe.dtype
    guidance = Guidance(text_scale=guidance_scale)
    neg = negative_conditions(pipe.mllm, B, dev, dt) if guidance_scale > 1.0 else None
    C, h, w = latent_shape(pipe, resolution)
    noise = initial_noise(seeds, (C, h, w), dev, dt)
    timesteps = pipe.scheduler.timesteps(steps, h * w, device=dev)
    images = []
    for s in range(0, B, batch_size):
        idx = list(range(s, min(B, s + batch_size)))
        traj = sample(dit, noise[idx], cond.select(idx), neg.select(idx) if neg is not None else None,
                      timesteps, guidance)
        images.extend(decode_images(pipe, traj.latents))
    return images


# --------------------------------------------------------------------------------------------------- references
@contextlib.contextmanager
def adapters_disabled(module: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Run ``module`` without its peft adapters (= the frozen base weights); requires_grad flags are restored."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in module.modules() if isinstance(m, BaseTunerLayer)]
    flags = {p: p.requires_grad for p in module.parameters()}
    for m in layers:
        m.enable_adapters(False)
    try:
        yield module
    finally:
        for m in layers:
            m.enable_adapters(True)
        for p, f in flags.items():
            p.requires_grad_(f)


class FrozenReference:
    """The reference policy of a trained module: its starting weights.

    LoRA runs use the base weights (adapters disabled, no memory cost); full fine-tuning keeps a frozen copy made
    before training starts. ``with ref() as m:`` yields the module to call (under no_grad by the caller).
    """

    def __init__(self, module: torch.nn.Module, lora: bool):
        self.module = module
        self.copy = None if lora else copy.deepcopy(module).requires_grad_(False).eval()

    @contextlib.contextmanager
    def __call__(self) -> Iterator[torch.nn.Module]:
        if self.copy is not None:
            yield self.copy
        else:
            with adapters_disabled(self.module) as m:
                yield m


# --------------------------------------------------------------------------------------------------- updates
def plan_micro_batches(keep: Sequence[int], size: int, min_batches: int = 0) -> list[tuple[list[int], bool]]:
    """Split the kept sample indices into micro-batches; pad with dummy batches (weight 0) to ``min_batches``.

    Dummies let every rank run the same number of forward/backward passes (DDP / FSDP2 collectives) even when
    it kept fewer samples. Returns [(indices, is_dummy)].
    """
    keep = list(keep)
    plan = [(keep[i:i + size], False) for i in range(0, len(keep), size)]
    while len(plan) < min_batches:
        plan.append(([keep[0] if keep else 0], True))
    return plan


# --------------------------------------------------------------------------------------------------- nano reward
class NanoReward:
    """ThinkGen-Nano exact scorer as a reward.

    metric="score": ``scoring.score(meta["sample"], image)`` partial credit (1.0 iff correct, at most 0.95
    otherwise) - the training reward; metric="correct": its 1.0 / 0.0 strict verdict - the held-out accuracy;
    metric="answer": ``scoring.score_answer(meta["sample"], meta["instruction"])`` 1.0 / 0.0 on the MLLM's TEXT
    answer (what the painter reads), the images not looked at - the verifiable-answer reward of text GRPO, which
    checks the reasoning without the painter's errors.
    A sample without ``meta["sample"]`` (or, for "answer", ``meta["instruction"]``) or a scorer error scores NaN
    (left out of the advantages).
    """

    METRICS = ("score", "correct", "answer")

    def __init__(self, metric: str = "score"):
        if metric not in self.METRICS:
            raise ConfigError(f"nano reward metric must be one of {self.METRICS}, got {metric!r}")
        try:
            from ..nano import scoring
        except ImportError as e:
            raise MissingDependencyError(f"the nano reward needs thinkgen.nano.scoring ({e})") from None
        self.scoring, self.metric = scoring, metric

    def _one(self, image, m: dict) -> float:
        sample = m.get("sample")
        if self.metric == "answer":
            text = m.get("instruction")
            if sample is None or not isinstance(text, str):
                return float("nan")
            return 1.0 if self.scoring.score_answer(sample, text)["correct"] else 0.0
        return float("nan") if sample is None else float(self.scoring.score(sample, image)[self.metric])

    def __call__(self, images, prompts, meta) -> Tensor:
        out = []
        for img, m in zip(images, meta):
            try:
                out.append(self._one(img, m))
            except Exception:  # noqa: BLE001 - a scorer failure means "could not score"
                out.append(float("nan"))
        return torch.tensor(out, dtype=torch.float32)


register_reward("nano")(NanoReward)
register_reward("nano_correct")(lambda: NanoReward(metric="correct"))
register_reward("nano_answer", text_only=True)(lambda: NanoReward(metric="answer"))


def describe(items: Sequence[PromptItem]) -> dict[str, Any]:
    """Counts per scenario (for the start-up summary)."""
    out: dict[str, int] = {}
    for it in items:
        out[it.scenario] = out.get(it.scenario, 0) + 1
    return out
