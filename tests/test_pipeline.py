"""End-to-end pipeline on a tiny random checkpoint in the released layout."""
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from thinkgen import flow
from thinkgen.errors import CheckpointError, InvalidImageError, InvalidInputError
from thinkgen.pipeline import ThinkGenPipeline
from thinkgen.sampling import DiTConditions, Guidance, guided_velocity, sample

KW = dict(height=32, width=32, num_inference_steps=2)


def _arr(img):
    return np.asarray(img, dtype=np.int16)


def test_layout_on_disk(tiny_ckpt):
    index = json.loads((tiny_ckpt / "model_index.json").read_text())
    for comp in ("mllm", "processor", "transformer", "vae", "scheduler"):
        assert comp in index and (tiny_ckpt / comp).is_dir()
    assert (tiny_ckpt / "transformer" / "diffusion_pytorch_model.safetensors").is_file()
    assert json.loads((tiny_ckpt / "scheduler" / "scheduler_config.json").read_text())["dynamic_time_shift"] is True


def test_save_load_roundtrip_same_images(tiny_pipe, tmp_path):
    out1 = tiny_pipe("a red circle", seed=5, **KW)
    tiny_pipe.save_pretrained(tmp_path / "copy")
    again = ThinkGenPipeline.from_pretrained(tmp_path / "copy")
    out2 = again("a red circle", seed=5, **KW)
    assert (_arr(out1.images[0]) == _arr(out2.images[0])).all()
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir()), "no temporary folders left"


def test_batch_equals_single(tiny_pipe):
    prompts = ["a red circle", "two blue squares left of a yellow star above the green triangle"]
    batch = tiny_pipe(prompts, seed=11, **KW)
    for i, p in enumerate(prompts):
        single = tiny_pipe(p, seed=11, **KW)
        assert np.abs(_arr(batch.images[i]) - _arr(single.images[0])).max() <= 1
        assert batch.instructions[i] == single.instructions[0] == p


def test_seed_controls_noise(tiny_pipe):
    a = tiny_pipe("a cat", seed=1, **KW).images[0]
    b = tiny_pipe("a cat", seed=1, **KW).images[0]
    c = tiny_pipe("a cat", seed=2, **KW).images[0]
    assert (_arr(a) == _arr(b)).all() and not (_arr(a) == _arr(c)).all()


def test_num_images_per_prompt_seeds(tiny_pipe):
    out = tiny_pipe(["a cat", "a dog"], seed=3, num_images_per_prompt=2, **KW)
    assert len(out.images) == 4 and out.seeds == [3, 4, 3, 4]


def test_think_mode_returns_thoughts(tiny_pipe):
    out = tiny_pipe(["a red circle", "a dog"], think="on", seed=0, max_think_tokens=3, max_answer_tokens=3, **KW)
    assert len(out.thoughts) == 2 and all(isinstance(t, str) and t for t in out.thoughts)
    assert len(out.images) == 2
    again = tiny_pipe(["a red circle", "a dog"], think="on", seed=0, max_think_tokens=3, max_answer_tokens=3, **KW)
    assert again.thoughts == out.thoughts, "seeded thinking is reproducible"


def test_edit_with_references_and_align_res(tiny_pipe):
    ref = Image.new("RGB", (40, 48), (0, 0, 255))
    out = tiny_pipe("make it red", images=[ref], seed=0, num_inference_steps=2)
    assert out.images[0].size == (40, 48)
    two = tiny_pipe("add the cat", images=[ref, Image.new("RGB", (32, 32))], seed=0, **KW)
    assert two.images[0].size == (32, 32)


def test_output_resized_to_request(tiny_pipe):
    out = tiny_pipe("a cat", seed=0, height=36, width=44, num_inference_steps=1)
    assert out.images[0].size == (44, 36)


