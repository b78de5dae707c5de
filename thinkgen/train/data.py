"""Training data: JSONL validation, a streaming resumable reader, ratio mixtures, bucketing, CFG dropout.

JSONL schema, one sample per line (reference-code §7.2, plus the SFT fields)::

    {"task_type": "t2i" | "edit" | "ic" | "understanding" | ...,
     "instruction": str,
     "input_images": [path, ...],   # optional; "edit" / "ic" need at least one
     "output_image": path,           # required for DiT samples (every task but "understanding")
     "think": str,                   # optional, MLLM SFT: the reasoning inside <think>...</think>
     "answer": str}                  # optional, MLLM SFT: the text after </think> (understanding: required)

Relative paths resolve against the JSONL file's folder. Extra keys are allowed and ignored.

Pipeline: ``JsonlSource`` (one file, rank shard, shuffle buffer, epochs) -> ``MixtureDataset``
(source i drawn with probability ratio_i / sum) -> ``DiTBatcher`` (resolution capping, aspect
buckets so each batch has one output size, CFG dropout, image loading). Every stage has
``state_dict()`` / ``load_state_dict()``; restoring them continues the exact same sequence.

Unlike OmniGen2's loader (reference-code §7.2, whose ratio code uses the last source's ratio for
every source and never stores the resampled subset), ratios really apply here: each sample is
drawn from source i with probability ratio_i / sum(ratios), sources repeat in epochs.
"""
from __future__ import annotations

import json
import math
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from PIL import Image

from ..errors import ConfigError, InvalidImageError

KNOWN_TASKS = ("t2i", "edit", "ic", "understanding")
TASKS_NEEDING_INPUTS = ("edit", "ic")
MAX_INPUT_IMAGES = 5
SIZE_MULTIPLE = 16          # VAE x8 times DiT patch 2 (reference: floor to multiples of 16)
# width / height ratios of the optional aspect-ratio ladder
ASPECT_RATIOS = (1 / 2, 9 / 16, 2 / 3, 3 / 4, 4 / 5, 1.0, 5 / 4, 4 / 3, 3 / 2, 16 / 9, 2.0)


class DataError(ConfigError):
    """A training-data file breaks the schema; the message names file, line and field."""


# --------------------------------------------------------------------------- validation
# How the DiT's instruction features are computed for a record (DiT training only):
#   "pseudo_cot": the no-think template <think>\n</think>{instruction} (paper stages 1-3; the default);
#   "think": teacher-forced think format: user turn = "prompt" (default: the instruction), assistant turn
#            <think>\n{think}\n</think>\n\n{instruction} -- the feature distribution the DiT sees at inference with
#            think on (ThinkGenMLLM.encode_answers). A dropped prompt always falls back to pseudo_cot with "".
CONDITIONS = ("pseudo_cot", "think")


def _resolve(base: Path, p: str) -> Path:
    q = Path(os.path.expanduser(p))
    return q if q.is_absolute() else base / q


def check_record(obj: Any, purpose: str = "dit") -> list[str]:
    """Schema problems of one parsed record, as ``"field 'x': problem"`` strings (no file checks)."""
    if not isinstance(obj, dict):
        return [f"expected a JSON object, got {type(obj).__name__}"]
    problems = []
    tt = obj.get("task_type")
    if not isinstance(tt, str) or not tt:
        problems.append(f"field 'task_type': expected a non-empty string (one of {', '.join(KNOWN_TASKS)}), got {tt!r}")
    instr = obj.get("instruction")
    if not isinstance(instr, str):
        problems.append(f"field 'instruction': expected a string, got {type(instr).__name__ if 'instruction' in obj else 'nothing'}")
    elif not instr.strip():
        problems.append("field 'instruction': is empty")
    imgs = obj.get("input_images", [])
    if imgs is None:
        imgs = []
    if not isinstance(imgs, list) or not all(isinstance(p, str) and p for p in imgs):
        problems.append(f"field 'input_images': expected a list of paths, got {imgs!r}")
        imgs = []
    elif len(imgs) > MAX_INPUT_IMAGES:
        problems.append(f"field 'input_images': {len(imgs)} images, at most {MAX_INPUT_IMAGES} are supported")
    if tt in TASKS_NEEDING_INPUTS and not imgs:
        problems.append(f"field 'input_images': task_type {tt!r} needs at least one input image")
    out = obj.get("output_image")
    if purpose == "dit" and tt != "understanding":
        if not isinstance(out, str) or not out:
            problems.append(f"field 'output_image': required for DiT training, got {out!r}")
    elif out is not None and not isinstance(out, str):
        problems.append(f"field 'output_image': expected a path, got {out!r}")
    for key in ("think", "answer", "prompt"):
        if key in obj and obj[key] is not None and not isinstance(obj[key], str):
            problems.append(f"field '{key}': expected a string, got {type(obj[key]).__name__}")
    cond = obj.get("condition", "pseudo_cot")
    if cond not in CONDITIONS:
        problems.append(f"field 'condition': expected one of {', '.join(CONDITIONS)}, got {cond!r}")
    if purpose == "mllm" and tt == "understanding" and not isinstance(obj.get("answer"), str):
        problems.append("field 'answer': required for understanding samples in MLLM SFT")
    return problems


