"""Objectives: the contract every conf/objective/*.yaml keeps, DDPM's eps/x0/v conversions, and bitwise the same
training and sampling as the formulas diffuse used before objectives were objects."""

import pytest
import torch

from conftest import assert_declared_order, composed, group_options
from diffuse import DiffuseError
from diffuse.config import OBJECTIVES, build
from diffuse.denoiser import DiffusionModel, ModelDenoiser
from diffuse.loss import diffusion_loss
from diffuse.models.unet import UNet
from diffuse.objectives import Objective
from diffuse.objectives.ddpm import DDPM, PREDICTIONS, target, to_eps_x0
from diffuse.objectives.edm import EDM
from diffuse.objectives.flow import Flow
from diffuse.schedules.cosine import cosine
from diffuse.schedules.edm import edm
from diffuse.schedules.flow import flow
from diffuse.schedules.linear import linear
from conftest import sampler_from_yaml, walk
from exact import GaussianMixture, objective_denoiser

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
def test_every_objective_trains_on_the_process_it_declares(name):
    """An example's input is a x0 + b eps and its target is target(x0, eps) at its own time (noising, target):
    what the exact-answer tests build their networks from is what training does."""
    obj, schedule = objective(name), cosine()
    x0 = torch.rand(64, 1, 3, 3, generator=torch.Generator().manual_seed(1)) * 2 - 1
    ex = obj.example(schedule, x0, torch.Generator().manual_seed(2))
    a, b = obj.noising(schedule, ex.time)
    assert a.shape == b.shape == (64, 1, 1, 1) and (b > 0).all()
    eps = (ex.x_in.double() - a * x0) / b
    assert abs(eps.std().item() - 1) < 0.15  # the noise the example drew, recovered
    torch.testing.assert_close(obj.target(schedule, x0, eps, ex.time).float(), ex.target, atol=2e-4, rtol=2e-4)


MIXTURE = GaussianMixture(weights=[0.3, 0.7], means=[-0.6, 0.5], stds=[0.15, 0.25])
SAMPLERS = group_options("sampler")
ODE = [n for n in SAMPLERS if sampler_from_yaml(n).facts.order is not None]


def natural_schedule(obj):
    """The schedule each kind of objective samples on in its presets (flow: pure noise at t = 1)."""
    return flow() if isinstance(obj, Flow) else edm() if isinstance(obj, EDM) else linear()


