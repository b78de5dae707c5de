"""One editing-weighted continuation of the nano DiT (the command that made the shipped DiT's last stage; results in
bench/results/nano_eval.md). It continues a released-layout checkpoint's DiT on a fresh train-split set weighted to
editing and text rendering (``thinkgen.nano.train.ALIGN_MIX``), 40 % of the pairs in the think-on feature format, with the text
features of the checkpoint's own MLLM (the one the painter reads at inference). MLLM, VAE and scheduler are copied.

    python bench/nano_dit_focus.py --start MODEL_DIR --out OUT --data-seed 4141 --steps 4000 --lr 3e-4

``--start-ema`` starts from a DiT trainer's ``final/`` folder's EMA weights (``transformer_ema/``), e.g. the stage-3
checkpoint of ``bench/results/sepgrpo_nano_proof2.md`` from ``runs/nano2h/dit2/final``.

Writes ``OUT/run`` (``data/``: ``--n-dit`` pairs + images; trainer checkpoints, ``final/``) and ``OUT/model``: the
released layout with the EMA transformer, ready for ``thinkgen eval nano --model OUT/model``. The recipe stage
``align`` of ``thinkgen train nano`` runs the same continuation (``thinkgen.nano.train.dit_align``) once, after the
eye stages, on the recipe's final MLLM.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

import torch

from thinkgen.nano.train import ALIGN_MIX   # family weights of the set (the recipe's ``align``)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--start", type=Path, required=True, help="released-layout model folder (model_index.json)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--data-seed", type=int, required=True)
    ap.add_argument("--n-dit", type=int, default=20000)
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--think-fraction", type=float, default=0.4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--mix", default="", help="family weights replacing ALIGN_MIX's, e.g. editing=8,text=2")
    ap.add_argument("--start-ema", action="store_true",
                    help="start from --start's transformer_ema/ (a trainer's final/ folder) instead of transformer/")
    args = ap.parse_args(argv)
    mix = dict(ALIGN_MIX)
    for item in filter(None, args.mix.split(",")):
        fam, _, w = item.partition("=")
        try:
            weight = float(w)
        except ValueError:
            weight = -1.0
        if fam.strip() not in mix or not weight >= 0:
            ap.error(f"--mix item {item!r}: expected FAMILY=WEIGHT with FAMILY in {sorted(mix)} and WEIGHT >= 0 "
                     "(e.g. --mix editing=8,text=2)")
        mix[fam.strip()] = weight
    if not sum(mix.values()) > 0:
        ap.error(f"--mix {args.mix!r} leaves every family weight at 0: give at least one family a weight > 0")
    for name in ("n_dit", "steps", "threads"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')}={getattr(args, name)} must be >= 1")
    if not args.lr > 0:
        ap.error(f"--lr={args.lr} must be > 0 (e.g. --lr 3e-4)")
    if not 0.0 <= args.think_fraction <= 1.0:
        ap.error(f"--think-fraction={args.think_fraction} must be in [0, 1] (e.g. 0.4)")
    if not (args.start / "model_index.json").is_file():
        ap.error(f"--start {args.start} has no model_index.json: pass a released-layout folder (e.g. thinkgen/assets/nano)")
    if (args.out / "model").exists():
        ap.error(f"{args.out / 'model'} exists: pick a new --out (results are never overwritten)")
    if args.start_ema and not (args.start / "transformer_ema").is_dir():
        ap.error(f"--start-ema: {args.start} has no transformer_ema/ (pass a DiT trainer's final/ folder, e.g. "
                 "runs/nano2h/dit2/final, or drop --start-ema)")
    if args.start_ema:     # the released layout with the EMA weights as transformer/, written once under OUT
        start = args.out / "start"
        if not (start / "model_index.json").is_file():
            tmp = args.out / f".start.tmp-{os.getpid()}"
            shutil.copytree(args.start, tmp, ignore=shutil.ignore_patterns("transformer", "transformer_ema"))
            shutil.copytree(args.start / "transformer_ema", tmp / "transformer")
            (tmp / "manifest.json").unlink(missing_ok=True)   # it listed the folders this copy leaves out
            os.replace(tmp, start)
        args.start = start

    from thinkgen.nano.train import dit_align

    torch.set_num_threads(args.threads)
    final = dit_align(args.start, args.out / "run", data_seed=args.data_seed, steps=args.steps, lr=args.lr,
                      n_dit=args.n_dit, batch_size=16, mix=mix, think_fraction=args.think_fraction, device="cpu")
    # released layout: the start's folders with the EMA transformer in place of transformer/
    tmp = args.out / f".model.tmp-{os.getpid()}"
    shutil.copytree(args.start, tmp)
    shutil.rmtree(tmp / "transformer")
    shutil.copytree(final / ("transformer_ema" if (final / "transformer_ema").is_dir() else "transformer"),
                    tmp / "transformer")
    os.replace(tmp, args.out / "model")
    print(f"wrote {args.out / 'model'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
