"""Group-relative advantages (GRPO / Flow-GRPO). Pure functions: tensors in, tensors out.

Batch layout: the G samples of one prompt are CONTIGUOUS, rewards = [p0s0, p0s1, ..., p0s(G-1), p1s0, ...].

NaN rule: a NaN reward means "could not score". Such a sample gets advantage exactly 0 and is left out of
every statistic (its group's mean/std and the global std). A group whose valid rewards are all equal
(a tied group) or that has fewer than two valid rewards gets advantage exactly 0 for every member.
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["group_advantages", "grpo_advantages", "nonzero_mask"]


def group_advantages(rewards: Tensor, group_size: int, std: str = "group", eps: float = 1e-4,
                     unbiased: bool = False) -> Tensor:
    """A_i = (r_i - mean_group(r)) / (std + eps), returned as float32 [B].

    std="group":  the group's own std (Flow-GRPO default; biased like np.std unless unbiased=True).
    std="global": one std over all valid rewards of the batch (Flow-GRPO ``global_std=True``).
    std="none":   no division (Dr. GRPO style), A_i = r_i - mean_group(r).
    Statistics are computed in float64.
    """
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D [B], got shape {tuple(rewards.shape)}")
    if group_size < 1 or rewards.shape[0] % group_size != 0:
        raise ValueError(f"batch size {rewards.shape[0]} is not a multiple of group_size={group_size}; "
                         "lay out the G samples of each prompt contiguously")
    if std not in ("group", "global", "none"):
        raise ValueError(f"std must be 'group', 'global' or 'none', got {std!r}")

    r = rewards.detach().to(torch.float64).view(-1, group_size)  # (P, G)
    valid = ~torch.isnan(r)
    n = valid.sum(dim=1, keepdim=True)  # (P, 1)
    r0 = torch.where(valid, r, torch.zeros_like(r))
    mean = r0.sum(dim=1, keepdim=True) / n.clamp(min=1)
    centred = torch.where(valid, r - mean, torch.zeros_like(r))

    if std == "group":
        dof = (n - 1) if unbiased else n
        scale = (centred.pow(2).sum(dim=1, keepdim=True) / dof.clamp(min=1)).sqrt() + eps
    elif std == "global":
        flat = r[valid]
        if flat.numel() >= 2:
            scale = flat.std(correction=1 if unbiased else 0) + eps
        else:
            scale = torch.ones((), dtype=torch.float64, device=r.device)
    else:
        scale = torch.ones((), dtype=torch.float64, device=r.device)

    adv = centred / scale
    # Exactly 0 for tied groups (the float mean may differ from the tied value by one ulp) and tiny groups.
    r_hi = torch.where(valid, r, torch.full_like(r, -float("inf"))).amax(dim=1, keepdim=True)
    r_lo = torch.where(valid, r, torch.full_like(r, float("inf"))).amin(dim=1, keepdim=True)
    degenerate = (n < 2) | (r_hi == r_lo)
    adv = torch.where(valid & ~degenerate, adv, torch.zeros_like(adv))
    return adv.reshape(-1).to(torch.float32)


def grpo_advantages(rewards: Tensor, group_size: int, eps: float = 1e-6) -> Tensor:
    """EasyR1 ``grpo`` estimator: (r - mean_g) / (std_g + 1e-6) with the UNBIASED group std.

    Differs from EasyR1 only for groups with one valid reward (EasyR1 then uses mean 0, std 1, i.e. A = r;
    here A = 0) and in the NaN rule above.
    """
    return group_advantages(rewards, group_size, std="group", eps=eps, unbiased=True)


def nonzero_mask(adv: Tensor) -> Tensor:
    """Bool mask of samples that carry a learning signal (Flow-GRPO drops samples whose advantage is exactly 0)."""
    return adv != 0
