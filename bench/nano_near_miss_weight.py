"""Up-weight the "near-miss" questions of a nano focus-VQA file: a where / exists / size / position question about a
(colour, kind) is a near miss when the scene holds an object that shares exactly one of the two (the case the shipped
MLLM gets wrong, bench/results/nano_understanding.md). Each near-miss record is written ``--weight`` times, every
other record once; the scene is read from the record's own caption (the think trace before `` ; ``). A benchmark
helper, not a test.

    python bench/nano_near_miss_weight.py OUT/data/vqa.jsonl H/data/vqa.jsonl --weight 3

The output goes next to a link to the input's ``images/`` folder (the records' image paths are relative).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from thinkgen.nano import vision as V


def caption_objects(think: str) -> list[tuple[str, str]]:
    """(colour, kind) of every object of a caption ``small red square top left , large blue circle centre , ...``."""
    out = []
    for entry in think.split(" ; ")[0].split(" , "):
        w = entry.split()
        if len(w) >= 3 and w[0] in ("small", "large"):
            out.append((w[1], w[2]))
    return out


def near_miss(question: str, think: str) -> bool:
    q = " ".join(question.split())
    if m := V._WHERE.match(q) or V._EXISTS.match(q) or V._SIZE.match(q):
        asked = [m.group(1, 2)]
    elif m := V._POSITION.match(q):
        asked = [m.group(1, 2), m.group(4, 5)]
    else:
        return False
    return any((c == ac) != (k == ak) for ac, ak in asked for c, k in caption_objects(think))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", type=Path)
    ap.add_argument("dst", type=Path)
    ap.add_argument("--weight", type=int, default=3)
    args = ap.parse_args(argv)
    if args.weight < 1:
        ap.error(f"--weight={args.weight} must be >= 1")
    if not args.src.is_file():
        ap.error(f"{args.src} is not a file (expected a focus-VQA vqa.jsonl)")
    if args.dst.exists():
        ap.error(f"{args.dst} exists; choose a new output file")
    lines = [ln for ln in args.src.read_text().splitlines() if ln.strip()]
    out, hits = [], 0
    for ln in lines:
        rec = json.loads(ln)
        k = args.weight if near_miss(rec["instruction"], rec["think"]) else 1
        hits += k > 1
        out += [ln] * k
    args.dst.parent.mkdir(parents=True, exist_ok=True)
    images = args.dst.parent / "images"
    if not images.exists():
        images.symlink_to((args.src.parent / "images").resolve())
    tmp = args.dst.with_name(args.dst.name + ".tmp")
    tmp.write_text("\n".join(out) + "\n")
    tmp.replace(args.dst)
    print(f"{len(lines)} records, {hits} near misses x {args.weight}: {len(out)} written to {args.dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
