"""RISEBench (Zhao et al. 2025): reasoning-informed editing in four categories (temporal, causal, spatial, logical).

Data: the official ``data/data_total.json`` (RISEBench-64 on GitHub) or the 360-item file of the Hugging Face dataset
``PhoenixZ/RISEBench``: a list of ``{index, category, instruction, image, reference | reference_img | reference_txt,
[subtask], [consistency_free]}`` with paths relative to ``--data``'s folder. generate:
``<out>/images/<category>/<index>.png``, the official output layout.

score (the rules of the official ``gpt_eval.py`` / ``utils.py``): a judge gives three 1-5 scores, each ending in
"Final Score: n": appearance consistency (input vs output; skipped for ``consistency_free`` items), instruction
reasoning (the output against the reference text or image) and visual plausibility (the output alone; not asked for
logical items). Logical items are judged right/wrong (0/1) on consistency and reasoning, mapped to 1 or 5. Per
sample: temporal / causal / spatial 0.3 C + 0.5 R + 0.2 P (consistency-free: 0.2 P + 0.8 R), logical 0.3 C + 0.7 R,
and when R == 1 the score is max(1, score / 2); score percentage = 25 (score - 1). **Accuracy** (the leaderboard
number): a sample is complete when every dimension it is judged on is 5; per category and overall (micro).

The official judge is GPT-4.1 with the authors' prompts; thinkgen's prompts (``PROMPTS``) are its own wording of the
same scales and any OpenAI-compatible endpoint can judge (``--judge-url``, ``--judge-model``), multi-image input
required. Such numbers are labelled with the judge and are not the published metric.
"""
from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

from PIL import Image

from ..errors import InvalidInputError
from .common import GenItem, judge_present, mean, present_outputs

CATEGORIES = ("temporal_reasoning", "causal_reasoning", "spatial_reasoning", "logical_reasoning")
_FINAL = re.compile(r"\*?\*?Final Scores?\*?\*?:?\s*([\d*\s,\n]*)", re.IGNORECASE)

PROMPTS = {
    "consistency": """Image 1 is the input, image 2 the output of an edit: "{instruction}".
Judge appearance consistency only: apart from what the edit must change, how well does image 2 keep image 1's
content, identity, layout and style? 5 = everything that should stay is unchanged, 1 = unrelated or badly altered.
Explain briefly, then end with "Final Score: <1-5>".""",
    "reasoning_text": """Image 1 is the input, image 2 the output of an edit: "{instruction}".
The correct result is described as: {reference}
Judge instruction reasoning only: does image 2 show the correct result? 5 = exactly the described result, 1 = wrong.
Explain briefly, then end with "Final Score: <1-5>".""",
    "reasoning_image": """Image 1 is the input, image 2 the output of an edit: "{instruction}"; image 3 shows the correct
result. Judge instruction reasoning only: does image 2 reach the same result as image 3? 5 = the same result,
1 = wrong. Explain briefly, then end with "Final Score: <1-5>".""",
    "plausibility": """This image is the output of an image edit. Judge visual plausibility only: is it realistic and
free of artifacts, with correct physics, lighting and geometry? 5 = fully plausible, 1 = implausible.
Explain briefly, then end with "Final Score: <1-5>".""",
    "logical_consistency": """Image 1 is a puzzle or diagram, image 2 the output of the instruction "{instruction}".
Apart from the marks the answer adds, is image 1's content kept unchanged in image 2? End with "Final Score: 1" if yes,
"Final Score: 0" if not.""",
    "logical_reasoning": """Image 1 is a puzzle or diagram, image 2 the output of the instruction "{instruction}".
The correct answer: {reference}
Does image 2 show exactly the correct answer? End with "Final Score: 1" if yes, "Final Score: 0" if not.""",
}


def load_items(data: str | Path) -> list[dict]:
    path = Path(data) if data else None
    if path is None or not path.is_file():
        raise InvalidInputError(f"--data must be RISEBench's data_total.json (64 items) or the 360-item JSON, got {data}")
    rows = json.loads(path.read_text(encoding="utf-8"))
    for r in rows:
        if not {"index", "category", "instruction", "image"} <= set(r) or r["category"] not in CATEGORIES:
            raise InvalidInputError(f"{path}: not a RISEBench item (index, category in {CATEGORIES}, instruction, "
                                    f"image): {str(r)[:200]}")
        for k in ("image", "reference_img"):
            if r.get(k):
                r[k] = str((path.parent / r[k]).resolve())
    return rows


def output_path(out_dir: Path, r: dict) -> Path:
    return Path(out_dir) / "images" / r["category"] / f"{r['index']}.png"


def items(out_dir: Path, data, limit: int | None = None, images_per_prompt: int = 1) -> list[GenItem]:
    if images_per_prompt != 1:
        raise InvalidInputError(f"RISEBench scores one edit per item; use --images-per-prompt 1, got {images_per_prompt}")
    return [GenItem(key=r["index"], prompt=r["instruction"], images=[r["image"]], outputs=[output_path(out_dir, r)])
            for r in load_items(data)[:limit]]


