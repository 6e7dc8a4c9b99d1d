"""Every sampler against exact answers: no trained model can hide a bookkeeping bug here (DESIGN.md sec. 7).
The samplers come from the config group and what is expected of each comes from the facts it declares, so a new
sampler (one .py, one YAML) is tested without touching this file."""

import math

import pytest
import torch

from conftest import assert_declared_order, group_options, sampler_from_yaml, walk
from diffuse import DiffuseError
from diffuse.denoiser import eps_denoiser
from diffuse.samplers import Sampler
from diffuse.samplers.ddim import ddim
from diffuse.samplers.ddpm import ddpm
from diffuse.samplers.dpmpp_2m import dpmpp_2m
from diffuse.samplers.euler import euler
from diffuse.samplers.euler_ancestral import euler_ancestral
from diffuse.samplers.heun import heun
from diffuse.samplers.unipc import unipc
from diffuse.schedule import SPACINGS
from diffuse.schedules.cosine import cosine
from diffuse.schedules.linear import linear
from exact import GaussianMixture, point_mass_denoiser

NAMES = group_options("sampler")
ODE = [n for n in NAMES if sampler_from_yaml(n).facts.order is not None]  # deterministic with their YAML settings
MIXTURE = GaussianMixture(weights=[0.3, 0.7], means=[-0.6, 0.5], stds=[0.15, 0.25])


def counted(denoise):
    calls = []

    def wrapped(x_t, t):
        calls.append(t)
        return denoise(x_t, t)

    return wrapped, calls


def steps_for_statistics(sampler: Sampler) -> int:
    """Enough steps that the solver's own error is below the tolerance; stochastic samplers need more."""
    order = sampler.facts.order
    return 1000 if order is None else 200 if order == 1 else 50


def test_every_sampler_in_the_design_is_configured():
    assert set(NAMES) >= {"ddpm", "ddim", "euler", "heun", "dpmpp_2m", "unipc", "euler_ancestral"}


