"""GEdit-Bench (Step1X-Edit, Liu et al. 2025): 606 real-world edits in 11 task types, English and Chinese, VIEScore.

Data: the official set is the Hugging Face dataset ``stepfun-ai/GEdit-Bench`` (MIT, images embedded). thinkgen reads
a JSONL manifest of it, one row per sample: ``{"key", "task_type", "instruction", "instruction_language" ("en" or
"cn"), "source_image" (a path, relative to the manifest's folder), "Intersection_exist"}`` -- ``export_manifest``
writes it from the dataset (needs the ``datasets`` package). generate: ``<out>/fullset/<task_type>/<lang>/<key>.png``,
the official layout.

score (VIEScore as ``test_gedit_score.py`` uses it): the edited image is resized to the source's size; the judge gives
semantic consistency (source + edited + instruction: ``[editing success, over-editing]``, 0-10) and perceptual quality
(edited only: ``[naturalness, artifacts]``, 0-10); per sample **SC = min, PQ = min, O = sqrt(SC x PQ)**; per task type
the means of SC, PQ and O (O averaged per sample), and the reported values are **the unweighted means over the task
types**, per language, on all samples and on the ``Intersection_exist`` subset. A reply that does not parse after the
retries is counted and left out (the official parser then guesses a random integer; thinkgen does not).

The official judges are GPT-4.1 or Qwen2.5-VL-72B-Instruct-AWQ; serve either behind an OpenAI-compatible endpoint
(``--judge-url``, ``--judge-model``). The two prompts (``SC_PROMPT``, ``PQ_PROMPT``) are thinkgen's own wording of the
same scales; results record the judge.
"""
from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

from PIL import Image

from ..errors import InvalidInputError
from .common import GenItem, judge_present, mean, present_outputs

SC_PROMPT = """You are a strict judge of image edits. The first image is the original, the second is the result of
editing it with this instruction: "{instruction}".
Give two scores from 0 to 10:
1. editing success: how completely and correctly the second image carries out the instruction (0 = not at all,
   10 = perfectly);
2. over-editing: how well everything the instruction does not ask to change is kept (0 = the image was changed
   beyond recognition, 10 = nothing else changed).
Reply with JSON only: {{"score": [success, over_editing], "reasoning": "..."}}"""

PQ_PROMPT = """You are a strict judge of image quality. Look at this AI-generated or AI-edited image.
Give two scores from 0 to 10:
1. naturalness: how natural and realistic the image looks (lighting, geometry, sense of distance; 0 = unnatural,
   10 = fully natural);
2. artifacts: how free it is of artifacts such as distortion, blur, watermarks or broken details (0 = heavy
   artifacts, 10 = none).
Reply with JSON only: {{"score": [naturalness, artifacts], "reasoning": "..."}}"""

_NUM = r"-?\d+(?:\.\d+)?"


def load_manifest(path: str | Path) -> list[dict]:
    path = Path(path) if path else None
    if path is None or not path.is_file():
        raise InvalidInputError(f"--data must be a GEdit-Bench manifest (JSONL; see thinkgen.evals.gedit), got {path}")
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        r = json.loads(line)
        need = {"key", "task_type", "instruction", "instruction_language", "source_image"}
        if not need <= set(r):
            raise InvalidInputError(f"{path}:{n} lacks {sorted(need - set(r))}")
        r["source_image"] = str((path.parent / r["source_image"]).resolve())
        rows.append(r)
    return rows


