"""Policy-gradient losses for the MLLM (GRPO, token level) and the DiT (Flow-GRPO, per SDE step).

Pure functions. Stats are returned as detached 0-dim tensors (no host sync; call .item() when logging).
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["k3_kl", "grpo_token_loss", "flow_grpo_step_loss"]

_LOG_RATIO_CLAMP = 20.0


def k3_kl(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """Schulman's k3 ("low_var_kl") estimator of KL(pi || ref), elementwise.

    d = ref_logp - logp (clamped to [-20, 20] before exp); k3 = exp(d) - d - 1, which is >= 0, clamped to
    [-10, 10] as in EasyR1.
    """
    d = (ref_logp - logp).clamp(-_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP)
    return (torch.exp(d) - d - 1).clamp(-10.0, 10.0)


def _masked_agg(x: Tensor, mask: Tensor, agg: str) -> Tensor:
    if agg == "token":  # one mean over every valid token of the batch
        return (x * mask).sum() / mask.sum().clamp(min=1)
    # "seq": mean over each sequence's tokens, then over the sequences that have at least one token
    n_tok = mask.sum(dim=1)
    per_seq = (x * mask).sum(dim=1) / n_tok.clamp(min=1)
    has = (n_tok > 0).to(x.dtype)
    return (per_seq * has).sum() / has.sum().clamp(min=1)


def grpo_token_loss(
    logp: Tensor,
    logp_old: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: float | None = None,
    ref_logp: Tensor | None = None,
    kl_coef: float = 0.0,
    agg: str = "token",
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO-clip GRPO loss over response tokens (EasyR1 ``default`` policy loss).

    logp, logp_old, ref_logp, mask: [B, T]; advantages: [B] (one scalar per sequence, broadcast to tokens).
    ratio = exp(clamp(logp - logp_old, -20, 20)); per token
        pg = max(-A ratio, -A clip(ratio, 1 - clip_low, 1 + clip_high))    ("clip-higher" when clip_high > clip_low)
    and with dual_clip = c > 1, for A < 0 only: pg = min(pg, -A c)  (bounds the loss of very large ratios).
    loss = agg(pg) + kl_coef * agg(k3_kl(logp, ref_logp)), agg in {"token", "seq"}.
    Stats: pg_loss, kl, clip_frac (fraction of valid tokens where a clip is active), ratio_mean.
    """
    if agg not in ("token", "seq"):
        raise ValueError(f"agg must be 'token' or 'seq', got {agg!r}")
    if logp.shape != logp_old.shape or logp.shape != mask.shape or logp.dim() != 2:
        raise ValueError(f"logp {tuple(logp.shape)}, logp_old {tuple(logp_old.shape)} and mask "
                         f"{tuple(mask.shape)} must all be [B, T]")
    if advantages.shape != (logp.shape[0],):
        raise ValueError(f"advantages must be [B]={logp.shape[0]}, got {tuple(advantages.shape)}")
    if dual_clip is not None and dual_clip <= 1.0:
        raise ValueError(f"dual_clip must be > 1 (EasyR1 uses 3.0), got {dual_clip}")
    if kl_coef != 0.0 and ref_logp is None:
        raise ValueError(f"kl_coef={kl_coef} needs ref_logp")

    mask = mask.to(logp.dtype)
    adv = advantages.to(logp.dtype).unsqueeze(1)  # (B, 1)
    log_ratio = (logp - logp_old).clamp(-_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP)
    ratio = torch.exp(log_ratio)
    pg_unclipped = -adv * ratio
    pg_clipped = -adv * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    pg = torch.maximum(pg_unclipped, pg_clipped)
    clipped = pg_clipped > pg_unclipped
    if dual_clip is not None:
        pg_dual = -adv * dual_clip
        dual_active = (adv < 0) & (pg > pg_dual)
        pg = torch.where(adv < 0, torch.minimum(pg, pg_dual), pg)
        clipped = clipped | dual_active

    pg_loss = _masked_agg(pg, mask, agg)
    loss = pg_loss
    if ref_logp is not None:
        kl = _masked_agg(k3_kl(logp, ref_logp), mask, agg)
        if kl_coef != 0.0:
            loss = loss + kl_coef * kl
    else:
        kl = torch.zeros((), dtype=logp.dtype, device=logp.device)
    stats = {
        "pg_loss": pg_loss.detach(),
        "kl": kl.detach(),
        "clip_frac": _masked_agg(clipped.to(logp.dtype), mask, "token").detach(),
        "ratio_mean": _masked_agg(ratio.detach(), mask, "token"),
    }
    return loss, stats


