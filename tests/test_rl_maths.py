"""thinkgen.rl.advantages and thinkgen.rl.losses."""
import math

import pytest
import torch

from thinkgen.rl.advantages import group_advantages, grpo_advantages, nonzero_mask
from thinkgen.rl.losses import flow_grpo_step_loss, grpo_token_loss, k3_kl

# ----------------------------------------------------------------------------- advantages


def test_group_advantages_zero_mean_per_group():
    r = torch.tensor([1.0, 2.0, 3.0, 4.0, 0.0, 0.0, 1.0, 5.0])
    a = group_advantages(r, 4)
    assert a.dtype == torch.float32 and a.shape == (8,)
    assert torch.allclose(a.view(2, 4).sum(1), torch.zeros(2), atol=1e-6)
    g = r[:4]
    assert torch.allclose(a[:4], (g - g.mean()) / (g.std(correction=0) + 1e-4))


def test_tied_group_is_exactly_zero():
    r = torch.tensor([0.1, 0.1, 0.1, 0.3, 0.7, 0.2])
    a = group_advantages(r, 3)
    assert torch.equal(a[:3], torch.zeros(3))
    assert nonzero_mask(a).tolist() == [False, False, False, True, True, True]
    for std in ("global", "none"):
        assert torch.equal(group_advantages(r, 3, std=std)[:3], torch.zeros(3))


def test_nan_rewards_get_zero_and_are_excluded():
    r = torch.tensor([1.0, float("nan"), 3.0, 5.0, float("nan"), float("nan"), 2.0, float("nan")])
    a = group_advantages(r, 4)
    assert torch.isfinite(a).all()
    assert a[1] == 0 and a[4] == 0 and a[5] == 0 and a[7] == 0
    valid = torch.tensor([1.0, 3.0, 5.0])
    assert torch.allclose(a[[0, 2, 3]], (valid - 3.0) / (valid.std(correction=0) + 1e-4))
    assert a[6] == 0  # a single valid reward in its group carries no signal
    assert torch.equal(group_advantages(torch.full((4,), float("nan")), 2), torch.zeros(4))


def test_batch_not_multiple_of_group_raises():
    with pytest.raises(ValueError, match="group_size"):
        group_advantages(torch.zeros(5), 2)


def test_global_std_and_none():
    r = torch.tensor([0.0, 1.0, 2.0, 10.0])
    a = group_advantages(r, 2, std="global")
    centred = torch.tensor([-0.5, 0.5, -4.0, 4.0])
    assert torch.allclose(a, centred / (r.std(correction=0) + 1e-4))
    assert torch.allclose(group_advantages(r, 2, std="none"), centred)


def test_grpo_advantages_is_easyr1_unbiased():
    r = torch.tensor([1.0, 2.0, 4.0, 0.0, 3.0, 3.5])
    a = grpo_advantages(r, 3)
    for i, g in enumerate((r[:3], r[3:])):
        assert torch.allclose(a[3 * i:3 * i + 3], (g - g.mean()) / (g.std() + 1e-6))


# ----------------------------------------------------------------------------- GRPO token loss


