"""Objectives: the contract every conf/objective/*.yaml keeps, DDPM's eps/x0/v conversions, and bitwise the same
training and sampling as the formulas diffuse used before objectives were objects."""

import pytest
import torch

from conftest import composed, group_options
from diffuse import DiffuseError
from diffuse.config import OBJECTIVES, build
from diffuse.denoiser import DiffusionModel, ModelDenoiser
from diffuse.loss import diffusion_loss
from diffuse.models.unet import UNet
from diffuse.objectives import Objective
from diffuse.objectives.ddpm import DDPM, PREDICTIONS, target, to_eps_x0
from diffuse.schedules.cosine import cosine
from diffuse.schedules.linear import linear

NAMES = group_options("objective")


def objective(name: str) -> Objective:
    return build(composed("train", f"objective={name}").objective, OBJECTIVES, Objective)


@pytest.mark.parametrize("name", NAMES)
def test_every_objective_reads_outputs_consistently_with_the_process(name):
    """Whatever the network outputs, the (eps, x0) read from it satisfy x_t = alpha_t x0 + sigma_t eps: the
    samplers rely on it."""
    obj, schedule = objective(name), cosine()
    g = torch.Generator().manual_seed(0)
    x_t, out = torch.randn(3, 1, 4, 4, generator=g, dtype=torch.float64), torch.randn(3, 1, 4, 4, generator=g, dtype=torch.float64)
    for t in (0, 13.5, 500, 999):
        x_in, time = obj.network_input(schedule, x_t, t)
        assert x_in.shape == x_t.shape and time.shape == (3,) and torch.isfinite(time).all()
        eps, x0 = obj.to_eps_x0(out, x_t, schedule, t)
        alpha, sigma = schedule.alpha(t).item(), schedule.sigma(t).item()
        torch.testing.assert_close(alpha * x0 + sigma * eps, x_t)


@pytest.mark.parametrize("name", NAMES)
def test_every_objective_draws_examples_from_its_generator_alone(name):
    obj, schedule = objective(name), linear()
    x0 = torch.rand(16, 1, 4, 4, generator=torch.Generator().manual_seed(1)) * 2 - 1
    a = obj.example(schedule, x0, torch.Generator().manual_seed(2))
    torch.manual_seed(123)  # the global RNG plays no part
    b = obj.example(schedule, x0, torch.Generator().manual_seed(2))
    for field in ("x_in", "time", "target", "weight"):
        va, vb = getattr(a, field), getattr(b, field)
        assert (va is None and vb is None) or torch.equal(va, vb), field
    assert a.x_in.shape == a.target.shape == x0.shape and a.time.shape == (16,) and a.time.is_floating_point()
    assert torch.isfinite(a.x_in).all() and torch.isfinite(a.target).all()
    assert a.weight is None or (a.weight.shape == (16, 1, 1, 1) and (a.weight >= 0).all())
    assert not torch.equal(a.x_in, obj.example(schedule, x0, torch.Generator().manual_seed(3)).x_in)


