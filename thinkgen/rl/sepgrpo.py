"""SepGRPO (paper §4, stages 4-5): alternate MLLM-GRPO and DiT-GRPO phases over a multi-scenario prompt mixture.

    thinkgen train sepgrpo --config configs/sepgrpo_nano.yaml [--key=value ...] [--print-config]
    torchrun --nproc_per_node 2 -m thinkgen.rl.sepgrpo --config configs/sepgrpo_nano.yaml --parallel=ddp

One run = ``rounds`` x ``schedule`` phases (default one MLLM phase then one DiT phase, as in the paper). A step of
either phase: draw prompts -> rollouts -> rewards (scored in threads while other work runs) -> gathered over
ranks -> group advantages -> update(s). After every phase the held-out prompts are evaluated (greedy think, Euler,
fixed seeds) and an atomic checkpoint is written; a killed run resumes exactly (``resume: auto``).

Simplifications and choices (the paper gives no hyper-parameters, paper.md §7):

* Alternation may repeat (``rounds``); the paper describes one stage-4 -> stage-5 pass.
* The reference policy of each module is the STARTING model (``model_dir``) for the whole run: the LoRA base with
  adapters disabled, or a frozen copy for full fine-tuning.
* MLLM-GRPO: the DiT sees the CURRENT policy's post-``</think>`` features (as at inference, reference-code §6.8 b).
  The alternative ``mllm.features_from: reference`` re-encodes the answer with the frozen reference MLLM in the
  no-think layout (§6.8 a): rewards then do not move with the policy's representation drift, but the DiT no longer
  sees what it sees at inference. Gradients reach the MLLM only through token log-probs (rewards are rules).
* MLLM rollouts use HF ``generate`` through ``ThinkGenMLLM.think`` (vLLM is not wired in). Under
  ``parallel: fsdp2`` both models are sharded block by block (the DiT's reference refiner stays in the root group;
  the MLLM's vision tower is replicated outside FSDP and must stay frozen) and so are full-fine-tuning reference
  copies; a sharded MLLM decodes with HF ``synced_gpus`` (every rank keeps stepping until the longest rollout on
  any rank is done), and every rank makes the same number of MLLM / DiT calls per step (equal prompt shards,
  equalised micro-batch counts, padded evaluation shards).
* Advantages: MLLM = EasyR1 ``grpo`` (unbiased group std); DiT = Flow-GRPO per-prompt mean with ``dit.adv_std``
  (global by default). NaN rewards and tied groups give advantage 0; zero-advantage samples are dropped.
* Rollouts are sharded by prompt (all G samples of a prompt on one rank), so groups never straddle ranks; rewards
  are all-gathered for the statistics. Micro-batch counts are equalised across ranks with zero-weight dummies,
  and loss weights make the DDP-averaged gradient a mean over the global batch.
* Every random draw is seeded from (seed, phase, round, step, prompt, sample): resume needs no sampler state.
"""
from __future__ import annotations

import importlib
import json
import math
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as tdist

from ..checkpoint import (atomic_dir, config_hash, fault_point, link_or_copy_tree, load_rng_state, load_state,
                          rotate_checkpoints, save_rng_state, save_state, step_dir_name)
from ..errors import CheckpointError, ConfigError, ThinkgenError
from ..mllm import ThinkGenMLLM
from ..sampling import DiTConditions
from ..train import parallel
from ..train.cli import parse_config_args
from ..train.loop import (LRLambda, RunLogger, check_config_compatible, find_resume_checkpoint, image_grid,
                          load_optim_state, seed_everything, select_trainable)
from ..train.models import add_lora, merge_lora_state, save_transformer_folder
from ..train.parallel import DistInfo, print0
from .advantages import group_advantages, grpo_advantages, nonzero_mask
from .config import PHASES, SepGRPOConfig, config_to_yaml, load_config
from .dit_grpo import (collect_image_rollouts, dit_grpo_update, mllm_conditions, reference_trajectories,
                       velocity_anchor_update)
from .mllm_grpo import (collect_text_rollouts, feature_anchor_update, mllm_grpo_update, render_rollouts,
                         rollout_logps)
from .rewards import TEXT_REWARDS, AsyncReward, CombinedReward
from .rollout import (FrozenReference, PromptItem, PromptMixture, derive_seed, describe, load_jsonl_prompts,
                      nano_prompt_items, plan_micro_batches, reference_latents, render)

__all__ = ["main", "train_sepgrpo", "build_run", "close_run", "mllm_step", "dit_step", "evaluate", "save_checkpoint",
           "restore_checkpoint", "Position", "Run", "Phase"]

USAGE = """usage: thinkgen train sepgrpo --config PATH [--print-config] [--key=value ...]

SepGRPO reinforcement learning: MLLM-GRPO (stage 4) and DiT Flow-GRPO (stage 5), alternating.
Every config field can be overridden: --rounds=2 --schedule=[mllm,dit] --mllm.group_size=8 --dit.lr=1e-4.
Multi-process: torchrun --nproc_per_node N -m thinkgen.rl.sepgrpo --config PATH --parallel=ddp
"""


# --------------------------------------------------------------------------------------------------- run state
@dataclass
class Position:
    """Where the schedule is: the NEXT step to run is step ``step`` of phase ``phase_index`` of round ``round``."""

    round: int = 0
    phase_index: int = 0
    step: int = 0
    global_step: int = 0             # rollout steps done so far (all phases)


