"""Rectified-flow maths: time grids, shifts, interpolation, Euler/SDE steps, CFG, training loss.

TIME CONVENTION (the only one in thinkgen):
    t = 0 is pure noise, t = 1 is data.
    x_t = t * x1 + (1 - t) * x0          (x0 = noise, x1 = data)
    the model predicts the velocity v = x1 - x0, and Euler reads x <- x + (t_next - t) * v.

This matches OmniGen2 / ThinkGen. Flow-GRPO and diffusers' SD3 schedulers use sigma = 1 - t and the
velocity v_fg = -v; those forms appear here only in comments and in the tests, never in code paths.

Everything here is a pure function: tensors in, tensors out, no config objects, no logging, no device choice.
Timesteps ``t``/``t_next`` may be Python floats, 0-dim tensors or per-sample tensors of shape [B].
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "resolution_shift",
    "shift_t",
    "inference_timesteps",
    "train_shift_mu",
    "sample_train_t",
    "interpolate",
    "velocity_target",
    "flow_matching_loss",
    "euler_step",
    "SDEStep",
    "sde_step",
    "cfg_velocity",
    "edit_cfg_velocity",
    "cfg_active",
]

_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


# -----------------------------------------------------------------------------
# Time grids and shifts


def resolution_shift(num_latent_pixels: int) -> float:
    """Inference shift m = sqrt(H_lat * W_lat) / 40, counted in latent pixels BEFORE patchify.

    1024x1024 image -> 128x128 latent -> m = 3.2; 320x320 -> 40x40 -> m = 1 (no shift).
    """
    if num_latent_pixels <= 0:
        raise ValueError(f"num_latent_pixels must be > 0, got {num_latent_pixels}")
    return math.sqrt(num_latent_pixels) / 40.0


def shift_t(u, m):
    """Shift a uniform time u towards noise: t = u / (m - (m - 1) u).

    In sigma = 1 - t terms this is the SD3 shift sigma' = m sigma / (1 + (m - 1) sigma).
    Works on floats and tensors; m > 1 spends more of the grid near t = 0 (noise).
    """
    return u / (m - (m - 1) * u)


def inference_timesteps(num_steps: int, num_latent_pixels: int, device=None) -> Tensor:
    """Ascending float32 grid of num_steps + 1 times: t_i = shift_t(i / N, m) for i < N, then t_N = 1."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    m = resolution_shift(num_latent_pixels)
    u = torch.arange(num_steps, dtype=torch.float64) / num_steps
    t = torch.cat([shift_t(u, m), torch.ones(1, dtype=torch.float64)])
    return t.to(device=device, dtype=torch.float32)


def train_shift_mu(num_patch_tokens: int) -> float:
    """OmniGen2 "v1" dynamic shift exponent: mu linear in patch tokens, 256 -> 0.5 and 4096 -> 1.15.

    The line is not clamped (it extrapolates outside [256, 4096]), as in the reference.
    At 1024x1024 (64x64 = 4096 patch tokens) exp(mu) = exp(1.15) ~= 3.16, close to the inference m = 3.2.
    """
    slope = (1.15 - 0.5) / (4096 - 256)
    return 0.5 + slope * (num_patch_tokens - 256)


def sample_train_t(batch: int, num_patch_tokens: int, generator: torch.Generator | None = None,
                   device=None) -> Tensor:
    """Training times [batch] (float32): logit-normal t = sigmoid(N(0, 1)), then the dynamic shift.

    The shift is applied in sigma = 1 - t space with s = exp(mu):
        sigma' = s sigma / (1 + (s - 1) sigma),   t = 1 - sigma'
    which is algebraically shift_t(t, s), i.e. the same family of shifts as inference.
    """
    s = math.exp(train_shift_mu(num_patch_tokens))
    u = torch.sigmoid(torch.randn(batch, generator=generator, device=device, dtype=torch.float32))
    sigma = 1.0 - u
    sigma = s * sigma / (1.0 + (s - 1.0) * sigma)
    return 1.0 - sigma


# -----------------------------------------------------------------------------
# Training objective


def _per_sample(t, like: Tensor, dtype=torch.float32) -> Tensor:
    """t (float, 0-dim or [B]) as a tensor broadcastable to ``like`` ([B, ...])."""
    t = torch.as_tensor(t, dtype=dtype, device=like.device)
    if t.dim() == 0:
        return t
    if t.dim() != 1 or t.shape[0] != like.shape[0]:
        raise ValueError(f"t must be a scalar or have shape [B]={like.shape[0]}, got shape {tuple(t.shape)}")
    return t.reshape(-1, *([1] * (like.dim() - 1)))


