"""Machinery shared by the DiT trainer and MLLM SFT: optimiser, LR schedule, EMA, logging,
checkpoint save / resume, and the optimisation loop itself.

Checkpoint layout (``<output_dir>/checkpoints/step-XXXXXXXX/``, written by ``checkpoint.atomic_dir``)::

    transformer/ or mllm/ + processor/     model weights in the released layout (safetensors)
    <name>_lora/adapter.safetensors         LoRA runs: adapter weights only (base comes from model_dir)
    trainer_state/state.json                step, kind, world size, config (+ hash)
    trainer_state/optimizer.pt              torch.save, loaded with weights_only=True
    trainer_state/scheduler.pt
    trainer_state/rank{r}.pt                per rank: RNG (python, numpy, torch, cuda, named generators) + data position
    trainer_state/ema.safetensors           EMA weights (when enabled)
    manifest.json                           sha256 of every file; written last

Resume restores, after every seeding call: weights, optimizer, scheduler, EMA, every rank's RNG and
data position, and the step. A missing piece is a ``CheckpointError``; a changed config field is a
``ConfigError`` unless listed in ``allow_config_change``.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import json
import math
import random
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from ..checkpoint import (atomic_dir, atomic_write_text, config_hash, fault_point, latest_complete_checkpoint,
                          load_rng_state, load_state, remove_stale_tmp, rotate_checkpoints, save_rng_state,
                          save_state, step_dir_name, verify_manifest)
from ..errors import CheckpointError, ConfigError
from . import parallel
from .parallel import DistInfo


# --------------------------------------------------------------------------- seeding / setup
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def autocast_context(cfg, device: torch.device):
    """bf16 autocast on CUDA ("auto" or "bf16"); nothing on CPU (fp32 there)."""
    import contextlib

    if device.type == "cuda" and cfg.mixed_precision in ("auto", "bf16"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if cfg.mixed_precision == "bf16" and device.type != "cuda":
        raise ConfigError("mixed_precision='bf16' needs CUDA; on CPU use --mixed_precision=auto (fp32)")
    return contextlib.nullcontext()


def frozen_dtype(cfg, device: torch.device) -> torch.dtype:
    """dtype of the frozen encoders: bf16 on CUDA with mixed precision, else fp32."""
    return torch.bfloat16 if device.type == "cuda" and cfg.mixed_precision in ("auto", "bf16") else torch.float32


# --------------------------------------------------------------------------- parameters
def select_trainable(model: nn.Module, patterns: list[str]) -> list[str]:
    """Set requires_grad from fnmatch ``patterns``; return the trainable names. Unmatched pattern = error."""
    names = []
    used = {p: False for p in patterns}
    for name, p in model.named_parameters():
        hit = [pat for pat in patterns if fnmatch.fnmatchcase(name, pat)]
        p.requires_grad_(bool(hit))
        for pat in hit:
            used[pat] = True
        if hit:
            names.append(name)
    unused = [p for p, u in used.items() if not u]
    if unused:
        raise ConfigError(f"trainable pattern(s) {unused} match no parameter of {type(model).__name__}; "
                          "check the names (e.g. time_caption_embed.caption_embedder.*)")
    return names


# --------------------------------------------------------------------------- optimiser / schedule
class LRLambda:
    """Linear warm-up to 1 over ``warmup`` steps, then constant or cosine down to ``min_ratio``.

    A class (not a closure) so LambdaLR's state_dict stores its fields.
    """

    def __init__(self, warmup: int, total: int, schedule: str, min_ratio: float):
        self.warmup, self.total, self.schedule, self.min_ratio = warmup, total, schedule, min_ratio

    def __call__(self, step: int) -> float:
        if self.warmup > 0 and step < self.warmup:
            return (step + 1) / self.warmup
        if self.schedule == "constant":
            return 1.0
        span = max(1, self.total - self.warmup)
        progress = min(1.0, (step - self.warmup) / span)
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


_HPARAMS = ("initial_lr", "betas", "weight_decay", "eps")


def load_optim_state(model: nn.Module, optimizer: torch.optim.Optimizer,
                     scheduler: torch.optim.lr_scheduler.LambdaLR, opt_state: dict, sched_state: dict) -> list[str]:
    """Load a checkpoint's optimiser and scheduler state (Adam moments, step counts, schedule position), keeping
    THIS run's hyperparameters: lr, betas, weight decay, eps and the schedule's shape come from the config.

    torch's ``load_state_dict`` brings the saved hyperparameters back with the state, so without this a change the
    user allowed on resume (``--allow_config_change=[lr]``) would be silently ignored. Returns one line per value
    the config changed (e.g. ``"lr: 0.0005 -> 0.001"``), for the run's log.
    """
    fresh = [{k: g[k] for k in _HPARAMS if k in g} for g in optimizer.param_groups]
    fresh_base = list(scheduler.base_lrs)
    fresh_lambdas = [dict(vars(lam)) for lam in scheduler.lr_lambdas]
    parallel.load_optimizer_state(model, optimizer, opt_state)
    scheduler.load_state_dict(sched_state)            # updates the lambdas' fields in place
    changed = []
    for i, (g, f) in enumerate(zip(optimizer.param_groups, fresh)):
        for k, v in f.items():
            if g.get(k) != v:
                changed.append(f"param group {i} {'lr' if k == 'initial_lr' else k}: {g.get(k)!r} -> {v!r}")
            g[k] = v
    for lam, f in zip(scheduler.lr_lambdas, fresh_lambdas):
        old = dict(vars(lam))
        if old != f:
            changed.append(f"lr schedule: {old} -> {f}")
        vars(lam).clear()
        vars(lam).update(f)
    scheduler.base_lrs = fresh_base
    for g, base, lam in zip(optimizer.param_groups, fresh_base, scheduler.lr_lambdas):
        g["lr"] = base * lam(scheduler.last_epoch)
    scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]
    return changed


def make_optimizer(params, cfg) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ConfigError("no trainable parameters; check `trainable` / `lora`")
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay,
                            eps=cfg.adam_eps)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, LRLambda(cfg.warmup_steps, cfg.max_steps, cfg.lr_schedule, cfg.min_lr_ratio))
    return opt, sched


# --------------------------------------------------------------------------- EMA
class EMA:
    """Exponential moving average of the trainable parameters (fp32 copies, same device)."""

    def __init__(self, named_params: list[tuple[str, torch.Tensor]], decay: float):
        self.decay = decay
        self.shadow = {n: parallel.local_tensor(p.detach()).float().clone() for n, p in named_params}

    @torch.no_grad()
    def update(self, named_params: list[tuple[str, torch.Tensor]]) -> None:
        for n, p in named_params:
            self.shadow[n].lerp_(parallel.local_tensor(p.detach()).float(), 1 - self.decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.cpu().contiguous() for k, v in self.shadow.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if set(state) != set(self.shadow):
            raise CheckpointError(f"EMA state has {len(state)} tensors but {len(self.shadow)} are trained")
        for k, v in state.items():
            self.shadow[k].copy_(v)


# --------------------------------------------------------------------------- logging
class RunLogger:
    """TensorBoard scalars / images + ``metrics.jsonl`` on rank 0; a no-op elsewhere.

    On resume from step s, TensorBoard events after s are purged and metrics.jsonl lines with
    step > s are dropped, so a resumed run has no duplicated step lines.
    """

    def __init__(self, log_dir: Path, enabled: bool, resume_step: int = 0):
        self.enabled = enabled
        self.writer = None
        self.metrics_path = log_dir / "metrics.jsonl"
        if not enabled:
            return
        log_dir.mkdir(parents=True, exist_ok=True)
        if self.metrics_path.is_file():
            kept = []
            for line in self.metrics_path.read_text().splitlines():
                try:
                    if json.loads(line).get("step", 0) <= resume_step:
                        kept.append(line)
                except ValueError:   # a line torn by a kill
                    continue
            atomic_write_text(self.metrics_path, "".join(l + "\n" for l in kept))
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(log_dir), purge_step=resume_step + 1)
        except ImportError:  # pragma: no cover - tensorboard is in the train extra
            warnings.warn("tensorboard is not installed; logging to metrics.jsonl only (pip install tensorboard)")

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        if self.writer is not None:
            for k, v in values.items():
                self.writer.add_scalar(k, v, step)
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps({"step": step, **values}) + "\n")

    def image(self, tag: str, img: torch.Tensor, step: int) -> None:
        """img: (3, H, W) float in [0, 1]."""
        if self.enabled and self.writer is not None:
            self.writer.add_image(tag, img, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()


def image_grid(images: torch.Tensor, ncol: int = 4, pad: int = 2) -> torch.Tensor:
    """(N, 3, H, W) in [-1, 1] -> (3, H', W') in [0, 1] (no torchvision)."""
    images = ((images.float().clamp(-1, 1) + 1) / 2).cpu()
    n, c, h, w = images.shape
    ncol = min(ncol, n)
    nrow = math.ceil(n / ncol)
    grid = torch.ones(c, nrow * (h + pad) + pad, ncol * (w + pad) + pad)
    for i in range(n):
        r, q = divmod(i, ncol)
        grid[:, pad + r * (h + pad): pad + r * (h + pad) + h, pad + q * (w + pad): pad + q * (w + pad) + w] = images[i]
    return grid


# --------------------------------------------------------------------------- checkpoints
def checkpoints_root(cfg) -> Path:
    return Path(cfg.output_dir) / "checkpoints"


def find_resume_checkpoint(cfg) -> Path | None:
    """The checkpoint to resume from, decided on rank 0 and broadcast."""
    path, error = None, None
    if parallel.is_main_process():
        try:
            if cfg.resume == "auto":
                root = checkpoints_root(cfg)
                remove_stale_tmp(root)
                found = latest_complete_checkpoint(root)
                path = str(found) if found is not None else None
            elif cfg.resume != "never":
                verify_manifest(cfg.resume)
                path = str(Path(cfg.resume))
        except CheckpointError as e:      # raised on every rank below, so none waits forever
            error = str(e)
    path, error = parallel.broadcast_object((path, error))
    if error:
        raise CheckpointError(f"cannot resume from resume={cfg.resume!r}: {error}")
    return Path(path) if path else None


_NO_DEFAULT = object()


def _field_default(cfg, key: str) -> Any:
    """The dataclass default of a (dotted, e.g. ``dit.lr``) config field; a sentinel when it has none."""
    obj = cfg
    *parents, name = key.split(".")
    for part in parents:
        obj = getattr(obj, part, None)
    if not dataclasses.is_dataclass(obj):
        return _NO_DEFAULT
    for f in dataclasses.fields(obj):
        if f.name == name:
            if f.default is not dataclasses.MISSING:
                return f.default
            if f.default_factory is not dataclasses.MISSING:
                return f.default_factory()
    return _NO_DEFAULT


def check_config_compatible(saved: dict[str, Any], cfg, where: Path) -> None:
    """Refuse to resume with a changed config unless the fields are in ``allow_config_change``.

    A field the checkpoint does not know (added to thinkgen after it was written) is unchanged when this run keeps
    its default: a new field's default is the behaviour that existed before it.
    """
    now = cfg.hash_dict()
    before = {k: v for k, v in saved.items() if k in now}

    def is_new_default(k: str) -> bool:
        if k in saved:
            return False
        d = _field_default(cfg, k)
        return d is not _NO_DEFAULT and (list(d) if isinstance(d, tuple) else d) == \
            (list(now[k]) if isinstance(now[k], tuple) else now[k])

    changed = sorted(k for k in set(now) | set(before) if now.get(k) != before.get(k)
                     and k not in cfg.allow_config_change and not is_new_default(k))
    if changed:
        shown = "; ".join(f"{k}: {before.get(k)!r} -> {now.get(k)!r}" for k in changed[:10])
        raise ConfigError(
            f"checkpoint {where} was trained with a different config ({shown}); resume with the same values, "
            f"or allow the change with --allow_config_change=[{','.join(changed)}], or start fresh with --resume=never"
        )


@dataclass
class TrainState:
    """Everything the loop carries between steps."""

    cfg: Any
    kind: str                                 # "dit" or "mllm"
    dist: DistInfo
    model: nn.Module                          # possibly wrapped (DDP / FSDP2)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    data: Any                                 # stateful iterator of batches
    trainable: list[tuple[str, torch.Tensor]]  # (name, param) of trained parameters (unwrapped names)
    save_weights: Callable[[Path, dict[str, torch.Tensor]], None]   # writes model folder(s) into a dir (rank 0)
    weights_state: Callable[[], dict[str, torch.Tensor]]            # what save_weights consumes (collective)
    generators: dict[str, torch.Generator] = field(default_factory=dict)
    ema: EMA | None = None
    step: int = 0


def save_checkpoint(st: TrainState) -> Path | None:
    """Write ``step-N`` atomically (collective: every rank calls it). Returns the folder on rank 0."""
    weights = st.weights_state()
    opt_state = parallel.optimizer_state(st.model, st.optimizer)
    rank_state = {"rng": save_rng_state(st.generators), "data": st.data.state_dict()}
    rank_states = parallel.gather_objects(rank_state)
    out = None
    if st.dist.is_main:
        root = checkpoints_root(st.cfg)
        meta = {"step": st.step, "kind": st.kind, "config_hash": config_hash(st.cfg.hash_dict()),
                "world_size": st.dist.world_size}
        with atomic_dir(root / step_dir_name(st.step), meta=meta) as d:
            st.save_weights(d.path, weights)
            fault_point("ckpt_write", st.step, 1)
            ts = d.path / "trainer_state"
            ts.mkdir()
            save_state(opt_state, ts / "optimizer.pt")
            save_state(st.scheduler.state_dict(), ts / "scheduler.pt")
            fault_point("ckpt_write", st.step, 2)
            for r, s in enumerate(rank_states):
                save_state(s, ts / f"rank{r}.pt")
            if st.ema is not None:
                from safetensors.torch import save_file

                save_file(st.ema.state_dict(), str(ts / "ema.safetensors"))
            state_json = {**meta, "config": st.cfg.to_dict()}
            (ts / "state.json").write_text(json.dumps(state_json, indent=2, default=str) + "\n")
            fault_point("ckpt_write", st.step, 3)
        out = d.final
        rotate_checkpoints(root, st.cfg.keep_last)
    parallel.barrier()
    return out


def read_checkpoint_meta(ckpt: Path, cfg, kind: str, world_size: int) -> dict[str, Any]:
    """state.json of a checkpoint, checked against kind, world size and config."""
    path = ckpt / "trainer_state" / "state.json"
    if not path.is_file():
        raise CheckpointError(f"checkpoint {ckpt} has no trainer_state/state.json")
    meta = json.loads(path.read_text())
    if meta.get("kind") != kind:
        raise CheckpointError(f"checkpoint {ckpt} belongs to a {meta.get('kind')!r} run, not {kind!r}")
    if meta.get("world_size") != world_size:
        raise CheckpointError(
            f"checkpoint {ckpt} was written by {meta.get('world_size')} processes but this run has {world_size}; "
            "resume with the same number of processes (the data shards and RNG streams are per rank)"
        )
    check_config_compatible({k: v for k, v in meta["config"].items()}, cfg, ckpt)
    return meta


def restore_trainer_state(st: TrainState, ckpt: Path) -> None:
    """Load optimizer, scheduler, EMA, this rank's RNG + data position, and the step (after seeding)."""
    meta = read_checkpoint_meta(ckpt, st.cfg, st.kind, st.dist.world_size)
    ts = ckpt / "trainer_state"
    for line in load_optim_state(st.model, st.optimizer, st.scheduler, load_state(ts / "optimizer.pt"),
                                 load_state(ts / "scheduler.pt")):
        if st.dist.is_main:
            print(f"resume {ckpt.name}: the config overrides the checkpoint's {line}", file=sys.stderr)
    if st.ema is not None:
        p = ts / "ema.safetensors"
        if not p.is_file():
            raise CheckpointError(f"checkpoint {ckpt} has no EMA state but ema_decay={st.cfg.ema_decay}")
        from safetensors.torch import load_file

        st.ema.load_state_dict(load_file(str(p)))
    rank_state = load_state(ts / f"rank{st.dist.rank}.pt")
    try:
        st.data.load_state_dict(rank_state["data"])
    except KeyError as e:
        raise CheckpointError(f"checkpoint {ckpt}: rank {st.dist.rank} data state lacks {e}") from None
    load_rng_state(rank_state["rng"], st.generators)
    st.step = int(meta["step"])


