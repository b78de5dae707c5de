"""MLLM-GRPO (paper stage 4): think rollouts, token log-probs, and the clipped token-level GRPO update.

Pieces, in the order a step uses them:

1. ``collect_text_rollouts``: G thoughts per prompt with ``ThinkGenMLLM.think`` (per-sample generators, so a
   sample does not depend on its batch), then the frozen DiT renders every rollout from its post-``</think>``
   features with ONE initial noise per group (the DiT's randomness cancels inside the group). Text-output prompts
   (understanding, ``PromptItem.output == "text"``) are sampled on the chat prompt the MLLM answers questions
   with and are not rendered: their answer is what the reward scores.
2. ``rollout_logps``: per-token log-probs of the completions, recomputed by a forward over prompt + completion
   (the prompt's pixels go in through the processor's pixel inputs), with the same micro-batches as the update,
   so the first update's ratio is exactly 1.
3. ``mllm_grpo_update``: ``losses.grpo_token_loss`` (asymmetric clip, optional dual clip, k3 KL to the reference).
4. ``feature_anchor_update`` (optional, ``mllm.anchor_weight > 0``): holds the no-think features (what the painter
   reads with thinking off) near the reference MLLM's.

Choices: log-probs use ``logits / temperature`` and ignore top-p / top-k truncation (EasyR1); tokens forced by
the think budget (`</think>\\n\\n`) are not the policy's choice and carry no loss; models stay in eval mode (no
dropout) so rollout and training forwards agree.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..mllm import FORCE_CLOSE_TEXT, build_prompt
from ..sampling import DiTConditions
from ..tokenization import THINK_END
from . import losses
from .config import MLLMPhaseConfig
from .rollout import PromptItem, TextRollout, reference_latents, render

__all__ = ["collect_text_rollouts", "render_rollouts", "sequence_batch", "token_logps", "rollout_logps",
           "mllm_grpo_update", "feature_anchor_update"]


# --------------------------------------------------------------------------------------------------- rollouts
def _prompt_inputs(mllm, item: PromptItem, max_pixels: int) -> tuple[list[int], dict[str, Tensor]]:
    """Token ids and pixel inputs of one think prompt, built exactly as ``think`` builds them."""
    images = item.load_images()
    text = build_prompt(mllm.tokenizer, item.prompt, len(images), item.prompt_mode)
    batch = mllm.processor([text], [images], padding_side="right", max_pixels=max_pixels)
    ids = batch["input_ids"][0][batch["attention_mask"][0].bool()].tolist()
    vision = {k: batch[k] for k in ("pixel_values", "image_grid_thw") if k in batch}
    return ids, vision


@torch.no_grad()
def collect_text_rollouts(mllm, items: Sequence[PromptItem], cfg: MLLMPhaseConfig,
                          sample_seeds: Sequence[Sequence[int]]) -> TextRollout:
    """Sample G = cfg.group_size thoughts per prompt; ``sample_seeds[p][g]`` seeds sample g of prompt p."""
    G = cfg.group_size
    instructions = [it.prompt for it in items for _ in range(G)]
    images = [it.load_images() for it in items for _ in range(G)]
    gens = [torch.Generator(device=mllm.device).manual_seed(int(s)) for seeds in sample_seeds for s in seeds]
    modes = [it.prompt_mode for it in items for _ in range(G)]
    out = mllm.think(instructions, images, mode=modes, max_think_tokens=cfg.max_think_tokens,
                     max_answer_tokens=cfg.max_answer_tokens, do_sample=True, temperature=cfg.temperature,
                     top_p=cfg.top_p, top_k=cfg.top_k, generator=gens, max_pixels=cfg.max_image_pixels)
    think_end = mllm.ids[THINK_END]
    n_close = len(mllm.tokenizer.encode(FORCE_CLOSE_TEXT, add_special_tokens=False))
    masks, think_lengths = [], []
    for ids in out.generated_ids:
        end = ids.index(think_end) if think_end in ids else len(ids)
        mask = [True] * len(ids)
        if end == cfg.max_think_tokens:          # the budget forced `</think>\n\n` here (think() policy)
            for j in range(end, min(end + n_close, len(ids))):
                mask[j] = False
        masks.append(mask)
        think_lengths.append(end)
    prompt_inputs = [_prompt_inputs(mllm, it, cfg.max_image_pixels) for it in items]
    return TextRollout(
        items=list(items), group_size=G,
        prompt_ids=[p for p, _ in prompt_inputs], vision=[v for _, v in prompt_inputs],
        completion_ids=[list(x) for x in out.generated_ids], completion_mask=masks,
        thoughts=list(out.thoughts), instructions=list(out.instructions), finished=list(out.finished),
        think_lengths=think_lengths, features=out.features, feature_mask=out.mask,
    )


@torch.no_grad()
def render_rollouts(pipe, dit, roll: TextRollout, cfg: MLLMPhaseConfig, group_seeds: Sequence[int],
                    features: tuple[Tensor, Tensor] | None = None) -> None:
    """Frozen-DiT Euler renders of every image-output rollout into ``roll.images`` (None for text-output
    prompts), ONE initial noise per group (``group_seeds[p]``). ``features`` replaces the policy's own features
    (``features_from: reference``)."""
    G, B = roll.group_size, roll.batch_size
    roll.images = [None] * B
    prompts = [p for p, it in enumerate(roll.items) if it.output == "image"]
    if not prompts:
        return
    draw = [p * G + g for p in prompts for g in range(G)]
    feats, mask = features if features is not None else (roll.features, roll.feature_mask)
    refs = reference_latents(pipe, [roll.items[p] for p in prompts], cfg.render_resolution)
    slot = {p: i for i, p in enumerate(prompts)}
    idx = torch.tensor(draw, dtype=torch.long)
    cond = DiTConditions(feats[idx].to(pipe.device, pipe.dtype), mask[idx].to(pipe.device),
                         [refs[slot[b // G]] for b in draw] if refs is not None else None)
    images = render(pipe, dit, cond, [group_seeds[b // G] for b in draw], steps=cfg.render_steps,
                    resolution=cfg.render_resolution, guidance_scale=cfg.render_guidance,
                    batch_size=cfg.micro_batch_size)
    for b, im in zip(draw, images):
        roll.images[b] = im


# --------------------------------------------------------------------------------------------------- log-probs
def sequence_batch(roll: TextRollout, index: Sequence[int], pad_id: int, image_token_id: int) -> dict[str, Tensor]:
    """Right-padded prompt + completion batch of the samples in ``index``.

    Returns the model inputs plus ``targets`` (n, Tc) completion ids, ``logit_pos`` (n, Tc) the position whose
    logits predict each target, and ``loss_mask`` (n, Tc) bool (policy-sampled, non-padding tokens).
    """
    G = roll.group_size
    seqs, prompt_lens, comp = [], [], []
    for b in index:
        p = roll.prompt_ids[b // G]
        seqs.append(p + roll.completion_ids[b])
        prompt_lens.append(len(p))
        comp.append(len(roll.completion_ids[b]))
    n, T, Tc = len(seqs), max(len(s) for s in seqs), max(max(comp), 1)
    input_ids = torch.full((n, T), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((n, T), dtype=torch.long)
    targets = torch.full((n, Tc), pad_id, dtype=torch.long)
    logit_pos = torch.zeros((n, Tc), dtype=torch.long)
    loss_mask = torch.zeros((n, Tc), dtype=torch.bool)
    for i, (b, s) in enumerate(zip(index, seqs)):
        input_ids[i, : len(s)] = torch.tensor(s)
        attention_mask[i, : len(s)] = 1
        c = comp[i]
        targets[i, :c] = torch.tensor(roll.completion_ids[b])
        logit_pos[i, :c] = torch.arange(prompt_lens[i] - 1, prompt_lens[i] - 1 + c)
        loss_mask[i, :c] = torch.tensor(roll.completion_mask[b], dtype=torch.bool)
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "targets": targets,
             "logit_pos": logit_pos, "loss_mask": loss_mask}
    vis = [roll.vision[b // G] for b in index]
    if any(v for v in vis):
        batch["pixel_values"] = torch.cat([v["pixel_values"] for v in vis if v])
        batch["image_grid_thw"] = torch.cat([v["image_grid_thw"] for v in vis if v])
        batch["mm_token_type_ids"] = ((input_ids == image_token_id) & attention_mask.bool()).long()
    return batch


def token_logps(model: Callable, batch: dict[str, Tensor], temperature: float, device) -> Tensor:
    """(n, Tc) float32 log pi(target | prefix) with logits / temperature; 0 where ``loss_mask`` is False."""
    mask = batch["attention_mask"].to(device)
    kwargs = {"input_ids": batch["input_ids"].to(device), "attention_mask": mask, "use_cache": False}
    if "image_grid_thw" in batch:
        kwargs.update(pixel_values=batch["pixel_values"].to(device), image_grid_thw=batch["image_grid_thw"].to(device),
                      mm_token_type_ids=batch["mm_token_type_ids"].to(device))
    else:  # explicit positions, as ThinkGenMLLM.forward_features does
        kwargs["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(**kwargs).logits                                       # (n, T, V)
    pos = batch["logit_pos"].to(device)
    picked = logits.gather(1, pos[..., None].expand(-1, -1, logits.shape[-1]))   # (n, Tc, V)
    # fp32 on purpose: log_softmax over a large vocabulary loses the small ratio differences in bf16
    logp = F.log_softmax(picked.float() / temperature, dim=-1)
    logp = logp.gather(-1, batch["targets"].to(device)[..., None]).squeeze(-1)    # (n, Tc)
    return logp * batch["loss_mask"].to(device)


def _pad_cols(rows: list[Tensor], width: int) -> Tensor:
    return torch.stack([F.pad(r, (0, width - r.shape[-1])) for r in rows])


@torch.no_grad()
def rollout_logps(model: Callable, roll: TextRollout, plan: list[tuple[list[int], bool]], mllm,
                  temperature: float) -> Tensor:
    """(B, T) token log-probs of every rollout under ``model``, computed with the update's micro-batches."""
    T = max(max((len(c) for c in roll.completion_ids), default=1), 1)
    out = torch.zeros(roll.batch_size, T, dtype=torch.float32)
    for index, dummy in plan:
        if dummy:
            continue
        batch = sequence_batch(roll, index, mllm.tokenizer.pad_token_id, mllm.processor.image_token_id)
        lp = token_logps(model, batch, temperature, mllm.device).cpu()
        for i, b in enumerate(index):
            out[b, : lp.shape[1]] = lp[i]
    return out


