"""The one sampling loop, shared by inference and Flow-GRPO.

``sample()`` integrates the DiT velocity field from noise (t=0) to data (t=1) on a given timestep grid.
Each step is an Euler step (``noise_level == 0``) or the Flow-GRPO SDE step with a Gaussian log-prob
(``noise_level > 0`` on the steps listed in ``sde_steps``). With ``noise_level = 0`` the SDE step *is*
the Euler step, so RL rollouts and inference differ only in that one number.

Classifier-free guidance follows the reference exactly:

* text-to-image (no reference images): two branches, ``v = v_u + s_txt (v_c - v_u)``
  with ``v_u`` = (negative prompt, no references);
* editing (reference images, ``image_scale > 1``): three branches,
  ``v = v_u + s_img (v_r - v_u) + s_txt (v_c - v_r)`` with ``v_r`` = (negative, references) and
  ``v_u`` = (negative, no references);
* guidance is applied only on steps whose fraction ``i / N`` lies inside ``cfg_range``.

All active branches run as one batched DiT forward.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import Tensor

from . import flow


@dataclass
class DiTConditions:
    """What the DiT is conditioned on, for a batch of B samples."""

    features: Tensor                                  # (B, L, F) right-padded instruction features
    mask: Tensor                                      # (B, L) bool, True = valid
    ref_latents: list[list[Tensor]] | None = None     # per sample: list of (C, h, w) normalised latents

    def __post_init__(self):
        assert self.features.ndim == 3, f"features must be (B, L, F), got {tuple(self.features.shape)}"
        assert self.mask.shape == self.features.shape[:2], f"mask {tuple(self.mask.shape)} vs features {tuple(self.features.shape)}"
        self.mask = self.mask.bool()
        if self.ref_latents is not None:
            assert len(self.ref_latents) == self.features.shape[0], "one reference list per sample"

    @property
    def batch_size(self) -> int:
        return self.features.shape[0]

    @property
    def has_refs(self) -> bool:
        return self.ref_latents is not None and any(len(r) > 0 for r in self.ref_latents)

    def select(self, index: Sequence[int]) -> "DiTConditions":
        idx = torch.as_tensor(list(index), dtype=torch.long, device=self.features.device)
        refs = None if self.ref_latents is None else [self.ref_latents[i] for i in index]
        return DiTConditions(self.features[idx], self.mask[idx], refs)

    def without_refs(self) -> "DiTConditions":
        return DiTConditions(self.features, self.mask, None)


def concat_conditions(conds: Sequence[DiTConditions]) -> DiTConditions:
    """Stack conditions along the batch, right-padding the text to the longest."""
    L = max(c.features.shape[1] for c in conds)
    feats, masks, refs = [], [], []
    any_refs = any(c.ref_latents is not None for c in conds)
    for c in conds:
        pad = L - c.features.shape[1]
        feats.append(torch.nn.functional.pad(c.features, (0, 0, 0, pad)))
        masks.append(torch.nn.functional.pad(c.mask, (0, pad), value=False))
        if any_refs:
            refs.extend(c.ref_latents if c.ref_latents is not None else [[] for _ in range(c.batch_size)])
    return DiTConditions(torch.cat(feats), torch.cat(masks), refs if any_refs else None)


@dataclass
class Guidance:
    """Classifier-free guidance settings (reference defaults)."""

    text_scale: float = 4.0
    image_scale: float = 2.0
    cfg_range: tuple[float, float] = (0.0, 1.0)

    def __post_init__(self):
        for name in ("text_scale", "image_scale"):
            v = getattr(self, name)
            if not (v == v) or v in (float("inf"), float("-inf")) or v < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {v}")
        lo, hi = self.cfg_range
        if not (0.0 <= lo <= hi <= 1.0):
            raise ValueError(f"cfg_range must satisfy 0 <= start <= end <= 1, got {self.cfg_range}")


@dataclass
class Trajectory:
    """What one run of the sampler produced."""

    latents: Tensor                       # (B, C, H, W) final sample at t = 1
    timesteps: Tensor                     # (S + 1,) the grid used
    states: list[Tensor] = field(default_factory=list)   # S + 1 states x_0..x_S (only with return_trajectory)
    logps: Tensor | None = None           # (B, S) per-step log-prob of x_{i+1} | x_i (0 on Euler steps)
    means: list[Tensor] = field(default_factory=list)    # per step SDE mean (only with return_trajectory)
    stds: list[Tensor] = field(default_factory=list)     # per step SDE std (scalar per sample)


class BranchCache:
    """What stays the same across the steps of one sampling run: the batched conditions of each CFG branch set and,
    for a DiT that supports it (``supports_context_cache``), its refined text (``models.dit.ContextCache``). Made by
    ``sample()``; used only with autograd off (a training forward computes everything itself)."""

    def __init__(self, dit: Callable, cond: DiTConditions, neg: DiTConditions | None):
        self.enabled = bool(getattr(dit, "supports_context_cache", False))
        self._of = (cond, neg)
        self._entries: dict[str, tuple[DiTConditions, object]] = {}

    def conditions(self, key: str, build: Callable[[], DiTConditions], cond: DiTConditions,
                   neg: DiTConditions | None) -> tuple[DiTConditions, dict]:
        """The batched conditions for branch set ``key`` (built once) and the DiT keyword arguments to pass."""
        if cond is not self._of[0] or neg is not self._of[1]:
            raise ValueError("this BranchCache belongs to other conditions: make one per sampling run")
        if key not in self._entries:
            from .models.dit import ContextCache

            self._entries[key] = (build(), ContextCache())
        conds, ctx = self._entries[key]
        return conds, ({"context_cache": ctx} if self.enabled else {})


def guided_velocity(
    dit: Callable,
    x: Tensor,
    t: Tensor,
    cond: DiTConditions,
    neg: DiTConditions | None,
    guidance: Guidance,
    step_index: int,
    num_steps: int,
    detach_uncond: bool = False,
    cache: BranchCache | None = None,
) -> Tensor:
    """Velocity with CFG for one step. x: (B, C, H, W); t: scalar or (B,).

    ``detach_uncond``: gradients reach the DiT through the conditional branch only (the unconditional and
    reference-only branches run under ``no_grad``, in a call of their own), as Flow-GRPO's ``train_sd3.py`` trains;
    the value is the same up to float rounding (two batched calls instead of one).
    ``cache``: a ``BranchCache`` shared by the steps of one sampling run (ignored while autograd is on); the
    velocity is the same as without it, bit for bit.
    """
    B = x.shape[0]
    t = t.reshape(-1).expand(B) if t.numel() == 1 else t
    use_cfg = neg is not None and flow.cfg_active(step_index, num_steps, guidance.cfg_range)
    text_scale = guidance.text_scale if use_cfg else 1.0
    image_scale = guidance.image_scale if (use_cfg and cond.has_refs) else 1.0
    if cache is not None and torch.is_grad_enabled():
        cache = None
    if text_scale <= 1.0 and image_scale <= 1.0:
        if cache is None:
            return dit(x, t, cond.features, cond.mask, cond.ref_latents)
        c, kw = cache.conditions("cond", lambda: cond, cond, neg)
        return dit(x, t, c.features, c.mask, c.ref_latents, **kw)
    edit = image_scale > 1.0
    if edit:
        branches = [cond, DiTConditions(neg.features, neg.mask, cond.ref_latents), neg.without_refs()]
    else:
        branches = [cond, neg.without_refs()]
    n = len(branches)
    if detach_uncond and torch.is_grad_enabled():
        # the guidance branches run without a graph (no activations kept, no backward through them); the
        # conditional branch alone is differentiated
        rest = concat_conditions(branches[1:])
        with torch.no_grad():
            v_rest = dit(x.repeat(n - 1, 1, 1, 1), t.repeat(n - 1), rest.features, rest.mask, rest.ref_latents)
        v_cond = dit(x, t, cond.features, cond.mask, cond.ref_latents)
        parts = (v_cond,) + v_rest.chunk(n - 1)
    else:
        if cache is None:
            big, kw = concat_conditions(branches), {}
        else:
            big, kw = cache.conditions("edit" if edit else "text", lambda: concat_conditions(branches), cond, neg)
        v = dit(x.repeat(n, 1, 1, 1), t.repeat(n), big.features, big.mask, big.ref_latents, **kw)
        parts = v.chunk(n)
    if edit:
        return flow.edit_cfg_velocity(parts[0], parts[1], parts[2], text_scale, image_scale)
    return flow.cfg_velocity(parts[0], parts[1], text_scale)


def sample(
    dit: Callable,
    noise: Tensor,
    cond: DiTConditions,
    neg: DiTConditions | None,
    timesteps: Tensor,
    guidance: Guidance | None = None,
    *,
    noise_level: float = 0.0,
    sde_steps: Sequence[int] | None = None,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    return_trajectory: bool = False,
    callback: Callable[[int, int], None] | None = None,
    sde_kind: str = "sde",
) -> Trajectory:
    """Integrate from ``noise`` (t = timesteps[0]) to t = timesteps[-1].

    noise: (B, C, H, W). ``sde_steps``: indices of steps that use the SDE (default: all steps when
    ``noise_level > 0``). ``generator``: one generator, or one per sample (so a sample's randomness does
    not depend on what else is in the batch). ``sde_kind``: "sde" (Flow-GRPO's SDE step) or "cps"
    (coefficients-preserving sampling); see ``flow.sde_step``.
    """
    if sde_kind not in flow.SDE_KINDS:
        raise ValueError(f"sde_kind must be 'sde' or 'cps', got {sde_kind!r}")
    guidance = guidance or Guidance()
    S = timesteps.numel() - 1
    sde_set = set(range(S)) if sde_steps is None else set(int(i) for i in sde_steps)
    x = noise
    traj = Trajectory(latents=noise, timesteps=timesteps)
    logps = torch.zeros(noise.shape[0], S, dtype=torch.float32, device=noise.device)
    if return_trajectory:
        traj.states.append(x)
    t_min = timesteps[1] if S > 1 else None
    cache = None if torch.is_grad_enabled() else BranchCache(dit, cond, neg)  # built once per run
    for i in range(S):
        t, t_next = timesteps[i], timesteps[i + 1]
        v = guided_velocity(dit, x, t.to(x.dtype), cond, neg, guidance, i, S, cache=cache)
        if noise_level > 0 and i in sde_set:
            step = _sde_step_per_sample(x, v, t, t_next, noise_level, generator, t_min, sde_kind)
            x = step.x_next.to(x.dtype)
            logps[:, i] = step.logp
            if return_trajectory:
                traj.means.append(step.mean)
                traj.stds.append(step.std)
        else:
            x = flow.euler_step(x, v, t, t_next)
            if return_trajectory:
                traj.means.append(x)
                traj.stds.append(torch.zeros((), dtype=torch.float32, device=x.device))
        if return_trajectory:
            traj.states.append(x)
        if callback is not None:
            callback(i + 1, S)
    traj.latents = x
    traj.logps = logps
    return traj


def _sde_step_per_sample(x, v, t, t_next, noise_level, generator, t_min, kind="sde"):
    if generator is None or isinstance(generator, torch.Generator):
        return flow.sde_step(x, v, t, t_next, noise_level, generator=generator, t_min=t_min, kind=kind)
    # one generator per sample: draw each sample's noise from its own stream
    eps = torch.stack(
        [torch.randn(x.shape[1:], generator=g, dtype=torch.float32, device="cpu") for g in generator]
    ).to(x.device)
    mean_step = flow.sde_step(x, v, t, t_next, noise_level, x_next=x, t_min=t_min, kind=kind)
    std = mean_step.std.reshape(mean_step.std.shape[0] if mean_step.std.ndim else 1, *([1] * (x.ndim - 1)))
    # cast to the latent dtype before taking the log-prob, so training recomputes exactly this value
    x_next = (mean_step.mean + std * eps).to(x.dtype)
    return flow.sde_step(x, v, t, t_next, noise_level, x_next=x_next, t_min=t_min, kind=kind)
