"""How far two MLLMs' no-think features are apart: the painter's input with thinking off (a benchmark helper).

For held-out nano prompts of each family: the relative squared distance sum |f_b - f_a|^2 / sum |f_a|^2 over the
tokens after ``</think>`` of the no-think template (the quantity ``mllm.anchor_weight`` penalises in MLLM-GRPO and
``anchor_weight`` in MLLM SFT), model B against model A.

    python bench/nano_feature_drift.py --a STAGE3_MODEL --b STEP80_MODEL --families composition,text,editing,reasoning \
        --n 32 --json bench/results/OUT.json
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from thinkgen.checkpoint import atomic_write_json

from provenance import provenance   # bench/provenance.py


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--a", required=True, help="reference pipeline folder (e.g. the stage-3 model)")
    ap.add_argument("--b", required=True, help="the other pipeline folder (e.g. after MLLM-GRPO)")
    ap.add_argument("--families", default="composition,text,editing,reasoning")
    ap.add_argument("--n", type=int, default=32, help="held-out prompts per family")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.n < 1:
        ap.error(f"--n must be >= 1, got {args.n}")
    for p in (args.a, args.b):
        if not Path(p, "mllm").is_dir():
            ap.error(f"{p} is not a pipeline folder (no mllm/ inside); pass a saved ThinkGen model folder")

    from thinkgen.pipeline import ThinkGenPipeline
    from thinkgen.rl.rollout import nano_prompt_items
    from thinkgen.train.mllm_sft import anchor_loss

    a = ThinkGenPipeline.from_pretrained(args.a).mllm
    b = ThinkGenPipeline.from_pretrained(args.b).mllm
    out = {}
    for fam in [f.strip() for f in args.families.split(",") if f.strip()]:
        items = nano_prompt_items([fam], "heldout", args.n, 0)
        prompts, n_images = [it.prompt for it in items], [len(it.images) for it in items]
        with torch.no_grad():
            fa, mask = a.nothink_features(prompts, n_images)
            fb, _ = b.nothink_features(prompts, n_images)
            out[fam] = float(anchor_loss(fb, fa, mask))
        print(f"{fam}: relative squared distance of the no-think features {out[fam]:.4f} ({len(items)} prompts)")
    if args.json:
        result = {"what": "relative squared distance of no-think features (tokens after </think>), B against A",
                  "a": args.a, "b": args.b, "n_per_family": args.n, "distance": out,
                  **provenance(argv)}
        atomic_write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