def validate_jsonl(path: str | os.PathLike, purpose: str = "dit", check_files: bool = True,
                   max_problems: int = 1000) -> list[str]:
    """Return every schema problem of a JSONL file as ``"FILE:LINE: field 'x': problem"`` strings.

    ``purpose`` is "dit" (output_image required) or "mllm" (answer required for understanding).
    ``check_files`` also checks that referenced image files exist. An empty list means valid.
    """
    path = Path(path)
    if not path.is_file():
        return [f"{path}: file does not exist"]
    base = path.parent
    problems: list[str] = []
    n_records = 0
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            if len(problems) >= max_problems:
                problems.append(f"{path}: stopped after {max_problems} problems")
                break
            text = raw.decode("utf-8", errors="replace").strip()
            if not text:
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as e:
                problems.append(f"{path}:{line_no}: not valid JSON ({e.msg} at column {e.colno})")
                continue
            n_records += 1
            found = check_record(obj, purpose)
            problems.extend(f"{path}:{line_no}: {p}" for p in found)
            if found or not check_files:
                continue
            fields = [("output_image", obj.get("output_image"))] + [
                (f"input_images[{i}]", p) for i, p in enumerate(obj.get("input_images") or [])
            ]
            for name, p in fields:
                if isinstance(p, str) and p and not _resolve(base, p).is_file():
                    problems.append(f"{path}:{line_no}: field '{name}': file {str(_resolve(base, p))!r} does not exist")
    if n_records == 0 and not problems:
        problems.append(f"{path}: holds no records")
    return problems


