"""thinkgen.flow: time grids, Euler/SDE steps (checked against Flow-GRPO's sigma form), CFG, FM loss."""
import math

import pytest
import torch

from thinkgen import flow


def _g(seed=0):
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- grids and shifts


def test_resolution_shift_and_grid_at_1024():
    n_lat = 128 * 128  # 1024x1024 image, VAE /8, before patchify
    assert flow.resolution_shift(n_lat) == pytest.approx(3.2)
    assert flow.resolution_shift(40 * 40) == pytest.approx(1.0)
    t = flow.inference_timesteps(10, n_lat)
    assert t.dtype == torch.float32 and t.shape == (11,)
    assert t[0] == 0 and t[-1] == 1
    assert torch.all(t[1:] > t[:-1])
    assert t[5].item() == pytest.approx(0.5 / (3.2 - 2.2 * 0.5), rel=1e-6)
    # shifted towards noise: every interior time is below the uniform one
    u = torch.arange(11) / 10
    assert torch.all(t[1:-1] < u[1:-1])


def test_grid_without_shift_is_uniform():
    t = flow.inference_timesteps(4, 40 * 40)
    assert torch.allclose(t, torch.tensor([0, 0.25, 0.5, 0.75, 1.0]))


def test_train_shift_mu_endpoints_and_sampling():
    assert flow.train_shift_mu(256) == pytest.approx(0.5)
    assert flow.train_shift_mu(4096) == pytest.approx(1.15)
    assert math.exp(flow.train_shift_mu(4096)) == pytest.approx(3.158, abs=1e-3)
    t = flow.sample_train_t(20000, 4096, generator=_g(1))
    assert t.shape == (20000,) and t.dtype == torch.float32
    assert (t > 0).all() and (t < 1).all()
    # the sigma-space shift equals shift_t(u, exp(mu)) on the same logit-normal draw
    u = torch.sigmoid(torch.randn(20000, generator=_g(1)))
    assert torch.allclose(t, flow.shift_t(u, math.exp(1.15)), atol=1e-6)
    # median of sigmoid(N(0,1)) is 1/2 -> shifted median 1 / (1 + s)
    assert t.median().item() == pytest.approx(1 / (1 + math.exp(1.15)), abs=0.01)


# ----------------------------------------------------------------------------- training objective


def test_interpolate_and_target():
    x0, x1 = torch.randn(3, 4, 2, 2, generator=_g()), torch.randn(3, 4, 2, 2, generator=_g(1))
    t = torch.tensor([0.0, 0.5, 1.0])
    xt = flow.interpolate(x0, x1, t)
    assert torch.equal(xt[0], x0[0]) and torch.equal(xt[2], x1[2])
    assert torch.allclose(xt[1], 0.5 * (x0[1] + x1[1]))
    v = flow.velocity_target(x0, x1)
    # moving along v from x_t for (1 - t) reaches the data
    assert torch.allclose(xt[1] + 0.5 * v[1], x1[1], atol=1e-6)


def test_flow_matching_loss_normalisation():
    a, b = torch.randn(4, 3, 5, generator=_g()), torch.randn(4, 3, 5, generator=_g(1))
    assert flow.flow_matching_loss(a, b).item() == pytest.approx(torch.nn.functional.mse_loss(a, b).item(), rel=1e-6)
    w = torch.tensor([1.0, 0.0, 1.0, 0.0])
    per_sample_sse = ((a - b) ** 2).sum(dim=(1, 2))
    expect = (per_sample_sse * w).sum() / a.numel()
    assert flow.flow_matching_loss(a, b, w).item() == pytest.approx(expect.item(), rel=1e-6)
    with pytest.raises(ValueError):
        flow.flow_matching_loss(a, b[:2])


# ----------------------------------------------------------------------------- Euler


def test_euler_integrates_constant_velocity():
    x0 = torch.randn(2, 4, 8, 8, generator=_g())
    v = torch.randn(2, 4, 8, 8, generator=_g(1))
    ts = flow.inference_timesteps(7, 64 * 64)
    x = x0
    for i in range(7):
        x = flow.euler_step(x, v, ts[i], ts[i + 1])
    assert torch.allclose(x, x0 + v, atol=1e-5)


def test_euler_fp32_then_cast():
    x = torch.randn(2, 3, dtype=torch.bfloat16, generator=_g())
    v = torch.randn(2, 3, dtype=torch.bfloat16, generator=_g(1))
    out = flow.euler_step(x, v, 0.1, 0.1003)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, (x.float() + (0.1003 - 0.1) * v.float()).to(torch.bfloat16))
    # per-sample times
    tt, tn = torch.tensor([0.1, 0.2]), torch.tensor([0.3, 0.5])
    out = flow.euler_step(x.float(), v.float(), tt, tn)
    assert torch.allclose(out, x.float() + (tn - tt)[:, None] * v.float())


# ----------------------------------------------------------------------------- SDE


