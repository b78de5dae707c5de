"""Toy rewards for sanity runs of the RL trainers (a benchmark helper, not part of the library).

    # from the repository root, so that `bench.toy_rewards` imports:
    thinkgen train sepgrpo --config ... "--reward_modules=[bench.toy_rewards]" "--dit.reward_weights={image_darkness: 1.0}"

``image_darkness`` (1 - mean pixel value, in [0, 1]) is a dense reward that every image earns differently, so a
trainer that learns anything must raise it within tens of steps: a check of the machinery (sign, log-probs,
optimizer), separate from how informative a real reward is. (Nano images are mostly white background: brightness
starts near its ceiling, darkness near its floor.) ``image_brightness`` is its complement.
"""
from __future__ import annotations

import numpy as np
import torch

from thinkgen.rl.rewards import REWARDS, register_reward


class ImageBrightness:
    """Mean pixel value of the RGB image in [0, 1]."""

    def __call__(self, images, prompts, meta):
        return torch.tensor([float(np.asarray(im.convert("RGB"), dtype=np.float32).mean() / 255.0) for im in images])


class ImageDarkness:
    """1 - mean pixel value of the RGB image, in [0, 1]."""

    def __call__(self, images, prompts, meta):
        return 1.0 - ImageBrightness()(images, prompts, meta)


for _name, _cls in (("image_brightness", ImageBrightness), ("image_darkness", ImageDarkness)):
    if _name not in REWARDS:
        register_reward(_name)(_cls)
