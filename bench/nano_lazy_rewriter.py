"""The pre-RL MLLM of the third SepGRPO proof (bench/results/sepgrpo_nano_proof3.md): a "lazy rewriter".

In the paper the MLLM of stages 1-3 is the untuned Qwen3-VL-8B-Thinking: it reasons, but what it writes after
``</think>`` is not yet an instruction the painter can draw (it often hands the request on as it came), and stage 4
(MLLM-GRPO) is what teaches it to write the resolved, painter-ready instruction. The nano MLLM SFT, in contrast,
always resolves (its answer is the canonical instruction), so its remaining reasoning errors are wrong facts, which
60-220 GRPO steps do not fix (bench/results/sepgrpo_nano_proof2.md). This script builds the paper's starting point
on nano: it continues the SFT MLLM of a ``thinkgen train nano`` run on that run's own SFT set in which a share
(``--lazy-rate``) of the reasoning records keep their thought but answer with the request verbatim ("as many stars as
a triangle has corners" instead of "three stars"). Every other record is unchanged.

    python bench/nano_lazy_rewriter.py --run runs/nano2h --start runs/proof_stage3/model --out runs/lazy \
        --lazy-rate 0.6 --steps 400 --lr 5e-4

``--run``: a ``thinkgen train nano`` output folder (its ``data/sft.jsonl`` and ``mllm/run2/final`` or
``mllm/run/final``, or instead ``--mllm-start``'s ``mllm/`` + ``processor/``); ``--start``: a released-layout model
whose DiT, VAE and scheduler are kept (the stage-3 checkpoint the DiT of which was trained on that SFT MLLM).
Writes ``OUT/sft_lazy.jsonl`` (image paths point into the run's data folder), ``OUT/run`` (trainer checkpoints,
``final/``) and ``OUT/model`` (released layout: the start model with the new MLLM). Deterministic on CPU with 1
thread. The DiT is then adapted to the new MLLM's features by a short supervised stage-3 continuation
(``bench/nano_dit_focus.py``), as in the paper, where stages 1-3 train the DiT on the frozen MLLM's features.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
from pathlib import Path

import torch


def lazy_records(src: Path, rate: float, seed: int) -> tuple[list[dict], int, int]:
    """The SFT records of ``src`` with ``rate`` of the reasoning ones answering the request verbatim; image paths
    made absolute (they are relative to ``src``'s folder)."""
    rng = random.Random(seed)
    out, n, k = [], 0, 0
    for line in src.read_text().splitlines():
        r = json.loads(line)
        if "input_images" in r:
            r["input_images"] = [str((src.parent / p).resolve()) for p in r["input_images"]]
        if "output_image" in r:
            r["output_image"] = str((src.parent / r["output_image"]).resolve())
        if r.get("family") == "reasoning":
            n += 1
            if rng.random() < rate:
                r["answer"] = r["instruction"]
                k += 1
        out.append(r)
    return out, n, k


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, required=True, help="a `thinkgen train nano` output folder")
    ap.add_argument("--start", type=Path, required=True, help="released-layout model whose DiT / VAE are kept")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--mllm-start", type=Path, default=None,
                    help="continue this released-layout folder's mllm/ + processor/ instead of the run's SFT MLLM "
                         "(e.g. the --start model itself, when its MLLM is the one the DiT was trained on)")
    ap.add_argument("--lazy-rate", type=float, default=0.6)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--seed", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    if not 0.0 <= args.lazy_rate <= 1.0:
        ap.error(f"--lazy-rate={args.lazy_rate} must be in [0, 1] (e.g. 0.6)")
    if args.steps < 1 or args.threads < 1:
        ap.error(f"--steps={args.steps} and --threads={args.threads} must be >= 1")
    if not args.lr > 0:
        ap.error(f"--lr={args.lr} must be > 0 (e.g. --lr 5e-4)")
    sft = args.run / "data" / "sft.jsonl"
    if not sft.is_file():
        ap.error(f"--run {args.run} has no data/sft.jsonl: pass a `thinkgen train nano --out DIR` folder")
    if args.mllm_start is not None:
        if not all((args.mllm_start / d).is_dir() for d in ("mllm", "processor")):
            ap.error(f"--mllm-start {args.mllm_start} has no mllm/ and processor/: pass a released-layout model folder")
        mllm_start = args.mllm_start
    else:
        mllm_start = next((p for p in (args.run / "mllm" / "run2" / "final", args.run / "mllm" / "run" / "final")
                           if (p / "mllm").is_dir()), None)
        if mllm_start is None:
            ap.error(f"--run {args.run} has no mllm/run2/final or mllm/run/final: its MLLM SFT stage has not finished")
    if not (args.start / "model_index.json").is_file():
        ap.error(f"--start {args.start} has no model_index.json: pass a released-layout folder")
    if (args.out / "model").exists():
        ap.error(f"{args.out / 'model'} exists: pick a new --out (results are never overwritten)")

    from thinkgen.nano.models import sizes
    from thinkgen.train.config import mllm_sft
    from thinkgen.train.mllm_sft import train_mllm

    args.out.mkdir(parents=True, exist_ok=True)
    records, n, k = lazy_records(sft, args.lazy_rate, args.seed)
    data = args.out / "sft_lazy.jsonl"
    tmp = data.with_name(f".{data.name}.tmp-{os.getpid()}")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    os.replace(tmp, data)
    print(f"{k} of {n} reasoning records answer with the request verbatim")

    recipe = json.loads((args.run / "recipe.json").read_text()) if (args.run / "recipe.json").is_file() else {}
    side = sizes(recipe.get("sizes", "quick")).vision_side
    torch.set_num_threads(args.threads)
    final = train_mllm(mllm_sft(
        model_dir=str(mllm_start), data=[str(data)], output_dir=str(args.out / "run"), seed=args.seed + 1, lr=args.lr,
        warmup_steps=20, lr_schedule="cosine", min_lr_ratio=0.05, max_steps=args.steps, batch_size=16,
        max_seq_len=512, max_image_pixels=side * side, freeze_vision=True, weight_decay=0.0, device="cpu",
        log_every=25, save_every=1000, keep_last=1, shuffle_buffer=2000))
    tmp = args.out / f".model.tmp-{os.getpid()}"
    shutil.copytree(args.start, tmp, ignore=shutil.ignore_patterns("mllm", "manifest.json"))
    shutil.copytree(Path(final) / "mllm", tmp / "mllm")
    os.replace(tmp, args.out / "model")
    print(f"wrote {args.out / 'model'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
