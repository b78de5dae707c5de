"""Deepen the nano MLLM's language model by block expansion: new decoder layers, each a copy of the layer before it
with its output projections (``self_attn.o_proj``, ``mlp.down_proj``) set to zero, so every new layer adds nothing to
the residual stream and the deepened model computes exactly what the old one did (LLaMA-Pro style expansion). The
new layers go after layers ``0 .. n-3``, spread evenly, never between the last two: the DiT reads the raw output of
layer ``n-2`` and the final norm, and those keep their inputs, so the DiT features are unchanged too. Training then
continues (e.g. ``bench/nano_focus_phase.py --start OUT``) with the extra capacity.

    python bench/nano_deepen.py --start thinkgen/assets/nano --out runs/deep6 --add 2

``--start`` holds ``mllm/`` and ``processor/``; writes ``OUT/mllm`` and ``OUT/processor`` atomically and checks, before
writing, that the features of a few prompts and greedy answers are unchanged (refuses to write otherwise).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--start", type=Path, required=True, help="folder with mllm/ and processor/")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--add", type=int, required=True, help="number of new decoder layers")
    args = ap.parse_args(argv)
    if args.add < 1:
        ap.error(f"--add={args.add} must be >= 1")
    missing = [str(args.start / d) for d in ("mllm", "processor") if not (args.start / d).is_dir()]
    if missing:
        ap.error(f"missing {missing}: --start must hold mllm/ and processor/ (e.g. thinkgen/assets/nano)")
    if args.out.exists() and any(args.out.iterdir()):
        ap.error(f"{args.out} exists and is not empty; choose a new --out")

    from thinkgen.nano.train import expanded_mllm

    try:
        expanded_mllm(args.start, args.out, args.add)
    except ValueError as e:          # fewer than 3 layers
        ap.error(str(e))
    return 0


if __name__ == "__main__":
    sys.exit(main())
