"""Distributed helpers: process group, rank helpers, model wrapping (none / DDP / FSDP2).

The same trainer entry point runs single-process and under ``torchrun``: ``init_distributed()``
reads the torchrun environment (RANK, WORLD_SIZE, LOCAL_RANK) and picks NCCL on CUDA, gloo on CPU. Under
``torchrun`` the process group is joined and the model wrapped even with one process, so a 1-GPU launch runs the
same collectives (NCCL) and wrappers (DDP / FSDP2) as a multi-GPU one; a plain ``python`` launch joins nothing.
Model files never see any of this (style.md §2.2): wrapping happens here.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.distributed as dist
from torch import nn

from ..errors import ConfigError


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str = ""             # "" when not distributed

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_dist() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def print0(*args, **kwargs) -> None:
    """print on rank 0 only."""
    if is_main_process():
        kwargs.setdefault("flush", True)
        print(*args, **kwargs)


def barrier() -> None:
    if is_dist():
        dist.barrier()


def pick_device(device: str = "auto", local_rank: int = 0) -> torch.device:
    if device == "cpu":
        return torch.device("cpu")
    if device == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError(f"device={device!r} but CUDA is not available; use --device=cpu or --device=auto")
    return torch.device(f"cuda:{local_rank}" if device == "cuda" else device)


def init_distributed(device: str = "auto", timeout_s: float = 1800.0) -> DistInfo:
    """Join the torchrun process group (idempotent); return rank, world, device.

    Joined when WORLD_SIZE > 1, or under ``torchrun`` (TORCHELASTIC_RUN_ID set) with one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, local_rank)
    if world <= 1 and not (is_dist() or "TORCHELASTIC_RUN_ID" in os.environ):
        return DistInfo(0, 1, 0, dev, "")
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not is_dist():
        from datetime import timedelta

        dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s),
                                **({"device_id": dev} if dev.type == "cuda" else {}))
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, dev, dist.get_backend())


