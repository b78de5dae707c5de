"""Rewards for Flow-GRPO / SepGRPO: one contract, an explicit registry, a combiner and an async wrapper.

Contract (every reward):

    RewardFn = Callable[[list[PIL.Image.Image], list[str], list[dict]], Tensor]
    reward(images, prompts, meta) -> float32 CPU tensor [B], higher is better,
    NaN = "could not score this sample" (advantages give such samples 0 and leave them out of statistics).

``meta[i]`` carries per-sample facts: "scenario" (CombinedReward weights), "thought" (generated think text),
"text" (OCR target), "include"/"exclude"/"tag" (GenEval clauses), ...

Models are never downloaded: reward models are loaded from a LOCAL directory the caller names.
Optional dependencies are imported lazily and raise MissingDependencyError with the install command.
"""
from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import threading
import time
import urllib.error
import urllib.request
from collections import Counter, OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from PIL import Image
from torch import Tensor

from thinkgen.errors import ConfigError, GenerationError, ThinkgenError
from thinkgen.positions import relative_position

__all__ = [
    "RewardFn", "REWARDS", "TEXT_REWARDS", "register_reward", "build_reward", "MissingDependencyError",
    "CombinedReward", "AsyncReward",
    "FormatReward", "levenshtein", "ocr_target_text", "ocr_ned_score", "ocr_word_accuracy_score", "OCRReward",
    "Detection", "relative_position", "GenEvalResult", "GenEvalRuleReward",
    "CLIPSimilarityReward", "PreferenceReward",
    "OpenAIChatBackend", "parse_judge_score", "VLMJudgeReward", "DEFAULT_JUDGE_TEMPLATE",
]

RewardFn = Callable[[list[Image.Image], list[str], list[dict]], Tensor]


class MissingDependencyError(ThinkgenError, ImportError):
    """An optional dependency of a reward is not installed (the message has the pip command)."""


# -----------------------------------------------------------------------------
# Registry

REWARDS: dict[str, Callable[..., RewardFn]] = {}
TEXT_REWARDS: set[str] = set()     # rewards that read only the text (meta["thought"] / ["instruction"]), never the
                                   # image: the only ones a text-output prompt (understanding) can be scored with


def register_reward(name: str, text_only: bool = False):
    """Decorator: register a reward factory (a class or function returning a RewardFn) under ``name``.
    ``text_only``: the reward never looks at the image (it may then score text-output prompts, whose image is None)."""

    def deco(factory):
        if name in REWARDS:
            raise ValueError(f"reward {name!r} is already registered ({REWARDS[name]!r})")
        REWARDS[name] = factory
        if text_only:
            TEXT_REWARDS.add(name)
        return factory

    return deco


def build_reward(name: str, **kwargs) -> RewardFn:
    """Build a registered reward: build_reward("ocr_ned"), build_reward("clip_similarity", model_dir=...)."""
    if name not in REWARDS and name.startswith("nano"):
        import thinkgen.rl.rollout  # noqa: F401  (registers the nano world's rewards)
    if name not in REWARDS:
        raise ConfigError(f"unknown reward {name!r}; registered rewards: {sorted(REWARDS)}")
    return REWARDS[name](**kwargs)


def _check_batch(images, prompts, meta) -> None:
    if not (len(images) == len(prompts) == len(meta)):
        raise ValueError(f"images ({len(images)}), prompts ({len(prompts)}) and meta ({len(meta)}) "
                         "must have the same length")


def _rgb(img: Image.Image | None) -> Image.Image | None:
    """RGB copy of a PIL image; None (a text-output sample: nothing was rendered) stays None."""
    if img is None:
        return None
    if not isinstance(img, Image.Image):
        raise TypeError(f"rewards take PIL images (or None for a text-output sample), got {type(img).__name__}")
    return img if img.mode == "RGB" else img.convert("RGB")


def _scores(values) -> Tensor:
    return torch.tensor([float(v) for v in values], dtype=torch.float32)


# -----------------------------------------------------------------------------
# Combination and asynchrony