@dataclass
class Phase:
    """One trained module (its policy, reference, optimiser and reward)."""

    name: str                         # "mllm" or "dit"
    cfg: Any                          # MLLMPhaseConfig / DiTPhaseConfig
    module: torch.nn.Module           # the bare module (pipe.mllm.model or pipe.transformer)
    policy: torch.nn.Module           # what the update calls: the module, DDP-wrapped, or FSDP2-sharded
    reference: FrozenReference | None
    trainable: list                   # [(name, parameter)]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    reward: CombinedReward
    scorer: AsyncReward


@dataclass
class Run:
    cfg: SepGRPOConfig
    dist: DistInfo
    pipe: Any                         # ThinkGenPipeline
    phases: dict[str, Phase]
    mixtures: dict[str, PromptMixture]   # phase -> its prompt mixture
    eval_items: list[PromptItem]
    eval_reward: CombinedReward | None
    logger: RunLogger | None
    pos: Position
    resumed: bool = False             # started from a checkpoint


# --------------------------------------------------------------------------------------------------- distributed
def _collective_device() -> torch.device:
    """NCCL only moves CUDA tensors; gloo moves CPU tensors."""
    if tdist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _gather_cat(x: torch.Tensor) -> torch.Tensor:
    """Concatenate an equally-shaped tensor from every rank (rank order); returned on x's device."""
    if not parallel.is_dist():
        return x
    dev = _collective_device()
    parts = [torch.empty_like(x, device=dev) for _ in range(parallel.get_world_size())]
    tdist.all_gather(parts, x.contiguous().to(dev))
    return torch.cat(parts).to(x.device)


def _all_reduce(value: float, op=None) -> float:
    if not parallel.is_dist():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=_collective_device())
    tdist.all_reduce(t, op=op or tdist.ReduceOp.SUM)
    return float(t.item())


def _global_sum(value: float) -> float:
    return _all_reduce(value)


def _global_max(value: int) -> int:
    return int(_all_reduce(float(value), tdist.ReduceOp.MAX if parallel.is_dist() else None))


def _all_gather_objects(obj) -> list:
    if not parallel.is_dist():
        return [obj]
    out = [None] * parallel.get_world_size()
    tdist.all_gather_object(out, obj)
    return out


# --------------------------------------------------------------------------------------------------- setup
def _setup_phase(name: str, cfg: SepGRPOConfig, pipe, dist: DistInfo) -> Phase:
    pc = cfg.phase(name)
    module = pipe.mllm.model if name == "mllm" else pipe.transformer
    needs_ref = pc.kl_coef > 0 or pc.anchor_weight > 0 or (name == "mllm" and pc.features_from == "reference")
    reference = FrozenReference(module, pc.lora) if needs_ref else None   # a full copy is taken BEFORE training
    if pc.lora:
        add_lora(module, pc)
    elif name == "mllm":
        module.requires_grad_(True)
        if pc.freeze_vision:
            module.model.visual.requires_grad_(False)
    else:
        select_trainable(module, pc.trainable)
    trainable = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    if not trainable:
        raise ConfigError(f"the {name} phase has no trainable parameters; check {name}.lora / {name}.trainable")
    # unused trained parameters: the DiT's reference-image refiner without input images, a trainable vision tower
    # without images; the MLLM's text layers (LoRA or frozen vision) are always used
    find_unused = not (name == "mllm" and (pc.lora or pc.freeze_vision))
    # FSDP2 (parallel.wrap_model): the DiT's reference-image refiner runs only for editing prompts, so it stays in
    # the root group (every rank issues the same collectives); the MLLM's vision tower is called by HF generate
    # outside the root forward, so it is replicated outside FSDP (frozen)
    shard = dict(keep_in_root=["ref_image_refiner"]) if name == "dit" else dict(replicate=["model.visual"])
    policy = parallel.wrap_model(module, cfg.parallel, dist.device, find_unused_parameters=find_unused, **shard)
    if parallel.is_fsdp(policy) and reference is not None and reference.copy is not None:
        # the frozen full-fine-tuning reference is sharded too: no rank holds a second unsharded copy of the model
        parallel.wrap_model(reference.copy, "fsdp2", dist.device, **shard)
    if parallel.is_fsdp(policy):   # fully_shard replaces the parameters by DTensors
        trainable = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW([p for _, p in trainable], lr=pc.lr, betas=tuple(pc.betas),
                                  weight_decay=pc.weight_decay, eps=pc.adam_eps)
    total = cfg.rounds * cfg.schedule.count(name) * pc.steps * pc.updates_per_step
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, LRLambda(pc.warmup_steps, total, "constant", 0.0))
    weights, per_scenario = cfg.reward_spec(name)
    reward = CombinedReward(weights, per_scenario, reward_kwargs=cfg.reward_kwargs)
    scorer = AsyncReward(reward.compute, max_workers=cfg.reward_workers)
    return Phase(name, pc, module, policy, reference, trainable, optimizer, scheduler, reward, scorer)


def _prompt_sets(cfg: SepGRPOConfig) -> tuple[list[PromptItem], list[PromptItem]]:
    if cfg.prompt_source == "nano":
        train = nano_prompt_items([f for f, w in cfg.nano_families.items() if w > 0], "train", cfg.nano_train_size,
                                  cfg.seed)
        held = nano_prompt_items(list(cfg.nano_families), "heldout", cfg.nano_eval_size, cfg.seed)
        return train, held
    train = load_jsonl_prompts(cfg.train_prompts)
    held = load_jsonl_prompts(cfg.eval_prompts) if cfg.eval_prompts else []
    return train, held


