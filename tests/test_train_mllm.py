"""MLLM SFT on a tiny Qwen3-VL (CPU): templates and label masks, learning, frozen vision tower, LoRA export,
exact resume."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from thinkgen.checkpoint import FaultInjected, verify_manifest
from thinkgen.mllm import SYSTEM_PROMPT, ThinkGenMLLM
from thinkgen.train.config import mllm_sft
from thinkgen.train.data import DataError, SFTBatcher, build_mixture
from thinkgen.train.mllm_sft import IGNORE_INDEX, build_sft_batch, sft_texts, train_mllm
from thinkgen.train.tiny import write_tiny_sft_dataset

M = "model.safetensors"


@pytest.fixture(scope="module")
def assets(tiny_ckpt, tmp_path_factory):
    """The shared tiny released-layout checkpoint (conftest) + understanding / generation SFT records."""
    data = write_tiny_sft_dataset(tmp_path_factory.mktemp("mllm") / "data", n=6)
    return Path(tiny_ckpt), data


@pytest.fixture(scope="module")
def mllm(assets):
    return ThinkGenMLLM.from_pretrained(assets[0] / "mllm", assets[0] / "processor")


def cfg_for(assets, out, **kw):
    model, data = assets
    base = dict(model_dir=str(model), data=[str(data)], output_dir=str(out), batch_size=2, warmup_steps=0, lr=3e-3,
                max_steps=4, save_every=2, log_every=1, shuffle_buffer=3, seed=0)
    return mllm_sft(**{**base, **kw})


def sha(p) -> str:
    return hashlib.sha256(Path(p).read_bytes()).hexdigest()


def test_templates(mllm):
    tok = mllm.tokenizer
    gen = {"task_type": "edit", "instruction": "change color to red", "input_images": ["x.png"], "think": "t",
           "answer": "a red square"}
    prompt, assistant = sft_texts(tok, gen)
    assert prompt.startswith(f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\n"
                             "<|vision_start|><|image_pad|><|vision_end|>change color to red<|im_end|>\n")
    assert prompt.endswith("<|im_start|>assistant\n")
    assert assistant == "<think>\nt\n</think>\n\na red square<|im_end|>"
    no_answer = dict(gen, answer=None, think="")
    assert sft_texts(tok, no_answer)[1] == "<think>\n\n</think>\n\nchange color to red<|im_end|>"
    und = {"task_type": "understanding", "instruction": "what shape is this", "input_images": [], "answer": "a cat"}
    prompt, assistant = sft_texts(tok, und)
    assert prompt == "<|im_start|>user\nwhat shape is this<|im_end|>\n<|im_start|>assistant\n"
    assert assistant == "a cat<|im_end|>"


def test_labels_cover_only_the_assistant_turn(assets, mllm):
    batcher = SFTBatcher(build_mixture([(str(assets[1]), 1.0)], purpose="mllm", shuffle_buffer=1), 4)
    records = next(batcher)
    assert any(r["images"] for r in records) and any(not r["images"] for r in records)
    batch = build_sft_batch(mllm.processor, records, max_seq_len=512, max_image_pixels=64 * 64)
    tok = mllm.tokenizer
    image_id = tok.convert_tokens_to_ids("<|image_pad|>")
    assert batch["pixel_values"].shape[0] > 0 and batch["image_grid_thw"].shape[0] == sum(len(r["images"]) for r in records)
    for b, rec in enumerate(records):
        ids, labels, mask = batch["input_ids"][b], batch["labels"][b], batch["attention_mask"][b].bool()
        prompt, assistant = sft_texts(tok, rec)
        assert tok.decode(ids[labels != IGNORE_INDEX]) == assistant
        n_prompt = int((labels[mask] == IGNORE_INDEX).sum())
        assert (labels[:n_prompt] == IGNORE_INDEX).all() and (labels[~mask] == IGNORE_INDEX).all()
        assert int((ids[:n_prompt] == image_id).sum()) == (0 if not rec["images"] else
                                                          int((batch["mm_token_type_ids"][b] == 1).sum()))
    with pytest.raises(DataError, match="max_seq_len"):
        build_sft_batch(mllm.processor, records, max_seq_len=8, max_image_pixels=64 * 64)


def test_full_sft_learns_and_keeps_vision_frozen(assets, tmp_path):
    cfg = cfg_for(assets, tmp_path / "run", max_steps=15, save_every=0, lr=1e-2)
    final = train_mllm(cfg)
    losses = [json.loads(l)["train/loss"] for l in (tmp_path / "run" / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert sum(losses[-3:]) / 3 < 0.6 * sum(losses[:3]) / 3, losses
    verify_manifest(final)
    before, after = load_file(str(assets[0] / "mllm" / M)), load_file(str(final / "mllm" / M))
    assert before.keys() == after.keys()
    for k in before:
        same = torch.equal(before[k], after[k])
        assert same == k.startswith("model.visual."), k
    m = ThinkGenMLLM.from_pretrained(final / "mllm", final / "processor")      # the export loads
    assert m.feature_dim == 64


def test_resume_is_bit_identical(assets, tmp_path):
    straight = train_mllm(cfg_for(assets, tmp_path / "a"))
    cfg = cfg_for(assets, tmp_path / "b")
    os.environ["THINKGEN_FAULT"] = "step:3"
    try:
        with pytest.raises(FaultInjected):
            train_mllm(cfg)
    finally:
        del os.environ["THINKGEN_FAULT"]
    resumed = train_mllm(cfg)
    assert sha(straight / "mllm" / M) == sha(resumed / "mllm" / M)


def test_lora_sft_exports_merged_weights(assets, tmp_path):
    cfg = cfg_for(assets, tmp_path / "run", lora=True, lora_rank=4, lora_alpha=8.0, lr=1e-2)
    final = train_mllm(cfg)
    before, after = load_file(str(assets[0] / "mllm" / M)), load_file(str(final / "mllm" / M))
    assert before.keys() == after.keys()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.split(".")[-2] in ("q_proj", "k_proj", "v_proj", "o_proj") for k in changed), changed
    assert (final / "mllm_lora" / "adapter.safetensors").is_file()
    ThinkGenMLLM.from_pretrained(final / "mllm", final / "processor")
    # the exported adapter folder merged into the base MLLM gives the merged export (pipe.load_lora's path)
    from thinkgen.lora import merge_adapter

    base = ThinkGenMLLM.from_pretrained(assets[0] / "mllm", assets[0] / "processor")
    assert merge_adapter(base.model, final / "mllm_lora")["modules"] > 0
    got = base.model.state_dict()
    for k in changed:
        torch.testing.assert_close(got[k], after[k], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("strategy,extra", [("ddp", []), ("fsdp2", ["--lora=true"])])
def test_torchrun_two_processes_gloo(assets, tmp_path, strategy, extra, bounded):
    """Rank 0 gets the image samples, rank 1 the text-only ones (alternating lines, shuffle buffer 1)."""
    import sys

    repo = Path(__file__).resolve().parents[1]
    model, data = assets
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
           "thinkgen.train.cli", "mllm", f"--model_dir={model}", f"--data=[{data}]", f"--output_dir={out}",
           "--batch_size=1", "--max_steps=3", "--save_every=2", "--warmup_steps=0", "--device=cpu",
           f"--parallel={strategy}", "--shuffle_buffer=1", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(repo)}
    env.pop("THINKGEN_FAULT", None)
    for attempt in range(2):
        proc = bounded(cmd, env=env, cwd=str(repo), timeout=240, what="2-process torchrun")
        if proc.returncode == 0:
            break
    assert proc.returncode == 0, proc.stderr[-3000:]
    verify_manifest(out / "final")
    ThinkGenMLLM.from_pretrained(out / "final" / "mllm", out / "final" / "processor")


def test_per_sample_loss_matches_hand_computation():
    """loss_reduction="sample": each sample's supervised tokens are averaged first, so a one-token answer weighs
    as much as a long trace; with equal token counts it equals HF's token mean."""
    from thinkgen.train.mllm_sft import per_sample_lm_loss

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 6, 11, generator=g)
    labels = torch.full((2, 6), -100)
    labels[0, 1:5] = torch.tensor([1, 2, 3, 4])      # 4 supervised tokens
    labels[1, 5] = 7                                   # 1 supervised token
    ce = torch.nn.functional.cross_entropy
    want0 = ce(logits[0, 0:4], labels[0, 1:5])
    want1 = ce(logits[1, 4:5], labels[1, 5:6])
    assert torch.allclose(per_sample_lm_loss(logits, labels), (want0 + want1) / 2)
    eq = labels.clone()
    eq[1, 2:5] = torch.tensor([1, 2, 3])               # now 4 tokens each: sample mean == token mean
    token_mean = ce(logits[:, :-1].reshape(-1, 11), eq[:, 1:].reshape(-1), ignore_index=-100)
    assert torch.allclose(per_sample_lm_loss(logits, eq), token_mean)
    empty = torch.full((2, 6), -100)
    assert per_sample_lm_loss(logits, empty).item() == 0.0


