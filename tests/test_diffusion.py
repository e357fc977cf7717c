"""Rectified flow: path, loss, timestep densities and shift, samplers, guidance."""

import math

import numpy as np
import pytest
import torch

from kinetoscope.diffusion import (
    combine,
    denoised,
    flow_loss,
    guided,
    guided_batched,
    interpolate,
    logit_normal,
    logit_normal_pdf,
    sample,
    sample_euler,
    sample_heun,
    shift_timesteps,
    timestep_schedule,
    token_shift,
    token_timesteps,
    training_timesteps,
    velocity_target,
)
from kinetoscope.patches import pack, unpack


def _randn(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# ---------------------------------------------------------------------------------------------
# Path and loss
# ---------------------------------------------------------------------------------------------


def test_path_endpoints_and_velocity():
    x0, noise = _randn(2, 5, 3, seed=1), _randn(2, 5, 3, seed=2)
    assert torch.equal(interpolate(x0, noise, torch.zeros(2, 5)), x0)
    assert torch.equal(interpolate(x0, noise, torch.ones(2, 5)), noise)
    t = torch.rand(2, 5, dtype=torch.float64)
    x0, noise = x0.double(), noise.double()
    h = 1e-6
    slope = (interpolate(x0, noise, t + h) - interpolate(x0, noise, t)) / h
    torch.testing.assert_close(slope, velocity_target(x0, noise))
    x_t = interpolate(x0, noise, t)
    torch.testing.assert_close(denoised(x_t, velocity_target(x0, noise), t), x0)
    with pytest.raises(ValueError, match="leading part"):
        interpolate(x0, noise, torch.zeros(5))


def test_token_timesteps_zero_on_given_and_padding():
    sample_index = torch.tensor([[0, 0, 1, 1, -1], [2, 2, 2, -1, -1]])
    given = torch.tensor([[True, False, False, False, False], [False, False, True, False, False]])
    t = torch.tensor([0.3, 0.6, 0.9])
    out = token_timesteps(t, sample_index, given)
    expected = torch.tensor([[0, 0.3, 0.6, 0.6, 0], [0.9, 0.9, 0, 0, 0]])
    torch.testing.assert_close(out, expected)


def test_flow_loss_only_on_kept_tokens():
    pred, target = _randn(2, 6, 4, seed=1).requires_grad_(), _randn(2, 6, 4, seed=2)
    loss_mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 0, 1, 1, 1, 0]], dtype=torch.bool)
    given = torch.zeros_like(loss_mask)
    given[1, 1] = given[0, 0] = True  # given[0, 0] is in loss_mask: given must still win
    loss = flow_loss(pred, target, loss_mask, given)
    keep = loss_mask & ~given
    manual = ((pred - target) ** 2).mean(-1)[keep].mean()
    torch.testing.assert_close(loss, manual)
    loss.backward()
    assert (pred.grad[~keep] == 0).all() and (pred.grad[keep] != 0).any()
    # Changing what the model says on dropped tokens changes nothing.
    moved = pred.detach() + 100 * (~keep)[..., None]
    torch.testing.assert_close(flow_loss(moved, target, loss_mask, given), loss.detach())


def test_flow_loss_per_sample_weight_and_empty_mask():
    pred, target = _randn(1, 5, 2, seed=3), _randn(1, 5, 2, seed=4)
    index = torch.tensor([[0, 0, 0, 0, 1]])
    weight = 1.0 / torch.bincount(index[0]).float()[index]  # 1 / L_i per token
    loss = flow_loss(pred, target, torch.ones(1, 5, dtype=torch.bool), weight=weight)
    per_token = ((pred - target) ** 2).mean(-1)[0]
    torch.testing.assert_close(loss, (per_token[:4].mean() + per_token[4]) / 2)
    pred.requires_grad_()
    empty = flow_loss(pred, target, torch.zeros(1, 5, dtype=torch.bool))
    empty.backward()
    assert empty.item() == 0 and torch.equal(pred.grad, torch.zeros_like(pred))


