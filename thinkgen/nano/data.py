"""ThinkGen-Nano training data in the project's JSONL schema (thinkgen.train.data).

``write_datasets(folder, counts, seed)`` draws train-split samples of every family (``prompts.generate``), renders
their images into ``folder/images/`` and writes

* ``sft.jsonl``  - MLLM SFT: image families -> ``think`` + ``answer`` (the canonical painter instruction),
  editing / reflection with the input scene as ``input_images``, understanding -> the short answer;
* ``dit.jsonl``  - DiT pseudo-CoT pairs: canonical instruction -> canonical target image (editing and reflection
  with the input scene as reference). Half of the instructions carry a ``"\\n\\n"`` prefix: with think on, the
  painter sees the answer tokens after ``</think>\\n\\n``, so it learns both forms. A few records use the default
  negative prompt as the instruction with random targets, so CFG with the CLI's default negative prompt behaves
  like CFG with an empty prompt.

All text is already ``world.normalise_text``-ed by the generator.
"""
from __future__ import annotations

import json
import os
import random
from pathlib import Path

from thinkgen.nano.prompts import FAMILIES, Sample, generate
from thinkgen.nano.world import normalise_text

TASK = {"composition": "t2i", "reasoning": "t2i", "text": "t2i", "editing": "edit", "reflection": "edit",
        "understanding": "understanding"}
# relative weights of the families
SFT_MIX = {"composition": 1.0, "reasoning": 2.0, "text": 1.0, "editing": 1.5, "reflection": 1.0, "understanding": 2.5}
DIT_MIX = {"composition": 3.0, "reasoning": 1.0, "text": 1.5, "editing": 2.0, "reflection": 0.5}
NEGATIVE_FRACTION = 0.03


def _counts(total: int, mix: dict[str, float]) -> dict[str, int]:
    z = sum(mix.values())
    return {f: max(2, int(round(total * w / z))) for f, w in mix.items()}


class _ImageStore:
    def __init__(self, folder: Path):
        self.folder = folder
        (folder / "images").mkdir(parents=True, exist_ok=True)
        self.seen: dict[str, str] = {}

    def put(self, key: str, image) -> str:
        rel = self.seen.get(key)
        if rel is None:
            rel = f"images/{len(self.seen):06d}.png"
            image.save(self.folder / rel)
            self.seen[key] = rel
        return rel


def sft_record(s: Sample, store: _ImageStore) -> dict:
    rec = {"task_type": TASK[s.family], "instruction": s.prompt, "family": s.family, "category": s.category}
    if s.input_scene is not None:
        rec["input_images"] = [store.put("scene:" + s.input_scene.signature(), s.input_image())]
    if s.family == "understanding":
        rec["answer"] = s.answer
        return rec
    # an empty thought would be "<think>\n\n</think>" in the SFT template, which a think-mode prompt (ending in
    # "<think>\n") never reproduces; so requests that need no reasoning get a one-line thought.
    rec["think"] = s.think or normalise_text(f"so {s.instruction} .")
    rec["answer"] = s.instruction
    rec["output_image"] = store.put("scene:" + s.target_scene().signature(), s.target_image())
    return rec


def dit_record(s: Sample, store: _ImageStore, prefix: str = "", think: bool = False) -> dict:
    """One DiT pair. ``think``: a ``condition: think`` record -- the frozen MLLM encodes the user's prompt and the
    teacher-forced ``<think>...</think>\n\n{instruction}`` turn, i.e. the features the painter sees with think on."""
    rec = {"task_type": TASK[s.family], "instruction": s.instruction if think else prefix + s.instruction,
           "family": s.family, "category": s.category,
           "output_image": store.put("scene:" + s.target_scene().signature(), s.target_image())}
    if think:
        rec.update(condition="think", prompt=s.prompt, think=s.think or normalise_text(f"so {s.instruction} ."))
    if s.input_scene is not None:
        rec["input_images"] = [store.put("scene:" + s.input_scene.signature(), s.input_image())]
    return rec


def _write_jsonl(path: Path, records: list[dict]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    os.replace(tmp, path)


def write_datasets(folder: str | os.PathLike, n_sft: int, n_dit: int, seed: int = 0,
                   dit_mix: dict[str, float] | None = None, think_fraction: float = 0.0) -> dict[str, Path]:
    """Write ``sft.jsonl`` and ``dit.jsonl`` (+ images) into ``folder``; returns their paths.

    ``dit_mix``: family weights of the DiT pairs (default ``DIT_MIX``); ``think_fraction``: the share of DiT pairs
    written as ``condition: think`` records (the rest alternate between the pseudo-CoT forms with and without the
    ``"\n\n"`` prefix)."""
    if not 0.0 <= think_fraction <= 1.0:
        raise ValueError(f"think_fraction must be in [0, 1], got {think_fraction}")
    from thinkgen.mllm import DEFAULT_NEGATIVE_PROMPT

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    store = _ImageStore(folder)
    rng = random.Random(seed)
    sft: list[dict] = []
    for fam, n in _counts(n_sft, SFT_MIX).items():
        sft += [sft_record(s, store) for s in generate(fam, n, seed=seed, split="train")]
    rng.shuffle(sft)
    dit: list[dict] = []
    think_rng = random.Random(seed + 7)
    for fam, n in _counts(n_dit, dit_mix or DIT_MIX).items():
        for i, s in enumerate(generate(fam, n, seed=seed + 1, split="train")):
            think = think_fraction > 0 and think_rng.random() < think_fraction
            dit.append(dit_record(s, store, "\n\n" if i % 2 else "", think=think))
    neg_targets = [r for r in dit if r["task_type"] == "t2i"]
    for r in rng.sample(neg_targets, max(1, int(NEGATIVE_FRACTION * len(dit)))):
        dit.append({"task_type": "t2i", "instruction": DEFAULT_NEGATIVE_PROMPT, "family": "negative",
                    "category": "negative", "output_image": r["output_image"]})
    rng.shuffle(dit)
    paths = {"sft": folder / "sft.jsonl", "dit": folder / "dit.jsonl"}
    _write_jsonl(paths["sft"], sft)
    _write_jsonl(paths["dit"], dit)
    (folder / "stats.json").write_text(json.dumps({
        "sft": {f: sum(r["family"] == f for r in sft) for f in FAMILIES},
        "dit": {f: sum(r["family"] == f for r in dit) for f in list(FAMILIES) + ["negative"]},
        "images": len(store.seen)}, indent=2) + "\n")
    return paths


__all__ = ["write_datasets", "sft_record", "dit_record", "TASK"]
