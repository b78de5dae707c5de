"""CVTG-2K (TextCrafter, Du et al. 2025): complex visual text generation, 2,000 prompts with 2-5 quoted texts each.

Data: the official CVTG-2K folder (``CVTG/{2,3,4,5}.json`` and ``CVTG-Style/{2,3,4,5}.json``, each
``{"data_list": [{"index", "prompt", ...}]}``; the ``{n}_combined.json`` files ``{"0": prompt}`` work too).
generate: ``<out>/<CVTG|CVTG-Style>/<n>/<index>.png``, the layout the official evaluator reads.

score (the rules of TextCrafter's unified evaluator): the ground-truth words are the single-quoted spans of the prompt,
lower-cased and split on whitespace; the OCR's words are every recognised line lower-cased and split (``['']`` when it
reads nothing). A word is right when it is among the OCR's words; its NED-similarity is 1 - Levenshtein / (max length +
1e-5) against the closest OCR word (difflib, cutoff 0). **Word accuracy = right words / all words** and **NED = mean
over words**, both over every image of the eight subsets (micro), and per subset. Optional CLIPScore =
2.5 * max(cos, 0) between the image and "A photo depicts " + prompt (``--clip DIR``).

The official OCR is PaddleOCR (en); this harness reads with RapidOCR (the PP-OCR models on onnxruntime, offline,
``pip install 'thinkgen[ocr]'``): close to, not identical with, the official reader; results record the reader.
"""
from __future__ import annotations

import difflib
import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

from PIL import Image

from ..errors import InvalidInputError
from ..rl.rewards import _LocalCLIP, _rapidocr_read, _require_model_dir, levenshtein
from .common import GenItem, mean, progress_bar

SUBSETS = ("CVTG", "CVTG-Style")
_QUOTED = re.compile(r"'(.*?)'")


def load_prompts(root: str | Path) -> list[dict]:
    """[{subset, n, index, prompt}] from an official CVTG-2K folder."""
    root = Path(root) if root else None
    if root is None or not root.is_dir():
        raise InvalidInputError(f"--data must be the CVTG-2K folder (CVTG/ and CVTG-Style/ with 2.json ... 5.json), "
                                f"got {root}; download it from the Hugging Face dataset dnkdnk/CVTG-2K")
    rows = []
    for subset in SUBSETS:
        for n in (2, 3, 4, 5):
            fine, combined = root / subset / f"{n}.json", root / subset / f"{n}_combined.json"
            if fine.is_file():
                data = json.loads(fine.read_text(encoding="utf-8"))
                entries = [(str(e["index"]), e["prompt"]) for e in data["data_list"]]
            elif combined.is_file():
                entries = list(json.loads(combined.read_text(encoding="utf-8")).items())
            else:
                continue
            rows += [{"subset": subset, "n": n, "index": k, "prompt": p} for k, p in entries]
    if not rows:
        raise InvalidInputError(f"{root} has none of CVTG/<n>.json, CVTG-Style/<n>.json (n = 2..5)")
    return rows


def items(out_dir: Path, data, limit: int | None = None, images_per_prompt: int = 1) -> list[GenItem]:
    if images_per_prompt != 1:
        raise InvalidInputError(f"CVTG-2K scores one image per prompt; use --images-per-prompt 1, got {images_per_prompt}")
    return [GenItem(key=f"{r['subset']}/{r['n']}/{r['index']}", prompt=r["prompt"],
                    outputs=[Path(out_dir) / r["subset"] / str(r["n"]) / f"{r['index']}.png"])
            for r in load_prompts(data)[:limit]]


def gt_words(prompt: str) -> list[str]:
    return [w for span in _QUOTED.findall(prompt) for w in span.lower().split()]


def word_scores(gt: list[str], ocr_lines: list[str] | None) -> list[tuple[bool, float]]:
    """(right, NED-similarity) per ground-truth word; ``ocr_lines`` None = the OCR failed (all wrong, 0)."""
    if ocr_lines is None:
        return [(False, 0.0) for _ in gt]
    pred = [w for line in ocr_lines for w in line.lower().split()] or [""]
    out = []
    for w in gt:
        best = difflib.get_close_matches(w, pred, n=1, cutoff=0)
        ned = 1 - levenshtein(w, best[0]) / (max(len(w), len(best[0])) + 1e-5) if best else 0.0
        out.append((w in pred, ned))
    return out


def score_folder(folder: Path, data, ocr: Callable[[Image.Image], list[str]] | None = None, clip_dir=None,
                 progress: bool = True) -> list[dict]:
    ocr = ocr or _rapidocr_read
    clip = _LocalCLIP(_require_model_dir(clip_dir, "cvtg clipscore", "--clip")) if clip_dir else None
    rows = load_prompts(data)
    records, missing = [], []
    bar = progress_bar(len(rows), "cvtg score", "image", progress)
    for r in rows:
        path = Path(folder) / r["subset"] / str(r["n"]) / f"{r['index']}.png"
        bar.update(1)
        if not path.is_file():
            missing.append(str(path))
            continue
        image = Image.open(path).convert("RGB")
        try:
            lines = ocr(image)
        except Exception:  # noqa: BLE001 - the official evaluator counts a failed OCR call as all wrong
            lines = None
        words = gt_words(r["prompt"])
        ws = word_scores(words, lines)
        rec = {"key": f"{r['subset']}/{r['n']}/{r['index']}", "subset": f"{r['subset']}/{r['n']}", "words": words,
               "ocr": lines, "right": [a for a, _ in ws], "ned": [b for _, b in ws]}
        if clip is not None:
            cos = float((clip.image_embeds([image]) @ clip.text_embeds(["A photo depicts " + r["prompt"]]).T)[0, 0])
            rec["clip_score"] = 2.5 * max(cos, 0.0)
        records.append(rec)
    bar.close()
    if missing and not records:
        raise InvalidInputError(f"no CVTG-2K images under {folder} (first expected: {missing[0]}); "
                                "run `thinkgen eval cvtg generate` first")
    return records, missing


def summarise(records: list[dict], missing: list[str]) -> dict[str, Any]:
    def block(rs):
        right = [x for r in rs for x in r["right"]]
        ned = [x for r in rs for x in r["ned"]]
        out = {"word_accuracy": mean(right), "ned": mean(ned), "images": len(rs), "words": len(right)}
        if rs and "clip_score" in rs[0]:
            out["clip_score"] = mean(r["clip_score"] for r in rs)
        return out

    subsets = defaultdict(list)
    for r in records:
        subsets[r["subset"]].append(r)
    return {"overall": block(records), "subsets": {k: block(v) for k, v in sorted(subsets.items())},
            "missing_images": len(missing), "complete": not missing}