def interpolate(x0: Tensor, x1: Tensor, t) -> Tensor:
    """x_t = t * x1 + (1 - t) * x0 with t broadcast per sample (scalar or [B]); result in x1's dtype."""
    t = _per_sample(t, x1, dtype=x1.dtype)
    return t * x1 + (1 - t) * x0


def velocity_target(x0: Tensor, x1: Tensor) -> Tensor:
    """The regression target v = x1 - x0 (data minus noise)."""
    return x1 - x0


def flow_matching_loss(v_pred: Tensor, v_target: Tensor, mask: Tensor | None = None) -> Tensor:
    """Scalar flow-matching loss with the OmniGen2 normalisation, computed in fp32.

    Reference: per-sample SUMMED squared error, divided by the total number of latent elements in the
    batch, i.e. the mean over all elements. ``mask`` is either a per-sample weight [B] or an element
    weight broadcastable to v_pred; the denominator stays ``v_pred.numel()`` (weights do not renormalise),
    so dropping a sample with weight 0 does not change the scale of the others.
    """
    if v_pred.shape != v_target.shape:
        raise ValueError(f"v_pred {tuple(v_pred.shape)} and v_target {tuple(v_target.shape)} differ in shape")
    se = (v_pred.float() - v_target.float()).pow(2)
    if mask is not None:
        mask = mask.to(device=se.device, dtype=torch.float32)
        if mask.dim() == 1 and mask.shape[0] == se.shape[0] and se.dim() > 1:
            mask = mask.reshape(-1, *([1] * (se.dim() - 1)))
        se = se * mask
    return se.sum() / v_pred.numel()


# -----------------------------------------------------------------------------
# Sampling steps


def euler_step(x: Tensor, v: Tensor, t, t_next) -> Tensor:
    """x + (t_next - t) * v, computed in fp32 (bf16 latents lose the small update otherwise), cast to x.dtype."""
    dt = _per_sample(t_next, x) - _per_sample(t, x)
    return (x.float() + dt * v.float()).to(x.dtype)


def _mean_over_elements(x: Tensor) -> Tensor:
    """[B, ...] -> [B] (a [B] input is returned as is; mean(dim=()) would reduce everything)."""
    return x if x.dim() == 1 else x.mean(dim=tuple(range(1, x.dim())))


@dataclass
class SDEStep:
    """One stochastic step. x_next has x's dtype; logp [B], mean and std are float32.

    std is the standard deviation of the step's Gaussian, shaped [B, 1, ..., 1] (broadcastable to x).
    """

    x_next: Tensor
    logp: Tensor
    mean: Tensor
    std: Tensor


SDE_KINDS = ("sde", "cps")   # Flow-GRPO's SDE step; coefficients-preserving sampling


