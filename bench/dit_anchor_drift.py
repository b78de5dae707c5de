"""How far DiT-GRPO checkpoints' painters have drifted from their reference, and how hard the velocity anchor pulls.

For each SepGRPO trainer checkpoint taken in a DiT phase: the run is rebuilt resumed from it (nothing is trained or
written but the run's config.yaml under a scratch folder), the reference DiT (LoRA: the base weights; full fine-
tuning: the frozen copy) draws n held-out nano prompts per family (Euler, the phase's rollout schedule, size and CFG,
think mode ``dit.think``), and for each family it reports
  - distance: the velocity anchor's quantity (``thinkgen.rl.dit_grpo.anchor_terms``: mean over the steps of
    sum |v - v_ref|^2 / sum |v_ref|^2 along the reference's trajectories), policy against reference;
  - grad_norm_w1: the norm of its gradient over the phase's trainable parameters at weight 1, the number to set
    against the Flow-GRPO gradient norm (``dit/grad_norm`` in metrics.jsonl) when choosing ``dit.anchor_weight``.

    python bench/dit_anchor_drift.py --config configs/sepgrpo_nano_proof9.yaml --model_dir STAGE3_MODEL \
        --checkpoint seed7=RUN/checkpoints/step-00000100 --families text,editing --n 16 --json OUT.json

Config overrides (``--set dit.x=y``) and ``allow_config_change`` are passed to the resumed run as in training.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

from thinkgen.checkpoint import atomic_write_json

from provenance import provenance   # bench/provenance.py


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True, help="the run's SepGRPO config (YAML)")
    ap.add_argument("--model_dir", required=True, help="the run's starting pipeline folder (model_dir)")
    ap.add_argument("--checkpoint", action="append", required=True, metavar="NAME=PATH",
                    help="a trainer checkpoint taken in a DiT phase (repeatable)")
    ap.add_argument("--families", default="text,editing")
    ap.add_argument("--n", type=int, default=16, help="held-out prompts per family")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra config override")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.n < 1:
        ap.error(f"--n must be >= 1, got {args.n}")
    ckpts = []
    for spec in args.checkpoint:
        name, sep, path = spec.partition("=")
        if not sep or not name:
            ap.error(f"--checkpoint {spec!r}: expected NAME=PATH, e.g. seed7=runs/x/checkpoints/step-00000100")
        if not Path(path, "trainer_state", "state.json").is_file():
            ap.error(f"--checkpoint {spec!r}: {path} is not a SepGRPO trainer checkpoint (no trainer_state/state.json)")
        ckpts.append((name, path))
    families = [f.strip() for f in args.families.split(",") if f.strip()]

    from thinkgen.rl.config import load_config
    from thinkgen.rl.dit_grpo import anchor_terms, mllm_conditions, reference_trajectories, velocity_anchor_update
    from thinkgen.rl.rollout import nano_prompt_items
    from thinkgen.rl.sepgrpo import build_run, close_run

    out: dict[str, dict] = {}
    for name, path in ckpts:
        with tempfile.TemporaryDirectory() as scratch:
            cfg = load_config(args.config, [f"--model_dir={args.model_dir}", f"--output_dir={scratch}",
                                            f"--resume={path}", "--progress=false", "--eval_before=false",
                                            *[f"--{s}" for s in args.set]])
            if "dit" not in cfg.schedule:
                ap.error(f"{args.config} has no DiT phase")
            run = build_run(cfg)
            try:
                ph, pipe, pc = run.phases["dit"], run.pipe, cfg.dit
                if ph.reference is None:
                    ap.error("the DiT phase keeps no reference (dit.kl_coef 0 and dit.anchor_weight 0); "
                             "pass --set dit.kl_coef=0.01")
                res = {}
                for fam in families:
                    items = nano_prompt_items([fam], "heldout", args.n, 0)
                    enc = mllm_conditions(pipe.mllm, items, pc.think, pc.max_think_tokens, pc.max_answer_tokens)
                    anchor = reference_trajectories(pipe, ph.reference, items, enc, pc, list(range(len(items))))
                    with torch.no_grad():
                        dist = sum(float(t) for t in anchor_terms(ph.policy, anchor, pc)) / len(anchor.steps)
                    ph.optimizer.zero_grad(set_to_none=True)
                    velocity_anchor_update(ph.policy, anchor, pc, 1.0)
                    grad = torch.sqrt(sum((p.grad.float() ** 2).sum() for _, p in ph.trainable if p.grad is not None))
                    ph.optimizer.zero_grad(set_to_none=True)
                    res[fam] = {"n": len(items), "distance": dist, "grad_norm_w1": float(grad)}
                    print(f"{name} {fam}: distance {dist:.4f}, |grad| at weight 1 {float(grad):.4f} "
                          f"({len(items)} prompts)", flush=True)
                out[name] = {"checkpoint": path, **res}
            finally:
                close_run(run)
    if args.json:
        result = {"what": "velocity-anchor distance of each checkpoint's DiT from its reference along the "
                          "reference's Euler trajectories (held-out nano prompts), and |grad| of it at weight 1",
                  "config": args.config, "model_dir": args.model_dir, "n_per_family": args.n, "results": out,
                  **provenance(argv)}
        atomic_write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
