"""Weight-only quantization of the pipeline (thinkgen.quantization) on the shipped nano model."""
import json
import sys

import numpy as np
import pytest

pytest.importorskip("optimum.quanto")

from thinkgen.errors import InvalidInputError, ThinkgenError  # noqa: E402
from thinkgen.pipeline import ThinkGenPipeline  # noqa: E402
from thinkgen.quantization import module_bytes, planned_bytes, quantize_pipeline  # noqa: E402

PROMPTS = ["two red circles left of a blue square", "a small green star"]


@pytest.fixture(scope="module")
def reference():
    pipe = ThinkGenPipeline.from_pretrained(None, device="cpu")
    return pipe(PROMPTS, seed=[0, 1], think="on", num_inference_steps=8)


@pytest.mark.parametrize("weights, max_mean_diff", [("int8", 1.0), ("float8", 2.0)])
def test_quantized_pipeline_is_smaller_and_draws_nearly_the_same(reference, weights, max_mean_diff):
    pipe = ThinkGenPipeline.from_pretrained(None, device="cpu")
    before = module_bytes(pipe.transformer)
    pipe.quantize(weights)
    rep = pipe.quantization
    assert rep["weights"] == weights and rep["transformer"]["quantized"] > 0 and rep["mllm"]["quantized"] > 0
    assert rep["transformer"]["bytes_before"] == before and module_bytes(pipe.transformer) < before / 3
    assert rep["mllm"]["bytes_after"] < rep["mllm"]["bytes_before"]
    # the sensitive DiT layers are kept in full precision
    assert type(pipe.transformer.x_embedder).__name__ == "Linear"
    assert type(pipe.transformer.norm_out.linear_2).__name__ == "Linear"
    out = pipe(PROMPTS, seed=[0, 1], think="on", num_inference_steps=8)
    assert out.instructions == reference.instructions and out.settings["quantization"] == weights
    for a, b in zip(out.images, reference.images):
        diff = np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).mean()
        assert diff < max_mean_diff, f"{weights}: mean pixel difference {diff:.2f} from the unquantized images"
    again = pipe(PROMPTS, seed=[0, 1], think="on", num_inference_steps=8)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(out.images, again.images))


def test_bad_quantization_requests_are_refused():
    pipe = ThinkGenPipeline.from_pretrained(None, device="cpu")
    with pytest.raises(InvalidInputError, match="not supported; use one of"):
        quantize_pipeline(pipe, "int3")
    with pytest.raises(InvalidInputError, match="components must be"):
        quantize_pipeline(pipe, "int8", components=("vae",))
    pipe.quantize("int8", components=("transformer",))
    assert "mllm" not in pipe.quantization
    with pytest.raises(InvalidInputError, match="already quantized"):
        pipe.quantize("float8")


def test_cli_quantize_flag_and_missing_library(tmp_path, monkeypatch, capsys):
    from thinkgen.cli import main

    assert main(["generate", "a red circle", "--quantize", "int8", "--steps", "4", "--out", str(tmp_path), "--quiet"]) == 0
    meta = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert meta["settings"]["quantization"] == "int8"
    capsys.readouterr()
    monkeypatch.setitem(sys.modules, "optimum.quanto", None)          # as if optimum-quanto were not installed
    assert main(["generate", "a red circle", "--quantize", "int8", "--out", str(tmp_path / "x")]) == 1
    assert "pip install 'thinkgen[quant]'" in capsys.readouterr().err
    with pytest.raises(ThinkgenError, match="optimum-quanto"):
        quantize_pipeline(ThinkGenPipeline.from_pretrained(None, device="cpu"), "int8")


@pytest.mark.parametrize("weights", ["int8", "float8", "int4"])
def test_planned_bytes_equal_the_quantized_model(weights):
    """bench/quant_footprint.py sizes the full geometry from shapes; here the formula meets the real thing."""
    pipe = ThinkGenPipeline.from_pretrained(None, device="cpu", dtype="bfloat16")
    plan = {c: planned_bytes(pipe.transformer if c == "transformer" else pipe.mllm.model, c, weights)
            for c in ("transformer", "mllm")}
    pipe.quantize(weights)
    assert plan == {"transformer": module_bytes(pipe.transformer), "mllm": module_bytes(pipe.mllm.model)}
