"""Evaluate a ThinkGen checkpoint on held-out ThinkGen-Nano prompts.

    thinkgen eval nano --model DIR --out DIR [--seeds 4] [--n-per-family 24] [--steps N] [--device cpu]

For every image family (composition per GenEval category + compound, reasoning, text, editing, reflection) the
held-out prompts (``prompts.generate(..., split="heldout")``) are generated with think off and on, ``--seeds`` noise
seeds each (image j of a prompt uses seed + j, and the k-th repeat of a prompt -- small categories have only 2-4
held-out specs -- starts at seed + k * seeds; thinking is greedy unless the model's defaults say otherwise), and
every image is scored by the parser (``scoring.score``) and, when wrong, its failure named (``scoring.failure_mode``:
binding, missing, count, colour, ...; counted per category in the summary). With think on, the MLLM's answer after
``</think>`` is also scored as text (``scoring.score_answer``: "answer accuracy"). Understanding: ``pipeline.chat`` on
the input scene, scored by ``score_answer`` (greedy, seed-independent).

Writes ``results.json`` (atomically; summary + per-image records), ``results.md`` (table) and ``grid.png``
(per family: input | think off | think on, first prompts, seed 0).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from thinkgen.mllm import split_thoughts
from thinkgen.nano.prompts import FAMILIES, GENEVAL_CATEGORIES, IMAGE_FAMILIES, generate, sample_uid
from thinkgen.nano.parser import parse
from thinkgen.nano.scoring import FAILURE_MODES, aggregate, check_scene, failure_mode, score_answer

EVAL_SEED = 1234          # prompt-drawing seed of the held-out set
MODES = ("off", "on")


def _defaults(model: str | None) -> dict:
    from thinkgen.pipeline import default_model_path

    root = Path(model) if model else default_model_path()
    try:
        return json.loads((root / "model_index.json").read_text()).get("thinkgen_defaults", {})
    except Exception:
        return {}


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def sample_seeds(samples, seeds: int, base: int) -> list[int]:
    """First noise seed of every sample: ``base`` for a prompt's first occurrence, ``base + k * seeds`` for its k-th
    repeat. Small categories repeat prompts (composition/two_object has 2 held-out specs); a repeat with the same seeds
    would redraw the same images and count them again, so each repeat draws new noise instead."""
    seen: dict[str, int] = {}
    out = []
    for s in samples:
        key = sample_uid(s)
        k = seen.get(key, 0)
        seen[key] = k + 1
        out.append(base + k * seeds)
    return out


def run_images(pipe, samples, mode: str, seeds: int, d: dict, args) -> list[dict]:
    """Generate ``seeds`` images per sample (batched) with think ``mode``; returns one record per image."""
    recs = []
    first = sample_seeds(samples, seeds, args.seed)
    step = max(1, args.batch_size // seeds)
    for i0 in range(0, len(samples), step):
        chunk = samples[i0:i0 + step]
        prompts = [s.prompt for s in chunk]
        images = [[s.input_image()] if s.input_scene is not None else [] for s in chunk]
        kw = dict(think=mode, height=64, width=64, num_inference_steps=args.steps or d.get("num_inference_steps", 20),
                  text_guidance_scale=args.text_guidance, image_guidance_scale=args.image_guidance,
                  num_images_per_prompt=seeds, seed=first[i0:i0 + len(chunk)],
                  max_think_tokens=d.get("max_think_tokens", 160), max_answer_tokens=d.get("max_answer_tokens", 48))
        if "think_do_sample" in d:
            kw["think_do_sample"] = d["think_do_sample"]
        if args.negative_prompt is not None:
            kw["negative_prompt"] = args.negative_prompt
        out = pipe(prompts, images=images if any(images) else None, **kw)
        for b, s in enumerate(chunk):
            ans = score_answer(s, out.instructions[b]) if mode == "on" else None
            for j in range(seeds):
                img = out.images[b * seeds + j]
                scene = parse(img)
                r = check_scene(s, scene)
                recs.append({"family": s.family, "category": s.category, "think": mode,
                             "seed": out.seeds[b * seeds + j], "uid": sample_uid(s), "prompt": s.prompt,
                             "instruction": out.instructions[b], "thoughts": out.thoughts[b],
                             "correct": bool(r["correct"]), "score": float(r["score"]),
                             "failure": failure_mode(s, scene, r), "reasons": list(r["details"].get("reasons", [])),
                             "answer_correct": None if ans is None else bool(ans["correct"]),
                             "_sample": s, "_image": img if j == 0 else None})
    return recs


UNDERSTANDING_TOKENS = 128   # room for a think trace that describes the scene before the short answer


def run_understanding(pipe, samples) -> list[dict]:
    recs = []
    for s in samples:
        text = pipe.chat(s.question or s.prompt, images=[s.input_image()], max_new_tokens=UNDERSTANDING_TOKENS)
        thoughts, answer = split_thoughts(text)
        r = score_answer(s, answer)
        recs.append({"family": "understanding", "category": s.category, "think": "n/a", "seed": None,
                     "uid": sample_uid(s), "prompt": s.question or s.prompt, "instruction": answer,
                     "thoughts": thoughts,
                     "correct": bool(r["correct"]), "score": float(r["score"]), "answer_correct": None,
                     "_sample": s, "_image": None})
    return recs


def summarise(records: list[dict]) -> dict:
    out: dict = {}
    for mode in MODES:
        rs = [r for r in records if r["think"] == mode]
        out[f"think_{mode}"] = aggregate([(r["_sample"], r) for r in rs])
        ans = [r for r in rs if r["answer_correct"] is not None and r["seed"] is not None]
        if ans:
            per: dict = {}
            for r in ans:
                per.setdefault(r["family"], []).append(1.0 if r["answer_correct"] else 0.0)
            out[f"think_{mode}"]["answer_accuracy"] = {f: sum(v) / len(v) for f, v in per.items()}
    und = [r for r in records if r["family"] == "understanding"]
    if und:
        out["understanding"] = aggregate([(r["_sample"], r) for r in und]).get("understanding", {})
    fails = failure_counts(records)
    if fails:
        out["failures"] = fails
    return out


def failure_counts(records: list[dict]) -> dict:
    """{"think_off": {"composition/position": {"binding": 31, ...}, ...}, ...}: how the failed images failed
    (``scoring.failure_mode``), per think mode and family/category; records without a ``failure`` are skipped."""
    out: dict = {}
    for r in records:
        if r.get("failure"):
            per = out.setdefault(f"think_{r['think']}", {}).setdefault(f"{r['family']}/{r['category']}", {})
            per[r["failure"]] = per.get(r["failure"], 0) + 1
    return out


def markdown(summary: dict, meta: dict) -> str:
    off, on = summary.get("think_off", {}), summary.get("think_on", {})

    def g(d, fam, cat=None):
        f = d.get(fam)
        if not f:
            return "-"
        v = f["overall"] if cat is None else f["categories"].get(cat)
        return "-" if v is None else f"{v:.3f}"

    lines = [f"# ThinkGen-Nano evaluation", "",
             f"Command: `{meta['command']}`  ",
             f"Model: `{meta['model']}`; machine: {meta['machine']}; date: {meta['date']}; "
             f"{meta['n_per_family']} held-out prompts per family ({meta['n_composition']} composition) x "
             f"{meta['seeds']} seeds; "
             f"{meta['steps']} Euler steps, text CFG {meta['text_guidance']}, image CFG {meta['image_guidance']}; "
             f"eval time {meta['seconds']} s.", "",
             "| family | category | think off | think on | distinct prompts |", "| --- | --- | --- | --- | --- |"]

    def k(fam, cat=None):
        f = off.get(fam) or on.get(fam) or {}
        sp = f.get("distinct_prompts", {})
        if cat is None and fam == "composition":     # the GenEval mean rests on its six categories only
            sp = {c: v for c, v in sp.items() if c in GENEVAL_CATEGORIES}
        return "-" if not sp else str(sp.get(cat, "-") if cat else sum(sp.values()))
    for fam in IMAGE_FAMILIES:
        if not (off.get(fam) or on.get(fam)):
            continue
        cats = [c for c in (off.get(fam) or on.get(fam) or {}).get("categories", {})]
        if fam == "composition":
            cats = [c for c in GENEVAL_CATEGORIES if c in cats] + [c for c in cats if c not in GENEVAL_CATEGORIES]
        for c in cats:
            lines.append(f"| {fam} | {c} | {g(off, fam, c)} | {g(on, fam, c)} | {k(fam, c)} |")
        label = "**overall (GenEval mean)**" if fam == "composition" else "**overall**"
        lines.append(f"| {fam} | {label} | {g(off, fam)} | {g(on, fam)} | {k(fam)} |")
    u = summary.get("understanding")
    if u:
        for c, v in u["categories"].items():
            lines.append(f"| understanding | {c} | {v:.3f} | (chat) | {u.get('distinct_prompts', {}).get(c, '-')} |")
        n_und = sum(u.get("distinct_prompts", {}).values()) or "-"
        lines.append(f"| understanding | **overall** | {u['overall']:.3f} | (chat) | {n_und} |")
    fails = summary.get("failures", {})
    if fails:
        lines += ["", "How the failed images failed (`scoring.failure_mode`; counts of images):", "",
                  "| think | family/category | " + " | ".join(FAILURE_MODES) + " |",
                  "| --- | --- | " + " | ".join("---" for _ in FAILURE_MODES) + " |"]
        for mode, per in fails.items():
            for fc, counts in sorted(per.items()):
                lines.append(f"| {mode[6:]} | {fc} | " + " | ".join(str(counts.get(m, 0)) for m in FAILURE_MODES)
                             + " |")
    aa = on.get("answer_accuracy")
    if aa:
        lines += ["", "MLLM answer accuracy with think on (the instruction written after `</think>`, scored as text):",
                  "", "| family | answer accuracy |", "| --- | --- |"]
        lines += [f"| {f} | {v:.3f} |" for f, v in sorted(aa.items())]
    return "\n".join(lines) + "\n"


def image_grid(records: list[dict], per_family: int = 4):
    """Rows: families x first prompts; columns: input (editing/reflection), think off, think on (seed 0)."""
    from PIL import Image, ImageDraw

    cell, pad = 128, 4
    rows = []
    for fam in IMAGE_FAMILIES:
        prompts = []
        for r in records:
            if r["family"] == fam and r["_image"] is not None and r["prompt"] not in prompts:
                prompts.append(r["prompt"])
        for p in prompts[:per_family]:
            row = {"fam": fam, "prompt": p}
            for r in records:
                if r["family"] == fam and r["prompt"] == p and r["_image"] is not None:
                    row[r["think"]] = r["_image"]
                    row["correct_" + r["think"]] = r["correct"]
                    s = r["_sample"]
                    if s.input_scene is not None:
                        row["input"] = s.input_image()
            rows.append(row)
    W = 3 * (cell + pad) + pad
    H = max(1, len(rows)) * (cell + pad + 12) + pad
    grid = Image.new("RGB", (W, H), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for i, row in enumerate(rows):
        y = pad + i * (cell + pad + 12)
        draw.text((pad, y), f"{row['fam']}: {row['prompt'][:60]}", fill=(0, 0, 0))
        for k, key in enumerate(("input", "off", "on")):
            im = row.get(key)
            if im is None:
                continue
            x = pad + k * (cell + pad)
            grid.paste(im.resize((cell, cell), Image.NEAREST), (x, y + 12))
            if key in ("off", "on"):
                ok = row.get("correct_" + key)
                draw.rectangle([x, y + 12, x + cell - 1, y + 12 + cell - 1], outline=(0, 160, 0) if ok else (200, 0, 0))
    return grid


def evaluate(args, pipe=None) -> dict:
    """Score ``args.model`` (or an already built ``pipe``, e.g. one whose painter was swapped) on held-out prompts."""
    from thinkgen.pipeline import ThinkGenPipeline

    t0 = time.time()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    d = _defaults(args.model)
    if pipe is None:
        pipe = ThinkGenPipeline.from_pretrained(args.model, device=args.device)
        if getattr(args, "quantize", None):
            pipe.quantize(args.quantize)
        if getattr(args, "compile", False):
            pipe.compile()
    fams = [f for f in (args.families.split(",") if args.families else FAMILIES)]
    records: list[dict] = []
    for fam in fams:
        n = args.n_composition if fam == "composition" and args.n_composition else args.n_per_family
        samples = generate(fam, n, seed=EVAL_SEED, split="heldout")
        tf = time.time()
        if fam == "understanding":
            records += run_understanding(pipe, samples)
        else:
            for mode in args.think.split(","):
                records += run_images(pipe, samples, mode, args.seeds, d, args)
        print(f"eval {fam}: {len(samples)} prompts in {time.time() - tf:.1f} s", flush=True)
    summary = summarise(records)
    meta = {"command": args.command or "thinkgen eval nano " + " ".join(args.argv), "model": str(args.model or "(shipped)"),
            "machine": f"{platform.machine()} {os.cpu_count()} CPU cores, torch {torch.__version__}, "
                       f"{'cuda' if str(args.device).startswith('cuda') else 'cpu'}",
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "seeds": args.seeds,
            "n_per_family": args.n_per_family, "n_composition": args.n_composition or args.n_per_family, "steps": args.steps or d.get("num_inference_steps", 20),
            "text_guidance": args.text_guidance, "image_guidance": args.image_guidance,
            "compile": bool(getattr(args, "compile", False)), "quantize": getattr(args, "quantize", None),
            "seconds": round(time.time() - t0, 1)}
    clean = [{k: v for k, v in r.items() if not k.startswith("_")} for r in records]
    _atomic_write(out / "results.json", json.dumps({"meta": meta, "summary": summary, "records": clean},
                                                   indent=1, default=str) + "\n")
    _atomic_write(out / "results.md", markdown(summary, meta))
    grid = image_grid(records)
    tmp = out / f".grid.png.tmp-{os.getpid()}"
    grid.save(tmp, format="PNG")
    os.replace(tmp, out / "grid.png")
    print(markdown(summary, meta))
    return summary


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="thinkgen eval nano", description="Score a checkpoint on held-out nano prompts.")
    p.add_argument("--model", default=None, help="checkpoint folder (default: the shipped nano model)")
    p.add_argument("--out", required=True, help="output folder (results.json, results.md, grid.png)")
    p.add_argument("--seeds", type=int, default=4, help="noise seeds per prompt")
    p.add_argument("--n-per-family", type=int, default=24, help="held-out prompts per family")
    p.add_argument("--n-composition", type=int, default=0,
                   help="held-out composition prompts (default: --n-per-family); 7 categories, round robin")
    p.add_argument("--families", default="", help="comma list (default: all)")
    p.add_argument("--think", default="off,on", help="think modes to run: off,on")
    p.add_argument("--steps", type=int, default=0, help="Euler steps (default: the model's)")
    p.add_argument("--text-guidance", type=float, default=4.0)
    p.add_argument("--image-guidance", type=float, default=2.0)
    p.add_argument("--negative-prompt", default=None, help="default: the pipeline's (as the CLI)")
    p.add_argument("--batch-size", type=int, default=32, help="images per pipeline call")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--compile", action="store_true", help="torch.compile the DiT blocks (a one-off compile, then "
                   "faster sampling; scores match eager to float rounding)")
    p.add_argument("--quantize", default=None, choices=["int8", "float8", "int4"],
                   help="weight-only quantization of the MLLM and the DiT (thinkgen.quantization)")
    p.add_argument("--command", default="", help=argparse.SUPPRESS)
    return p


def main(argv=None) -> int:
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    evaluate(parse_args(argv))
    return 0


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Parse and check ``thinkgen eval nano`` arguments (a bad value exits 2 naming it, before anything is written)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    for flag, value, lo in (("--seeds", args.seeds, 1), ("--n-per-family", args.n_per_family, 1),
                            ("--n-composition", args.n_composition, 0), ("--batch-size", args.batch_size, 1),
                            ("--steps", args.steps, 0)):
        if value < lo:
            parser.error(f"{flag}={value} must be >= {lo}")
    args.argv = argv
    return args


if __name__ == "__main__":
    raise SystemExit(main())
