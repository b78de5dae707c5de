"""Deepen the nano MLLM's language model by block expansion: new decoder layers, each a copy of the layer before it
with its output projections (``self_attn.o_proj``, ``mlp.down_proj``) set to zero, so every new layer adds nothing to
the residual stream and the deepened model computes exactly what the old one did (LLaMA-Pro style expansion). The
new layers go after layers ``0 .. n-3``, spread evenly, never between the last two: the DiT reads the raw output of
layer ``n-2`` and the final norm, and those keep their inputs, so the DiT features are unchanged too. Training then
continues (e.g. ``bench/nano_focus_phase.py --start OUT``) with the extra capacity.

It can also widen every decoder layer (``thinkgen.train.models.widen_mllm``): ``--head-factor K`` gives K times the
attention heads (query and key/value heads alike, head size unchanged) and ``--intermediate N`` an MLP of N units;
the new heads' and units' output projections are zero, so again nothing changes until training. The residual width
(which the DiT reads) stays. ``--binding-tokens`` appends one token per colour-kind binding word ("cyanstar"; the
thoughts of ``bench/nano_focus_phase.py --binding``), each starting as the mean of its two words' embeddings.

    python bench/nano_deepen.py --start thinkgen/assets/nano --out runs/deep6 --add 2
    python bench/nano_deepen.py --start thinkgen/assets/nano --out runs/wide --head-factor 2 --intermediate 512

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
    ap.add_argument("--add", type=int, default=0, help="number of new decoder layers")
    ap.add_argument("--head-factor", type=int, default=1, help="multiply the attention (and key/value) heads by K")
    ap.add_argument("--intermediate", type=int, default=None, help="new MLP width (>= the model's)")
    ap.add_argument("--binding-tokens", action="store_true",
                    help="add one token per colour-kind binding word (thinkgen.nano.vision.BINDING_WORDS)")
    args = ap.parse_args(argv)
    if args.add < 0 or args.head_factor < 1:
        ap.error(f"--add={args.add} must be >= 0 and --head-factor={args.head_factor} >= 1")
    if args.add == 0 and args.head_factor == 1 and args.intermediate is None and not args.binding_tokens:
        ap.error("nothing to grow: give --add N (new layers), --head-factor K (> 1), --intermediate N and/or "
                 "--binding-tokens")
    missing = [str(args.start / d) for d in ("mllm", "processor") if not (args.start / d).is_dir()]
    if missing:
        ap.error(f"missing {missing}: --start must hold mllm/ and processor/ (e.g. thinkgen/assets/nano)")
    if args.out.exists() and any(args.out.iterdir()):
        ap.error(f"{args.out} exists and is not empty; choose a new --out")

    from thinkgen.nano.train import expanded_mllm

    try:
        expanded_mllm(args.start, args.out, args.add, args.head_factor, args.intermediate, args.binding_tokens)
    except ValueError as e:          # fewer than 3 layers, a smaller MLP, binding words already tokens
        ap.error(str(e))
    return 0


if __name__ == "__main__":
    sys.exit(main())
