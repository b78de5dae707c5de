"""3-axis rotary position embedding of the ThinkGen DiT (OmniGen2 / Lumina "NextDiT" style).

Each attention head of width d = sum(axes_dim) is split into three consecutive chunks, one per axis:
head dims [0, d0) rotate with the axis-0 position ("time"/sequence offset), [d0, d0+d1) with the row, and
[d0+d1, d) with the column. Inside a chunk of width d_a, the pairs (x[2k], x[2k+1]) are rotated by the
angle pos_a * omega_k with omega_k = theta ** (-2k / d_a), k = 0 .. d_a/2 - 1 (complex multiplication on
interleaved adjacent pairs).

Position ids of one sample's joint sequence [text | ref_0 | ... | ref_{n-1} | noise]:
  * text token i (the prepad tokens come first):      (i, i, i)
  * ref image k with h_k x w_k patch tokens:          (S_k, row, col),  S_0 = text_len,
                                                       S_{k+1} = S_k + max(h_k, w_k)
  * noise image:                                      (S_n, row, col)
Rows and columns restart at 0 for every image; tokens are in row-major order (row * w + col), which is the
order produced by patchify.

We evaluate cos/sin directly from the position ids (angles in float64, then float32) instead of gathering
from precomputed tables; the values are the same as a float64 table cast to complex64.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = [
    "rope_inv_freqs",
    "image_position_ids",
    "build_position_ids",
    "rope_cos_sin",
    "apply_rope",
    "ThinkGenRotaryPosEmbed",
]


def rope_inv_freqs(axes_dim: Sequence[int], theta: float = 10000.0) -> list[torch.Tensor]:
    """Angular frequencies per axis: omega_k = theta ** (-2k / d_a), k < d_a/2 (float64, CPU)."""
    freqs = []
    for d in axes_dim:
        if d % 2 != 0:
            raise ValueError(f"every RoPE axis width must be even, got axes_dim={tuple(axes_dim)}")
        k = torch.arange(0, d, 2, dtype=torch.float64)  # (d/2,)
        freqs.append(1.0 / (theta ** (k / d)))
    return freqs


def image_position_ids(offset: int, h: int, w: int) -> torch.Tensor:
    """Position ids (offset, row, col) of an h x w patch-token image in row-major order -> (h*w, 3) int64."""
    rows = torch.arange(h, dtype=torch.long).repeat_interleave(w)  # (h*w,) 0,0,..,1,1,..
    cols = torch.arange(w, dtype=torch.long).repeat(h)  # (h*w,) 0,1,..,0,1,..
    axis0 = torch.full((h * w,), offset, dtype=torch.long)  # (h*w,)
    return torch.stack([axis0, rows, cols], dim=-1)  # (h*w, 3)


def build_position_ids(
    text_len: int,
    ref_hw: Sequence[tuple[int, int]],
    noise_hw: tuple[int, int],
) -> tuple[torch.Tensor, list[int]]:
    """Joint-sequence position ids of one sample.

    Args:
        text_len: number of valid text tokens, prepad tokens included.
        ref_hw: (h, w) in patch tokens of each reference image, in order.
        noise_hw: (h, w) in patch tokens of the noise image.

    Returns:
        ids: (text_len + sum(h_k*w_k) + h*w, 3) int64, order [text | refs | noise].
        offsets: the axis-0 offset of each reference image followed by the noise image's (len(ref_hw) + 1).
    """
    text = torch.arange(text_len, dtype=torch.long)[:, None].expand(text_len, 3)  # (L, 3): (i, i, i)
    parts = [text]
    offsets = []
    shift = text_len
    for h, w in ref_hw:
        offsets.append(shift)
        parts.append(image_position_ids(shift, h, w))  # (h*w, 3)
        shift += max(h, w)
    offsets.append(shift)
    parts.append(image_position_ids(shift, *noise_hw))  # (h*w, 3)
    return torch.cat(parts, dim=0), offsets  # (S, 3)


def rope_cos_sin(
    position_ids: torch.Tensor,
    axes_dim: Sequence[int],
    theta: float = 10000.0,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the rotation angles for position ids (..., 3) -> two (..., sum(axes_dim)/2) in `dtype`."""
    if position_ids.shape[-1] != len(axes_dim):
        raise ValueError(f"position ids have {position_ids.shape[-1]} axes, axes_dim has {len(axes_dim)}")
    device = position_ids.device
    # float64 is not available everywhere (e.g. MPS); there we compute on the CPU and move the result back.
    calc_device = device if device.type in ("cpu", "cuda") else torch.device("cpu")
    pos = position_ids.to(calc_device, torch.float64)  # (..., 3)
    angles = torch.cat(
        [pos[..., a : a + 1] * f.to(calc_device) for a, f in enumerate(rope_inv_freqs(axes_dim, theta))], dim=-1
    )  # (..., d/2): axis-0 frequencies first, then rows, then columns
    return angles.cos().to(device, dtype), angles.sin().to(device, dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs of x (B, S, heads, d) by per-token angles cos/sin (B, S, d/2).

    Computed in at least fp32 (fp64 stays fp64), returned in x's dtype.
    """
    B, S, H, d = x.shape
    xf = x.to(torch.promote_types(x.dtype, torch.float32)).view(B, S, H, d // 2, 2)  # (B, S, H, d/2, 2)
    a, b = xf[..., 0], xf[..., 1]  # (B, S, H, d/2) each: real and imaginary parts
    c, s = cos[:, :, None, :], sin[:, :, None, :]  # (B, S, 1, d/2)
    out = torch.stack([a * c - b * s, a * s + b * c], dim=-1)  # (B, S, H, d/2, 2) == (a+ib) * e^{i angle}
    return out.flatten(-2).type_as(x)  # (B, S, H, d)


class ThinkGenRotaryPosEmbed(nn.Module):
    """Holds the RoPE geometry (no parameters, no buffers) and checks position bounds."""

    def __init__(self, axes_dim: Sequence[int], axes_lens: Sequence[int], theta: float = 10000.0):
        super().__init__()
        if len(axes_dim) != len(axes_lens):
            raise ValueError(f"axes_dim {tuple(axes_dim)} and axes_lens {tuple(axes_lens)} differ in length")
        self.axes_dim = tuple(int(d) for d in axes_dim)
        self.axes_lens = tuple(int(n) for n in axes_lens)
        self.theta = float(theta)

    def forward(
        self, position_ids: torch.Tensor, dtype: torch.dtype = torch.float32
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(..., 3) int64 position ids -> cos, sin (..., head_dim/2) in `dtype` (float32 unless debugging in fp64)."""
        return rope_cos_sin(position_ids, self.axes_dim, self.theta, dtype)

    def extra_repr(self) -> str:
        return f"axes_dim={self.axes_dim}, axes_lens={self.axes_lens}, theta={self.theta}"