def test_sample_loss_reduction_trains_and_bad_value_is_refused(assets, tmp_path):
    from thinkgen.errors import ConfigError

    with pytest.raises(ConfigError, match="loss_reduction"):
        cfg_for(assets, tmp_path / "bad", loss_reduction="mean")
    cfg = cfg_for(assets, tmp_path / "run", max_steps=15, save_every=0, lr=1e-2, loss_reduction="sample")
    train_mllm(cfg)
    losses = [json.loads(l)["train/loss"] for l in (tmp_path / "run" / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert sum(losses[-3:]) / 3 < 0.6 * sum(losses[:3]) / 3, losses


def test_token_loss_equals_hf_causal_lm_loss(assets, mllm):
    """The trainer computes the "token" reduction itself (to capture features in the same forward); it must equal
    the model's own causal-LM loss."""
    from thinkgen.train.mllm_sft import lm_token_loss

    batcher = SFTBatcher(build_mixture([(str(assets[1]), 1.0)], purpose="mllm", shuffle_buffer=1), 4)
    batch = build_sft_batch(mllm.processor, next(batcher), max_seq_len=512, max_image_pixels=64 * 64)
    with torch.no_grad():
        out = mllm.model(**batch, use_cache=False)
    assert torch.allclose(lm_token_loss(out.logits, batch["labels"]), out.loss, atol=1e-5)


def test_capture_features_equals_forward_features(mllm):
    from thinkgen.mllm import capture_features

    enc = mllm.processor([mllm.tokenizer.apply_chat_template([{"role": "user", "content": "a red square"}],
                                                              tokenize=False)], padding_side="right")
    with torch.no_grad(), capture_features(mllm.model) as cap:
        mllm.model(**enc, use_cache=False)
        want = mllm.forward_features(enc)
    assert cap["features"].shape == want.shape == (1, enc["input_ids"].shape[1], mllm.feature_dim)
    assert torch.allclose(cap["features"], want, atol=1e-5)


def test_anchor_rows_and_loss():
    from thinkgen.train.mllm_sft import anchor_loss, anchor_rows

    recs = [{"task_type": "t2i", "instruction": "draw a cat", "images": []},
            {"task_type": "understanding", "instruction": "what is it", "images": []},
            {"task_type": "edit", "instruction": "make it red", "images": ["img"], "input_images": ["x.png"]}]
    assert anchor_rows(recs) == [{"task_type": "anchor", "instruction": "draw a cat", "images": []}]
    ref = torch.randn(2, 3, 4)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert anchor_loss(ref.clone(), ref, mask).item() == 0.0
    moved = ref.clone()
    moved[0, 2] += 100.0                                 # a padded position: ignored
    assert anchor_loss(moved, ref, mask).item() == 0.0
    moved[1, 0] = 0.0                                    # a real position: counted, relative to the reference norm
    want = ref[1, 0].pow(2).sum() / (ref[0, :2].pow(2).sum() + ref[1, 0].pow(2).sum())
    assert torch.allclose(anchor_loss(moved, ref, mask), want)


def test_suffix_anchor_loss_aligns_the_text_after_the_image():
    """Rows whose references hold more visual tokens: only the tokens after the last <|vision_end|> are compared,
    aligned from the end of each right-padded row."""
    from thinkgen.train.mllm_sft import anchor_loss, suffix_anchor_loss

    END = 9
    ids = torch.tensor([[1, END, 5, 6, 0], [1, 1, END, 7, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 0]])
    ref_mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0]])
    g = torch.Generator().manual_seed(0)
    feats, ref = torch.randn(2, 5, 3, generator=g), torch.randn(2, 6, 3, generator=g)
    same = ref.clone()
    same_feats = feats.clone()
    same_feats[0, 2:4], same_feats[1, 3:4] = ref[0, 4:6], ref[1, 4:5]       # the suffixes, copied
    same_feats[0, 0] += 50.0                                                # before the image: ignored
    assert suffix_anchor_loss(same_feats, ids, mask, same, ref_mask, END).item() == 0.0
    want = anchor_loss(torch.cat([feats[0, 2:4], feats[1, 3:4]])[None], torch.cat([ref[0, 4:6], ref[1, 4:5]])[None],
                       torch.ones(1, 3))
    assert torch.allclose(suffix_anchor_loss(feats, ids, mask, ref, ref_mask, END), want)


