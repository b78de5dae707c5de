"""DiT-GRPO rollout timing: ``collect_image_rollouts`` with and without the refined-text cache (a benchmark, not a test).

``sample()`` refines the text of each CFG branch set once per sampling run (``sampling.BranchCache`` +
``models.dit.ContextCache``) instead of once per denoising step. This script times the same rollout batch both
ways, alternating, on the nano model with LoRA adapters as in a DiT phase, and checks that the two give identical
states and log-probs.

    python bench/bench_rollouts.py                                  # shipped nano, proof 8/9's rollout shape
    python bench/bench_rollouts.py --model DIR --prompts 16 --group 12 --threads 1 --iters 3

Writes JSON (machine, versions, date, command, timings) to bench/results/rollouts_<tag>.json.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="pipeline folder (default: the shipped nano model)")
    ap.add_argument("--prompts", type=int, default=4, help="prompts per rollout batch")
    ap.add_argument("--group", type=int, default=12, help="images per prompt (G)")
    ap.add_argument("--steps", type=int, default=10, help="denoising steps per rollout")
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--micro-batch", type=int, default=48)
    ap.add_argument("--guidance", type=float, default=4.0)
    ap.add_argument("--families", default="composition", help="comma-separated nano scenarios")
    ap.add_argument("--lora-rank", type=int, default=16, help="0: no adapters")
    ap.add_argument("--iters", type=int, default=3, help="timed repetitions of each variant (alternating)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    ap.add_argument("--tag", default="nano_cpu")
    args = ap.parse_args(argv)
    for name in ("prompts", "iters", "steps", "micro_batch"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.group < 2:
        ap.error(f"--group must be >= 2 (GRPO groups), got {args.group}")
    if args.lora_rank < 0:
        ap.error(f"--lora-rank must be >= 0 (0: no adapters), got {args.lora_rank}")
    if args.threads:
        torch.set_num_threads(args.threads)

    from thinkgen.pipeline import ThinkGenPipeline
    from thinkgen.rl.config import DiTPhaseConfig
    from thinkgen.rl.dit_grpo import collect_image_rollouts, mllm_conditions
    from thinkgen.rl.rollout import nano_prompt_items
    from thinkgen.train.models import add_lora

    pipe = ThinkGenPipeline.from_pretrained(args.model) if args.model else ThinkGenPipeline.from_pretrained()
    dit = pipe.transformer
    win = min(3, args.steps)   # proofs 8/9: a window of 3 SDE steps
    cfg = DiTPhaseConfig(group_size=args.group, think="off", num_steps=args.steps, resolution=args.resolution,
                         noise_level=1.5, guidance_scale=args.guidance, train_timesteps="window", window_size=win,
                         window_range=[0, args.steps - win + 1], micro_batch_size=args.micro_batch, lora_rank=max(args.lora_rank, 1),
                         lora_alpha=2.0 * max(args.lora_rank, 1))
    cfg.validate()
    if args.lora_rank > 0:
        add_lora(dit, cfg)
        with torch.no_grad():   # non-zero B so the adapters change the output, as after some training
            for name, p in dit.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.01, generator=torch.Generator().manual_seed(0))
    families = [f.strip() for f in args.families.split(",") if f.strip()]
    items = nano_prompt_items(families, "train", max(1, args.prompts // len(families)) + 1, seed=0)[: args.prompts]
    enc = mllm_conditions(pipe.mllm, items, "off", 16, 16)
    seeds = [[1000 * p + g for g in range(args.group)] for p in range(len(items))]

    def run(cached: bool):
        dit.supports_context_cache = cached
        t0 = time.perf_counter()
        roll = collect_image_rollouts(pipe, dit, items, enc, cfg, seeds, cfg.trained_steps(0))
        return time.perf_counter() - t0, roll

    run(True)   # warm-up
    times = {"cached": [], "uncached": []}
    rolls = {}
    for _ in range(args.iters):
        for name, cached in (("uncached", False), ("cached", True)):
            dt, rolls[name] = run(cached)
            times[name].append(dt)
    del dit.supports_context_cache
    same = (torch.equal(rolls["cached"].states, rolls["uncached"].states)
            and torch.equal(rolls["cached"].logps, rolls["uncached"].logps))
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "benchmark": "dit_grpo_rollouts",
        "date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python " + " ".join([sys.argv[0]] + (argv if argv is not None else sys.argv[1:])),
        "machine": {"platform": platform.platform(), "processor": platform.machine(), "cpus": os.cpu_count(),
                    "torch_threads": torch.get_num_threads()},
        "versions": {"python": platform.python_version(), "torch": torch.__version__},
        "model": args.model or "shipped nano",
        "shape": {"prompts": len(items), "group": args.group, "images": len(items) * args.group,
                  "steps": args.steps, "resolution": args.resolution, "micro_batch": args.micro_batch,
                  "guidance": args.guidance, "lora_rank": args.lora_rank, "families": families,
                  "text_tokens_max": int(enc.mask.sum(1).max()), "dit_prepad": dit.config.num_prepad_tokens},
        "seconds": times,
        "median_s": med,
        "speedup": med["uncached"] / med["cached"],
        "identical_states_and_logps": bool(same),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"rollouts_{args.tag}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(path)
    print(f"rollouts of {len(items)} x {args.group} images, {args.steps} steps at {args.resolution} px: "
          f"uncached {med['uncached']:.2f} s, cached {med['cached']:.2f} s, speed-up x{result['speedup']:.2f}; "
          f"identical: {same}; wrote {path}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
