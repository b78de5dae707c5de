"""The ``scheduler/`` component of a ThinkGen checkpoint.

A thin diffusers ``ConfigMixin`` holder so that ``scheduler/scheduler_config.json`` round-trips
(``{"num_train_timesteps": 1000, "dynamic_time_shift": true}`` in the release). The maths lives in
:mod:`thinkgen.flow`; this class only turns its config into a timestep grid.
"""
from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config

from . import flow


class ThinkGenScheduler(ConfigMixin):
    """Flow-matching Euler schedule, t ascending from 0 (noise) to 1 (data)."""

    config_name = "scheduler_config.json"

    @register_to_config
    def __init__(self, num_train_timesteps: int = 1000, dynamic_time_shift: bool = True, time_shift: float = 1.0):
        if num_train_timesteps <= 0:
            raise ValueError(f"num_train_timesteps must be positive, got {num_train_timesteps}")

    def timesteps(self, num_steps: int, num_latent_pixels: int, device=None) -> torch.Tensor:
        """Return ``num_steps + 1`` ascending t values, the last one 1.0.

        With ``dynamic_time_shift`` the shift depends on the latent size (m = sqrt(H_lat * W_lat) / 40);
        otherwise the fixed ``time_shift`` (1.0 = no shift) is used.
        """
        if num_steps <= 0:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        if self.config.dynamic_time_shift:
            return flow.inference_timesteps(num_steps, num_latent_pixels, device=device)
        u = torch.arange(num_steps, dtype=torch.float32, device=device) / num_steps
        t = flow.shift_t(u, float(self.config.time_shift))
        return torch.cat([t, torch.ones(1, dtype=torch.float32, device=device)])

    @classmethod
    def from_pretrained(cls, path, subfolder: str | None = None, **kwargs):
        config = cls.load_config(path, subfolder=subfolder, **kwargs)
        # The released file may name the reference class; only the fields matter here.
        return cls.from_config(config)