@pytest.mark.parametrize("sampler_name", ODE)
@pytest.mark.parametrize("name", NAMES)
def test_every_objective_read_through_its_exact_network_converges_at_the_samplers_order(name, sampler_name):
    """The exact network of a Gaussian mixture under each objective's own process, read back by the objective
    at the sampler's timesteps, is the mixture's exact denoiser: every deterministic sampler walks the same
    probability-flow ODE as with the exact (eps, x0) and converges at its declared order."""
    obj, schedule = objective(name), linear()
    sampler = sampler_from_yaml(sampler_name, spacing="karras")
    x_T = torch.randn(256, 1, 1, 1, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    denoise = objective_denoiser(obj, schedule, MIXTURE)
    for n in (5, 10, 20):  # the same walk as with the exact denoiser itself, step for step
        torch.testing.assert_close(walk(sampler, denoise, schedule, x_T, n),
                                   walk(sampler, MIXTURE.denoiser(schedule), schedule, x_T, n), atol=1e-6, rtol=1e-6)
    assert_declared_order(sampler, denoise, schedule, x_T, 400)


@pytest.mark.parametrize("sampler_name", SAMPLERS)
@pytest.mark.parametrize("name", NAMES)
def test_every_objective_samples_the_data_on_its_own_schedule_with_every_sampler(name, sampler_name):
    """On the schedule its presets use (flow: ending in pure noise; EDM: sigma up to 80), each sampler draws the
    mixture from the objective's exact network, or refuses the walk in one line before any work."""
    obj = objective(name)
    schedule = natural_schedule(obj)
    try:
        obj.check(schedule)
        sampler = sampler_from_yaml(sampler_name)
        ts = sampler.check(schedule, 50 if sampler.facts.order else 100)  # stochastic ones: their bias shrinks slower
    except DiffuseError as e:
        assert "zero terminal SNR" in str(e) and "\n" not in str(e)
        return
    g = torch.Generator().manual_seed(4)
    x_T = torch.randn(3000, 1, 1, 1, generator=g, dtype=torch.float64)  # standard errors ~0.01 (mean, std, weight)
    x = sampler(objective_denoiser(obj, schedule, MIXTURE), schedule, x_T, ts, generator=g).flatten()
    assert x.mean().item() == pytest.approx(MIXTURE.mean, abs=0.03)
    assert x.std().item() == pytest.approx(MIXTURE.std, rel=0.05)
    assert (x < 0).double().mean().item() == pytest.approx(MIXTURE.cdf(0.0), abs=0.02)


def test_flow_euler_is_euler_in_flow_time():
    """x <- x + (tau_next - tau) v on x_tau = (1 - tau) x0 + tau eps, written out by hand, is flow_euler."""
    schedule, obj = flow(), Flow()
    x_T = torch.randn(64, 1, 1, 1, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    network = objective_denoiser(obj, schedule, MIXTURE)
    sampler = sampler_from_yaml("flow_euler")
    ts = sampler.timesteps(schedule, 10)
    taus = [i / 10 for i in range(10, -1, -1)]  # trailing on the flow table: even steps in tau
    x = x_T.clone()  # at tau = 1, x_tau = eps = x_T
    for tau, tau_next, t in zip(taus, taus[1:], ts):
        assert schedule.sigma(t).item() / (schedule.alpha(t).item() + schedule.sigma(t).item()) == pytest.approx(tau)
        eps, x0 = network(x / ((1 - tau) ** 2 + tau**2) ** 0.5, t)  # the schedule's x_t is x_tau / ||(1 - tau, tau)||
        x = x + (tau_next - tau) * (eps - x0)
    torch.testing.assert_close(walk(sampler, network, schedule, x_T, 10), x, atol=1e-6, rtol=1e-6)
    for same in ("euler", "ddim"):  # one update: each renoises x0 with eps at the next level
        torch.testing.assert_close(walk(sampler_from_yaml(same, spacing="trailing"), network, schedule, x_T, 10), x,
                                   atol=1e-6, rtol=1e-6)


def test_min_snr_weights_are_hang_et_al():
    """min(SNR, gamma) on the x0 error, carried to each prediction's own error (Hang et al. 2023, sec. 3.4)."""
    schedule, x0 = linear(), torch.zeros(4096, 1, 1, 1)
    for prediction, weight in (("eps", lambda snr: snr.clamp(max=5) / snr), ("x0", lambda snr: snr.clamp(max=5)),
                               ("v", lambda snr: snr.clamp(max=5) / (snr + 1))):
        ex = DDPM(prediction, loss_weight="min_snr", snr_gamma=5.0).example(schedule, x0, torch.Generator().manual_seed(0))
        alpha, sigma = schedule.scales(ex.time.long())
        torch.testing.assert_close(ex.weight, weight(alpha**2 / sigma**2))
        assert 0 <= ex.weight.min() and ex.weight.max() <= 5.0 + 1e-6  # x0: gamma; eps, v: at most 1
    assert DDPM("eps").example(schedule, x0, torch.Generator().manual_seed(0)).weight is None


@pytest.mark.parametrize("build_it,message", [
    (lambda: Flow(loss_weight="min_snr"), "objective.loss_weight='min_snr' does not apply to objective flow (min_snr "
                                          "weighs DDPM's eps, x0 and v predictions by their SNR, Hang et al. 2023); allowed: none"),
    (lambda: EDM(loss_weight="min_snr"), "does not apply to objective edm"),
    (lambda: Flow(std=0.0), "objective.std (the logit-normal's scale) must be > 0, got 0.0"),
    (lambda: Flow(time_density="beta"), "unknown objective.time_density 'beta'; allowed: logit_normal, uniform"),
    (lambda: Flow(shift=-1.0), "objective.shift must be > 0"),
    (lambda: EDM(sigma_data=0.0), "objective.sigma_data must be > 0, got 0.0"),
    (lambda: EDM(p_std=-1.0), "objective.p_std must be > 0"),
    (lambda: DDPM("eps", loss_weight="p2"), "objective.loss_weight='p2' does not apply to objective eps; allowed: none, min_snr"),
    (lambda: DDPM("v", loss_weight="min_snr", snr_gamma=0), "objective.snr_gamma must be > 0"),
])
def test_bad_objective_settings_are_refused_in_one_line(build_it, message):
    with pytest.raises(DiffuseError) as e:
        build_it()
    assert message in str(e.value) and "\n" not in str(e.value)


def test_edm_refuses_a_schedule_that_ends_in_pure_noise():
    with pytest.raises(DiffuseError, match="infinite at zero terminal SNR.*schedule=edm"):
        EDM().check(flow())
    EDM().check(edm())


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


def test_objective_nodes_written_before_loss_weights_build_unweighted():
    """Checkpoints from before this objective had settings record only its prediction: they load as before."""
    for prediction in PREDICTIONS:
        built = build({"_target_": "diffuse.objectives.ddpm.DDPM", "prediction": prediction}, OBJECTIVES, Objective)
        assert built == DDPM(prediction) and built.loss_weight == "none"
        assert built.example(linear(), torch.zeros(2, 1, 2, 2), torch.Generator().manual_seed(0)).weight is None
