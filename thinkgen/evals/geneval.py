"""GenEval (Ghosh et al. 2023): object-focused text-to-image alignment, 553 prompts in six tags.

generate: ``<out>/<00000..00552>/metadata.jsonl`` (that prompt's metadata line) and ``samples/<0000>.png`` (4 images
per prompt by default), the layout of the official ``evaluation/evaluate_images.py``.

score: a detector finds objects (per class: boxes, scores, masks where the model has them), a CLIP zero-shot
classifier names the colour of each relevant object (the official ten colours and three templates, the object's mask
composited on grey #999 and cropped to its box), then the official rules (``GenEvalRuleReward``'s GenEval-correctness:
threshold 0.3, 0.9 for counting, at most 16 per class, include / exclude counts, colours, the position rule) mark each
image correct or not; a tag's score is its share of correct images and **overall = the mean of the six tag scores**.

The official detector is mmdetection's Mask2Former Swin-S COCO checkpoint; this harness runs any local transformers
checkpoint (``--detector DIR``: Mask2Former instance segmentation, e.g. facebook/mask2former-swin-small-coco-instance,
or any AutoModelForObjectDetection such as DETR) and any local CLIP (``--clip DIR``; the official one is OpenAI
ViT-L/14). Other weights than the official ones give close but not identical numbers: results record which were used.
"""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ..errors import ConfigError, InvalidInputError
from ..rl.rewards import Detection, GenEvalRuleReward, _LocalCLIP, _require_model_dir
from .common import GenItem, mean, progress_bar

DATA = Path(__file__).parent / "data" / "geneval" / "evaluation_metadata.jsonl"
TAGS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
COLORS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")
COLOR_TEMPLATES = ("a photo of a {c} {obj}", "a photo of a {c}-colored {obj}", "a photo of a {c} object")
# transformers' COCO label names -> GenEval's object names (the rest are the same words)
LABEL_ALIASES = {"mouse": "computer mouse", "remote": "tv remote", "keyboard": "computer keyboard",
                 "motorbike": "motorcycle", "aeroplane": "airplane", "sofa": "couch", "pottedplant": "potted plant",
                 "diningtable": "dining table", "tvmonitor": "tv", "hair dryer": "hair drier"}


def load_metadata(path: str | Path | None = None) -> list[dict]:
    path = Path(path) if path else DATA
    if not path.is_file():
        raise InvalidInputError(f"GenEval metadata {path} not found; pass the official "
                                "prompts/evaluation_metadata.jsonl (or leave --data out for the bundled copy)")
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise InvalidInputError(f"{path}:{n} is not JSON ({e})") from None
        if not isinstance(row, dict) or "prompt" not in row or "include" not in row or row.get("tag") not in TAGS:
            raise InvalidInputError(f"{path}:{n} is not a GenEval metadata line (needs prompt, include, tag in {TAGS})")
        rows.append(row)
    return rows


def items(out_dir: Path, images_per_prompt: int, data: str | Path | None = None, limit: int | None = None) -> list[GenItem]:
    rows = load_metadata(data)[:limit]
    out = []
    for i, row in enumerate(rows):
        folder = Path(out_dir) / f"{i:05d}"
        out.append(GenItem(key=f"{i:05d}", prompt=row["prompt"],
                           outputs=[folder / "samples" / f"{j:04d}.png" for j in range(images_per_prompt)],
                           extra_files={str(folder / "metadata.jsonl"): json.dumps(row) + "\n"}))
    return out


# ----------------------------------------------------------------------------------------------------- observers
class TransformersDetector:
    """detector(image) -> list[Detection] (label = GenEval object name, box in pixels, score, mask or None)."""

    def __init__(self, model_dir, device: str = "cpu"):
        from transformers import AutoConfig

        model_dir = _require_model_dir(model_dir, "geneval detector", "--detector")
        cfg = AutoConfig.from_pretrained(model_dir, local_files_only=True)
        self.device = torch.device(device)
        self.kind = "mask2former" if cfg.model_type == "mask2former" else "boxes"
        if self.kind == "mask2former":
            from transformers import Mask2FormerForUniversalSegmentation as Model
        else:
            from transformers import AutoModelForObjectDetection as Model
        from transformers import AutoImageProcessor

        self.model = Model.from_pretrained(model_dir, local_files_only=True).to(self.device).eval()
        self.processor = AutoImageProcessor.from_pretrained(model_dir, local_files_only=True)
        self.labels = {int(k): LABEL_ALIASES.get(v, v) for k, v in self.model.config.id2label.items()}
        self.name = str(model_dir)

    @torch.inference_mode()
    def __call__(self, image: Image.Image) -> list[Detection]:
        inputs = self.processor(images=[image], return_tensors="pt")
        outputs = self.model(**{k: v.to(self.device) for k, v in inputs.items()})
        size = [(image.height, image.width)]
        dets = []
        if self.kind == "mask2former":
            res = self.processor.post_process_instance_segmentation(outputs, threshold=0.0, target_sizes=size,
                                                                    return_binary_maps=True)[0]
            masks = res["segmentation"]                   # (n, H, W) binary maps, one per segment
            for k, seg in enumerate(res["segments_info"]):
                m = masks[k].bool() if masks is not None and masks.dim() == 3 else None
                if m is None or not m.any():
                    continue
                ys, xs = torch.nonzero(m, as_tuple=True)
                box = (float(xs.min()), float(ys.min()), float(xs.max()) + 1, float(ys.max()) + 1)
                d = Detection(self.labels[int(seg["label_id"])], box, float(seg["score"]))
                d.mask = m.cpu()                           # type: ignore[attr-defined]
                dets.append(d)
        else:
            res = self.processor.post_process_object_detection(outputs, threshold=0.0, target_sizes=size)[0]
            for score, label, box in zip(res["scores"], res["labels"], res["boxes"]):
                dets.append(Detection(self.labels[int(label)], tuple(float(x) for x in box), float(score)))
        return dets


