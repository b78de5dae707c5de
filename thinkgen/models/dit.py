"""ThinkGen DiT: an OmniGen2-style single-stream "NextDiT" with learned text prepadding.

Layout (parameter names are the released ones, see docs/design.md and the reference notes):

    text (B, L, 2T) -> [prepad (K rows) | text] -> RMSNorm + Linear -> context_refiner (unmodulated blocks)
    noise latents   -> patchify -> x_embedder               -> noise_refiner     (modulated blocks)
    ref latents     -> patchify -> ref_image_patch_embedder
                       + image_index_embedding[j]            -> ref_image_refiner (modulated, one image at a time)
    joint [text valid | ref_0 | ... | noise] (left-packed)   -> layers            (modulated blocks)
    last (H/p * W/p) valid tokens -> norm_out -> unpatchify  -> velocity (B, C, H, W)

Time convention: `timestep` is t in [0, 1] with t = 0 noise and t = 1 data; the sinusoidal embedding sees
t * timestep_scale (1000). The output is the velocity v = x_data - x_noise.

Every modulated block uses the same time embedding `temb` (B, min(D, 1024)); the reference refiner uses the
noise sample's temb even though references are clean (as the released model does).
"""
from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.loaders import PeftAdapterMixin
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from torch import nn
from torch.nn.utils.rnn import pad_sequence

from thinkgen.errors import CheckpointError, ConfigError, InvalidInputError
from thinkgen.loading import check_state_dict
from thinkgen.models.rope import ThinkGenRotaryPosEmbed, apply_rope, build_position_ids

logger = logging.getLogger(__name__)

__all__ = [
    "MAX_REF_IMAGES",
    "ContextCache",
    "ThinkGenTransformer2DModel",
    "ThinkGenTransformerBlock",
    "ThinkGenAttention",
    "RMSNorm",
    "patchify",
    "unpatchify",
    "sdpa_key_padding",
]

MAX_REF_IMAGES = 5  # rows of image_index_embedding
WEIGHTS_STEM = "diffusion_pytorch_model"
CONFIG_NAME = "config.json"

# torch >= 2.5 lets SDPA broadcast K/V heads itself (no repeated K/V tensor).
_SDPA_HAS_GQA = torch.torch_version.TorchVersion(torch.__version__) >= "2.5"


# ----------------------------------------------------------------------------------------------------------
# small building blocks