def _seq_batch(b=4, t=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    logp = -torch.rand(b, t, generator=g) - 0.1
    mask = torch.ones(b, t)
    mask[0, 3:] = 0
    return logp, mask


def test_on_policy_loss_is_minus_mean_advantage():
    logp, mask = _seq_batch()
    adv = torch.tensor([1.0, -2.0, 0.5, 0.0])
    loss, stats = grpo_token_loss(logp, logp.clone(), adv, torch.ones_like(mask))
    assert loss.item() == pytest.approx(-adv.mean().item(), abs=1e-6)
    assert stats["ratio_mean"].item() == pytest.approx(1.0)
    assert stats["clip_frac"].item() == 0.0
    # token aggregation weighs sequences by their valid tokens
    loss_tok, _ = grpo_token_loss(logp, logp.clone(), adv, mask)
    expect = -(adv[:, None] * mask).sum() / mask.sum()
    assert loss_tok.item() == pytest.approx(expect.item(), abs=1e-6)
    loss_seq, _ = grpo_token_loss(logp, logp.clone(), adv, mask, agg="seq")
    assert loss_seq.item() == pytest.approx(-adv.mean().item(), abs=1e-6)


@pytest.mark.parametrize("sign,log_ratio,flat", [
    (1.0, math.log(1.5), True),   # A > 0, ratio above 1 + eps -> clipped, no gradient
    (1.0, math.log(0.5), False),  # A > 0, ratio below 1 - eps -> still pushed up
    (-1.0, math.log(0.5), True),  # A < 0, ratio below 1 - eps -> clipped, no gradient
    (-1.0, math.log(1.5), False),  # A < 0, ratio above 1 + eps -> still pushed down
])
def test_clipped_loss_gradient(sign, log_ratio, flat):
    logp_old = torch.full((1, 3), -1.0)
    logp = (logp_old + log_ratio).clone().requires_grad_(True)
    loss, stats = grpo_token_loss(logp, logp_old, torch.tensor([sign]), torch.ones(1, 3))
    loss.backward()
    if flat:
        assert torch.equal(logp.grad, torch.zeros_like(logp.grad))
        assert stats["clip_frac"].item() == 1.0
    else:
        assert (logp.grad * sign < 0).all()  # descent increases logp when A > 0


def test_asymmetric_and_dual_clip():
    logp_old = torch.zeros(1, 1)
    # clip-higher: ratio 1.25 is inside (1 - 0.2, 1 + 0.3)
    loss, st = grpo_token_loss(torch.full((1, 1), math.log(1.25)), logp_old, torch.tensor([1.0]),
                               torch.ones(1, 1), clip_low=0.2, clip_high=0.3)
    assert loss.item() == pytest.approx(-1.25) and st["clip_frac"].item() == 0
    # dual clip bounds the loss of a huge ratio when A < 0
    big = torch.full((1, 1), math.log(10.0), requires_grad=True)
    loss, st = grpo_token_loss(big, logp_old, torch.tensor([-1.0]), torch.ones(1, 1), dual_clip=3.0)
    assert loss.item() == pytest.approx(3.0)
    loss.backward()
    assert big.grad.abs().sum() == 0 and st["clip_frac"].item() == 1.0
    with pytest.raises(ValueError):
        grpo_token_loss(big, logp_old, torch.tensor([-1.0]), torch.ones(1, 1), dual_clip=0.5)


def test_kl_term_added():
    logp, mask = _seq_batch()
    ref = logp + 0.3
    adv = torch.zeros(4)
    loss, st = grpo_token_loss(logp, logp, adv, mask, ref_logp=ref, kl_coef=0.1)
    k = k3_kl(logp, ref)
    expect = (k * mask).sum() / mask.sum()
    assert st["kl"].item() == pytest.approx(expect.item(), rel=1e-5)
    assert loss.item() == pytest.approx(0.1 * expect.item(), rel=1e-5)
    with pytest.raises(ValueError, match="ref_logp"):
        grpo_token_loss(logp, logp, adv, mask, kl_coef=0.1)


def test_k3_nonnegative_and_zero_at_equality():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(1000, generator=g) * 3, torch.randn(1000, generator=g) * 3
    k = k3_kl(a, b)
    assert (k >= 0).all() and (k <= 10).all()
    assert torch.equal(k3_kl(a, a), torch.zeros(1000))
    assert k3_kl(torch.tensor([0.0]), torch.tensor([100.0])).item() == 10.0  # clamped


# ----------------------------------------------------------------------------- Flow-GRPO step loss


def test_flow_grpo_on_policy_and_adv_clip():
    logp = torch.tensor([-1.0, -2.0, -3.0])
    adv = torch.tensor([1.0, -7.0, 2.0])
    loss, st = flow_grpo_step_loss(logp, logp.clone(), adv, clip_range=1e-4)
    assert loss.item() == pytest.approx(-(1.0 - 5.0 + 2.0) / 3)  # |A| clamped to 5
    assert st["approx_kl"].item() == 0 and st["clip_frac"].item() == 0 and st["kl"].item() == 0


def test_flow_grpo_clipping_is_flat_outside_range():
    logp_old = torch.zeros(2)
    logp = torch.tensor([1e-3, -1e-3], requires_grad=True)  # ratios ~1.001 and ~0.999, eps = 1e-4
    loss, st = flow_grpo_step_loss(logp, logp_old, torch.tensor([1.0, -1.0]), clip_range=1e-4)
    loss.backward()
    assert torch.equal(logp.grad, torch.zeros(2))
    assert st["clip_frac"].item() == 1.0
    assert st["approx_kl"].item() == pytest.approx(0.5 * 1e-6, rel=1e-4)


def test_flow_grpo_kl_matches_reference_form():
    g = torch.Generator().manual_seed(0)
    mean, ref_mean = torch.randn(2, 4, 3, 3, generator=g), torch.randn(2, 4, 3, 3, generator=g)
    std_dev_t = torch.tensor([0.8, 1.2]).view(2, 1, 1, 1)  # Flow-GRPO's s, without sqrt(|dt|)
    dt = 0.05
    logp = torch.zeros(2)
    expect = (((mean - ref_mean) ** 2).mean(dim=(1, 2, 3), keepdim=True) / (2 * std_dev_t ** 2)).mean()
    _, st = flow_grpo_step_loss(logp, logp, torch.zeros(2), 1e-4, mean=mean, ref_mean=ref_mean, std=std_dev_t)
    assert st["kl"].item() == pytest.approx(expect.item(), rel=1e-5)
    # the same value from SDEStep.std (= s * sqrt(dt)) and dt
    loss, st2 = flow_grpo_step_loss(logp, logp, torch.zeros(2), 1e-4, mean=mean, ref_mean=ref_mean,
                                    std=std_dev_t * math.sqrt(dt), dt=dt, kl_coef=0.04)
    assert st2["kl"].item() == pytest.approx(expect.item(), rel=1e-5)
    assert loss.item() == pytest.approx(0.04 * expect.item(), rel=1e-5)
    with pytest.raises(ValueError):
        flow_grpo_step_loss(logp, logp, torch.zeros(2), 1e-4, kl_coef=0.04)
