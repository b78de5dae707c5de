"""Supervised training (paper stages 1-3 and MLLM SFT).

    from thinkgen.train import stage1, train_dit
    final = train_dit(stage1(model_dir="ckpt", data=["train.jsonl"], output_dir="runs/s1"))

Modules: config (dataclasses, presets, YAML / CLI), data (JSONL, mixtures, buckets, CFG dropout),
dit_trainer (flow matching), mllm_sft (think-trace SFT), loop (optimiser, checkpoints, resume, logging),
parallel (torchrun / DDP / FSDP2), cache (feature / latent caches), models (released-layout I/O), cli.
"""
from __future__ import annotations

__all__ = ["DiTTrainConfig", "MLLMSFTConfig", "DataSource", "stage1", "stage2", "stage3", "mllm_sft",
           "load_config", "train_dit", "train_mllm", "main_train"]


def __getattr__(name):  # lazy: importing thinkgen.train does not import torch-heavy trainers
    if name in ("DiTTrainConfig", "MLLMSFTConfig", "DataSource", "stage1", "stage2", "stage3", "mllm_sft",
                "load_config"):
        from . import config
        return getattr(config, name)
    if name == "train_dit":
        from .dit_trainer import train_dit
        return train_dit
    if name == "train_mllm":
        from .mllm_sft import train_mllm
        return train_mllm
    if name == "main_train":
        from .cli import main_train
        return main_train
    raise AttributeError(f"module 'thinkgen.train' has no attribute {name!r}")
