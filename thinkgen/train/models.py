"""Model loading / saving for training, in the released layout.

A model folder holds ``transformer/`` (ThinkGenTransformer2DModel), ``mllm/`` (Qwen3-VL),
``processor/`` (ThinkGenProcessor) and ``vae/`` (diffusers AutoencoderKL), plus ``scheduler/`` and
``model_index.json``. Everything loads strictly through the project's own classes.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ..errors import CheckpointError

COMPONENTS = ("transformer", "mllm", "processor", "vae")
DIT_WEIGHTS = "diffusion_pytorch_model.safetensors"
LORA_FILE = "adapter.safetensors"


def check_model_dir(root: str | os.PathLike, needed=COMPONENTS) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise CheckpointError(f"model folder {str(root)!r} does not exist")
    missing = [c for c in needed if not (root / c).is_dir()]
    if missing:
        raise CheckpointError(f"model folder {root} lacks {', '.join(c + '/' for c in missing)} "
                              f"(released layout: {', '.join(c + '/' for c in COMPONENTS)})")
    return root


def load_transformer(folder: str | os.PathLike):
    """Strict fp32 load of ``transformer/`` (ThinkGenTransformer2DModel.from_pretrained)."""
    from ..models.dit import ThinkGenTransformer2DModel

    return ThinkGenTransformer2DModel.from_pretrained(str(folder), torch_dtype=torch.float32)


def load_mllm(root: str | os.PathLike, dtype=torch.float32, device="cpu", mllm_dir=None):
    """``ThinkGenMLLM`` from ``root/mllm`` (or ``mllm_dir``) + ``root/processor``."""
    from ..mllm import ThinkGenMLLM

    root = Path(root)
    return ThinkGenMLLM.from_pretrained(mllm_dir or root / "mllm", root / "processor", dtype=dtype, device=device)


def load_vae(root: str | os.PathLike, dtype=torch.float32, device="cpu"):
    """Frozen diffusers ``AutoencoderKL`` from ``root/vae`` (strict)."""
    from ..loading import load_vae_strict

    return load_vae_strict(Path(root) / "vae", dtype=dtype).to(device)


def save_transformer_folder(folder: str | os.PathLike, model, state: dict[str, torch.Tensor]) -> None:
    """Write ``config.json`` + ``diffusion_pytorch_model.safetensors`` (what ``save_pretrained`` writes
    for one shard) from a full state dict, so DDP / FSDP2 / LoRA-merged weights all save the same way."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_config(str(folder))
    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(folder / DIT_WEIGHTS),
              metadata={"format": "pt"})


# --------------------------------------------------------------------------- LoRA
def add_lora(model, cfg) -> None:
    """Inject peft LoRA adapters into ``model`` (diffusers PeftAdapterMixin or any nn.Module)."""
    from peft import LoraConfig

    lcfg = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=list(cfg.lora_target_modules), init_lora_weights=True)
    if hasattr(model, "add_adapter") and hasattr(model, "set_adapters"):   # diffusers ModelMixin
        model.add_adapter(lcfg)
    else:
        from peft import inject_adapter_in_model

        inject_adapter_in_model(lcfg, model)
    for name, p in model.named_parameters():
        p.requires_grad_("lora_" in name)


def lora_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if "lora_" in k}


def merge_lora_state(state: dict[str, torch.Tensor], scaling: float) -> dict[str, torch.Tensor]:
    """Fold LoRA linears into plain weights: W = W0 + scaling * B @ A; keys lose ``.base_layer``.

    ``scaling`` = lora_alpha / r. Works on a full state dict (so also on gathered FSDP2 weights).
    """
    out: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        if "lora_" in k:
            continue
        if ".base_layer." in k:
            prefix, leaf = k.split(".base_layer.")
            if leaf == "weight":
                a = state[f"{prefix}.lora_A.default.weight"].float()
                b = state[f"{prefix}.lora_B.default.weight"].float()
                v = (v.float() + scaling * (b @ a)).to(v.dtype)
            out[f"{prefix}.{leaf}"] = v
        else:
            out[k] = v
    return out


def load_lora_file(model, path: Path) -> None:
    """Load adapter tensors into a model that already has the adapters (strict on the LoRA keys)."""
    from safetensors.torch import load_file

    if not path.is_file():
        raise CheckpointError(f"LoRA adapter file {path} is missing")
    state = load_file(str(path))
    expected = lora_state(model.state_dict())
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{path} does not match the LoRA config: missing {missing[:10]}, unexpected {unexpected[:10]}")
    model.load_state_dict(state, strict=False)


def write_model_index(root: Path, mllm_class: str = "Qwen3VLForConditionalGeneration") -> None:
    import diffusers

    index = {
        "_class_name": "ThinkGenPipeline",
        "_diffusers_version": diffusers.__version__,
        "mllm": ["transformers", mllm_class],
        "processor": ["thinkgen", "ThinkGenProcessor"],
        "transformer": ["thinkgen", "ThinkGenTransformer2DModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "scheduler": ["thinkgen", "ThinkGenScheduler"],
    }
    (root / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