def check_jsonl(path: str | os.PathLike, purpose: str = "dit", check_files: bool = True) -> None:
    """Raise :class:`DataError` listing the first problems of ``path``, if any."""
    problems = validate_jsonl(path, purpose, check_files)
    if problems:
        shown = "\n  ".join(problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise DataError(f"{len(problems)} problem(s) in training data {path}:\n  {shown}{more}")


def normalise_record(obj: dict, path: Path, line_no: int, purpose: str = "dit") -> dict:
    """Validated record with absolute image paths and provenance (``_file``, ``_line``)."""
    problems = check_record(obj, purpose)
    if problems:
        raise DataError(f"{path}:{line_no}: {problems[0]}")
    base = path.parent
    return {
        "task_type": obj["task_type"],
        "instruction": obj["instruction"],
        "input_images": [str(_resolve(base, p)) for p in (obj.get("input_images") or [])],
        "output_image": str(_resolve(base, obj["output_image"])) if obj.get("output_image") else "",
        "think": obj.get("think") or "",
        "answer": obj.get("answer") if isinstance(obj.get("answer"), str) else None,
        "condition": obj.get("condition", "pseudo_cot"),
        "prompt": obj.get("prompt") if isinstance(obj.get("prompt"), str) else None,
        "_file": str(path),
        "_line": line_no,
    }


# --------------------------------------------------------------------------- streaming source
class JsonlSource(torch.utils.data.IterableDataset):
    """Stream one JSONL file: rank sharding, seeded shuffle buffer, epochs, resumable position.

    Line i (0-based, counting blank lines) belongs to rank ``i % world_size``. Records enter a
    buffer of ``shuffle_buffer`` entries and leave it at a position drawn from a
    ``random.Random`` seeded by (seed, rank); nothing but the buffer is held in memory.
    ``state_dict()`` holds (epoch, byte offset, line number, buffer, RNG state); restoring it on
    a fresh object continues the identical sequence. Iterate with ``next(source)`` or a for loop.
    """

    def __init__(self, path: str | os.PathLike, *, rank: int = 0, world_size: int = 1, seed: int = 0,
                 shuffle_buffer: int = 1000, repeat: bool = True, purpose: str = "dit"):
        super().__init__()
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        if shuffle_buffer < 1:
            raise ValueError(f"shuffle_buffer must be >= 1, got {shuffle_buffer}")
        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(f"training data {str(self.path)!r} does not exist")
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.shuffle_buffer, self.repeat, self.purpose = shuffle_buffer, repeat, purpose
        self._rng = random.Random(f"jsonl:{seed}:{rank}")
        self.epoch = 0
        self._offset = 0          # byte offset of the next unread line
        self._line = 0            # 0-based index of the next unread line
        self._eof = False
        self._yielded_this_epoch = 0
        self._buffer: list[dict] = []
        self._fh = None

    # -- state
    def state_dict(self) -> dict[str, Any]:
        v, internal, g = self._rng.getstate()
        return {"path": str(self.path), "rank": self.rank, "world_size": self.world_size, "epoch": self.epoch,
                "offset": self._offset, "line": self._line, "eof": self._eof,
                "yielded_this_epoch": self._yielded_this_epoch, "buffer": [dict(r) for r in self._buffer],
                "rng": [v, list(internal), g]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if (state["rank"], state["world_size"]) != (self.rank, self.world_size):
            raise ConfigError(
                f"data state of {self.path} was saved for rank {state['rank']}/{state['world_size']} "
                f"but this is rank {self.rank}/{self.world_size}; resume with the same number of processes"
            )
        self.epoch, self._offset, self._line = state["epoch"], state["offset"], state["line"]
        self._eof, self._yielded_this_epoch = state["eof"], state["yielded_this_epoch"]
        self._buffer = [dict(r) for r in state["buffer"]]
        v, internal, g = state["rng"]
        self._rng.setstate((v, tuple(int(x) for x in internal), g))
        self._close()

    # -- reading
    def _close(self):
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __del__(self):
        self._close()

    def _read_one(self) -> bool:
        """Read lines until one record of this rank enters the buffer; False at end of file."""
        if self._fh is None:
            self._fh = open(self.path, "rb")
            self._fh.seek(self._offset)
        while True:
            raw = self._fh.readline()
            if not raw:
                return False
            line_idx = self._line
            self._line += 1
            self._offset = self._fh.tell()
            if line_idx % self.world_size != self.rank:
                continue
            text = raw.decode("utf-8", errors="replace").strip()
            if not text:
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as e:
                raise DataError(f"{self.path}:{line_idx + 1}: not valid JSON ({e.msg} at column {e.colno})") from None
            self._buffer.append(normalise_record(obj, self.path, line_idx + 1, self.purpose))
            return True

    def __next__(self) -> dict:
        while True:
            while not self._eof and len(self._buffer) < self.shuffle_buffer:
                if not self._read_one():
                    self._eof = True
            if self._buffer:
                i = self._rng.randrange(len(self._buffer))
                self._buffer[i], self._buffer[-1] = self._buffer[-1], self._buffer[i]
                self._yielded_this_epoch += 1
                return self._buffer.pop()
            # end of an epoch
            if self._yielded_this_epoch == 0:
                raise DataError(
                    f"{self.path} has no records for rank {self.rank} of {self.world_size}; "
                    "add data or use fewer processes"
                )
            if not self.repeat:
                raise StopIteration
            self._close()
            self.epoch += 1
            self._offset, self._line, self._eof, self._yielded_this_epoch = 0, 0, False, 0

    def __iter__(self) -> Iterator[dict]:
        return self


class MixtureDataset(torch.utils.data.IterableDataset):
    """Draw each record from source i with probability ``ratio_i / sum(ratios)``.

    ``sources``: ``[(source, ratio), ...]`` where each source is an iterator with
    ``state_dict()`` (e.g. :class:`JsonlSource`). A finite source that runs out leaves the
    mixture (the others are renormalised); the mixture ends when all are exhausted.
    """

    def __init__(self, sources: Sequence[tuple[Any, float]], seed: int = 0, rank: int = 0):
        super().__init__()
        if not sources:
            raise ConfigError("a mixture needs at least one source")
        for src, r in sources:
            if not (float(r) > 0) or math.isinf(float(r)):
                raise ConfigError(f"mixture ratio {r!r} of {getattr(src, 'path', src)} must be a finite number > 0")
        self.sources = [s for s, _ in sources]
        self.ratios = [float(r) for _, r in sources]
        self.active = [True] * len(self.sources)
        self._rng = random.Random(f"mixture:{seed}:{rank}")
        self.counts = [0] * len(self.sources)

    def state_dict(self) -> dict[str, Any]:
        v, internal, g = self._rng.getstate()
        return {"rng": [v, list(internal), g], "active": list(self.active), "counts": list(self.counts),
                "sources": [s.state_dict() for s in self.sources]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if len(state["sources"]) != len(self.sources):
            raise ConfigError(
                f"data state has {len(state['sources'])} sources but the config lists {len(self.sources)}"
            )
        v, internal, g = state["rng"]
        self._rng.setstate((v, tuple(int(x) for x in internal), g))
        self.active, self.counts = list(state["active"]), list(state["counts"])
        for s, st in zip(self.sources, state["sources"]):
            s.load_state_dict(st)

    def __next__(self) -> dict:
        while any(self.active):
            total = sum(r for r, a in zip(self.ratios, self.active) if a)
            u = self._rng.random() * total
            acc, pick = 0.0, None
            for i, (r, a) in enumerate(zip(self.ratios, self.active)):
                if not a:
                    continue
                acc += r
                pick = i
                if u < acc:
                    break
            try:
                rec = next(self.sources[pick])
            except StopIteration:
                self.active[pick] = False
                continue
            self.counts[pick] += 1
            return rec
        raise StopIteration

    def __iter__(self):
        return self


def build_mixture(sources: Sequence[tuple[str, float]], *, rank: int = 0, world_size: int = 1, seed: int = 0,
                  shuffle_buffer: int = 1000, purpose: str = "dit", repeat: bool = True) -> MixtureDataset:
    """``[(jsonl_path, ratio), ...]`` -> MixtureDataset of rank-sharded JsonlSources."""
    srcs = [
        (JsonlSource(p, rank=rank, world_size=world_size, seed=seed * 1009 + i, shuffle_buffer=shuffle_buffer,
                     repeat=repeat, purpose=purpose), r)
        for i, (p, r) in enumerate(sources)
    ]
    return MixtureDataset(srcs, seed=seed, rank=rank)


# --------------------------------------------------------------------------- resolution
def capped_size(width: int, height: int, max_pixels: int, max_side: int, multiple: int = SIZE_MULTIPLE) -> tuple[int, int]:
    """Reference resolution capping (reference-code §1.7): shrink to fit ``max_pixels`` and
    ``max_side`` (never enlarge), then floor each side to a multiple of ``multiple``."""
    ratio = min(math.sqrt(max_pixels / (width * height)), max_side / max(width, height), 1.0)
    w = max(multiple, int(width * ratio) // multiple * multiple)
    h = max(multiple, int(height * ratio) // multiple * multiple)
    return w, h


def bucket_size(width: int, height: int, max_pixels: int, max_side: int,
                ratios: Sequence[float] = ASPECT_RATIOS, multiple: int = SIZE_MULTIPLE) -> tuple[int, int]:
    """Size on the aspect-ratio ladder: nearest ratio (in log space), area of the capped image,
    never larger than the source in either side (so the resize + center crop only shrinks)."""
    r = min(ratios, key=lambda q: abs(math.log(q) - math.log(width / height)))
    s = min(math.sqrt(max_pixels / (width * height)), max_side / max(width, height), 1.0)
    area = width * height * s * s
    h = math.sqrt(area / r)
    w = h * r
    c = max(w / width, h / height, 1.0)   # shrink further if covering the target would need upscaling
    w, h = w / c, h / c
    return max(multiple, int(w) // multiple * multiple), max(multiple, int(h) // multiple * multiple)


def _exif_size(path: str) -> tuple[int, int]:
    """(width, height) after EXIF orientation, read from the header only."""
    with Image.open(path) as im:
        w, h = im.size
        try:
            orient = im.getexif().get(0x0112, 1)
        except Exception:
            orient = 1
    return (h, w) if orient in (5, 6, 7, 8) else (w, h)


def resize_to(img: Image.Image, width: int, height: int, crop: bool) -> Image.Image:
    """Resize ``img`` to exactly (width, height): squash (reference) or cover + center crop."""
    if img.size == (width, height):
        return img
    if not crop:
        return img.resize((width, height), Image.LANCZOS)
    W, H = img.size
    c = max(width / W, height / H)
    nw, nh = max(width, round(W * c)), max(height, round(H * c))
    img = img.resize((nw, nh), Image.LANCZOS)
    left, top = (nw - width) // 2, (nh - height) // 2
    return img.crop((left, top, left + width, top + height))


def load_record_image(path: str, rec: dict, field_name: str) -> Image.Image:
    """Decode through the project image policy; errors name the JSONL file, line and field."""
    from ..images import load_image

    try:
        return load_image(path)
    except InvalidImageError as e:
        raise DataError(f"{rec.get('_file')}:{rec.get('_line')}: field '{field_name}': {e}") from None


# --------------------------------------------------------------------------- CFG dropout
def apply_cfg_dropout(rec: dict, rng: random.Random, prompt_p: float, ref_p: float) -> dict:
    """Classifier-free-guidance dropout, as OmniGen2's trainer (reference-code §7.1):

    * with probability ``prompt_p`` the instruction becomes "" (the unconditional branch);
    * only when the prompt was dropped, with probability ``ref_p`` the input images are dropped too
      (so the model also learns the (no text, no image) branch used by 3-way editing CFG).

    Both draws are always made, so the RNG stream does not depend on the outcome.
    """
    u_prompt, u_ref = rng.random(), rng.random()
    rec = dict(rec)
    rec["prompt_dropped"] = u_prompt < prompt_p
    rec["refs_dropped"] = False
    if rec["prompt_dropped"]:
        rec["instruction"] = ""
        if u_ref < ref_p and rec["input_images"]:
            rec["input_images"] = []
            rec["refs_dropped"] = True
    return rec


# --------------------------------------------------------------------------- DiT batches
@dataclass
class DiTBatch:
    """One micro-batch for the DiT: every output image has the same size."""

    images: torch.Tensor                   # (B, 3, H, W) output images in [-1, 1]
    instructions: list[str]                # B instructions ("" where the prompt was dropped)
    input_images: list[list[torch.Tensor]]  # per sample: list of (3, h, w) in [-1, 1]
    task_types: list[str]
    image_keys: list[str]                  # cache keys of the output images (path, stat, size)
    input_keys: list[list[str]]            # cache keys of the input images
    records: list[dict] = field(default_factory=list)  # the source records (provenance)

    def __len__(self) -> int:
        return len(self.instructions)


def _image_key(path: str, w: int, h: int, crop: bool) -> str:
    st = os.stat(path)
    return f"{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}|{w}x{h}|{'crop' if crop else 'fit'}"


def _to_tensor(img: Image.Image) -> torch.Tensor:
    from ..models.vae import pil_to_tensor

    return pil_to_tensor([img])[0]


class DiTBatcher:
    """Bucket records by output size, apply CFG dropout and load images into :class:`DiTBatch` es.

    Output size: reference capping (``max_output_pixels``, ``max_side_length``, floor to 16, never
    enlarge); with ``aspect_ratio_buckets`` text-to-image outputs (no input images) are instead
    snapped to the :data:`ASPECT_RATIOS` ladder by a center crop, so fewer distinct sizes exist.
    Records wait in their size bucket until ``batch_size`` of them are there. Input images are
    capped at ``max_input_pixels[n - 1]`` (n = number of inputs; last entry for more).
    """

    def __init__(self, stream, batch_size: int, *, max_output_pixels: int = 1024 * 1024,
                 max_side_length: int = 2048, max_input_pixels: Sequence[int] = (1024 * 1024,),
                 aspect_ratio_buckets: bool = False, prompt_dropout_prob: float = 0.0,
                 ref_dropout_prob: float = 0.0, seed: int = 0, rank: int = 0):
        self.stream = stream
        self.batch_size = batch_size
        self.max_output_pixels, self.max_side_length = max_output_pixels, max_side_length
        self.max_input_pixels = list(max_input_pixels)
        self.aspect_ratio_buckets = aspect_ratio_buckets
        self.prompt_dropout_prob, self.ref_dropout_prob = prompt_dropout_prob, ref_dropout_prob
        self._rng = random.Random(f"cfg-dropout:{seed}:{rank}")
        self._pending: dict[tuple[int, int, bool], list[dict]] = {}
        self._order: list[tuple[int, int, bool]] = []   # bucket creation order (deterministic flush)

    def state_dict(self) -> dict[str, Any]:
        v, internal, g = self._rng.getstate()
        return {"rng": [v, list(internal), g], "stream": self.stream.state_dict(),
                "pending": [[list(k), [dict(r) for r in self._pending[k]]] for k in self._order]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        v, internal, g = state["rng"]
        self._rng.setstate((v, tuple(int(x) for x in internal), g))
        self.stream.load_state_dict(state["stream"])
        self._pending, self._order = {}, []
        for k, recs in state["pending"]:
            key = (int(k[0]), int(k[1]), bool(k[2]))
            self._pending[key] = [dict(r) for r in recs]
            self._order.append(key)

    def output_size(self, rec: dict) -> tuple[int, int, bool]:
        try:
            w, h = _exif_size(rec["output_image"])
        except Exception as e:
            raise DataError(f"{rec['_file']}:{rec['_line']}: field 'output_image': cannot read "
                            f"{rec['output_image']!r} ({type(e).__name__}: {e})") from None
        if self.aspect_ratio_buckets and not rec["input_images"]:
            return (*bucket_size(w, h, self.max_output_pixels, self.max_side_length), True)
        return (*capped_size(w, h, self.max_output_pixels, self.max_side_length), False)

    def _input_cap(self, n: int) -> int:
        return self.max_input_pixels[min(n, len(self.max_input_pixels)) - 1]

    def _make_batch(self, key: tuple[int, int, bool], recs: list[dict]) -> DiTBatch:
        w, h, crop = key
        images, inputs, ikeys, okeys, instrs, tasks, done = [], [], [], [], [], [], []
        for rec in recs:
            rec = apply_cfg_dropout(rec, self._rng, self.prompt_dropout_prob, self.ref_dropout_prob)
            out = load_record_image(rec["output_image"], rec, "output_image")
            images.append(_to_tensor(resize_to(out, w, h, crop)))
            okeys.append(_image_key(rec["output_image"], w, h, crop))
            cap = self._input_cap(max(1, len(rec["input_images"])))
            lst, keys = [], []
            for j, p in enumerate(rec["input_images"]):
                img = load_record_image(p, rec, f"input_images[{j}]")
                iw, ih = capped_size(img.width, img.height, cap, self.max_side_length)
                lst.append(_to_tensor(resize_to(img, iw, ih, crop=False)))
                keys.append(_image_key(p, iw, ih, False))
            inputs.append(lst)
            ikeys.append(keys)
            instrs.append(rec["instruction"])
            tasks.append(rec["task_type"])
            done.append(rec)
        return DiTBatch(torch.stack(images), instrs, inputs, tasks, okeys, ikeys, done)

    def __next__(self) -> DiTBatch:
        while True:
            try:
                rec = next(self.stream)
            except StopIteration:
                for key in list(self._order):   # finite stream: flush partial buckets in creation order
                    recs = self._pending.pop(key)
                    self._order.remove(key)
                    if recs:
                        return self._make_batch(key, recs)
                raise
            key = self.output_size(rec)
            if key not in self._pending:
                self._pending[key] = []
                self._order.append(key)
            self._pending[key].append(rec)
            if len(self._pending[key]) >= self.batch_size:
                recs = self._pending.pop(key)
                self._order.remove(key)
                return self._make_batch(key, recs)

    def __iter__(self):
        return self


# --------------------------------------------------------------------------- SFT batches
class SFTBatcher:
    """Group records into lists of ``batch_size`` with their input images decoded and shrunk.

    Yields ``list[dict]``; each dict is the record plus ``images`` (list of PIL images capped at
    ``max_image_pixels``, floored to multiples of 32 = Qwen3-VL patch 16 x merge 2).
    """

    def __init__(self, stream, batch_size: int, max_image_pixels: int = 512 * 512, max_side_length: int = 2048):
        self.stream, self.batch_size = stream, batch_size
        self.max_image_pixels, self.max_side_length = max_image_pixels, max_side_length

    def state_dict(self) -> dict[str, Any]:
        return {"stream": self.stream.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stream.load_state_dict(state["stream"])

    def __next__(self) -> list[dict]:
        out = []
        for _ in range(self.batch_size):
            try:
                rec = dict(next(self.stream))
            except StopIteration:
                break
            imgs = []
            for j, p in enumerate(rec["input_images"]):
                img = load_record_image(p, rec, f"input_images[{j}]")
                w, h = capped_size(img.width, img.height, self.max_image_pixels, self.max_side_length, multiple=32)
                imgs.append(resize_to(img, w, h, crop=False))
            rec["images"] = imgs
            out.append(rec)
        if not out:
            raise StopIteration
        return out

    def __iter__(self):
        return self