def test_chat_returns_text(tiny_pipe):
    reply = tiny_pipe.chat("what is this?", images=[Image.new("RGB", (32, 32), (255, 0, 0))], max_new_tokens=4)
    assert isinstance(reply, str)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(prompt=""), "empty"),
        (dict(prompt="   "), "empty"),
        (dict(prompt=42), "prompt"),
        (dict(prompt=[]), "prompt"),
        (dict(prompt="a", num_inference_steps=0), "num_inference_steps"),
        (dict(prompt="a", num_inference_steps=-3), "num_inference_steps"),
        (dict(prompt="a", height=-32), "height"),
        (dict(prompt="a", width=0), "width"),
        (dict(prompt="a", width=100000), "width"),
        (dict(prompt="a", think="maybe"), "think"),
        (dict(prompt="a", text_guidance_scale=float("nan")), "text_guidance_scale"),
        (dict(prompt="a", text_guidance_scale=-1), "text_guidance_scale"),
        (dict(prompt="a", cfg_range=(0.8, 0.2)), "cfg_range"),
        (dict(prompt="a", seed=-1), "seed"),
        (dict(prompt="a", num_images_per_prompt=0), "num_images_per_prompt"),
        (dict(prompt="a", images=[Image.new("RGB", (32, 32))] * 6), "at most 5"),
    ],
)
def test_bad_input(tiny_pipe, kwargs, match):
    prompt = kwargs.pop("prompt")
    args = {**KW, **kwargs}
    with pytest.raises(InvalidInputError, match=match):
        tiny_pipe(prompt, **args)


def test_bad_images(tiny_pipe, tmp_path):
    trunc = tmp_path / "t.png"
    buf = tmp_path / "full.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf)
    trunc.write_bytes(buf.read_bytes()[:300])
    text = tmp_path / "x.png"
    text.write_text("not an image")
    for bad in (trunc, text, tmp_path / "missing.png", Image.new("RGB", (0, 0)), Image.new("RGB", (9000, 9000))):
        with pytest.raises(InvalidImageError):
            tiny_pipe("edit it", images=[bad], **KW)


def test_strict_load_errors(tiny_ckpt, tmp_path):
    from safetensors.torch import load_file, save_file

    bad = tmp_path / "bad"
    shutil.copytree(tiny_ckpt, bad)
    f = bad / "transformer" / "diffusion_pytorch_model.safetensors"
    state = load_file(str(f))
    state.pop("prepad_embed")
    save_file(state, str(f))
    with pytest.raises(CheckpointError, match="prepad_embed"):
        ThinkGenPipeline.from_pretrained(bad)
    shutil.rmtree(bad / "vae")
    with pytest.raises(CheckpointError, match="vae"):
        ThinkGenPipeline.from_pretrained(bad)


def test_vae_strict_shape_mismatch(tiny_ckpt, tmp_path):
    from safetensors.torch import load_file, save_file

    bad = tmp_path / "bad"
    shutil.copytree(tiny_ckpt, bad)
    f = bad / "vae" / "diffusion_pytorch_model.safetensors"
    state = load_file(str(f))
    k = next(k for k in state if k.endswith("conv_in.weight"))
    state[k] = torch.zeros(1, 1, 1, 1)
    save_file(state, str(f))
    with pytest.raises(CheckpointError, match="shape"):
        ThinkGenPipeline.from_pretrained(bad)


def test_hub_id_offline_is_clear(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match="could not download"):
        ThinkGenPipeline.from_pretrained("nobody-xyz/not-a-real-thinkgen-model")


def test_not_a_model_path(tmp_path):
    with pytest.raises(CheckpointError):
        ThinkGenPipeline.from_pretrained(tmp_path)


# ----------------------------------------------------------------------------- CFG in the sampling loop
class _RecordingDiT:
    """v = features' mean per sample, broadcast; records the batch sizes it sees."""

    def __init__(self):
        self.calls = []

    def __call__(self, x, t, feats, mask, refs):
        self.calls.append(x.shape[0])
        m = (feats * mask[..., None]).sum((1, 2)) / mask.sum(1).clamp(min=1)
        bonus = torch.tensor([10.0 * len(r) if refs is not None else 0.0 for r in (refs or [[]] * x.shape[0])])
        return (m + bonus)[:, None, None, None].expand_as(x).clone()


