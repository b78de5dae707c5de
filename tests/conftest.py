import importlib.util
import os
import signal
import subprocess
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


def _await_group_exit(pgid: int, limit: float = 5.0) -> None:
    """SIGKILL is delivered asynchronously: give the killed group's other members (grandchildren) up to ``limit``
    seconds to go, so that none is still running when the caller (or the next test) looks. Zombies awaiting their
    reaper still answer signal 0, hence the bound."""
    import time

    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)


def run_bounded(cmd, *, timeout: float, env=None, cwd=None, what: str = "subprocess") -> subprocess.CompletedProcess:
    """Run ``cmd`` in its own process group with a hard wall-clock bound; on expiry kill the whole group and fail.

    ``subprocess.run(timeout=...)`` kills only the direct child and then waits for its pipes, which a surviving
    grandchild (a torchrun worker) keeps open: a hang there outlives the timeout. Here output goes to files, the
    group gets SIGKILL, and the failure message carries the tail of both streams. A hang guard, not a speed test.
    """
    import tempfile

    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                start_new_session=True, text=True)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            rc = None
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)    # leftovers of a finished run, or the hung run itself
            except ProcessLookupError:
                pass
            proc.wait()
            _await_group_exit(proc.pid)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if rc is None:
        pytest.fail(f"{what} did not finish within {timeout:.0f} s (process group killed)\n"
                    f"stdout:\n{stdout[-4000:]}\nstderr:\n{stderr[-4000:]}")
    return subprocess.CompletedProcess(cmd, rc, stdout, stderr)


@pytest.fixture
def bounded():
    """:func:`run_bounded` as a fixture (test modules do not import conftest)."""
    return run_bounded


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory):
    """A tiny random CLIP saved offline (tokenizer, model, PIL image processor): the reward and eval tests."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import CLIPConfig, CLIPModel, PreTrainedTokenizerFast
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    d = tmp_path_factory.mktemp("tiny_clip")
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(["a red cat on a sofa", "a blue dog", "hello world"],
                            trainers.BpeTrainer(vocab_size=80, special_tokens=["<pad>", "<unk>", "<s>", "</s>"]))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>", model_max_length=16)
    fast.save_pretrained(d)
    ids = dict(pad_token_id=fast.pad_token_id, bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id)
    cfg = CLIPConfig(
        text_config=dict(vocab_size=len(fast), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=16, **ids),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=8)
    torch.manual_seed(0)
    CLIPModel(cfg).save_pretrained(d)
    CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(d)
    return d
