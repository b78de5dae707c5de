"""DiT-GRPO step time with and without ``compile: true`` (a benchmark, not a test).

Runs ``thinkgen train sepgrpo`` twice, DiT phase only, from the same model with the same seed: once eager and once
with the DiT blocks compiled (``SepGRPOConfig.compile``). Each run is its own process, alone on the machine; the
per-step ``step_time_s`` and rewards come from the runs' ``logs/metrics.jsonl`` (equal rewards = the same rollouts).
The first steps of the compiled run include the one-off compilation (one graph per block kind, grad mode, mask
kind; a fresh inductor cache unless ``--warm-cache``); "steady" is the median of the steps after ``--warm``.

    python bench/bench_dit_step.py                                   # shipped nano, proof 13's DiT phase, 6 steps
    python bench/bench_dit_step.py --model DIR --config configs/sepgrpo_nano_proof13.yaml --steps 8 --warm 3

Writes JSON (machine, versions, date, command, per-step times) to bench/results/dit_step_<tag>.json.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from provenance import provenance   # bench/provenance.py

ROOT = Path(__file__).resolve().parent.parent


def run_variant(args, compile_: bool, out_dir: Path) -> dict:
    cmd = [sys.executable, "-m", "thinkgen.cli", "train", "sepgrpo", "--config", str(args.config),
           f"--output_dir={out_dir}", "--schedule=[dit]", "--resume=never", "--eval_before=false",
           f"--dit.steps={args.steps}", f"--seed={args.seed}", "--save_every=0", "--progress=false",
           "--eval_max_prompts=8", "--eval_seeds=1", "--eval_images=0", f"--compile={str(compile_).lower()}"]
    if args.model:
        cmd.append(f"--model_dir={args.model}")
    env = dict(os.environ)
    if not args.warm_cache:   # a fresh inductor cache: the first steps pay the whole compilation
        env["TORCHINDUCTOR_CACHE_DIR"] = str(out_dir.parent / "inductor_cache")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        raise SystemExit(f"{' '.join(cmd)} failed with exit code {proc.returncode}")
    rows = [json.loads(x) for x in (out_dir / "logs" / "metrics.jsonl").read_text().splitlines() if x.strip()]
    rows = [r for r in rows if "step_time_s" in r]
    times = [round(r["step_time_s"], 2) for r in rows]
    return {"compile": compile_, "wall_s": round(wall, 1), "step_time_s": times,
            "reward": [round(r["dit/reward"], 6) for r in rows],
            "steady_median_s": round(statistics.median(times[args.warm:]), 2) if len(times) > args.warm else None,
            "command": " ".join(cmd)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="pipeline folder (default: the shipped nano model)")
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "sepgrpo_nano_proof13.yaml")
    ap.add_argument("--steps", type=int, default=6, help="DiT steps per run")
    ap.add_argument("--warm", type=int, default=2, help="steps excluded from the steady-state median")
    ap.add_argument("--seed", type=int, default=17)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    ap.add_argument("--tag", default="nano_cpu")
    ap.add_argument("--warm-cache", action="store_true",
                    help="use the default inductor cache (earlier compilations count) instead of a fresh one")
    args = ap.parse_args(argv)
    if args.steps <= args.warm:
        ap.error(f"--steps={args.steps} must exceed --warm={args.warm}")
    if args.model is None:
        from thinkgen.pipeline import default_model_path

        args.model = str(default_model_path())
    res = []
    with tempfile.TemporaryDirectory(prefix="bench_dit_step_") as tmp:
        for compile_ in (False, True):
            r = run_variant(args, compile_, Path(tmp) / ("compile" if compile_ else "eager"))
            print(f"compile={compile_}: steps {r['step_time_s']} s, steady median {r['steady_median_s']} s, "
                  f"wall {r['wall_s']} s", flush=True)
            res.append(r)
    eager, comp = res
    meta = {
        **provenance(argv), "cpu_count": os.cpu_count(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "model": args.model,
        "config": str(args.config.relative_to(ROOT) if args.config.is_relative_to(ROOT) else args.config),
        "steps": args.steps, "warm": args.warm, "seed": args.seed,
        "inductor_cache": "default (may be warm)" if args.warm_cache else "fresh",
    }
    summary = {"steady_speedup": round(eager["steady_median_s"] / comp["steady_median_s"], 3),
               "same_rewards": eager["reward"] == comp["reward"],
               "max_reward_diff": max(abs(a - b) for a, b in zip(eager["reward"], comp["reward"]))}
    print(summary)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"dit_step_{args.tag}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"meta": meta, "summary": summary, "runs": res}, indent=2) + "\n")
    tmp.replace(path)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
