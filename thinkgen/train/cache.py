"""On-disk caches of frozen-encoder outputs: MLLM instruction features and VAE latents.

Each entry is one safetensors file ``<root>/<hh>/<sha256>.safetensors`` written atomically (tmp file +
``os.replace``), so concurrent ranks and killed runs never leave a torn entry. ``<root>/meta.json``
records a fingerprint of the encoder that produced the entries; opening the cache with a different
encoder is a ``ConfigError`` (clear the folder or point the config elsewhere).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable, Sequence

import torch

from ..checkpoint import atomic_write_bytes, atomic_write_json
from ..errors import ConfigError

CACHE_FORMAT = "thinkgen-cache/1"


def folder_fingerprint(folder: str | os.PathLike, extra: str = "") -> str:
    """Cheap identity of a model folder: config files in full, weight files by size and 4 sampled MiB."""
    folder = Path(folder)
    h = hashlib.sha256(extra.encode())
    for p in sorted(folder.rglob("*")):
        if not p.is_file():
            continue
        rel = p.relative_to(folder).as_posix()
        size = p.stat().st_size
        h.update(f"{rel}|{size}|".encode())
        with open(p, "rb") as f:
            if size <= 4 << 20:
                h.update(f.read())
            else:
                for frac in (0.0, 1 / 3, 2 / 3):
                    f.seek(int(size * frac))
                    h.update(f.read(1 << 20))
                f.seek(size - (1 << 20))
                h.update(f.read(1 << 20))
    return h.hexdigest()


class TensorCache:
    """Key -> tensor store on disk (safetensors), bound to an encoder fingerprint."""

    def __init__(self, root: str | os.PathLike, kind: str, fingerprint: str):
        self.root = Path(root)
        self.kind = kind
        self.root.mkdir(parents=True, exist_ok=True)
        meta_path = self.root / "meta.json"
        meta = {"format": CACHE_FORMAT, "kind": kind, "fingerprint": fingerprint}
        if meta_path.is_file():
            old = json.loads(meta_path.read_text())
            if old.get("kind") != kind or old.get("fingerprint") != fingerprint or old.get("format") != CACHE_FORMAT:
                raise ConfigError(
                    f"{kind} cache {self.root} was built by a different encoder or format "
                    f"(fingerprint {str(old.get('fingerprint'))[:12]} vs {fingerprint[:12]}); "
                    "delete the folder or set another cache directory"
                )
        else:
            atomic_write_json(meta_path, meta)
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(*parts: str) -> str:
        return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.safetensors"

    def get(self, key: str) -> torch.Tensor | None:
        p = self._path(key)
        if not p.is_file():
            return None
        from safetensors.torch import load_file

        try:
            return load_file(str(p))["value"]
        except Exception:   # a corrupt entry is recomputed (it is only a cache)
            return None

    def put(self, key: str, value: torch.Tensor) -> None:
        from safetensors.torch import save

        atomic_write_bytes(self._path(key), save({"value": value.detach().cpu().contiguous()}))

    def get_or_compute(self, keys: Sequence[str], compute: Callable[[list[int]], list[torch.Tensor]]) -> list[torch.Tensor]:
        """Values for ``keys``; ``compute(missing_indices)`` returns the missing ones, which are stored."""
        out: list[torch.Tensor | None] = [self.get(k) for k in keys]
        missing = [i for i, v in enumerate(out) if v is None]
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        if missing:
            values = compute(missing)
            for i, v in zip(missing, values):
                self.put(keys[i], v)
                # read back what was stored, so a cached and an uncached run see the same bytes
                out[i] = v.detach().cpu().clone()
        return out  # type: ignore[return-value]
