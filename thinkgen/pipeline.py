"""ThinkGen pipeline: prompt -> think -> instruction features -> DiT sampling -> VAE decode -> image.

``ThinkGenPipeline.from_pretrained(path_or_hub_id)`` reads the released layout::

    model_index.json  mllm/  processor/  transformer/  vae/  scheduler/

and ``save_pretrained`` writes the same layout. Everything is batched: prompts of different lengths,
think on/off/auto, per-sample seeds (the same seed gives the same image alone or inside a batch).
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from PIL import Image

from . import flow
from .errors import CheckpointError, InvalidInputError
from .images import MAX_REFERENCE_IMAGES, load_image
from .loading import load_vae_strict, resolve_model_path
from .models.vae import decode_latents, encode_latents, pil_to_tensor, vae_scale_factor
from .sampling import DiTConditions, Guidance, sample
from .scheduler import ThinkGenScheduler

THINK_MODES = ("off", "on", "auto")
COMPONENTS = ("mllm", "processor", "transformer", "vae", "scheduler")
MAX_STEPS = 1000
MAX_SIDE = 4096
# Reference defaults of ThinkGen_Chat; a checkpoint may override them in model_index.json "thinkgen_defaults".
REFERENCE_DEFAULTS: dict[str, Any] = dict(
    height=1024, width=1024, num_inference_steps=50, text_guidance_scale=4.0, image_guidance_scale=2.0,
    cfg_range=(0.0, 1.0), negative_prompt=None, max_think_tokens=4096, max_answer_tokens=256,
    think_temperature=None, think_top_p=None, think_do_sample=None,
)
CALL_DEFAULT_KEYS = tuple(REFERENCE_DEFAULTS)


def default_model_path() -> Path:
    """The shipped ThinkGen-Nano checkpoint (the default model of the API and the CLI)."""
    return Path(__file__).parent / "assets" / "nano"


@dataclass
class ThinkGenOutput:
    images: list[Image.Image]            # B * num_images_per_prompt images
    thoughts: list[str]                  # generated text per prompt ("" with think off)
    instructions: list[str]              # the instruction the painter saw, per prompt
    finished: list[bool]                 # False when think hit a budget (see ThinkGenMLLM.think)
    seeds: list[int]                     # the noise seed of every image
    timings: dict[str, float] = field(default_factory=dict)   # seconds per stage
    settings: dict[str, Any] = field(default_factory=dict)    # every resolved generation setting


def _normalise_think(think) -> str:
    if think is True:
        return "on"
    if think is False or think is None:
        return "off"
    if isinstance(think, str) and think in THINK_MODES:
        return think
    raise InvalidInputError(f"think must be one of {THINK_MODES} (or True/False), got {think!r}")


def _check_int(name: str, value, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInputError(f"{name} must be an integer in [{lo}, {hi}], got {value!r}")
    if not lo <= value <= hi:
        raise InvalidInputError(f"{name} must be in [{lo}, {hi}], got {value}")
    return value


def _check_scale(name: str, value) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InvalidInputError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(v) or v < 0 or v > 30:
        raise InvalidInputError(f"{name} must be a finite number in [0, 30], got {value!r}")
    return v


def _as_prompts(prompt) -> list[str]:
    if isinstance(prompt, str):
        prompts = [prompt]
    elif isinstance(prompt, (list, tuple)) and prompt:
        prompts = list(prompt)
    else:
        raise InvalidInputError(f"prompt must be a non-empty string or a non-empty list of strings, got {prompt!r}")
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise InvalidInputError(f"prompt[{i}] must be a string, got {type(p).__name__}")
        if not p.strip():
            raise InvalidInputError(f"prompt[{i}] is empty; describe the image to generate or the edit to make")
        if "\x00" in p:
            raise InvalidInputError(f"prompt[{i}] contains a NUL character; remove it")
    return prompts


def _as_image_lists(images, batch: int) -> list[list]:
    if images is None:
        return [[] for _ in range(batch)]
    if not isinstance(images, (list, tuple)):
        images = [images]
    if batch == 1 and not any(isinstance(x, (list, tuple)) for x in images):
        lists = [list(images)]
    elif len(images) == batch and all(isinstance(x, (list, tuple)) for x in images):
        lists = [list(x) for x in images]
    else:
        raise InvalidInputError(
            "images must be a list of images for one prompt, or one list of images per prompt "
            f"({batch} prompts given)"
        )
    for i, lst in enumerate(lists):
        if len(lst) > MAX_REFERENCE_IMAGES:
            raise InvalidInputError(
                f"prompt {i} has {len(lst)} reference images; at most {MAX_REFERENCE_IMAGES} are supported"
            )
    return lists


def resize_reference(img: Image.Image, max_pixels: int, max_side: int, multiple: int) -> Image.Image:
    """Reference preprocessing: shrink to fit ``max_pixels`` and ``max_side`` (never upscale), floor to ``multiple``."""
    w, h = img.size
    ratio = min(math.sqrt(max_pixels / (w * h)), max_side / max(w, h), 1.0)
    nw = max(multiple, int(w * ratio) // multiple * multiple)
    nh = max(multiple, int(h * ratio) // multiple * multiple)
    if (nw, nh) == (w, h):
        return img
    return img.resize((nw, nh), Image.LANCZOS)


class ThinkGenPipeline:
    """Think-then-draw generation, editing and image understanding."""

    def __init__(self, mllm, transformer, vae, scheduler: ThinkGenScheduler | None = None, *, name: str = "",
                 defaults: dict | None = None):
        self.mllm = mllm                  # thinkgen.mllm.ThinkGenMLLM
        self.transformer = transformer    # thinkgen.models.dit.ThinkGenTransformer2DModel
        self.vae = vae                    # diffusers.AutoencoderKL
        self.scheduler = scheduler or ThinkGenScheduler()
        self.name = name
        # per-checkpoint call defaults (model_index.json "thinkgen_defaults"), e.g. the nano model's 64x64
        self.defaults: dict[str, Any] = dict(defaults or {})
        unknown = set(self.defaults) - set(CALL_DEFAULT_KEYS)
        if unknown:
            raise CheckpointError(f"model_index.json thinkgen_defaults has unknown keys {sorted(unknown)}; "
                                  f"allowed: {', '.join(CALL_DEFAULT_KEYS)}")
        feat = self.transformer.config.text_feat_dim * 2
        if getattr(mllm, "feature_dim", feat) != feat:
            raise CheckpointError(
                f"the MLLM gives {mllm.feature_dim}-wide features but the transformer expects {feat} "
                "(2 x text_feat_dim); the components come from different checkpoints"
            )

    # ------------------------------------------------------------------ loading / saving
    @classmethod
    def from_pretrained(
        cls,
        path_or_hub_id: str | os.PathLike | None = None,
        *,
        dtype: torch.dtype | str = torch.float32,
        device: str | torch.device = "cpu",
        revision: str | None = None,
    ) -> "ThinkGenPipeline":
        from .mllm import ThinkGenMLLM
        from .models.dit import ThinkGenTransformer2DModel

        if path_or_hub_id is None:
            path_or_hub_id = default_model_path()
            if not (Path(path_or_hub_id) / "model_index.json").is_file():
                raise CheckpointError(
                    f"the default ThinkGen-Nano checkpoint is not installed at {path_or_hub_id}; "
                    "pass a model folder or hub id (e.g. --model JSYuuu/ThinkGen)"
                )
        if isinstance(dtype, str):
            dtype = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
                     "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}.get(dtype, dtype)
            if isinstance(dtype, str):
                raise InvalidInputError(f"dtype {dtype!r} is not one of float32, bfloat16, float16")
        root = resolve_model_path(path_or_hub_id, revision=revision)
        index = root / "model_index.json"
        if not index.is_file():
            raise CheckpointError(f"{root} has no model_index.json; it is not a ThinkGen checkpoint folder")
        missing = [c for c in COMPONENTS if not (root / c).is_dir()]
        if missing:
            raise CheckpointError(f"checkpoint {root} lacks the component folders: {', '.join(missing)}")
        mllm = ThinkGenMLLM.from_pretrained(root / "mllm", root / "processor", dtype=dtype, device=device)
        transformer = ThinkGenTransformer2DModel.from_pretrained(root / "transformer", torch_dtype=dtype)
        transformer = transformer.to(device).eval().requires_grad_(False)
        # The VAE runs in fp32 on CPU (bf16 convs are slow there); on GPU it follows dtype.
        vae_dtype = torch.float32 if torch.device(device).type == "cpu" else dtype
        vae = load_vae_strict(root / "vae", dtype=vae_dtype).to(device)
        scheduler = ThinkGenScheduler.from_pretrained(root / "scheduler")
        defaults = json.loads(index.read_text()).get("thinkgen_defaults", {})
        return cls(mllm, transformer, vae, scheduler, name=str(root), defaults=defaults)

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write the released layout; written into a temporary folder and renamed into place."""
        import diffusers
        import shutil

        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        try:
            self.mllm.save_pretrained(tmp / "mllm", tmp / "processor")
            self.transformer.save_pretrained(tmp / "transformer")
            self.vae.save_pretrained(tmp / "vae")
            self.scheduler.save_config(tmp / "scheduler")
            index = {
                "_class_name": "ThinkGenPipeline",
                "_diffusers_version": diffusers.__version__,
                "mllm": ["transformers", type(self.mllm.model).__name__],
                "processor": ["thinkgen", "ThinkGenProcessor"],
                "transformer": ["thinkgen", "ThinkGenTransformer2DModel"],
                "vae": ["diffusers", "AutoencoderKL"],
                "scheduler": ["thinkgen", "ThinkGenScheduler"],
            }
            if self.defaults:
                index["thinkgen_defaults"] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.defaults.items()}
            (tmp / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
            if path.exists():
                old = path.with_name(f".{path.name}.old-{os.getpid()}")
                os.replace(path, old)
                os.replace(tmp, path)
                shutil.rmtree(old)
            else:
                os.replace(tmp, path)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)

    @property
    def device(self) -> torch.device:
        """Where sampling runs (the offload device when model CPU offload is on)."""
        dev = getattr(self, "_offload_device", None)
        return dev if dev is not None else next(self.transformer.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.transformer.parameters()).dtype

    @property
    def size_multiple(self) -> int:
        return vae_scale_factor(self.vae) * self.transformer.config.patch_size

    def to(self, device) -> "ThinkGenPipeline":
        self.mllm.to(device)
        self.transformer.to(device)
        self.vae.to(device)
        self._offload_device = None
        return self

    def enable_model_cpu_offload(self, device: str | torch.device = "cuda") -> "ThinkGenPipeline":
        """Keep the three components on the CPU and move each to ``device`` only for its stage
        (MLLM for think/encode, DiT for sampling, VAE for encode/decode). Peak accelerator memory becomes that of
        the largest component instead of the sum, at the cost of the host-to-device copies per call. Measured at
        the full geometry (bf16, 1024 px, 50 steps, H200; bench/results/gpu_h200.md): peak 16.4 GiB instead of
        26.4 GiB, 31.5 s instead of 11.5 s per image with think off."""
        self.to("cpu")
        self._offload_device = torch.device(device)
        return self

    def compile(self, **compile_kwargs) -> "ThinkGenPipeline":
        """``torch.compile`` the DiT's transformer blocks (``ThinkGenTransformer2DModel.compile_blocks``).

        Worth it for many images per process (batches, evaluation, serving): the first image pays a one-off compile
        (about a minute for the nano model on a 2-core CPU), later ones sample faster. Outputs match eager to float
        rounding. The MLLM and the VAE stay eager.
        """
        self.transformer.compile_blocks(**compile_kwargs)
        return self

    def load_lora(self, path, scale: float = 1.0, component: str | None = None) -> "ThinkGenPipeline":
        """Merge a LoRA adapter folder (``final/transformer_lora`` or ``final/mllm_lora`` of a trainer; PEFT's
        format) into the DiT or the MLLM (``component``; default: the folder's ``adapter_config.json``
        "thinkgen_component", else its name). Before ``quantize``; reload the pipeline to remove it."""
        from .lora import merge_adapter

        if component is None:
            cfg_path = Path(path) / "adapter_config.json"
            cfg = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
            component = cfg.get("thinkgen_component") or {"transformer_lora": "transformer",
                                                          "mllm_lora": "mllm"}.get(Path(path).name)
        if component not in ("transformer", "mllm"):
            raise InvalidInputError(f"which component does LoRA adapter {path} adapt? pass component='transformer' "
                                    f"or 'mllm' (got {component!r})")
        if getattr(self, "quantization", None):
            raise InvalidInputError("load LoRA adapters before quantizing the pipeline (its weights are quantized now)")
        report = merge_adapter(self.transformer if component == "transformer" else self.mllm.model, path, scale)
        self.loras = [*getattr(self, "loras", []), {**report, "component": component}]
        return self

    def quantize(self, weights: str = "int8", components=("mllm", "transformer"), min_features: int = 32
                 ) -> "ThinkGenPipeline":
        """Weight-only quantization (int8, float8 or int4) of the MLLM's and the DiT's linear layers, in place
        (``thinkgen.quantization``; needs optimum-quanto). Call it after moving the pipeline to its device; the report
        is kept in ``self.quantization`` and every output's ``settings``."""
        from .quantization import quantize_pipeline

        quantize_pipeline(self, weights, components, min_features)
        return self

    @contextlib.contextmanager
    def _on_device(self, component):
        dev = getattr(self, "_offload_device", None)
        if dev is None:
            yield
            return
        component.to(dev)
        try:
            yield
        finally:
            component.to("cpu")
            if dev.type == "cuda":
                torch.cuda.empty_cache()

    # ------------------------------------------------------------------ stages
    def encode_references(self, refs: list[list[Image.Image]], max_pixels: int, max_side: int) -> list[list[torch.Tensor]]:
        """Reference images -> per-sample lists of (C, h, w) normalised latents (posterior mode)."""
        out: list[list[torch.Tensor]] = []
        m = self.size_multiple
        for lst in refs:
            lat = []
            for img in lst:
                img = resize_reference(img, max_pixels, max_side, m)
                x = pil_to_tensor([img], device=self.vae.device, dtype=self.vae.dtype)
                lat.append(encode_latents(self.vae, x)[0].to(self.dtype))
            out.append(lat)
        return out

    def _output_size(self, height: int, width: int, refs, align_res: bool, max_pixels: int) -> tuple[int, int, int, int]:
        """Returns (gen_h, gen_w, out_h, out_w) following the reference resolution logic."""
        m = self.size_multiple
        if align_res and len(refs) == 1 and len(refs[0]) == 1:
            h, w = refs[0][0].shape[-2:]
            f = vae_scale_factor(self.vae)
            return h * f, w * f, h * f, w * f
        gh, gw = height, width
        if gh * gw > max_pixels:
            r = math.sqrt(max_pixels / (gh * gw))
            gh, gw = int(gh * r), int(gw * r)
        gh, gw = max(m, gh // m * m), max(m, gw // m * m)
        return gh, gw, height, width

    # ------------------------------------------------------------------ main entry
    @torch.no_grad()
    def __call__(
        self,
        prompt: str | Sequence[str],
        images=None,
        *,
        think: bool | str = "off",
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int | None = None,
        text_guidance_scale: float | None = None,
        image_guidance_scale: float | None = None,
        cfg_range: tuple[float, float] | None = None,
        negative_prompt: str | Sequence[str] | None = None,
        num_images_per_prompt: int = 1,
        seed: int | Sequence[int] | None = None,
        generator: torch.Generator | None = None,
        max_think_tokens: int | None = None,
        max_answer_tokens: int | None = None,
        think_temperature: float | None = None,
        think_top_p: float | None = None,
        think_do_sample: bool | None = None,
        max_pixels: int = 1024 * 1024,
        max_input_image_side: int = 1024,
        align_res: bool = True,
        progress: bool = False,
        output_type: str = "pil",
    ) -> ThinkGenOutput:
        """Generate (no images) or edit (reference images) from ``prompt``.

        ``images``: for one prompt a list of up to 5 images (paths, bytes or PIL); for several prompts
        one list per prompt. ``seed`` (int, or one per prompt) seeds the latent noise of each image
        (image j of a prompt uses seed + j) and the think sampling, so a prompt's result does not depend
        on the rest of the batch. Arguments left as None take the checkpoint's ``thinkgen_defaults``, else the
        reference defaults (1024x1024, 50 steps, text guidance 4.0, image guidance 2.0, its negative prompt).
        Returns :class:`ThinkGenOutput`.
        """
        from .mllm import DEFAULT_NEGATIVE_PROMPT

        def pick(name, value):
            if value is not None:
                return value
            return self.defaults.get(name, REFERENCE_DEFAULTS[name])

        num_inference_steps = pick("num_inference_steps", num_inference_steps)
        text_guidance_scale = pick("text_guidance_scale", text_guidance_scale)
        image_guidance_scale = pick("image_guidance_scale", image_guidance_scale)
        cfg_range = pick("cfg_range", cfg_range)
        negative_prompt = pick("negative_prompt", negative_prompt)
        max_think_tokens = pick("max_think_tokens", max_think_tokens)
        max_answer_tokens = pick("max_answer_tokens", max_answer_tokens)
        think_temperature = pick("think_temperature", think_temperature)
        think_top_p = pick("think_top_p", think_top_p)
        think_do_sample = pick("think_do_sample", think_do_sample)

        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        # -- 1. validate everything before any work
        prompts = _as_prompts(prompt)
        B = len(prompts)
        mode = _normalise_think(think)
        steps = _check_int("num_inference_steps", num_inference_steps, 1, MAX_STEPS)
        n_per = _check_int("num_images_per_prompt", num_images_per_prompt, 1, 16)
        height = pick("height", height)
        width = pick("width", width)
        m = self.size_multiple
        height = _check_int("height", height, m, MAX_SIDE)
        width = _check_int("width", width, m, MAX_SIDE)
        _check_int("max_think_tokens", max_think_tokens, 1, 32768)
        _check_int("max_answer_tokens", max_answer_tokens, 1, 8192)
        text_scale = _check_scale("text_guidance_scale", text_guidance_scale)
        image_scale = _check_scale("image_guidance_scale", image_guidance_scale)
        try:
            guidance = Guidance(text_scale, image_scale, tuple(float(c) for c in cfg_range))
        except (ValueError, TypeError) as e:
            raise InvalidInputError(str(e)) from None
        if output_type not in ("pil", "latent"):
            raise InvalidInputError(f"output_type must be 'pil' or 'latent', got {output_type!r}")
        if seed is None:
            if generator is not None:
                seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator).item())
            else:
                seed = random.randrange(2**31 - 1)
        seeds = [seed] * B if isinstance(seed, int) and not isinstance(seed, bool) else list(seed)
        if len(seeds) != B or any(isinstance(s, bool) or not isinstance(s, int) or not 0 <= s < 2**63 - n_per for s in seeds):
            raise InvalidInputError(f"seed must be an int in [0, 2**63) or a list of {B} such ints, got {seed!r}")
        if negative_prompt is None:
            negs = [DEFAULT_NEGATIVE_PROMPT] * B
        elif isinstance(negative_prompt, str):
            negs = [negative_prompt] * B
        else:
            negs = list(negative_prompt)
            if len(negs) != B or not all(isinstance(n, str) for n in negs):
                raise InvalidInputError(f"negative_prompt must be a string or a list of {B} strings")
        raw_images = _as_image_lists(images, B)
        refs_pil = [[load_image(x) for x in lst] for lst in raw_images]
        num_images = [len(lst) for lst in refs_pil]
        timings["validate"] = time.perf_counter() - t0
        settings = dict(
            think=mode, height=height, width=width, num_inference_steps=steps, text_guidance_scale=text_scale,
            image_guidance_scale=image_scale, cfg_range=list(guidance.cfg_range),
            negative_prompt=negative_prompt if isinstance(negative_prompt, str) or negative_prompt is None else list(negative_prompt),
            num_images_per_prompt=n_per, max_think_tokens=max_think_tokens, max_answer_tokens=max_answer_tokens,
            think_temperature=think_temperature, think_top_p=think_top_p, think_do_sample=think_do_sample,
            max_pixels=max_pixels, align_res=align_res,
        )
        if getattr(self, "quantization", None):
            settings["quantization"] = self.quantization["weights"]
        if getattr(self, "loras", None):
            settings["loras"] = [{k: l[k] for k in ("path", "scale", "component")} for l in self.loras]

        # -- 2. think / encode the instruction
        t1 = time.perf_counter()
        with self._on_device(self.mllm):
            if mode == "off":
                enc = self.mllm.encode_instructions(prompts, num_images, mode="nothink")
            else:
                sampling = {k: v for k, v in (("temperature", think_temperature), ("top_p", think_top_p),
                                              ("do_sample", think_do_sample)) if v is not None}
                enc = self.mllm.think(
                    prompts, refs_pil, mode="think" if mode == "on" else "auto",
                    max_think_tokens=max_think_tokens, max_answer_tokens=max_answer_tokens,
                    seed=seeds, progress=progress, **sampling,
                )
            use_cfg = text_scale > 1.0
            neg_enc = self.mllm.encode_instructions(negs, [0] * B, mode="negative") if use_cfg else None
        timings["think"] = time.perf_counter() - t1

        # -- 3. references -> latents; output size
        t2 = time.perf_counter()
        with self._on_device(self.vae):
            ref_lat = self.encode_references(refs_pil, max_pixels, max_input_image_side)
        gen_h, gen_w, out_h, out_w = self._output_size(height, width, ref_lat, align_res, max_pixels)
        timings["encode_refs"] = time.perf_counter() - t2

        # -- 4. conditions, repeated per image
        dev, dt = self.device, self.dtype
        rep = torch.arange(B).repeat_interleave(n_per).tolist()
        has_refs = any(num_images)
        cond = DiTConditions(enc.features.to(dev, dt), enc.mask.to(dev), ref_lat if has_refs else None).select(rep)
        neg = None
        if neg_enc is not None:
            neg = DiTConditions(neg_enc.features.to(dev, dt), neg_enc.mask.to(dev), None).select(rep)
        f = vae_scale_factor(self.vae)
        C = self.transformer.config.in_channels
        h_lat, w_lat = gen_h // f, gen_w // f
        image_seeds = [seeds[b] + j for b in range(B) for j in range(n_per)]
        noise = torch.stack([
            torch.randn(C, h_lat, w_lat, generator=torch.Generator("cpu").manual_seed(s), dtype=torch.float32)
            for s in image_seeds
        ]).to(dev, dt)
        timesteps = self.scheduler.timesteps(steps, h_lat * w_lat, device=dev)

        # -- 5. sample
        t3 = time.perf_counter()
        bar = None
        if progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=steps, desc="denoise", unit="step", leave=False)
        with self._on_device(self.transformer):
            traj = sample(self.transformer, noise, cond, neg, timesteps, guidance,
                          callback=(lambda i, n: bar.update(1)) if bar else None)
        if bar:
            bar.close()
        timings["denoise"] = time.perf_counter() - t3

        # -- 6. decode
        t4 = time.perf_counter()
        latents = traj.latents
        if output_type == "latent":
            out_images = []
        else:
            with self._on_device(self.vae):
                x = decode_latents(self.vae, latents.to(self.device, self.vae.dtype)).float().cpu()
            if (gen_h, gen_w) != (out_h, out_w):
                x = F.interpolate(x, size=(out_h, out_w), mode="bilinear", align_corners=False)
            x = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
            out_images = [Image.fromarray(a) for a in x]
        timings["decode"] = time.perf_counter() - t4
        timings["total"] = time.perf_counter() - t0
        out = ThinkGenOutput(
            images=out_images,
            thoughts=list(enc.thoughts),
            instructions=list(enc.instructions),
            finished=list(enc.finished),
            seeds=image_seeds,
            timings=timings,
            settings=settings,
        )
        if output_type == "latent":
            out.latents = latents  # type: ignore[attr-defined]
        return out

    # ------------------------------------------------------------------ understanding
    @torch.no_grad()
    def chat(self, messages, images=None, *, max_new_tokens: int = 512, streamer=None) -> str:
        """Image understanding / chat with the MLLM (no ThinkGen system prompt, greedy decoding).

        ``messages``: a string (one user turn) or a list of {"role", "content"} dicts. ``streamer``: a transformers
        streamer that receives the reply as it is generated (the server streams it to clients).
        """
        if isinstance(messages, str):
            if not messages.strip():
                raise InvalidInputError("message is empty; ask a question")
        elif not isinstance(messages, list) or not messages:
            raise InvalidInputError("messages must be a non-empty string or a list of {'role','content'} dicts")
        imgs = [load_image(x) for x in (images or [])]
        if imgs and isinstance(messages, list) and not any(
            isinstance(m.get("content"), list) and any(isinstance(c, dict) and c.get("type") == "image" for c in m["content"])
            for m in messages
        ):
            # attach the images to the first user turn
            messages = [dict(m) for m in messages]
            first = next(i for i, m in enumerate(messages) if m.get("role") == "user")
            text = messages[first]["content"]
            messages[first]["content"] = [{"type": "image"} for _ in imgs] + [{"type": "text", "text": text}]
        if len(imgs) > MAX_REFERENCE_IMAGES:
            raise InvalidInputError(f"{len(imgs)} images given; at most {MAX_REFERENCE_IMAGES} are supported")
        _check_int("max_new_tokens", max_new_tokens, 1, 32768)
        return self.mllm.chat(messages, imgs, max_new_tokens=max_new_tokens, streamer=streamer)