class RMSNorm(nn.Module):
    """RMSNorm with a `weight` parameter; statistics in at least fp32, result in the input dtype."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ct = torch.promote_types(x.dtype, torch.float32)
        xf = x.to(ct)
        xf = xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return (xf * self.weight.to(ct)).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, H/p * W/p, p*p*C), i.e. 'c (h p1) (w p2) -> (h w) (p1 p2 c)' per sample."""
    B, C, H, W = x.shape
    x = x.view(B, C, H // p, p, W // p, p)  # (B, C, h, p1, w, p2)
    x = x.permute(0, 2, 4, 3, 5, 1)  # (B, h, w, p1, p2, C): channel fastest, then p2, then p1
    return x.reshape(B, (H // p) * (W // p), p * p * C)  # (B, h*w, p*p*C)


def unpatchify(x: torch.Tensor, p: int, h: int, w: int) -> torch.Tensor:
    """(B, h*w, p*p*C) -> (B, C, h*p, w*p); inverse of patchify."""
    B, N, E = x.shape
    C = E // (p * p)
    x = x.view(B, h, w, p, p, C)  # (B, h, w, p1, p2, C)
    x = x.permute(0, 5, 1, 3, 2, 4)  # (B, C, h, p1, w, p2)
    return x.reshape(B, C, h * p, w * p)  # (B, C, H, W)


try:  # optional: flash-attn's varlen kernel (GQA-native, no compute on padding); never required
    from flash_attn import flash_attn_varlen_func as _FLASH_VARLEN
except Exception:  # noqa: BLE001 - missing or broken install both mean "not available"
    _FLASH_VARLEN = None


def flash_available(q: torch.Tensor) -> bool:
    """flash-attn is used when installed, on CUDA, in fp16/bf16, unless THINKGEN_DISABLE_FLASH_ATTN=1."""
    return (_FLASH_VARLEN is not None and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16)
            and os.environ.get("THINKGEN_DISABLE_FLASH_ATTN", "0") != "1")


def varlen_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor | None, attn_fn=None
) -> torch.Tensor:
    """Unpadded attention through a flash-attn-style varlen kernel.

    q (B, H, S, d), k/v (B, KV, S, d), key_mask (B, S) bool. Valid tokens of every sample are gathered into one
    packed sequence (N, H, d) with cumulative lengths; queries at padded positions are not computed and come
    back as zeros (the caller discards them). K/V keep their KV heads (the kernel handles GQA). Returns
    (B, H, S, d). ``attn_fn`` defaults to ``flash_attn_varlen_func``.
    """
    attn_fn = attn_fn or _FLASH_VARLEN
    B, H, S, d = q.shape
    KV = k.shape[1]
    if key_mask is None:
        key_mask = torch.ones(B, S, dtype=torch.bool, device=q.device)
    lens = key_mask.sum(dim=1, dtype=torch.int32)  # (B,)
    cu = F.pad(lens.cumsum(0, dtype=torch.int32), (1, 0))  # (B + 1,)
    idx = key_mask.reshape(-1).nonzero().squeeze(1)  # (N,)
    qu = q.transpose(1, 2).reshape(B * S, H, d)[idx]  # (N, H, d)
    ku = k.transpose(1, 2).reshape(B * S, KV, d)[idx]  # (N, KV, d)
    vu = v.transpose(1, 2).reshape(B * S, KV, d)[idx]  # (N, KV, d)
    max_len = int(lens.max()) if B else 0
    out_u = attn_fn(qu, ku, vu, cu, cu, max_len, max_len, dropout_p=0.0, softmax_scale=d ** -0.5, causal=False)
    out = q.new_zeros(B * S, H, d)
    out[idx] = out_u.to(q.dtype)
    return out.view(B, S, H, d).transpose(1, 2)  # (B, H, S, d)


def sdpa_key_padding(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor | None
) -> torch.Tensor:
    """Bidirectional attention with an optional key-padding mask and grouped K/V heads.

    q (B, H, S, d), k/v (B, KV, S, d) with H % KV == 0 (kv head j serves query heads j*g .. j*g+g-1),
    key_mask (B, S) bool, True = valid key. Returns (B, H, S, d). Scale 1/sqrt(d).
    """
    groups = q.shape[1] // k.shape[1]
    attn_mask = None
    if key_mask is not None:
        # A sample without any valid key would give softmax over nothing (NaN). Let such rows attend to
        # everything instead; they are padding and get discarded by the caller.
        key_mask = key_mask | ~key_mask.any(dim=-1, keepdim=True)  # (B, S)
        attn_mask = key_mask[:, None, None, :]  # (B, 1, 1, S)
    extra = {}
    if groups > 1:
        # With a mask, CUDA SDPA + enable_gqa only has the math kernel (O(S^2) memory), while repeated K/V
        # keeps the memory-efficient kernel; without a mask (or on CPU) enable_gqa avoids the copy.
        if _SDPA_HAS_GQA and not (attn_mask is not None and q.device.type == "cuda"):
            extra["enable_gqa"] = True
        else:
            k = k.repeat_interleave(groups, dim=1)  # (B, H, S, d)
            v = v.repeat_interleave(groups, dim=1)  # (B, H, S, d)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=q.shape[-1] ** -0.5, **extra)


class ThinkGenAttention(nn.Module):
    """GQA self-attention with per-head QK RMSNorm and 3-axis RoPE (no biases)."""

    def __init__(self, dim: int, heads: int, kv_heads: int, eps: float = 1e-5):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, dim // heads
        self.to_q = nn.Linear(dim, heads * self.head_dim, bias=False)
        self.to_k = nn.Linear(dim, kv_heads * self.head_dim, bias=False)
        self.to_v = nn.Linear(dim, kv_heads * self.head_dim, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(heads * self.head_dim, dim, bias=False), nn.Dropout(0.0)])
        self.norm_q = RMSNorm(self.head_dim, eps=eps)
        self.norm_k = RMSNorm(self.head_dim, eps=eps)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, key_mask: torch.Tensor | None
    ) -> torch.Tensor:
        B, S, _ = x.shape
        q = self.to_q(x).view(B, S, self.heads, self.head_dim)  # (B, S, H, d)
        k = self.to_k(x).view(B, S, self.kv_heads, self.head_dim)  # (B, S, KV, d)
        v = self.to_v(x).view(B, S, self.kv_heads, self.head_dim)  # (B, S, KV, d)
        q = apply_rope(self.norm_q(q), cos, sin).transpose(1, 2)  # (B, H, S, d)
        k = apply_rope(self.norm_k(k), cos, sin).transpose(1, 2)  # (B, KV, S, d)
        v = v.transpose(1, 2)  # (B, KV, S, d)
        if flash_available(q):
            out = varlen_attention(q, k, v, key_mask)  # (B, H, S, d), padded query rows are zeros
        else:
            out = sdpa_key_padding(q, k, v, key_mask)  # (B, H, S, d)
        out = out.transpose(1, 2).reshape(B, S, self.heads * self.head_dim)  # (B, S, D)
        return self.to_out[1](self.to_out[0](out))


class ThinkGenFeedForward(nn.Module):
    """SwiGLU: linear_2(silu(linear_1 x) * linear_3 x), no biases."""

    def __init__(self, dim: int, inner_dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(dim, inner_dim, bias=False)  # gate
        self.linear_2 = nn.Linear(inner_dim, dim, bias=False)  # down
        self.linear_3 = nn.Linear(dim, inner_dim, bias=False)  # up

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(x)) * self.linear_3(x))


class ModulatedRMSNorm(nn.Module):
    """norm1 of a modulated block.

    (s1, g1, s2, g2) = chunk4(linear(silu(temb))); returns RMSNorm(x) * (1 + s1), g1, s2, g2.
    """

    def __init__(self, dim: int, temb_dim: int, eps: float):
        super().__init__()
        self.linear = nn.Linear(temb_dim, 4 * dim, bias=True)
        self.norm = RMSNorm(dim, eps=eps)

    def forward(self, x: torch.Tensor, temb: torch.Tensor):
        s1, g1, s2, g2 = self.linear(F.silu(temb)).chunk(4, dim=-1)  # 4 x (B, D)
        return self.norm(x) * (1 + s1[:, None]), g1, s2, g2


