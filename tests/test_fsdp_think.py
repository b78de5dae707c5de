"""An FSDP2-sharded MLLM thinks exactly as the unsharded one, even when the ranks decode different lengths.

Two CPU processes (gloo). Rank 0 gets a smaller answer budget than rank 1, so it finishes decoding first; without
synced generation it would leave rank 1 alone inside a collective (a hang). Rank 1 also sends an image (the vision
tower is replicated outside FSDP: generate encodes images before the first root forward). Each rank compares the sharded model's tokens and post-``</think>`` features,
and the no-think features, with the same weights unsharded.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

TORCHRUN = Path(sys.executable).with_name("torchrun")

WORKER = r'''
import json, sys
import torch
from PIL import Image
from thinkgen.mllm import ThinkGenMLLM, synced_generation
from thinkgen.train import parallel

ckpt, out = sys.argv[1], sys.argv[2]
info = parallel.init_distributed("cpu")
plain = ThinkGenMLLM.from_pretrained(f"{ckpt}/mllm", f"{ckpt}/processor")
sharded = ThinkGenMLLM.from_pretrained(f"{ckpt}/mllm", f"{ckpt}/processor")
sharded.model.model.visual.requires_grad_(False)   # replicated outside FSDP: must be frozen
parallel.wrap_model(sharded.model, "fsdp2", replicate=["model.visual"])
prompts = ["two red circles", "a blue square above a star"]
images = [[], [Image.new("RGB", (64, 64), (200, 40, 40))]] if info.rank == 1 else None
kw = dict(mode="think", max_think_tokens=3, max_answer_tokens=2 if info.rank == 0 else 8, do_sample=True,
          seed=[11 + info.rank, 12 + info.rank])
a = plain.think(prompts, images, **kw)
b = sharded.think(prompts, images, **kw)
c0 = plain.encode_instructions(prompts, mode="nothink")
c1 = sharded.encode_instructions(prompts, mode="nothink")
res = {
    "synced": [synced_generation(plain.model), synced_generation(sharded.model)],
    "lengths": [len(g) for g in a.generated_ids],
    "same_tokens": a.generated_ids == b.generated_ids,
    "think_diff": float((a.features - b.features).abs().max()),
    "think_mask_equal": bool(torch.equal(a.mask, b.mask)),
    "nothink_diff": float((c0.features - c1.features).abs().max()),
}
with open(f"{out}/rank{info.rank}.json", "w") as f:
    json.dump(res, f)
parallel.cleanup_distributed()
'''


@pytest.mark.skipif(not TORCHRUN.is_file() and shutil.which("torchrun") is None, reason="torchrun not installed")
def test_sharded_mllm_thinks_like_unsharded(tiny_ckpt, tmp_path, bounded):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    cmd = [str(TORCHRUN) if TORCHRUN.is_file() else "torchrun", "--standalone", "--nproc_per_node", "2",
           str(script), str(tiny_ckpt), str(tmp_path)]
    proc = bounded(cmd, env=env, timeout=240, cwd=str(tmp_path), what="2-process think (unsynced decoding?)")
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for r in ranks:   # the messages carry both ranks' results: a rare failure must say which check it was
        assert r["synced"] == [False, True], ranks
        assert r["same_tokens"] and r["think_mask_equal"], ranks
        assert r["think_diff"] < 1e-5 and r["nothink_diff"] < 1e-5, ranks
    # the ranks really decoded different lengths (rank 0 stopped first)
    assert max(ranks[0]["lengths"]) < max(ranks[1]["lengths"]), ranks
