import math

import pytest
import torch

from diffuse import DiffuseError
from diffuse.schedule import SPACINGS, Schedule
from diffuse.schedules.cosine import cosine
from diffuse.schedules.linear import linear
from diffuse.schedules.scaled_linear import scaled_linear
from diffuse.schedules.sigmoid import sigmoid


def test_linear_matches_ddpm_definition():
    s = linear(T=1000, beta_start=1e-4, beta_end=0.02)
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    torch.testing.assert_close(s.abar, torch.cumprod(1 - betas, 0))
    torch.testing.assert_close(s.betas, betas)
    assert s.T == 1000
    assert s.abar_at(-1).item() == 1.0
    assert s.abar_at(0).item() == pytest.approx(1 - 1e-4)
    assert s.terminal_snr == pytest.approx(4.04e-5, rel=0.05)  # DDPM's schedule does not reach zero SNR


def test_cosine_matches_improved_ddpm_eq17():
    s = cosine(T=1000, s=0.008)
    f = lambda t: math.cos((t / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    for t in (0, 100, 500, 900):  # away from the beta cap at the very end, abar_t = f(t+1) / f(0)
        assert s.abar_at(t).item() == pytest.approx(f(t + 1) / f(0), rel=1e-9)
    assert float(s.betas.max()) <= 0.999


def test_views_are_consistent():
    s = cosine()
    t = torch.tensor([0, 10, 500, 999])
    torch.testing.assert_close(s.alpha(t) ** 2 + s.sigma(t) ** 2, torch.ones(4, dtype=torch.float64))
    torch.testing.assert_close(s.log_snr(t), torch.log(s.alpha(t) / s.sigma(t)))
    assert (s.log_snr(t)[1:] < s.log_snr(t)[:-1]).all()
    with pytest.raises(DiffuseError, match="out of range"):
        s.abar_at(1000)


def test_scales_are_the_tables_alpha_and_sigma():
    s = linear()
    t = torch.tensor([0, 400, 999])
    alpha, sigma = s.scales(t)
    assert alpha.shape == sigma.shape == (3, 1, 1, 1) and alpha.dtype == torch.float32
    torch.testing.assert_close(alpha.flatten().double(), s.alpha(t), rtol=1e-6, atol=0)
    torch.testing.assert_close(sigma.flatten().double(), s.sigma(t), rtol=0, atol=1e-6)  # 1 - abar in float32


@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("steps", [1, 2, 3, 7, 10, 50, 333, 999, 1000])
def test_every_spacing_is_strictly_decreasing_and_ends_at_clean_data(spacing, steps):
    ts = linear().timesteps(steps, spacing)
    assert len(ts) == steps + 1
    assert ts[-1] == -1
    assert all(0 <= t <= 999 for t in ts[:-1])
    assert all(a > b for a, b in zip(ts, ts[1:]))


def test_spacings_match_their_definitions():
    s = linear()
    assert s.timesteps(10, "leading")[:-1] == list(range(900, -1, -100))
    assert s.timesteps(10, "trailing")[:-1] == list(range(999, 0, -100))
    assert s.timesteps(10, "linspace")[:-1] == [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]
    assert s.timesteps(1000, "trailing")[:-1] == list(range(999, -1, -1))


@pytest.mark.parametrize("steps", [0, -3, 1001, 2.5, "10"])
def test_bad_step_counts_are_refused(steps):
    with pytest.raises(DiffuseError, match=r"steps must be an integer in 1\.\.1000"):
        linear().timesteps(steps)


def test_unknown_spacing_names_the_allowed_ones():
    with pytest.raises(DiffuseError, match="linspace, leading, trailing"):
        linear().timesteps(10, "uniform")


def test_schedule_rejects_a_table_that_is_not_decreasing():
    with pytest.raises(DiffuseError):
        Schedule(abar=torch.tensor([0.9, 0.95, 0.5]))


def test_karras_spacing_follows_eq5_in_sigma():
    s = linear()
    ts = s.timesteps(10, "karras")
    assert ts[0] == 999 and ts[-2] == 0 and ts[-1] == -1
    t = torch.tensor(ts[:-1], dtype=torch.float64)
    sig = s.sigma(t) / s.alpha(t)
    lo, hi = sig[-1].item(), sig[0].item()
    ramp = torch.linspace(0, 1, 10, dtype=torch.float64)
    expected = (hi ** (1 / 7) + ramp * (lo ** (1 / 7) - hi ** (1 / 7))) ** 7
    torch.testing.assert_close(sig, expected, rtol=1e-9, atol=0)


def test_logsnr_spacing_is_even_in_log_snr_between_the_tables_ends():
    s = linear()
    ts = s.timesteps(10, "logsnr")
    assert ts[0] == 999 and ts[-2] == 0 and ts[-1] == -1
    lam = s.log_snr(torch.tensor(ts[:-1], dtype=torch.float64))
    steps = lam[1:] - lam[:-1]
    torch.testing.assert_close(steps, torch.full_like(steps, steps.mean().item()), rtol=1e-9, atol=0)
    assert steps.mean().item() == pytest.approx((s.log_snr(0) - s.log_snr(999)).item() / 9, rel=1e-9)


def test_time_quadratic_spacing_is_deis_quadratic_time():
    ts = linear().timesteps(5, "time_quadratic")
    assert ts == [999.0, 999 * 0.75 ** 2, 999 * 0.5 ** 2, 999 * 0.25 ** 2, 0.0, -1]
    assert linear().timesteps(1, "time_quadratic") == [999.0, -1]


def test_fractional_timesteps_interpolate_and_invert():
    s = cosine()
    assert s.abar_at(torch.tensor(41.0)).item() == s.abar[41].item()  # integers stay exact
    mid = s.abar_at(torch.tensor(41.5)).item()
    assert s.abar[42].item() < mid < s.abar[41].item()
    sigma = (s.sigma(41.5) / s.alpha(41.5))
    assert s.t_of_sigma_ve(sigma).item() == pytest.approx(41.5, abs=1e-9)


@pytest.mark.parametrize("family", [linear, cosine, scaled_linear, sigmoid])
def test_zero_terminal_snr_rescale(family):
    plain, zero = family(), family(zero_terminal_snr=True)
    assert plain.terminal_snr > 0 and zero.terminal_snr == 0  # Lin et al. 2024, Algorithm 1
    assert zero.abar[0].item() == pytest.approx(plain.abar[0].item(), rel=1e-12)
    assert (zero.abar[1:] < zero.abar[:-1]).all()
    for spacing in ("karras", "logsnr"):
        with pytest.raises(DiffuseError, match=f"{spacing} spacing needs a finite largest noise level"):
            zero.timesteps(10, spacing)


def test_scaled_linear_and_sigmoid_follow_their_betas():
    torch.testing.assert_close(scaled_linear().betas,
                               torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2)
    b = sigmoid().betas
    assert b[0].item() == pytest.approx(1e-4 + (0.02 - 1e-4) * torch.sigmoid(torch.tensor(-6.0)).item(), rel=1e-5)
    assert (b[1:] > b[:-1]).all()