# --------------------------------------------------------------------------------------------------- one step
def _draw(run: Run, phase: str, rnd: int, step: int, n: int) -> tuple[list[PromptItem], list[int]]:
    """This rank's ``n`` prompts of the global batch (world * n prompts, drawn from the step's key)."""
    world, rank = run.dist.world_size, run.dist.rank
    everyone = run.mixtures[phase].draw(world * n, (run.cfg.seed, phase, rnd, step))
    idx = list(range(rank * n, (rank + 1) * n))
    return [everyone[g] for g in idx], idx


def _gathered_rewards(future_results: list[tuple[list[int], tuple]], B: int):
    """Local (total [B], parts {name: [B]}) from per-chunk reward futures, then gathered over ranks."""
    total = torch.full((B,), float("nan"))
    parts: dict[str, torch.Tensor] = {}
    for idx, (t, p) in future_results:
        total[idx] = t
        for k, v in p.items():
            parts.setdefault(k, torch.full((B,), float("nan")))[idx] = v
    return _gather_cat(total), {k: _gather_cat(v) for k, v in sorted(parts.items())}


def _reward_stats(prefix: str, rewards: torch.Tensor, parts: dict, scenarios: list[str], adv: torch.Tensor) -> dict:
    def nanmean(x):
        x = x[~torch.isnan(x)]
        return float(x.mean()) if x.numel() else float("nan")

    out = {f"{prefix}/reward": nanmean(rewards), f"{prefix}/reward_nan_frac": float(torch.isnan(rewards).float().mean())}
    for k, v in parts.items():
        out[f"{prefix}/reward_part/{k}"] = nanmean(v)
    for sc in sorted(set(scenarios)):
        sel = torch.tensor([s == sc for s in scenarios])
        out[f"{prefix}/reward/{sc}"] = nanmean(rewards[sel])
    out.update({f"{prefix}/adv_mean": float(adv.mean()), f"{prefix}/adv_std": float(adv.std(correction=0)),
                f"{prefix}/adv_abs_mean": float(adv.abs().mean()), f"{prefix}/zero_adv_frac": float((adv == 0).float().mean())})
    return out


def _optimizer_step(ph: Phase) -> float:
    params = [p for _, p in ph.trainable]
    if ph.cfg.max_grad_norm > 0:
        norm = torch.nn.utils.clip_grad_norm_(params, ph.cfg.max_grad_norm)
    else:
        norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
    ph.optimizer.step()
    ph.scheduler.step()
    ph.optimizer.zero_grad(set_to_none=True)
    return float(parallel.local_tensor(norm))


def _mini_batches(keep: list[int], n: int) -> list[list[int]]:
    """Split the kept samples into ``n`` (possibly empty) mini-batches, one optimizer step each."""
    size = math.ceil(len(keep) / n) if keep else 0
    return [keep[i * size:(i + 1) * size] for i in range(n)]


def _update(run: Run, ph: Phase, keep: list[int], do_update) -> dict[str, float]:
    """Run ``updates_per_step`` optimizer steps over mini-batches of the kept samples; mean stats."""
    stats: dict[str, float] = {}
    for mb in _mini_batches(keep, ph.cfg.updates_per_step):
        if _global_sum(float(len(mb))) == 0:
            # no sample anywhere carries a signal (e.g. every group tied): no optimizer step, so the weights stay
            # exactly as they are (no weight decay either); the LR schedule counts optimizer steps only
            st = {"grad_norm": 0.0, "lr": ph.scheduler.get_last_lr()[0], "skipped": 1.0}
        else:
            n_micro = _global_max(math.ceil(len(mb) / ph.cfg.micro_batch_size))
            plan = plan_micro_batches(mb, ph.cfg.micro_batch_size, min_batches=n_micro)
            st = do_update(plan)
            st["lr"] = ph.scheduler.get_last_lr()[0]
            st["grad_norm"] = _optimizer_step(ph)
            st["skipped"] = 0.0
        for k, v in st.items():
            stats[k] = stats.get(k, 0.0) + v / ph.cfg.updates_per_step
    return stats