def cleanup_distributed() -> None:
    """Leave the process group together: a barrier first, so that no rank tears down its gloo / NCCL communicators
    while a peer is still finishing a collective (a rank that did, aborted its peer: "terminate called without an
    active exception", one run in about a dozen of tests/test_fsdp_think.py)."""
    if is_dist():
        dist.barrier()
        dist.destroy_process_group()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Send a picklable object from ``src`` to every rank (no-op single-process)."""
    if not is_dist():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gather_objects(obj: Any) -> list[Any] | None:
    """Collect one object per rank on rank 0 (others get None)."""
    if not is_dist():
        return [obj]
    out = [None] * get_world_size() if is_main_process() else None
    dist.gather_object(obj, out, dst=0)
    return out


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    if not is_dist():
        return x
    y = x.detach().clone()
    dist.all_reduce(y, op=dist.ReduceOp.SUM)
    return y / get_world_size()


# --------------------------------------------------------------------------- wrapping
def _shard_units(model: nn.Module, keep_in_root: Sequence[str] = ()) -> list[nn.Module]:
    """Transformer blocks to shard one by one, outermost only.

    The model's ``_no_split_modules`` classes when it declares them (diffusers / transformers:
    ThinkGenTransformerBlock, Qwen3-VL decoder layers and vision blocks), else the elements of the
    outermost ``nn.ModuleList`` s. A unit nested inside another unit is never chosen, nor anything under a
    ``keep_in_root`` prefix (see :func:`wrap_model`).
    """
    classes = set(getattr(model, "_no_split_modules", None) or [])
    chosen: list[tuple[str, nn.Module]] = []

    def skipped(name: str) -> bool:
        return _under(name, [c for c, _ in chosen]) or _under(name, keep_in_root)

    for name, m in model.named_modules():
        if not name or skipped(name):
            continue
        if classes:
            if type(m).__name__ in classes:
                chosen.append((name, m))
        elif isinstance(m, nn.ModuleList):
            chosen.extend((f"{name}.{i}", sub) for i, sub in enumerate(m))
    return [m for _, m in chosen]


def _under(name: str, prefixes: Sequence[str]) -> bool:
    return any(name == k or name.startswith(k + ".") for k in prefixes)


def wrap_model(model: nn.Module, strategy: str = "none", device: torch.device | None = None,
               find_unused_parameters: bool = True, keep_in_root: Sequence[str] = (),
               replicate: Sequence[str] = ()) -> nn.Module:
    """Wrap for data parallel training.

    * "none": returned as is (also when no process group is joined: a plain single-process launch);
    * "ddp": ``DistributedDataParallel`` (gloo on CPU, NCCL on GPU). ``find_unused_parameters`` is on by
      default because a batch without reference images leaves the reference refiner unused;
    * "fsdp2": ``torch.distributed.fsdp.fully_shard`` on every block, then on the root. Parameters become
      DTensors; use :func:`full_state_dict` to save. Modules that run only for some batches (the DiT's
      reference refiner, the MLLM's vision tower) must be listed in ``keep_in_root``: a separately sharded
      block all-gathers only when it runs, so ranks with different batches would issue different
      collectives. Kept in the root group they are gathered on every forward, and
      ``set_reduce_scatter_unused_params`` gives unused parameters zero gradients on every rank.
      Modules under a ``replicate`` prefix are left out of FSDP altogether (``ignored_params``): plain tensors,
      a full copy on every rank, callable from outside the root forward (transformers' ``generate`` encodes
      images through ``get_image_features`` before the first forward, so the MLLM's vision tower goes here).
      FSDP never synchronises their gradients, so they must be frozen (refused otherwise).
    """
    if strategy not in ("none", "ddp", "fsdp2"):
        raise ConfigError(f"parallel={strategy!r} is invalid; use none, ddp or fsdp2")
    if strategy == "none" or not is_dist():
        return model
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [device.index] if device is not None and device.type == "cuda" else None
        return DDP(model, device_ids=ids, find_unused_parameters=find_unused_parameters)
    from torch.distributed.fsdp import fully_shard

    ignored = {p for n, p in model.named_parameters() if _under(n, replicate)}
    trained = sorted(n for n, p in model.named_parameters() if p.requires_grad and _under(n, replicate))
    if trained:
        raise ConfigError(f"FSDP2 replicates {list(replicate)} outside the sharded groups, so they must be frozen, "
                          f"but {len(trained)} of their parameters are trainable (e.g. {trained[0]}); freeze them "
                          "(e.g. mllm.freeze_vision: true) or use parallel=ddp")
    for unit in _shard_units(model, list(keep_in_root) + list(replicate)):
        fully_shard(unit)
    fully_shard(model, ignored_params=ignored or None)
    if hasattr(model, "set_reduce_scatter_unused_params"):
        model.set_reduce_scatter_unused_params(True)
    return model


def unwrap(model: nn.Module) -> nn.Module:
    """The bare module under a DDP wrapper (FSDP2 modifies the module in place)."""
    return model.module if hasattr(model, "module") and isinstance(model, nn.parallel.DistributedDataParallel) else model


def is_fsdp(model: nn.Module) -> bool:
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover
        return False
    return isinstance(unwrap(model), FSDPModule)


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Unsharded CPU state dict (collective under FSDP2: call on every rank)."""
    m = unwrap(model)
    if is_fsdp(m):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(m, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k: v.detach().cpu() for k, v in m.state_dict().items()}


def load_full_state_dict(model: nn.Module, state: dict[str, torch.Tensor], strict: bool = True) -> None:
    m = unwrap(model)
    if is_fsdp(m):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        set_model_state_dict(m, state, options=StateDictOptions(full_state_dict=True, strict=strict))
    else:
        m.load_state_dict(state, strict=strict)


def optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Optimizer state dict, unsharded under FSDP2 (collective: call on every rank)."""
    if is_fsdp(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        return get_optimizer_state_dict(unwrap(model), optimizer,
                                        options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return optimizer.state_dict()


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    if is_fsdp(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(unwrap(model), optimizer, state,
                                 # strict=False: a parameter that never had a gradient (e.g. the reference
                                 # embedding before the first editing batch) has no Adam state, as in the saved run
                                 options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=False,
                                                          strict=False))
        # set_optimizer_state_dict first initialises EVERY parameter's state with a dummy step; drop the state of
        # parameters the checkpoint had none for, so AdamW starts them fresh (step 0) exactly as the saved run would.
        saved = set(state.get("state", {}))
        for name, p in unwrap(model).named_parameters():
            if name not in saved and p in optimizer.state:
                del optimizer.state[p]
    else:
        optimizer.load_state_dict(state)


def local_tensor(t: torch.Tensor) -> torch.Tensor:
    """The full value of a (possibly DTensor) tensor."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def stderr_is_tty() -> bool:
    return hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
