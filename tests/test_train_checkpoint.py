"""thinkgen.checkpoint: atomic directories, manifests, torn-step skipping, rotation, RNG state, fault hook."""
from __future__ import annotations

import json
import os
import random

import numpy as np
import pytest
import torch

from thinkgen.checkpoint import (FaultInjected, atomic_dir, atomic_write_json, atomic_write_text, fault_point,
                                 latest_complete_checkpoint, load_rng_state, load_state, remove_stale_tmp,
                                 rotate_checkpoints, save_rng_state, save_state, step_dir_name, verify_manifest)
from thinkgen.errors import CheckpointError


def write_step(root, step, payload=b"w"):
    with atomic_dir(root / step_dir_name(step), meta={"step": step}) as d:
        (d.path / "sub").mkdir()
        (d.path / "sub" / "weights.bin").write_bytes(payload * 10)
        (d.path / "state.json").write_text("{}")
    return root / step_dir_name(step)


def test_atomic_dir_writes_manifest_last_and_renames(tmp_path):
    p = write_step(tmp_path, 3)
    m = verify_manifest(p)
    assert m["meta"] == {"step": 3} and set(m["files"]) == {"sub/weights.bin", "state.json"}
    assert not [x for x in tmp_path.iterdir() if ".tmp-" in x.name]
    # rewriting replaces the old complete dir only after the new one is in place
    write_step(tmp_path, 3, b"v")
    assert (p / "sub" / "weights.bin").read_bytes() == b"v" * 10
    assert sorted(x.name for x in tmp_path.iterdir()) == [step_dir_name(3)]


def test_exception_removes_tmp_but_kill_leaves_debris(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "a") as d:
            (d.path / "f").write_text("x")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(FaultInjected):
        with atomic_dir(tmp_path / "b") as d:
            (d.path / "f").write_text("x")
            raise FaultInjected("kill")
    debris = list(tmp_path.iterdir())
    assert len(debris) == 1 and ".tmp-" in debris[0].name and not (tmp_path / "b").exists()
    assert remove_stale_tmp(tmp_path) == debris and list(tmp_path.iterdir()) == []


def test_latest_complete_skips_torn_and_corrupt_steps(tmp_path):
    write_step(tmp_path, 1)
    write_step(tmp_path, 2)
    s3 = write_step(tmp_path, 3)
    s4 = tmp_path / step_dir_name(4)          # torn: no manifest
    s4.mkdir()
    (s4 / "weights.bin").write_bytes(b"partial")
    (s3 / "sub" / "weights.bin").write_bytes(b"x" * 10)   # same size, different bytes
    with pytest.warns(UserWarning) as rec:
        assert latest_complete_checkpoint(tmp_path) == tmp_path / step_dir_name(2)
    text = " ".join(str(w.message) for w in rec)
    assert "step 4" in text and "incomplete" in text and "step 3" in text and "sha256" in text
    with pytest.raises(CheckpointError, match="no manifest.json"):
        verify_manifest(s4)
    (s3 / "extra.txt").write_text("?")
    with pytest.raises(CheckpointError):
        verify_manifest(s3)
    assert latest_complete_checkpoint(tmp_path / "nothing") is None


def test_rotation_keeps_newest_complete(tmp_path):
    for s in (1, 2, 3, 4):
        write_step(tmp_path, s)
    torn = tmp_path / step_dir_name(5)
    torn.mkdir()
    rotate_checkpoints(tmp_path, keep_last=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == [step_dir_name(3), step_dir_name(4), step_dir_name(5)]
    rotate_checkpoints(tmp_path, keep_last=0)        # 0 keeps everything
    assert len(list(tmp_path.iterdir())) == 3


def test_atomic_single_files(tmp_path):
    atomic_write_text(tmp_path / "a" / "b.txt", "hello")
    atomic_write_json(tmp_path / "c.json", {"x": 1})
    assert (tmp_path / "a" / "b.txt").read_text() == "hello" and json.loads((tmp_path / "c.json").read_text()) == {"x": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "c.json"]


def test_rng_state_roundtrip_weights_only(tmp_path):
    g = torch.Generator().manual_seed(7)
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    torch.randn(3, generator=g)
    state = save_rng_state({"noise": g})
    save_state(state, tmp_path / "rng.pt")
    want = (random.random(), np.random.rand(), torch.rand(2), torch.randn(2, generator=g))
    random.seed(9), np.random.seed(9), torch.manual_seed(9), g.manual_seed(9)
    load_rng_state(load_state(tmp_path / "rng.pt"), {"noise": g})
    got = (random.random(), np.random.rand(), torch.rand(2), torch.randn(2, generator=g))
    assert want[0] == got[0] and want[1] == got[1] and torch.equal(want[2], got[2]) and torch.equal(want[3], got[3])
    with pytest.raises(CheckpointError, match="no generator 'other'"):
        load_rng_state(state, {"other": torch.Generator()})
    with pytest.raises(CheckpointError, match="missing"):
        load_state(tmp_path / "nope.pt")


def test_state_files_refuse_pickled_code(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError):
        load_state(tmp_path / "evil.pt")
    assert not marker.exists()


def test_fault_hook(monkeypatch):
    monkeypatch.setenv("THINKGEN_FAULT", "step:3,ckpt_write:4:2")
    fault_point("step", 2)
    fault_point("ckpt_write", 4, 1)
    with pytest.raises(FaultInjected):
        fault_point("step", 3)
    with pytest.raises(FaultInjected):
        fault_point("ckpt_write", 4, 2)


def test_no_unsafe_loading_in_training_code():
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[1] / "thinkgen"
    for f in [root / "checkpoint.py", *sorted((root / "train").glob("*.py"))]:
        text = f.read_text()
        assert "weights_only=False" not in text and "pickle.load" not in text, f


ONE_PROCESS_WORKER = r"""
import json
import torch
import torch.distributed as tdist
from thinkgen.train import parallel

model = torch.nn.Linear(3, 2)
info = parallel.init_distributed("cpu", timeout_s=60)
wrapped = parallel.wrap_model(model, "ddp")
wrapped(torch.ones(4, 3)).sum().backward()
res = dict(is_dist=parallel.is_dist(), backend=info.backend, world_size=info.world_size, distributed=info.distributed,
           ddp=isinstance(wrapped, torch.nn.parallel.DistributedDataParallel),
           unwrapped=parallel.unwrap(wrapped) is model, grad=model.weight.grad is not None)
parallel.cleanup_distributed()
res["cleaned_up"] = not tdist.is_initialized()
print(json.dumps(res))
"""


def test_torchrun_with_one_process_joins_the_group_and_wraps(tmp_path, bounded):
    """Under torchrun a 1-process launch runs the multi-process code path (process group, DDP); plain python does
    not join anything. The torchrun side runs in a child process (its own process group, hard-killed if it hangs) with
    the variables torchrun sets, so no process-group state can leak into, or hang, the test session."""
    import socket
    import sys

    from thinkgen.train import parallel

    model = torch.nn.Linear(3, 2)
    assert parallel.init_distributed("cpu").backend == "" and not parallel.is_dist()
    assert parallel.wrap_model(model, "ddp") is model
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(port), "TORCHELASTIC_RUN_ID": "test", "OMP_NUM_THREADS": "1"}
    script = tmp_path / "one_process.py"
    script.write_text(ONE_PROCESS_WORKER)
    proc = bounded([sys.executable, str(script)], env=env, timeout=180, cwd=str(tmp_path), what="1-process torchrun")
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res == dict(is_dist=True, backend="gloo", world_size=1, distributed=False, ddp=True, unwrapped=True,
                       grad=True, cleaned_up=True)
