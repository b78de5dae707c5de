"""ImgEdit-Bench, basic set (Ye et al. 2025): 737 single-turn edits in nine types, judged 1-5 on three criteria.

Data (the official repository's ``Benchmark/``): ``--data`` = ``Basic/basic_edit.json`` (``{key: {id: relative
source path, prompt, edit_type}}``), ``--source-root`` = the folder the ``id`` paths are relative to (the unpacked
``Benchmark.tar`` images), and, to score, ``--judge-prompts`` = ``Basic/prompts.json`` (one judge prompt per edit
type with an ``<edit_prompt>`` placeholder: the official rubric, read from the user's copy).
generate: ``<out>/<key>.png``, one edit per item.

score (the rules of ``step1_get_avgscore.py`` / ``step2_typescore.py``): the judge sees the rubric, the source and the
edited image; every reply line ``Name: <digits>`` gives a number, an image's score is their mean rounded to 2 places,
a type's score the mean of its images rounded to 2 places, and **overall = the mean of the nine type scores**.

The official judge is GPT-4o (GPT-4.1 in many later papers); the authors also ship ImgEdit-Judge (Qwen2.5-VL-7B):
serve either behind an OpenAI-compatible endpoint (``--judge-url``, ``--judge-model``). Results record the judge.
"""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

from PIL import Image

from ..errors import InvalidInputError
from .common import GenItem, judge_present, mean, present_outputs

TYPES = ("add", "adjust", "extract", "replace", "remove", "background", "style", "compose", "action")


def load_items(data: str | Path) -> dict[str, dict]:
    path = Path(data) if data else None
    if path is None or not path.is_file():
        raise InvalidInputError(f"--data must be ImgEdit's Benchmark/Basic/basic_edit.json, got {data}")
    rows = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(rows, dict) or not all({"id", "prompt", "edit_type"} <= set(v) for v in rows.values()):
        raise InvalidInputError(f"{path} is not ImgEdit's basic_edit.json ({{key: {{id, prompt, edit_type}}}})")
    return rows


def items(out_dir: Path, data, source_root, limit: int | None = None, images_per_prompt: int = 1) -> list[GenItem]:
    if images_per_prompt != 1:
        raise InvalidInputError(f"ImgEdit scores one edit per item; use --images-per-prompt 1, got {images_per_prompt}")
    root = Path(source_root) if source_root else None
    if root is None or not root.is_dir():
        raise InvalidInputError(f"--source-root must be the folder of ImgEdit's source images, got {source_root}")
    out = []
    for key, r in list(load_items(data).items())[:limit]:
        src = root / r["id"]
        if not src.is_file():
            raise InvalidInputError(f"source image {src} of item {key} is missing; check --source-root")
        out.append(GenItem(key=key, prompt=r["prompt"], images=[str(src)], outputs=[Path(out_dir) / f"{key}.png"]))
    return out


def parse_reply(reply: str) -> list[int]:
    """The numbers of the ``Name: <digits>`` lines (split on ': ', as the official step 1)."""
    values = []
    for line in (reply or "").splitlines():
        parts = line.split(": ")
        if len(parts) >= 2 and parts[1].strip().isdigit():
            values.append(int(parts[1].strip()))
    return values


def score_folder(folder: Path, data, source_root, judge_prompts, judge: Callable, tries: int = 3, workers: int = 4,
                 progress: bool = True) -> tuple[list[dict], list[str], list[str]]:
    path = Path(judge_prompts) if judge_prompts else None
    if path is None or not path.is_file():
        raise InvalidInputError(f"--judge-prompts must be ImgEdit's Benchmark/Basic/prompts.json, got {judge_prompts}")
    templates = json.loads(path.read_text(encoding="utf-8"))
    rows = [{"key": k, **v} for k, v in load_items(data).items()]
    for r in rows:
        if r["edit_type"] not in templates:
            raise InvalidInputError(f"{path} has no judge prompt for edit type {r['edit_type']!r}")
    missing, unparsed = [], []
    present = present_outputs(rows, lambda r: Path(folder) / f"{r['key']}.png", missing)

    def one(item):
        r, edited = item
        text = templates[r["edit_type"]].replace("<edit_prompt>", r["prompt"])
        images = [Image.open(Path(source_root) / r["id"]).convert("RGB"), Image.open(edited).convert("RGB")]
        for _ in range(tries):
            reply = judge(images, text)
            values = parse_reply(reply)
            if values:
                return {"key": r["key"], "edit_type": r["edit_type"], "values": values,
                        "score": round(mean(values), 2), "reply": reply}
        return None

    records, unparsed = judge_present(present, one, workers, "imgedit score", progress, lambda r: r["key"])
    return records, missing, unparsed


def summarise(records: list[dict], missing: list[str], unparsed: list[str]) -> dict[str, Any]:
    by_type = defaultdict(list)
    for r in records:
        by_type[r["edit_type"]].append(r["score"])
    types = {t: round(mean(v), 2) for t, v in sorted(by_type.items())}
    return {"overall": mean(types.values()) if types else None, "types": types, "images": len(records),
            "missing_images": len(missing), "unparsed": unparsed, "complete": not missing and not unparsed}
