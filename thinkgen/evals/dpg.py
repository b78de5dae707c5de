"""DPG-Bench (ELLA, Hu et al. 2024): 1,065 dense prompts, each decomposed into yes/no questions with dependencies.

Data: the official ``dpg_bench/prompts/<item_id>.txt`` folder (``--prompts``) and ``dpg_bench/dpg_bench.csv``
(``--csv``: item_id, proposition_id, dependency, category_broad, category_detailed, tuple,
question_natural_language, ...). generate: 4 images per prompt tiled 2x2 into ``<out>/<item_id>.png``.

score (the rules of the official ``compute_dpg_bench.py``): each of the 4 crops answers every question of its item;
a question scores 1 when the answer is "yes"; in question order, a question whose parent (``dependency``, 0 = none)
scored 0 is set to 0; a crop's score is the mean over its questions, an image's the mean over its crops, and
**DPG-Bench = 100 x the mean over images**. Categories: L2 = the tuple's head ("entity - whole"), L1 = its first word.
Two official quirks are switches: ``parity=True`` (the default) skips the CSV's first data row, as the official
loader does, and takes category scores from the LAST crop's answers before dependency zeroing; ``parity=False``
keeps the first row and averages categories over all crops after zeroing.

The official VQA model is mPLUG-large (ModelScope); this harness asks any VQA callable ``vqa(image, question) ->
answer``: a local one, or an OpenAI-compatible VLM endpoint (``--judge-url``, ``--judge-model``). Its answer counts as
yes when its first word is "yes". Numbers with another VQA model than mPLUG are not the official ones.
"""
from __future__ import annotations

import csv
import re
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

from PIL import Image

from ..errors import InvalidInputError
from .common import GenItem, grid_2x2, judge_present, mean, present_outputs

VQA_SUFFIX = " Answer yes or no."


def load_prompts(folder: str | Path) -> dict[str, str]:
    folder = Path(folder) if folder else None
    if folder is None or not folder.is_dir() or not any(folder.glob("*.txt")):
        raise InvalidInputError(f"--prompts must be DPG-Bench's prompts folder (<item_id>.txt files), got {folder}")
    return {p.stem: p.read_text(encoding="utf-8").strip() for p in sorted(folder.glob("*.txt"))}


def load_questions(csv_path: str | Path, parity: bool = True) -> dict[str, list[dict]]:
    """{item_id: [{qid, parents, l1, l2, question}]} in file order."""
    csv_path = Path(csv_path) if csv_path else None
    if csv_path is None or not csv_path.is_file():
        raise InvalidInputError(f"--csv must be DPG-Bench's dpg_bench.csv, got {csv_path}")
    with open(csv_path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    need = {"item_id", "proposition_id", "dependency", "tuple", "question_natural_language"}
    if not rows or not need <= set(rows[0]):
        raise InvalidInputError(f"{csv_path} lacks DPG-Bench columns {sorted(need)}")
    out: dict[str, list[dict]] = defaultdict(list)
    for i, r in enumerate(rows):
        if parity and i == 0:
            continue                                   # the official loader skips its first data row
        l2 = r["tuple"].split("(")[0].strip()
        out[r["item_id"]].append({"qid": int(r["proposition_id"]), "question": r["question_natural_language"],
                                  "parents": [int(x) for x in re.split(r"\s*,\s*", str(r["dependency"]).strip()) if x],
                                  "l2": l2, "l1": l2.split("-")[0].strip()})
    return dict(out)


def items(out_dir: Path, prompts_dir, limit: int | None = None, images_per_prompt: int = 4) -> list[GenItem]:
    if images_per_prompt != 4:
        raise InvalidInputError(f"DPG-Bench tiles 4 images per prompt 2x2; use --images-per-prompt 4, got {images_per_prompt}")
    prompts = load_prompts(prompts_dir)
    return [GenItem(key=k, prompt=p, outputs=[Path(out_dir) / f"{k}.png"], combine=grid_2x2)
            for k, p in list(prompts.items())[:limit]]


def is_yes(answer: str) -> bool:
    words = re.findall(r"[a-z]+", str(answer).lower())
    return bool(words) and words[0] == "yes"


def score_crop(questions: list[dict], answers: dict[int, str]) -> tuple[dict[int, float], dict[int, float]]:
    """(scores after dependency zeroing, scores before) of one crop, by question id. A parent id that is not among
    the item's questions raises KeyError (the official script then drops the item: see ``score_folder``)."""
    orig = {q["qid"]: float(is_yes(answers[q["qid"]])) for q in questions}
    scores = dict(orig)
    for q in questions:
        if any(p != 0 and scores[p] == 0 for p in q["parents"]):
            scores[q["qid"]] = 0.0
    return scores, orig


def crops(grid: Image.Image) -> list[Image.Image]:
    w, h = grid.width // 2, grid.height // 2
    return [grid.crop(b) for b in ((0, 0, w, h), (w, 0, 2 * w, h), (0, h, w, 2 * h), (w, h, 2 * w, 2 * h))]


def score_folder(folder: Path, questions: dict[str, list[dict]], vqa: Callable[[Image.Image, str], str],
                 parity: bool = True, workers: int = 4, progress: bool = True
                 ) -> tuple[list[dict], list[str], list[str]]:
    missing, failed = [], []
    present = present_outputs(list(questions.items()), lambda item: Path(folder) / f"{item[0]}.png", missing)
    missing[:] = [Path(m).stem for m in missing]

    def one(entry):
        (item_id, qs), path = entry
        known = {q["qid"] for q in qs}
        if any(p != 0 and p not in known for q in qs for p in q["parents"]):
            return None        # a parent question is missing (parity: the skipped first row): dropped, as official
        per_crop, cats = [], defaultdict(list)
        for k, crop in enumerate(crops(Image.open(path).convert("RGB"))):
            answers = {q["qid"]: vqa(crop, q["question"] + VQA_SUFFIX) for q in qs}
            scores, orig = score_crop(qs, answers)
            per_crop.append(mean(scores.values()))
            if not parity or k == 3:
                source = orig if parity else scores
                for q in qs:
                    cats[q["l2"]].append(source[q["qid"]])
        return {"item_id": item_id, "score": mean(per_crop), "crops": per_crop,
                "categories": dict(cats),          # per question, averaged over questions in summarise
                "l1": sorted({q["l1"] for q in qs})}

    records, failed = judge_present(present, one, workers, "dpg score", progress, lambda item: item[0])
    return records, missing, failed


def summarise(records: list[dict], missing: list[str], failed: list[str] = ()) -> dict[str, Any]:
    l2, l1 = defaultdict(list), defaultdict(list)
    for r in records:
        for c, values in r["categories"].items():
            l2[c].extend(values)
            l1[c.split("-")[0].strip()].extend(values)
    return {"dpg_score": 100 * mean(r["score"] for r in records) if records else None, "images": len(records),
            "l1": {k: 100 * mean(v) for k, v in sorted(l1.items())}, "l2": {k: 100 * mean(v) for k, v in sorted(l2.items())},
            "missing_images": len(missing), "failed_items": list(failed), "complete": not missing}
