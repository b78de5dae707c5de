"""Several nano understanding phase-3 continuations side by side (one GPU or CPU), each sized to one wall-clock
budget, then each scored on the same held-out questions. A benchmark script for a lent GPU, not a test.

    python bench/nano_focus_sweep.py --out OUT --start thinkgen/assets/nano --anchor ANCHOR --device cuda \
        --budget-s 300 --variant "name=V1,lr=3e-4" --variant "name=V2,lr=3e-4,categories=count+count+exists+..."

Each ``--variant`` is ``key=value`` pairs for bench/nano_focus_phase.py (``lr``, ``think_weight``, ``vqa_ratio``,
``data_seed``, ``n_qa``, ``categories`` joined by ``+``). Steps:

1. the captions + generation records of the eye stages (``--und DIR``, or made here by ``thinkgen train nano
   --stages data,und_data``, the recipe's own seeds);
2. each variant's fresh focus questions (``nano_focus_phase.py --data-only``), all at once;
3. a 120-step calibration of every variant at once (same contention as the real runs), read off the trainer's
   ``samples_per_s``, so each run's steps fit ``--budget-s`` with its cosine schedule intact;
4. the runs, all at once; 5. ``bench/nano_understanding_hop.py --n EVAL_N`` on a copy of ``--start`` with each run's
   MLLM (and on ``--start`` itself), all at once on the CPU cores.

Writes ``OUT/sweep.json`` (variants, steps, rates, per-category accuracy, seconds) and ``OUT/<name>.safetensors``
(each run's MLLM weights; the config is ``--start``'s).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PHASE = [sys.executable, str(ROOT / "bench" / "nano_focus_phase.py")]
KEYS = {"name", "lr", "think_weight", "vqa_ratio", "data_seed", "n_qa", "categories", "seed"}


def parse_variant(text: str) -> dict:
    v = dict(kv.split("=", 1) for kv in text.split(",") if kv)
    bad = sorted(set(v) - KEYS)
    if bad or "name" not in v:
        raise ValueError(f"--variant {text!r}: keys {bad} unknown or name missing; keys: {sorted(KEYS)}")
    for k, kind in (("lr", float), ("think_weight", float), ("vqa_ratio", float), ("data_seed", int),
                    ("n_qa", int), ("seed", int)):
        try:
            if k in v:
                kind(v[k])
        except ValueError:
            raise ValueError(f"--variant {text!r}: {k}={v[k]!r} is not a {kind.__name__}") from None
    from thinkgen.nano.prompts import CATEGORIES

    unknown = sorted({c for c in v.get("categories", "").split("+") if c} - set(CATEGORIES["understanding"]))
    if unknown:
        raise ValueError(f"--variant {text!r}: categories {unknown} unknown; expected some of "
                         f"{CATEGORIES['understanding']} joined by +")
    return v


def phase_args(v: dict, out: Path, start: Path, anchor: Path, und: Path, device: str, threads: int) -> list[str]:
    a = ["--out", str(out), "--start", str(start), "--anchor", str(anchor), "--und", str(und), "--device", device,
         "--threads", str(threads), "--data-seed", v.get("data_seed", "97"), "--n-qa", v.get("n_qa", "40000"),
         "--lr", v.get("lr", "3e-4"), "--think-weight", v.get("think_weight", "0.5"),
         "--vqa-ratio", v.get("vqa_ratio", "0.7"), "--seed", v.get("seed", "11")]
    if v.get("categories"):
        a += ["--categories", v["categories"].replace("+", ",")]
    return a


def run_all(cmds: dict[str, list[str]], logs: Path, env: dict, timeout: float) -> dict[str, int]:
    procs = {k: subprocess.Popen(c, stdout=open(logs / f"{k}.log", "w"), stderr=subprocess.STDOUT, env=env)
             for k, c in cmds.items()}
    t0, rc = time.time(), {}
    for k, p in procs.items():
        try:
            rc[k] = p.wait(timeout=max(1.0, timeout - (time.time() - t0)))
        except subprocess.TimeoutExpired:
            p.kill()
            rc[k] = -9
    return rc


def rate(metrics: Path) -> float | None:
    """Steps per second of the newest metrics.jsonl line (batch 16)."""
    if not metrics.is_file():
        return None
    rows = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()]
    sps = [r["train/samples_per_s"] for r in rows if "train/samples_per_s" in r]
    return sps[-1] / 16.0 if sps else None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--start", type=Path, default=ROOT / "thinkgen" / "assets" / "nano")
    ap.add_argument("--anchor", type=Path, required=True, help="the vision-stage MLLM (mllm/ + processor/)")
    ap.add_argument("--und", type=Path, default=None, help="captions.jsonl + sft_gen.jsonl (default: made here)")
    ap.add_argument("--variant", action="append", default=[], required=True)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--budget-s", type=float, default=300.0, help="wall-clock seconds of the training runs")
    ap.add_argument("--max-steps", type=int, default=30000)
    ap.add_argument("--eval-n", type=int, default=576)
    ap.add_argument("--threads", type=int, default=3, help="CPU threads per process")
    args = ap.parse_args(argv)
    try:
        variants = [parse_variant(t) for t in args.variant]
    except ValueError as e:
        ap.error(str(e))
    names = [v["name"] for v in variants]
    if len(set(names)) != len(names) or any(not n.replace("_", "").isalnum() for n in names):
        ap.error(f"variant names {names} must be distinct letters / digits / _")
    if args.budget_s <= 0 or args.eval_n < 1 or args.threads < 1:
        ap.error("--budget-s, --eval-n and --threads must be > 0")
    for p in (args.start / "mllm", args.anchor / "mllm"):
        if not p.is_dir():
            ap.error(f"missing {p}: --start and --anchor must hold mllm/ + processor/")

    out = args.out
    (out / "logs").mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    report: dict = {"meta": {"command": " ".join([Path(sys.argv[0]).name] + (argv or sys.argv[1:])),
                             "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                             "device": args.device}, "seconds": {}, "variants": {}}
    t = time.time()

    def lap(stage: str) -> None:
        nonlocal t
        report["seconds"][stage] = round(time.time() - t, 1)
        t = time.time()
        print(f"[sweep] {stage}: {report['seconds'][stage]} s", flush=True)
        (out / "sweep.json").write_text(json.dumps(report, indent=2) + "\n")

    und = args.und
    if und is None:
        subprocess.run([sys.executable, "-m", "thinkgen.nano.train", "--out", str(out / "R"), "--preset", "quick",
                        "--stages", "data,und_data", "--set", "understand3_steps=0", "--jobs", "1"],
                       check=True, env=env, stdout=open(out / "logs" / "und.log", "w"), stderr=subprocess.STDOUT)
        und = out / "R" / "data_und"
    lap("und_data")
    base = {v["name"]: phase_args(v, out / v["name"], args.start, args.anchor, und, args.device, args.threads)
            for v in variants}
    rc = run_all({n: PHASE + a + ["--data-only"] for n, a in base.items()}, out / "logs", env, 600)
    if any(rc.values()):
        raise SystemExit(f"focus data failed: {rc}")
    lap("focus_data")
    cal = {}
    for n, a in base.items():
        (out / f"cal_{n}").mkdir(exist_ok=True)
        if not (out / f"cal_{n}" / "data").exists():
            os.symlink((out / n / "data").resolve(), out / f"cal_{n}" / "data")
        cal[f"cal_{n}"] = PHASE + [x if x != str(out / n) else str(out / f"cal_{n}") for x in a] + ["--steps", "120"]
    run_all(cal, out / "logs", env, 300)
    rates = {n: rate(out / f"cal_{n}" / "mllm" / "logs" / "metrics.jsonl") for n in names}
    if any(r is None for r in rates.values()):
        raise SystemExit(f"calibration gave no rate: {rates}; see {out / 'logs'}")
    for n in names:
        shutil.rmtree(out / f"cal_{n}")
    lap("calibration")
    steps = {n: max(200, min(args.max_steps, int(rates[n] * args.budget_s * 0.9) // 50 * 50)) for n in names}
    for v in variants:
        report["variants"][v["name"]] = {"spec": v, "rate_it_s": round(rates[v["name"]], 2), "steps": steps[v["name"]]}
    rc = run_all({n: PHASE + a + ["--steps", str(steps[n])] for n, a in base.items()}, out / "logs", env,
                 args.budget_s * 1.6 + 60)
    for n in names:
        report["variants"][n]["rc"] = rc[n]
    lap("train")
    cands, cmds = {}, {}
    for n in ["start"] + [n for n in names if rc[n] == 0]:
        c = out / f"cand_{n}"
        if n != "start":
            shutil.copytree(args.start, c, dirs_exist_ok=True)
            shutil.rmtree(c / "mllm")
            shutil.copytree(out / n / "mllm" / "final" / "mllm", c / "mllm")
            shutil.copy(c / "mllm" / "model.safetensors", out / f"{n}.safetensors")
        cands[n] = args.start if n == "start" else c
        cmds[f"hop_{n}"] = [sys.executable, str(ROOT / "bench" / "nano_understanding_hop.py"), "--model", str(cands[n]),
                            "--n", str(args.eval_n), "--threads", str(args.threads), "--out", str(out / f"hop_{n}.json")]
    run_all(cmds, out / "logs", env, 900)
    for n in cands:
        f = out / f"hop_{n}.json"
        if f.is_file():
            s = json.loads(f.read_text())["summary"]
            report["variants"].setdefault(n, {})["hop"] = {k: round(v["own"], 4) for k, v in s.items()}
            print(f"[sweep] {n}: " + " ".join(f"{k} {v['own']:.3f}" for k, v in s.items()), flush=True)
    lap("eval")
    return 0


if __name__ == "__main__":
    sys.exit(main())