def test_feature_anchoring_keeps_the_dit_features(assets, mllm, tmp_path):
    """Same data, same steps: with anchor_weight the no-think features of text-only prompts (what a frozen DiT
    reads) move far less than without, while the run still trains (vision tower included)."""
    from thinkgen.errors import ConfigError

    with pytest.raises(ConfigError, match="anchor_weight"):
        cfg_for(assets, tmp_path / "bad", anchor_weight=-1.0)
    with pytest.raises(ConfigError, match="fsdp2"):
        cfg_for(assets, tmp_path / "bad", anchor_weight=1.0, parallel="fsdp2")
    with pytest.raises(ConfigError, match="anchor_images"):
        cfg_for(assets, tmp_path / "bad", anchor_images=True)
    from thinkgen.errors import CheckpointError
    with pytest.raises(CheckpointError, match="missing_ref"):
        train_mllm(cfg_for(assets, tmp_path / "noref", anchor_weight=1.0, anchor_model_dir=str(tmp_path / "missing_ref")))
    assert not (tmp_path / "noref").exists()                      # refused before anything is written
    kw = dict(max_steps=8, save_every=0, lr=1e-3, freeze_vision=False)
    free = train_mllm(cfg_for(assets, tmp_path / "free", **kw))
    anch = train_mllm(cfg_for(assets, tmp_path / "anch", anchor_weight=100.0, **kw))
    prompts = ["draw a red circle", "draw a blue square", "a green triangle"]

    def drift(final):
        m = ThinkGenMLLM.from_pretrained(final / "mllm", final / "processor")
        a, b = mllm.encode_instructions(prompts).features, m.encode_instructions(prompts).features
        return float(((a - b).pow(2).sum() / a.pow(2).sum()).sqrt())

    d_free, d_anch = drift(free), drift(anch)
    assert d_anch < 0.5 * d_free, (d_anch, d_free)
    before, after = load_file(str(assets[0] / "mllm" / M)), load_file(str(anch / "mllm" / M))
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("model.visual."))