class ThinkGenTransformerBlock(nn.Module):
    """Sandwich-norm block. Modulated:
        x = x + tanh(g1) * norm2(attn(norm1(x) * (1 + s1)))
        x = x + tanh(g2) * ffn_norm2(ffn(ffn_norm1(x) * (1 + s2)))
    Unmodulated (context refiner): the same with s = 0 and no gates.
    """

    def __init__(
        self, dim: int, heads: int, kv_heads: int, ffn_dim: int, norm_eps: float, temb_dim: int, modulation: bool
    ):
        super().__init__()
        self.modulation = modulation
        self.attn = ThinkGenAttention(dim, heads, kv_heads, eps=1e-5)
        self.feed_forward = ThinkGenFeedForward(dim, ffn_dim)
        self.norm1 = ModulatedRMSNorm(dim, temb_dim, norm_eps) if modulation else RMSNorm(dim, eps=norm_eps)
        self.norm2 = RMSNorm(dim, eps=norm_eps)
        self.ffn_norm1 = RMSNorm(dim, eps=norm_eps)
        self.ffn_norm2 = RMSNorm(dim, eps=norm_eps)

    def forward(
        self,
        x: torch.Tensor,  # (B, S, D)
        cos: torch.Tensor,  # (B or 1, S, d/2)
        sin: torch.Tensor,
        key_mask: torch.Tensor | None,  # (B, S) bool or None (all valid)
        temb: torch.Tensor | None = None,  # (B, temb_dim), modulated blocks only
    ) -> torch.Tensor:
        if self.modulation:
            h, g1, s2, g2 = self.norm1(x, temb)
            x = x + torch.tanh(g1)[:, None] * self.norm2(self.attn(h, cos, sin, key_mask))
            y = self.feed_forward(self.ffn_norm1(x) * (1 + s2[:, None]))
            x = x + torch.tanh(g2)[:, None] * self.ffn_norm2(y)
        else:
            x = x + self.norm2(self.attn(self.norm1(x), cos, sin, key_mask))
            x = x + self.ffn_norm2(self.feed_forward(self.ffn_norm1(x)))
        return x