# ---------------------------------------------------------------------------------------------
# Timestep density and shift
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("mean", "std"), [(0.0, 1.0), (-0.5, 0.7)])
def test_logit_normal_statistics(mean, std):
    t = logit_normal(200_000, mean, std, generator=torch.Generator().manual_seed(0))
    assert t.min() > 0 and t.max() < 1
    u = torch.log(t / (1 - t))
    assert u.mean().item() == pytest.approx(mean, abs=0.01)
    assert u.std().item() == pytest.approx(std, abs=0.01)
    assert t.median().item() == pytest.approx(1 / (1 + math.exp(-mean)), abs=0.005)
    # The histogram follows the density, and the density integrates to one.
    hist = torch.histc(t, bins=50, min=0, max=1) / (len(t) / 50)
    centres = (torch.arange(50) + 0.5) / 50
    pdf = logit_normal_pdf(centres, mean, std)
    assert (hist - pdf).abs().max() < 0.05 * pdf.max()
    grid = torch.linspace(1e-6, 1 - 1e-6, 200_001, dtype=torch.float64)
    assert torch.trapezoid(logit_normal_pdf(grid, mean, std), grid).item() == pytest.approx(1, 1e-4)


def test_shift_formula_properties():
    t = torch.linspace(0, 1, 101)
    assert torch.equal(shift_timesteps(t, 1.0), t)
    shifted = shift_timesteps(t, 3.0)
    assert shifted[0] == 0 and shifted[-1] == 1
    assert (shifted.diff() > 0).all() and (shifted[1:-1] > t[1:-1]).all()
    torch.testing.assert_close(shift_timesteps(shifted, 1 / 3.0), t)  # 1/s undoes s
    # The shifted density moves its median to the shifted median.
    g = torch.Generator().manual_seed(1)
    u = shift_timesteps(logit_normal(100_000, generator=g), 3.0)
    assert u.median().item() == pytest.approx(shift_timesteps(0.5, 3.0).item(), abs=0.005)


@pytest.mark.parametrize("interpolation", ["log", "linear"])
def test_token_shift_grows_with_token_count(interpolation):
    counts = torch.tensor([1, 4, 16, 64, 120, 256, 1024, 4096, 16384, 75600])
    s = token_shift(counts, interpolation=interpolation)
    assert (s.diff() > 0).all() and torch.isfinite(s).all()
    # The anchors give exp(base_shift) and exp(max_shift) (Flux's calculate_shift).
    anchors = token_shift(torch.tensor([256, 4096]), interpolation=interpolation)
    torch.testing.assert_close(anchors, torch.tensor([0.5, 1.15]).exp())
    mid = (256 + 4096) / 2 if interpolation == "linear" else math.sqrt(256 * 4096)
    assert math.log(token_shift(mid, interpolation=interpolation).item()) == pytest.approx(0.825)


def test_log_shift_stays_sane_for_tiny_and_huge_sequences():
    tiny, huge = token_shift(16).item(), token_shift(75600).item()
    assert 0.5 < tiny < 1.2 and 3 < huge < 10
    assert token_shift(75600, interpolation="linear").item() > 1e4  # what linear-in-L gives


def test_training_timesteps_shift_with_size():
    counts = [16, 256, 4096]

    def draw(count, shift=True):  # the same seed: the same logit-normal draws for every size
        generator = torch.Generator().manual_seed(5)
        return training_timesteps([count] * 1000, shift=shift, generator=generator)

    small, mid, large = (draw(n) for n in counts)
    assert torch.equal(small, draw(16))
    assert (small < mid).all() and (mid < large).all()  # more tokens, more noise
    torch.testing.assert_close(large, shift_timesteps(draw(4096, False), token_shift(4096)))
    mixed = training_timesteps(counts, generator=torch.Generator().manual_seed(5))
    assert mixed.shape == (3,) and ((mixed > 0) & (mixed < 1)).all()
    with pytest.raises(ValueError, match="positive"):
        token_shift(0)