class ClipColourClassifier:
    """colour(image, detection) -> one of COLORS, zero-shot with a local CLIP (templates averaged per colour)."""

    def __init__(self, model_dir, device: str = "cpu"):
        self.clip = _LocalCLIP(_require_model_dir(model_dir, "geneval colour classifier", "--clip"), device)
        self._text: dict[str, torch.Tensor] = {}
        self.name = str(model_dir)

    def _classes(self, obj: str) -> torch.Tensor:
        if obj not in self._text:
            embs = []
            for c in COLORS:
                e = self.clip.text_embeds([t.format(c=c, obj=obj) for t in COLOR_TEMPLATES]).mean(0)
                embs.append(torch.nn.functional.normalize(e, dim=-1))
            self._text[obj] = torch.stack(embs)            # (10, D)
        return self._text[obj]

    def __call__(self, image: Image.Image, det: Detection) -> str:
        return COLORS[int((self.clip.image_embeds([colour_crop(image, det)]) @ self._classes(det.label).T).argmax())]


def colour_crop(image: Image.Image, det: Detection) -> Image.Image:
    """The object on grey #999 (its mask, where the detector gave one), cropped to its box."""
    x1, y1, x2, y2 = (int(round(v)) for v in det.box)
    mask = getattr(det, "mask", None)
    if mask is not None:
        grey = Image.new("RGB", image.size, (153, 153, 153))
        m = Image.fromarray((mask.numpy().astype("uint8") * 255), mode="L")
        image = Image.composite(image, grey, m)
    return image.crop((max(0, x1), max(0, y1), max(x1 + 1, x2), max(y1 + 1, y2)))


# ----------------------------------------------------------------------------------------------------- scoring
def score_image(detections: list[Detection], meta: dict, colour=None, image: Image.Image | None = None) -> dict:
    """Official GenEval correctness of one image from its detections; ``colour(image, det)`` names colours of the
    objects a colour clause asks about (only those are classified, as in the official script)."""
    rule = GenEvalRuleReward(detector=lambda _: detections, write_meta=False)
    want = {c["class"] for c in meta["include"] if "color" in c}
    if want:
        if colour is None or image is None:
            raise ConfigError("this prompt has colour clauses: scoring needs a colour classifier (--clip DIR)")
        kept = rule._objects(detections, meta.get("tag"))
        for cls in want:
            for d in kept.get(cls, []):
                d.colour = colour(image, d)
    res = rule.evaluate(detections, meta)
    return {"correct": bool(res.correct), "reasons": res.reasons}


def summarise(records: list[dict]) -> dict[str, Any]:
    by_tag: dict[str, list[bool]] = defaultdict(list)
    for r in records:
        by_tag[r["tag"]].append(r["correct"])
    tags = {t: mean(by_tag[t]) for t in TAGS if by_tag[t]}
    return {"tags": tags, "overall": mean(tags.values()), "images": len(records),
            "complete": all(t in tags for t in TAGS)}


def score_folder(folder: Path, detector, colour=None, progress: bool = True) -> list[dict]:
    folder = Path(folder)
    subdirs = sorted(p for p in folder.iterdir() if p.is_dir() and (p / "metadata.jsonl").is_file())
    if not subdirs:
        raise InvalidInputError(f"{folder} holds no GenEval outputs (<00000>/metadata.jsonl + samples/*.png); "
                                "run `thinkgen eval geneval generate` first")
    records = []
    bar = progress_bar(len(subdirs), "geneval score", "prompt", progress)
    for sub in subdirs:
        meta = json.loads((sub / "metadata.jsonl").read_text().splitlines()[0])
        for png in sorted((sub / "samples").glob("*.png")):
            image = Image.open(png).convert("RGB")
            r = score_image(detector(image), meta, colour, image)
            records.append({"key": sub.name, "image": png.name, "tag": meta["tag"], "prompt": meta["prompt"], **r})
        bar.update(1)
    bar.close()
    return records
