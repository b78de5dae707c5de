"""thinkgen: think-then-draw visual generation (ThinkGen, arXiv 2512.23568).

Data flow: prompt -> think (MLLM) -> instruction features -> DiT sampling -> VAE decode -> image.
"""
from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["ThinkGenPipeline", "ThinkGenOutput", "ThinkGenTransformer2DModel", "ThinkGenMLLM", "__version__"]


def __getattr__(name):  # lazy: `import thinkgen` stays cheap
    if name in ("ThinkGenPipeline", "ThinkGenOutput"):
        from . import pipeline
        return getattr(pipeline, name)
    if name == "ThinkGenTransformer2DModel":
        from .models.dit import ThinkGenTransformer2DModel
        return ThinkGenTransformer2DModel
    if name == "ThinkGenMLLM":
        from .mllm import ThinkGenMLLM
        return ThinkGenMLLM
    raise AttributeError(f"module 'thinkgen' has no attribute {name!r}")