def test_schedule_shape_and_order():
    schedule = timestep_schedule(10, 3.0)
    assert schedule.shape == (11,) and schedule[0] == 1 and schedule[-1] == 0
    assert (schedule.diff() < 0).all()
    per_token = timestep_schedule(10, torch.tensor([[1.0, 3.0], [2.0, 3.0]]))
    assert per_token.shape == (11, 2, 2)
    torch.testing.assert_close(per_token[:, 0, 1], schedule)
    with pytest.raises(ValueError, match="positive integer"):
        timestep_schedule(0)


# ---------------------------------------------------------------------------------------------
# Samplers
# ---------------------------------------------------------------------------------------------


def _solve(method, velocity, x1, steps):
    return sample(velocity, x1, timestep_schedule(steps).double(), method=method)


def test_euler_converges_on_a_linear_field():
    a = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)  # dx/dt = a x

    def velocity(x, t):
        return a * x

    x1 = _randn(4, 3, seed=1, dtype=torch.float64)
    exact = x1 * torch.exp(-a)  # x(0) = exp(a (0 - 1)) x(1)
    errors = [(_solve("euler", velocity, x1, n) - exact).abs().max().item() for n in (50, 100)]
    assert errors[0] / errors[1] == pytest.approx(2, rel=0.1)  # first order
    assert (_solve("euler", velocity, x1, 4000) - exact).abs().max() < 2e-3


def test_heun_beats_euler_on_a_curved_field():
    k = torch.tensor([1.5, -2.0], dtype=torch.float64)  # dx/dt = k cos(3t) x

    def velocity(x, t):
        return k * torch.cos(3 * t)[..., None] * x

    x1 = _randn(3, 2, seed=2, dtype=torch.float64)
    exact = x1 * torch.exp(k * (0 - math.sin(3.0)) / 3)
    euler = [(_solve("euler", velocity, x1, n) - exact).abs().max().item() for n in (20, 40)]
    heun = [(_solve("heun", velocity, x1, n) - exact).abs().max().item() for n in (20, 40)]
    assert heun[0] < euler[0] / 10 and heun[1] < euler[1] / 10
    assert heun[0] / heun[1] == pytest.approx(4, rel=0.25)  # second order