def sde_step(
    x: Tensor,
    v: Tensor,
    t,
    t_next,
    noise_level: float,
    generator: torch.Generator | None = None,
    x_next: Tensor | None = None,
    *,
    kind: str = "sde",
    t_min=None,
) -> SDEStep:
    """Flow-GRPO stochastic step from t to t_next (> t) with the Gaussian log-prob of x_next, all in fp32.

    kind="sde" (Flow-GRPO ``sde_type="sde"``), with a = noise_level and dt = t_next - t > 0. Derived from the
    sigma form (sigma = 1 - t, v_fg = -v, dsigma = -dt, s^2 = a^2 sigma / (1 - sigma)):
        mean = x (1 - a^2 dt / (2 t')) + v (1 + a^2 t / (2 t')) dt
        std  = a sqrt((1 - t) / t' * dt)
    where t' = t, except at t = 0 (sigma = 1) where 1/t blows up: t' = t_min, the second grid time
    (Flow-GRPO substitutes sigma_1 in the 1 - sigma denominator). For t > 0 the v coefficient is the
    familiar (1 + a^2 / 2); at t = 0 it is exactly 1, because the a^2 t / (2 t') term vanishes.
    Equivalently mean = x + dt [v - a^2 / (2 t') (x - t v)], i.e. Euler plus (s^2 / 2) * score with the
    noise estimate x - t v. log p = mean over non-batch elements of the Normal(mean, std) log-density.

    kind="cps" (Coefficients-Preserving Sampling) with sigma_next = 1 - t_next:
        std  = sigma_next sin(a pi / 2)
        mean = t_next (x + (1 - t) v) + sigma_next cos(a pi / 2) (x - t v)
    [sigma_next cos(a pi/2) == sqrt(sigma_next^2 - std^2)], and log p = -mean((x_next - mean)^2): the
    reference drops the constants and the 1/(2 std^2) factor, so it is NOT a normalised density.

    If x_next is given it is not sampled (recomputing log-probs during training). A sampled x_next is cast
    to x.dtype BEFORE its log-prob is taken, so rollout and training see the same stored value (on-policy
    ratio exactly 1). The log-prob uses x_next.detach(): gradients flow through the mean only.
    noise_level == 0 returns the Euler step exactly (unless x_next is given, which is then returned as is),
    with logp and std zeros.
    """
    if kind not in SDE_KINDS:
        raise ValueError(f"kind must be 'sde' or 'cps', got {kind!r}")
    if noise_level < 0:
        raise ValueError(f"noise_level must be >= 0, got {noise_level}")
    if x_next is not None and x_next.shape != x.shape:
        raise ValueError(f"x_next shape {tuple(x_next.shape)} != x shape {tuple(x.shape)}")
    bshape = (x.shape[0],) + (1,) * (x.dim() - 1)

    if noise_level == 0:
        if x_next is None:
            x_next = euler_step(x, v, t, t_next)
        dt = _per_sample(t_next, x) - _per_sample(t, x)
        mean = x.float() + dt * v.float()
        zeros = torch.zeros(x.shape[0], device=x.device, dtype=torch.float32)
        return SDEStep(x_next=x_next, logp=zeros, mean=mean, std=torch.zeros(bshape, device=x.device))

    # fp32 on purpose: the 1/t and 1/std^2 terms overflow or lose the update in bf16 (Flow-GRPO does the same).
    xf, vf = x.float(), v.float()
    t_ = _per_sample(t, x)
    tn = _per_sample(t_next, x)
    dt = tn - t_
    if isinstance(t, (int, float)) and isinstance(t_next, (int, float)) and t_next <= t:
        raise ValueError(f"sde_step needs t_next > t, got t={t}, t_next={t_next}")

    if kind == "sde":
        if t_min is None:
            if bool((t_ == 0).any()):
                raise ValueError("sde_step at t=0 needs t_min (the second grid time) to keep the std finite")
            t_eff = t_
        else:
            t_eff = torch.where(t_ == 0, _per_sample(t_min, x), t_)
        a2 = noise_level ** 2
        mean = xf * (1 - a2 * dt / (2 * t_eff)) + vf * ((1 + a2 * t_ / (2 * t_eff)) * dt)
        std = noise_level * torch.sqrt((1 - t_) / t_eff * dt)
        std = std.expand(bshape) if std.dim() == len(bshape) else std.reshape(1).expand(bshape)
        if x_next is None:
            z = torch.randn(x.shape, generator=generator, device=x.device, dtype=torch.float32)
            x_next = (mean + std * z).to(x.dtype)
        xn = x_next.detach().float()
        logp = _mean_over_elements(-((xn - mean) ** 2) / (2 * std ** 2) - torch.log(std) - _LOG_SQRT_2PI)
    else:
        sig, sig_n = 1 - t_, 1 - tn
        angle = noise_level * math.pi / 2
        std = sig_n * math.sin(angle)
        x1_hat = xf + sig * vf  # data estimate
        x0_hat = xf - t_ * vf  # noise estimate
        mean = tn * x1_hat + (sig_n * math.cos(angle)) * x0_hat
        std = std.expand(bshape) if std.dim() == len(bshape) else std.reshape(1).expand(bshape)
        if x_next is None:
            z = torch.randn(x.shape, generator=generator, device=x.device, dtype=torch.float32)
            x_next = (mean + std * z).to(x.dtype)
        xn = x_next.detach().float()
        logp = -_mean_over_elements((xn - mean) ** 2)
    return SDEStep(x_next=x_next, logp=logp, mean=mean, std=std)


# -----------------------------------------------------------------------------
# Classifier-free guidance


def cfg_velocity(v_cond: Tensor, v_uncond: Tensor, scale: float) -> Tensor:
    """Text-to-image CFG: v = v_u + s (v_c - v_u)."""
    return v_uncond + scale * (v_cond - v_uncond)


def edit_cfg_velocity(v_cond: Tensor, v_ref: Tensor, v_uncond: Tensor, text_scale: float,
                      image_scale: float) -> Tensor:
    """Editing CFG with three passes: v = v_u + s_img (v_r - v_u) + s_txt (v_c - v_r).

    v_cond = (prompt, ref images), v_ref = (negative, ref images), v_uncond = (negative, no ref images).
    """
    return v_uncond + image_scale * (v_ref - v_uncond) + text_scale * (v_cond - v_ref)


def cfg_active(step_index: int, num_steps: int, cfg_range: tuple[float, float]) -> bool:
    """CFG is applied at step i of N iff lo <= i / N <= hi (a fraction of the step INDEX, not of t)."""
    lo, hi = cfg_range
    return lo <= step_index / num_steps <= hi
