"""Strict loading of checkpoint components and hub resolution.

Nothing here re-initialises a weight silently: a missing, unexpected or mis-shaped tensor is a
:class:`~thinkgen.errors.CheckpointError` that lists the offending keys.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from .errors import CheckpointError


def read_safetensors_folder(folder: Path, prefix: str) -> dict[str, torch.Tensor]:
    """Read ``{prefix}.safetensors`` or its sharded index from ``folder``; refuse pickle files."""
    from safetensors.torch import load_file

    folder = Path(folder)
    single = folder / f"{prefix}.safetensors"
    index = folder / f"{prefix}.safetensors.index.json"
    if single.is_file():
        try:
            return load_file(str(single))
        except Exception as e:  # truncated / corrupt file
            raise CheckpointError(f"cannot read {single}: {e}; the file is corrupt or truncated, download it again") from None
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        state: dict[str, torch.Tensor] = {}
        for shard in sorted(set(weight_map.values())):
            path = folder / shard
            if not path.is_file():
                raise CheckpointError(f"shard {path} named in {index.name} is missing")
            try:
                state.update(load_file(str(path)))
            except Exception as e:
                raise CheckpointError(f"cannot read {path}: {e}; the file is corrupt or truncated") from None
        return state
    pickles = [p.name for p in folder.glob("*.bin")] + [p.name for p in folder.glob("*.pt")]
    if pickles:
        raise CheckpointError(
            f"{folder} holds only pickle weights ({', '.join(pickles)}); thinkgen loads safetensors only. "
            "Convert them with safetensors.torch.save_file."
        )
    raise CheckpointError(f"no {prefix}.safetensors (or sharded index) in {folder}")


def check_state_dict(model: torch.nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """Raise CheckpointError unless ``state`` matches ``model`` key for key and shape for shape.

    ``model`` may live on the meta device (only names and shapes are read). The message lists the missing keys,
    unexpected keys and shape mismatches (20 of each at most).
    """
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in sorted(set(expected) & set(state))
        if tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or mismatched:
        lines = [f"{where}: checkpoint does not match {type(model).__name__}(config.json)"]
        for title, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mismatched)):
            if items:
                shown = ", ".join(items[:20]) + (f", ... ({len(items) - 20} more)" if len(items) > 20 else "")
                lines.append(f"  {len(items)} {title}: {shown}")
        raise CheckpointError("\n".join(lines))


def load_vae_strict(folder: Path, dtype: torch.dtype | None = None):
    """Load a diffusers ``AutoencoderKL`` from ``folder`` strictly."""
    from diffusers import AutoencoderKL

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"{folder} has no config.json; expected a diffusers AutoencoderKL folder")
    vae = AutoencoderKL.from_config(AutoencoderKL.load_config(str(folder)))
    state = read_safetensors_folder(folder, "diffusion_pytorch_model")
    check_state_dict(vae, state, str(folder))
    vae.load_state_dict(state, strict=True)
    if dtype is not None and dtype != torch.float32:
        vae = vae.to(dtype)
    return vae.eval().requires_grad_(False)


def resolve_model_path(path_or_id: str | os.PathLike, revision: str | None = None) -> Path:
    """A local folder is used as is; anything else is treated as a Hugging Face hub repo id."""
    p = Path(path_or_id).expanduser()
    if p.is_dir():
        return p
    s = str(path_or_id)
    if p.exists():
        raise CheckpointError(f"model path {s!r} exists but is not a folder; pass the checkpoint folder")
    if s.startswith((".", "/", "~")) or s.count("/") != 1:
        raise CheckpointError(
            f"model {s!r} is neither an existing folder nor a hub id of the form 'owner/name'"
        )
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover - huggingface_hub is a dependency
        raise CheckpointError("huggingface_hub is required to download models; pip install huggingface_hub") from None
    try:
        return Path(snapshot_download(repo_id=s, revision=revision, allow_patterns=None))
    except Exception as e:
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
        hint = (
            "HF_HUB_OFFLINE is set" if offline else "the hub could not be reached or the repo does not exist"
        )
        raise CheckpointError(
            f"could not download model {s!r} from the Hugging Face hub ({hint}: {type(e).__name__}: {str(e)[:200]}). "
            "Download it on a connected machine (huggingface-cli download " + s + " --local-dir DIR) "
            "and pass --model DIR."
        ) from None