def _sigma_form(x, v_tg, t, t_next, a, t_min):
    """Flow-GRPO sde_step_with_logprob in ITS convention, written independently of flow.py.

    sigma = 1 - t, model output v_fg = -v_tg, dt = sigma_next - sigma < 0, at sigma = 1 the (1 - sigma)
    denominator uses the second grid sigma.
    """
    sigma, sigma_next, sigma_max = 1 - t, 1 - t_next, 1 - t_min
    v = -v_tg
    dt = sigma_next - sigma
    denom = 1 - (sigma_max if sigma == 1 else sigma)
    std_dev_t = a * math.sqrt(sigma / denom)
    mean = x * (1 + std_dev_t ** 2 / (2 * sigma) * dt) + v * (1 + std_dev_t ** 2 * (1 - sigma) / (2 * sigma)) * dt
    return mean, std_dev_t * math.sqrt(-dt), std_dev_t


@pytest.mark.parametrize("t,t_next", [(0.0, 0.05), (0.05, 0.2), (0.4, 0.55), (0.9, 1.0)])
def test_sde_matches_flow_grpo_sigma_form(t, t_next):
    x = torch.randn(2, 4, 3, 3, generator=_g(), dtype=torch.float64)
    v = torch.randn(2, 4, 3, 3, generator=_g(1), dtype=torch.float64)
    a, t_min = 0.7, 0.05
    step = flow.sde_step(x.float(), v.float(), t, t_next, a, generator=_g(2), t_min=t_min)
    mean_ref, std_ref, _ = _sigma_form(x, v, t, t_next, a, t_min)
    assert torch.allclose(step.mean.double(), mean_ref, atol=1e-5)
    assert torch.allclose(step.std.double(), torch.full_like(step.std.double(), std_ref), atol=1e-6)
    if t > 0:  # the t-form quoted in reference-code.md section 5.2 holds for t > 0
        dt = t_next - t
        t_form = x * (1 - a ** 2 * dt / (2 * t)) + v * (1 + a ** 2 / 2) * dt
        assert torch.allclose(step.mean.double(), t_form, atol=1e-5)
        assert std_ref == pytest.approx(a * math.sqrt((1 - t) / t) * math.sqrt(dt))
    else:  # ... but at t = 0 the v coefficient is 1, not (1 + a^2 / 2): the a^2 t / (2 t_min) term vanishes
        dt = t_next
        naive = x * (1 - a ** 2 * dt / (2 * t_min)) + v * (1 + a ** 2 / 2) * dt
        assert not torch.allclose(step.mean.double(), naive, atol=1e-5)
        assert torch.allclose(step.mean.double(), x * (1 - a ** 2 * dt / (2 * t_min)) + v * dt, atol=1e-5)


def test_sde_logprob_is_normal_logprob_mean():
    x = torch.randn(3, 4, 5, 5, generator=_g())
    v = torch.randn(3, 4, 5, 5, generator=_g(1))
    step = flow.sde_step(x, v, 0.3, 0.4, 0.7, generator=_g(2))
    ref = torch.distributions.Normal(step.mean, step.std).log_prob(step.x_next).mean(dim=(1, 2, 3))
    assert step.logp.shape == (3,)
    assert torch.allclose(step.logp, ref, atol=1e-5)
    # recomputing with the stored x_next gives the same log-prob (on-policy ratio 1) and no sampling
    again = flow.sde_step(x, v, 0.3, 0.4, 0.7, x_next=step.x_next)
    assert torch.equal(again.x_next, step.x_next)
    assert torch.equal(again.logp, step.logp)


def test_sde_per_sample_times_and_bf16():
    x = torch.randn(2, 4, 3, 3, generator=_g()).bfloat16()
    v = torch.randn(2, 4, 3, 3, generator=_g(1)).bfloat16()
    t, tn = torch.tensor([0.0, 0.3]), torch.tensor([0.1, 0.4])
    step = flow.sde_step(x, v, t, tn, 0.7, generator=_g(2), t_min=0.1)
    assert step.x_next.dtype == torch.bfloat16 and step.mean.dtype == torch.float32
    assert step.std.shape == (2, 1, 1, 1) and torch.isfinite(step.logp).all()
    ref = torch.distributions.Normal(step.mean, step.std).log_prob(step.x_next.float()).mean(dim=(1, 2, 3))
    assert torch.allclose(step.logp, ref, atol=1e-4)
    with pytest.raises(ValueError, match="t_min"):
        flow.sde_step(x, v, t, tn, 0.7)


def test_sde_on_flat_batch_keeps_per_sample_logp():
    x, v = torch.randn(5, generator=_g()), torch.randn(5, generator=_g(1))
    step = flow.sde_step(x, v, 0.2, 0.3, 0.5, generator=_g(2))
    assert step.logp.shape == (5,)
    assert torch.allclose(step.logp, torch.distributions.Normal(step.mean, step.std).log_prob(step.x_next), atol=1e-5)


