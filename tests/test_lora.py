"""LoRA adapters at inference (thinkgen.lora, pipe.load_lora, --lora) on the shipped nano model."""
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from thinkgen.errors import CheckpointError, InvalidInputError
from thinkgen.lora import save_adapter
from thinkgen.pipeline import ThinkGenPipeline
from thinkgen.train.models import add_lora, lora_state

PROMPT = "two red circles left of a blue square"
TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


@pytest.fixture(scope="module")
def adapted(tmp_path_factory):
    """A nano pipeline whose DiT carries a random LoRA (peft, as the trainers inject it), and that adapter saved."""
    pipe = ThinkGenPipeline.from_pretrained(None, device="cpu")
    torch.manual_seed(0)
    add_lora(pipe.transformer, SimpleNamespace(lora_rank=4, lora_alpha=8.0, lora_dropout=0.0,
                                               lora_target_modules=TARGETS))
    with torch.no_grad():
        for n, p in pipe.transformer.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    folder = tmp_path_factory.mktemp("lora") / "transformer_lora"
    save_adapter(folder, lora_state(pipe.transformer.state_dict()), 4, 8.0, TARGETS, "transformer")
    return pipe(PROMPT, seed=3, num_inference_steps=8), folder


def _pixels(out):
    return np.asarray(out.images[0], dtype=np.int16)


def test_loaded_adapter_draws_as_the_adapted_model(adapted):
    ref, folder = adapted
    pipe = ThinkGenPipeline.from_pretrained(None, device="cpu")
    base = pipe(PROMPT, seed=3, num_inference_steps=8)
    pipe.load_lora(folder)                                  # component from adapter_config.json
    out = pipe(PROMPT, seed=3, num_inference_steps=8)
    assert np.abs(_pixels(out) - _pixels(ref)).max() <= 2
    assert np.abs(_pixels(out) - _pixels(base)).mean() > 1.0          # the adapter changes the picture
    assert out.settings["loras"] == [{"path": str(folder), "scale": 1.0, "component": "transformer"}]
    zero = ThinkGenPipeline.from_pretrained(None, device="cpu").load_lora(folder, scale=0.0)
    assert np.array_equal(_pixels(zero(PROMPT, seed=3, num_inference_steps=8)), _pixels(base))


def test_bad_adapters_are_refused(adapted, tmp_path):
    _, folder = adapted
    pipe = ThinkGenPipeline.from_pretrained(None, device="cpu")
    with pytest.raises(CheckpointError, match="no linear layer for"):
        pipe.load_lora(folder, component="mllm")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "adapter_config.json").write_text(json.dumps({"r": 4, "lora_alpha": 8}))
    with pytest.raises(CheckpointError, match="lacks adapter_config.json or"):
        pipe.load_lora(broken, component="transformer")
    with pytest.raises(InvalidInputError, match="which component"):
        pipe.load_lora(broken)
    from safetensors.torch import load_file, save_file

    t = load_file(str(folder / "adapter.safetensors"))
    k = next(k for k in t if "lora_A" in k)
    t[k] = torch.zeros(4, 7)
    save_file(t, str(broken / "adapter.safetensors"))
    with pytest.raises(CheckpointError, match="does not fit this model"):
        pipe.load_lora(broken, component="transformer")
    with pytest.raises(InvalidInputError, match="scale"):
        pipe.load_lora(folder, scale=float("nan"))
    pytest.importorskip("optimum.quanto")
    pipe.quantize("int8")
    with pytest.raises(InvalidInputError, match="before quantizing"):
        pipe.load_lora(folder)


def test_cli_lora_flag(adapted, tmp_path, capsys):
    from thinkgen.cli import main

    _, folder = adapted
    assert main(["generate", PROMPT, "--lora", str(folder), "--lora-scale", "0.5", "--steps", "2", "--out",
                 str(tmp_path), "--quiet"]) == 0
    meta = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert meta["settings"]["loras"][0]["scale"] == 0.5
    assert main(["generate", PROMPT, "--lora", str(tmp_path / "nope"), "--out", str(tmp_path / "x")]) == 2
    assert "is not a folder" in capsys.readouterr().err
