"""Samplers against exact answers: no trained model can hide a bookkeeping bug here (DESIGN.md sec. 7)."""

import pytest
import torch

from diffuse import DiffuseError
from diffuse.denoiser import eps_denoiser
from diffuse.samplers.ddim import ddim
from diffuse.samplers.ddpm import ddpm
from diffuse.schedules.cosine import cosine
from diffuse.schedules.linear import linear

SAMPLERS = {
    "ddim": lambda **kw: lambda *a, **k: ddim(*a, eta=0.0, **k, **kw),
    "ddim_eta1": lambda **kw: lambda *a, **k: ddim(*a, eta=1.0, **k, **kw),
    "ddpm": lambda **kw: lambda *a, **k: ddpm(*a, variance="posterior", **k, **kw),
    "ddpm_beta": lambda **kw: lambda *a, **k: ddpm(*a, variance="beta", **k, **kw),
}


def point_mass_denoiser(c: float, schedule):
    """Data that is always c: the exact x0 is c, and eps follows from x_t."""

    def denoise(x_t, t):
        alpha, sigma = schedule.alpha(t).item(), schedule.sigma(t).item()
        x0 = torch.full_like(x_t, c)
        return (x_t - alpha * x0) / sigma, x0

    return denoise


def gaussian_eps(mu: float, s: float, schedule):
    """Data ~ N(mu, s^2) per pixel: E[x0 | x_t] is closed form; returned as the eps a perfect model predicts."""

    def eps(x_t, t):
        alpha, sigma = schedule.alpha(t).item(), schedule.sigma(t).item()
        x0 = mu + alpha * s**2 / (alpha**2 * s**2 + sigma**2) * (x_t - alpha * mu)
        return (x_t - alpha * x0) / sigma

    return eps


@pytest.mark.parametrize("name", SAMPLERS)
@pytest.mark.parametrize("steps", [1, 2, 5, 50])
@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
def test_point_mass_is_recovered_exactly(name, steps, spacing):
    schedule = cosine()
    g = torch.Generator().manual_seed(0)
    x_T = torch.randn(8, 1, 4, 4, generator=g)
    x = SAMPLERS[name](spacing=spacing)(point_mass_denoiser(0.37, schedule), schedule, x_T, steps=steps, generator=g)
    torch.testing.assert_close(x, torch.full_like(x, 0.37), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name,steps", [("ddim", 500), ("ddim_eta1", 1000), ("ddpm", 1000), ("ddpm_beta", 1000)])
def test_gaussian_data_statistics_are_reproduced(name, steps):
    schedule, mu, s = linear(), 0.5, 0.6
    g = torch.Generator().manual_seed(1)
    x_T = torch.randn(20000, 1, 1, 1, generator=g)
    x = SAMPLERS[name]()(eps_denoiser(gaussian_eps(mu, s, schedule), schedule), schedule, x_T, steps=steps, generator=g)
    # 20000 samples: standard errors of the mean 0.004, of the std 0.003. Ancestral sampling with the
    # posterior variance beta-tilde ignores Var[x0 | x_t] and so under-disperses by O(1/steps): ~1% at T.
    assert x.mean().item() == pytest.approx(mu, abs=0.012)
    assert x.std().item() == pytest.approx(s, rel=0.02)


def test_ddim_error_shrinks_at_first_order():
    schedule, s = linear(), 0.3
    x_T = torch.randn(4000, 1, 1, 1, generator=torch.Generator().manual_seed(1))
    eps_fn = eps_denoiser(gaussian_eps(0.5, s, schedule), schedule)
    err = {n: abs(ddim(eps_fn, schedule, x_T, steps=n).std().item() - s) for n in (25, 100)}
    assert 2.5 < err[25] / err[100] < 8  # 4x the steps, ~4x less error for a first-order solver


def test_ddim_eta1_over_all_steps_equals_ddpm():
    schedule = linear()
    eps_fn = eps_denoiser(gaussian_eps(-0.2, 0.8, schedule), schedule)
    x_T = torch.randn(16, 1, 2, 2, generator=torch.Generator().manual_seed(3))
    a = ddim(eps_fn, schedule, x_T, steps=1000, eta=1.0, generator=torch.Generator().manual_seed(7))
    b = ddpm(eps_fn, schedule, x_T, steps=1000, variance="posterior", generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_samplers_report_progress_and_call_the_denoiser_once_per_step():
    schedule, calls, seen = linear(), [], []
    denoise = point_mass_denoiser(0.0, schedule)

    def counting(x_t, t):
        calls.append(t)
        return denoise(x_t, t)

    ddim(counting, schedule, torch.randn(2, 1, 2, 2), steps=7, on_step=lambda i, n: seen.append((i, n)))
    assert calls == schedule.timesteps(7)[:-1]
    assert seen == [(i, 7) for i in range(1, 8)]


def test_bad_settings_are_refused():
    schedule, x = linear(), torch.zeros(1, 1, 2, 2)
    with pytest.raises(DiffuseError, match="eta must be >= 0"):
        ddim(point_mass_denoiser(0.0, schedule), schedule, x, steps=5, eta=-0.5)
    with pytest.raises(DiffuseError, match="posterior, beta"):
        ddpm(point_mass_denoiser(0.0, schedule), schedule, x, steps=5, variance="large")
