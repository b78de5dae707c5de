"""What weight-only quantization does to ThinkGen-Nano: weight bytes, held-out scores and time, per scheme.

For each ``--schemes`` entry (``none`` = unquantized) it loads the model, quantizes the MLLM and the DiT
(``pipe.quantize``), records the bytes of both before / after, then runs ``thinkgen eval nano`` on the chosen families
with the same prompts and seeds, and keeps the scores and the wall time. A benchmark script, not a test.

    python bench/bench_quantize.py --out bench/results/quantize_nano_cpu.json
"""
import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

FAMILIES = {"composition": ["--families", "composition", "--n-composition", "140", "--think", "off"],
            "reasoning": ["--families", "reasoning", "--n-per-family", "160", "--think", "on"],
            "text": ["--families", "text", "--n-per-family", "64", "--think", "off,on"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="checkpoint (default: the shipped nano)")
    ap.add_argument("--schemes", nargs="+", default=["none", "int8", "float8", "int4"])
    ap.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)

    import torch

    from bench.provenance import provenance, write_result
    from thinkgen.nano.evaluate import evaluate, parse_args
    from thinkgen.pipeline import ThinkGenPipeline

    rows = []
    for scheme in args.schemes:
        pipe = ThinkGenPipeline.from_pretrained(args.model, device="cpu")
        row = {"scheme": scheme}
        if scheme != "none":
            t = time.perf_counter()
            pipe.quantize(scheme)
            row["quantize_s"] = round(time.perf_counter() - t, 2)
            row["bytes"] = {c: {k: pipe.quantization[c][k] for k in ("bytes_before", "bytes_after", "quantized")}
                            for c in ("mllm", "transformer")}
        for fam in args.families:
            with tempfile.TemporaryDirectory() as tmp:
                ev = parse_args(["--out", tmp, "--seeds", str(args.seeds), *FAMILIES[fam]]
                                + (["--model", args.model] if args.model else []))
                t = time.perf_counter()
                summary = evaluate(ev, pipe=pipe)
                row[fam] = {"seconds": round(time.perf_counter() - t, 1),
                            "scores": {mode: summary[mode][fam]["overall"]
                                       for mode in ("think_off", "think_on") if fam in summary.get(mode, {})}}
        print(json.dumps(row), flush=True)
        rows.append(row)
    result = {"meta": {**provenance(argv), "model": args.model or "shipped nano", "cpu_count": os.cpu_count(),
                       "torch_threads": torch.get_num_threads(), "seeds": args.seeds,
                       "families": {f: " ".join(FAMILIES[f]) for f in args.families}},
              "rows": rows}
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
