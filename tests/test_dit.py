"""ThinkGen DiT: batched model vs a naive per-sample reference, RoPE ids, strict loading, input errors."""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange
from safetensors.torch import load_file, save_file

from thinkgen.errors import CheckpointError, InvalidInputError
from thinkgen.models.dit import ThinkGenTransformer2DModel, sdpa_key_padding
from thinkgen.models.rope import build_position_ids, rope_cos_sin

TINY = dict(
    hidden_size=48,
    num_layers=2,
    num_refiner_layers=1,
    num_attention_heads=4,
    num_kv_heads=2,
    multiple_of=16,
    axes_dim_rope=(4, 4, 4),
    axes_lens=(64, 32, 32),
    text_feat_dim=16,
    num_prepad_tokens=3,
)
FEAT = 2 * TINY["text_feat_dim"]


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights everywhere (the real init zeroes the adaLN and output layers, which would hide bugs)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=g)
            if p.ndim == 1:
                p.copy_(1 + 0.2 * r if name.endswith("weight") else 0.2 * r)
            else:
                p.copy_(r / math.sqrt(p.shape[-1]))
    return model


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return randomize(ThinkGenTransformer2DModel(**TINY)).eval()


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


# --------------------------------------------------------------------------------------------------------
# A deliberately naive reference: one sample, valid tokens only, float64, explicit loops over stages,
# explicit K/V repetition, complex-number RoPE and a hand-written softmax attention.