def _conds(B=2, refs=False):
    feats = torch.arange(B * 3 * 4, dtype=torch.float32).reshape(B, 3, 4)
    mask = torch.ones(B, 3, dtype=torch.bool)
    r = [[torch.zeros(4, 2, 2)] for _ in range(B)] if refs else None
    return DiTConditions(feats, mask, r), DiTConditions(-feats[:, :2], mask[:, :2], None)


def test_text_cfg_is_two_pass_batched():
    dit = _RecordingDiT()
    cond, neg = _conds()
    x = torch.zeros(2, 4, 2, 2)
    v = guided_velocity(dit, x, torch.tensor(0.5), cond, neg, Guidance(4.0, 2.0), 0, 10)
    assert dit.calls == [4]
    vc = dit(x, None, cond.features, cond.mask, None)
    vu = dit(x, None, neg.features, neg.mask, None)
    assert torch.allclose(v, vu + 4.0 * (vc - vu))


def test_edit_cfg_is_three_pass():
    dit = _RecordingDiT()
    cond, neg = _conds(refs=True)
    x = torch.zeros(2, 4, 2, 2)
    v = guided_velocity(dit, x, torch.tensor(0.5), cond, neg, Guidance(4.0, 2.0), 0, 10)
    assert dit.calls == [6]
    vc = dit(x, None, cond.features, cond.mask, cond.ref_latents)
    vr = dit(x, None, neg.features, neg.mask, cond.ref_latents)
    vu = dit(x, None, neg.features, neg.mask, None)
    assert torch.allclose(v, vu + 2.0 * (vr - vu) + 4.0 * (vc - vr))