def test_sde_noise_zero_is_euler_exactly():
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(2, 4, 3, 3, generator=_g()).to(dtype)
        v = torch.randn(2, 4, 3, 3, generator=_g(1)).to(dtype)
        for kind in ("sde", "cps"):
            step = flow.sde_step(x, v, 0.0, 0.1, 0.0, kind=kind)
            assert torch.equal(step.x_next, flow.euler_step(x, v, 0.0, 0.1))
            assert torch.equal(step.logp, torch.zeros(2)) and not step.std.any()


def _cps_sigma_form(x, v_tg, t, t_next, a):
    sigma, sigma_next, v = 1 - t, 1 - t_next, -v_tg
    std = sigma_next * math.sin(a * math.pi / 2)
    x0_hat = x - sigma * v  # Flow-GRPO's x0 is the data
    eps_hat = x + (1 - sigma) * v
    mean = (1 - sigma_next) * x0_hat + math.sqrt(sigma_next ** 2 - std ** 2) * eps_hat
    return mean, std


def test_cps_matches_sigma_form():
    x = torch.randn(2, 4, 3, 3, generator=_g(), dtype=torch.float64)
    v = torch.randn(2, 4, 3, 3, generator=_g(1), dtype=torch.float64)
    step = flow.sde_step(x.float(), v.float(), 0.2, 0.35, 0.8, generator=_g(2), kind="cps")
    mean_ref, std_ref = _cps_sigma_form(x, v, 0.2, 0.35, 0.8)
    assert torch.allclose(step.mean.double(), mean_ref, atol=1e-5)
    assert step.std.flatten()[0].item() == pytest.approx(std_ref, rel=1e-5)
    assert torch.allclose(step.logp, -((step.x_next - step.mean) ** 2).mean(dim=(1, 2, 3)))


def _gaussian_velocity(mu, s):
    def velocity(x, t):  # E[x1 - x0 | x_t = x] for x1 ~ N(mu, s^2), x0 ~ N(0, 1)
        var_t = t ** 2 * s ** 2 + (1 - t) ** 2
        return mu + (t * s ** 2 - (1 - t)) / var_t * (x - t * mu)
    return velocity


def test_sde_preserves_gaussian_marginal():
    """Data N(mu, s^2) with the exact velocity: a full SDE chain (a = 0.7) ends at the data marginal."""
    mu, s, n, steps = 1.5, 0.5, 20000, 40
    ts = flow.inference_timesteps(steps, 64 * 64).double()
    velocity = _gaussian_velocity(mu, s)
    g = _g(3)
    x = torch.randn(n, 1, generator=g)
    for i in range(steps):
        t, tn = ts[i].item(), ts[i + 1].item()
        x = flow.sde_step(x, velocity(x, t), t, tn, 0.7, generator=g, t_min=ts[1].item()).x_next
    assert x.mean().item() == pytest.approx(mu, abs=0.05)
    assert x.std().item() == pytest.approx(s, abs=0.05)


def test_cps_preserves_marginal_when_estimates_are_exact():
    """CPS re-noises the x1/x0 estimates, so it keeps the marginal N(t mu, (1 - t)^2) exactly when they
    are exact (point-mass data). With spread-out data it shrinks the variance (posterior means), and with a
    fixed level the injected noise does not vanish as dt -> 0: use it on a few window steps only."""
    mu, n, steps = 1.5, 20000, 10
    ts = flow.inference_timesteps(steps, 64 * 64).double()
    velocity = _gaussian_velocity(mu, 0.0)
    g = _g(4)
    x = torch.randn(n, 1, generator=g)
    for i in range(6):
        t, tn = ts[i].item(), ts[i + 1].item()
        x = flow.sde_step(x, velocity(x, t), t, tn, 0.8, generator=g, kind="cps").x_next
    t = ts[6].item()
    assert x.mean().item() == pytest.approx(t * mu, abs=0.02)
    assert x.std().item() == pytest.approx(1 - t, abs=0.02)


# ----------------------------------------------------------------------------- CFG


def test_cfg_combinations():
    c, r, u = torch.tensor([3.0]), torch.tensor([2.0]), torch.tensor([1.0])
    assert flow.cfg_velocity(c, u, 1.0).item() == 3.0
    assert flow.cfg_velocity(c, u, 4.0).item() == 1.0 + 4.0 * 2.0
    assert flow.edit_cfg_velocity(c, r, u, 5.0, 2.0).item() == 1.0 + 2.0 * 1.0 + 5.0 * 1.0
    # both scales 1 -> the conditional velocity
    assert flow.edit_cfg_velocity(c, r, u, 1.0, 1.0).item() == 3.0


def test_cfg_active_uses_step_fraction():
    active = [flow.cfg_active(i, 10, (0.0, 0.5)) for i in range(10)]
    assert active == [True] * 6 + [False] * 4
    assert flow.cfg_active(9, 10, (0.0, 1.0))