def test_think_mask_and_think_loss_weight(mllm):
    """think_mask marks exactly the supervised think block; with weight 0 on it the per-sample loss is the loss of
    the answer tokens alone, with weight 1 the plain loss."""
    from thinkgen.train.mllm_sft import per_sample_lm_loss

    rec = {"task_type": "understanding", "instruction": "what shape is this", "input_images": [], "images": [],
           "think": "a red square", "answer": "square"}
    batch = build_sft_batch(mllm.processor, [rec], max_seq_len=512, max_image_pixels=64 * 64, think_mask=True)
    tm, labels = batch.pop("think_mask"), batch["labels"]
    tok = mllm.tokenizer
    assert tok.decode(batch["input_ids"][0][tm[0]]) == "<think>\na red square\n</think>"
    assert not (tm & (labels == IGNORE_INDEX)).any()
    with torch.no_grad():
        logits = mllm.model(**{k: v for k, v in batch.items() if k != "labels"}, use_cache=False).logits
    answer_only = labels.masked_fill(tm, IGNORE_INDEX)
    w0 = torch.where(tm, 0.0, 1.0)
    assert torch.allclose(per_sample_lm_loss(logits, labels, w0), per_sample_lm_loss(logits, answer_only))
    assert torch.allclose(per_sample_lm_loss(logits, labels, torch.ones_like(w0)), per_sample_lm_loss(logits, labels))
    from thinkgen.errors import ConfigError
    with pytest.raises(ConfigError, match="think_loss_weight"):
        mllm_sft(model_dir="x", data=["y.jsonl"], output_dir="z", think_loss_weight=-1.0)


