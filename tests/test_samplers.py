"""Every sampler against exact answers: no trained model can hide a bookkeeping bug here (DESIGN.md sec. 7).
The samplers come from the config group, so a new sampler YAML is tested without touching this file."""

from functools import partial
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module

from diffuse import DiffuseError
from diffuse.denoiser import eps_denoiser
from diffuse.run import build
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
from exact import GaussianMixture, fitted_order, point_mass_denoiser

CONF = Path(__file__).resolve().parents[1] / "conf" / "sampler"
NAMES = sorted(p.stem for p in CONF.glob("*.yaml"))
ODE = ["ddim", "euler", "heun", "dpmpp_2m", "unipc"]  # deterministic given x_T
MIXTURE = GaussianMixture(weights=[0.3, 0.7], means=[-0.6, 0.5], stds=[0.15, 0.25])


def from_yaml(name: str, **settings):
    with initialize_config_module(config_module="diffuse.conf", version_base="1.3"):
        node = compose(config_name="sample", overrides=[f"sampler={name}"]).sampler
    sampler = build(node)
    return partial(sampler, **settings) if settings else sampler


def counted(denoise):
    calls = []

    def wrapped(x_t, t):
        calls.append(t)
        return denoise(x_t, t)

    return wrapped, calls


def test_every_sampler_in_the_design_is_configured():
    assert set(NAMES) >= {"ddpm", "ddim", "euler", "heun", "dpmpp_2m", "unipc", "euler_ancestral"}


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("steps", [1, 2, 5, 20])
def test_point_mass_is_recovered_exactly(name, spacing, steps):
    schedule = cosine()
    g = torch.Generator().manual_seed(0)
    x_T = torch.randn(8, 1, 4, 4, generator=g)
    x = from_yaml(name, spacing=spacing)(point_mass_denoiser(0.37, schedule), schedule, x_T, steps=steps, generator=g)
    torch.testing.assert_close(x, torch.full_like(x, 0.37), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", NAMES)
def test_model_evaluations_per_sampler(name):
    schedule = linear()
    denoise, calls = counted(point_mass_denoiser(0.0, schedule))
    seen = []
    from_yaml(name)(denoise, schedule, torch.randn(2, 1, 2, 2), steps=7, generator=torch.Generator().manual_seed(0),
                    on_step=lambda i, n: seen.append((i, n)))
    assert len(calls) == (2 * 7 - 1 if name == "heun" else 7)
    assert seen == [(i, 7) for i in range(1, 8)]


# Enough steps that the solver's own error is below the tolerance; stochastic samplers need more.
STEPS = {"ddim": 200, "euler": 200, "heun": 50, "dpmpp_2m": 50, "unipc": 50, "ddpm": 1000, "euler_ancestral": 1000}


@pytest.mark.parametrize("name", NAMES)
def test_gaussian_mixture_statistics_and_weights(name):
    schedule = linear()
    g = torch.Generator().manual_seed(1)
    x_T = torch.randn(20000, 1, 1, 1, generator=g)
    x = from_yaml(name)(MIXTURE.denoiser(schedule), schedule, x_T, steps=STEPS.get(name, 200), generator=g).flatten()
    # 20000 samples: standard errors ~0.004 (mean), ~0.003 (std), ~0.003 (weight)
    assert x.mean().item() == pytest.approx(MIXTURE.mean, abs=0.015)
    assert x.std().item() == pytest.approx(MIXTURE.std, rel=0.03)
    assert (x < 0).double().mean().item() == pytest.approx(MIXTURE.cdf(0.0), abs=0.01)  # mostly the weight 0.3


# UniPC-2's corrector lifts it to order 3 (Zhao et al. 2023, Theorem 3.3): measured ~3.1.
@pytest.mark.parametrize("name,low,high", [("euler", 0.8, 1.3), ("ddim", 0.8, 1.3), ("heun", 1.7, 3.0),
                                           ("dpmpp_2m", 1.7, 3.0), ("unipc", 2.5, 4.0)])
def test_convergence_order_on_the_ode_path(name, low, high):
    schedule = linear()
    x_T = torch.randn(512, 1, 1, 1, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    sampler = from_yaml(name, spacing="karras")  # even steps in log sigma; with trailing the last jump is 1st order
    denoise = MIXTURE.denoiser(schedule)
    reference = sampler(denoise, schedule, x_T, steps=1000)
    steps = [10, 20, 40, 80]
    errors = [(sampler(denoise, schedule, x_T, steps=n) - reference).abs().mean().item() for n in steps]
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    assert low <= fitted_order(steps, errors) <= high, errors


def test_ddim_eta1_over_all_steps_equals_ddpm():
    schedule = linear()
    denoise = MIXTURE.denoiser(schedule)
    x_T = torch.randn(16, 1, 2, 2, generator=torch.Generator().manual_seed(3))
    a = ddim(denoise, schedule, x_T, steps=1000, eta=1.0, generator=torch.Generator().manual_seed(7))
    b = ddpm(denoise, schedule, x_T, steps=1000, variance="posterior", generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_euler_ancestral_with_eta_one_is_ddpm():
    """In sigma = sigma_t/alpha_t the DDPM posterior is N(x0 + s_next^2/s eps, s_next^2 (1 - s_next^2/s^2)):
    exactly k-diffusion's sigma_down and sigma_up, so the two samplers agree draw for draw."""
    schedule = linear()
    denoise = MIXTURE.denoiser(schedule)
    x_T = torch.randn(16, 1, 2, 2, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    a = euler_ancestral(denoise, schedule, x_T, steps=25, eta=1.0, generator=torch.Generator().manual_seed(9))
    b = ddpm(denoise, schedule, x_T, steps=25, generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("spacing", SPACINGS)
def test_euler_is_ddim_with_eta_zero_and_euler_ancestral_with_eta_zero(spacing):
    schedule = cosine()
    denoise = MIXTURE.denoiser(schedule)
    x_T = torch.randn(64, 1, 2, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    a = euler(denoise, schedule, x_T, steps=12, spacing=spacing)
    torch.testing.assert_close(a, ddim(denoise, schedule, x_T, steps=12, spacing=spacing))
    torch.testing.assert_close(a, euler_ancestral(denoise, schedule, x_T, steps=12, eta=0.0, spacing=spacing))


def test_unipc_order_one_and_dpmpp_first_step_are_ddim():
    schedule = linear()
    denoise = MIXTURE.denoiser(schedule)
    x_T = torch.randn(64, 1, 1, 1, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    ref = ddim(denoise, schedule, x_T, steps=1)
    torch.testing.assert_close(dpmpp_2m(denoise, schedule, x_T, steps=1), ref)
    torch.testing.assert_close(unipc(denoise, schedule, x_T, steps=1), ref)


def test_user_eps_function_api():
    """The README's API: any sampler on your own function (x_t, t) -> eps."""
    schedule = cosine()
    exact = MIXTURE.denoiser(schedule)
    my_eps = lambda x_t, t: exact(x_t, t)[0]  # noqa: E731  (a trained network goes here)
    x = dpmpp_2m(eps_denoiser(my_eps, schedule), schedule, torch.randn(4000, 1, 1, 1), steps=20)
    assert x.mean().item() == pytest.approx(MIXTURE.mean, abs=0.03)


@pytest.mark.parametrize("name", ["ddim", "ddpm", "euler", "dpmpp_2m", "unipc", "euler_ancestral"])
def test_zero_terminal_snr_schedules_sample_correctly(name):
    schedule = linear(zero_terminal_snr=True)
    assert schedule.terminal_snr == 0
    g = torch.Generator().manual_seed(6)
    x = from_yaml(name, spacing="trailing")(MIXTURE.denoiser(schedule), schedule, torch.randn(20000, 1, 1, 1, generator=g),
                        steps=STEPS[name], generator=g)
    assert torch.isfinite(x).all()
    assert x.mean().item() == pytest.approx(MIXTURE.mean, abs=0.015)
    assert x.std().item() == pytest.approx(MIXTURE.std, rel=0.03)


@pytest.mark.parametrize("sampler,settings,message", [
    (ddim, {"eta": -0.1}, "eta must be >= 0"),
    (euler_ancestral, {"eta": -1}, "eta must be >= 0"),
    (ddpm, {"variance": "large"}, "posterior, beta"),
    (unipc, {"order": 4}, "order must be 1, 2 or 3"),
    (unipc, {"variant": "bh3"}, "bh1, bh2"),
    (dpmpp_2m, {"spacing": "uniform"}, "linspace, leading, trailing, karras"),
    (heun, {"steps": 0}, r"steps must be an integer in 1\.\.1000"),
])
def test_bad_settings_are_refused(sampler, settings, message):
    schedule = linear()
    kwargs = {"steps": 5, **settings}
    with pytest.raises(DiffuseError, match=message):
        sampler(point_mass_denoiser(0.0, schedule), schedule, torch.zeros(1, 1, 2, 2), **kwargs)


def test_heun_refuses_zero_terminal_snr():
    schedule = linear(zero_terminal_snr=True)
    with pytest.raises(DiffuseError, match="infinite at zero terminal SNR"):
        heun(point_mass_denoiser(0.0, schedule), schedule, torch.zeros(1, 1, 2, 2), steps=5, spacing="trailing")
