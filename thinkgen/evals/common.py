"""What every benchmark shares: generating its images into the official layout, and writing result files.

Data flow::

    benchmark items (prompt [+ input images], where each image goes)  ->  generate_items(pipe, ...)
        -> PNGs in the benchmark's own folder layout (resumable: finished items are skipped)
        -> thinkgen_generation.jsonl (per item: instruction, thoughts, seeds) + thinkgen_generation.json (settings)
    a benchmark's scorer reads the folder  ->  per-image records + summary  ->  write_results (JSON + Markdown, atomic)

Images and result files are written atomically (temporary file + rename), so a killed run leaves no torn file and a
rerun continues where it stopped.
"""
from __future__ import annotations

import datetime as _dt
import json
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from PIL import Image

from ..checkpoint import atomic_write_json, atomic_write_text
from ..errors import InvalidInputError
from ..images import save_png_atomic


@dataclass
class GenItem:
    """One prompt of a benchmark and where its images go."""

    key: str                                  # the benchmark's id of the item
    prompt: str
    outputs: list[Path]                       # one path per image to write; len = images per prompt
    images: list = field(default_factory=list)  # input images (editing benchmarks): paths or PIL images
    combine: Callable[[list[Image.Image]], list[Image.Image]] | None = None  # e.g. DPG's 2x2 grid: n images -> 1
    extra_files: dict[str, str] = field(default_factory=dict)   # path -> text written beside (GenEval metadata)

    def done(self) -> bool:
        return all(p.exists() for p in self.outputs) and all(Path(p).exists() for p in self.extra_files)


