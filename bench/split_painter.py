"""At which noise levels did a fine-tune change the painter? Sample with one DiT at high noise and another at low noise.

The nano evaluation (``thinkgen eval nano``) runs with a painter that is checkpoint HIGH's DiT while t < SPLIT and
checkpoint LOW's DiT from t >= SPLIT on (t ascends from 0 = noise to 1 = data; the CFG branches of one step always
run on one DiT). Everything else (MLLM, VAE, scheduler, defaults) is HIGH's, so the two checkpoints should differ in
the DiT only, as a SepGRPO DiT phase's final and its starting checkpoint do. Run it both ways round and compare with
``bench/nano_eval_diff.py``: the change that survives with the fine-tuned DiT at high noise only was made there.

    python bench/split_painter.py --high RUN/final --low START/model --split 0.714 --out OUT \\
        -- --seeds 2 --n-per-family 256 --n-composition 140 --families composition,text --think off

Arguments after ``--`` go to ``thinkgen eval nano`` (its --model and --out are set here). The 10-step nano rollout
grid at 64 px has t = 0, 0.217, 0.385, 0.517, 0.625, 0.714, ...; the 20-step inference grid contains those values,
so SPLIT = 0.714 puts rollout steps 0-4 (the ones ``dit.window_range: [0, 5]`` trains) on HIGH.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

from thinkgen.nano import evaluate as nano_eval  # noqa: E402
from thinkgen.pipeline import ThinkGenPipeline  # noqa: E402

from provenance import provenance  # noqa: E402  (bench/provenance.py)


class SplitPainter(torch.nn.Module):
    """A DiT stand-in: ``high`` for t < split, ``low`` for t >= split. All samples of one call share t (as in the
    sampling loop); a call mixing both sides is refused rather than split silently."""

    supports_context_cache = False   # the two DiTs refine the text differently: no shared cache

    def __init__(self, high: torch.nn.Module, low: torch.nn.Module, split: float):
        super().__init__()
        for key in ("in_channels", "patch_size", "text_feat_dim"):
            a, b = getattr(high.config, key, None), getattr(low.config, key, None)
            if a != b:
                raise ValueError(f"the two DiTs differ in {key} ({a} vs {b}): split only checkpoints of one model")
        self.high, self.low, self.split = high, low, float(split)
        self.config = high.config

    def forward(self, x, t, *args, **kwargs):
        on_high = t.reshape(-1) < self.split
        if bool(on_high.all()):
            return self.high(x, t, *args, **kwargs)
        if not bool(on_high.any()):
            return self.low(x, t, *args, **kwargs)
        raise ValueError(f"one DiT call mixes t on both sides of split {self.split}: {t.reshape(-1).tolist()}")


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    own, rest = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--high", required=True, help="checkpoint folder whose DiT paints t < split (and the rest)")
    ap.add_argument("--low", required=True, help="checkpoint folder whose DiT paints t >= split")
    ap.add_argument("--split", type=float, required=True, help="t in (0, 1]; 0 = noise, 1 = data")
    ap.add_argument("--out", required=True, help="output folder (results.json, results.md, grid.png)")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(own)
    if not (math.isfinite(args.split) and 0.0 < args.split <= 1.0):
        ap.error(f"--split={args.split} must be in (0, 1] (t = 0 is noise, 1 is data), e.g. --split 0.714")
    for flag, fix in (("--model", "name the checkpoints with --high and --low"),
                      ("--out", "pass --out before '--'"), ("--device", "pass --device before '--'")):
        if any(a == flag or a.startswith(flag + "=") for a in rest):
            ap.error(f"{flag} after '--' is set by split_painter.py: {fix}")
    eargs = nano_eval.parse_args(["--model", args.high, "--out", args.out, "--device", args.device] + rest)
    for flag, path in (("--high", args.high), ("--low", args.low)):
        if not (Path(path) / "model_index.json").is_file():
            ap.error(f"{flag}={path} is not a ThinkGen checkpoint folder (no model_index.json)")
    eargs.command = provenance(argv)["command"]
    pipe = ThinkGenPipeline.from_pretrained(args.high, device=args.device)
    low = ThinkGenPipeline.from_pretrained(args.low, device=args.device)
    pipe.transformer = SplitPainter(pipe.transformer, low.transformer, args.split)
    nano_eval.evaluate(eargs, pipe=pipe)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
