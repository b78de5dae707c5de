"""LoRA adapters at inference: fold an adapter that the trainers wrote into the pipeline's DiT or MLLM weights.

An adapter folder holds ``adapter.safetensors`` (or PEFT's ``adapter_model.safetensors``) and ``adapter_config.json``
(``r``, ``lora_alpha``; PEFT's format, which the trainers write into ``final/transformer_lora`` and
``final/mllm_lora``). Loading merges ``W <- W + scale * (lora_alpha / r) * B @ A`` into every adapted linear layer, so
sampling runs at the base model's speed; reload the pipeline to remove an adapter. Keys may carry PEFT's
``base_model.model.`` prefix and an adapter name (``lora_A.default.weight``); an adapter whose modules do not exist in
the component, or whose shapes do not match, is refused naming the keys.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from .errors import CheckpointError, InvalidInputError

WEIGHT_FILES = ("adapter.safetensors", "adapter_model.safetensors")
_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.[A-Za-z0-9_-]+)?\.weight$")


def read_adapter(path: str | Path) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], dict]:
    """{module name: (A (r, in), B (out, r))} and the adapter config of a folder."""
    from safetensors.torch import load_file

    folder = Path(path)
    if not folder.is_dir():
        raise InvalidInputError(f"LoRA adapter {folder} is not a folder (it needs adapter_config.json + "
                                f"{' or '.join(WEIGHT_FILES)})")
    weights = next((folder / f for f in WEIGHT_FILES if (folder / f).is_file()), None)
    if weights is None or not (folder / "adapter_config.json").is_file():
        raise CheckpointError(f"LoRA adapter {folder} lacks adapter_config.json or {' / '.join(WEIGHT_FILES)}")
    cfg = json.loads((folder / "adapter_config.json").read_text())
    if not isinstance(cfg.get("r"), int) or cfg["r"] < 1 or not isinstance(cfg.get("lora_alpha"), (int, float)):
        raise CheckpointError(f"{folder / 'adapter_config.json'} needs an integer r >= 1 and a number lora_alpha")
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in load_file(str(weights)).items():
        m = _KEY.match(key)
        if m is None:
            raise CheckpointError(f"{weights}: {key!r} is not a LoRA weight (<module>.lora_A/B[.<name>].weight)")
        pairs.setdefault(m.group("module"), {})[m.group("ab")] = t
    broken = sorted(k for k, v in pairs.items() if set(v) != {"A", "B"})
    if broken or not pairs:
        raise CheckpointError(f"{weights}: modules without both lora_A and lora_B: {broken[:10]}" if broken
                              else f"{weights} holds no LoRA weights")
    return {k: (v["A"], v["B"]) for k, v in pairs.items()}, cfg


@torch.no_grad()
def merge_adapter(module: torch.nn.Module, path: str | Path, scale: float = 1.0) -> dict:
    """Merge the adapter at ``path`` into ``module`` in place; returns what was merged."""
    if not isinstance(scale, (int, float)) or isinstance(scale, bool) or not -10 <= scale <= 10:
        raise InvalidInputError(f"LoRA scale must be a number in [-10, 10], got {scale!r}")
    pairs, cfg = read_adapter(path)
    names = dict(module.named_modules())
    unknown = sorted(k for k in pairs if not isinstance(names.get(k), torch.nn.Linear))
    if unknown:
        raise CheckpointError(f"LoRA adapter {path} adapts modules this model has no linear layer for: {unknown[:10]}; "
                              "was it trained for the other component or another model?")
    bad = []
    for k, (a, b) in pairs.items():
        w = names[k].weight
        if a.shape[0] != b.shape[1] or (b.shape[0], a.shape[1]) != tuple(w.shape):
            bad.append(f"{k}: A {tuple(a.shape)}, B {tuple(b.shape)} for weight {tuple(w.shape)}")
    if bad:
        raise CheckpointError(f"LoRA adapter {path} does not fit this model: {bad[:5]}")
    factor = scale * float(cfg["lora_alpha"]) / cfg["r"]
    for k, (a, b) in pairs.items():
        w = names[k].weight
        if type(w) is not torch.nn.Parameter and type(w) is not torch.Tensor:
            raise InvalidInputError("load LoRA adapters before quantizing the pipeline (its weights are quantized now)")
        w.add_((factor * (b.to(w.device, torch.float32) @ a.to(w.device, torch.float32))).to(w.dtype))
    return {"path": str(path), "scale": scale, "modules": len(pairs), "r": cfg["r"], "lora_alpha": cfg["lora_alpha"]}


def save_adapter(folder: str | Path, lora_tensors: dict[str, torch.Tensor], r: int, lora_alpha: float,
                 target_modules, component: str) -> None:
    """Write an adapter folder that :func:`merge_adapter` (and PEFT) can read."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in lora_tensors.items()}, str(folder / WEIGHT_FILES[0]))
    (folder / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": int(r), "lora_alpha": float(lora_alpha), "target_modules": list(target_modules),
        "thinkgen_component": component}, indent=2) + "\n")