class CombinedReward:
    """Weighted sum of named rewards, each computed ONCE on the samples that weight it (a sub-batch).

    Sample i uses ``per_scenario[meta[i]["scenario"]]`` when that scenario is listed, else ``weights``
    (a scenario's dict replaces the default weights, it is not merged). A component with weight 0 is
    not computed for that sample (NaN in its part); a NaN component with a non-zero weight makes the total NaN.
    So a mixed batch can give image rewards to image prompts and text rewards (``nano_answer``) to text-output
    prompts, whose image is None.
    Reward functions come from ``rewards`` (name -> RewardFn) or are built from the registry with
    ``reward_kwargs[name]``.
    """

    def __init__(self, weights: dict[str, float], per_scenario: dict[str, dict[str, float]] | None = None,
                 rewards: dict[str, RewardFn] | None = None, reward_kwargs: dict[str, dict] | None = None):
        self.weights = dict(weights)
        self.per_scenario = {k: dict(v) for k, v in (per_scenario or {}).items()}
        names = {k for k, w in self.weights.items() if w != 0}
        for w in self.per_scenario.values():
            names |= {k for k, v in w.items() if v != 0}
        rewards, reward_kwargs = rewards or {}, reward_kwargs or {}
        self.fns: dict[str, RewardFn] = {
            name: rewards[name] if name in rewards else build_reward(name, **reward_kwargs.get(name, {}))
            for name in sorted(names)
        }

    def compute(self, images, prompts, meta) -> tuple[Tensor, dict[str, Tensor]]:
        """Returns (total [B], {name: component [B]})."""
        _check_batch(images, prompts, meta)
        images = [_rgb(im) for im in images]  # convert once for every component
        weights = [self.per_scenario.get(m.get("scenario"), self.weights) for m in meta]
        parts: dict[str, Tensor] = {}
        for name, fn in self.fns.items():
            idx = [i for i, w in enumerate(weights) if w.get(name, 0) != 0]
            parts[name] = torch.full((len(images),), float("nan"))
            if not idx:
                continue
            r = torch.as_tensor(fn([images[i] for i in idx], [prompts[i] for i in idx], [meta[i] for i in idx]),
                                dtype=torch.float32).cpu()
            if r.shape != (len(idx),):
                raise ValueError(f"reward {name!r} returned shape {tuple(r.shape)}, expected ({len(idx)},)")
            parts[name][idx] = r
        total = torch.zeros(len(images), dtype=torch.float32)
        for i, w in enumerate(weights):
            total[i] = sum((wt * parts[k][i] for k, wt in w.items() if wt != 0), torch.tensor(0.0))
        return total, parts

    def __call__(self, images, prompts, meta) -> Tensor:
        return self.compute(images, prompts, meta)[0]


class AsyncReward:
    """Run a reward in a thread pool so scoring overlaps sampling: ``fut = ar(images, prompts, meta)``.

    The lists are copied at submission (the meta dicts are not, so rewards that write results into meta
    stay visible to the caller). ``future.result()`` returns the reward tensor or re-raises its error.
    """

    def __init__(self, reward_fn: RewardFn, max_workers: int = 1):
        self.reward_fn = reward_fn
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="reward")

    def submit(self, images, prompts, meta) -> Future:
        _check_batch(images, prompts, meta)
        return self._pool.submit(self.reward_fn, list(images), list(prompts), list(meta))

    __call__ = submit

    def shutdown(self, wait: bool = True) -> None:
        self._pool.shutdown(wait=wait)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.shutdown()


# -----------------------------------------------------------------------------
# Format (text side)


@register_reward("format", text_only=True)
class FormatReward:
    """1.0 if the think text contains </think> followed by a non-empty answer, else 0.0.

    The text is meta[i]["thought"] when present, else prompts[i]. The answer is what follows the FIRST
    </think>, with <|im_end|>/<|endoftext|> and whitespace stripped; it must be non-empty and must not
    contain another <think> or </think> (a malformed, re-opened think span scores 0).
    """

    _TAIL_TOKENS = ("<|im_end|>", "<|endoftext|>")

    def __call__(self, images, prompts, meta) -> Tensor:
        _check_batch(images, prompts, meta)
        return _scores(self.score_text(m.get("thought", p)) for p, m in zip(prompts, meta))

    @classmethod
    def score_text(cls, text) -> float:
        if not isinstance(text, str) or "</think>" not in text:
            return 0.0
        answer = text.split("</think>", 1)[1]
        for tok in cls._TAIL_TOKENS:
            answer = answer.replace(tok, "")
        answer = answer.strip()
        if not answer or "<think>" in answer or "</think>" in answer:
            return 0.0
        return 1.0