def test_anchor_images_keeps_the_edit_features(assets, mllm, tmp_path):
    """anchor_images: the features of image-conditioned generation records (the text after the image, what the DiT
    reads for an edit) move far less than with text-only anchoring."""
    from PIL import Image

    folder = tmp_path / "edits"
    (folder / "images").mkdir(parents=True)
    recs = []
    for i, (c, rgb) in enumerate([("red", (220, 30, 30)), ("blue", (30, 30, 220)), ("green", (30, 200, 30))]):
        Image.new("RGB", (32, 32), rgb).save(folder / "images" / f"{i}.png")
        im = [f"images/{i}.png"]
        recs.append({"task_type": "edit", "instruction": f"make the {c} square bigger", "input_images": im,
                     "output_image": im[0], "think": f"the square is {c}", "answer": f"a big {c} square"})
        recs.append({"task_type": "understanding", "instruction": "what colour is it", "input_images": im, "answer": c})
    data = folder / "sft.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in recs))
    kw = dict(data=[str(data)], max_steps=8, save_every=0, lr=1e-3, freeze_vision=False, anchor_weight=100.0)
    text_only = train_mllm(cfg_for(assets, tmp_path / "t", **kw))
    with_img = train_mllm(cfg_for(assets, tmp_path / "i", anchor_images=True, **kw))
    rec = dict(recs[0], images=[Image.open(folder / "images" / "0.png").convert("RGB")])

    def drift(final):       # think-on features of the edit (its image read through the vision tower), after the image
        m = ThinkGenMLLM.from_pretrained(final / "mllm", final / "processor")
        batch = build_sft_batch(mllm.processor, [rec], max_seq_len=512, max_image_pixels=64 * 64)
        batch.pop("labels")
        end = int((batch["input_ids"][0] == mllm.tokenizer.convert_tokens_to_ids("<|vision_end|>")).nonzero()[-1])
        with torch.no_grad():
            a, b = mllm.forward_features(batch)[0, end + 1:], m.forward_features(batch)[0, end + 1:]
        return float(((a - b).pow(2).sum() / a.pow(2).sum()).sqrt())

    d_text, d_img = drift(text_only), drift(with_img)
    assert d_img < 0.6 * d_text, (d_img, d_text)


def _same_function_then_backward(mllm, old, new, feature_atol: float) -> None:
    """A grown MLLM ``new`` gives ``old``'s DiT features and logits (with an image); then one LM loss backward."""
    from PIL import Image

    from thinkgen.mllm import build_prompt

    prompts = ["a red circle", "two blue squares above a green star"]
    with torch.no_grad():
        assert torch.allclose(old.encode_instructions(prompts).features, new.encode_instructions(prompts).features,
                              atol=feature_atol)
        img = Image.new("RGB", (48, 40), (200, 30, 30))
        batch = mllm.processor([build_prompt(mllm.tokenizer, "what colour is it?", 1, "think")], [[img]])
        assert torch.allclose(old.model(**batch).logits, new.model(**batch).logits, atol=1e-5)
    new.model.train()
    batch = mllm.processor([build_prompt(mllm.tokenizer, "a red circle")])
    out = new.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["input_ids"])
    out.loss.backward()


def test_block_expansion_keeps_the_function_and_trains(mllm):
    """expand_mllm_layers: new layers are zeroed copies placed before the last two, so logits (with an image) and
    the DiT features are unchanged; the new layers then receive gradients; bad sizes are refused."""
    from thinkgen.mllm import build_tiny_mllm
    from thinkgen.train.models import expand_mllm_layers, expansion_plan

    assert expansion_plan(4, 2) == [0, None, 1, None, 2, 3]
    assert expansion_plan(3, 2) == [0, None, None, 1, 2]
    assert expansion_plan(5, 2) == [0, None, 1, None, 2, 3, 4]
    for n, add, needle in ((2, 1, r">= 3 decoder layers \(got 2\)"), (4, 0, "add=0 must be >= 1")):
        with pytest.raises(ValueError, match=needle):
            expansion_plan(n, add)

    old = ThinkGenMLLM(build_tiny_mllm(mllm.tokenizer, hidden_size=32, num_layers=3, seed=3), mllm.processor)
    model, order = expand_mllm_layers(old.model, 2)
    new = ThinkGenMLLM(model, mllm.processor)
    assert order == [0, None, None, 1, 2] and new.model.config.text_config.num_hidden_layers == 5
    layers = new.model.model.language_model.layers
    assert all(not layers[j].self_attn.o_proj.weight.any() and not layers[j].mlp.down_proj.weight.any()
               for j in (1, 2))
    assert torch.equal(layers[1].self_attn.q_proj.weight, old.model.model.language_model.layers[0].self_attn.q_proj.weight)

    _same_function_then_backward(mllm, old, new, feature_atol=1e-6)
    assert float(layers[1].self_attn.o_proj.weight.grad.abs().sum()) > 0
    assert float(layers[2].mlp.down_proj.weight.grad.abs().sum()) > 0