def naive_forward(model, latent, t, feats, refs):
    """latent (C, H, W), t float, feats (L_valid, 2T), refs list of (C, h, w) -> velocity (C, H, W)."""
    cfg = model.config
    P = {k: v.detach().double() for k, v in model.named_parameters()}
    p, nh, nkv = cfg.patch_size, cfg.num_attention_heads, cfg.num_kv_heads
    hd = cfg.hidden_size // nh
    eps = cfg.norm_eps

    def lin(x, name, bias=True):
        y = x @ P[name + ".weight"].T
        return y + P[name + ".bias"] if bias else y

    def rms(x, name, e=eps):
        return x / torch.sqrt((x * x).mean(-1, keepdim=True) + e) * P[name]

    def freqs_cis(pos):  # list of (a0, a1, a2) -> (S, hd/2) complex
        cols = []
        for a, d in enumerate(cfg.axes_dim_rope):
            omega = 1.0 / (10000.0 ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
            ang = torch.tensor([q[a] for q in pos], dtype=torch.float64)[:, None] * omega[None, :]
            cols.append(torch.polar(torch.ones_like(ang), ang))
        return torch.cat(cols, dim=1)

    def rope(x, fc):  # x (S, heads, hd)
        xc = torch.view_as_complex(x.reshape(x.shape[0], x.shape[1], hd // 2, 2).contiguous())
        return torch.view_as_real(xc * fc[:, None, :]).reshape(x.shape)

    def attention(x, pre, pos):
        S = x.shape[0]
        q = lin(x, pre + ".to_q", False).reshape(S, nh, hd)
        k = lin(x, pre + ".to_k", False).reshape(S, nkv, hd)
        v = lin(x, pre + ".to_v", False).reshape(S, nkv, hd)
        q, k = rms(q, pre + ".norm_q.weight", 1e-5), rms(k, pre + ".norm_k.weight", 1e-5)
        fc = freqs_cis(pos)
        q, k = rope(q, fc), rope(k, fc)
        k = k.repeat_interleave(nh // nkv, dim=1)
        v = v.repeat_interleave(nh // nkv, dim=1)
        out = torch.empty(S, nh, hd, dtype=torch.float64)
        for head in range(nh):
            scores = q[:, head] @ k[:, head].T / math.sqrt(hd)  # (S, S)
            w = torch.exp(scores - scores.max(dim=1, keepdim=True).values)
            out[:, head] = (w / w.sum(dim=1, keepdim=True)) @ v[:, head]
        return lin(out.reshape(S, nh * hd), pre + ".to_out.0", False)

    def ffn(x, pre):
        gate, up = lin(x, pre + ".linear_1", False), lin(x, pre + ".linear_3", False)
        return lin(F.silu(gate) * up, pre + ".linear_2", False)

    def block(x, pre, pos, temb=None):
        if temb is None:
            x = x + rms(attention(rms(x, pre + ".norm1.weight"), pre + ".attn", pos), pre + ".norm2.weight")
            return x + rms(ffn(rms(x, pre + ".ffn_norm1.weight"), pre + ".feed_forward"), pre + ".ffn_norm2.weight")
        s1, g1, s2, g2 = lin(F.silu(temb), pre + ".norm1.linear").chunk(4)
        h = rms(x, pre + ".norm1.norm.weight") * (1 + s1)
        x = x + torch.tanh(g1) * rms(attention(h, pre + ".attn", pos), pre + ".norm2.weight")
        y = ffn(rms(x, pre + ".ffn_norm1.weight") * (1 + s2), pre + ".feed_forward")
        return x + torch.tanh(g2) * rms(y, pre + ".ffn_norm2.weight")

    # time embedding: [cos, sin](1000 t 10000^(-k/128)). Formed in fp32, as the released model's sinusoidal
    # embedding does (at t ~ 1 the phase reaches 1000 rad, so fp32 vs fp64 differ by ~1e-5 rad).
    freq = torch.exp(-math.log(10000.0) * torch.arange(128, dtype=torch.float32) / 128)
    arg = 1000.0 * (torch.tensor(t, dtype=torch.float32) * freq)
    phi = torch.cat([torch.cos(arg), torch.sin(arg)]).double()
    tpre = "time_caption_embed.timestep_embedder"
    temb = lin(F.silu(lin(phi, tpre + ".linear_1")), tpre + ".linear_2")

    # text with prepad
    txt = torch.cat([P["prepad_embed"][0], feats.double()], dim=0)
    txt = lin(rms(txt, "time_caption_embed.caption_embedder.0.weight"), "time_caption_embed.caption_embedder.1")
    Lt = txt.shape[0]
    text_pos = [(i, i, i) for i in range(Lt)]
    for j in range(cfg.num_refiner_layers if Lt else 0):
        txt = block(txt, f"context_refiner.{j}", text_pos)

    # references, each alone, offsets S_{k+1} = S_k + max(h_k, w_k)
    shift, ref_out = Lt, []
    for idx, r in enumerate(refs):
        h, w = r.shape[1] // p, r.shape[2] // p
        pos = [(shift, a, b) for a in range(h) for b in range(w)]
        shift += max(h, w)
        x = lin(rearrange(r.double(), "c (h p1) (w p2) -> (h w) (p1 p2 c)", p1=p, p2=p), "ref_image_patch_embedder")
        x = x + P["image_index_embedding"][idx]
        for j in range(cfg.num_refiner_layers):
            x = block(x, f"ref_image_refiner.{j}", pos, temb)
        ref_out.append((x, pos))

    # noise
    H, W = latent.shape[1] // p, latent.shape[2] // p
    noise_pos = [(shift, a, b) for a in range(H) for b in range(W)]
    x = lin(rearrange(latent.double(), "c (h p1) (w p2) -> (h w) (p1 p2 c)", p1=p, p2=p), "x_embedder")
    for j in range(cfg.num_refiner_layers):
        x = block(x, f"noise_refiner.{j}", noise_pos, temb)

    # joint
    seq = torch.cat([txt] + [r for r, _ in ref_out] + [x])
    pos = text_pos + [q for _, ps in ref_out for q in ps] + noise_pos
    for j in range(cfg.num_layers):
        seq = block(seq, f"layers.{j}", pos, temb)
    img = seq[-H * W :]
    img = F.layer_norm(img, (img.shape[-1],), eps=1e-6) * (1 + lin(F.silu(temb), "norm_out.linear_1"))
    out = lin(img, "norm_out.linear_2")
    return rearrange(out, "(h w) (p1 p2 c) -> c (h p1) (w p2)", h=H, w=W, p1=p, p2=p)


def make_batch(seed, text_lens, L, H=8, W=6):
    g = torch.Generator().manual_seed(seed)
    B = len(text_lens)
    lat = torch.randn(B, 16, H, W, generator=g)
    t = torch.rand(B, generator=g)
    feats = torch.randn(B, L, FEAT, generator=g) * 3
    mask = torch.arange(L)[None] < torch.tensor(text_lens)[:, None]
    feats = feats * mask[..., None]  # padding content must not matter, but keep it finite
    return lat, t, feats, mask


# --------------------------------------------------------------------------------------------------------
# (a) batched model == naive reference == each sample alone


@torch.no_grad()
def test_matches_naive_reference_without_refs(model):
    lat, t, feats, mask = make_batch(1, [2, 5, 4], L=5)
    out = model(lat, t, feats, mask)
    assert out.shape == lat.shape and out.dtype == torch.float32
    for i in range(3):
        n = int(mask[i].sum())
        ref = naive_forward(model, lat[i], t[i].item(), feats[i, :n], [])
        assert rel_err(out[i], ref) < 1e-5


@torch.no_grad()
def test_matches_naive_reference_with_refs(model):
    g = torch.Generator().manual_seed(2)
    lat, t, feats, mask = make_batch(2, [3, 1, 4], L=4)
    refs = [
        [torch.randn(16, 4, 6, generator=g), torch.randn(16, 6, 2, generator=g)],  # two refs of different sizes
        [],
        [torch.randn(16, 2, 4, generator=g)],
    ]
    out = model(lat, t, feats, mask, refs)
    for i in range(3):
        n = int(mask[i].sum())
        ref = naive_forward(model, lat[i], t[i].item(), feats[i, :n], refs[i])
        assert rel_err(out[i], ref) < 1e-5
    # the references matter
    assert rel_err(model(lat, t, feats, mask), out) > 1e-3
    # in float64 the batched model and the reference agree to rounding: no structural slack hides in 1e-5
    m64 = randomize(ThinkGenTransformer2DModel(**TINY)).double()
    out64 = m64(lat.double(), t, feats.double(), mask, [[r.double() for r in rs] for rs in refs])
    assert out64.dtype == torch.float64
    for i in range(3):
        n = int(mask[i].sum())
        assert rel_err(out64[i], naive_forward(m64, lat[i], t[i].item(), feats[i, :n], refs[i])) < 1e-12


@torch.no_grad()
def test_batch_equals_each_sample_alone(model):
    g = torch.Generator().manual_seed(3)
    lat, t, feats, mask = make_batch(3, [1, 6, 3], L=6)
    refs = [[torch.randn(16, 4, 4, generator=g)], [], [torch.randn(16, 2, 6, generator=g)] * 2]
    out = model(lat, t, feats, mask, refs)
    for i in range(3):
        n = int(mask[i].sum())
        alone = model(lat[i : i + 1], t[i : i + 1], feats[i : i + 1, :n], mask[i : i + 1, :n], [refs[i]])
        assert rel_err(out[i], alone[0]) < 1e-5


@torch.no_grad()
def test_no_prepad_and_empty_text_is_finite():
    m = randomize(ThinkGenTransformer2DModel(**{**TINY, "num_prepad_tokens": 0}), seed=4).eval()
    lat, t, feats, mask = make_batch(5, [0, 3], L=3)
    out = m(lat, t, feats, mask.int())  # int mask accepted
    assert torch.isfinite(out).all()
    alone = m(lat[:1], t[:1], feats[:1, :0], mask[:1, :0])  # no text at all
    assert rel_err(out[0], alone[0]) < 1e-5
    assert rel_err(out[0], naive_forward(m, lat[0], t[0].item(), feats[0, :0], [])) < 1e-5


def test_fully_masked_rows_are_not_nan():
    q = torch.randn(2, 4, 5, 6)
    k, v = torch.randn(2, 2, 5, 6), torch.randn(2, 2, 5, 6)
    mask = torch.tensor([[True, True, False, False, False], [False] * 5])
    out = sdpa_key_padding(q, k, v, mask)
    assert torch.isfinite(out).all()


def test_gradient_checkpointing_same_grads():
    m = randomize(ThinkGenTransformer2DModel(**TINY), seed=6)
    lat, t, feats, mask = make_batch(7, [2, 4], L=4)
    refs = [[torch.randn(16, 2, 2)], []]

    def grads():
        m.zero_grad()
        m(lat, t, feats, mask, refs).square().mean().backward()
        return {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}

    plain = grads()
    m.enable_gradient_checkpointing()
    assert m.gradient_checkpointing
    ckpt = grads()
    m.disable_gradient_checkpointing()
    assert plain.keys() == ckpt.keys() and len(plain) == len(list(m.parameters()))
    for n in plain:
        torch.testing.assert_close(ckpt[n], plain[n], rtol=1e-5, atol=1e-7)


@torch.no_grad()
def test_bf16_forward_runs(model):
    m = randomize(ThinkGenTransformer2DModel(**TINY), seed=0).to(torch.bfloat16)
    lat, t, feats, mask = make_batch(8, [2, 3], L=3)
    out = m(lat, t, feats, mask, [[torch.randn(16, 2, 4)], []])
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert rel_err(out, model(lat, t, feats, mask, None)) < 1.0  # sanity only; refs differ


# --------------------------------------------------------------------------------------------------------
# (b) RoPE position ids


def test_position_ids_by_hand():
    # 3 prepad + 3 text tokens, one ref of 2x3 patch tokens, noise of 2x2 patch tokens
    ids, offsets = build_position_ids(6, [(2, 3)], (2, 2))
    expected = [(i, i, i) for i in range(6)]
    expected += [(6, 0, 0), (6, 0, 1), (6, 0, 2), (6, 1, 0), (6, 1, 1), (6, 1, 2)]
    expected += [(9, 0, 0), (9, 0, 1), (9, 1, 0), (9, 1, 1)]  # 9 = 6 + max(2, 3)
    assert ids.tolist() == [list(e) for e in expected]
    assert offsets == [6, 9]


def test_rope_cos_sin_axes():
    cos, sin = rope_cos_sin(torch.tensor([[3, 5, 7]]), (4, 4, 4))
    want = torch.tensor([3.0, 3e-2, 5.0, 5e-2, 7.0, 7e-2], dtype=torch.float64)  # omega = 1, 10000^(-1/2)
    torch.testing.assert_close(cos[0].double(), want.cos(), rtol=0, atol=1e-7)
    torch.testing.assert_close(sin[0].double(), want.sin(), rtol=0, atol=1e-7)


# --------------------------------------------------------------------------------------------------------
# (c) strict loading and round trip


@pytest.fixture(scope="module")
def saved(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("dit")
    model.save_pretrained(path)
    return path


def test_save_writes_safetensors_and_round_trips(model, saved):
    assert (saved / "config.json").is_file() and (saved / "diffusion_pytorch_model.safetensors").is_file()
    assert "prepad_mask" in load_file(str(saved / "diffusion_pytorch_model.safetensors"))
    loaded = ThinkGenTransformer2DModel.from_pretrained(saved)
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert b["prepad_mask"].dtype == torch.int64
    assert loaded.config.num_prepad_tokens == 3 and not loaded.training
    lat, t, feats, mask = make_batch(9, [2, 1], L=2)
    with torch.no_grad():
        assert torch.equal(model(lat, t, feats, mask), loaded(lat, t, feats, mask))


def test_load_dtype_and_subfolder(model, saved, tmp_path):
    (tmp_path / "transformer").mkdir()
    for f in saved.iterdir():
        (tmp_path / "transformer" / f.name).write_bytes(f.read_bytes())
    m = ThinkGenTransformer2DModel.from_pretrained(tmp_path, subfolder="transformer", torch_dtype=torch.bfloat16)
    assert m.x_embedder.weight.dtype == torch.bfloat16 and m.prepad_mask.dtype == torch.int64


def test_sharded_load(model, tmp_path):
    model.save_pretrained(tmp_path, max_shard_size="100KB")
    assert (tmp_path / "diffusion_pytorch_model.safetensors.index.json").is_file()
    loaded = ThinkGenTransformer2DModel.from_pretrained(tmp_path)
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())


def _corrupt(saved, tmp_path, edit):
    (tmp_path / "config.json").write_text((saved / "config.json").read_text())
    state = load_file(str(saved / "diffusion_pytorch_model.safetensors"))
    edit(state)
    save_file(state, str(tmp_path / "diffusion_pytorch_model.safetensors"))
    return tmp_path


def test_missing_key_raises(saved, tmp_path):
    path = _corrupt(saved, tmp_path, lambda s: s.pop("layers.1.attn.norm_k.weight"))
    with pytest.raises(CheckpointError, match=r"missing keys: layers\.1\.attn\.norm_k\.weight"):
        ThinkGenTransformer2DModel.from_pretrained(path)


def test_unexpected_key_raises(saved, tmp_path):
    path = _corrupt(saved, tmp_path, lambda s: s.update({"layers.9.extra": torch.zeros(2)}))
    with pytest.raises(CheckpointError, match=r"unexpected keys: layers\.9\.extra"):
        ThinkGenTransformer2DModel.from_pretrained(path)


def test_shape_mismatch_raises(saved, tmp_path):
    path = _corrupt(saved, tmp_path, lambda s: s.update({"prepad_embed": torch.zeros(1, 4, FEAT)}))
    with pytest.raises(CheckpointError, match=r"prepad_embed: checkpoint \(1, 4, 32\) vs model \(1, 3, 32\)"):
        ThinkGenTransformer2DModel.from_pretrained(path)


def test_config_without_prepad_field_defaults_to_23(saved, tmp_path):
    cfg = json.loads((saved / "config.json").read_text())
    cfg.pop("num_prepad_tokens")
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    state = load_file(str(saved / "diffusion_pytorch_model.safetensors"))
    save_file(state, str(tmp_path / "diffusion_pytorch_model.safetensors"))
    with pytest.raises(CheckpointError, match=r"prepad_embed: checkpoint \(1, 3, 32\) vs model \(1, 23, 32\)"):
        ThinkGenTransformer2DModel.from_pretrained(tmp_path)


def test_pickle_refused_unless_allowed(model, saved, tmp_path):
    (tmp_path / "config.json").write_text((saved / "config.json").read_text())
    torch.save(model.state_dict(), tmp_path / "diffusion_pytorch_model.bin")
    with pytest.raises(CheckpointError, match="allow_pickle=True"):
        ThinkGenTransformer2DModel.from_pretrained(tmp_path)
    m = ThinkGenTransformer2DModel.from_pretrained(tmp_path, allow_pickle=True)
    assert torch.equal(m.layers[0].attn.to_q.weight, model.layers[0].attn.to_q.weight)


def test_missing_weights_and_config(saved, tmp_path):
    with pytest.raises(CheckpointError, match="config.json"):
        ThinkGenTransformer2DModel.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text((saved / "config.json").read_text())
    with pytest.raises(CheckpointError, match="no diffusion_pytorch_model.safetensors"):
        ThinkGenTransformer2DModel.from_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="ignore_mismatched_sizes"):
        ThinkGenTransformer2DModel.from_pretrained(saved, ignore_mismatched_sizes=True)


# --------------------------------------------------------------------------------------------------------
# (d) names and full-size parameter count


def test_released_parameter_names(model):
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    D, T = 48, 16
    expected = {
        "x_embedder.weight": (D, 64),
        "ref_image_patch_embedder.bias": (D,),
        "time_caption_embed.timestep_embedder.linear_1.weight": (D, 256),  # min(D, 1024)
        "time_caption_embed.timestep_embedder.linear_2.weight": (D, D),
        "time_caption_embed.caption_embedder.0.weight": (2 * T,),
        "time_caption_embed.caption_embedder.1.weight": (D, 2 * T),
        "noise_refiner.0.norm1.linear.weight": (4 * D, D),
        "noise_refiner.0.norm1.norm.weight": (D,),
        "ref_image_refiner.0.attn.to_k.weight": (24, D),  # 2 kv heads x 12
        "context_refiner.0.norm1.weight": (D,),
        "context_refiner.0.ffn_norm2.weight": (D,),
        "layers.1.attn.to_q.weight": (D, D),
        "layers.1.attn.to_v.weight": (24, D),
        "layers.1.attn.to_out.0.weight": (D, D),
        "layers.1.attn.norm_q.weight": (12,),
        "layers.1.attn.norm_k.weight": (12,),
        "layers.1.feed_forward.linear_1.weight": (192, D),
        "layers.1.feed_forward.linear_2.weight": (D, 192),
        "layers.1.feed_forward.linear_3.weight": (192, D),
        "layers.1.norm2.weight": (D,),
        "layers.1.ffn_norm1.weight": (D,),
        "norm_out.linear_1.weight": (D, D),
        "norm_out.linear_2.weight": (64, D),
        "image_index_embedding": (5, D),
        "prepad_embed": (1, 3, 2 * T),
        "prepad_mask": (1, 3),
    }
    for k, s in expected.items():
        assert shapes.get(k) == s, k
    assert not any("rope" in k or "norm_out.norm" in k or "time_proj" in k for k in shapes)
    assert "context_refiner.0.norm1.linear.weight" not in shapes


def test_full_size_parameter_count_on_meta():
    with torch.device("meta"):
        big = ThinkGenTransformer2DModel(
            hidden_size=2520, num_layers=32, num_attention_heads=21, num_kv_heads=7, text_feat_dim=4096
        )
    assert sum(p.numel() for p in big.parameters()) == 3_982_838_840
    assert big.layers[0].feed_forward.linear_1.weight.shape == (10240, 2520)
    assert big.prepad_embed.shape == (1, 23, 8192)


def test_init_blocks_start_as_identity_and_output_zero():
    m = ThinkGenTransformer2DModel(**TINY)
    assert torch.count_nonzero(m.layers[0].norm1.linear.weight) == 0
    lat, t, feats, mask = make_batch(10, [1], L=1)
    with torch.no_grad():
        assert torch.count_nonzero(m(lat, t, feats, mask)) == 0


# --------------------------------------------------------------------------------------------------------
# (e) bad inputs


def test_bad_inputs(model):
    lat, t, feats, mask = make_batch(11, [2, 3], L=3)
    r = torch.randn(16, 2, 2)
    cases = [
        (dict(ref_latents=[[r] * 6, []]), "at most 5"),
        (dict(latents=torch.randn(2, 16, 7, 6)), "multiples of patch_size"),
        (dict(latents=torch.randn(2, 8, 8, 6)), "channels"),
        (dict(text_features=torch.randn(2, 3, FEAT + 1)), "2\\*text_feat_dim"),
        (dict(text_mask=torch.tensor([[1, 0, 1], [1, 1, 1]])), "right-padded"),
        (dict(text_mask=mask[:, :2]), "text_mask must have shape"),
        (dict(timestep=torch.rand(3)), "timestep"),
        (dict(ref_latents=[[torch.randn(16, 3, 2)], []]), "ref_latents\\[0\\]\\[0\\]"),
        (dict(ref_latents=[[r]]), "list of 2"),
        # 3 prepad + 58 text tokens + ref offset 3 = RoPE position 64 >= axes_lens[0] = 64
        (
            dict(text_features=torch.zeros(2, 58, FEAT), text_mask=torch.ones(2, 58, dtype=torch.bool),
                 ref_latents=[[torch.randn(16, 6, 2)], []]),
            "axes_lens\\[0\\] = 64",
        ),
    ]
    base = dict(latents=lat, timestep=t, text_features=feats, text_mask=mask, ref_latents=None)
    for change, msg in cases:
        with pytest.raises(InvalidInputError, match=msg):
            model(**{**base, **change})
    # one position below the limit is accepted
    ok = dict(text_features=torch.zeros(2, 57, FEAT), text_mask=torch.ones(2, 57, dtype=torch.bool),
              ref_latents=[[torch.randn(16, 6, 2)], []])
    with torch.no_grad():
        assert model(**{**base, **ok}).shape == lat.shape


def test_varlen_attention_matches_sdpa_on_valid_rows():
    """The flash-attn varlen path (exercised here with an SDPA stand-in kernel) equals the padded SDPA path."""
    import torch.nn.functional as F

    from thinkgen.models.dit import sdpa_key_padding, varlen_attention

    def fake_varlen(q, k, v, cu_q, cu_k, max_q, max_k, dropout_p, softmax_scale, causal):
        outs = []
        for i in range(len(cu_q) - 1):
            a, b = int(cu_q[i]), int(cu_q[i + 1])
            qi, ki, vi = (t[a:b].transpose(0, 1)[None] for t in (q, k, v))  # (1, heads, L, d)
            g = qi.shape[1] // ki.shape[1]
            ki, vi = ki.repeat_interleave(g, 1), vi.repeat_interleave(g, 1)
            outs.append(F.scaled_dot_product_attention(qi, ki, vi, scale=softmax_scale)[0].transpose(0, 1))
        return torch.cat(outs)

    g = torch.Generator().manual_seed(0)
    B, H, KV, S, d = 3, 4, 2, 7, 8
    q = torch.randn(B, H, S, d, generator=g)
    k = torch.randn(B, KV, S, d, generator=g)
    v = torch.randn(B, KV, S, d, generator=g)
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3, [1] * 2 + [0] * 5], dtype=torch.bool)
    ref = sdpa_key_padding(q, k, v, mask)
    out = varlen_attention(q, k, v, mask, attn_fn=fake_varlen)
    valid = mask[:, None, :, None].expand_as(ref)
    assert torch.allclose(out[valid], ref[valid], atol=1e-6)
    assert (out[~valid] == 0).all()


# --------------------------------------------------------------------------------------------------------
# context cache: the refined text is computed once per batch of conditions


def test_context_cache_is_exact_and_runs_the_refiner_once(model):
    from thinkgen.models.dit import ContextCache

    g = torch.Generator().manual_seed(7)
    lat, t, feats, mask = make_batch(7, [2, 5, 4], L=5)
    refs = [[torch.randn(16, 4, 4, generator=g)], [], [torch.randn(16, 2, 6, generator=g)]]
    calls = []
    hook = model.context_refiner[0].register_forward_hook(lambda *a: calls.append(1))
    try:
        with torch.no_grad():
            cache = ContextCache()
            for step in range(3):
                x, tt = lat + step, (t + 0.1 * step) % 1
                got = model(x, tt, feats, mask, refs, context_cache=cache)
                n_cached = len(calls)
                assert torch.equal(got, model(x, tt, feats, mask, refs))   # bit for bit
                assert len(calls) == n_cached + 1                            # the uncached call refines again
            assert n_cached == 3 and cache.text is not None                 # 1 (cached run) + 2 (plain calls)
            with pytest.raises(InvalidInputError, match="context_cache"):
                model(lat, t, feats.clone(), mask, refs, context_cache=cache)
        # with autograd on the cache is left alone and the context refiner gets gradients
        cache = ContextCache()
        model.zero_grad()
        model(lat, t, feats, mask, refs, context_cache=cache).square().mean().backward()
        assert cache.text is None
        assert model.context_refiner[0].attn.to_q.weight.grad.abs().sum() > 0
    finally:
        hook.remove()
        model.zero_grad(set_to_none=True)


@pytest.mark.parametrize("backend", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_compile_blocks_matches_eager_and_keeps_names(backend):
    """torch.compile of the blocks: same state-dict names, same outputs and gradients (refs, masks, grad on and off).

    aot_eager checks graph capture (dynamic shapes, autograd) in seconds; inductor (the default backend, which
    generates C++ and takes ~2 min here on a cold cache) also checks the generated kernels' numerics.
    """
    eager = randomize(ThinkGenTransformer2DModel(**TINY), seed=8)
    comp = randomize(ThinkGenTransformer2DModel(**TINY), seed=8)
    assert comp.compile_blocks(backend=backend) is comp
    assert comp.compile_blocks(backend=backend) is comp   # a second call is a no-op
    assert list(comp.state_dict()) == list(eager.state_dict())
    lat, t, feats, mask = make_batch(9, [2, 4, 3], L=4)
    refs = [[torch.randn(16, 2, 2)], [], []]

    with torch.no_grad():
        torch.testing.assert_close(comp(lat, t, feats, mask, refs), eager(lat, t, feats, mask, refs),
                                   rtol=1e-5, atol=1e-6)
        # another batch size and text length: dynamic shapes, no error
        lat2, t2, feats2, mask2 = make_batch(10, [5], L=5)
        torch.testing.assert_close(comp(lat2, t2, feats2, mask2), eager(lat2, t2, feats2, mask2), rtol=1e-5, atol=1e-6)

    def grads(m):
        m.zero_grad()
        m(lat, t, feats, mask, refs).square().mean().backward()
        return {n: p.grad for n, p in m.named_parameters() if p.grad is not None}

    ge, gc = grads(eager), grads(comp)
    assert ge.keys() == gc.keys() and len(ge) == len(list(eager.parameters()))
    for n in ge:
        torch.testing.assert_close(gc[n], ge[n], rtol=1e-4, atol=1e-6)