@pytest.mark.parametrize("name", NAMES)
def test_every_objective_accepts_or_refuses_zero_terminal_snr_cleanly(name):
    try:
        objective(name).check(linear(zero_terminal_snr=True))
    except DiffuseError as e:
        assert "zero terminal SNR" in str(e)


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_a_perfect_prediction_recovers_eps_and_x0(prediction):
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(4, 1, 5, 5, generator=g), torch.randn(4, 1, 5, 5, generator=g)
    abar = torch.tensor([0.999, 0.7, 0.2, 0.01]).view(4, 1, 1, 1)
    alpha, sigma = abar.sqrt(), (1 - abar).sqrt()
    x_t = alpha * x0 + sigma * eps
    eps_hat, x0_hat = to_eps_x0(target(x0, eps, alpha, sigma, prediction), x_t, alpha, sigma, prediction)
    torch.testing.assert_close(eps_hat, eps, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(x0_hat, x0, atol=1e-4, rtol=1e-4)


def test_v_is_the_salimans_ho_definition():
    x0, eps = torch.ones(1), torch.full((1,), 2.0)
    alpha, sigma = torch.tensor(0.6), torch.tensor(0.8)
    assert target(x0, eps, alpha, sigma, "v").item() == pytest.approx(0.6 * 2 - 0.8 * 1)


def test_unknown_prediction_and_eps_at_zero_terminal_snr_are_refused():
    with pytest.raises(DiffuseError, match="unknown prediction 'score'; allowed: eps, x0, v"):
        DDPM("score")
    with pytest.raises(DiffuseError, match="needs objective=v"):
        DDPM("eps").check(linear(zero_terminal_snr=True))
    DDPM("v").check(linear(zero_terminal_snr=True))


# ---------------------------------------------------------------- the formulas of before, bitwise


def loss_before(model, schedule, x0, prediction, generator, labels=None, null_label=None, drop_prob=0.0):
    """diffuse.loss.diffusion_loss as it was before objectives (commit 2720216), verbatim in its arithmetic."""
    B = x0.shape[0]
    t = torch.randint(0, schedule.T, (B,), device=x0.device, generator=generator)
    eps = torch.randn(x0.shape, device=x0.device, generator=generator)
    abar = schedule.abar.to(x0.device)[t].float().view(B, 1, 1, 1)
    alpha, sigma = abar.sqrt(), (1 - abar).sqrt()
    x_t = alpha * x0 + sigma * eps
    if labels is None:
        out = model(x_t, t.float())
    else:
        if drop_prob > 0:
            drop = torch.rand(B, device=x0.device, generator=generator) < drop_prob
            labels = torch.where(drop, torch.full_like(labels, null_label), labels)
        out = model(x_t, t.float(), labels)
    return (out.float() - target(x0, eps, alpha, sigma, prediction)).pow(2).mean()


def denoise_before(model, schedule, prediction, x_t, t, labels=None):
    """ModelDenoiser.__call__ as it was before, with clipping, unguided."""
    t_batch = torch.full((x_t.shape[0],), float(t), device=x_t.device)
    with torch.no_grad():
        out = model(x_t, t_batch) if labels is None else model(x_t, t_batch, labels)
    alpha, sigma = schedule.alpha(t).item(), schedule.sigma(t).item()
    eps, x0 = to_eps_x0(out.float(), x_t, alpha, sigma, prediction)
    x0 = x0.clamp(-1, 1)
    return (x_t - alpha * x0) / sigma, x0


@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("conditional", [False, True])
def test_ddpm_objective_trains_and_denoises_bitwise_as_before(prediction, conditional):
    torch.manual_seed(0)
    net = UNet(in_channels=1, channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(), head_dim=16,
               groups=4, dropout=0.1, conditional=conditional, num_classes=10)
    with torch.no_grad():  # zero-initialised output layers would hide differences: give them weights
        for p in net.parameters():
            if p.ndim > 1 and not p.any():
                p.normal_(std=0.05)
    schedule, obj = cosine(), DDPM(prediction)
    x0 = torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    labels = torch.arange(8) % 10 if conditional else None
    grads = []
    for compute in ("before", "now"):
        net.zero_grad()
        torch.manual_seed(5)  # dropout
        g = torch.Generator().manual_seed(4)
        if compute == "before":
            loss = loss_before(net, schedule, x0, prediction, g, labels, 10, 0.3 if conditional else 0.0)
        else:
            loss = diffusion_loss(net, obj, schedule, x0, g, labels, 0.3 if conditional else 0.0, 10)
        loss.backward()
        grads.append([loss.detach()] + [p.grad.clone() for p in net.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*grads))
    net.eval()
    model = DiffusionModel(net, obj, schedule, (1, 8, 8))
    for t in (999, 500.25, 3):
        lab = labels if conditional else None
        now = ModelDenoiser(model, labels=lab, clip_x0=True)(x0, t)
        before = denoise_before(net, schedule, prediction, x0, t, lab)
        assert torch.equal(now[0], before[0]) and torch.equal(now[1], before[1])
