"""Atomic checkpoint writes, manifests and RNG state (reliability targets T2-T4).

A checkpoint directory counts only when it is *complete*: every file is written into
``<name>.tmp-XXXX/``, fsynced, then ``manifest.json`` (size + sha256 of every file) is written
**last**, and the folder is renamed into place. A reader therefore never sees a torn directory
under its final name, and :func:`latest_complete_checkpoint` skips any step whose manifest is
missing or whose files do not match it.

Non-weight state goes through ``torch.save`` and is read back with ``weights_only=True``; RNG
states are converted to plain tensors / ints first, so no allow-list is needed.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import re
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from .errors import CheckpointError

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "thinkgen-checkpoint/1"
STEP_PATTERN = re.compile(r"^step-(\d+)$")


# --------------------------------------------------------------------------- fault injection
class FaultInjected(BaseException):
    """Raised by the ``THINKGEN_FAULT`` hook to simulate a kill -9 in tests.

    It derives from BaseException so that ordinary ``except Exception`` blocks (and
    :func:`atomic_dir`'s clean-up) do not swallow it: debris is left behind exactly as a
    real kill would leave it.
    """


def fault_point(kind: str, step: int, index: int | None = None) -> None:
    """Raise :class:`FaultInjected` when ``THINKGEN_FAULT`` names this point.

    ``THINKGEN_FAULT=step:<n>`` fires after optimizer step n; ``ckpt_write:<n>:<k>`` fires in the
    checkpoint of step n after its k-th file was written. Several specs may be comma-separated.
    """
    spec = os.environ.get("THINKGEN_FAULT", "")
    for item in filter(None, (s.strip() for s in spec.split(","))):
        parts = item.split(":")
        if parts[0] != kind:
            continue
        if int(parts[1]) != step:
            continue
        if index is not None and len(parts) > 2 and int(parts[2]) != index:
            continue
        if index is None and len(parts) > 2:
            continue
        raise FaultInjected(f"THINKGEN_FAULT={item}")


# --------------------------------------------------------------------------- single files
def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


# --------------------------------------------------------------------------- directories
class _DirWriter:
    """Handle yielded by :func:`atomic_dir`: the temporary path plus manifest metadata."""

    def __init__(self, tmp: Path, final: Path):
        self.path = tmp
        self.final = final
        self.meta: dict[str, Any] = {}

    def __truediv__(self, other: str) -> Path:
        return self.path / other

    def __fspath__(self) -> str:
        return str(self.path)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, meta: dict[str, Any] | None = None) -> Iterator[_DirWriter]:
    """Write a directory atomically.

    Usage::

        with atomic_dir(root / "step-000010", meta={"step": 10}) as d:
            save_file(state, d / "weights.safetensors")
            d.meta["config_hash"] = h

    Files go into ``<path>.tmp-XXXX``; on a normal exit every file is fsynced, ``manifest.json``
    (format, meta, and ``files: {relpath: {size, sha256}}``) is written last, and the folder is
    renamed to ``path``. An existing complete ``path`` is moved aside first and deleted only once
    the new one is in place. On an ``Exception`` the temporary folder is removed; on a
    :class:`FaultInjected` (simulated kill) it is left behind, like a real kill would.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{final.name}.tmp-", dir=str(final.parent)))
    writer = _DirWriter(tmp, final)
    writer.meta.update(meta or {})
    try:
        yield writer
    except Exception:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    files: dict[str, dict[str, Any]] = {}
    for p in sorted(tmp.rglob("*")):
        if p.is_file() and p.name != MANIFEST:
            with open(p, "rb") as f:
                os.fsync(f.fileno())
            files[p.relative_to(tmp).as_posix()] = {"size": p.stat().st_size, "sha256": sha256_file(p)}
    for d in sorted({p.parent for p in tmp.rglob("*")} | {tmp}, key=lambda q: len(q.parts), reverse=True):
        _fsync_dir(d)
    manifest = {"format": MANIFEST_FORMAT, "created": time.time(), "meta": writer.meta, "files": files}
    atomic_write_json(tmp / MANIFEST, manifest)
    old = None
    if final.exists():
        old = final.with_name(f"{final.name}.old-{os.getpid()}-{int(time.time() * 1e6)}")
        os.replace(final, old)
    os.replace(tmp, final)
    _fsync_dir(final.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def verify_manifest(path: str | os.PathLike, check_hashes: bool = True) -> dict[str, Any]:
    """Return the manifest of a complete directory; raise :class:`CheckpointError` otherwise.

    Checks: ``manifest.json`` exists and parses, every listed file exists with the listed size
    and (``check_hashes``) sha256, and no unlisted file is present.
    """
    path = Path(path)
    mpath = path / MANIFEST
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path} does not exist or is not a folder")
    if not mpath.is_file():
        raise CheckpointError(f"checkpoint {path} has no {MANIFEST}: it is incomplete (the write was interrupted)")
    try:
        manifest = json.loads(mpath.read_text())
        files = manifest["files"]
    except Exception as e:
        raise CheckpointError(f"{mpath} is unreadable ({e}); the checkpoint is torn") from None
    if manifest.get("format") != MANIFEST_FORMAT:
        raise CheckpointError(f"{mpath} has format {manifest.get('format')!r}, expected {MANIFEST_FORMAT!r}")
    for rel, info in files.items():
        f = path / rel
        if not f.is_file():
            raise CheckpointError(f"checkpoint {path}: file {rel} listed in the manifest is missing")
        if f.stat().st_size != info["size"]:
            raise CheckpointError(
                f"checkpoint {path}: file {rel} has {f.stat().st_size} bytes, the manifest says {info['size']}"
            )
        if check_hashes and sha256_file(f) != info["sha256"]:
            raise CheckpointError(f"checkpoint {path}: sha256 of {rel} does not match the manifest (corrupt file)")
    extra = [
        p.relative_to(path).as_posix()
        for p in path.rglob("*")
        if p.is_file() and p.name != MANIFEST and p.relative_to(path).as_posix() not in files
    ]
    if extra:
        raise CheckpointError(f"checkpoint {path} holds files not in its manifest: {', '.join(sorted(extra)[:10])}")
    return manifest


def step_dir_name(step: int) -> str:
    return f"step-{step:08d}"


def list_step_dirs(root: str | os.PathLike) -> list[tuple[int, Path]]:
    """All ``step-N`` folders under ``root`` (complete or not), newest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    out = []
    for p in root.iterdir():
        m = STEP_PATTERN.match(p.name)
        if m and p.is_dir():
            out.append((int(m.group(1)), p))
    return sorted(out, key=lambda x: x[0], reverse=True)


def latest_complete_checkpoint(root: str | os.PathLike, check_hashes: bool = True) -> Path | None:
    """Newest ``step-N`` folder under ``root`` whose manifest verifies, or ``None``.

    Incomplete or corrupt steps are skipped with a warning naming them.
    """
    for step, p in list_step_dirs(root):
        try:
            verify_manifest(p, check_hashes=check_hashes)
        except CheckpointError as e:
            warnings.warn(f"skipping checkpoint step {step}: {e}", stacklevel=2)
            continue
        return p
    return None


def remove_stale_tmp(root: str | os.PathLike) -> list[Path]:
    """Delete ``*.tmp-*`` / ``*.old-*`` debris left by interrupted writes under ``root``."""
    root = Path(root)
    removed = []
    if root.is_dir():
        for p in root.iterdir():
            if ".tmp-" in p.name or ".old-" in p.name:
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
                removed.append(p)
    return removed


def rotate_checkpoints(root: str | os.PathLike, keep_last: int) -> list[Path]:
    """Keep the newest ``keep_last`` complete steps; never delete the newest complete one.

    Incomplete steps older than the newest complete step are deleted too. Call this only after a
    new step is complete. ``keep_last <= 0`` keeps everything.
    """
    if keep_last <= 0:
        return []
    complete: list[Path] = []
    removed: list[Path] = []
    newest_ok = None
    for step, p in list_step_dirs(root):
        try:
            verify_manifest(p, check_hashes=False)
        except CheckpointError:
            if newest_ok is not None:
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
            continue
        newest_ok = newest_ok or p
        complete.append(p)
    for p in complete[max(keep_last, 1):]:
        shutil.rmtree(p, ignore_errors=True)
        removed.append(p)
    return removed


# --------------------------------------------------------------------------- torch state files
def save_state(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` (plain tensors, numbers, strings, lists, dicts only)."""
    torch.save(obj, str(path))


def load_state(path: str | os.PathLike) -> Any:
    """Load a file written by :func:`save_state` with ``weights_only=True``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"state file {path} is missing")
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"cannot read {path}: {type(e).__name__}: {e}") from None


# --------------------------------------------------------------------------- RNG
def save_rng_state(generators: dict[str, torch.Generator] | None = None) -> dict[str, Any]:
    """Snapshot python, numpy, torch CPU, every CUDA device and named generators.

    Everything is converted to tensors / ints / lists so the result loads with ``weights_only=True``.
    """
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": version, "state": torch.tensor(internal, dtype=torch.int64), "gauss": gauss},
        "numpy": {
            "name": np_state[0],
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "generators": {k: g.get_state() for k, g in (generators or {}).items()},
    }
    return state


def load_rng_state(state: dict[str, Any], generators: dict[str, torch.Generator] | None = None) -> None:
    """Restore what :func:`save_rng_state` captured. A named generator missing from ``state`` is an error."""
    try:
        py = state["python"]
        random.setstate((py["version"], tuple(int(x) for x in py["state"].tolist()), py["gauss"]))
        nps = state["numpy"]
        np.random.set_state(
            (nps["name"], nps["keys"].numpy().astype(np.uint32), nps["pos"], nps["has_gauss"], nps["cached_gaussian"])
        )
        torch.set_rng_state(state["torch"])
        if torch.cuda.is_available() and state.get("cuda"):
            if len(state["cuda"]) != torch.cuda.device_count():
                raise CheckpointError(
                    f"RNG state has {len(state['cuda'])} CUDA devices but {torch.cuda.device_count()} are visible"
                )
            torch.cuda.set_rng_state_all(state["cuda"])
    except KeyError as e:
        raise CheckpointError(f"RNG state lacks {e}; the checkpoint is incomplete") from None
    for name, g in (generators or {}).items():
        if name not in state.get("generators", {}):
            raise CheckpointError(f"RNG state has no generator {name!r} (has {sorted(state.get('generators', {}))})")
        g.set_state(state["generators"][name])


# --------------------------------------------------------------------------- misc
def config_hash(obj: Any) -> str:
    """Stable sha256 of a JSON-serialisable object (sorted keys)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def link_or_copy_tree(src: str | os.PathLike, dst: str | os.PathLike, hardlink: bool = True) -> None:
    """Recreate ``src`` under ``dst`` with hard links where possible (else copies).

    ``hardlink=False`` always copies. Hard links share the inode: a later in-place write into the copy
    (e.g. ``save_pretrained`` into the same folder) would also change the source, so exports meant to be
    edited should copy.
    """
    src, dst = Path(src), Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    for p in src.rglob("*"):
        q = dst / p.relative_to(src)
        if p.is_dir():
            q.mkdir(parents=True, exist_ok=True)
        elif p.is_file():
            q.parent.mkdir(parents=True, exist_ok=True)
            if hardlink:
                try:
                    os.link(p, q)
                    continue
                except OSError:
                    pass
            shutil.copy2(p, q)