def mllm_step(run: Run, rnd: int, step: int) -> dict[str, float]:
    """One MLLM-GRPO step: think rollouts -> frozen-DiT renders -> rewards -> advantages -> clipped update."""
    cfg, ph, pipe = run.cfg, run.phases["mllm"], run.pipe
    pc, G = ph.cfg, ph.cfg.group_size
    key = (cfg.seed, "mllm", rnd, step)
    items, gidx = _draw(run, "mllm", rnd, step, pc.prompts_per_step)
    # --- rollouts: G thoughts per prompt from the current policy
    roll = collect_text_rollouts(pipe.mllm, items, pc, [[derive_seed(*key, g, s) for s in range(G)] for g in gidx])
    fault_point("rollout", run.pos.global_step + 1)
    features = None
    if pc.features_from == "reference":
        with ph.reference() as ref_model:
            enc = ThinkGenMLLM(ref_model, pipe.mllm.processor).encode_instructions(
                roll.instructions, [len(roll.item(b).images) for b in range(roll.batch_size)], mode="nothink")
        features = (enc.features, enc.mask)
    # --- the frozen DiT renders every rollout, one initial noise per group
    render_rollouts(pipe, parallel.unwrap(run.phases["dit"].policy) if "dit" in run.phases else pipe.transformer,
                    roll, pc, [derive_seed(*key, g, "noise") for g in gidx], features)
    # --- rewards, scored in a thread while the rollout / reference log-probs are computed
    future = ph.scorer.submit(*roll.reward_inputs())
    everyone = plan_micro_batches(range(roll.batch_size), pc.micro_batch_size)
    roll.old_logps = rollout_logps(ph.module, roll, everyone, pipe.mllm, pc.temperature)
    if pc.kl_coef > 0:
        with ph.reference() as ref_model:
            roll.ref_logps = rollout_logps(ref_model, roll, everyone, pipe.mllm, pc.temperature)
    rewards, parts = _gathered_rewards([(list(range(roll.batch_size)), future.result())], roll.batch_size)
    # --- group advantages over the global batch; this rank trains its own slice
    adv_all = grpo_advantages(rewards, G)
    B, r = roll.batch_size, run.dist.rank
    adv = adv_all[r * B:(r + 1) * B]
    keep = [b for b in range(B) if nonzero_mask(adv)[b]] if pc.drop_zero_adv else list(range(B))
    anchor_items = _draw(run, "mllm_anchor", rnd, step, pc.anchor_prompts_per_step)[0] if pc.anchor_weight > 0 else []

    def update(plan):
        st = mllm_grpo_update(ph.policy, roll, adv, plan, pipe.mllm, pc, _global_sum, run.dist.world_size)
        if anchor_items:   # + the feature anchor, into the same optimizer step
            st.update(feature_anchor_update(ph.policy, ph.reference, pipe.mllm, anchor_items, pc.anchor_weight))
        return st

    stats = _update(run, ph, keep, update)
    # --- stats
    scen = [s for part in _all_gather_objects([roll.item(b).scenario for b in range(B)]) for s in part]
    out = _reward_stats("mllm", rewards, parts, scen, adv_all)
    lengths = torch.tensor(_all_gather_objects(roll.think_lengths), dtype=torch.float32).flatten()
    answers = torch.tensor(_all_gather_objects([len(c) - t for c, t in zip(roll.completion_ids, roll.think_lengths)]),
                           dtype=torch.float32).flatten()
    finished = torch.tensor(_all_gather_objects(roll.finished), dtype=torch.float32).flatten()
    out.update({"mllm/think_len": float(lengths.mean()), "mllm/answer_len": float(answers.mean()),
                "mllm/finished_frac": float(finished.mean())})
    out.update({f"mllm/{k}": v for k, v in stats.items()})
    return out