def extract(reply: str) -> int | None:
    """The first number after "Final Score" (then "Final Scores"), as the official ``extract``."""
    m = _FINAL.search(reply or "")
    if not m:
        return None
    nums = re.findall(r"\d+", m.group(1))
    return int(nums[0]) if nums else None


def consistency_free(r: dict, nan_truthy: bool = False) -> bool:
    """``nan_truthy``: the official ``calculate_score`` tests the column's truthiness and pandas' NaN is truthy, so
    when the column exists every item without a value counts as consistency-free (a switch for parity)."""
    if "consistency_free" not in r:
        return False
    v = r["consistency_free"]
    return True if (v is None and nan_truthy) else bool(v)


def sample_score(category: str, c: int | None, reas: int, p: int | None, free: bool) -> float:
    if category == "logical_reasoning":
        score = 0.3 * c + 0.7 * reas
    elif free:
        score = 0.2 * p + 0.8 * reas
    else:
        score = 0.3 * c + 0.5 * reas + 0.2 * p
    return max(1.0, 0.5 * score) if reas == 1 else score


def complete(category: str, c: int | None, reas: int, p: int | None, free: bool, fixed: bool = True) -> bool:
    """All judged dimensions are 5. ``fixed=False`` reproduces the accuracy before the official fix of 2026-04
    (ce8cba3), under which consistency-free items could never count as complete (ThinkGen's paper predates it)."""
    if category == "logical_reasoning":
        return c == 5 and reas == 5
    if free:
        return fixed and reas == 5 and p == 5
    return c == 5 and reas == 5 and p == 5


def judge_item(r: dict, source: Image.Image, output: Image.Image, judge: Callable, tries: int = 3,
               nan_truthy: bool = False) -> dict | None:
    def ask(images, text, valid):
        for _ in range(tries):
            v = extract(judge(images, text))
            if v is not None and v in valid:
                return v
        return None

    ins, cat = r["instruction"], r["category"]
    free = cat != "logical_reasoning" and consistency_free(r, nan_truthy)
    reference = r.get("reference") or r.get("reference_txt")
    if cat == "logical_reasoning":
        c, reas = (ask([source, output], PROMPTS[k].format(instruction=ins, reference=reference), (0, 1))
                   for k in ("logical_consistency", "logical_reasoning"))
        if c is None or reas is None:
            return None
        c, reas, p = 4 * min(c, 1) + 1, 4 * min(reas, 1) + 1, None
    else:
        c = None if free else ask([source, output], PROMPTS["consistency"].format(instruction=ins), range(1, 6))
        if r.get("reference_img"):
            ref = Image.open(r["reference_img"]).convert("RGB")
            reas = ask([source, output, ref], PROMPTS["reasoning_image"].format(instruction=ins), range(1, 6))
        else:
            reas = ask([source, output], PROMPTS["reasoning_text"].format(instruction=ins, reference=reference),
                       range(1, 6))
        p = ask([output], PROMPTS["plausibility"], range(1, 6))
        if reas is None or p is None or (c is None and not free):
            return None
    return {"consistency": c, "reasoning": reas, "plausibility": p, "consistency_free": free}


def score_folder(folder: Path, data, judge: Callable, tries: int = 3, fixed_accuracy: bool = True,
                 nan_truthy: bool = False, workers: int = 4, progress: bool = True):
    missing, unparsed = [], []
    present = present_outputs(load_items(data), lambda r: output_path(folder, r), missing)

    def one(item):
        r, path = item
        j = judge_item(r, Image.open(r["image"]).convert("RGB"), Image.open(path).convert("RGB"), judge, tries,
                       nan_truthy)
        if j is None:
            return None
        cat, free = r["category"], j["consistency_free"]
        s = sample_score(cat, j["consistency"], j["reasoning"], j["plausibility"], free)
        return {"index": r["index"], "category": cat, "subtask": r.get("subtask"), **j, "score": s,
                "score_pct": 25 * (s - 1),
                "complete": complete(cat, j["consistency"], j["reasoning"], j["plausibility"], free, fixed_accuracy)}

    records, unparsed = judge_present(present, one, workers, "risebench score", progress, lambda r: r["index"])
    return records, missing, unparsed


def summarise(records: list[dict], missing: list[str], unparsed: list[str]) -> dict[str, Any]:
    by_cat = defaultdict(list)
    for r in records:
        by_cat[r["category"]].append(r)
    cats = {c: {"accuracy": mean(x["complete"] for x in v), "score_pct": mean(x["score_pct"] for x in v),
                "images": len(v)} for c, v in sorted(by_cat.items())}
    return {"accuracy": mean(r["complete"] for r in records) if records else None,
            "score_pct": mean(r["score_pct"] for r in records) if records else None, "categories": cats,
            "images": len(records), "missing_images": len(missing), "unparsed": unparsed,
            "complete": not missing and not unparsed}