class _ScaledDiT(torch.nn.Module):
    """v = w * (features' mean per sample + 10 per reference image), broadcast: one learnable scalar."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(1.5))
        self.rec = _RecordingDiT()

    def forward(self, x, t, feats, mask, refs):
        return self.w * self.rec(x, t, feats, mask, refs)


@pytest.mark.parametrize("refs", [False, True])
def test_detach_uncond_keeps_the_value_and_trains_the_conditional_branch_only(refs):
    """Flow-GRPO train_sd3.py style CFG gradient: same velocity; d v / d w comes from text_scale * v_cond / w alone."""
    cond, neg = _conds(refs=refs)
    x = torch.zeros(2, 4, 2, 2)
    g = Guidance(4.0, 2.0)
    grads, values = [], []
    for detach in (False, True):
        dit = _ScaledDiT()
        v = guided_velocity(dit, x, torch.tensor(0.5), cond, neg, g, 0, 10, detach_uncond=detach)
        v.sum().backward()
        grads.append(dit.w.grad.item())
        values.append(v.detach())
    assert torch.equal(values[0], values[1])
    unit = _RecordingDiT()
    vc = unit(x, None, cond.features, cond.mask, cond.ref_latents)
    assert grads[1] == pytest.approx(4.0 * vc.sum().item())
    assert grads[0] == pytest.approx((values[0] / 1.5).sum().item())   # v is linear in w: dv/dw = v / w
    assert grads[0] != pytest.approx(grads[1])


def test_cfg_range_on_step_fraction():
    dit = _RecordingDiT()
    cond, neg = _conds()
    noise = torch.zeros(2, 4, 2, 2)
    ts = flow.inference_timesteps(10, 4)
    sample(dit, noise, cond, neg, ts, Guidance(4.0, 1.0, (0.0, 0.5)))
    # steps 0..5 have i/N in [0, 0.5] -> batched CFG (4 rows); the others run one pass (2 rows)
    assert dit.calls == [4] * 6 + [2] * 4


def test_sde_noise_zero_equals_euler():
    dit = _RecordingDiT()
    cond, neg = _conds()
    noise = torch.randn(2, 4, 2, 2, generator=torch.Generator().manual_seed(0))
    ts = flow.inference_timesteps(4, 4)
    a = sample(dit, noise, cond, neg, ts, Guidance(2.0), noise_level=0.0).latents
    b = sample(dit, noise, cond, neg, ts, Guidance(2.0), noise_level=0.7,
               sde_steps=[], generator=torch.Generator().manual_seed(1)).latents
    assert torch.equal(a, b)
    c = sample(dit, noise, cond, neg, ts, Guidance(2.0), noise_level=0.7,
               generator=[torch.Generator().manual_seed(i) for i in range(2)], return_trajectory=True)
    assert c.logps.shape == (2, 4) and len(c.states) == 5


def test_cps_in_the_sampling_loop():
    """sde_kind="cps" runs the coefficients-preserving step on the SDE steps: its stored log-probs are the
    recomputed CPS log-probs of the stored states, it differs from the SDE kind, and an unknown kind is refused."""
    dit = _RecordingDiT()
    cond, neg = _conds()
    noise = torch.randn(2, 4, 2, 2, generator=torch.Generator().manual_seed(0))
    ts = flow.inference_timesteps(4, 4)
    gens = lambda: [torch.Generator().manual_seed(i) for i in range(2)]
    c = sample(dit, noise, cond, neg, ts, Guidance(2.0), noise_level=0.7, generator=gens(), return_trajectory=True,
               sde_kind="cps")
    s = sample(dit, noise, cond, neg, ts, Guidance(2.0), noise_level=0.7, generator=gens(), sde_kind="sde")
    assert not torch.equal(c.latents, s.latents)

    for i in range(4):
        x, x_next = c.states[i], c.states[i + 1]
        v = guided_velocity(dit, x, ts[i], cond, neg, Guidance(2.0), i, 4)
        again = flow.sde_step(x, v, ts[i], ts[i + 1], 0.7, x_next=x_next, t_min=ts[1], kind="cps")
        assert torch.allclose(again.logp, c.logps[:, i], atol=1e-6)
    with pytest.raises(ValueError, match="sde_kind"):
        sample(dit, noise, cond, neg, ts, Guidance(2.0), noise_level=0.7, sde_kind="ode")


def test_model_cpu_offload_same_result():
    from thinkgen.testing import build_tiny_pipeline

    pipe = build_tiny_pipeline()
    a = pipe("a red circle", seed=4, **KW).images[0]
    pipe.enable_model_cpu_offload("cpu")
    b = pipe("a red circle", seed=4, **KW).images[0]
    assert (_arr(a) == _arr(b)).all()


@pytest.mark.parametrize("refs", [False, True])
def test_sampling_reuses_the_refined_text_and_gives_the_same_result(tiny_pipe, refs):
    """sample() refines each CFG branch set's text once per run (BranchCache + ContextCache), not once per step,
    and its trajectory and log-probs are bit-identical to calls without the cache."""
    dit = tiny_pipe.transformer
    cfg = dit.config
    g = torch.Generator().manual_seed(0)
    B, L, F, C = 2, 5, 2 * cfg.text_feat_dim, cfg.in_channels
    feats = torch.randn(B, L, F, generator=g)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=torch.bool)
    r = [[torch.randn(C, 4, 4, generator=g)] for _ in range(B)] if refs else None
    cond, neg = DiTConditions(feats, mask, r), DiTConditions(torch.randn(B, 2, F, generator=g), mask[:, :2])
    noise = torch.randn(B, C, 4, 4, generator=g)
    ts = flow.inference_timesteps(4, 4)
    calls = []
    hook = dit.context_refiner[0].register_forward_hook(lambda *a: calls.append(1))
    runs = []
    try:
        for use_cache in (True, False):
            dit.supports_context_cache = use_cache
            calls.clear()
            gens = [torch.Generator().manual_seed(i) for i in range(B)]
            with torch.no_grad():
                runs.append(sample(dit, noise, cond, neg, ts, Guidance(3.0, 2.0, (0.0, 0.5)), noise_level=0.7,
                                   generator=gens, return_trajectory=True))
            runs[-1].refiner_calls = len(calls)
    finally:
        dit.__dict__.pop("supports_context_cache", None)      # back to the class attribute
        hook.remove()
    cached, plain = runs
    # CFG on steps 0-2 (one batched branch set), off on step 3 (the conditional branch alone): two sets
    assert cached.refiner_calls == 2 and plain.refiner_calls == 4
    assert torch.equal(cached.latents, plain.latents) and torch.equal(cached.logps, plain.logps)
    assert all(torch.equal(a, b) for a, b in zip(cached.states, plain.states))