def export_manifest(out_dir: str | Path, dataset="stepfun-ai/GEdit-Bench") -> Path:
    """Write the manifest and the source images from the Hugging Face dataset (needs ``datasets`` and the hub)."""
    try:
        from datasets import load_dataset
    except ImportError:
        raise InvalidInputError("exporting GEdit-Bench needs the datasets package: pip install datasets") from None
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    try:
        rows = load_dataset(dataset, split="train")
    except Exception as e:  # noqa: BLE001 - offline, no access, renamed dataset
        raise InvalidInputError(f"could not load the dataset {dataset!r} ({e}); GEdit-Bench comes from the Hugging "
                                "Face hub: run this where the hub is reachable, or download it and pass its folder") from None
    lines = []
    for r in rows:
        rel = f"images/{r['task_type']}_{r['key']}.png"
        if not (out / rel).exists():
            (r.get("source_image") or r.get("input_image")).convert("RGB").save(out / rel)
        lines.append(json.dumps({"key": r["key"], "task_type": r["task_type"], "instruction": r["instruction"],
                                 "instruction_language": r["instruction_language"], "source_image": rel,
                                 "Intersection_exist": bool(r.get("Intersection_exist"))}, ensure_ascii=False))
    (out / "manifest.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out / "manifest.jsonl"


def output_path(out_dir: Path, r: dict) -> Path:
    return Path(out_dir) / "fullset" / r["task_type"] / r["instruction_language"] / f"{r['key']}.png"


def items(out_dir: Path, data, limit: int | None = None, images_per_prompt: int = 1) -> list[GenItem]:
    if images_per_prompt != 1:
        raise InvalidInputError(f"GEdit scores one edit per sample; use --images-per-prompt 1, got {images_per_prompt}")
    return [GenItem(key=f"{r['task_type']}/{r['instruction_language']}/{r['key']}", prompt=r["instruction"],
                    images=[r["source_image"]], outputs=[output_path(out_dir, r)]) for r in load_manifest(data)[:limit]]


def parse_scores(reply: str) -> list[float] | None:
    """VIEScore's accepted forms: text between ``||V^=^V||`` marks, a JSON object with "score", a bare list, a number."""
    text = reply or ""
    marked = re.search(r"\|\|V\^=\^V\|\|(.*?)\|\|V\^=\^V\|\|", text, re.S)
    if marked:
        text = marked.group(1)
    for m in re.finditer(r"\{.*\}", text, re.S):
        try:
            obj = json.loads(m.group(0))
        except json.JSONDecodeError:
            continue
        score = obj.get("score") if isinstance(obj, dict) else None
        if isinstance(score, (int, float)):
            return [float(score)]
        if isinstance(score, list) and score and all(isinstance(x, (int, float)) for x in score):
            return [float(x) for x in score]
    lst = re.search(rf"\[\s*({_NUM}(?:\s*,\s*{_NUM})*)\s*\]", text)
    if lst:
        return [float(x) for x in re.findall(_NUM, lst.group(1))]
    alone = re.fullmatch(rf"\s*({_NUM})\s*", text)
    return [float(alone.group(1))] if alone else None


def _ask(judge, images, text, tries) -> list[float] | None:
    for _ in range(tries):
        scores = parse_scores(judge(images, text))
        if scores is not None and all(0 <= s <= 10 for s in scores):
            return scores
    return None


def score_folder(folder: Path, data, judge: Callable, tries: int = 3, workers: int = 4, progress: bool = True):
    missing, unparsed = [], []
    present = present_outputs(load_manifest(data), lambda r: output_path(folder, r), missing)

    def one(item):
        r, path = item
        source = Image.open(r["source_image"]).convert("RGB")
        edited = Image.open(path).convert("RGB").resize(source.size, Image.BICUBIC)
        sc = _ask(judge, [source, edited], SC_PROMPT.format(instruction=r["instruction"]), tries)
        pq = _ask(judge, [edited], PQ_PROMPT, tries)
        if sc is None or pq is None:
            return None
        return {"key": _key(r), "task_type": r["task_type"], "language": r["instruction_language"],
                "intersection": bool(r.get("Intersection_exist")), "sc": min(sc), "pq": min(pq),
                "o": math.sqrt(min(sc) * min(pq)), "sc_scores": sc, "pq_scores": pq}

    records, unparsed = judge_present(present, one, workers, "gedit score", progress, _key)
    return records, missing, unparsed


def _key(r: dict) -> str:
    return f"{r['task_type']}/{r['instruction_language']}/{r['key']}"


def summarise(records: list[dict], missing: list[str], unparsed: list[str]) -> dict[str, Any]:
    def block(rs):
        by_type = defaultdict(list)
        for r in rs:
            by_type[r["task_type"]].append(r)
        types = {t: {m: mean(x[m] for x in v) for m in ("sc", "pq", "o")} for t, v in sorted(by_type.items())}
        macro = {m: mean(t[m] for t in types.values()) for m in ("sc", "pq", "o")} if types else None
        return {"macro": macro, "types": types, "images": len(rs)}

    out = {}
    for lang in sorted({r["language"] for r in records}):
        rs = [r for r in records if r["language"] == lang]
        out[lang] = {"all": block(rs), "intersection": block([r for r in rs if r["intersection"]])}
    return {"languages": out, "missing_images": len(missing), "unparsed": unparsed,
            "complete": not missing and not unparsed}