# --------------------------------------------------------------------------- the loop
def train_loop(st: TrainState, loss_fn: Callable[[Any], tuple[torch.Tensor, int]],
               on_step: Callable[[TrainState, "RunLogger"], None] | None = None,
               logger: RunLogger | None = None) -> None:
    """Optimise until ``cfg.max_steps``: grad accumulation, clipping, EMA, logging, checkpoints.

    ``loss_fn(batch) -> (loss, num_samples)``; the loss of each micro-batch is divided by
    ``grad_accum_steps``. ``on_step(st, logger)`` runs after every optimizer step (samples).
    """
    cfg = st.cfg
    logger = logger or RunLogger(Path(cfg.output_dir) / "logs", False)
    from tqdm.auto import tqdm

    bar = tqdm(total=cfg.max_steps, initial=st.step, disable=not st.dist.is_main, desc=f"train {st.kind}",
               dynamic_ncols=True, mininterval=1.0)
    params = [p for _, p in st.trainable]
    window_loss, window_steps, window_samples, t0 = 0.0, 0, 0, time.perf_counter()
    st.model.train()
    while st.step < cfg.max_steps:
        step_loss = torch.zeros((), dtype=torch.float32)
        for _ in range(cfg.grad_accum_steps):
            batch = next(st.data)
            loss, n = loss_fn(batch)
            (loss / cfg.grad_accum_steps).backward()
            step_loss += loss.detach().float().cpu() / cfg.grad_accum_steps
            window_samples += n
        if cfg.max_grad_norm > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        else:
            grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
        grad_norm = float(parallel.local_tensor(grad_norm))
        lr = st.scheduler.get_last_lr()[0]
        st.optimizer.step()
        st.scheduler.step()
        st.optimizer.zero_grad(set_to_none=True)
        if st.ema is not None:
            st.ema.update(st.trainable)
        st.step += 1
        fault_point("step", st.step)
        loss_val = float(parallel.all_reduce_mean(step_loss))
        window_loss += loss_val
        window_steps += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss_val:.4f}", lr=f"{lr:.2e}")
        if st.step % cfg.log_every == 0 or st.step == cfg.max_steps:
            elapsed = max(time.perf_counter() - t0, 1e-9)
            logger.scalars(st.step, {
                "train/loss": window_loss / window_steps,      # mean over the steps since the last log line
                "train/lr": lr,
                "train/grad_norm": grad_norm,
                "train/samples_per_s": window_samples * st.dist.world_size / elapsed,
            })
            window_loss, window_steps, window_samples, t0 = 0.0, 0, 0, time.perf_counter()
        if on_step is not None:
            on_step(st, logger)
        if cfg.save_every and st.step % cfg.save_every == 0 and st.step < cfg.max_steps:
            save_checkpoint(st)
    bar.close()
