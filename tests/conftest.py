import importlib.util
import os
from pathlib import Path

import pytest
import torch

# Tiny models run faster on one thread (and the results do not depend on the machine's core count).
torch.set_num_threads(1)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory):
    """A tiny random ThinkGen checkpoint saved in the released layout."""
    from thinkgen.testing import save_tiny_checkpoint

    return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny-thinkgen")


@pytest.fixture(scope="session")
def tiny_pipe(tiny_ckpt):
    from thinkgen.pipeline import ThinkGenPipeline

    return ThinkGenPipeline.from_pretrained(tiny_ckpt)


@pytest.fixture
def bench_module():
    """Load a script under bench/ as a module by name (bench/ is not a package): ``bench_module("split_painter")``."""
    def load(name: str):
        path = Path(__file__).resolve().parents[1] / "bench" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod

    return load
