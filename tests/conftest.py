import os

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