@pytest.mark.parametrize("method", ["euler", "heun"])
def test_ideal_velocity_lands_on_the_data_in_any_step_count(method):
    x0, noise = _randn(2, 7, 3, seed=3), _randn(2, 7, 3, seed=4)

    def velocity(x, t):  # the exact field of a one-point data set
        return (x - x0) / t[..., None]

    for steps in (1, 3, 8):
        out = sample(velocity, noise, timestep_schedule(steps, 2.0), method=method)
        torch.testing.assert_close(out, x0, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", ["euler", "heun"])
def test_given_tokens_never_move(method):
    x = _randn(2, 6, 4, seed=5)
    given = torch.zeros(2, 6, dtype=torch.bool)
    given[0, :2] = given[1, 5] = True
    seen = []

    def velocity(x, t):
        seen.append(t.clone())
        return torch.sin(x) + 1 + t[..., None]

    out = sample(velocity, x, timestep_schedule(5, 3.0), method=method, given=given)
    assert torch.equal(out[given], x[given]) and (out[~given] != x[~given]).all()
    assert all((t[given] == 0).all() and (t[~given] > 0).all() for t in seen)


@pytest.mark.parametrize("method", ["euler", "heun"])
def test_samplers_are_deterministic_and_report_each_step(method):
    x = _randn(1, 9, 3, seed=6)
    calls = []

    def velocity(x, t):
        calls.append(1)
        return torch.tanh(x) * (1 + t[..., None])

    steps = []
    a = sample(velocity, x, timestep_schedule(6, 3.0), method=method, callback=steps.append)
    b = sample(velocity, x.clone(), timestep_schedule(6, 3.0), method=method)
    assert torch.equal(a, b)
    assert [s.index for s in steps] == list(range(6)) and torch.equal(steps[-1].x, a)
    assert (steps[0].t == 1).all() and (steps[-1].t_next == 0).all()
    assert len(calls) == 2 * (6 if method == "euler" else 2 * 6 - 1)  # two runs; Heun 2n - 1


@pytest.mark.parametrize("method", ["euler", "heun"])
def test_sampler_resumes_from_any_step(method):
    x = _randn(2, 5, 3, seed=7)
    schedule = timestep_schedule(8, 2.5)

    def velocity(x, t):
        return x**2 * t[..., None] - 1

    full = sample(velocity, x, schedule, method=method)
    half = sample(velocity, x, schedule, method=method, end=3)
    assert torch.equal(sample(velocity, half, schedule, method=method, start=3), full)
    with pytest.raises(ValueError, match="start"):
        sample(velocity, x, schedule, method=method, start=9)


def test_per_token_schedules_equal_separate_runs():
    x = _randn(1, 6, 2, seed=8)
    shift = torch.tensor([[1.0, 1.0, 1.0, 4.0, 4.0, 4.0]])

    def velocity(x, t):  # acts token by token, so samples do not interact
        return torch.cos(x) * t[..., None] + x

    together = sample_heun(velocity, x, timestep_schedule(7, shift))
    first = sample_heun(velocity, x[:, :3], timestep_schedule(7, 1.0))
    second = sample_heun(velocity, x[:, 3:], timestep_schedule(7, 4.0))
    torch.testing.assert_close(together, torch.cat([first, second], dim=1))


def test_sampler_rejects_mismatched_inputs():
    x = torch.zeros(2, 5, 3)

    def velocity(x, t):
        return x

    with pytest.raises(ValueError, match="per-token schedule"):
        sample_euler(velocity, x, timestep_schedule(4, torch.ones(2, 4)))
    with pytest.raises(ValueError, match="given mask"):
        sample_euler(velocity, x, timestep_schedule(4), given=torch.zeros(5, dtype=torch.bool))
    with pytest.raises(ValueError, match="unknown sampler"):
        sample(velocity, x, timestep_schedule(4), method="rk4")


@pytest.mark.slow  # importing diffusers alone takes several seconds
def test_euler_matches_diffusers_flow_match_euler():
    import diffusers  # a test dependency (the [test] extra)

    # Same convention: sigma 1 is noise, 0 is data, x = (1 - sigma) x0 + sigma noise.
    steps, x = 12, _randn(2, 10, 4, seed=9)

    def velocity(x, t):
        return torch.sin(2 * x) - x * t[..., None]

    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps))  # as Flux/SD3 pipelines
    schedule = timestep_schedule(steps, 3.0)
    torch.testing.assert_close(scheduler.sigmas, schedule)
    reference, y = [], x.clone()
    for i, timestep in enumerate(scheduler.timesteps):
        sigma = scheduler.sigmas[i].expand(x.shape[:-1])
        y = scheduler.step(velocity(y, sigma), timestep, y).prev_sample
        reference.append(y)
    ours = []
    sample_euler(velocity, x, schedule, callback=lambda step: ours.append(step.x))
    assert len(ours) == len(reference)
    for a, b in zip(ours, reference, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
    # Diffusers' resolution-dependent shift with mu = log s is our shift with s.
    dynamic = diffusers.FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True)
    s = token_shift(1000)
    dynamic.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=math.log(s.item()))
    torch.testing.assert_close(dynamic.sigmas, timestep_schedule(steps, s))


# ---------------------------------------------------------------------------------------------
# Guidance
# ---------------------------------------------------------------------------------------------


def _branches():
    calls = {"cond": 0, "uncond": 0, "pair": 0}

    def cond(x, t):
        calls["cond"] += 1
        return x + 1 + t[..., None]

    def uncond(x, t):
        calls["uncond"] += 1
        return 2 * x - t[..., None]

    def pair(x2, t2):
        calls["pair"] += 1
        assert x2.shape[0] % 2 == 0
        n = x2.shape[0] // 2
        return torch.cat([cond(x2[:n], t2[:n]), uncond(x2[n:], t2[n:])])

    return calls, cond, uncond, pair