def dit_step(run: Run, rnd: int, step: int) -> dict[str, float]:
    """One DiT-GRPO step: frozen-MLLM conditions -> SDE rollouts -> rewards -> advantages -> Flow-GRPO update."""
    cfg, ph, pipe = run.cfg, run.phases["dit"], run.pipe
    pc, G = ph.cfg, ph.cfg.group_size
    key = (cfg.seed, "dit", rnd, step)
    items, gidx = _draw(run, "dit", rnd, step, pc.prompts_per_step)
    start = None
    if pc.train_timesteps == "window":   # the same window on every rank, a new one every step
        start = random.Random(derive_seed(*key, "window")).randrange(*pc.window_range)
    train_steps = pc.trained_steps(start)
    # --- conditions from the frozen MLLM, then G SDE trajectories per prompt; each chunk is scored in a thread
    enc = mllm_conditions(pipe.mllm, items, pc.think, pc.max_think_tokens, pc.max_answer_tokens)
    futures = []
    prompts = [it.prompt for it in items]

    def score_chunk(idx, images):
        meta = [items[b // G].reward_meta(thought=(enc.thoughts[b // G] if enc.thoughts else ""),
                                          instruction=enc.instructions[b // G]) for b in idx]
        futures.append((idx, ph.scorer.submit(images, [prompts[b // G] for b in idx], meta)))

    roll = collect_image_rollouts(pipe, parallel.unwrap(ph.policy), items, enc, pc,
                                  [[derive_seed(*key, g, s) for s in range(G)] for g in gidx], train_steps,
                                  on_chunk=score_chunk)
    fault_point("rollout", run.pos.global_step + 1)
    rewards, parts = _gathered_rewards([(idx, f.result()) for idx, f in futures], roll.batch_size)
    # --- per-prompt advantages (group mean, global or group std); zero-advantage samples are dropped
    adv_all = group_advantages(rewards, G, std=pc.adv_std)
    B, r = roll.batch_size, run.dist.rank
    adv = adv_all[r * B:(r + 1) * B]
    keep = [b for b in range(B) if nonzero_mask(adv)[b]]
    anchor = None
    if pc.anchor_weight > 0:   # the reference draws the anchored prompts; the update holds the policy to it
        a_items, a_idx = _draw(run, "dit_anchor", rnd, step, pc.anchor_prompts_per_step)
        a_enc = mllm_conditions(pipe.mllm, a_items, pc.think, pc.max_think_tokens, pc.max_answer_tokens)
        anchor = reference_trajectories(pipe, ph.reference, a_items, a_enc, pc,
                                        [derive_seed(*key, "anchor", g) for g in a_idx])

    def update(plan):
        st = dit_grpo_update(ph.policy, ph.reference, roll, adv, plan, pc, _global_sum, run.dist.world_size)
        if anchor is not None:   # + the velocity anchor, into the same optimizer step
            st.update(velocity_anchor_update(ph.policy, anchor, pc, pc.anchor_weight))
        return st

    stats = _update(run, ph, keep, update)
    scen = [s for part in _all_gather_objects([items[b // G].scenario for b in range(B)]) for s in part]
    out = _reward_stats("dit", rewards, parts, scen, adv_all)
    out["dit/trained_steps"] = float(len(train_steps))
    out.update({f"dit/{k}": v for k, v in stats.items()})
    return out


# --------------------------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(run: Run) -> tuple[dict[str, float], list]:
    """Held-out prompts: greedy think (``eval_think``), Euler renders at fixed seeds, scored by the run's reward.
    Text-output prompts (understanding): the greedy chat answer, scored once (no render).

    Prompts are sharded over ranks (padded to equal counts so collective forwards stay aligned).
    Returns ({"eval/<scenario>": mean, "eval/overall": mean}, this rank's first images).
    """
    cfg, pipe = run.cfg, run.pipe
    items = run.eval_items[: cfg.eval_max_prompts] if cfg.eval_max_prompts else run.eval_items
    if not items or run.eval_reward is None:
        return {}, []
    world, rank = run.dist.world_size, run.dist.rank
    per = math.ceil(len(items) / world)
    mine = list(range(rank * per, (rank + 1) * per))
    dit = parallel.unwrap(run.phases["dit"].policy) if "dit" in run.phases else pipe.transformer
    mc = cfg.mllm
    chunk = max(1, cfg.dit.micro_batch_size)
    results, shown = [], []
    for s in range(0, len(mine), chunk):
        idx_all = mine[s:s + chunk]
        its_all = [items[i % len(items)] for i in idx_all]
        text = [j for j, it in enumerate(its_all) if it.output == "text"]
        if text:
            t_its = [its_all[j] for j in text]
            enc = pipe.mllm.think([it.prompt for it in t_its], [it.load_images() for it in t_its], mode="chat",
                                  max_think_tokens=mc.max_think_tokens, max_answer_tokens=mc.max_answer_tokens,
                                  do_sample=False, max_pixels=mc.max_image_pixels)
            meta = [it.reward_meta(thought=enc.thoughts[k], instruction=enc.instructions[k]) for k, it in enumerate(t_its)]
            total, _ = run.eval_reward.compute([None] * len(t_its), [it.prompt for it in t_its], meta)
            results.extend((it.scenario, float(total[k])) for k, (j, it) in enumerate(zip(text, t_its))
                           if idx_all[j] < len(items))
        keep = [j for j in range(len(its_all)) if j not in text]
        if not keep:
            continue
        idx, its = [idx_all[j] for j in keep], [its_all[j] for j in keep]
        enc = mllm_conditions(pipe.mllm, its, cfg.eval_think, mc.max_think_tokens, mc.max_answer_tokens,
                              mc.max_image_pixels)
        refs = reference_latents(pipe, its, cfg.eval_resolution)
        K = cfg.eval_seeds
        rep = [j // K for j in range(len(its) * K)]
        cond = DiTConditions(enc.features.to(pipe.device, pipe.dtype), enc.mask.to(pipe.device), refs).select(rep)
        seeds = [derive_seed(cfg.seed, "eval", i, k) for i in idx for k in range(K)]
        images = render(pipe, dit, cond, seeds, steps=cfg.eval_steps, resolution=cfg.eval_resolution,
                        guidance_scale=cfg.eval_guidance, batch_size=chunk)
        thoughts = enc.thoughts or [""] * len(its)
        meta = [its[j].reward_meta(thought=thoughts[j], instruction=enc.instructions[j]) for j in rep]
        total, _ = run.eval_reward.compute(images, [its[j].prompt for j in rep], meta)
        for n, j in enumerate(rep):
            if idx[j] < len(items):
                results.append((its[j].scenario, float(total[n])))
        shown.extend(images[: max(0, cfg.eval_images - len(shown))])
    everyone = [x for part in _all_gather_objects(results) for x in part]
    by: dict[str, list[float]] = {}
    for sc, v in everyone:
        if v == v:
            by.setdefault(sc, []).append(v)
    out = {f"eval/{sc}": sum(v) / len(v) for sc, v in sorted(by.items())}
    vals = [v for vs in by.values() for v in vs]
    out["eval/overall"] = sum(vals) / len(vals) if vals else float("nan")
    out["eval/count"] = float(len(everyone))
    return out, shown


def _log_eval(run: Run, step: int) -> None:
    metrics, images = evaluate(run)
    if not metrics:
        return
    run.logger.scalars(step, metrics)
    if images and run.dist.is_main:
        from ..models.vae import pil_to_tensor

        run.logger.image("eval/images", image_grid(pil_to_tensor(images)), step)
    print0("eval @ step %d: %s" % (step, ", ".join(f"{k[5:]}={v:.3f}" for k, v in metrics.items())))


# --------------------------------------------------------------------------------------------------- checkpoints
def _full_state(ph: Phase) -> dict[str, torch.Tensor]:
    """The module's full CPU state dict (collective under FSDP2)."""
    return parallel.full_state_dict(ph.policy)


def _export_model(run: Run, folder: Path, states: dict[str, dict[str, torch.Tensor]]) -> None:
    """Write the released layout (LoRA merged) into ``folder``; untouched components are hard-linked."""
    src = Path(run.cfg.model_dir)
    folder.mkdir(parents=True, exist_ok=True)
    for comp in ("processor", "vae", "scheduler"):
        link_or_copy_tree(src / comp, folder / comp)
    (folder / "model_index.json").write_bytes((src / "model_index.json").read_bytes())
    for name, comp in (("mllm", "mllm"), ("dit", "transformer")):
        if name not in states:
            link_or_copy_tree(src / comp, folder / comp)
            continue
        ph, state = run.phases[name], states[name]
        if ph.cfg.lora:
            state = merge_lora_state(state, ph.cfg.lora_alpha / ph.cfg.lora_rank)
        if name == "mllm":
            from transformers.utils import logging as hf_logging

            bars = hf_logging.is_progress_bar_enabled()
            hf_logging.disable_progress_bar()
            try:
                ph.module.save_pretrained(str(folder / comp), state_dict=state)
            finally:
                if bars:
                    hf_logging.enable_progress_bar()
        else:
            save_transformer_folder(folder / comp, ph.module, state)


def _check_ranks_in_sync(run: Run) -> None:
    """Replicated (DDP) weights must be bit-identical on every rank; a divergence is a bug, not a state to save."""
    if not parallel.is_dist():
        return
    for name, ph in run.phases.items():
        if parallel.is_fsdp(ph.policy):
            continue
        total = sum(float(p.detach().double().sum()) + float(p.detach().double().abs().sum()) for _, p in ph.trainable)
        lo, hi = _all_reduce(total, tdist.ReduceOp.MIN), _all_reduce(total, tdist.ReduceOp.MAX)
        if lo != hi:
            raise RuntimeError(f"the {name} weights differ across ranks (checksums {lo!r} .. {hi!r}); "
                               "gradients were not averaged identically")


def save_checkpoint(run: Run) -> Path | None:
    """Atomic ``checkpoints/step-N`` (collective): released-layout model/, trainable weights, optimisers,
    schedulers, per-rank RNG, position and config. Returns the folder on rank 0."""
    cfg, pos = run.cfg, run.pos
    _check_ranks_in_sync(run)
    states = {name: _full_state(ph) for name, ph in run.phases.items()}
    opts = {name: parallel.optimizer_state(ph.policy, ph.optimizer) for name, ph in run.phases.items()}
    rank_states = parallel.gather_objects({"rng": save_rng_state()})
    out = None
    if run.dist.is_main:
        from safetensors.torch import save_file

        root = Path(cfg.output_dir) / "checkpoints"
        meta = {"step": pos.global_step, "kind": "sepgrpo", "config_hash": config_hash(cfg.hash_dict()),
                "world_size": run.dist.world_size}
        with atomic_dir(root / step_dir_name(pos.global_step), meta=meta) as d:
            _export_model(run, d.path / "model", states)
            fault_point("ckpt_write", pos.global_step, 1)
            ts = d.path / "trainer_state"
            ts.mkdir()
            for name, ph in run.phases.items():
                names = [n for n, _ in ph.trainable]
                save_file({n: states[name][n].contiguous() for n in names}, str(ts / f"{name}_trainable.safetensors"))
                save_state(opts[name], ts / f"{name}_optimizer.pt")
                save_state(ph.scheduler.state_dict(), ts / f"{name}_scheduler.pt")
            fault_point("ckpt_write", pos.global_step, 2)
            for r, s in enumerate(rank_states):
                save_state(s, ts / f"rank{r}.pt")
            state_json = {**meta, "position": asdict(pos), "phases": sorted(run.phases),
                          "config": cfg.to_dict(), "config_flat": cfg.hash_dict()}
            (ts / "state.json").write_text(json.dumps(state_json, indent=2, default=str) + "\n")
            fault_point("ckpt_write", pos.global_step, 3)
        out = d.final
        rotate_checkpoints(root, cfg.keep_last)
    parallel.barrier()
    return out


def restore_checkpoint(run: Run, ckpt: Path) -> None:
    """Load everything ``save_checkpoint`` wrote, strictly, AFTER all seeding and set-up."""
    from safetensors.torch import load_file

    ts = ckpt / "trainer_state"
    if not (ts / "state.json").is_file():
        raise CheckpointError(f"checkpoint {ckpt} has no trainer_state/state.json")
    meta = json.loads((ts / "state.json").read_text())
    if meta.get("kind") != "sepgrpo":
        raise CheckpointError(f"checkpoint {ckpt} belongs to a {meta.get('kind')!r} run, not a SepGRPO run")
    if meta.get("world_size") != run.dist.world_size:
        raise CheckpointError(f"checkpoint {ckpt} was written by {meta.get('world_size')} processes but this run has "
                              f"{run.dist.world_size}; resume with the same number (prompts are sharded per rank)")
    check_config_compatible(meta["config_flat"], run.cfg, ckpt)
    if sorted(meta.get("phases", [])) != sorted(run.phases):
        raise CheckpointError(f"checkpoint {ckpt} trained {meta.get('phases')} but this run trains {sorted(run.phases)}")
    for name, ph in run.phases.items():
        state = load_file(str(ts / f"{name}_trainable.safetensors")) if (ts / f"{name}_trainable.safetensors").is_file() \
            else None
        if state is None:
            raise CheckpointError(f"checkpoint {ckpt} lacks trainer_state/{name}_trainable.safetensors")
        names = {n for n, _ in ph.trainable}
        if set(state) != names:
            raise CheckpointError(f"checkpoint {ckpt}: {name} weights do not match the trainable parameters "
                                  f"(missing {sorted(names - set(state))[:5]}, unexpected {sorted(set(state) - names)[:5]})")
        parallel.load_full_state_dict(ph.policy, state, strict=False)
        for line in load_optim_state(ph.policy, ph.optimizer, ph.scheduler, load_state(ts / f"{name}_optimizer.pt"),
                                     load_state(ts / f"{name}_scheduler.pt")):
            if run.dist.is_main:
                print(f"resume {ckpt.name}: the {name} config overrides the checkpoint's {line}", file=sys.stderr)
    rank_state = load_state(ts / f"rank{run.dist.rank}.pt")
    load_rng_state(rank_state["rng"])
    run.pos = Position(**meta["position"])


# --------------------------------------------------------------------------------------------------- the run
def _check_text_scenarios(cfg: SepGRPOConfig, mixtures: dict[str, PromptMixture],
                          eval_items: list[PromptItem]) -> None:
    """Text-output prompts (answered in text, never rendered): only the MLLM phase may draw them, only text rewards
    (``TEXT_REWARDS``) may score them, and not under fsdp2. ConfigError naming the scenario and the fix."""

    def text_of(mix: PromptMixture) -> list[str]:
        return sorted(sc for sc, outs in mix.outputs().items() if "text" in outs)

    if "dit" in mixtures and text_of(mixtures["dit"]):
        raise ConfigError(f"the dit phase would draw text-output scenarios {text_of(mixtures['dit'])} (answered in "
                          "text, nothing to paint); give the dit phase its own scenario_weights without them (e.g. "
                          "dit.scenario_weights: {composition: 1.0})")

    def check_rewards(where: str, spec: tuple[dict, dict], scenarios) -> None:
        weights, per_scenario = spec
        for sc in scenarios:
            used = sorted(k for k, w in per_scenario.get(sc, weights).items() if w != 0)
            if not used or set(used) - TEXT_REWARDS:
                raise ConfigError(f"scenario {sc!r} is answered in text (no image), but its {where or 'held-out '}"
                                  f"rewards are {used}; it needs rewards that read the answer "
                                  f"({sorted(TEXT_REWARDS)}), e.g. {where}reward_per_scenario: "
                                  f"{{{sc}: {{nano_answer: 1.0}}}}")

    if "mllm" in mixtures:
        check_rewards("mllm.", cfg.reward_spec("mllm"), text_of(mixtures["mllm"]))
    check_rewards("", cfg.reward_spec(None), sorted({it.scenario for it in eval_items if it.output == "text"}))
    text_scenarios = sorted({sc for mix in mixtures.values() for sc in text_of(mix)})
    if text_scenarios and cfg.parallel == "fsdp2":
        raise ConfigError(f"text-output scenarios {text_scenarios} with parallel=fsdp2: their rollouts skip the DiT, "
                          "so sharded forwards would fall out of step across ranks; use --parallel=ddp or none")


def build_run(cfg: SepGRPOConfig) -> Run:
    """Everything before the first step: process group, seeds, models, prompts, rewards, resume, logger."""
    from ..pipeline import ThinkGenPipeline

    cfg.check_ready()
    # --- process group, seeds, optional reward plug-ins
    dist = parallel.init_distributed(cfg.device)
    if dist.distributed and cfg.parallel == "none":
        raise ConfigError(f"parallel='none' with {dist.world_size} processes would train {dist.world_size} "
                          "diverging copies; use --parallel=ddp (or fsdp2)")
    seed_everything(cfg.seed)
    for mod in cfg.reward_modules:
        importlib.import_module(mod)
    # --- models: the starting pipeline; trained modules get LoRA / requires_grad, a reference, an optimiser
    pipe = ThinkGenPipeline.from_pretrained(cfg.model_dir, device=dist.device, dtype=cfg.dtype)
    phases = {name: _setup_phase(name, cfg, pipe, dist) for name in PHASES if name in cfg.schedule}
    if cfg.compile:   # after LoRA injection and sharding, so the compiled blocks see the final modules
        pipe.transformer.compile_blocks()
        ref = phases["dit"].reference if "dit" in phases else None
        if ref is not None and ref.copy is not None:
            ref.copy.compile_blocks()
    # --- prompts and rewards
    train_items, eval_items = _prompt_sets(cfg)
    mixtures = {name: PromptMixture(train_items, cfg.mixture_weights(name)) for name in phases}
    _check_text_scenarios(cfg, mixtures, eval_items)
    for name in phases:   # the image prompts whose no-think features (mllm) or velocities (dit) are anchored
        pc = cfg.phase(name)
        if pc.anchor_weight > 0:
            painted = [it for it in train_items if it.output == "image"]
            if not painted:
                raise ConfigError(f"{name}.anchor_weight > 0 anchors what the painter does with image prompts, but "
                                  f"every training prompt is answered in text; set {name}.anchor_weight: 0")
            mixtures[f"{name}_anchor"] = PromptMixture(painted, pc.anchor_scenarios,
                                                       f"{name}.anchor_scenarios (image prompts only)")
    eval_reward = None
    if eval_items:
        eval_reward = CombinedReward(cfg.reward_weights, cfg.reward_per_scenario, reward_kwargs=cfg.reward_kwargs)
    group = f"{dist.backend}, {cfg.parallel}" if dist.backend else "no process group"
    print0(f"sepgrpo: {dist.world_size} process(es) on {dist.device} ({group}); schedule {cfg.schedule} x {cfg.rounds}; "
           f"train prompts {describe(train_items)}; held-out {describe(eval_items)}")
    # --- resume (after every seeding call), then the logger truncated to the restored step
    run = Run(cfg, dist, pipe, phases, mixtures, eval_items, eval_reward, None, Position())
    ckpt = find_resume_checkpoint(cfg)
    if ckpt is not None:
        restore_checkpoint(run, ckpt)
        print0(f"sepgrpo: resumed from {ckpt} at {run.pos}")
    # a fresh start (-1) drops every earlier metric line and TensorBoard event of output_dir
    run.logger = RunLogger(Path(cfg.output_dir) / "logs", dist.is_main,
                           resume_step=run.pos.global_step if ckpt is not None else -1)
    run.resumed = ckpt is not None
    if dist.is_main:
        (Path(cfg.output_dir) / "config.yaml").write_text(config_to_yaml(cfg))
    return run


def train_sepgrpo(cfg: SepGRPOConfig) -> Path:
    """Run (or resume) SepGRPO; returns the ``final/`` released-layout folder."""
    from tqdm.auto import tqdm

    run = build_run(cfg)
    dist, phases = run.dist, run.phases
    try:
        # --- the schedule: rounds x phases x steps; held-out evaluation and a checkpoint after every phase
        if not run.resumed and cfg.eval_before:
            _log_eval(run, 0)
        while run.pos.round < cfg.rounds:
            name = cfg.schedule[run.pos.phase_index]
            ph = phases[name]
            step_fn = mllm_step if name == "mllm" else dit_step
            bar = tqdm(total=ph.cfg.steps, initial=run.pos.step, desc=f"round {run.pos.round} {name}",
                       disable=not (dist.is_main and cfg.progress), dynamic_ncols=True, mininterval=1.0)
            while run.pos.step < ph.cfg.steps:
                t0 = time.perf_counter()
                stats = step_fn(run, run.pos.round, run.pos.step)
                run.pos.step += 1
                run.pos.global_step += 1
                fault_point("step", run.pos.global_step)
                stats.update({"round": float(run.pos.round), "step_time_s": time.perf_counter() - t0})
                if run.pos.global_step % cfg.log_every == 0 or run.pos.step == ph.cfg.steps:
                    run.logger.scalars(run.pos.global_step, stats)
                bar.update(1)
                bar.set_postfix(reward=f"{stats[f'{name}/reward']:.3f}", kl=f"{stats.get(f'{name}/kl', 0.0):.2e}")
                if cfg.save_every and run.pos.global_step % cfg.save_every == 0 and run.pos.step < ph.cfg.steps:
                    save_checkpoint(run)
            bar.close()
            # --- phase boundary: held-out evaluation, advance, checkpoint
            _log_eval(run, run.pos.global_step)
            run.pos.step = 0
            run.pos.phase_index += 1
            if run.pos.phase_index == len(cfg.schedule):
                run.pos.phase_index, run.pos.round = 0, run.pos.round + 1
            save_checkpoint(run)
        # --- export: the released layout in output_dir/final
        final = Path(cfg.output_dir) / "final"
        states = {name: _full_state(ph) for name, ph in phases.items()}
        if dist.is_main:
            with atomic_dir(final, meta={"step": run.pos.global_step, "kind": "sepgrpo-final",
                                         "config_hash": config_hash(cfg.hash_dict())}) as d:
                _export_model(run, d.path, states)
            _write_eval_summary(Path(cfg.output_dir))
            print0(f"sepgrpo: done; final model in {final}")
        parallel.barrier()
        return final
    finally:
        close_run(run)


def close_run(run: Run) -> None:
    for ph in run.phases.values():
        ph.scorer.shutdown(wait=False)
    if run.logger is not None:
        run.logger.close()


def _write_eval_summary(out: Path) -> None:
    """``eval_summary.json``: every held-out evaluation of the run (from logs/metrics.jsonl), before -> after."""
    path = out / "logs" / "metrics.jsonl"
    if not path.is_file():
        return
    evals = []
    for line in path.read_text().splitlines():
        rec = json.loads(line) if line.strip() else {}
        scores = {k[5:]: v for k, v in rec.items() if k.startswith("eval/")}
        if scores:
            evals.append({"step": rec["step"], **scores})
    if evals:
        (out / "eval_summary.json").write_text(json.dumps(
            {"before": evals[0], "after": evals[-1], "all": evals}, indent=2) + "\n")


# --------------------------------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    """``thinkgen train sepgrpo --config PATH [--print-config] [--key=value ...]``; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parsed = parse_config_args(argv) if argv else None
    if parsed is None:
        print(USAGE)
        return 0
    path, overrides, print_only = parsed
    cfg = load_config(path, overrides)
    if print_only:
        print(config_to_yaml(cfg), end="")
        return 0
    try:
        train_sepgrpo(cfg)
    finally:
        parallel.cleanup_distributed()
    return 0


if __name__ == "__main__":   # torchrun --nproc_per_node N -m thinkgen.rl.sepgrpo --config ...
    try:
        sys.exit(main())
    except (ConfigError, ValueError) as e:
        print(f"thinkgen: error: {e}", file=sys.stderr)
        sys.exit(2)
    except CheckpointError as e:
        print(f"thinkgen: checkpoint error: {e}", file=sys.stderr)
        sys.exit(3)
    except ThinkgenError as e:
        print(f"thinkgen: error: {e}", file=sys.stderr)
        sys.exit(1)
