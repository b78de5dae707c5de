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
import os
import shutil
import sys
from pathlib import Path

import torch


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
    if (args.out / "mllm").exists():
        ap.error(f"{args.out / 'mllm'} exists; choose a new --out")

    from thinkgen.mllm import ThinkGenMLLM
    from thinkgen.nano.evaluate import EVAL_SEED
    from thinkgen.nano.prompts import generate
    from thinkgen.train.models import expand_mllm_layers

    old = ThinkGenMLLM.from_pretrained(args.start / "mllm", args.start / "processor")
    n = old.model.config.text_config.num_hidden_layers
    if n < 3:
        ap.error(f"the MLLM has {n} decoder layers; block expansion needs >= 3")
    model, order = expand_mllm_layers(old.model, args.add)
    new = ThinkGenMLLM(model, old.processor)
    prompts = [s.prompt for s in generate("composition", 8, seed=EVAL_SEED, split="heldout")]
    qs = generate("understanding", 8, seed=EVAL_SEED, split="heldout")
    with torch.no_grad():
        fa, fb = old.encode_instructions(prompts).features, new.encode_instructions(prompts).features
    drift = float((fa - fb).abs().max())
    a = old.think([s.question for s in qs], [[s.input_image()] for s in qs], mode="chat", do_sample=False,
                  max_think_tokens=160, max_answer_tokens=16).instructions
    b = new.think([s.question for s in qs], [[s.input_image()] for s in qs], mode="chat", do_sample=False,
                  max_think_tokens=160, max_answer_tokens=16).instructions
    if drift > 1e-5 or a != b:
        raise SystemExit(f"the deepened model differs (feature max diff {drift:.2e}, answers equal {a == b}); "
                         "nothing written")
    tmp = args.out / ".deepen.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    new.save_pretrained(tmp / "mllm", tmp / "processor")
    args.out.mkdir(parents=True, exist_ok=True)
    for d in ("mllm", "processor"):
        os.replace(tmp / d, args.out / d)
    tmp.rmdir()
    print(f"{n} -> {n + args.add} layers (order {order}); feature max diff {drift:.2e}; "
          f"{len(a)} greedy answers equal; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
