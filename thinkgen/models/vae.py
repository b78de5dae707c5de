"""VAE helpers: the one place where latent scale and shift are applied.

The released checkpoint uses the FLUX.1 VAE (diffusers ``AutoencoderKL``, 16 latent channels, x8),
normalised as ``z = (mean - shift_factor) * scaling_factor``.
"""
from __future__ import annotations

import torch
from torch import Tensor

FLUX_SCALING_FACTOR = 0.3611
FLUX_SHIFT_FACTOR = 0.1159


def _scale_shift(vae) -> tuple[float, float]:
    scale = getattr(vae.config, "scaling_factor", None) or 1.0
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return float(scale), float(shift)


def vae_scale_factor(vae) -> int:
    """Spatial downsampling of the VAE (8 for FLUX)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


@torch.no_grad()
def encode_latents(vae, images: Tensor, sample: bool = False, generator: torch.Generator | None = None) -> Tensor:
    """images (B, 3, H, W) in [-1, 1] -> normalised latents (B, C, H/f, W/f).

    ``sample=False`` takes the posterior mode (deterministic); the reference implementation
    samples (``latent_dist.sample()``), which only adds the small posterior noise.
    """
    dist = vae.encode(images.to(vae.dtype)).latent_dist
    z = dist.sample(generator=generator) if sample else dist.mode()
    scale, shift = _scale_shift(vae)
    return (z - shift) * scale


@torch.no_grad()
def decode_latents(vae, z: Tensor) -> Tensor:
    """normalised latents (B, C, h, w) -> images (B, 3, h*f, w*f) in [-1, 1] (not clamped)."""
    scale, shift = _scale_shift(vae)
    return vae.decode(z.to(vae.dtype) / scale + shift, return_dict=False)[0]


def latents_to_pil(vae, z: Tensor):
    """Decode and convert to a list of PIL images."""
    from PIL import Image

    x = decode_latents(vae, z).float().clamp(-1, 1)
    x = ((x + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in x]


def pil_to_tensor(images, device=None, dtype=torch.float32) -> Tensor:
    """List of same-size RGB PIL images -> (B, 3, H, W) in [-1, 1]."""
    import numpy as np

    arr = np.stack([np.asarray(im.convert("RGB"), dtype=np.float32) for im in images])
    x = torch.from_numpy(arr).permute(0, 3, 1, 2) / 127.5 - 1.0
    return x.to(device=device, dtype=dtype)
