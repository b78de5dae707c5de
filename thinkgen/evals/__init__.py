"""Benchmark harness: ``thinkgen eval <benchmark> generate|score``.

Every benchmark has two steps, so that generation (the model, a GPU) and scoring (detectors, OCR, judges) can run
on different machines and be redone separately:

    thinkgen eval geneval generate --model M --out runs/geneval                    # images in the official layout
    thinkgen eval geneval score --images runs/geneval --detector DIR --clip DIR     # results.json + results.md

Benchmarks: geneval, dpg, cvtg, wise (text-to-image), imgedit, gedit, risebench (editing); see each module's
docstring for the data, the rules and how close the local observers are to the official ones.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import InvalidInputError

BENCHMARKS = ("geneval", "dpg", "cvtg", "wise", "imgedit", "gedit", "risebench")
DEFAULT_IMAGES = {"geneval": 4, "dpg": 4, "cvtg": 1, "wise": 1, "imgedit": 1, "gedit": 1, "risebench": 1}
TITLES = {"geneval": "GenEval", "dpg": "DPG-Bench", "cvtg": "CVTG-2K", "wise": "WISE", "imgedit": "ImgEdit-Bench",
          "gedit": "GEdit-Bench", "risebench": "RISEBench"}


DATA_HELP = {   # what --data is, per benchmark (DPG takes --prompts / --csv instead)
    "geneval": "evaluation_metadata.jsonl (default: the bundled copy)",
    "cvtg": "the CVTG-2K folder (CVTG/, CVTG-Style/)",
    "wise": "WISE_legacy/data (the three category JSON files)",
    "imgedit": "ImgEdit's Benchmark/Basic/basic_edit.json",
    "gedit": "a GEdit-Bench manifest.jsonl (`thinkgen eval gedit export`)",
    "risebench": "RISEBench's data_total.json (or the 360-item JSON)",
}


def _parser(bench: str) -> argparse.ArgumentParser:
    from ..cli import _add_model_args

    p = argparse.ArgumentParser(prog=f"thinkgen eval {bench}", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="step", required=True)
    g = sub.add_parser("generate", help="render the benchmark's prompts into its official folder layout")
    g.add_argument("--out", type=Path, required=True, help="image folder (resumable: finished prompts are skipped)")
    _add_model_args(g)                     # --model, --device, --dtype, --cpu-offload, --quantize, --lora: as generate
    g.add_argument("--compile", action="store_true", help="torch.compile the DiT blocks (pays off over many images)")
    g.add_argument("--think", default="off", choices=["off", "on", "auto"])
    g.add_argument("--images-per-prompt", type=int, default=DEFAULT_IMAGES[bench])
    g.add_argument("--seed", type=int, default=0, help="item i's images use seeds seed + i*n ... seed + i*n + n-1")
    g.add_argument("--batch-size", type=int, default=4, help="prompts per pipeline call")
    g.add_argument("--steps", type=int, default=None)
    g.add_argument("--height", type=int, default=None)
    g.add_argument("--width", type=int, default=None)
    g.add_argument("--text-guidance", type=float, default=None)
    g.add_argument("--limit", type=int, default=None, help="only the first N prompts (a smoke run)")
    s = sub.add_parser("score", help="score a folder of generated images")
    s.add_argument("--images", type=Path, required=True, help="the folder `generate` wrote")
    s.add_argument("--out", type=Path, default=None, help="where results.json / results.md go (default: --images)")
    s.add_argument("--device", default="cpu")
    for q in (g, s):
        if bench in DATA_HELP:
            q.add_argument("--data", required=bench != "geneval", default=None, help=DATA_HELP[bench])
        if bench == "imgedit":
            q.add_argument("--source-root", required=True, help="the folder basic_edit.json's image ids are relative to")
    if bench == "gedit":
        x = sub.add_parser("export", help="write manifest.jsonl + source images from the Hugging Face dataset")
        x.add_argument("--out", type=Path, required=True)
        x.add_argument("--dataset", default="stepfun-ai/GEdit-Bench")
    if bench == "dpg":
        g.add_argument("--prompts", required=True, help="DPG-Bench's prompts/ folder")
        s.add_argument("--csv", required=True, help="DPG-Bench's dpg_bench.csv")
        s.add_argument("--no-parity", action="store_true",
                       help="keep the CSV's first row and average categories over all crops (the official script "
                            "skips that row and uses the last crop)")
    if bench == "geneval":
        s.add_argument("--detector", required=True, help="local transformers detector (Mask2Former or DETR-like)")
        s.add_argument("--clip", required=True, help="local CLIP for the colour classifier (official: ViT-L/14)")
    if bench == "cvtg":
        s.add_argument("--clip", default=None, help="local CLIP for CLIPScore (optional)")
    if bench == "imgedit":
        s.add_argument("--judge-prompts", required=True, help="ImgEdit's Benchmark/Basic/prompts.json (the rubric)")
    if bench == "risebench":
        s.add_argument("--accuracy-before-fix", action="store_true",
                       help="accuracy as before the official fix of 2026-04 (consistency-free items never complete)")
        s.add_argument("--nan-truthy", action="store_true",
                       help="the official pandas quirk: items without a consistency_free value count as free")
    if bench in ("dpg", "wise", "imgedit", "gedit", "risebench"):
        s.add_argument("--judge-url", required=True, help="OpenAI-compatible base URL, e.g. http://localhost:8000/v1")
        s.add_argument("--judge-model", required=True, help="the model name the endpoint serves")
        s.add_argument("--judge-key-env", default="OPENAI_API_KEY", help="environment variable holding the API key")
        s.add_argument("--judge-workers", type=int, default=4, help="judge requests in flight at once")
    return p


def _generate(bench: str, args, argv) -> int:
    from ..cli import _load
    from .common import GenSettingsCLI, generate_items, run_meta

    if args.limit is not None and args.limit < 1:
        raise InvalidInputError(f"--limit must be >= 1, got {args.limit}")
    s = GenSettingsCLI(think=args.think, images_per_prompt=args.images_per_prompt, seed=args.seed,
                       batch_size=args.batch_size, height=args.height, width=args.width,
                       num_inference_steps=args.steps, text_guidance_scale=args.text_guidance)
    if bench == "geneval":
        from .geneval import items
        todo = items(args.out, s.images_per_prompt, args.data, args.limit)
    elif bench == "dpg":
        from .dpg import items
        todo = items(args.out, args.prompts, args.limit, s.images_per_prompt)
    elif bench == "cvtg":
        from .cvtg import items
        todo = items(args.out, args.data, args.limit, s.images_per_prompt)
    elif bench == "wise":
        from .wise import items
        todo = items(args.out, args.data, args.limit, s.images_per_prompt)
    elif bench == "imgedit":
        from .imgedit import items
        todo = items(args.out, args.data, args.source_root, args.limit, s.images_per_prompt)
    elif bench == "gedit":
        from .gedit import items
        todo = items(args.out, args.data, args.limit, s.images_per_prompt)
    else:
        from .risebench import items
        todo = items(args.out, args.data, args.limit, s.images_per_prompt)
    pipe = _load(args)
    counts = generate_items(pipe, todo, args.out, s, meta={**run_meta(argv), "benchmark": bench})
    print(json.dumps(counts))
    return 0


def _judge(args):
    from ..rl.rewards import OpenAIChatBackend

    from .common import AnswerOnly

    return AnswerOnly(OpenAIChatBackend(args.judge_url, args.judge_model, api_key_env=args.judge_key_env,
                                        max_tokens=2000, temperature=0.0))


def _score(bench: str, args, argv) -> int:
    from .common import run_meta, write_results

    if not args.images.is_dir():
        raise InvalidInputError(f"--images {args.images} is not a folder; point it at what `generate` wrote")
    meta = {**run_meta(argv), "benchmark": bench, "images": str(args.images)}
    gen = args.images / "thinkgen_generation.json"
    if gen.is_file():
        g = json.loads(gen.read_text())
        meta["generation"] = {k: g.get(k)
                              for k in ("model", "settings", "quantization", "loras", "command", "date_utc")}
    if bench == "geneval":
        from .geneval import ClipColourClassifier, TransformersDetector, score_folder, summarise

        det = TransformersDetector(args.detector, args.device)
        colour = ClipColourClassifier(args.clip, args.device)
        meta.update(detector=det.name, colour_clip=colour.name,
                    note="official detector: mmdet Mask2Former Swin-S; official colour CLIP: OpenAI ViT-L/14")
        records = score_folder(args.images, det, colour)
        summary = summarise(records)
        table = [(f"tag {t}", v) for t, v in summary["tags"].items()] + [("overall (mean of tags)", summary["overall"])]
    elif bench == "cvtg":
        from .cvtg import score_folder, summarise

        records, missing = score_folder(args.images, args.data, clip_dir=args.clip)
        meta.update(ocr="rapidocr (PP-OCR on onnxruntime); official: PaddleOCR en", clip=args.clip)
        summary = summarise(records, missing)
        table = [(f"{k} word accuracy", v["word_accuracy"]) for k, v in summary["subsets"].items()]
        table += [("word accuracy (micro)", summary["overall"]["word_accuracy"]), ("NED", summary["overall"]["ned"])]
        if "clip_score" in summary["overall"]:
            table.append(("CLIPScore", summary["overall"]["clip_score"]))
    elif bench == "dpg":
        from .dpg import load_questions, score_folder, summarise

        parity = not args.no_parity
        questions = load_questions(args.csv, parity=parity)
        judge = _judge(args)
        records, missing, failed = score_folder(args.images, questions, judge, parity=parity,
                                                workers=args.judge_workers)
        meta.update(vqa=f"{args.judge_model} at {args.judge_url}", parity=parity, note="official VQA: mPLUG-large")
        summary = summarise(records, missing, failed)
        table = [(f"L1 {k}", v) for k, v in summary["l1"].items()] + [("DPG-Bench", summary["dpg_score"])]
    elif bench == "imgedit":
        from .imgedit import score_folder, summarise

        records, missing, unparsed = score_folder(args.images, args.data, args.source_root, args.judge_prompts,
                                                  _judge(args), workers=args.judge_workers)
        meta.update(judge=f"{args.judge_model} at {args.judge_url}", judge_prompts=str(args.judge_prompts),
                    note="official judge: GPT-4o (later papers: GPT-4.1); open: ImgEdit-Judge")
        summary = summarise(records, missing, unparsed)
        table = [(f"type {k}", float(v)) for k, v in summary["types"].items()] + [("overall", summary["overall"])]
    elif bench == "gedit":
        from .gedit import score_folder, summarise

        records, missing, unparsed = score_folder(args.images, args.data, _judge(args), workers=args.judge_workers)
        meta.update(judge=f"{args.judge_model} at {args.judge_url}", judge_prompts="thinkgen.evals.gedit SC/PQ_PROMPT",
                    note="official judges: GPT-4.1 or Qwen2.5-VL-72B-Instruct-AWQ")
        summary = summarise(records, missing, unparsed)
        table = []
        for lang, parts in summary["languages"].items():
            for subset, block in parts.items():
                if block["macro"]:
                    table += [(f"{lang} {subset} {m.upper()}", block["macro"][m]) for m in ("sc", "pq", "o")]
    elif bench == "risebench":
        from .risebench import score_folder, summarise

        records, missing, unparsed = score_folder(args.images, args.data, _judge(args),
                                                  fixed_accuracy=not args.accuracy_before_fix,
                                                  nan_truthy=args.nan_truthy, workers=args.judge_workers)
        meta.update(judge=f"{args.judge_model} at {args.judge_url}", judge_prompts="thinkgen.evals.risebench.PROMPTS",
                    accuracy_fix=not args.accuracy_before_fix, nan_truthy=args.nan_truthy,
                    note="official judge: gpt-4.1-2025-04-14 with the authors' prompts")
        summary = summarise(records, missing, unparsed)
        table = [(f"{c} accuracy", v["accuracy"]) for c, v in summary["categories"].items()]
        table += [("accuracy (overall)", summary["accuracy"]), ("score %", summary["score_pct"])]
    else:
        from .wise import score_folder, summarise

        records, missing, unparsed = score_folder(args.images, args.data, _judge(args), workers=args.judge_workers)
        meta.update(judge=f"{args.judge_model} at {args.judge_url}", judge_prompt="thinkgen.evals.wise.JUDGE_PROMPT",
                    note="official judge: GPT-4o-2024-05-13 with the authors' rubric")
        summary = summarise(records, missing, unparsed)
        table = [(k, v) for k, v in summary["categories"].items() if v is not None]
        table.append(("overall" if summary["complete"] else "overall (incomplete: mean of scored)",
                      summary["overall"] if summary["complete"] else summary["mean_of_scored"]))
    out = args.out or args.images
    write_results(out, {"meta": meta, "summary": summary, "records": records}, table, f"{TITLES[bench]} results")
    print(json.dumps(summary, indent=1, default=str)[:4000])
    print(f"wrote {Path(out) / 'results.json'}")
    return 0


HEADLINE = {   # benchmark -> (what the paper reports, how to read it from a summary)
    "geneval": ("overall", lambda s: s["overall"]),
    "dpg": ("DPG score", lambda s: s["dpg_score"]),
    "cvtg": ("word accuracy", lambda s: s["overall"]["word_accuracy"]),
    "wise": ("overall", lambda s: s["overall"]),
    "imgedit": ("overall", lambda s: s["overall"]),
    "gedit": ("O (en, all)", lambda s: ((s["languages"].get("en") or {}).get("all") or {}).get("macro", {}).get("o")),
    "risebench": ("accuracy %", lambda s: None if s["accuracy"] is None else 100 * s["accuracy"]),
}


def report(argv: list[str]) -> int:
    """``thinkgen eval report DIR...``: one table of the headline numbers of scored runs (their results.json)."""
    ap = argparse.ArgumentParser(prog="thinkgen eval report", description=report.__doc__)
    ap.add_argument("runs", nargs="+", type=Path, help="folders holding a results.json written by `score`")
    ap.add_argument("--out", type=Path, default=None, help="also write the table here (Markdown, atomic)")
    args = ap.parse_args(argv)
    from ..checkpoint import atomic_write_text

    rows = ["| run | benchmark | metric | value | complete | think | model | observers |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for run in args.runs:
        path = run / "results.json" if run.is_dir() else run
        if not path.is_file():
            raise InvalidInputError(f"{run} holds no results.json; run `thinkgen eval <benchmark> score` on it first")
        res = json.loads(path.read_text())
        meta, summary = res.get("meta", {}), res.get("summary", {})
        bench = meta.get("benchmark")
        if bench not in HEADLINE:
            raise InvalidInputError(f"{path} is not a benchmark result of `thinkgen eval` (benchmark {bench!r})")
        name, read = HEADLINE[bench]
        value = read(summary)
        gen = meta.get("generation") or {}
        observers = "; ".join(str(meta[k]) for k in ("detector", "colour_clip", "ocr", "vqa", "judge") if meta.get(k))
        rows.append(f"| {run} | {TITLES[bench]} | {name} | {'-' if value is None else f'{value:.4g}'} | "
                    f"{summary.get('complete')} | {(gen.get('settings') or {}).get('think', '?')} | "
                    f"{gen.get('model', '?')} | {observers} |")
    table = "\n".join(rows) + "\n"
    print(table, end="")
    if args.out:
        atomic_write_text(args.out, table)
    return 0


def main(argv: list[str]) -> int:
    if argv and argv[0] == "report":
        return report(argv[1:])
    if not argv or argv[0] not in BENCHMARKS:
        what = argv[0] if argv else None
        raise InvalidInputError(f"unknown benchmark {what!r}; available: nano, {', '.join(BENCHMARKS)} (and report)")
    bench, rest = argv[0], argv[1:]
    args = _parser(bench).parse_args(rest)
    if args.step == "export":
        from .gedit import export_manifest
        print(f"wrote {export_manifest(args.out, args.dataset)}")
        return 0
    return _generate(bench, args, argv) if args.step == "generate" else _score(bench, args, argv)