# -----------------------------------------------------------------------------
# OCR (rapidocr, offline ONNX models shipped in the wheel)


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insert, delete, substitute; cost 1 each), O(len(a) * len(b)) time, O(len(b)) memory."""
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


_QUOTED = re.compile(r'"([^"]+)"|\u201c([^\u201d]+)\u201d')


def ocr_target_text(prompt: str, meta: dict) -> str | None:
    """meta["text"] if given, else the first double-quoted span of the prompt ("..." or curly quotes)."""
    if meta.get("text"):
        return str(meta["text"])
    m = _QUOTED.search(prompt or "")
    return (m.group(1) or m.group(2)) if m else None


_OCR_ENGINE = None
_OCR_LOCK = threading.Lock()


def _rapidocr_engine(params: dict | None):
    global _OCR_ENGINE
    with _OCR_LOCK:
        if _OCR_ENGINE is None:
            try:
                from rapidocr import RapidOCR
                import onnxruntime  # noqa: F401  (rapidocr does not depend on it, but needs it)
            except ImportError as e:
                raise MissingDependencyError(
                    f"the OCR rewards need rapidocr + onnxruntime ({e}); install them with: "
                    "pip install 'thinkgen[ocr]'") from e
            _OCR_ENGINE = RapidOCR(params={"Global.log_level": "error", **(params or {})})
        return _OCR_ENGINE


def _rapidocr_read(image: Image.Image, params: dict | None = None) -> list[str]:
    engine = _rapidocr_engine(params)
    with _OCR_LOCK:  # one engine shared by all threads; calls are serialised
        out = engine(image)
    return [str(t) for t in (getattr(out, "txts", None) or ())]


class OCRReward:
    """Text-rendering reward from OCR of the image against the target text.

    metric="ned" (Flow-GRPO rule): lowercase and remove spaces on both sides; target a substring of the
    recognised text -> 1; else 1 - min(levenshtein, len(target)) / len(target), in [0, 1].
    metric="word_accuracy": fraction of target words (lowercase, alphanumerics only) found among the
    recognised words, counted as a multiset.
    Target: meta["text"] or the first quoted span of the prompt; no target or an OCR failure -> NaN.
    ``engine(image) -> list[str]`` replaces rapidocr (tests); the rapidocr engine is built once per process.
    """

    def __init__(self, metric: str = "ned", engine: Callable[[Image.Image], list[str]] | None = None,
                 ocr_params: dict | None = None):
        if metric not in ("ned", "word_accuracy"):
            raise ValueError(f"metric must be 'ned' or 'word_accuracy', got {metric!r}")
        self.metric = metric
        if engine is None:
            _rapidocr_engine(ocr_params)  # fail at construction, not mid-training
            engine = lambda im: _rapidocr_read(im, ocr_params)  # noqa: E731
        self.engine = engine

    def __call__(self, images, prompts, meta) -> Tensor:
        _check_batch(images, prompts, meta)
        out = []
        for img, prompt, m in zip(images, prompts, meta):
            target = ocr_target_text(prompt, m)
            if not target:
                out.append(float("nan"))
                continue
            try:
                lines = self.engine(_rgb(img))
            except Exception:  # noqa: BLE001 - an engine failure means "could not score"
                out.append(float("nan"))
                continue
            out.append(self.score_text(" ".join(lines), target))
        return _scores(out)

    def score_text(self, recognised: str, target: str) -> float:
        if self.metric == "ned":
            return ocr_ned_score(recognised, target)
        return ocr_word_accuracy_score(recognised, target)


def ocr_ned_score(recognised: str, target: str) -> float:
    """Flow-GRPO OCR score: 1 - capped normalised edit distance after lowercasing and removing spaces."""
    rec = recognised.lower().replace(" ", "")
    tgt = target.lower().replace(" ", "")
    if not tgt:
        return float("nan")
    if tgt in rec:
        return 1.0
    d = min(levenshtein(rec, tgt), len(tgt))
    return 1.0 - d / len(tgt)


def _words(text: str) -> list[str]:
    return [w for w in (re.sub(r"[^0-9a-z]", "", t) for t in text.lower().split()) if w]


def ocr_word_accuracy_score(recognised: str, target: str) -> float:
    tgt = _words(target)
    if not tgt:
        return float("nan")
    found = Counter(_words(recognised))
    hits = sum(min(n, found[w]) for w, n in Counter(tgt).items())
    return hits / len(tgt)


@register_reward("ocr_ned")
def _build_ocr_ned(**kwargs) -> OCRReward:
    return OCRReward(metric="ned", **kwargs)


@register_reward("ocr_word_accuracy")
def _build_ocr_word_accuracy(**kwargs) -> OCRReward:
    return OCRReward(metric="word_accuracy", **kwargs)


# -----------------------------------------------------------------------------
# GenEval rule reward over a pluggable detector


@dataclass
class Detection:
    label: str
    box: tuple[float, float, float, float]  # (x1, y1, x2, y2) in pixels, y down
    score: float = 1.0
    colour: str | None = None


@dataclass
class GenEvalResult:
    score: float  # training reward (partial credit, may be negative)
    strict_correct: bool  # exact counts (Flow-GRPO's strict accuracy)
    correct: bool  # original GenEval correctness (>= counts on the top-n objects, exclude clauses)
    reasons: list[str] = field(default_factory=list)


@register_reward("geneval_rule")
class GenEvalRuleReward:
    """GenEval rule reward (Flow-GRPO reward-server semantics) over a caller-supplied detector.

    ``detector(image) -> list[Detection]``; detections with score > threshold (``counting_threshold`` when
    meta["tag"] == "counting") are kept, sorted by score, at most ``max_objects`` per class (no NMS).
    ``meta["include"]``: [{"class", "count", "color"?, "position"?: [relation, index of an earlier clause]}],
    ``meta["exclude"]``: [{"class", "count"}] (forbids >= count objects).

    Training score = mean of the per-clause parts (reproducing the reference quirks):
      * count: 1 - |n_req - n_found| / n_req (negative when more than 2 n_req objects are found);
      * counts differ: one extra 0 if the clause has a colour or a position (not one per attribute);
      * colour (counts equal): 1 - |n_req - n_right_colour| / n_req;
      * position (counts equal and colour right): the target clause failed -> 0; a failing pair -> 0 AND 1
        (worth 0.5 in the mean); all pairs right -> 1. A wrong colour skips the position part entirely.
      * exclude clauses are not scored, and do not affect strict_correct (as in the reference);
      * no include clause -> NaN.
    Every result is written to meta[i]["geneval"] (score, strict_correct, correct, reasons) and kept in
    ``self.last_results``. A detector exception gives NaN and the error in the reasons.
    """

    def __init__(self, detector: Callable[[Image.Image], list[Detection]], threshold: float = 0.3,
                 counting_threshold: float = 0.9, max_objects: int = 16, write_meta: bool = True):
        if not callable(detector):
            raise ConfigError("GenEvalRuleReward needs detector=callable(image) -> list[Detection]")
        self.detector = detector
        self.threshold = threshold
        self.counting_threshold = counting_threshold
        self.max_objects = max_objects
        self.write_meta = write_meta
        self.last_results: list[GenEvalResult] = []

    def __call__(self, images, prompts, meta) -> Tensor:
        _check_batch(images, prompts, meta)
        results = []
        for img, m in zip(images, meta):
            try:
                res = self.evaluate(self.detector(_rgb(img)), m)
            except Exception as e:  # noqa: BLE001 - a detector failure means "could not score"
                res = GenEvalResult(float("nan"), False, False, [f"detector error: {e!r}"])
            results.append(res)
            if self.write_meta:
                m["geneval"] = {"score": res.score, "strict_correct": res.strict_correct,
                                "correct": res.correct, "reasons": list(res.reasons)}
        self.last_results = results
        return _scores(r.score for r in results)

    def _objects(self, detections: list[Detection], tag) -> dict[str, list[Detection]]:
        thr = self.counting_threshold if tag == "counting" else self.threshold
        objects: dict[str, list[Detection]] = {}
        for d in sorted(detections, key=lambda d: -d.score):
            if d.score > thr and len(objects.setdefault(d.label, [])) < self.max_objects:
                objects[d.label].append(d)
        return {k: v for k, v in objects.items() if v}

    def evaluate(self, detections: list[Detection], meta: dict) -> GenEvalResult:
        objects = self._objects(detections, meta.get("tag"))
        include = meta.get("include") or []
        if not include:
            return GenEvalResult(float("nan"), False, False, ["no include clauses in meta"])
        parts: list[float] = []
        reasons: list[str] = []
        groups: list[list[Detection] | None] = []
        strict = True
        for clause in include:
            cls, n = clause["class"], int(clause["count"])
            found = objects.get(cls, [])
            ok = True
            parts.append(1.0 - abs(n - len(found)) / n)
            if len(found) != n:
                ok = False
                reasons.append(f"expected {cls}=={n}, found {len(found)}")
                if "color" in clause or "position" in clause:
                    parts.append(0.0)
            else:
                if "color" in clause:
                    k = sum(_same_colour(d.colour, clause["color"]) for d in found)
                    parts.append(1.0 - abs(n - k) / n)
                    if k != n:
                        ok = False
                        reasons.append(f"expected {n} {clause['color']} {cls}, found {k}")
                if "position" in clause and ok:
                    rel, target = clause["position"]
                    tgt = groups[target] if 0 <= target < len(groups) else None
                    if tgt is None:
                        ok = False
                        reasons.append(f"no target for {cls} to be {rel}")
                        parts.append(0.0)
                    else:
                        if any(rel not in relative_position(a.box, b.box) for a in found for b in tgt):
                            ok = False
                            reasons.append(f"expected {cls} {rel} target")
                            parts.append(0.0)
                        parts.append(1.0)  # reference quirk: appended even after a failing pair
            groups.append(found if ok else None)
            strict = strict and ok
        return GenEvalResult(sum(parts) / len(parts), strict, _geneval_correct(objects, meta), reasons)


def _same_colour(found: str | None, wanted: str) -> bool:
    return found is not None and found.strip().lower() == str(wanted).strip().lower()


def _geneval_correct(objects: dict[str, list[Detection]], meta: dict) -> bool:
    """Original GenEval correctness: >= count, colour/position on the n most confident objects, exclusions."""
    groups: list[list[Detection] | None] = []
    correct = True
    for clause in meta.get("include") or []:
        n = int(clause["count"])
        found = objects.get(clause["class"], [])[:n]
        ok = len(found) >= n
        if ok and "color" in clause:
            ok = sum(_same_colour(d.colour, clause["color"]) for d in found) >= n
        if ok and "position" in clause:
            rel, target = clause["position"]
            tgt = groups[target] if 0 <= target < len(groups) else None
            ok = tgt is not None and all(rel in relative_position(a.box, b.box) for a in found for b in tgt)
        groups.append(found if ok else None)
        correct = correct and ok
    for clause in meta.get("exclude") or []:
        if len(objects.get(clause["class"], [])) >= int(clause["count"]):
            correct = False
    return correct


# -----------------------------------------------------------------------------
# CLIP / SigLIP similarity and preference (local model directories only)


def _require_model_dir(model_dir, reward: str, arg: str = "model_dir") -> Path:
    if model_dir is None or not Path(model_dir).is_dir():
        raise ConfigError(
            f"the {reward!r} reward needs {arg}= a LOCAL directory with the model (config.json, weights, "
            f"tokenizer, preprocessor_config.json); got {model_dir!r}. thinkgen never downloads reward models: "
            f"fetch them yourself (e.g. `hf download <repo> --local-dir DIR`) and pass {arg}=DIR.")
    return Path(model_dir)


class _FallbackImageProcessor:
    """CLIP-style preprocessing from preprocessor_config.json when no transformers image processor loads
    (the fast ones need torchvision): resize the shortest side, centre-crop, rescale, normalise."""

    def __init__(self, model_dir: Path):
        cfg = json.loads((model_dir / "preprocessor_config.json").read_text())
        size = cfg.get("size", 224)
        self.short = size.get("shortest_edge", size.get("height", 224)) if isinstance(size, dict) else int(size)
        crop = cfg.get("crop_size", self.short)
        self.crop = (crop["height"], crop["width"]) if isinstance(crop, dict) else (int(crop), int(crop))
        self.mean = torch.tensor(cfg.get("image_mean", [0.48145466, 0.4578275, 0.40821073])).view(3, 1, 1)
        self.std = torch.tensor(cfg.get("image_std", [0.26862954, 0.26130258, 0.27577711])).view(3, 1, 1)
        self.rescale = float(cfg.get("rescale_factor", 1 / 255))

    def __call__(self, images, return_tensors="pt"):
        out = []
        for im in images:
            w, h = im.size
            s = self.short / min(w, h)
            im = im.resize((max(1, round(w * s)), max(1, round(h * s))), Image.BICUBIC)
            w, h = im.size
            ch, cw = self.crop
            left, top = (w - cw) // 2, (h - ch) // 2
            im = im.crop((left, top, left + cw, top + ch))
            x = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8).view(ch, cw, 3).permute(2, 0, 1)
            out.append((x.float() * self.rescale - self.mean) / self.std)
        return {"pixel_values": torch.stack(out)}


def _pooled(out) -> Tensor:
    return out if isinstance(out, Tensor) else out.pooler_output


class _LocalCLIP:
    """A CLIP-like dual encoder (CLIP, SigLIP, ...) loaded offline with AutoModel / AutoProcessor."""

    def __init__(self, model_dir: Path, device="cpu", batch_size: int = 16):
        from transformers import AutoModel, AutoProcessor, AutoTokenizer

        self.device = torch.device(device)
        self.batch_size = batch_size
        self.model = AutoModel.from_pretrained(model_dir, local_files_only=True).to(self.device).eval()
        try:
            proc = AutoProcessor.from_pretrained(model_dir, local_files_only=True)
            self.tokenizer, self.image_processor = proc.tokenizer, proc.image_processor
        except Exception:  # noqa: BLE001 - processors needing torchvision fail here; build the parts
            self.tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
            try:
                from transformers import AutoImageProcessor

                self.image_processor = AutoImageProcessor.from_pretrained(model_dir, local_files_only=True)
            except Exception:  # noqa: BLE001
                self.image_processor = _FallbackImageProcessor(model_dir)
        cfg = self.model.config
        text_cfg = getattr(cfg, "text_config", cfg)
        self.max_length = int(getattr(text_cfg, "max_position_embeddings", 77))
        # SigLIP was trained on max_length-padded text; CLIP pools at the EOS token and pads freely.
        self.padding = "max_length" if "siglip" in str(getattr(cfg, "model_type", "")) else True

    @torch.inference_mode()
    def image_embeds(self, images: list[Image.Image]) -> Tensor:
        out = []
        for i in range(0, len(images), self.batch_size):
            px = self.image_processor(images[i:i + self.batch_size], return_tensors="pt")["pixel_values"]
            f = _pooled(self.model.get_image_features(pixel_values=px.to(self.device)))
            out.append(torch.nn.functional.normalize(f.float(), dim=-1))
        return torch.cat(out).cpu()

    @torch.inference_mode()
    def text_embeds(self, texts: list[str]) -> Tensor:
        out = []
        for i in range(0, len(texts), self.batch_size):
            tok = self.tokenizer(texts[i:i + self.batch_size], padding=self.padding, truncation=True,
                                 max_length=self.max_length, return_tensors="pt")
            kw = {"input_ids": tok["input_ids"].to(self.device)}
            if "attention_mask" in tok and self.padding is True:
                kw["attention_mask"] = tok["attention_mask"].to(self.device)
            f = _pooled(self.model.get_text_features(**kw))
            out.append(torch.nn.functional.normalize(f.float(), dim=-1))
        return torch.cat(out).cpu()


@register_reward("clip_similarity")
class CLIPSimilarityReward:
    """scale * cos(image embedding, prompt embedding) with a local CLIP/SigLIP (``model_dir``).

    The text scored is meta[i]["clip_text"] when present, else the prompt. PickScore-style calibration is
    available through ``scale`` (e.g. logit_scale / 26 with a PickScore checkpoint).
    """

    def __init__(self, model_dir=None, scale: float = 1.0, device="cpu", batch_size: int = 16):
        self.model = _LocalCLIP(_require_model_dir(model_dir, "clip_similarity"), device, batch_size)
        self.scale = scale

    def __call__(self, images, prompts, meta) -> Tensor:
        _check_batch(images, prompts, meta)
        img = self.model.image_embeds([_rgb(im) for im in images])
        txt = self.model.text_embeds([m.get("clip_text", p) for p, m in zip(prompts, meta)])
        return (self.scale * (img * txt).sum(-1)).float()


def _load_linear_head(path: Path) -> torch.nn.Linear:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        sd = load_file(str(path))
    else:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    weights = [k for k, v in sd.items() if k.endswith("weight") and v.dim() == 2]
    if len(weights) != 1 or sd[weights[0]].shape[0] != 1:
        raise ConfigError(f"head_path={str(path)!r} must hold ONE linear layer with weight [1, D] "
                          f"(+ optional bias [1]); found tensors {[(k, tuple(v.shape)) for k, v in sd.items()]}")
    w = sd[weights[0]]
    head = torch.nn.Linear(w.shape[1], 1, bias=True)
    with torch.no_grad():
        head.weight.copy_(w)
        bias_key = weights[0][: -len("weight")] + "bias"
        head.bias.copy_(sd[bias_key].reshape(1) if bias_key in sd else torch.zeros(1))
    return head.eval()


@register_reward("preference")
class PreferenceReward:
    """Human-preference score from a local CLIP-like model (HPS / PickScore / aesthetic style).

    Without ``head_path``: scale * cos(image, prompt) (HPS v2 scores this way with its fine-tuned CLIP).
    With ``head_path`` (a .safetensors/.pt holding one Linear [1, D]): scale * head(normalised image
    embedding), prompt-independent (LAION-aesthetic style).
    """

    def __init__(self, model_dir=None, head_path=None, scale: float = 1.0, device="cpu", batch_size: int = 16):
        self.model = _LocalCLIP(_require_model_dir(model_dir, "preference"), device, batch_size)
        self.head = None
        if head_path is not None:
            if not Path(head_path).is_file():
                raise ConfigError(f"preference: head_path={head_path!r} is not a file")
            self.head = _load_linear_head(Path(head_path))
        self.scale = scale

    def __call__(self, images, prompts, meta) -> Tensor:
        _check_batch(images, prompts, meta)
        img = self.model.image_embeds([_rgb(im) for im in images])
        if self.head is not None:
            with torch.inference_mode():
                return (self.scale * self.head(img).squeeze(-1)).float()
        txt = self.model.text_embeds(list(prompts))
        return (self.scale * (img * txt).sum(-1)).float()


# -----------------------------------------------------------------------------
# VLM judge

DEFAULT_JUDGE_TEMPLATE = (
    "You are a strict judge of AI-generated images.\n"
    "Prompt: {prompt}\n"
    "Rate how faithfully the image follows the prompt (objects, counts, colours, positions, text) and its "
    "visual quality, from 0 (unrelated or broken) to 10 (perfect). Explain briefly, then finish with one "
    "line exactly of the form: Score: X/10"
)

_SCORE_RE = re.compile(r"score\s*[:=]?\s*\**\s*(\d+(?:\.\d+)?)\s*(?:/\s*(\d+(?:\.\d+)?))?", re.IGNORECASE)


def parse_judge_score(reply: str, default_max: float = 10.0) -> float | None:
    """Rule parser: the LAST "Score: X/Y" (or "Score: X", read as X/default_max) -> X / Y in [0, 1].

    Returns None when there is no such line or X is outside [0, Y].
    """
    if not isinstance(reply, str):
        return None
    matches = _SCORE_RE.findall(reply)
    if not matches:
        return None
    x, y = matches[-1]
    x, y = float(x), float(y) if y else default_max
    if y <= 0 or not 0 <= x <= y:
        return None
    return x / y


class OpenAIChatBackend:
    """Minimal OpenAI-compatible chat-completions client (urllib): backend(image, text) -> reply text.

    POST {base_url}/chat/completions with the image (or a list of images, in order) as PNG data URLs. The API key
    is read from the environment variable ``api_key_env`` (sent only if set). Transport errors, HTTP 429 and 5xx are retried
    up to ``max_retries`` (<= 3) times with linear backoff; other HTTP errors raise at once.
    """

    def __init__(self, base_url: str, model: str, api_key_env: str = "OPENAI_API_KEY", timeout: float = 60.0,
                 max_retries: int = 3, backoff_s: float = 1.0, max_tokens: int = 512, temperature: float = 0.0):
        if not 0 <= max_retries <= 3:
            raise ConfigError(f"max_retries must be in [0, 3], got {max_retries}")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.api_key_env, self.timeout = model, api_key_env, timeout
        self.max_retries, self.backoff_s = max_retries, backoff_s
        self.max_tokens, self.temperature = max_tokens, temperature

    def _payload(self, image, text: str) -> bytes:
        parts = []
        for im in image if isinstance(image, (list, tuple)) else [image]:     # one image, or several in order
            buf = io.BytesIO()
            _rgb(im).save(buf, format="PNG")
            url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
            parts.append({"type": "image_url", "image_url": {"url": url}})
        return json.dumps({
            "model": self.model,
            "messages": [{"role": "user", "content": parts + [{"type": "text", "text": text}]}],
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
        }).encode("utf-8")

    def __call__(self, image, text: str) -> str:
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        data = self._payload(image, text)
        last: Exception | None = None
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(self.backoff_s * attempt)
            req = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    body = json.loads(resp.read().decode("utf-8"))
                return body["choices"][0]["message"]["content"]
            except urllib.error.HTTPError as e:
                last = e
                if e.code != 429 and e.code < 500:
                    raise GenerationError(f"judge endpoint {self.url} answered HTTP {e.code}: {e.reason}") from e
            except (urllib.error.URLError, TimeoutError, OSError, ValueError, KeyError, IndexError) as e:
                last = e
        raise GenerationError(f"judge endpoint {self.url} failed after {self.max_retries + 1} tries: {last!r}")


@register_reward("vlm_judge")
class VLMJudgeReward:
    """Score images with a VLM judge: the reply's "Score: X/10" parsed to X/10 in [0, 1].

    ``backend`` is a callable (image, text) -> reply, e.g. OpenAIChatBackend(base_url, model) or a local
    function; build_reward("vlm_judge", base_url=..., model=...) builds the HTTP one.
    An unparsable reply is re-asked up to ``max_parse_retries`` times; if it still fails the sample scores
    0.0 (not NaN: an unparsable judge counts against the image) and ``stats["parse_failed"]`` counts it.
    A backend exception also scores 0.0 and counts in ``stats["request_failed"]``. ``last_status`` holds
    "ok" / "cached" / "parse_failed" / "request_failed" per sample. Parsed scores are cached by
    (sha256 of the image pixels, judge prompt text) in an LRU of ``cache_size`` entries; failures are not.
    """

    def __init__(self, backend: Callable[[Image.Image, str], str] | None = None,
                 template: str = DEFAULT_JUDGE_TEMPLATE, max_parse_retries: int = 2, max_workers: int = 4,
                 cache_size: int = 4096, base_url: str | None = None, model: str | None = None,
                 **backend_kwargs):
        if backend is None:
            if not base_url or not model:
                raise ConfigError("vlm_judge needs backend=callable(image, text) -> str, "
                                  "or base_url= and model= of an OpenAI-compatible endpoint")
            backend = OpenAIChatBackend(base_url, model, **backend_kwargs)
        if not callable(backend):
            raise ConfigError(f"vlm_judge backend must be callable(image, text) -> str, got {backend!r}")
        if "{prompt}" not in template:
            raise ConfigError("vlm_judge template must contain '{prompt}'")
        self.backend, self.template = backend, template
        self.max_parse_retries, self.max_workers = max_parse_retries, max_workers
        self.cache_size = cache_size
        self._cache: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._lock = threading.Lock()
        self.stats: Counter = Counter()
        self.last_status: list[str] = []

    @staticmethod
    def image_hash(image: Image.Image) -> str:
        h = hashlib.sha256(f"{image.mode}{image.size}".encode())
        h.update(image.tobytes())
        return h.hexdigest()

    def _score_one(self, image: Image.Image, prompt: str) -> tuple[float, str]:
        text = self.template.format(prompt=prompt)
        key = (self.image_hash(image), text)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                self.stats["cache_hits"] += 1
                return self._cache[key], "cached"
        for _ in range(self.max_parse_retries + 1):
            with self._lock:
                self.stats["calls"] += 1
            try:
                reply = self.backend(image, text)
            except Exception:  # noqa: BLE001 - the backend already retried transport errors
                with self._lock:
                    self.stats["request_failed"] += 1
                return 0.0, "request_failed"
            score = parse_judge_score(reply)
            if score is not None:
                with self._lock:
                    self._cache[key] = score
                    while len(self._cache) > self.cache_size:
                        self._cache.popitem(last=False)
                return score, "ok"
        with self._lock:
            self.stats["parse_failed"] += 1
        return 0.0, "parse_failed"

    def __call__(self, images, prompts, meta) -> Tensor:
        _check_batch(images, prompts, meta)
        images = [_rgb(im) for im in images]
        with ThreadPoolExecutor(max_workers=self.max_workers) as pool:
            results = list(pool.map(self._score_one, images, prompts))
        self.last_status = [s for _, s in results]
        return _scores(v for v, _ in results)