def _per_sample_std(std, batch: int, like: Tensor) -> Tensor:
    std = torch.as_tensor(std, dtype=torch.float32, device=like.device)
    if std.numel() == 1:
        return std.reshape(())
    if std.shape[0] == batch and std.numel() == batch:
        return std.reshape(batch)
    raise ValueError(f"std must be a scalar, [B] or [B, 1, ..., 1] with B={batch}, got shape {tuple(std.shape)}")


def flow_grpo_step_loss(
    logp: Tensor,
    logp_old: Tensor,
    advantages: Tensor,
    clip_range: float,
    mean: Tensor | None = None,
    ref_mean: Tensor | None = None,
    std: Tensor | float | None = None,
    kl_coef: float = 0.0,
    adv_clip_max: float = 5.0,
    dt=None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Flow-GRPO loss of ONE trained SDE step for a batch: clipped policy gradient + beta * KL.

    logp, logp_old, advantages: [B] (logp is the per-step mean-over-elements log-prob of ``sde_step``).
        A     = clamp(advantages, -adv_clip_max, adv_clip_max)
        ratio = exp(clamp(logp - logp_old, -20, 20))
        L_pg  = mean_B(max(-A ratio, -A clip(ratio, 1 - eps, 1 + eps)))     eps = clip_range (1e-4 .. 1e-5)
    KL, exactly as Flow-GRPO computes it (closed-form KL of two equal-variance Gaussians on the step means):
        L_KL  = mean_B( mean_elements((mean - ref_mean)^2) / (2 s^2) )
    with s = Flow-GRPO's std_dev_t = a sqrt((1 - t)/t), which is the step std WITHOUT the sqrt(|dt|). The true
    per-step KL is ||dmu||^2 / (2 s^2 |dt|), so this value is KL * |dt| (and an element mean, not a sum).
    Pass ``std`` as s directly, or pass ``std=SDEStep.std`` together with ``dt = t_next - t`` (then
    s = std / sqrt(|dt|)). For kind="cps" SDEStep.std is already Flow-GRPO's std_dev_t: pass it with dt=None.
    The KL is computed as a stat whenever mean, ref_mean and std are given; it enters the loss if kl_coef != 0.
    Stats: pg_loss, kl, approx_kl = 1/2 mean((logp - logp_old)^2), clip_frac = mean(|ratio - 1| > eps), ratio_mean.
    """
    if logp.dim() != 1 or logp.shape != logp_old.shape or logp.shape != advantages.shape:
        raise ValueError(f"logp {tuple(logp.shape)}, logp_old {tuple(logp_old.shape)} and advantages "
                         f"{tuple(advantages.shape)} must all be [B]")
    have_kl = mean is not None and ref_mean is not None and std is not None
    if kl_coef != 0.0 and not have_kl:
        raise ValueError(f"kl_coef={kl_coef} needs mean, ref_mean and std")

    adv = advantages.to(logp.dtype).clamp(-adv_clip_max, adv_clip_max)
    log_ratio = (logp - logp_old).clamp(-_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP)
    ratio = torch.exp(log_ratio)
    pg_unclipped = -adv * ratio
    pg_clipped = -adv * ratio.clamp(1.0 - clip_range, 1.0 + clip_range)
    pg_loss = torch.maximum(pg_unclipped, pg_clipped).mean()
    loss = pg_loss

    if have_kl:
        b = logp.shape[0]
        s = _per_sample_std(std, b, logp)
        if dt is not None:
            dt_abs = torch.as_tensor(dt, dtype=torch.float32, device=logp.device).abs()
            s = s / torch.sqrt(_per_sample_std(dt_abs, b, logp))
        dmu2 = (mean.float() - ref_mean.float()).pow(2).reshape(b, -1).mean(dim=1)
        kl = (dmu2 / (2 * s ** 2)).mean()
        if kl_coef != 0.0:
            loss = loss + kl_coef * kl
    else:
        kl = torch.zeros((), dtype=torch.float32, device=logp.device)

    lr = (logp - logp_old).detach()
    stats = {
        "pg_loss": pg_loss.detach(),
        "kl": kl.detach(),
        "approx_kl": 0.5 * lr.pow(2).mean(),
        "clip_frac": ((ratio.detach() - 1.0).abs() > clip_range).float().mean(),
        "ratio_mean": ratio.detach().mean(),
    }
    return loss, stats

