"""DiT-GRPO (paper stage 5, Flow-GRPO): SDE rollouts with per-step log-probs, and the clipped per-step update.

Pieces, in the order a step uses them:

1. ``mllm_conditions``: the frozen MLLM turns each prompt into DiT conditions once (greedy think, or no-think).
2. ``collect_image_rollouts``: G trajectories per prompt through ``sampling.sample`` (the one loop inference uses)
   with ``noise_level > 0`` on the trained steps only; every state and per-step log-prob (fp32) is kept.
   Denoising reduction: fewer steps and a lower resolution than inference (config ``num_steps``/``resolution``).
3. ``dit_grpo_update``: for every kept sample and trained step, recompute the guided velocity with CFG INSIDE the
   training forward (``sampling.guided_velocity``, exactly as in sampling), the step's log-prob of the stored
   x_{j+1} and its mean, then ``losses.flow_grpo_step_loss`` (PPO clip, advantage clip, closed-form KL of the step
   means against the reference DiT under the same CFG).

4. ``velocity_anchor_update`` (optional, ``dit.anchor_weight > 0``): holds the guided velocity on prompts of other
   scenarios near the reference DiT's, along Euler trajectories the reference drew (``reference_trajectories``),
   at every step of the schedule or at those of ``dit.anchor_step_range``.

Choices: the unconditional CFG branch is not detached by default (Flow-GRPO's fast script; ``train_sd3.py`` detaches
it: ``dit.detach_uncond: true``);
only trained steps get SDE noise, the others are Euler (Flow-GRPO-Fast; with ``train_timesteps: fraction`` the
last untrained step is therefore deterministic); the window start is drawn per step from the run seed, the same on
every rank (Flow-GRPO-Fast re-seeds it per rank).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch

from .. import flow
from ..mllm import InstructionFeatures
from ..sampling import DiTConditions, Guidance, guided_velocity, sample
from . import losses
from .config import DiTPhaseConfig
from .rollout import (ImageRollout, PromptItem, decode_images, initial_noise, latent_shape, negative_conditions,
                      reference_latents)

__all__ = ["mllm_conditions", "collect_image_rollouts", "dit_grpo_update", "VelocityAnchor", "reference_trajectories",
           "anchor_terms", "velocity_anchor_update"]


@torch.no_grad()
def mllm_conditions(mllm, items: Sequence[PromptItem], think: str, max_think_tokens: int, max_answer_tokens: int,
                    max_pixels: int = 262144) -> InstructionFeatures:
    """Per-prompt instruction features from the (frozen) MLLM: greedy think ("on") or the no-think template."""
    if think == "on":
        return mllm.think([it.prompt for it in items], [it.load_images() for it in items], mode="think",
                          max_think_tokens=max_think_tokens, max_answer_tokens=max_answer_tokens,
                          do_sample=False, max_pixels=max_pixels)
    return mllm.encode_instructions([it.prompt for it in items], [len(it.images) for it in items], mode="nothink")


@torch.no_grad()
def collect_image_rollouts(pipe, dit: Callable, items: Sequence[PromptItem], enc: InstructionFeatures,
                           cfg: DiTPhaseConfig, sample_seeds: Sequence[Sequence[int]], train_steps: Sequence[int],
                           on_chunk: Callable[[list[int], list], None] | None = None) -> ImageRollout:
    """G SDE trajectories per prompt. ``sample_seeds[p][g]`` seeds sample g of prompt p: its initial noise (or
    the group's first seed with ``same_noise``) and its own SDE noise stream. ``on_chunk(indices, images)`` is
    called after each micro-batch is decoded (e.g. to start scoring it while the next one samples)."""
    G, P = cfg.group_size, len(items)
    B = P * G
    dev, dt = pipe.device, pipe.dtype
    rep = [b // G for b in range(B)]
    refs = reference_latents(pipe, items, cfg.resolution)
    cond = DiTConditions(enc.features.to(dev, dt), enc.mask.to(dev), refs).select(rep)
    guidance = Guidance(text_scale=cfg.guidance_scale, image_scale=cfg.image_guidance_scale)
    neg = negative_conditions(pipe.mllm, B, dev, dt) if cfg.guidance_scale > 1.0 else None
    C, h, w = latent_shape(pipe, cfg.resolution)
    flat = [int(s) for seeds in sample_seeds for s in seeds]
    noise_seeds = [sample_seeds[b // G][0] for b in range(B)] if cfg.same_noise else flat
    noise = initial_noise(noise_seeds, (C, h, w), dev, dt)
    timesteps = pipe.scheduler.timesteps(cfg.num_steps, h * w, device=dev)
    states, logps, images = [], [], []
    for s in range(0, B, cfg.micro_batch_size):
        idx = list(range(s, min(B, s + cfg.micro_batch_size)))
        # the SDE noise stream of each sample is separate from its initial noise
        gens = [torch.Generator("cpu").manual_seed((flat[b] + 1) % (1 << 63)) for b in idx]
        traj = sample(dit, noise[idx], cond.select(idx), neg.select(idx) if neg is not None else None,
                      timesteps, guidance, noise_level=cfg.noise_level, sde_steps=list(train_steps),
                      generator=gens, return_trajectory=True, sde_kind=cfg.sde_type)
        states.append(torch.stack(traj.states, dim=1))          # (b, S + 1, C, h, w)
        logps.append(traj.logps)                                # (b, S)
        chunk = decode_images(pipe, traj.latents)
        images.extend(chunk)
        if on_chunk is not None:
            on_chunk(idx, chunk)
    thoughts = list(enc.thoughts) if enc.thoughts else [""] * P
    return ImageRollout(items=list(items), group_size=G, cond=cond, neg=neg, timesteps=timesteps,
                        states=torch.cat(states), logps=torch.cat(logps), train_steps=list(train_steps),
                        thoughts=thoughts, instructions=list(enc.instructions), images=images)


def dit_grpo_update(policy: Callable, reference, roll: ImageRollout, advantages: torch.Tensor,
                    plan: list[tuple[list[int], bool]], cfg: DiTPhaseConfig,
                    global_sum: Callable[[float], float] = lambda x: x, world_size: int = 1) -> dict[str, float]:
    """Accumulate the Flow-GRPO gradient over planned micro-batches x trained steps (no optimizer step).

    ``reference()`` is a context manager yielding the reference DiT (used only when ``cfg.kl_coef > 0``, and for
    the KL stat). Weights make the accumulated gradient (averaged over ranks by DDP) the mean over every kept
    sample and trained step of the global batch. Returns mean stats.
    """
    ts = roll.timesteps
    S = ts.numel() - 1
    t_min = ts[1] if S > 1 else None
    guidance = Guidance(text_scale=cfg.guidance_scale, image_scale=cfg.image_guidance_scale)
    n_steps = len(roll.train_steps)
    total = global_sum(float(sum(len(idx) for idx, dummy in plan if not dummy)))
    sums: dict[str, float] = {}
    n_real = 0
    for idx, dummy in plan:
        cond = roll.cond.select(idx)
        neg = roll.neg.select(idx) if roll.neg is not None else None
        adv = advantages[idx].to(roll.states.device)
        weight = 0.0 if dummy or total == 0 else len(idx) * world_size / (total * n_steps)
        for j in roll.train_steps:
            t, t_next = ts[j], ts[j + 1]
            x, x_next = roll.states[idx, j], roll.states[idx, j + 1]
            v = guided_velocity(policy, x, t.to(x.dtype), cond, neg, guidance, j, S, detach_uncond=cfg.detach_uncond)
            step = flow.sde_step(x, v, t, t_next, cfg.noise_level, x_next=x_next, t_min=t_min, kind=cfg.sde_type)
            ref_mean = None
            if cfg.kl_coef > 0:
                with torch.no_grad(), reference() as ref_dit:
                    v_ref = guided_velocity(ref_dit, x, t.to(x.dtype), cond, neg, guidance, j, S)
                    ref_mean = flow.sde_step(x, v_ref, t, t_next, cfg.noise_level, x_next=x_next, t_min=t_min,
                                             kind=cfg.sde_type).mean
            loss, stats = losses.flow_grpo_step_loss(
                step.logp, roll.logps[idx, j].to(step.logp.device), adv, cfg.clip_range,
                mean=step.mean, ref_mean=ref_mean, std=step.std, kl_coef=cfg.kl_coef,
                adv_clip_max=cfg.adv_clip_max, dt=t_next - t)
            (loss * weight).backward()
            if not dummy:
                n_real += 1
                for k, val in stats.items():
                    sums[k] = sums.get(k, 0.0) + float(val)
    return {k: v / max(n_real, 1) for k, v in sums.items()}


# --------------------------------------------------------------------------------------------------- anchoring
@dataclass
class VelocityAnchor:
    """Where the painter is held: the reference DiT's Euler trajectories of some prompts and its velocities there."""

    cond: DiTConditions                   # (n) conditions of the anchored prompts
    neg: DiTConditions | None             # (n) CFG negatives (None without CFG)
    timesteps: torch.Tensor               # (S + 1,) the rollout schedule
    states: torch.Tensor                  # (n, S + 1, C, h, w) x_0..x_S of the reference's Euler runs
    steps: list[int]                      # (K,) the anchored step indices j (``dit.anchor_step_range``)
    velocities: torch.Tensor              # (n, K, C, h, w) the reference's guided velocity at x_j, j in steps, fp32


@torch.no_grad()
def reference_trajectories(pipe, reference, items: Sequence[PromptItem], enc: InstructionFeatures,
                           cfg: DiTPhaseConfig, seeds: Sequence[int]) -> VelocityAnchor:
    """The frozen reference DiT draws each prompt (Euler, the rollout schedule, size and CFG; ``seeds[i]`` seeds
    prompt i's initial noise); its guided velocity at the anchored steps' states is kept for
    ``velocity_anchor_update``."""
    n, dev, dt = len(items), pipe.device, pipe.dtype
    refs = reference_latents(pipe, items, cfg.resolution)
    cond = DiTConditions(enc.features.to(dev, dt), enc.mask.to(dev), refs)
    neg = negative_conditions(pipe.mllm, n, dev, dt) if cfg.guidance_scale > 1.0 else None
    guidance = Guidance(text_scale=cfg.guidance_scale, image_scale=cfg.image_guidance_scale)
    C, h, w = latent_shape(pipe, cfg.resolution)
    noise = initial_noise(list(seeds), (C, h, w), dev, dt)
    timesteps = pipe.scheduler.timesteps(cfg.num_steps, h * w, device=dev)
    S, steps = timesteps.numel() - 1, cfg.anchor_steps()
    states, velocities = [], []
    with reference() as ref_dit:
        for s in range(0, n, cfg.micro_batch_size):
            idx = list(range(s, min(n, s + cfg.micro_batch_size)))
            c, ng = cond.select(idx), (neg.select(idx) if neg is not None else None)
            traj = sample(ref_dit, noise[idx], c, ng, timesteps, guidance, return_trajectory=True)
            xs = torch.stack(traj.states, dim=1)                                             # (b, S + 1, C, h, w)
            vs = [guided_velocity(ref_dit, xs[:, j], timesteps[j].to(xs.dtype), c, ng, guidance, j, S).float()
                  for j in steps]
            states.append(xs)
            velocities.append(torch.stack(vs, dim=1))                                        # (b, K, C, h, w)
    return VelocityAnchor(cond, neg, timesteps, torch.cat(states), steps, torch.cat(velocities))


def anchor_terms(policy: Callable, anchor: VelocityAnchor, cfg: DiTPhaseConfig) -> Iterator[torch.Tensor]:
    """The velocity anchor's distance, one term per (anchored step j, micro-batch): sum_i |v_i - v_ref_i|^2 over the
    micro-batch's prompts / sum_i |v_ref_i|^2 over all of them, with CFG inside the forward as in the Flow-GRPO
    update. The distance is the mean over the anchored steps of each step's terms summed."""
    ts, n = anchor.timesteps, anchor.states.shape[0]
    S = ts.numel() - 1
    guidance = Guidance(text_scale=cfg.guidance_scale, image_scale=cfg.image_guidance_scale)
    for k, j in enumerate(anchor.steps):
        v_ref = anchor.velocities[:, k]
        norm = v_ref.pow(2).sum().clamp_min(1e-12)
        for s in range(0, n, cfg.micro_batch_size):
            idx = list(range(s, min(n, s + cfg.micro_batch_size)))
            x = anchor.states[idx, j]
            v = guided_velocity(policy, x, ts[j].to(x.dtype), anchor.cond.select(idx),
                                anchor.neg.select(idx) if anchor.neg is not None else None, guidance, j, S,
                                detach_uncond=cfg.detach_uncond)
            yield (v.float() - v_ref[idx]).pow(2).sum() / norm


def velocity_anchor_update(policy: Callable, anchor: VelocityAnchor, cfg: DiTPhaseConfig, weight: float
                           ) -> dict[str, float]:
    """Accumulate the gradient of ``weight`` x the anchor's distance (``anchor_terms``) between the policy's and
    the reference's guided velocities along the reference's trajectories (no optimizer step).

    Flow-GRPO moves the whole DiT, so prompts outside the trained mixture (or drawn rarely) drift too; the KL term
    only sees the trained prompts at the trained steps. With DDP the gradient is averaged over ranks like every
    other term; every rank makes the same number of forwards. Returns {"anchor": the distance before the update}.
    """
    K = len(anchor.steps)
    total = 0.0
    for term in anchor_terms(policy, anchor, cfg):
        (weight * term / K).backward()
        total += float(term.detach())
    return {"anchor": total / K}
