"""Tiny random ThinkGen checkpoints in the released layout, for tests and benchmarks.

``build_tiny_pipeline()`` makes a complete pipeline (tiny Qwen3-VL, tiny DiT, tiny AutoencoderKL) in
milliseconds; ``save_tiny_checkpoint(path)`` writes it as ``model_index.json mllm/ processor/
transformer/ vae/ scheduler/`` so loading code is exercised exactly as with the released weights.
"""
from __future__ import annotations

from pathlib import Path

import torch

TINY_WORDS = (
    "a an the red green blue yellow purple cyan circle circles square squares triangle star sign "
    "two three four left right of above below make it remove add image draw photo cat dog with on and"
).split()


def tiny_dit_config(text_feat_dim: int, latent_channels: int = 4, **overrides) -> dict:
    cfg = dict(
        patch_size=2, in_channels=latent_channels, hidden_size=48, num_layers=2, num_refiner_layers=1,
        num_attention_heads=4, num_kv_heads=2, multiple_of=16, norm_eps=1e-5, axes_dim_rope=(4, 4, 4),
        axes_lens=(256, 64, 64), text_feat_dim=text_feat_dim, timestep_scale=1000.0, num_prepad_tokens=3,
    )
    cfg.update(overrides)
    return cfg


def tiny_vae(latent_channels: int = 4, seed: int = 0):
    from diffusers import AutoencoderKL

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=latent_channels,
            down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
            block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
            use_quant_conv=False, use_post_quant_conv=False, scaling_factor=0.3611, shift_factor=0.1159,
        )
    return vae.eval().requires_grad_(False)


def build_tiny_pipeline(seed: int = 0, *, mllm_hidden: int = 32, words=TINY_WORDS, dit_overrides: dict | None = None):
    """A random tiny ThinkGenPipeline on the CPU (fp32)."""
    from .mllm import ThinkGenMLLM, build_tiny_mllm
    from .models.dit import ThinkGenTransformer2DModel
    from .pipeline import ThinkGenPipeline
    from .processor import ThinkGenProcessor
    from .scheduler import ThinkGenScheduler
    from .tokenization import build_tokenizer

    tok = build_tokenizer(words)
    processor = ThinkGenProcessor(tok, min_pixels=32 * 32, max_pixels=64 * 64)
    model = build_tiny_mllm(tok, hidden_size=mllm_hidden, num_layers=2, seed=seed)
    mllm = ThinkGenMLLM(model, processor)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        dit = ThinkGenTransformer2DModel(**tiny_dit_config(mllm_hidden, **(dit_overrides or {})))
        # random (not zero) output layers, so tests see a non-trivial velocity field
        for name, p in dit.named_parameters():
            if p.abs().sum() == 0 and p.ndim > 0:
                torch.nn.init.normal_(p, std=0.02)
    dit = dit.eval().requires_grad_(False)
    return ThinkGenPipeline(mllm, dit, tiny_vae(seed=seed), ThinkGenScheduler(), name="tiny-random")


def save_tiny_checkpoint(path, seed: int = 0, **kwargs) -> Path:
    pipe = build_tiny_pipeline(seed, **kwargs)
    pipe.save_pretrained(path)
    return Path(path)
