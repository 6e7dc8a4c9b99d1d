"""Euler ancestral (k-diffusion's sample_euler_ancestral): an Euler step down to sigma_down, then fresh noise
up to sigma_next, splitting the DDPM posterior variance as in Song et al. 2021 (eq. 16) in sigma = sigma_t/alpha_t."""

from __future__ import annotations

from typing import Callable

from torch import Tensor

from diffuse import DiffuseError
from diffuse.samplers import Denoiser, declare
from diffuse.samplers.noise import Generators, randn_like
from diffuse.schedule import Schedule


def check(schedule: Schedule, eta: float = 1.0) -> None:
    if eta < 0:
        raise DiffuseError(f"euler_ancestral eta must be >= 0, got {eta}")


@declare(order=None, check=check)
def euler_ancestral(
    denoiser: Denoiser,
    schedule: Schedule,
    x_T: Tensor,  # (B,C,H,W) standard normal
    ts: list[float],  # strictly decreasing timesteps, then -1
    *,
    eta: float = 1.0,
    generator: Generators = None,
    on_step: Callable[[int, int], None] | None = None,
) -> Tensor:
    """Sample with Euler ancestral steps; one model evaluation per step. eta = 0 is plain Euler."""
    check(schedule, eta)
    x = x_T
    for i, (t, t_next) in enumerate(zip(ts[:-1], ts[1:])):
        eps, x0 = denoiser(x, t)
        s, s_next = schedule.sigma_ve(t).item(), schedule.sigma_ve(t_next).item()
        ratio = (s_next / s) ** 2  # 0 when s = inf (zero terminal SNR)
        s_up = min(s_next, eta * s_next * max(1 - ratio, 0.0) ** 0.5)  # k-diffusion's get_ancestral_step
        s_down = (s_next**2 - s_up**2) ** 0.5
        # Euler from sigma to sigma_down, written from x0 so that sigma = inf (zero terminal SNR) is fine:
        # x~ + (s_down - s) eps = x0 + s_down eps, since x~ = x / alpha = x0 + s eps
        x_tilde = x0 + s_down * eps
        if s_up > 0:
            x_tilde = x_tilde + s_up * randn_like(x, generator)
        x = schedule.alpha(t_next).item() * x_tilde
        if on_step is not None:
            on_step(i + 1, len(ts) - 1)
    return x
