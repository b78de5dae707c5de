"""Teacher-forced think-format features (DiT data field "condition": "think")."""
import torch

from thinkgen.mllm import THINK_END, build_prompt
from thinkgen.testing import build_tiny_pipeline
from thinkgen.train.data import check_record
from thinkgen.train.dit_trainer import FrozenEncoders


def test_encode_answers_matches_full_forward():
    pipe = build_tiny_pipeline()
    m = pipe.mllm
    prompt, think, answer = "a red circle", "it is a circle", "a red circle"
    enc = m.encode_answers([prompt, "two blue squares"], [think, ""], [answer, "two blue squares"])
    assert enc.instructions[0] == "\n\n" + answer
    # same as running the whole text and taking the rows after </think>
    text = build_prompt(m.tokenizer, prompt, 0, "think") + f"{think}\n{THINK_END}\n\n{answer}"
    batch = m.processor([text], None, padding_side="right")
    feats = m.forward_features(batch)[0]
    ids = batch["input_ids"][0].tolist()
    cut = len(ids) - ids[::-1].index(m.ids[THINK_END])
    n = int(enc.mask[0].sum())
    assert n == len(ids) - cut
    assert torch.allclose(enc.features[0, :n], feats[cut:], atol=1e-5)
    # the think context changes the features of the same answer words
    plain = m.encode_instructions([answer])
    assert plain.features.shape[1] != n or not torch.allclose(plain.features[0], enc.features[0, :n])


def test_frozen_encoders_mix_conditions():
    pipe = build_tiny_pipeline()
    enc = FrozenEncoders(pipe.mllm, pipe.vae, torch.device("cpu"), max_text_tokens=64)
    instr = ["a red circle", "a blue square"]
    f_mixed, m_mixed = enc.features(instr, [0, 0], [("as red as a circle", "so red"), None])
    f_plain, m_plain = enc.features(instr, [0, 0])
    n1 = int(m_plain[1].sum())
    assert torch.allclose(f_mixed[1, :n1], f_plain[1, :n1], atol=1e-6)
    assert not torch.allclose(f_mixed[0, : int(m_mixed[0].sum())].sum(), f_plain[0, : int(m_plain[0].sum())].sum())


def test_condition_field_validated():
    rec = {"task_type": "t2i", "instruction": "x", "output_image": "a.png", "condition": "thinking"}
    assert any("condition" in p for p in check_record(rec))
    rec["condition"] = "think"
    assert check_record(rec) == []