@pytest.mark.parametrize("name", NAMES)
def test_yaml_settings_are_the_algorithms_own_defaults(name):
    """The YAML shows every setting with its value; the function's defaults (for library users) must agree."""
    import inspect

    sampler = sampler_from_yaml(name)
    params = inspect.signature(sampler.algorithm).parameters
    assert {k: params[k].default for k in sampler.settings} == sampler.settings


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("steps", [1, 2, 5, 20])
def test_point_mass_is_recovered_exactly(name, spacing, steps):
    schedule = cosine()
    g = torch.Generator().manual_seed(0)
    x_T = torch.randn(8, 1, 4, 4, generator=g)
    sampler = sampler_from_yaml(name, spacing=spacing)
    x = walk(sampler, point_mass_denoiser(0.37, schedule), schedule, x_T, steps, generator=g)
    torch.testing.assert_close(x, torch.full_like(x, 0.37), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", NAMES)
def test_model_evaluations_are_what_the_sampler_declares(name):
    schedule = linear()
    denoise, calls = counted(point_mass_denoiser(0.0, schedule))
    seen = []
    sampler = sampler_from_yaml(name)
    walk(sampler, denoise, schedule, torch.randn(2, 1, 2, 2), 7, generator=torch.Generator().manual_seed(0),
         on_step=lambda i, n: seen.append((i, n)))
    assert len(calls) == sampler.facts.evaluations(7)
    assert seen == [(i, 7) for i in range(1, 8)]


@pytest.mark.parametrize("name", NAMES)
def test_gaussian_mixture_statistics_and_weights(name):
    schedule = linear()
    g = torch.Generator().manual_seed(1)
    x_T = torch.randn(20000, 1, 1, 1, generator=g)
    sampler = sampler_from_yaml(name)
    x = walk(sampler, MIXTURE.denoiser(schedule), schedule, x_T, steps_for_statistics(sampler), generator=g).flatten()
    # 20000 samples: standard errors ~0.004 (mean), ~0.003 (std), ~0.003 (weight)
    assert x.mean().item() == pytest.approx(MIXTURE.mean, abs=0.015)
    assert x.std().item() == pytest.approx(MIXTURE.std, rel=0.03)
    assert (x < 0).double().mean().item() == pytest.approx(MIXTURE.cdf(0.0), abs=0.01)  # mostly the weight 0.3


@pytest.mark.parametrize("name", ODE)
def test_convergence_order_on_the_ode_path_is_the_declared_one(name):
    schedule = linear()
    x_T = torch.randn(512, 1, 1, 1, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    sampler = sampler_from_yaml(name, spacing="karras")  # even steps in log sigma; with trailing the last jump is 1st order
    denoise = MIXTURE.denoiser(schedule)
    assert_declared_order(sampler, denoise, schedule, x_T, 1000)


def test_ddim_eta1_over_all_steps_equals_ddpm():
    schedule = linear()
    denoise = MIXTURE.denoiser(schedule)
    x_T = torch.randn(16, 1, 2, 2, generator=torch.Generator().manual_seed(3))
    ts = schedule.timesteps(1000)
    a = ddim(denoise, schedule, x_T, ts, eta=1.0, generator=torch.Generator().manual_seed(7))
    b = ddpm(denoise, schedule, x_T, ts, variance="posterior", generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_euler_ancestral_with_eta_one_is_ddpm():
    """In sigma = sigma_t/alpha_t the DDPM posterior is N(x0 + s_next^2/s eps, s_next^2 (1 - s_next^2/s^2)):
    exactly k-diffusion's sigma_down and sigma_up, so the two samplers agree draw for draw."""
    schedule = linear()
    denoise = MIXTURE.denoiser(schedule)
    x_T = torch.randn(16, 1, 2, 2, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    ts = schedule.timesteps(25)
    a = euler_ancestral(denoise, schedule, x_T, ts, eta=1.0, generator=torch.Generator().manual_seed(9))
    b = ddpm(denoise, schedule, x_T, ts, generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("spacing", SPACINGS)
def test_euler_is_ddim_with_eta_zero_and_euler_ancestral_with_eta_zero(spacing):
    schedule = cosine()
    denoise = MIXTURE.denoiser(schedule)
    x_T = torch.randn(64, 1, 2, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    ts = schedule.timesteps(12, spacing)
    a = euler(denoise, schedule, x_T, ts)
    torch.testing.assert_close(a, ddim(denoise, schedule, x_T, ts))
    torch.testing.assert_close(a, euler_ancestral(denoise, schedule, x_T, ts, eta=0.0))


def test_unipc_order_one_and_dpmpp_first_step_are_ddim():
    schedule = linear()
    denoise = MIXTURE.denoiser(schedule)
    x_T = torch.randn(64, 1, 1, 1, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    ts = schedule.timesteps(1)
    ref = ddim(denoise, schedule, x_T, ts)
    torch.testing.assert_close(dpmpp_2m(denoise, schedule, x_T, ts), ref)
    torch.testing.assert_close(unipc(denoise, schedule, x_T, ts), ref)


def test_a_walk_that_starts_part_way_is_the_tail_of_the_full_walk():
    """Samplers walk the timesteps they are given: starting at the full walk's state at ts[k] with ts[k:] gives
    its result (the start of image-to-image and of learned step schedules)."""
    schedule = linear()
    denoise = MIXTURE.denoiser(schedule)
    x_T = torch.randn(32, 1, 1, 1, generator=torch.Generator().manual_seed(10), dtype=torch.float64)
    ts = schedule.timesteps(10)
    states = []
    full = euler(lambda x, t: (states.append(x), denoise(x, t))[1], schedule, x_T, ts)
    torch.testing.assert_close(euler(denoise, schedule, states[4], ts[4:]), full)


def test_user_eps_function_api():
    """The README's API: any sampler on your own function (x_t, t) -> eps."""
    schedule = cosine()
    exact = MIXTURE.denoiser(schedule)
    my_eps = lambda x_t, t: exact(x_t, t)[0]  # noqa: E731  (a trained network goes here)
    x = dpmpp_2m(eps_denoiser(my_eps, schedule), schedule, torch.randn(4000, 1, 1, 1), schedule.timesteps(20))
    assert x.mean().item() == pytest.approx(MIXTURE.mean, abs=0.03)


@pytest.mark.parametrize("name", NAMES)
def test_zero_terminal_snr_schedules_sample_correctly_or_are_refused(name):
    schedule = linear(zero_terminal_snr=True)
    assert schedule.terminal_snr == 0
    sampler = sampler_from_yaml(name, spacing="trailing")
    if sampler.facts.finite_start:
        with pytest.raises(DiffuseError, match="infinite at zero terminal SNR"):
            sampler.check(schedule, 10)
        return
    g = torch.Generator().manual_seed(6)
    x = walk(sampler, MIXTURE.denoiser(schedule), schedule, torch.randn(20000, 1, 1, 1, generator=g),
             steps_for_statistics(sampler), generator=g)
    assert torch.isfinite(x).all()
    assert x.mean().item() == pytest.approx(MIXTURE.mean, abs=0.015)
    assert x.std().item() == pytest.approx(MIXTURE.std, rel=0.03)


@pytest.mark.parametrize("name,settings,steps,message", [
    ("ddim", {"eta": -0.1}, 5, "eta must be >= 0"),
    ("euler_ancestral", {"eta": -1}, 5, "eta must be >= 0"),
    ("ddpm", {"variance": "large"}, 5, "posterior, beta"),
    ("unipc", {"order": 4}, 5, "order must be 1, 2 or 3"),
    ("unipc", {"variant": "bh3"}, 5, "bh1, bh2"),
    ("dpmpp_2m", {"spacing": "uniform"}, 5, "linspace, leading, trailing, karras"),
    ("heun", {}, 0, r"steps must be an integer in 1\.\.1000"),
    ("ddim", {"eta": "abc"}, 5, r"sampler ddim: bad settings \(eta must be float, got 'abc'\)"),
    ("ddim", {"foo": 1}, 5, r"sampler ddim: bad settings \(unknown setting 'foo'; allowed: eta\)"),
])
def test_bad_settings_are_refused_before_any_work(name, settings, steps, message):
    schedule = linear()
    sampler = sampler_from_yaml(name, **settings)
    with pytest.raises(DiffuseError, match=message):
        sampler.check(schedule, steps)


def test_a_function_without_facts_is_not_a_sampler():
    with pytest.raises(DiffuseError, match="declares no facts"):
        Sampler(lambda *a, **k: None, {}, "trailing")


def test_unipc_bh1_refuses_zero_terminal_snr_and_heun_refuses_an_infinite_start():
    schedule = linear(zero_terminal_snr=True)
    with pytest.raises(DiffuseError, match="use variant=bh2"):
        sampler_from_yaml("unipc", variant="bh1").check(schedule, 5)
    with pytest.raises(DiffuseError, match="infinite at zero terminal SNR"):
        heun(point_mass_denoiser(0.0, schedule), schedule, torch.zeros(1, 1, 2, 2), schedule.timesteps(5))
    assert math.isfinite(sampler_from_yaml("heun").check(linear(), 5)[0])
