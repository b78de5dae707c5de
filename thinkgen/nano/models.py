"""ThinkGen-Nano model builders: tokenizer, MLLM (tiny Qwen3-VL), VAE (AutoencoderKL, x4) and DiT, per preset.

Presets (``PRESETS``): ``smoke`` (seconds, tests), ``quick`` (what the shipped checkpoint uses on 2 CPU cores) and
``full`` (bigger, for a GPU or dedicated cores; not measured). Sizes only; step counts live in ``thinkgen.nano.train``.

Text convention: every nano text is ``world.normalise_text``-ed (sign text glued in capitals, e.g. ``"CAT"``). The
tokenizer makes each vocabulary word one token and never merges capital letters, so sign text always tokenises
letter by letter (``"CAT"`` -> ``C A T``) whether it was seen in training or not. Token ids always come from the
tokenizer (``tokenization.check_special_tokens``).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from thinkgen.errors import ConfigError

IMAGE_SIDE = 64


@dataclass(frozen=True)
class NanoSizes:
    # MLLM
    mllm_hidden: int = 128
    mllm_layers: int = 4
    mllm_heads: int = 4
    mllm_kv_heads: int = 2
    vision_hidden: int = 64
    vision_heads: int = 2
    vision_depth: int = 2
    vision_side: int = 64            # the MLLM sees scenes at this side (16px patches, merge 2: 64 px -> 4 tokens)
    # VAE
    vae_channels: tuple[int, ...] = (16, 32, 32)
    vae_latent: int = 4
    vae_groups: int = 8
    # DiT
    dit_hidden: int = 192
    dit_layers: int = 4
    dit_refiner: int = 1
    dit_heads: int = 6
    dit_kv_heads: int = 3
    dit_axes: tuple[int, int, int] = (8, 12, 12)
    dit_prepad: int = 23
    extra: dict = field(default_factory=dict)


PRESETS: dict[str, NanoSizes] = {
    "smoke": NanoSizes(mllm_hidden=32, mllm_layers=2, mllm_heads=4, mllm_kv_heads=2, vision_hidden=16, vision_heads=2,
                       vision_depth=1, vision_side=64, vae_channels=(8, 16, 16), vae_groups=4, dit_hidden=48,
                       dit_layers=2, dit_refiner=1, dit_heads=4, dit_kv_heads=2, dit_axes=(4, 4, 4), dit_prepad=3),
    "quick": NanoSizes(),
    "full": NanoSizes(dit_hidden=192, dit_layers=6, dit_heads=6, dit_kv_heads=3, dit_axes=(8, 12, 12)),
}


def sizes(preset: str) -> NanoSizes:
    if preset not in PRESETS:
        raise ConfigError(f"unknown nano preset {preset!r}; expected one of {', '.join(PRESETS)}")
    return PRESETS[preset]


def tokenizer_texts() -> list[str]:
    """Extra texts whose pieces become whole tokens: the fixed prompts every sample carries (system prompt, the
    default negative prompt). Capital-letter runs are removed so that no two capitals are ever merged."""
    import re

    from thinkgen.mllm import DEFAULT_NEGATIVE_PROMPT, SYSTEM_PROMPT

    out = []
    for t in (SYSTEM_PROMPT, DEFAULT_NEGATIVE_PROMPT):
        out.append(re.sub(r"[A-Z]{2,}", " ", t))
    out += ['"', ' "', '".', '",', " .", " ?", " ,", ":"]
    return out


def build_nano_tokenizer():
    from thinkgen.nano.prompts import vocabulary
    from thinkgen.tokenization import build_tokenizer

    return build_tokenizer(vocabulary(), texts=tokenizer_texts())


def build_processor(tokenizer, s: NanoSizes):
    from thinkgen.processor import ThinkGenProcessor

    px = s.vision_side * s.vision_side
    return ThinkGenProcessor(tokenizer, min_pixels=px, max_pixels=px)


def build_mllm(tokenizer, s: NanoSizes, seed: int = 0):
    from thinkgen.mllm import ThinkGenMLLM, build_tiny_mllm

    model = build_tiny_mllm(tokenizer, hidden_size=s.mllm_hidden, num_layers=s.mllm_layers, num_heads=s.mllm_heads,
                            num_kv_heads=s.mllm_kv_heads, vision_depth=s.vision_depth,
                            vision_hidden_size=s.vision_hidden, vision_heads=s.vision_heads, seed=seed)
    return ThinkGenMLLM(model, build_processor(tokenizer, s))


def build_vae(s: NanoSizes, seed: int = 0, scaling_factor: float = 1.0, shift_factor: float = 0.0):
    from diffusers import AutoencoderKL

    n = len(s.vae_channels)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=s.vae_latent,
            down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
            block_out_channels=tuple(s.vae_channels), layers_per_block=1, norm_num_groups=s.vae_groups,
            use_quant_conv=False, use_post_quant_conv=False, scaling_factor=scaling_factor,
            shift_factor=shift_factor, sample_size=IMAGE_SIDE,
        )
    return vae


def dit_config(s: NanoSizes) -> dict:
    return dict(patch_size=2, in_channels=s.vae_latent, hidden_size=s.dit_hidden, num_layers=s.dit_layers,
                num_refiner_layers=s.dit_refiner, num_attention_heads=s.dit_heads, num_kv_heads=s.dit_kv_heads,
                multiple_of=16, norm_eps=1e-5, axes_dim_rope=tuple(s.dit_axes), axes_lens=(1024, 64, 64),
                text_feat_dim=s.mllm_hidden, timestep_scale=1000.0, num_prepad_tokens=s.dit_prepad)


def build_dit(s: NanoSizes, seed: int = 0):
    from thinkgen.models.dit import ThinkGenTransformer2DModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ThinkGenTransformer2DModel(**dit_config(s))


def nano_defaults(steps: int = 20) -> dict:
    """``thinkgen_defaults`` stored in model_index.json (read by the CLI)."""
    return {"height": IMAGE_SIDE, "width": IMAGE_SIDE, "num_inference_steps": steps, "max_think_tokens": 160,
            "max_answer_tokens": 48, "think_do_sample": False}


__all__ = ["NanoSizes", "PRESETS", "sizes", "build_nano_tokenizer", "build_processor", "build_mllm", "build_vae",
           "build_dit", "dit_config", "nano_defaults", "IMAGE_SIDE"]
