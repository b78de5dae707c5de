"""Training configs: dataclasses, stage presets, YAML loading and ``--key=value`` overrides.

Presets are plain functions that return a config (``stage1()``, ``stage2()``, ``stage3()``,
``mllm_sft()``); keyword arguments override fields. A YAML file holds field names at its top
level; ``stage:`` in a DiT YAML picks the preset its defaults come from. Unknown keys are refused.

The paper gives no learning rates, batch sizes or step counts (paper.md §3). The values below
are choices: optimiser settings follow OmniGen2's public ``ft.yml`` (AdamW (0.9, 0.95), wd 0.01,
eps 1e-8, clip 1.0, 500-step warm-up); the stage learning rates are ours.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import os
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..errors import ConfigError

# Parameter-name patterns (fnmatch) of the DiT's connector: the caption embedder and the prepad states.
CONNECTOR_PATTERNS = ["time_caption_embed.caption_embedder.*", "prepad_embed"]
ALL_PARAMS = ["*"]
DIT_STAGES = ("stage1", "stage2", "stage3", "custom")
LR_SCHEDULES = ("constant", "cosine")
PARALLEL = ("none", "ddp", "fsdp2")
MIXED_PRECISION = ("auto", "no", "bf16")
DEVICES = ("auto", "cpu", "cuda")

# Fields that may differ between a run and its resume without changing the maths.
RESUME_SAFE_FIELDS = frozenset(
    {"resume", "allow_config_change", "log_every", "save_every", "keep_last", "sample_every", "output_dir", "device",
     "compile"}
)


@dataclass
class DataSource:
    """One JSONL file and its mixture weight."""

    path: str                 # JSONL file; relative image paths resolve against its folder
    ratio: float = 1.0        # sampling weight: source i is drawn with probability ratio_i / sum(ratios)


def _bad(name: str, value: Any, why: str, fix: str) -> ConfigError:
    return ConfigError(f"{name}={value!r} is invalid: {why}; {fix}")


@dataclass
class TrainConfigBase:
    """Fields shared by the DiT trainer and MLLM SFT."""

    # --- where things are
    model_dir: str = ""                     # released-layout model folder (transformer/, mllm/, processor/, vae/)
    data: list[DataSource] = field(default_factory=list)   # JSONL sources with mixture ratios
    output_dir: str = "runs/train"          # checkpoints/, final/, logs/ are written here
    # --- optimisation
    seed: int = 0                           # seeds python/numpy/torch and the data order
    lr: float = 1e-4                        # peak learning rate after warm-up
    betas: tuple[float, float] = (0.9, 0.95)  # AdamW betas (OmniGen2 ft.yml)
    weight_decay: float = 0.01              # AdamW decoupled weight decay
    adam_eps: float = 1e-8                  # AdamW epsilon
    warmup_steps: int = 500                 # linear warm-up from 0 to lr over this many optimizer steps
    lr_schedule: str = "constant"           # after warm-up: "constant" or "cosine" (to min_lr_ratio * lr)
    min_lr_ratio: float = 0.0               # floor of the cosine schedule, as a fraction of lr
    max_steps: int = 1000                   # optimizer steps to train for
    batch_size: int = 1                     # samples per micro-batch per process
    grad_accum_steps: int = 1               # micro-batches per optimizer step
    max_grad_norm: float = 1.0              # gradient clipping (0 = off)
    # --- model / numerics
    mixed_precision: str = "auto"           # "auto" (bf16 autocast on CUDA, fp32 on CPU), "no", "bf16" (CUDA only)
    gradient_checkpointing: bool = False    # recompute activations in the backward pass
    device: str = "auto"                    # "auto" (cuda:LOCAL_RANK if available), "cpu", "cuda"
    parallel: str = "none"                  # "none", "ddp" or "fsdp2" (under torchrun)
    # --- LoRA (peft)
    lora: bool = False                      # train LoRA adapters instead of full weights
    lora_rank: int = 16                     # adapter rank r
    lora_alpha: float = 16.0                # adapter scale alpha (effective scale alpha / r)
    lora_dropout: float = 0.0               # dropout inside the adapters
    lora_target_modules: list[str] = field(default_factory=list)  # module names to adapt (preset-specific default)
    # --- data stream
    shuffle_buffer: int = 1000              # records held in the deterministic shuffle buffer (1 = file order)
    validate_data: bool = True              # run the JSONL validator on every source before training
    # --- logging / checkpoints
    log_every: int = 10                     # TensorBoard scalars + metrics.jsonl every N steps
    save_every: int = 500                   # checkpoint every N steps (0 = only at the end)
    keep_last: int = 3                      # complete checkpoints kept (0 = all)
    resume: str = "auto"                    # "auto" (newest complete checkpoint), "never", or a step folder
    allow_config_change: list[str] = field(default_factory=list)  # fields allowed to differ on resume

    def __post_init__(self):
        self.data = [_as_source(d) for d in (self.data or [])]
        self.betas = tuple(float(b) for b in self.betas)
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise _bad("betas", self.betas, "AdamW needs two values in [0, 1)", "e.g. --betas=[0.9,0.95]")
        if not (self.lr >= 0.0) or self.lr != self.lr:
            raise _bad("lr", self.lr, "the learning rate must be a number >= 0", "e.g. --lr=1e-4")
        if self.weight_decay < 0:
            raise _bad("weight_decay", self.weight_decay, "must be >= 0", "e.g. --weight_decay=0.01")
        if self.adam_eps <= 0:
            raise _bad("adam_eps", self.adam_eps, "must be > 0", "e.g. --adam_eps=1e-8")
        for name in ("batch_size", "grad_accum_steps", "max_steps"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise _bad(name, v, "must be an integer >= 1", f"e.g. --{name}=1")
        for name in ("warmup_steps", "log_every", "save_every", "keep_last"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 0:
                raise _bad(name, v, "must be an integer >= 0", f"e.g. --{name}=0")
        if self.log_every == 0:
            raise _bad("log_every", 0, "must be >= 1", "e.g. --log_every=10")
        if self.shuffle_buffer < 1:
            raise _bad("shuffle_buffer", self.shuffle_buffer, "must be >= 1 (1 keeps file order)", "e.g. --shuffle_buffer=1000")
        if self.max_grad_norm < 0:
            raise _bad("max_grad_norm", self.max_grad_norm, "must be >= 0 (0 disables clipping)", "e.g. --max_grad_norm=1.0")
        if self.lr_schedule not in LR_SCHEDULES:
            raise _bad("lr_schedule", self.lr_schedule, f"must be one of {LR_SCHEDULES}", "e.g. --lr_schedule=constant")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise _bad("min_lr_ratio", self.min_lr_ratio, "must be in [0, 1]", "e.g. --min_lr_ratio=0.1")
        if self.mixed_precision not in MIXED_PRECISION:
            raise _bad("mixed_precision", self.mixed_precision, f"must be one of {MIXED_PRECISION}", "e.g. --mixed_precision=auto")
        if self.device not in DEVICES and not str(self.device).startswith("cuda:"):
            raise _bad("device", self.device, f"must be one of {DEVICES} or cuda:N", "e.g. --device=auto")
        if self.parallel not in PARALLEL:
            raise _bad("parallel", self.parallel, f"must be one of {PARALLEL}", "e.g. --parallel=ddp")
        if self.lora:
            if self.lora_rank < 1:
                raise _bad("lora_rank", self.lora_rank, "LoRA needs a rank >= 1", "e.g. --lora_rank=16")
            if self.lora_alpha <= 0:
                raise _bad("lora_alpha", self.lora_alpha, "must be > 0", "e.g. --lora_alpha=16")
            if not self.lora_target_modules:
                raise _bad("lora_target_modules", self.lora_target_modules, "LoRA needs target modules", "e.g. --lora_target_modules=[to_q,to_k]")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise _bad("lora_dropout", self.lora_dropout, "must be in [0, 1)", "e.g. --lora_dropout=0.0")
        if not (self.resume in ("auto", "never") or self.resume):
            raise _bad("resume", self.resume, "must be 'auto', 'never' or a checkpoint folder", "e.g. --resume=auto")
        known = {f.name for f in dataclasses.fields(self)}
        for name in self.allow_config_change:
            if name not in known:
                raise _bad("allow_config_change", self.allow_config_change, f"{name!r} is not a config field", "list field names")

    # ------------------------------------------------------------------ helpers
    def check_ready(self) -> None:
        """Checks that need the file system; called by the trainers before any work."""
        if not self.model_dir:
            raise _bad("model_dir", self.model_dir, "no model folder given", "pass --model_dir=PATH (released layout)")
        if not Path(self.model_dir).is_dir():
            raise _bad("model_dir", self.model_dir, "the folder does not exist", "pass an existing released-layout folder")
        if not self.data:
            raise _bad("data", self.data, "no training data", "pass --data=PATH.jsonl or a list of {path, ratio}")
        for i, src in enumerate(self.data):
            if not Path(src.path).is_file():
                raise _bad(f"data[{i}].path", src.path, "the file does not exist", "fix the path (relative to the working folder)")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["betas"] = list(self.betas)
        return d

    def hash_dict(self) -> dict[str, Any]:
        """The fields that must match on resume (everything but RESUME_SAFE_FIELDS)."""
        return {k: v for k, v in self.to_dict().items() if k not in RESUME_SAFE_FIELDS}


def _as_source(d: Any) -> DataSource:
    if isinstance(d, DataSource):
        src = d
    elif isinstance(d, (str, os.PathLike)):
        src = DataSource(str(d))
    elif isinstance(d, dict):
        unknown = set(d) - {"path", "ratio"}
        if unknown or "path" not in d:
            raise _bad("data", d, "each source is {path, ratio}", "e.g. data: [{path: a.jsonl, ratio: 2}]")
        src = DataSource(str(d["path"]), float(d.get("ratio", 1.0)))
    else:
        raise _bad("data", d, "a source is a path or {path, ratio}", "e.g. --data=train.jsonl")
    if not (src.ratio > 0) or src.ratio == float("inf"):
        raise _bad("data.ratio", src.ratio, f"the ratio of {src.path} must be a finite number > 0", "e.g. ratio: 1.0 (remove the source to skip it)")
    return src


@dataclass
class DiTTrainConfig(TrainConfigBase):
    """Flow-matching training of the DiT (paper stages 1-3); MLLM and VAE frozen."""

    stage: str = "stage2"                   # "stage1" (connector only), "stage2"/"stage3" (whole DiT), "custom"
    trainable: list[str] | None = None      # fnmatch patterns of trainable parameter names (None = from stage)
    lora_target_modules: list[str] = field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])
    # --- images (reference-code §1.7 / §7.1)
    max_output_pixels: int = 1024 * 1024    # output images are shrunk (never enlarged) below this many pixels
    max_side_length: int = 2048             # and below this many pixels per side
    max_input_pixels: list[int] = field(default_factory=lambda: [1024**2, 1024**2, 768**2, 512**2])
    # ^ pixel cap of each input image, indexed by the number of inputs (last value for more)
    aspect_ratio_buckets: bool = False      # snap text-to-image outputs to a fixed aspect-ratio ladder (center crop)
    # --- classifier-free-guidance dropout
    prompt_dropout_prob: float = 0.1        # replace the instruction by "" with this probability
    ref_dropout_prob: float = 0.5           # drop the input images, only when the prompt was dropped (as OmniGen2)
    # --- frozen encoders
    feature_cache_dir: str = ""             # cache MLLM features (safetensors keyed by instruction hash); "" = off
    latent_cache_dir: str = ""              # cache output-image VAE latents; "" = off
    vae_sample: bool = False                # VAE posterior sample (reference) instead of the mode (deterministic)
    max_text_tokens: int = 888              # instruction tokens kept (OmniGen2 maximum_text_tokens)
    # --- EMA
    ema_decay: float = 0.0                  # EMA of trainable weights (0 = off); exported as transformer_ema/
    # --- samples in TensorBoard
    sample_every: int = 0                   # log a sample grid every N steps (0 = off)
    sample_steps: int = 20                  # Euler steps of the sample grid
    sample_guidance: float = 4.0            # text guidance of the sample grid
    sample_prompts: list[str] = field(default_factory=list)  # prompts of the grid ([] = the first batch's)
    export_full_model: bool = True          # final/ also gets copies of mllm/, processor/, vae/, scheduler/ from model_dir
    compile: bool = False                   # torch.compile the DiT's transformer blocks (a one-off compile, then
    #                                         faster forwards; the backward's matmuls gain little on CPU)

    def __post_init__(self):
        super().__post_init__()
        if self.stage not in DIT_STAGES:
            raise _bad("stage", self.stage, f"unknown stage; must be one of {DIT_STAGES}", "e.g. --stage=stage1")
        if self.trainable is None:
            if self.stage == "custom":
                raise _bad("trainable", None, "stage 'custom' needs explicit trainable patterns", "e.g. --trainable=[prepad_embed]")
            self.trainable = list(CONNECTOR_PATTERNS if self.stage == "stage1" else ALL_PARAMS)
        if not self.trainable and not self.lora:
            raise _bad("trainable", self.trainable, "nothing would be trained", "give patterns or use --lora=true")
        for name in ("prompt_dropout_prob", "ref_dropout_prob"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise _bad(name, v, "a probability must be in [0, 1]", f"e.g. --{name}=0.1")
        if self.max_output_pixels < 256:
            raise _bad("max_output_pixels", self.max_output_pixels, "must be >= 256 (one 16x16 patch)", "e.g. --max_output_pixels=262144")
        if self.max_side_length < 16:
            raise _bad("max_side_length", self.max_side_length, "must be >= 16", "e.g. --max_side_length=2048")
        if not self.max_input_pixels or any(p < 256 for p in self.max_input_pixels):
            raise _bad("max_input_pixels", self.max_input_pixels, "needs values >= 256", "e.g. --max_input_pixels=[1048576]")
        if not 0.0 <= self.ema_decay < 1.0:
            raise _bad("ema_decay", self.ema_decay, "must be in [0, 1) (0 disables EMA)", "e.g. --ema_decay=0.999")
        if self.sample_every < 0 or self.sample_steps < 1:
            raise _bad("sample_every/sample_steps", (self.sample_every, self.sample_steps), "need sample_every >= 0, sample_steps >= 1", "e.g. --sample_every=500")
        if self.max_text_tokens < 1:
            raise _bad("max_text_tokens", self.max_text_tokens, "must be >= 1", "e.g. --max_text_tokens=888")


@dataclass
class MLLMSFTConfig(TrainConfigBase):
    """Supervised fine-tuning of the MLLM on think traces / answers (loss on the assistant turn only)."""

    lr: float = 1e-5
    warmup_steps: int = 100
    lora_target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    max_seq_len: int = 2048                 # longer samples are truncated (the assistant turn last)
    max_image_pixels: int = 512 * 512       # input images shrunk below this (ThinkGen think mode, ~512^2)
    freeze_vision: bool = True              # keep the vision tower frozen (full fine-tune only)
    # "token": mean over every supervised token of the batch (HF's loss; long think traces dominate);
    # "sample": mean over each sample's tokens, then over samples (a one-word VQA answer weighs as much as a trace)
    loss_reduction: str = "token"
    # Feature anchoring: keep the DiT-conditioning features (cat(layer n-2, final norm), every position) of the
    # text-only records close to those of a frozen reference MLLM while the model learns something else (e.g. image
    # understanding), so a DiT trained on the reference's features keeps working. Loss += anchor_weight *
    # sum|f - f_ref|^2 / sum|f_ref|^2 over those rows, each text-only generation record also fed in the no-think
    # form the DiT sees with thinking off. anchor_model_dir: a folder with mllm/ + processor/ (default model_dir).
    anchor_weight: float = 0.0
    anchor_model_dir: str = ""
    # also anchor image-conditioned generation records (edits, think form with pixels: the think-on path): the text
    # after the last image, compared with the reference reading the images through its own processor
    anchor_images: bool = False
    # weight of the think block's tokens (<think> ... </think>) relative to the answer's in the loss (1 = plain SFT);
    # < 1 puts the signal on the short answer once the model has learned to write the thoughts
    think_loss_weight: float = 1.0

    def __post_init__(self):
        super().__post_init__()
        if not self.think_loss_weight >= 0:
            raise _bad("think_loss_weight", self.think_loss_weight, "must be >= 0", "e.g. --think_loss_weight=0.2")
        if not self.anchor_weight >= 0:
            raise _bad("anchor_weight", self.anchor_weight, "must be >= 0 (0 = no anchoring)",
                       "e.g. --anchor_weight=10")
        if self.anchor_images and not self.anchor_weight > 0:
            raise _bad("anchor_images", self.anchor_images, "needs anchor_weight > 0 (it adds to feature anchoring)",
                       "e.g. --anchor_weight=30 --anchor_images=true")
        if self.anchor_weight > 0 and self.parallel == "fsdp2":
            raise _bad("anchor_weight", self.anchor_weight, "is not supported with parallel=fsdp2 (the frozen "
                       "reference would run only on ranks whose batch has text-only records)",
                       "use --parallel=ddp or --anchor_weight=0")
        if self.loss_reduction not in ("token", "sample"):
            raise _bad("loss_reduction", self.loss_reduction, "must be 'token' or 'sample'",
                       "e.g. --loss_reduction=sample")
        if self.max_seq_len < 8:
            raise _bad("max_seq_len", self.max_seq_len, "must be >= 8", "e.g. --max_seq_len=2048")
        if self.max_image_pixels < 256:
            raise _bad("max_image_pixels", self.max_image_pixels, "must be >= 256", "e.g. --max_image_pixels=262144")


# --------------------------------------------------------------------------- presets
def stage1(**overrides) -> DiTTrainConfig:
    """Stage 1, alignment: only the connector (caption embedder) and the prepad states, <= 512 px."""
    base = dict(stage="stage1", lr=1e-4, max_output_pixels=512 * 512, max_input_pixels=[512 * 512],
                warmup_steps=500, max_steps=10000)
    return DiTTrainConfig(**{**base, **overrides})


def stage2(**overrides) -> DiTTrainConfig:
    """Stage 2, pre-training: every DiT parameter, T2I + editing mixture."""
    base = dict(stage="stage2", lr=5e-5, max_output_pixels=1024 * 1024, warmup_steps=500, max_steps=100000)
    return DiTTrainConfig(**{**base, **overrides})


def stage3(**overrides) -> DiTTrainConfig:
    """Stage 3, high-quality fine-tune: whole DiT at <= 1024 px with a lower LR."""
    base = dict(stage="stage3", lr=1e-5, max_output_pixels=1024 * 1024, warmup_steps=500, max_steps=10000)
    return DiTTrainConfig(**{**base, **overrides})


def mllm_sft(**overrides) -> MLLMSFTConfig:
    """MLLM SFT on think traces (full fine-tune; pass lora=True for adapters)."""
    return MLLMSFTConfig(**overrides)


DIT_PRESETS = {"stage1": stage1, "stage2": stage2, "stage3": stage3, "custom": lambda **kw: DiTTrainConfig(**kw)}


# --------------------------------------------------------------------------- YAML + CLI
def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def coerce_scalar(name: str, value: Any, tp: type) -> Any:
    """A YAML / command-line value as ``tp`` (bool, int, float or str); ConfigError naming the field otherwise.
    Shared by the supervised and the SepGRPO configs."""
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise _bad(name, value, "expected true or false", f"e.g. --{name}=true")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise _bad(name, value, "expected an integer", f"e.g. --{name}=1")
        return int(value)
    if tp is float:
        if isinstance(value, bool):
            raise _bad(name, value, "expected a number", f"e.g. --{name}=0.1")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise _bad(name, value, "expected a number", f"e.g. --{name}=0.1") from None
    if tp is str:
        if isinstance(value, (dict, list)):
            raise _bad(name, value, "expected a string", f"e.g. --{name}=text")
        return "" if value is None else str(value)
    raise TypeError(f"coerce_scalar handles bool, int, float and str, not {tp!r}")


def _coerce(name: str, value: Any, tp) -> Any:
    """Check / convert ``value`` to the annotated type ``tp``; ConfigError naming the field otherwise."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(name, value, inner[0])
    if tp in (bool, int, float, str):
        return coerce_scalar(name, value, tp)
    if origin in (list, tuple, Sequence):
        if tp is not None and name == "data":
            vals = value if isinstance(value, list) else [value]
            return [_as_source(v) for v in vals]
        if isinstance(value, str):
            value = [v for v in value.split(",") if v] if "," in value or value else []
        if not isinstance(value, (list, tuple)):
            value = [value]
        elem = args[0] if args else str
        out = [_coerce(name, v, elem) for v in value]
        return tuple(out) if origin is tuple else out
    if tp is DataSource:
        return _as_source(value)
    return value