def test_guidance_forms_agree_with_the_formula():
    x, t = _randn(3, 4, 2, seed=10), torch.rand(3, 4)
    calls, cond, uncond, pair = _branches()
    expected = uncond(x, t) + 4.0 * (cond(x, t) - uncond(x, t))
    torch.testing.assert_close(guided(cond, uncond, 4.0)(x, t), expected)
    before = dict(calls)
    torch.testing.assert_close(guided_batched(pair, 4.0)(x, t), expected)
    assert calls["pair"] == before["pair"] + 1  # one network call for both branches
    torch.testing.assert_close(combine(cond(x, t), uncond(x, t), 0.0), uncond(x, t))


def test_guidance_scale_per_token_interval_and_skips():
    x, t = _randn(2, 5, 3, seed=11), torch.linspace(0.05, 0.95, 10).view(2, 5)
    calls, cond, uncond, pair = _branches()
    scale = torch.tensor([[1.0] * 5, [7.0] * 5])  # one scale per sequence, spread per token
    v = guided_batched(pair, scale)(x, t)
    torch.testing.assert_close(v[0], cond(x, t)[0])
    torch.testing.assert_close(v[1], (uncond(x, t) + 7 * (cond(x, t) - uncond(x, t)))[1])
    inside = (t >= 0.3) & (t <= 0.7)
    v = guided(cond, uncond, 5.0, interval=(0.3, 0.7))(x, t)
    full = combine(cond(x, t), uncond(x, t), 5.0)
    torch.testing.assert_close(v[inside], full[inside])
    torch.testing.assert_close(v[~inside], cond(x, t)[~inside])
    before = calls["uncond"]
    guided(cond, uncond, 1.0)(x, t)
    guided(cond, uncond, 5.0, interval=(0.99, 1.0))(x, t)
    assert calls["uncond"] == before  # nothing the unconditional branch could change
    with pytest.raises(ValueError, match="interval"):
        guided(cond, uncond, 2.0, interval=(0.8, 0.2))


# ---------------------------------------------------------------------------------------------
# With packed batches
# ---------------------------------------------------------------------------------------------


def test_packed_conditioned_generation_and_training_step():
    clean = [_randn(4, 3, 4, 6, seed=20), _randn(4, 1, 6, 4, seed=21), _randn(4, 5, 2, 4, seed=22)]
    given_frames = [[0], None, [0, -1]]  # image-to-video, plain image, connect two ends
    packed = pack(clean, token_budget=64, given_frames=given_frames)
    x0 = packed.tokens
    noise = torch.randn_like(x0)

    # Training: given tokens enter clean at t = 0 and carry no loss.
    t = training_timesteps(packed.lengths, generator=torch.Generator().manual_seed(0))
    t_tok = token_timesteps(t, packed.sample_index, packed.given_mask)
    x_t = interpolate(x0, noise, t_tok)
    assert torch.equal(x_t[packed.given_mask], x0[packed.given_mask])
    target = velocity_target(x0, noise)
    assert flow_loss(target, target, packed.loss_mask, packed.given_mask).item() == 0
    assert flow_loss(target + 1, target, packed.loss_mask).item() == pytest.approx(1)

    # Generation: each sample follows the schedule of its own size; given frames stay clean.
    shift = packed.per_token(token_shift(torch.tensor(packed.lengths)), fill=1.0)
    schedule = timestep_schedule(6, shift)
    start = torch.where(packed.given_mask[..., None], x0, noise)

    def velocity(x, t):  # the exact field towards the clean latents
        return torch.where(t[..., None] > 0, (x - x0) / t.clamp(min=1e-12)[..., None], 0.0)

    out = sample_heun(velocity, start, schedule, given=packed.given_mask)
    for latent, result, frames in zip(clean, unpack(packed, out), given_frames, strict=True):
        torch.testing.assert_close(result, latent, atol=1e-5, rtol=1e-5)
        for f in frames or []:
            assert torch.equal(result[:, f], latent[:, f])
