"""Weight-only quantization of the pipeline's MLLM and DiT (optimum-quanto), for less accelerator memory.

    pipe = ThinkGenPipeline.from_pretrained(path, dtype="bfloat16", device="cuda").quantize("int8")

Every ``nn.Linear`` of the chosen components whose smaller side is at least ``min_features`` gets int8 (or float8,
or int4) weights with per-channel scales; activations stay in the compute dtype and the weights are dequantized in the
matmul. The DiT's patch embedders, time/caption embedder and output layer are kept as they are (small, and where
rounding costs most). The VAE is not quantized. Inference only: the trainers never quantize.

Weight bytes before / after and what quantization does to the nano model's scores and speed are measured by
``bench/bench_quantize.py`` (results in ``bench/results/``). Needs ``pip install 'thinkgen[quant]'``.
"""
from __future__ import annotations

import fnmatch
from typing import Any

import torch

from .errors import InvalidInputError, ThinkgenError

SCHEMES = ("int8", "float8", "int4")
COMPONENTS = ("mllm", "transformer")
DIT_KEEP = ("x_embedder*", "ref_image_patch_embedder*", "time_caption_embed*", "norm_out*")


def tensor_bytes(t: torch.Tensor) -> int:
    """Storage bytes of a tensor, looking inside quantized tensor subclasses (data + scales)."""
    flatten = getattr(t, "__tensor_flatten__", None)
    if flatten is not None and type(t) is not torch.Tensor and type(t) is not torch.nn.Parameter:
        names, _ = flatten()
        return sum(tensor_bytes(getattr(t, n)) for n in names)
    return t.numel() * t.element_size()


def module_bytes(module: torch.nn.Module) -> int:
    return sum(tensor_bytes(p) for p in module.parameters()) + sum(tensor_bytes(b) for b in module.buffers())


def chosen_linears(module: torch.nn.Module, component: str, min_features: int = 32) -> list[str]:
    """Names of the linear layers ``quantize_pipeline`` quantizes in ``module`` (the DiT keeps DIT_KEEP)."""
    keep = DIT_KEEP if component == "transformer" else ()
    return [n for n, m in module.named_modules()
            if isinstance(m, torch.nn.Linear) and not any(fnmatch.fnmatch(n, pat) for pat in keep)
            and min(m.in_features, m.out_features) >= min_features]


def planned_bytes(module: torch.nn.Module, component: str, weights: str, min_features: int = 32) -> int:
    """The bytes ``module`` will hold once quantized, from shapes alone (works on the meta device, so for models too
    large to build): int8 / float8 store one byte per weight and one scale per output channel; int4 packs two
    weights a byte with a scale and a shift per group of 128 weights; scales take the weight dtype's size; biases,
    embeddings, norms and kept layers stay as they are. Equals ``module_bytes`` after ``quantize_pipeline``."""
    if weights not in SCHEMES:
        raise InvalidInputError(f"quantization {weights!r} is not supported; use one of {SCHEMES}")
    chosen = set(chosen_linears(module, component, min_features))
    total = 0
    for name, m in module.named_modules():
        for pname, p in m.named_parameters(recurse=False):
            n, el = p.numel(), p.element_size()
            if name in chosen and pname == "weight":
                if weights == "int4":   # scale + shift per group: 128, 96, 64 or 32 inputs (the first that divides)
                    g = next((g for g in (128, 96, 64, 32) if m.in_features > 128 and m.in_features % g == 0), None)
                    total += n // 2 + (n // g if g else m.out_features) * 2 * el
                else:
                    total += n + m.out_features * el
                total += 2 * el         # the quantized layer's input / output scale scalars
            else:
                total += n * el
    return total + sum(b.numel() * b.element_size() for b in module.buffers())


def require_quanto():
    """The optimum.quanto module, or a ThinkgenError with the install command."""
    try:
        import optimum.quanto as quanto
    except ImportError:
        raise ThinkgenError("quantization needs optimum-quanto: pip install 'thinkgen[quant]'") from None
    return quanto


def _module(pipe, component: str) -> torch.nn.Module:
    return pipe.transformer if component == "transformer" else pipe.mllm.model


def quantize_pipeline(pipe, weights: str = "int8", components=COMPONENTS, min_features: int = 32) -> dict[str, Any]:
    """Quantize ``components`` of ``pipe`` in place; returns what was done (bytes before / after per component)."""
    if weights not in SCHEMES:
        raise InvalidInputError(f"quantization {weights!r} is not supported; use one of {SCHEMES}")
    components = tuple(components)
    bad = [c for c in components if c not in COMPONENTS]
    if bad or not components:
        raise InvalidInputError(f"components must be a non-empty subset of {COMPONENTS}, got {components!r}")
    if isinstance(min_features, bool) or not isinstance(min_features, int) or min_features < 1:
        raise InvalidInputError(f"min_features must be an integer >= 1, got {min_features!r}")
    if getattr(pipe, "quantization", None):
        raise InvalidInputError(f"this pipeline is already quantized ({pipe.quantization['weights']}); "
                                "load it again to quantize differently")
    quanto = require_quanto()
    qtype = {"int8": quanto.qint8, "float8": quanto.qfloat8, "int4": quanto.qint4}[weights]
    report: dict[str, Any] = {"weights": weights, "library": "optimum-quanto", "min_features": min_features}
    for comp in components:
        module = _module(pipe, comp)
        linears = [n for n, m in module.named_modules() if isinstance(m, torch.nn.Linear)]
        chosen = chosen_linears(module, comp, min_features)
        before = module_bytes(module)
        if chosen:
            quanto.quantize(module, weights=qtype, include=chosen)
            quanto.freeze(module)
        report[comp] = {"linear_layers": len(linears), "quantized": len(chosen), "bytes_before": before,
                        "bytes_after": module_bytes(module)}
    pipe.quantization = report
    return report