class ThinkGenTimeCaptionEmbedding(nn.Module):
    """temb = linear_2(silu(linear_1([cos, sin](scale * t * 10000^(-k/128))))); caption = Linear(RMSNorm(text))."""

    def __init__(self, hidden_size: int, text_in_dim: int, temb_dim: int, norm_eps: float, timestep_scale: float):
        super().__init__()
        self.time_proj = Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=0.0, scale=timestep_scale)
        self.timestep_embedder = TimestepEmbedding(in_channels=256, time_embed_dim=temb_dim)
        self.caption_embedder = nn.Sequential(
            RMSNorm(text_in_dim, eps=norm_eps), nn.Linear(text_in_dim, hidden_size, bias=True)
        )

    def embed_time(self, timestep: torch.Tensor) -> torch.Tensor:
        t_freq = self.time_proj(timestep)  # (B, 256) fp32
        return self.timestep_embedder(t_freq.to(self.timestep_embedder.linear_1.weight.dtype))  # (B, temb_dim)

    def forward(self, timestep: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.embed_time(timestep), self.caption_embedder(text)  # (B, temb_dim), (B, L, D)


class ThinkGenNormOut(nn.Module):
    """Scale-only adaLN output head: linear_2(LayerNorm(x) * (1 + linear_1(silu(temb))))."""

    def __init__(self, dim: int, temb_dim: int, out_dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(temb_dim, dim, bias=True)
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.linear_2 = nn.Linear(dim, out_dim, bias=True)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        scale = self.linear_1(F.silu(temb))  # (B, D)
        return self.linear_2(self.norm(x) * (1 + scale[:, None]))  # (B, S, out_dim)


@dataclass
class ContextCache:
    """The refined text (caption embedding + context refiner) of one batch of conditions, kept across the steps of
    a sampling run: it depends on the text features alone, not on t, the latents or the references, so a sampler
    calling the DiT S times on the same conditions computes it once instead of S times (it matters at low
    resolution, where the text outnumbers the image tokens: nano rollouts at 64 px).

    Pass one (empty) cache per batch of conditions as ``context_cache=`` to ``forward``: the first call fills it,
    later calls must pass the same ``text_features`` / ``text_mask`` tensors, unchanged, to the same model with the
    same weights (checked as far as cheaply possible: tensor identity and version, model identity; a mismatch
    raises). Only used with autograd off: a call that builds a graph computes the context itself and leaves the
    cache alone, so gradients always reach the context refiner.
    """

    text: torch.Tensor | None = None  # (B, K+L, D) context refiner output
    source: tuple | None = None  # what it was computed from

    @staticmethod
    def fingerprint(model, text_features: torch.Tensor, text_mask: torch.Tensor, dtype) -> tuple:
        return (id(model), dtype, text_features.data_ptr(), text_features._version, tuple(text_features.shape),
                text_mask.data_ptr(), text_mask._version, tuple(text_mask.shape))


# ----------------------------------------------------------------------------------------------------------
# the model


class ThinkGenTransformer2DModel(ModelMixin, ConfigMixin, PeftAdapterMixin):
    """ThinkGen DiT. `forward(latents, timestep, text_features, text_mask, ref_latents)` -> velocity (B, C, H, W)."""

    supports_context_cache = True  # forward(..., context_cache=ContextCache()) (see ContextCache)

    _supports_gradient_checkpointing = True
    _no_split_modules = ["ThinkGenTransformerBlock"]

    @register_to_config
    def __init__(
        self,
        patch_size: int = 2,
        in_channels: int = 16,
        out_channels: int | None = None,
        hidden_size: int = 2520,
        num_layers: int = 32,
        num_refiner_layers: int = 2,
        num_attention_heads: int = 21,
        num_kv_heads: int = 7,
        multiple_of: int = 256,
        ffn_dim_multiplier: float | None = None,
        norm_eps: float = 1e-5,
        axes_dim_rope: tuple[int, int, int] = (40, 40, 40),
        axes_lens: tuple[int, int, int] = (1024, 1664, 1664),
        text_feat_dim: int = 4096,
        timestep_scale: float = 1000.0,
        num_prepad_tokens: int = 23,
    ):
        super().__init__()
        D, p = hidden_size, patch_size
        out_channels = in_channels if out_channels is None else out_channels
        _check_geometry(D, num_attention_heads, num_kv_heads, axes_dim_rope, axes_lens, p, num_prepad_tokens)
        temb_dim = min(D, 1024)
        inner = 4 * D if ffn_dim_multiplier is None else int(ffn_dim_multiplier * 4 * D)
        ffn_dim = multiple_of * math.ceil(inner / multiple_of)  # 10240 for D = 2520
        self.out_channels = out_channels
        self.gradient_checkpointing = False

        def block(modulation: bool) -> ThinkGenTransformerBlock:
            return ThinkGenTransformerBlock(
                D, num_attention_heads, num_kv_heads, ffn_dim, norm_eps, temb_dim, modulation
            )

        self.rope_embedder = ThinkGenRotaryPosEmbed(axes_dim_rope, axes_lens, theta=10000.0)
        self.x_embedder = nn.Linear(p * p * in_channels, D, bias=True)
        self.ref_image_patch_embedder = nn.Linear(p * p * in_channels, D, bias=True)
        self.time_caption_embed = ThinkGenTimeCaptionEmbedding(D, 2 * text_feat_dim, temb_dim, norm_eps, timestep_scale)
        self.noise_refiner = nn.ModuleList([block(True) for _ in range(num_refiner_layers)])
        self.ref_image_refiner = nn.ModuleList([block(True) for _ in range(num_refiner_layers)])
        self.context_refiner = nn.ModuleList([block(False) for _ in range(num_refiner_layers)])
        self.layers = nn.ModuleList([block(True) for _ in range(num_layers)])
        self.norm_out = ThinkGenNormOut(D, temb_dim, p * p * out_channels)
        self.image_index_embedding = nn.Parameter(torch.zeros(MAX_REF_IMAGES, D))
        self.prepad_embed = nn.Parameter(torch.zeros(1, num_prepad_tokens, 2 * text_feat_dim))
        self.register_buffer("prepad_mask", torch.ones(1, num_prepad_tokens, dtype=torch.long), persistent=True)
        self._init_weights()

    def _init_weights(self) -> None:
        """xavier linears with zero biases; zero adaLN and output linears (blocks start as identity, output 0)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for blk in [*self.noise_refiner, *self.ref_image_refiner, *self.layers]:
            nn.init.zeros_(blk.norm1.linear.weight)
            nn.init.zeros_(blk.norm1.linear.bias)
        for lin in (self.norm_out.linear_1, self.norm_out.linear_2):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)
        nn.init.normal_(self.image_index_embedding, std=0.02)
        nn.init.normal_(self.prepad_embed, std=1.0)

    # ------------------------------------------------------------------------------------------------------
    # forward

    def forward(
        self,
        latents: torch.Tensor,
        timestep: torch.Tensor | float,
        text_features: torch.Tensor,
        text_mask: torch.Tensor,
        ref_latents: Sequence[Sequence[torch.Tensor] | None] | None = None,
        context_cache: ContextCache | None = None,
    ) -> torch.Tensor:
        """Predict the velocity.

        Args:
            latents: (B, C, H, W) noisy latents x_t; H and W divisible by patch_size.
            timestep: (B,) or scalar, t in [0, 1] (0 = noise, 1 = data).
            text_features: (B, L, 2*text_feat_dim) MLLM features, right-padded.
            text_mask: (B, L) bool or 0/1 int, True = valid token; must be right-padded.
            ref_latents: None, or per sample a (possibly empty) list of at most 5 reference latents (C, h_k, w_k).
            context_cache: reuse the refined text across calls on the same conditions (see ``ContextCache``).

        Returns:
            (B, out_channels, H, W) velocity in the dtype of `latents`.
        """
        cfg = self.config
        p, K = cfg.patch_size, cfg.num_prepad_tokens
        dtype, device = self.x_embedder.weight.dtype, latents.device

        # 0. Validate inputs; python-side lengths and shapes for packing
        timestep, text_lens, refs = self._check_inputs(latents, timestep, text_features, text_mask, ref_latents)
        B, _, H, W = latents.shape
        h, w = H // p, W // p
        N = h * w  # noise tokens per sample
        txt_lens = [K + n for n in text_lens]  # valid text tokens incl. prepad
        ref_owner = [i for i, rs in enumerate(refs) for _ in rs]  # sample of each flattened ref image
        ref_index = [j for rs in refs for j in range(len(rs))]  # index of each ref within its sample
        ref_hw = [[(r.shape[1] // p, r.shape[2] // p) for r in rs] for rs in refs]
        ref_lens = [hh * ww for hw in ref_hw for hh, ww in hw]  # tokens of each flattened ref image

        # 1. Prepend the K learned prepad rows (in raw feature space) to every sample's text
        prepad = self.prepad_embed.to(dtype).expand(B, -1, -1)  # (B, K, 2T)
        text = torch.cat([prepad, text_features.to(device, dtype)], dim=1)  # (B, K+L, 2T)
        Lmax = text.shape[1]

        # 2. Time and caption embedding (the caption part and step 5 are skipped when the context is cached)
        cached = None
        if context_cache is not None and not torch.is_grad_enabled():
            source = ContextCache.fingerprint(self, text_features, text_mask, dtype)
            if context_cache.source is not None and context_cache.source != source:
                raise InvalidInputError(
                    "context_cache was filled from other text features, another model or another dtype; "
                    "use one ContextCache per batch of conditions (and per model) for one sampling run"
                )
            cached = context_cache.text
        if cached is not None:
            temb = self.time_caption_embed.embed_time(timestep)  # (B, temb_dim)
        else:
            temb, text = self.time_caption_embed(timestep, text)  # (B, temb_dim), (B, K+L, D)

        # 3. Patchify noise and reference latents
        x = patchify(latents.to(dtype), p)  # (B, N, p*p*C)
        ref_tokens = [patchify(r[None].to(device, dtype), p)[0] for rs in refs for r in rs]  # R x (h_k*w_k, p*p*C)

        # 4. Position ids and RoPE angles per stage
        joint_ids, seq_lens = [], []
        ref_ids = []
        for i in range(B):
            ids, _ = build_position_ids(txt_lens[i], ref_hw[i], (h, w))  # (S_i, 3)
            joint_ids.append(ids)
            seq_lens.append(ids.shape[0])
            start = txt_lens[i]
            for hh, ww in ref_hw[i]:
                ref_ids.append(ids[start : start + hh * ww])  # (h_k*w_k, 3)
                start += hh * ww
        noise_ids = torch.stack([ids[-N:] for ids in joint_ids])  # (B, N, 3)
        text_ids = torch.arange(Lmax)[None, :, None].expand(1, Lmax, 3)  # (1, K+L, 3): (i, i, i)
        rdt = torch.float64 if dtype == torch.float64 else torch.float32
        text_rope = self.rope_embedder(text_ids.to(device), rdt)  # cos, sin: (1, K+L, d/2)
        noise_rope = self.rope_embedder(noise_ids.to(device), rdt)  # (B, N, d/2)
        joint_rope = self.rope_embedder(pad_sequence(joint_ids, batch_first=True).to(device), rdt)  # (B, S_max, d/2)

        # 5. Context refiner on text (prepad + valid tokens; right padding masked)
        text_mask_b = _length_mask(txt_lens, Lmax, device)  # (B, K+L) or None
        if cached is not None:
            text = cached  # (B, K+L, D)
        elif Lmax > 0:
            text = self._run_blocks(self.context_refiner, text, text_rope, text_mask_b, None)  # (B, K+L, D)
        if cached is None and context_cache is not None and not torch.is_grad_enabled():
            context_cache.text, context_cache.source = text, source

        # 6. Patch embeddings; reference image j gets image_index_embedding[j]
        x = self.x_embedder(x)  # (B, N, D)
        if ref_tokens:
            ref = self.ref_image_patch_embedder(pad_sequence(ref_tokens, batch_first=True))  # (R, M_max, D)
            ref = ref + self.image_index_embedding[torch.tensor(ref_index, device=device)][:, None]  # (R, M_max, D)

        # 7. Noise refiner (all samples share H, W: no padding)
        x = self._run_blocks(self.noise_refiner, x, noise_rope, None, temb)  # (B, N, D)

        # 8. Reference refiner, each image on its own (images cannot see each other), with its sample's temb
        if ref_tokens:
            ref_rope = self.rope_embedder(pad_sequence(ref_ids, batch_first=True).to(device), rdt)  # (R, M_max, d/2)
            ref_mask = _length_mask(ref_lens, ref.shape[1], device)  # (R, M_max) or None
            ref_temb = temb[torch.tensor(ref_owner, device=device)]  # (R, temb_dim)
            ref = self._run_blocks(self.ref_image_refiner, ref, ref_rope, ref_mask, ref_temb)  # (R, M_max, D)

        # 9. Joint sequence [text valid | ref_0 | ... | noise], left-packed, padding at the end
        seqs, r = [], 0
        for i in range(B):
            parts = [text[i, : txt_lens[i]]]  # (L_i, D)
            for _ in refs[i]:
                parts.append(ref[r, : ref_lens[r]])  # (h_k*w_k, D)
                r += 1
            parts.append(x[i])  # (N, D)
            seqs.append(torch.cat(parts, dim=0))  # (S_i, D)
        joint = pad_sequence(seqs, batch_first=True)  # (B, S_max, D)
        joint_mask = _length_mask(seq_lens, joint.shape[1], device)  # (B, S_max) or None

        # 10. Joint transformer
        joint = self._run_blocks(self.layers, joint, joint_rope, joint_mask, temb)  # (B, S_max, D)

        # 11. Output head on the last N valid tokens of each sample, then unpatchify
        img = torch.stack([joint[i, s - N : s] for i, s in enumerate(seq_lens)])  # (B, N, D)
        out = self.norm_out(img, temb)  # (B, N, p*p*C_out)
        return unpatchify(out, p, h, w).to(latents.dtype)  # (B, C_out, H, W)

    def compile_blocks(self, **compile_kwargs) -> "ThinkGenTransformer2DModel":
        """``torch.compile`` every transformer block in place (inductor by default); returns ``self``.

        Only the blocks are compiled: the packing around them (variable text lengths, reference images) is Python
        that would break a whole-model graph. ``nn.Module.compile`` keeps parameter names, so state dicts,
        checkpoints and LoRA adapters are unaffected (the trainers inject LoRA and wrap for DDP / FSDP2 first, then
        compile; the slow variants of tests/test_sepgrpo_dist.py run that with 2 CPU processes). Shapes are dynamic (batch and sequence
        length vary between calls); the first calls of each kind (grad on / off, with / without a key mask,
        modulated / refiner block) compile, about half a minute each on a small CPU. Numerics match eager to float
        rounding. Later calls are no-ops; ``compile_kwargs`` go to ``torch.compile``.
        """
        if getattr(self, "_blocks_compiled", False):
            return self
        import torch._dynamo.config as dynamo_config

        # one code object (ThinkGenTransformerBlock.forward) serves every block kind, grad mode and mask kind
        dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, 64)
        dynamo_config.accumulated_recompile_limit = max(dynamo_config.accumulated_recompile_limit, 1024)
        compile_kwargs.setdefault("dynamic", True)
        for blocks in (self.context_refiner, self.noise_refiner, self.ref_image_refiner, self.layers):
            for blk in blocks:
                blk.compile(**compile_kwargs)
        self._blocks_compiled = True
        return self

    def _run_blocks(self, blocks, x, rope, key_mask, temb):
        cos, sin = rope
        for blk in blocks:
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                x = self._checkpoint(blk, x, cos, sin, key_mask, temb)
            else:
                x = blk(x, cos, sin, key_mask, temb)
        return x

    def _checkpoint(self, blk, *args):
        fn = getattr(self, "_gradient_checkpointing_func", None)
        if fn is not None:  # set by diffusers' enable_gradient_checkpointing()
            return fn(blk, *args)
        return torch.utils.checkpoint.checkpoint(blk, *args, use_reentrant=False)

    # ------------------------------------------------------------------------------------------------------
    # input validation

    def _check_inputs(self, latents, timestep, text_features, text_mask, ref_latents):
        """Raise InvalidInputError on malformed inputs; return (timestep (B,), text_lens, refs as lists)."""
        cfg = self.config
        p, C, K = cfg.patch_size, cfg.in_channels, cfg.num_prepad_tokens
        if not isinstance(latents, torch.Tensor) or latents.ndim != 4:
            raise InvalidInputError(f"latents must be a (B, C, H, W) tensor, got {_shape(latents)}")
        B, c, H, W = latents.shape
        if B == 0:
            raise InvalidInputError("latents has batch size 0")
        if c != C:
            raise InvalidInputError(f"latents have {c} channels, the model expects in_channels={C}")
        if H == 0 or W == 0 or H % p or W % p:
            raise InvalidInputError(f"latent H={H}, W={W} must be positive multiples of patch_size={p}")
        if H // p > cfg.axes_lens[1] or W // p > cfg.axes_lens[2]:
            raise InvalidInputError(
                f"latent grid {H // p}x{W // p} patches exceeds the RoPE range axes_lens[1:]={tuple(cfg.axes_lens[1:])}"
            )

        timestep = torch.as_tensor(timestep, device=latents.device, dtype=torch.float32)
        if timestep.ndim == 0 or timestep.shape == (1,):
            timestep = timestep.reshape(1).expand(B)  # (B,)
        if timestep.shape != (B,):
            raise InvalidInputError(f"timestep must be a scalar or shape ({B},), got {tuple(timestep.shape)}")

        feat = 2 * cfg.text_feat_dim
        if not isinstance(text_features, torch.Tensor) or text_features.ndim != 3:
            raise InvalidInputError(f"text_features must be a (B, L, {feat}) tensor, got {_shape(text_features)}")
        if text_features.shape[0] != B:
            raise InvalidInputError(f"text_features batch {text_features.shape[0]} != latents batch {B}")
        if text_features.shape[2] != feat:
            raise InvalidInputError(
                f"text_features width {text_features.shape[2]} != 2*text_feat_dim = {feat} "
                "(expected cat(hidden[-2], hidden[-1]) of the MLLM)"
            )
        L = text_features.shape[1]
        if not isinstance(text_mask, torch.Tensor) or tuple(text_mask.shape) != (B, L):
            raise InvalidInputError(f"text_mask must have shape ({B}, {L}), got {_shape(text_mask)}")
        if text_mask.is_floating_point() or text_mask.is_complex():
            raise InvalidInputError(f"text_mask must be bool or integer 0/1, got dtype {text_mask.dtype}")
        m = text_mask.detach().to("cpu")
        if m.dtype != torch.bool:
            if not ((m == 0) | (m == 1)).all():
                raise InvalidInputError("text_mask values must be 0 or 1")
            m = m.bool()
        if L > 1:
            bad = (m[:, 1:] & ~m[:, :-1]).any(dim=1)  # a valid token after a padded one
            if bad.any():
                raise InvalidInputError(
                    "text_mask must be right-padded (valid tokens first); "
                    f"samples {bad.nonzero().flatten().tolist()} are not"
                )
        text_lens = m.sum(dim=1).tolist()

        if ref_latents is None:
            refs = [[] for _ in range(B)]
        else:
            if isinstance(ref_latents, torch.Tensor) or len(ref_latents) != B:
                raise InvalidInputError(
                    f"ref_latents must be a list of {B} per-sample lists of (C, h, w) tensors, "
                    f"got {_shape(ref_latents)}"
                )
            refs = []
            for i, rs in enumerate(ref_latents):
                if rs is None:
                    rs = []
                elif isinstance(rs, torch.Tensor):
                    if rs.ndim != 4:
                        raise InvalidInputError(f"ref_latents[{i}] must be a list of (C, h, w) tensors")
                    rs = list(rs)
                rs = list(rs)
                if len(rs) > MAX_REF_IMAGES:
                    raise InvalidInputError(
                        f"sample {i} has {len(rs)} reference images; at most {MAX_REF_IMAGES} are supported"
                    )
                for j, r in enumerate(rs):
                    if not isinstance(r, torch.Tensor) or r.ndim != 3:
                        raise InvalidInputError(f"ref_latents[{i}][{j}] must be a (C, h, w) tensor, got {_shape(r)}")
                    rc, rh, rw = r.shape
                    if rc != C:
                        raise InvalidInputError(f"ref_latents[{i}][{j}] has {rc} channels, expected {C}")
                    if rh == 0 or rw == 0 or rh % p or rw % p:
                        raise InvalidInputError(
                            f"ref_latents[{i}][{j}] size {rh}x{rw} must be positive multiples of patch_size={p}"
                        )
                    if rh // p > cfg.axes_lens[1] or rw // p > cfg.axes_lens[2]:
                        raise InvalidInputError(
                            f"ref_latents[{i}][{j}] grid {rh // p}x{rw // p} exceeds "
                            f"axes_lens[1:]={tuple(cfg.axes_lens[1:])}"
                        )
                refs.append(rs)

        # The noise image sits at axis-0 position text_len + sum(max(h_k, w_k)); it must stay inside axes_lens[0].
        for i in range(B):
            offset = sum(max(r.shape[1] // p, r.shape[2] // p) for r in refs[i])
            last = K + text_lens[i] + offset
            if last >= cfg.axes_lens[0]:
                raise InvalidInputError(
                    f"sample {i}: text length {text_lens[i]} + {K} prepad tokens + reference offsets {offset} "
                    f"= RoPE position {last}, but axes_lens[0] = {cfg.axes_lens[0]}; "
                    "shorten the instruction or use fewer/smaller reference images"
                )
        return timestep, text_lens, refs

    # ------------------------------------------------------------------------------------------------------
    # strict loading

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        *,
        subfolder: str | None = None,
        torch_dtype: torch.dtype | None = None,
        dtype: torch.dtype | None = None,
        device: str | torch.device | None = None,
        variant: str | None = None,
        allow_pickle: bool = False,
        cache_dir: str | os.PathLike | None = None,
        revision: str | None = None,
        token: str | bool | None = None,
        local_files_only: bool | None = None,
        **kwargs,
    ) -> "ThinkGenTransformer2DModel":
        """Load strictly: any missing key, unexpected key or shape mismatch raises CheckpointError.

        `pretrained_model_name_or_path` is a folder with config.json and diffusion_pytorch_model*.safetensors
        (single file or sharded with an .index.json), or a Hub repo id (downloaded with huggingface_hub).
        Weights are cast to `torch_dtype`/`dtype` (default float32); integer buffers keep their dtype.
        Pickle (.bin) weights are refused unless allow_pickle=True (then read with torch.load(weights_only=True)).
        """
        if kwargs.pop("ignore_mismatched_sizes", False):
            raise CheckpointError("ignore_mismatched_sizes=True is not supported: ThinkGen loading is strict")
        device_map = kwargs.pop("device_map", None)
        if device_map is not None:
            if device is not None or not isinstance(device_map, (str, torch.device)):
                raise CheckpointError(f"device_map={device_map!r} is not supported; pass device='cuda' or similar")
            device = device_map
        for benign in ("low_cpu_mem_usage", "use_safetensors", "force_download", "proxies", "disable_mmap"):
            kwargs.pop(benign, None)
        if kwargs:
            raise TypeError(f"{cls.__name__}.from_pretrained got unsupported arguments: {sorted(kwargs)}")
        if torch_dtype is not None and dtype is not None and torch_dtype != dtype:
            raise CheckpointError(f"torch_dtype={torch_dtype} and dtype={dtype} disagree")
        target_dtype = torch_dtype or dtype or torch.float32

        folder = _resolve_folder(pretrained_model_name_or_path, subfolder, cache_dir, revision, token, local_files_only)
        config_file = folder / CONFIG_NAME
        if not config_file.is_file():
            raise CheckpointError(f"{folder}: no {CONFIG_NAME}")
        try:
            config = json.loads(config_file.read_text())
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{config_file}: unreadable config ({e})") from e
        if config.get("_class_name", cls.__name__) != cls.__name__:
            logger.warning("%s: _class_name is %r, loading as %s", config_file, config["_class_name"], cls.__name__)

        state = _read_state_dict(folder, variant, allow_pickle)
        try:
            with torch.device("meta"):
                model = cls.from_config(config)
        except (ConfigError, TypeError, ValueError) as e:
            raise CheckpointError(f"{config_file}: invalid config ({e})") from e

        check_state_dict(model, state, str(folder))
        expected = model.state_dict()  # meta tensors: names, shapes, dtypes
        state = {
            k: (t.to(target_dtype) if expected[k].is_floating_point() else t.to(expected[k].dtype))
            for k, t in state.items()
        }
        model.load_state_dict(state, strict=True, assign=True)
        left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
        if left:
            raise CheckpointError(f"{folder}: tensors left uninitialised after loading: {left[:20]}")
        if device is not None:
            model.to(device)
        model.register_to_config(_name_or_path=str(pretrained_model_name_or_path))
        return model.eval()


# ----------------------------------------------------------------------------------------------------------
# helpers


def _check_geometry(D, heads, kv_heads, axes_dim, axes_lens, p, K) -> None:
    if D % heads:
        raise ConfigError(f"hidden_size={D} is not divisible by num_attention_heads={heads}")
    if heads % kv_heads:
        raise ConfigError(f"num_attention_heads={heads} is not divisible by num_kv_heads={kv_heads}")
    if len(axes_dim) != 3 or len(axes_lens) != 3:
        raise ConfigError(f"axes_dim_rope={axes_dim} and axes_lens={axes_lens} must have 3 entries")
    if sum(axes_dim) != D // heads or any(d % 2 for d in axes_dim):
        raise ConfigError(f"axes_dim_rope={tuple(axes_dim)} must be even and sum to head_dim={D // heads}")
    if p < 1 or K < 0:
        raise ConfigError(f"patch_size={p} must be >= 1 and num_prepad_tokens={K} >= 0")


def _length_mask(lengths: list[int], total: int, device) -> torch.Tensor | None:
    """(n, total) bool mask with the first lengths[i] entries True; None when every row is full."""
    if all(n == total for n in lengths):
        return None
    lens = torch.tensor(lengths, device=device)
    return torch.arange(total, device=device)[None, :] < lens[:, None]  # (n, total)


def _shape(x) -> str:
    if isinstance(x, torch.Tensor):
        return f"tensor of shape {tuple(x.shape)}"
    if isinstance(x, (list, tuple)):
        return f"{type(x).__name__} of length {len(x)}"
    return type(x).__name__


def _resolve_folder(name, subfolder, cache_dir, revision, token, local_files_only) -> Path:
    path = Path(name)
    if not path.is_dir():
        looks_local = os.path.isabs(str(name)) or str(name).startswith(".") or path.exists() or str(name).count("/") > 1
        if looks_local:
            raise CheckpointError(f"{name}: not a directory")
        try:
            from huggingface_hub import snapshot_download

            pattern = [f"{subfolder}/*"] if subfolder else None
            path = Path(
                snapshot_download(
                    str(name),
                    revision=revision,
                    cache_dir=cache_dir,
                    token=token,
                    local_files_only=bool(local_files_only),
                    allow_patterns=pattern,
                )
            )
        except Exception as e:  # network, auth, missing repo: all surface as one checkpoint error
            raise CheckpointError(f"{name}: cannot download from the Hub ({type(e).__name__}: {e})") from e
    folder = path / subfolder if subfolder else path
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: not a directory")
    return folder


def _read_state_dict(folder: Path, variant: str | None, allow_pickle: bool) -> dict[str, torch.Tensor]:
    """Read diffusion_pytorch_model[.variant].safetensors (or its sharded index); .bin only with allow_pickle."""
    stem = WEIGHTS_STEM + (f".{variant}" if variant else "")
    for ext in ("safetensors", "bin"):
        single, index = folder / f"{stem}.{ext}", folder / f"{stem}.{ext}.index.json"
        if single.is_file():
            files = [single]
        elif index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (OSError, ValueError, KeyError) as e:
                raise CheckpointError(f"{index}: unreadable shard index ({e})") from e
            files = [folder / f for f in sorted(set(weight_map.values()))]
            absent = [f.name for f in files if not f.is_file()]
            if absent:
                raise CheckpointError(f"{index}: shard files missing: {absent}")
        else:
            continue
        if ext == "bin" and not allow_pickle:
            raise CheckpointError(
                f"{folder}: only pickle weights ({files[0].name}) found; pickle can run code, so it is refused. "
                "Convert to safetensors or pass allow_pickle=True if you trust the source"
            )
        state: dict[str, torch.Tensor] = {}
        for f in files:
            try:
                if ext == "safetensors":
                    from safetensors.torch import load_file

                    part = load_file(str(f), device="cpu")
                else:
                    part = torch.load(f, map_location="cpu", weights_only=True)
            except Exception as e:  # torn or corrupt file
                raise CheckpointError(f"{f}: cannot read weights ({type(e).__name__}: {e})") from e
            dup = sorted(set(part) & set(state))
            if dup:
                raise CheckpointError(f"{f}: keys repeated across shards: {dup[:20]}")
            state.update(part)
        return state
    raise CheckpointError(f"{folder}: no {stem}.safetensors (or sharded .index.json) found")
