"""One run of the nano understanding phase 3 ("focus thoughts") on an existing eye run folder: the commands that made
the shipped MLLM (bench/results/nano_understanding.md). The recipe stage ``understand3`` of ``thinkgen train nano``
runs the same trainer config (``eye_sft_fields``) from scratch; this script only lets the data seed, start model and
lr be named.

    python bench/nano_focus_phase.py --run R --out OUT --start MLLM_DIR --data-seed 79 --lr 5e-4 --steps 3000

``R`` is a ``thinkgen train nano`` run folder with the eye stages done (``R/mllm/vision`` is the anchor reference,
``R/data_und/{captions,sft_gen}.jsonl`` the other two data sources); ``MLLM_DIR`` holds ``mllm/`` + ``processor/``.
``--anchor DIR`` and ``--und DIR`` name those two apart (a folder with ``mllm/`` + ``processor/``, and one with
``captions.jsonl`` + ``sft_gen.jsonl``), for a machine without the eye run. ``--categories count,count,exists,...``
weights the question categories (a category named twice gets twice the share). Writes ``OUT/data/vqa.jsonl``
(``n_qa`` fresh train-split questions with focus thoughts) and ``OUT/mllm/final``; ``--data-only`` stops after the data.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, default=None)
    ap.add_argument("--anchor", type=Path, default=None, help="default RUN/mllm/vision")
    ap.add_argument("--und", type=Path, default=None, help="default RUN/data_und")
    ap.add_argument("--categories", default="", help="comma list of understanding categories (repeats = weight)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--data-only", action="store_true")
    ap.add_argument("--binding", action="store_true",
                    help="focus thoughts with binding words (start from `nano_deepen.py --binding-tokens`)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--start", type=Path, required=True)
    ap.add_argument("--data-seed", type=int, required=True)
    ap.add_argument("--n-qa", type=int, default=40000)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--think-weight", type=float, default=0.5)
    ap.add_argument("--vqa-ratio", type=float, default=0.6)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    # refuse bad input before anything is written
    for name in ("n_qa", "steps", "threads"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')}={getattr(args, name)} must be >= 1")
    if not args.lr > 0:
        ap.error(f"--lr={args.lr} must be > 0 (e.g. --lr 5e-4)")
    if not 0.0 < args.vqa_ratio < 0.9:
        ap.error(f"--vqa-ratio={args.vqa_ratio} must be in (0, 0.9): captions take 0.1, generation records the rest")
    if args.run is None and (args.anchor is None or args.und is None):
        ap.error("name --run (a `thinkgen train nano` folder with the eye stages done) or both --anchor and --und")
    anchor = args.anchor or args.run / "mllm" / "vision"
    und = args.und or args.run / "data_und"
    need = [anchor / "mllm", und / "captions.jsonl", und / "sft_gen.jsonl", args.start / "mllm",
            args.start / "processor"]
    missing = [str(p) for p in need if not p.exists()]
    if missing:
        ap.error(f"missing {missing}: --run must be a `thinkgen train nano` folder with the eye stages done (or "
                 "--anchor a folder with mllm/ + processor/ and --und one with captions.jsonl + sft_gen.jsonl) and "
                 "--start a folder with mllm/ and processor/")
    if args.binding:
        from thinkgen.nano.vision import BINDING_WORDS
        from thinkgen.processor import ThinkGenProcessor
        from thinkgen.train.models import is_one_token

        tok = ThinkGenProcessor.from_pretrained(args.start / "processor").tokenizer
        lacking = [w for w in BINDING_WORDS if not is_one_token(tok, w)]
        if lacking:
            ap.error(f"--binding needs the binding words as tokens, but {args.start}/processor lacks {lacking[:3]}...: "
                     f"first run `python bench/nano_deepen.py --start {args.start} --out NEW --binding-tokens`")
    from thinkgen.nano.prompts import CATEGORIES

    cats = tuple(c for c in args.categories.split(",") if c) or None
    bad = sorted(set(cats or ()) - set(CATEGORIES["understanding"]))
    if bad:
        ap.error(f"--categories names {bad}; expected some of {CATEGORIES['understanding']}")

    from thinkgen.nano.train import RECIPES, eye_sft_fields
    from thinkgen.nano.vision import write_understanding_data
    from thinkgen.train.config import mllm_sft
    from thinkgen.train.mllm_sft import train_mllm

    torch.set_num_threads(args.threads)
    data = args.out / "data"
    if not (data / "vqa.jsonl").is_file():
        write_understanding_data(data, args.n_qa, 0, seed=args.data_seed, focus=True, categories=cats,
                                 binding=args.binding)
    if args.data_only:
        return 0
    cfg = mllm_sft(**eye_sft_fields(RECIPES["quick"], 3, args.start, data / "vqa.jsonl", und,
                                    args.out / "mllm", anchor, seed=args.seed, lr=args.lr,
                                    steps=args.steps, think_weight=args.think_weight, device=args.device,
                                    vqa_ratio=args.vqa_ratio))
    print(train_mllm(cfg))
    return 0


if __name__ == "__main__":
    sys.exit(main())
