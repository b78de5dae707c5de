"""SepGRPO under ``torchrun --nproc_per_node 2`` on CPU (gloo; DDP, and FSDP2 with both models sharded): prompts
sharded, rewards gathered, evaluation padded to equal shards, one checkpoint writer, the released-layout export.
Under FSDP2 the MLLM decodes rollouts of different lengths on the two ranks (synced generation) and the full
fine-tuning references are sharded too. The MLLM phase runs with the feature anchor (an extra forward / backward
through the wrapped policy and one through the reference).

Robustness: a free rendezvous port (``--standalone``), one thread per process, a hard timeout that kills the whole
process group, and the output of both ranks in the failure message.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from test_sepgrpo import PROMPTS, tiny_values

TORCHRUN = Path(sys.executable).with_name("torchrun")


@pytest.mark.skipif(not TORCHRUN.is_file() and shutil.which("torchrun") is None, reason="torchrun not installed")
@pytest.mark.parametrize("strategy, compile_", [
    ("ddp", False), ("fsdp2", False),
    # the DiT blocks compiled inside the DDP / FSDP2 wrappers (inductor on each rank: minutes on a cold cache)
    pytest.param("ddp", True, marks=pytest.mark.slow), pytest.param("fsdp2", True, marks=pytest.mark.slow)])
def test_two_process_run(tiny_ckpt, tmp_path, strategy, compile_, bounded):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in PROMPTS))
    out = tmp_path / "out"
    values = tiny_values(tiny_ckpt, out, prompts, parallel=strategy, reward_modules=["test_sepgrpo"],
                         eval_prompts=str(prompts), eval_steps=2, eval_resolution=32, eval_before=False, compile=compile_,
                         mllm={"prompts_per_step": 1, "anchor_weight": 1.0, "anchor_prompts_per_step": 2},
                         dit={"lora": strategy == "ddp", "lora_rank": 4, "lora_alpha": 8.0, "anchor_weight": 1.0,
                              "anchor_prompts_per_step": 2})
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(values))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    env.pop("THINKGEN_FAULT", None)
    cmd = [str(TORCHRUN) if TORCHRUN.is_file() else "torchrun", "--standalone", "--nproc_per_node", "2",
           "-m", "thinkgen.rl.sepgrpo", "--config", str(cfg)]
    proc = bounded(cmd, env=env, timeout=1200 if compile_ else 300, cwd=str(tmp_path), what="2-process run")
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}"

    lines = [json.loads(l) for l in (out / "logs" / "metrics.jsonl").read_text().splitlines() if l.strip()]
    mllm = next(r for r in lines if "mllm/reward" in r)
    dit = next(r for r in lines if "dit/reward" in r)
    assert mllm["mllm/ratio_mean"] == 1.0 and abs(dit["dit/ratio_mean"] - 1.0) < 1e-6
    assert mllm["mllm/anchor"] == 0.0   # the feature anchor ran on both ranks (0 before the first update)
    assert dit["dit/anchor"] == 0.0     # so did the velocity anchor of the DiT phase
    # every held-out prompt scored exactly once although 3 prompts do not split evenly over 2 ranks
    evals = [r for r in lines if "eval/count" in r]
    assert evals and all(r["eval/count"] == len(PROMPTS) for r in evals)
    assert (out / "final" / "model_index.json").is_file() and (out / "final" / "manifest.json").is_file()
    state = json.loads((out / "checkpoints" / "step-00000002" / "trainer_state" / "state.json").read_text())
    assert state["world_size"] == 2 and state["position"] == {"round": 1, "phase_index": 0, "step": 0, "global_step": 2}
    assert (out / "checkpoints" / "step-00000002" / "trainer_state" / "rank1.pt").is_file()