@dataclass
class GenSettingsCLI:
    """Generation settings shared by every benchmark's ``generate`` command."""

    think: str = "off"
    images_per_prompt: int = 1
    seed: int = 0
    batch_size: int = 4
    height: int | None = None
    width: int | None = None
    num_inference_steps: int | None = None
    text_guidance_scale: float | None = None
    image_guidance_scale: float | None = None

    def __post_init__(self):
        if self.think not in ("off", "on", "auto"):
            raise InvalidInputError(f"think must be off, on or auto, got {self.think!r}")
        for name in ("images_per_prompt", "batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InvalidInputError(f"{name} must be an integer >= 1, got {v!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise InvalidInputError(f"seed must be an integer >= 0, got {self.seed!r}")


def run_meta(argv: Sequence[str] | None = None) -> dict[str, Any]:
    import torch

    from .. import __version__

    return {"command": " ".join(["thinkgen", "eval", *(argv if argv is not None else sys.argv[1:])]),
            "date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": f"{platform.machine()}, {platform.system()}, torch {torch.__version__}",
            "thinkgen": __version__}


def item_seed(base: int, index: int, images_per_prompt: int) -> int:
    """Seed of an item's first image: items never share a noise seed (image j uses seed + j)."""
    return base + index * images_per_prompt


def generate_items(pipe, items: list[GenItem], out_dir: Path, s: GenSettingsCLI, *, meta: dict[str, Any],
                   progress: bool = True) -> dict[str, int]:
    """Render every unfinished item into its output paths. Items without input images are batched
    ``s.batch_size`` prompts per pipeline call; each item's seed depends only on its index, so resuming or changing
    the batch size gives the same images. Returns counts of generated and skipped items."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in vars(s).items()}
    quant = getattr(pipe, "quantization", None)
    atomic_write_json(out_dir / "thinkgen_generation.json", {
        **meta, "model": getattr(pipe, "name", ""), "settings": settings, "items": len(items),
        "quantization": quant["weights"] if quant else None,
        "loras": [{k: l[k] for k in ("path", "scale", "component")} for l in getattr(pipe, "loras", [])]})
    log_path = out_dir / "thinkgen_generation.jsonl"
    indexed = [(i, it) for i, it in enumerate(items) if not it.done()]
    skipped = len(items) - len(indexed)
    bar = progress_bar(len(indexed), "generate", "prompt", progress)
    groups: list[list[tuple[int, GenItem]]] = []
    for i, it in indexed:
        if not it.images and groups and not groups[-1][0][1].images and len(groups[-1]) < s.batch_size:
            groups[-1].append((i, it))
        else:
            groups.append([(i, it)])
    t0 = time.perf_counter()
    for group in groups:
        prompts = [it.prompt for _, it in group]
        seeds = [item_seed(s.seed, i, s.images_per_prompt) for i, _ in group]
        out = pipe(prompts, images=[it.images for _, it in group] if group[0][1].images else None, seed=seeds,
                   think=s.think, num_images_per_prompt=s.images_per_prompt, height=s.height, width=s.width,
                   num_inference_steps=s.num_inference_steps, text_guidance_scale=s.text_guidance_scale,
                   image_guidance_scale=s.image_guidance_scale)
        n = s.images_per_prompt
        with open(log_path, "a", encoding="utf-8") as log:
            for b, (i, it) in enumerate(group):
                imgs = out.images[b * n:(b + 1) * n]
                if it.combine is not None:
                    imgs = it.combine(imgs)
                if len(imgs) != len(it.outputs):
                    raise InvalidInputError(f"item {it.key!r} expects {len(it.outputs)} output images, got {len(imgs)}")
                for path, text in it.extra_files.items():
                    atomic_write_text(path, text)
                for img, path in zip(imgs, it.outputs):
                    save_png_atomic(img, path)
                log.write(json.dumps({"key": it.key, "prompt": it.prompt, "instruction": out.instructions[b],
                                      "thoughts": out.thoughts[b], "finished": out.finished[b],
                                      "seeds": out.seeds[b * n:(b + 1) * n]}) + "\n")
        bar.update(len(group))
    bar.close()
    return {"generated": len(indexed), "skipped": skipped, "seconds": round(time.perf_counter() - t0, 2)}


def grid_2x2(images: list[Image.Image]) -> list[Image.Image]:
    """Four images tiled 2x2 into one (DPG-Bench's layout: top-left, top-right, bottom-left, bottom-right)."""
    if len(images) != 4:
        raise InvalidInputError(f"a 2x2 grid needs 4 images per prompt, got {len(images)}")
    w, h = images[0].size
    grid = Image.new("RGB", (2 * w, 2 * h))
    for k, img in enumerate(images):
        grid.paste(img, ((k % 2) * w, (k // 2) * h))
    return [grid]


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


class AnswerOnly:
    """Wraps a judge ``(images, text) -> reply`` and drops a thinking model's ``<think>...</think>`` block from the
    reply, so "Final Score" / yes-no parsers read the answer, not the deliberation (thinking judges whose server does
    not separate the reasoning start their reply with it)."""

    def __init__(self, judge):
        self.judge = judge

    def __call__(self, images, text: str) -> str:
        reply = self.judge(images, text)
        return reply.rpartition("</think>")[2].strip() if isinstance(reply, str) and "</think>" in reply else reply


def progress_bar(total: int, desc: str, unit: str, enabled: bool = True):
    """A tqdm bar, or one that does nothing when ``enabled`` is False."""
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit)


def present_outputs(rows: list, path_of: Callable[[Any], Path], missing: list) -> list[tuple[Any, Path]]:
    """(row, image path) for the rows whose image exists; the others' paths go to ``missing``."""
    found = []
    for r in rows:
        path = Path(path_of(r))
        if path.is_file():
            found.append((r, path))
        else:
            missing.append(str(path))
    return found


def parallel_map(fn: Callable[[Any], Any], items: list, workers: int, desc: str, progress: bool = True) -> list:
    """``[fn(x) for x in items]`` on ``workers`` threads (judge requests are I/O-bound), in order, with a bar."""
    from concurrent.futures import ThreadPoolExecutor

    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise InvalidInputError(f"judge workers must be an integer >= 1, got {workers!r}")
    bar = progress_bar(len(items), desc, "image", progress)
    out = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for res in pool.map(fn, items):
            out.append(res)
            bar.update(1)
    bar.close()
    return out


def judge_present(present: list[tuple[Any, Path]], fn: Callable, workers: int, desc: str, progress: bool,
                  key: Callable[[Any], Any]) -> tuple[list, list]:
    """Run ``fn((row, path))`` over ``present`` on ``workers`` threads: (the records, in order; the keys of the rows
    for which ``fn`` returned None, i.e. the judge never gave a usable reply)."""
    results = parallel_map(fn, present, workers, desc, progress)
    return ([rec for rec in results if rec is not None],
            [key(row) for (row, _), rec in zip(present, results) if rec is None])


def mean(values) -> float | None:
    values = [float(v) for v in values]
    return sum(values) / len(values) if values else None


def write_results(out: Path, result: dict[str, Any], table: list[tuple[str, Any]], title: str) -> None:
    """``out``/results.json (everything) and ``out``/results.md (meta + the summary table), both atomic."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "results.json", result)
    meta = result.get("meta", {})
    lines = [f"# {title}", ""] + [f"- {k}: `{v}`" if k == "command" else f"- {k}: {v}" for k, v in meta.items()]
    lines += ["", "| metric | value |", "| --- | --- |"]
    for name, value in table:
        lines.append(f"| {name} | {value:.4f} |" if isinstance(value, float) else f"| {name} | {value} |")
    atomic_write_text(out / "results.md", "\n".join(lines) + "\n")
