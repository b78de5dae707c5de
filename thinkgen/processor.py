"""Torchvision-free Qwen3-VL input builder: tokenizer + Qwen2VLImageProcessorPil + placeholder expansion.

transformers' own `Qwen3VLProcessor` cannot be built without torchvision (its video processor class check fails),
and the CPU machines cannot have torchvision. This class does the part we need, the same way on every machine:

* images -> `pixel_values` (N_patches, 3*2*16*16) and `image_grid_thw` (N_images, 3) with Qwen3-VL's settings
  (patch 16, merge 2, temporal patch 2, mean/std 0.5);
* each `<|image_pad|>` in the text, in order, becomes `grid.prod() // merge**2` copies of itself;
* `mm_token_type_ids` (0 text, 1 image, 2 video), which transformers 5.x requires whenever `image_grid_thw` is given.

The folder layout is the released `processor/` one: tokenizer files + `preprocessor_config.json`.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from PIL import Image
from transformers import AutoTokenizer

from thinkgen.errors import CheckpointError, InvalidInputError
from thinkgen.tokenization import CHAT_TEMPLATE, IMAGE_PAD, VIDEO_PAD, check_special_tokens

try:  # transformers >= 5.x ships the PIL backend under this name
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil as _ImageProcessor
except ImportError:  # pragma: no cover - older transformers: the default class (needs no torchvision there)
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor as _ImageProcessor

PREPROCESSOR_CONFIG = "preprocessor_config.json"
DEFAULT_MIN_PIXELS = 32 * 32
DEFAULT_MAX_PIXELS = 262144  # 512 x 512, what ThinkGen's think mode passes


class ThinkGenProcessor:
    """Builds Qwen3-VL model inputs from prompt strings and PIL images, without torchvision."""

    def __init__(self, tokenizer, *, patch_size: int = 16, merge_size: int = 2, temporal_patch_size: int = 2,
                 min_pixels: int = DEFAULT_MIN_PIXELS, max_pixels: int = DEFAULT_MAX_PIXELS,
                 image_mean=(0.5, 0.5, 0.5), image_std=(0.5, 0.5, 0.5)):
        if min_pixels <= 0 or max_pixels < min_pixels:
            raise InvalidInputError(f"need 0 < min_pixels <= max_pixels, got min_pixels={min_pixels}, "
                                    f"max_pixels={max_pixels}")
        self.tokenizer = tokenizer
        if getattr(tokenizer, "chat_template", None) is None:
            tokenizer.chat_template = CHAT_TEMPLATE
        self.special_ids = check_special_tokens(tokenizer)
        self.image_token_id = self.special_ids[IMAGE_PAD]
        self.video_token_id = self.special_ids[VIDEO_PAD]
        self.patch_size, self.merge_size, self.temporal_patch_size = patch_size, merge_size, temporal_patch_size
        self.min_pixels, self.max_pixels = int(min_pixels), int(max_pixels)
        self.image_processor = _ImageProcessor(
            patch_size=patch_size, merge_size=merge_size, temporal_patch_size=temporal_patch_size,
            size={"shortest_edge": self.min_pixels, "longest_edge": self.max_pixels},
            image_mean=list(image_mean), image_std=list(image_std),
        )

    # ------------------------------------------------------------------ images
    def preprocess_images(self, images: list[Image.Image], max_pixels: int | None = None) -> dict[str, torch.Tensor]:
        """pixel_values (N_patches, C*T*P*P) float32 and image_grid_thw (N_images, 3) long."""
        for i, im in enumerate(images):
            if not isinstance(im, Image.Image):
                raise InvalidInputError(f"images[{i}] is a {type(im).__name__}, expected a PIL.Image.Image")
        max_pixels = self.max_pixels if max_pixels is None else int(max_pixels)
        min_pixels = min(self.min_pixels, max_pixels)
        out = self.image_processor(images=[im.convert("RGB") for im in images], return_tensors="pt",
                                   size={"shortest_edge": min_pixels, "longest_edge": max_pixels})
        return {"pixel_values": out["pixel_values"], "image_grid_thw": out["image_grid_thw"].long()}

    def num_image_tokens(self, grid_thw) -> int:
        return int(torch.as_tensor(grid_thw).prod()) // (self.merge_size ** 2)

    # ------------------------------------------------------------------ text + images
    def __call__(self, texts: list[str], images: list[list[Image.Image]] | None = None, *,
                 padding_side: str = "left", max_pixels: int | None = DEFAULT_MAX_PIXELS,
                 max_length: int | None = None) -> dict[str, torch.Tensor]:
        """Tokenise `texts` (already chat-formatted) with their images.

        images[i] are the images of texts[i], in the order of its `<|image_pad|>` placeholders; their counts must
        match. images=None is the tokenizer-only path (the reference's no-think path): placeholders stay single
        tokens and no pixels are produced. Returns input_ids, attention_mask (long) and, when there is at least one
        image, pixel_values, image_grid_thw and mm_token_type_ids. max_length: raise if a prompt is longer (never
        truncates).
        """
        if isinstance(texts, str):
            texts = [texts]
        if padding_side not in ("left", "right"):
            raise InvalidInputError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        if images is not None and len(images) != len(texts):
            raise InvalidInputError(f"got {len(texts)} texts but {len(images)} image lists; pass one list per text")
        per_text = [list(ims or []) for ims in images] if images is not None else [[] for _ in texts]
        flat = [im for ims in per_text for im in ims]

        vision: dict[str, torch.Tensor] = {}
        if flat:
            vision = self.preprocess_images(flat, max_pixels=max_pixels)
        grids = vision.get("image_grid_thw")

        expanded, k = [], 0
        for i, (text, ims) in enumerate(zip(texts, per_text)):
            if images is None:
                expanded.append(text)
                continue
            pieces = text.split(IMAGE_PAD)
            if len(pieces) - 1 != len(ims):
                raise InvalidInputError(
                    f"texts[{i}] has {len(pieces) - 1} {IMAGE_PAD} placeholders but {len(ims)} images were given")
            out = pieces[0]
            for piece in pieces[1:]:
                out += IMAGE_PAD * self.num_image_tokens(grids[k]) + piece
                k += 1
            expanded.append(out)

        ids = [self.tokenizer.encode(t, add_special_tokens=False) for t in expanded]
        longest = max(len(x) for x in ids)
        if max_length is not None and longest > max_length:
            raise InvalidInputError(f"prompt is {longest} tokens, longer than max_length={max_length}; "
                                    "shorten the instruction or raise max_length")
        pad_id = self.tokenizer.pad_token_id
        input_ids = torch.full((len(ids), longest), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(ids), longest), dtype=torch.long)
        for i, x in enumerate(ids):
            sl = slice(longest - len(x), longest) if padding_side == "left" else slice(0, len(x))
            input_ids[i, sl] = torch.tensor(x, dtype=torch.long)
            attention_mask[i, sl] = 1
        batch = {"input_ids": input_ids, "attention_mask": attention_mask}
        if flat:
            mm = torch.zeros_like(input_ids)
            mm[(input_ids == self.image_token_id) & attention_mask.bool()] = 1
            mm[(input_ids == self.video_token_id) & attention_mask.bool()] = 2
            batch.update(vision, mm_token_type_ids=mm)
        return batch

    def apply_chat_template(self, messages, **kwargs) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)

    # ------------------------------------------------------------------ save / load
    def to_config(self) -> dict:
        return {
            "image_processor_type": "Qwen2VLImageProcessor",
            "processor_class": "Qwen3VLProcessor",
            "patch_size": self.patch_size, "merge_size": self.merge_size,
            "temporal_patch_size": self.temporal_patch_size,
            "min_pixels": self.min_pixels, "max_pixels": self.max_pixels,
            "size": {"shortest_edge": self.min_pixels, "longest_edge": self.max_pixels},
            "image_mean": list(self.image_processor.image_mean), "image_std": list(self.image_processor.image_std),
            "do_resize": True, "do_rescale": True, "do_normalize": True, "do_convert_rgb": True,
            "resample": 3, "rescale_factor": 1 / 255,
        }

    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        path = Path(save_directory)
        path.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(str(path))
        (path / PREPROCESSOR_CONFIG).write_text(json.dumps(self.to_config(), indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, **overrides) -> "ThinkGenProcessor":
        """Load tokenizer files + preprocessor_config.json (ours or a released Qwen3-VL `processor/` folder)."""
        path = Path(directory)
        if not path.is_dir():
            raise CheckpointError(f"processor folder {str(path)!r} does not exist")
        try:
            tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        except Exception as e:  # noqa: BLE001 - re-raised with the folder named
            raise CheckpointError(f"cannot load the tokenizer from {str(path)!r}: {e}") from e
        if getattr(tok, "chat_template", None) is None:
            # A released processor folder may keep the template next to the tokenizer (chat_template.json).
            cj = path / "chat_template.json"
            tok.chat_template = json.loads(cj.read_text())["chat_template"] if cj.is_file() else CHAT_TEMPLATE
        kw: dict = {}
        cfg_file = path / PREPROCESSOR_CONFIG
        if cfg_file.is_file():
            cfg = json.loads(cfg_file.read_text())
            size = cfg.get("size") or {}
            for key in ("patch_size", "merge_size", "temporal_patch_size", "image_mean", "image_std"):
                if cfg.get(key) is not None:
                    kw[key] = cfg[key]
            min_px = cfg.get("min_pixels", size.get("shortest_edge"))
            max_px = cfg.get("max_pixels", size.get("longest_edge"))
            if min_px is not None:
                kw["min_pixels"] = int(min_px)
            if max_px is not None:
                kw["max_pixels"] = int(max_px)
        kw.update(overrides)
        return cls(tok, **kw)
