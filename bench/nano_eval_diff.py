"""Compare `thinkgen eval nano` results: accuracy per family / category, the change, and how much of it noise could be.

    python bench/nano_eval_diff.py BEFORE/results.json AFTER/results.json [MORE/results.json ...] [--think off,on]
        [--json OUT.json]

For every (family, category, think mode) present in all files: accuracy, the number of images, the number of
distinct prompts the accuracy rests on, and for each later file the change against the first with a standard error
from image-level (seed) noise, sqrt(p1(1-p1)/n1 + p0(1-p0)/n0). The composition "GenEval mean" (mean of the six
GenEval categories) carries the propagated error sqrt(sum se_c^2) / 6. That error says whether the model changed on
*these* prompts; it says nothing of how a category with two distinct held-out prompts generalises, which is why the
distinct-prompt count is printed next to it. A benchmark helper, not a test.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from thinkgen.nano.prompts import GENEVAL_CATEGORIES  # noqa: E402


def load(path: Path) -> dict:
    """{(think, family, category): (correct, images, distinct prompts)} from one results.json."""
    recs = json.loads(path.read_text())["records"]
    acc: dict = defaultdict(lambda: [0, 0, set()])
    for r in recs:
        k = (r["think"], r["family"], r["category"])
        acc[k][0] += bool(r["correct"])
        acc[k][1] += 1
        acc[k][2].add(r.get("uid") or r["prompt"])
    return {k: (c, n, len(u)) for k, (c, n, u) in acc.items()}


def rows(tables: list[dict], modes: list[str]) -> list[dict]:
    keys = sorted(set.intersection(*[set(t) for t in tables]), key=lambda k: (k[0], k[1], k[2]))
    out = []
    for mode in modes:
        fams = sorted({k[1] for k in keys if k[0] == mode})
        for fam in fams:
            cats = [k[2] for k in keys if k[0] == mode and k[1] == fam]
            for cat in cats + ["overall"]:
                row = {"think": mode, "family": fam, "category": cat, "acc": [], "n": [], "prompts": [], "se": []}
                for t in tables:
                    if cat != "overall":
                        c, n, u = t[(mode, fam, cat)]
                        p = c / n
                        row["acc"].append(p); row["n"].append(n); row["prompts"].append(u)
                        row["se"].append(math.sqrt(p * (1 - p) / n))
                        continue
                    if fam == "composition":
                        ge = [t[(mode, fam, c)] for c in GENEVAL_CATEGORIES if (mode, fam, c) in t]
                        ps = [c / n for c, n, _ in ge]
                        row["acc"].append(sum(ps) / len(ps))
                        row["se"].append(math.sqrt(sum(p * (1 - p) / n for p, (_, n, _) in zip(ps, ge))) / len(ps))
                        row["n"].append(sum(n for _, n, _ in ge)); row["prompts"].append(sum(u for _, _, u in ge))
                    else:
                        c = sum(t[(mode, fam, x)][0] for x in cats)
                        n = sum(t[(mode, fam, x)][1] for x in cats)
                        p = c / n
                        row["acc"].append(p); row["n"].append(n); row["se"].append(math.sqrt(p * (1 - p) / n))
                        row["prompts"].append(sum(t[(mode, fam, x)][2] for x in cats))
                row["delta"] = [a - row["acc"][0] for a in row["acc"][1:]]
                row["delta_se"] = [math.sqrt(s ** 2 + row["se"][0] ** 2) for s in row["se"][1:]]
                out.append(row)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", nargs="+", type=Path, help="results.json files; the first is the baseline")
    ap.add_argument("--think", default="off,on", help="think modes to compare")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")
    args = ap.parse_args(argv)
    if len(args.results) < 2:
        ap.error("give at least two results.json files (the first is the baseline)")
    for p in args.results:
        if not p.is_file():
            ap.error(f"no such results file: {p} (the results.json that `thinkgen eval nano --out DIR` writes)")
    tables = [load(p) for p in args.results]
    rs = rows(tables, [m for m in args.think.split(",") if m])
    names = [p.parent.name for p in args.results]
    print("| think | family | category | prompts | " + " | ".join(names) + " | "
          + " | ".join(f"{n} - {names[0]}" for n in names[1:]) + " |")
    print("|" + " --- |" * (4 + 2 * len(names) - 1))
    for r in rs:
        label = "**GenEval mean**" if r["family"] == "composition" and r["category"] == "overall" else r["category"]
        accs = " | ".join(f"{a:.3f}" for a in r["acc"])
        ds = " | ".join(f"{d:+.3f} ± {s:.3f}" for d, s in zip(r["delta"], r["delta_se"]))
        print(f"| {r['think']} | {r['family']} | {label} | {r['prompts'][0]} | {accs} | {ds} |")
    if args.json:
        tmp = args.json.with_name(f".{args.json.name}.tmp")
        tmp.write_text(json.dumps({"files": [str(p) for p in args.results], "rows": rs}, indent=1) + "\n")
        tmp.replace(args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
