"""Tiny random models and data in the released layout, for tests and CPU smoke runs.

``build_tiny_model_dir(path)`` writes ``transformer/``, ``mllm/``, ``processor/``, ``vae/``,
``scheduler/`` and ``model_index.json`` (thinkgen.testing's tiny checkpoint: a few hundred KB).
``write_tiny_dataset(folder)`` draws 32x32 shape images with PIL and writes a JSONL with t2i and
edit samples (relative image paths) plus think / answer fields for SFT.
"""
from __future__ import annotations

import json
import os
import random
from pathlib import Path

COLORS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 70, 220), "yellow": (230, 210, 40)}
SHAPES = ("square", "circle")


def build_tiny_model_dir(path: str | os.PathLike, seed: int = 0) -> Path:
    """Write a tiny random ThinkGen checkpoint folder (released layout; thinkgen.testing) and return its path."""
    from ..testing import save_tiny_checkpoint

    return save_tiny_checkpoint(Path(path), seed=seed)


def _draw(color: str, shape: str, size: int = 32, bg=(245, 245, 245)):
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (size, size), bg)
    d = ImageDraw.Draw(img)
    box = (size // 4, size // 4, 3 * size // 4, 3 * size // 4)
    (d.rectangle if shape == "square" else d.ellipse)(box, fill=COLORS[color])
    return img


def write_tiny_dataset(folder: str | os.PathLike, n_t2i: int = 8, n_edit: int = 4, size: int = 32,
                       seed: int = 0, name: str = "train.jsonl", sizes: list[tuple[int, int]] | None = None) -> Path:
    """Shape images + ``name`` JSONL (t2i + edit, relative paths, think/answer fields). Returns the JSONL."""
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    lines = []
    combos = [(c, s) for c in COLORS for s in SHAPES]
    for i in range(n_t2i):
        c, s = combos[i % len(combos)]
        w, h = sizes[i % len(sizes)] if sizes else (size, size)
        img = _draw(c, s, max(w, h)).resize((w, h))
        rel = f"images/t2i_{i}.png"
        img.save(folder / rel)
        lines.append({"task_type": "t2i", "instruction": f"a {c} {s}", "output_image": rel,
                      "think": f"the user wants a {c} {s}", "answer": f"a {c} {s} on the image"})
    for i in range(n_edit):
        c, s = combos[rng.randrange(len(combos))]
        c2 = rng.choice([k for k in COLORS if k != c])
        src, dst = f"images/edit_{i}_in.png", f"images/edit_{i}_out.png"
        _draw(c, s, size).save(folder / src)
        _draw(c2, s, size).save(folder / dst)
        lines.append({"task_type": "edit", "instruction": f"change color to {c2}", "input_images": [src],
                      "output_image": dst, "think": f"turn the {s} {c2}", "answer": f"a {c2} {s}"})
    path = folder / name
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def write_tiny_sft_dataset(folder: str | os.PathLike, n: int = 6, size: int = 32, name: str = "sft.jsonl") -> Path:
    """Understanding + generation SFT records (with think traces)."""
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    combos = [(c, s) for c in COLORS for s in SHAPES]
    for i in range(n):
        c, s = combos[i % len(combos)]
        rel = f"images/u_{i}.png"
        _draw(c, s, size).save(folder / rel)
        if i % 2 == 0:
            lines.append({"task_type": "understanding", "instruction": "what shape is this", "input_images": [rel],
                          "answer": f"a {c} {s}"})
        else:
            lines.append({"task_type": "t2i", "instruction": f"draw a {c} {s}", "output_image": rel,
                          "think": f"the user wants a {c} {s}", "answer": f"a {c} {s} on the left"})
    path = folder / name
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path
