"""Is there a DiT-GRPO signal? The share of tied groups under different rollout settings, on nano.

A DiT-GRPO group carries an advantage only when its G images do not all get the same reward. With one initial
noise per group (``same_noise``) and SDE noise on a short window of steps, the images of a group can be nearly the
same, so most groups tie and most steps train nothing. For train-split prompts of the given scenarios this script
renders G images per prompt exactly as ``dit_step`` does (``mllm_conditions`` -> ``collect_image_rollouts`` with a
window drawn per prompt) under each setting of ``--grid`` and reports the mean reward, the share of groups whose
rewards are not all equal (the groups that train) and the mean within-group reward spread. A benchmark script, not
a test.

    python bench/nano_dit_signal.py --model runs/nano_proof5/checkpoints/step-00000080/model \\
        --scenarios composition/two_object,composition/position,composition/compound --n 8 --group 6 \\
        --grid 0.7:3:same,1.0:3:same,0.7:5:same,0.7:3:indep
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse_grid(text: str) -> list[tuple[float, int, bool]]:
    out = []
    for part in text.split(","):
        try:
            nl, ws, kind = part.split(":")
            if kind not in ("same", "indep"):
                raise ValueError(kind)
            out.append((float(nl), int(ws), kind == "same"))
        except ValueError:
            raise SystemExit(f"--grid entry {part!r} must be NOISE:WINDOW:same|indep, e.g. 0.7:3:same")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="a released-layout checkpoint folder")
    ap.add_argument("--scenarios", default="composition/two_object,composition/position,composition/compound")
    ap.add_argument("--n", type=int, default=8, help="train-split prompts per scenario")
    ap.add_argument("--group", type=int, default=6)
    ap.add_argument("--grid", default="0.7:3:same,1.0:3:same,0.7:5:same,0.7:3:indep",
                    help="settings NOISE_LEVEL:WINDOW_SIZE:same|indep (one initial noise per group or per image)")
    ap.add_argument("--think", default="off", choices=["off", "on"])
    ap.add_argument("--num-steps", type=int, default=10)
    ap.add_argument("--window-max-start", type=int, default=5, help="window starts are drawn in [0, this)")
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--guidance", type=float, default=4.0)
    ap.add_argument("--reward", default="nano")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None, help="also write the table as JSON here")
    args = ap.parse_args(argv)
    grid = parse_grid(args.grid)
    if args.n < 1 or args.group < 2 or args.threads < 1 or args.window_max_start < 1:
        ap.error(f"need --n >= 1, --group >= 2, --threads >= 1, --window-max-start >= 1 (got {args.n}, "
                 f"{args.group}, {args.threads}, {args.window_max_start})")
    for nl, ws, _ in grid:
        if not (nl >= 0 and 1 <= ws <= args.num_steps):
            ap.error(f"--grid: noise level {nl} must be >= 0 and window {ws} within 1..--num-steps ({args.num_steps})")
    if not (Path(args.model) / "model_index.json").is_file():
        ap.error(f"--model {args.model}: no model_index.json there (give a released-layout checkpoint folder)")

    import torch

    from thinkgen.pipeline import ThinkGenPipeline
    from thinkgen.rl.config import DiTPhaseConfig
    from thinkgen.rl.dit_grpo import collect_image_rollouts, mllm_conditions
    from thinkgen.rl.rewards import build_reward
    from thinkgen.rl.rollout import nano_prompt_items

    torch.set_num_threads(args.threads)
    pipe = ThinkGenPipeline.from_pretrained(args.model, device="cpu")
    reward = build_reward(args.reward)
    scen = [s for s in args.scenarios.split(",") if s]
    items = nano_prompt_items(scen, "train", args.n, args.seed)
    G = args.group
    rows = []
    for noise_level, window, same in grid:
        pc = DiTPhaseConfig(group_size=G, num_steps=args.num_steps, resolution=args.resolution,
                            guidance_scale=args.guidance, noise_level=noise_level, window_size=window,
                            window_range=[0, min(args.window_max_start, args.num_steps - window + 1)],
                            same_noise=same, think=args.think, train_timesteps="window")
        t0 = time.time()
        by_scen: dict[str, list[list[float]]] = {}
        for p, it in enumerate(items):
            rng = random.Random(f"{args.seed}|{p}")
            start = rng.randrange(*pc.window_range)
            enc = mllm_conditions(pipe.mllm, [it], pc.think, pc.max_think_tokens, pc.max_answer_tokens)
            roll = collect_image_rollouts(pipe, pipe.transformer, [it], enc, pc,
                                          [[args.seed * 100003 + p * G + g for g in range(G)]],
                                          pc.trained_steps(start))
            meta = [it.reward_meta(thought=(enc.thoughts[0] if enc.thoughts else ""),
                                   instruction=enc.instructions[0])] * G
            r = reward(roll.images, [it.prompt] * G, meta)
            by_scen.setdefault(it.scenario, []).append([float(x) for x in r])
        for name, groups in list(by_scen.items()) + [("all", [g for gs in by_scen.values() for g in gs])]:
            flat = [x for g in groups for x in g]
            mixed = [g for g in groups if max(g) - min(g) > 1e-6]
            spread = sum(torch.tensor(g).std().item() for g in groups) / len(groups)
            rows.append({"noise_level": noise_level, "window": window, "same_noise": same, "scenario": name,
                         "groups": len(groups), "reward": sum(flat) / len(flat),
                         "mixed_frac": len(mixed) / len(groups), "within_std": spread,
                         "seconds": round(time.time() - t0, 1)})
    print("| noise level | window | initial noise | scenario | groups | reward | mixed groups | within-group std |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['noise_level']} | {r['window']} | {'per group' if r['same_noise'] else 'per image'} | "
              f"{r['scenario']} | {r['groups']} | {r['reward']:.3f} | {r['mixed_frac']:.2f} | {r['within_std']:.3f} |")
    if args.json:
        tmp = args.json.with_name(f".{args.json.name}.tmp")
        tmp.write_text(json.dumps({"argv": sys.argv[1:] if argv is None else argv, "rows": rows}, indent=1) + "\n")
        tmp.replace(args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