def _field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls, globalns={**globals(), "DataSource": DataSource})
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _check_keys(cls, keys, where: str) -> None:
    valid = [f.name for f in dataclasses.fields(cls)]
    for k in keys:
        if k not in valid:
            close = difflib.get_close_matches(k, valid, n=3)
            hint = f"did you mean {', '.join(close)}?" if close else f"valid keys: {', '.join(valid)}"
            raise ConfigError(f"unknown config key {k!r} in {where}; {hint}")


def parse_overrides(argv: Sequence[str]) -> dict[str, Any]:
    """``["--lr=1e-4", "--data=[a.jsonl]"]`` -> ``{"lr": 1e-4, "data": ["a.jsonl"]}`` (values parsed as YAML)."""
    import yaml

    out: dict[str, Any] = {}
    for arg in argv:
        if not arg.startswith("--") or "=" not in arg:
            raise ConfigError(f"override {arg!r} is not of the form --key=value")
        key, raw = arg[2:].split("=", 1)
        key = key.replace("-", "_")
        try:
            out[key] = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            out[key] = raw
    return out


def build_config(kind: str, values: dict[str, Any], where: str = "config"):
    """Build a ``DiTTrainConfig`` (kind="dit") or ``MLLMSFTConfig`` (kind="mllm") from plain values."""
    if kind == "dit":
        cls = DiTTrainConfig
    elif kind == "mllm":
        cls = MLLMSFTConfig
    else:
        raise ConfigError(f"unknown trainer {kind!r}; use 'dit' or 'mllm'")
    _check_keys(cls, values, where)
    types = _field_types(cls)
    kwargs = {k: _coerce(k, v, types[k]) for k, v in values.items()}
    if kind == "dit":
        stage = kwargs.get("stage", "stage2")
        if stage not in DIT_PRESETS:
            raise _bad("stage", stage, f"unknown stage; must be one of {DIT_STAGES}", "e.g. stage: stage1")
        return DIT_PRESETS[stage](**kwargs)
    return mllm_sft(**kwargs)


def read_yaml_mapping(path: str | os.PathLike | None) -> dict[str, Any]:
    """The top-level mapping of a YAML config file ({} for None); ConfigError when missing, invalid or not a mapping."""
    import yaml

    if path is None:
        return {}
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist")
    try:
        loaded = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {p} is not valid YAML: {e}") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {p} must hold a mapping of field: value at its top level")
    return dict(loaded)


def load_config(kind: str, path: str | os.PathLike | None = None, overrides: Sequence[str] | dict = ()):
    """YAML file (optional) + ``--key=value`` overrides -> config. Relative data paths stay as written."""
    values = read_yaml_mapping(path)
    values.update(overrides if isinstance(overrides, dict) else parse_overrides(overrides))
    return build_config(kind, values, where=str(path) if path else "overrides")


def config_to_yaml(cfg) -> str:
    import yaml

    return yaml.safe_dump(json.loads(json.dumps(cfg.to_dict())), sort_keys=False)