# --------------------------------------------------------------------------------------------------- update
def mllm_grpo_update(policy: Callable, roll: TextRollout, advantages: Tensor, plan: list[tuple[list[int], bool]],
                     mllm, cfg: MLLMPhaseConfig, global_sum: Callable[[float], float] = lambda x: x,
                     world_size: int = 1) -> dict[str, float]:
    """Accumulate the gradient of the GRPO token loss over the planned micro-batches (no optimizer step).

    Each micro-batch's loss is weighted so the sum over micro-batches and ranks (DDP averages gradients) is the
    ``cfg.loss_agg`` mean over every kept token (or sequence) of the global batch. ``global_sum`` sums a number
    over ranks. Returns mean stats over the real micro-batches.
    """
    pad_id, img_id = mllm.tokenizer.pad_token_id, mllm.processor.image_token_id
    batches = [(sequence_batch(roll, idx, pad_id, img_id), idx, dummy) for idx, dummy in plan]

    def units(batch) -> float:
        m = batch["loss_mask"]
        return float(m.sum()) if cfg.loss_agg == "token" else float((m.sum(1) > 0).sum())

    total = global_sum(sum(units(b) for b, _, dummy in batches if not dummy))
    dual = cfg.dual_clip if cfg.dual_clip > 0 else None
    sums: dict[str, float] = {}
    n_real = 0
    for batch, idx, dummy in batches:
        logp = token_logps(policy, batch, cfg.temperature, mllm.device)
        Tc = logp.shape[1]
        old = roll.old_logps[idx, :Tc].to(logp.device)
        ref = roll.ref_logps[idx, :Tc].to(logp.device) if roll.ref_logps is not None else None
        loss, stats = losses.grpo_token_loss(
            logp, old, advantages[idx].to(logp.device), batch["loss_mask"].to(logp.device),
            clip_low=cfg.clip_low, clip_high=cfg.clip_high, dual_clip=dual, ref_logp=ref,
            kl_coef=cfg.kl_coef, agg=cfg.loss_agg)
        weight = 0.0 if dummy or total == 0 else units(batch) * world_size / total
        (loss * weight).backward()
        if not dummy:
            n_real += 1
            for k, v in stats.items():
                sums[k] = sums.get(k, 0.0) + float(v)
    return {k: v / max(n_real, 1) for k, v in sums.items()}