def test_width_expansion_keeps_the_function_and_trains(mllm):
    """widen_mllm: twice the query and key/value heads and a wider MLP, new output columns zero, so logits (with an
    image) and DiT features are unchanged; the new columns get gradients; nothing to widen / a shrinking MLP refused."""
    from thinkgen.mllm import build_tiny_mllm
    from thinkgen.train.models import widen_mllm

    old = ThinkGenMLLM(build_tiny_mllm(mllm.tokenizer, hidden_size=32, num_layers=2, seed=3), mllm.processor)
    tc = old.model.config.text_config
    heads, kv, inter, hd = tc.num_attention_heads, tc.num_key_value_heads, tc.intermediate_size, tc.head_dim
    for kw, needle in (({}, "nothing to widen"), ({"head_factor": 0}, "head_factor=0 must be >= 1"),
                       ({"intermediate_size": inter - 1}, f"intermediate_size={inter - 1} is below")):
        with pytest.raises(ValueError, match=needle):
            widen_mllm(old.model, **kw)
    new = ThinkGenMLLM(widen_mllm(old.model, 2, 2 * inter), mllm.processor)
    ntc = new.model.config.text_config
    assert (ntc.num_attention_heads, ntc.num_key_value_heads, ntc.intermediate_size) == (2 * heads, 2 * kv, 2 * inter)
    layer, src = new.model.model.language_model.layers[0], old.model.model.language_model.layers[0]
    assert layer.self_attn.q_proj.weight.shape == (2 * heads * hd, tc.hidden_size)
    assert torch.equal(layer.self_attn.q_proj.weight[: heads * hd], src.self_attn.q_proj.weight)
    assert torch.equal(layer.self_attn.k_proj.weight[: kv * hd], src.self_attn.k_proj.weight)
    assert not layer.self_attn.o_proj.weight[:, heads * hd:].any() and not layer.mlp.down_proj.weight[:, inter:].any()
    assert layer.self_attn.q_proj.weight[heads * hd:].std() > 0 and layer.mlp.up_proj.weight[inter:].std() > 0

    _same_function_then_backward(mllm, old, new, feature_atol=1e-5)
    assert float(layer.self_attn.o_proj.weight.grad[:, heads * hd:].abs().sum()) > 0
    assert float(layer.mlp.down_proj.weight.grad[:, inter:].abs().sum()) > 0


def test_add_word_tokens_appends_ids_and_keeps_the_rest(mllm):
    """add_word_tokens: one token per new word after the old ids, new embedding rows start as the mean of the
    words they bind, old rows and the features of old text unchanged; a word that already is one token is refused."""
    import copy

    from thinkgen.mllm import build_tiny_mllm
    from thinkgen.train.models import add_word_tokens

    old = ThinkGenMLLM(build_tiny_mllm(mllm.tokenizer, hidden_size=32, num_layers=2, seed=3), mllm.processor)
    proc, model = copy.deepcopy(mllm.processor), copy.deepcopy(old.model)
    n = model.get_input_embeddings().weight.shape[0]
    with pytest.raises(ValueError, match="'red' already is one token"):
        add_word_tokens(model, proc.tokenizer, ["red"])
    other = copy.deepcopy(model)
    other.resize_token_embeddings(n + 3)
    with pytest.raises(ValueError, match="do not belong together"):
        add_word_tokens(other, proc.tokenizer, ["redcircle"])
    assert len(proc.tokenizer) == n                 # refused before the tokenizer changed
    ids = add_word_tokens(model, proc.tokenizer, ["redcircle"], {"redcircle": "red circle"})
    assert ids == [n] and proc.tokenizer.tokenize(" a redcircle") == proc.tokenizer.tokenize(" a") + [" redcircle"]
    assert model.config.text_config.vocab_size == n + 1
    src = proc.tokenizer(" red circle", add_special_tokens=False)["input_ids"]
    emb = model.get_input_embeddings().weight
    assert torch.allclose(emb[n], emb[src].mean(0)) and torch.equal(emb[:n], old.model.get_input_embeddings().weight)
    new = ThinkGenMLLM(model, proc)
    with torch.no_grad():
        prompts = ["a red circle", "two blue squares above a green star"]
        assert torch.equal(old.encode_instructions(prompts).features, new.encode_instructions(prompts).features)
