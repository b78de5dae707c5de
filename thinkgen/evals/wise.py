"""WISE (Niu et al. 2025): world-knowledge-informed text-to-image, 1,000 prompts (legacy WISE, the paper's version).

Data: the official ``WISE_legacy/data/{cultural_common_sense,spatio-temporal_reasoning,natural_science}.json``
(lists of ``{Prompt, Explanation, Category, Subcategory, prompt_id}``); ``--data`` is their folder.
generate: ``<out>/<prompt_id>.png``.

score: a VLM judge sees the image, the prompt and its explanation and gives three integers 0-2: Consistency, Realism,
Aesthetic Quality (parsed as the official ``gpt_eval.py`` does: ``Name: digit`` lines, else three lone-digit lines;
up to 3 tries; an image that never parses is left out and counted). **WiScore = (0.7 C + 0.2 R + 0.1 A) / 2**;
categories by prompt id (CULTURE 1-400, TIME 401-567, SPACE 568-700, BIOLOGY 701-800, PHYSICS 801-900, CHEMISTRY
901-1000) and **overall = 0.4 CULTURE + 0.167 TIME + 0.133 SPACE + 0.1 each science**, reported only when all 1,000
prompts are scored (as the official ``Calculate.py``).

The official judge is GPT-4o-2024-05-13 with the authors' rubric; this harness asks any OpenAI-compatible endpoint
(``--judge-url``, ``--judge-model``; a hosted model, or an open VLM served by vLLM) with its own rubric of the same
three scales (``JUDGE_PROMPT``). Such numbers are labelled with the judge and are not the published metric.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Callable

from PIL import Image

from ..errors import InvalidInputError
from .common import GenItem, judge_present, mean, present_outputs

FILES = ("cultural_common_sense.json", "spatio-temporal_reasoning.json", "natural_science.json")
CATEGORIES = (("CULTURE", 1, 400, 0.4), ("TIME", 401, 567, 0.167), ("SPACE", 568, 700, 0.133),
              ("BIOLOGY", 701, 800, 0.1), ("PHYSICS", 801, 900, 0.1), ("CHEMISTRY", 901, 1000, 0.1))
ASPECTS = ("consistency", "realism", "aesthetic quality")
_SCORE = re.compile(r"\*{0,2}(Consistency|Realism|Aesthetic Quality)\*{0,2}\s*[:：]?\s*(\d)", re.IGNORECASE)

JUDGE_PROMPT = """You grade an AI-generated image for a text-to-image benchmark that tests world knowledge.
The prompt given to the image generator: {prompt}
What a correct image shows (the prompt's intended meaning): {explanation}

Score three aspects, each an integer 0, 1 or 2, strictly:
- Consistency: does the image show what the prompt means, as explained above? 2 = fully and accurately, 1 = partly or
  with a notable error, 0 = not at all or the wrong thing.
- Realism: is the scene physically and visually plausible? 2 = convincingly, 1 = with noticeable flaws, 0 = implausible.
- Aesthetic Quality: composition, colour and detail. 2 = high, 1 = acceptable, 0 = poor.
Explain briefly, then end with exactly these three lines:
Consistency: <0-2>
Realism: <0-2>
Aesthetic Quality: <0-2>"""


def load_prompts(folder: str | Path) -> list[dict]:
    folder = Path(folder) if folder else None
    if folder is None or not folder.is_dir():
        raise InvalidInputError(f"--data must be WISE's WISE_legacy/data folder ({', '.join(FILES)}), got {folder}")
    rows = []
    for name in FILES:
        path = folder / name
        if path.is_file():
            for r in json.loads(path.read_text(encoding="utf-8")):
                if not {"Prompt", "Explanation", "prompt_id"} <= set(r):
                    raise InvalidInputError(f"{path}: an entry lacks Prompt / Explanation / prompt_id: {r!r}"[:300])
                rows.append({"id": int(r["prompt_id"]), "prompt": r["Prompt"], "explanation": r["Explanation"],
                             "subcategory": r.get("Subcategory")})
    if not rows:
        raise InvalidInputError(f"{folder} holds none of {', '.join(FILES)}")
    return sorted(rows, key=lambda r: r["id"])


def items(out_dir: Path, data, limit: int | None = None, images_per_prompt: int = 1) -> list[GenItem]:
    if images_per_prompt != 1:
        raise InvalidInputError(f"WISE scores one image per prompt; use --images-per-prompt 1, got {images_per_prompt}")
    return [GenItem(key=str(r["id"]), prompt=r["prompt"], outputs=[Path(out_dir) / f"{r['id']}.png"])
            for r in load_prompts(data)[:limit]]


def parse_scores(reply: str) -> dict[str, int] | None:
    """{consistency, realism, aesthetic quality} from a judge reply, or None (the official two-step parser)."""
    found: dict[str, int] = {}
    for name, digit in _SCORE.findall(reply or ""):
        found[name.lower()] = int(digit)
    if all(a in found for a in ASPECTS):
        scores = {a: found[a] for a in ASPECTS}
    else:
        lone = [int(x) for x in re.findall(r"^\s*([0-2])\s*$", reply or "", re.MULTILINE)]
        if len(lone) < 3:
            return None
        scores = dict(zip(ASPECTS, lone[:3]))
    return scores if all(0 <= v <= 2 for v in scores.values()) else None


def wiscore(s: dict[str, int]) -> float:
    return (0.7 * s["consistency"] + 0.2 * s["realism"] + 0.1 * s["aesthetic quality"]) / 2


def category(prompt_id: int) -> str | None:
    return next((name for name, lo, hi, _ in CATEGORIES if lo <= prompt_id <= hi), None)


def score_folder(folder: Path, data, judge: Callable[[Image.Image, str], str], tries: int = 3, workers: int = 4,
                 progress: bool = True) -> tuple[list[dict], list[str], list[int]]:
    missing, unparsed = [], []
    present = present_outputs(load_prompts(data), lambda r: Path(folder) / f"{r['id']}.png", missing)

    def one(item):
        r, path = item
        image = Image.open(path).convert("RGB")
        text = JUDGE_PROMPT.format(prompt=r["prompt"], explanation=r["explanation"])
        for _ in range(tries):
            reply = judge(image, text)
            scores = parse_scores(reply)
            if scores is not None:
                return {"id": r["id"], "category": category(r["id"]), "scores": scores, "wiscore": wiscore(scores),
                        "reply": reply}
        return None

    records, unparsed = judge_present(present, one, workers, "wise score", progress, lambda r: r["id"])
    return records, missing, unparsed


def summarise(records: list[dict], missing: list[str], unparsed: list[int]) -> dict[str, Any]:
    cats = {name: mean(r["wiscore"] for r in records if r["category"] == name) for name, *_ in CATEGORIES}
    ids = {r["id"] for r in records}
    complete = ids == set(range(1, 1001))
    overall = sum(w * cats[name] for name, _, _, w in CATEGORIES) if complete else None
    return {"overall": overall, "categories": cats, "images": len(records), "complete": complete,
            "mean_of_scored": mean(r["wiscore"] for r in records) if records else None,
            "missing_images": len(missing), "unparsed": unparsed}