# --------------------------------------------------------------------------------------------------- anchoring
def feature_anchor_update(policy: Callable, reference, mllm, items: Sequence[PromptItem], weight: float
                          ) -> dict[str, float]:
    """Accumulate the gradient of ``weight`` x the relative squared distance between the policy's and the
    reference's no-think features (no optimizer step).

    GRPO on think rollouts also moves the features the painter reads when thinking is off (the no-think template,
    tokens after ``</think>``); this term holds them near the frozen reference's, like the SFT feature anchor
    (``train.mllm_sft.anchor_loss``: sum |f - f_ref|^2 / sum |f_ref|^2 over those tokens). ``items`` are this
    process's prompts (tokenizer-only path, as ``encode_instructions``: image placeholders, no pixels); with DDP
    the gradient is averaged over ranks like every other term. ``reference()`` yields the frozen reference MLLM.
    Returns {"anchor": the distance before the update}.
    """
    from ..train.mllm_sft import anchor_loss

    prompts, n_images = [it.prompt for it in items], [len(it.images) for it in items]
    feats, mask, logits = mllm.nothink_features(prompts, n_images, model=policy, return_logits=True)  # (n, L, 2H)
    with torch.no_grad(), reference() as ref_model:
        ref, _ = mllm.nothink_features(prompts, n_images, model=ref_model)                           # (n, L, 2H)
    dist = anchor_loss(feats, ref, mask)
    # 0 * logits: the LM head stays in the graph (DDP without find_unused_parameters expects every trained
    # parameter to get a gradient)
    (weight * dist + 0.0 * logits.float().sum()).backward()
    return {"anchor": float(dist.detach())}
