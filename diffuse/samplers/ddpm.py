"""Ancestral DDPM sampling (Ho et al. 2020, Algorithm 2), on any subsequence of timesteps
(respacing as in Nichol & Dhariwal 2021, sec. 4)."""

from __future__ import annotations

from typing import Callable

from torch import Tensor

from diffuse import DiffuseError
from diffuse.samplers import Denoiser, declare
from diffuse.samplers.noise import Generators, randn_like
from diffuse.schedule import Schedule

VARIANCES = ("posterior", "beta")


def check(schedule: Schedule, variance: str = "posterior") -> None:
    if variance not in VARIANCES:
        raise DiffuseError(f"unknown ddpm variance {variance!r}; allowed: {', '.join(VARIANCES)}")


@declare(order=None, check=check)
def ddpm(
    denoiser: Denoiser,
    schedule: Schedule,
    x_T: Tensor,  # (B,C,H,W) standard normal
    ts: list[float],  # strictly decreasing timesteps, then -1
    *,
    variance: str = "posterior",
    generator: Generators = None,
    on_step: Callable[[int, int], None] | None = None,
) -> Tensor:
    """Sample from p(x_{t_next} | x_t) = N(mu_tilde(x_t, x0), var); var is beta-tilde or beta (DDPM sec. 3.2)."""
    check(schedule, variance)
    x = x_T
    for i, (t, t_next) in enumerate(zip(ts[:-1], ts[1:])):
        _, x0 = denoiser(x, t)
        abar, abar_next = schedule.abar_at(t).item(), schedule.abar_at(t_next).item()
        beta = 1 - abar / abar_next  # the respaced beta for the jump t -> t_next
        # posterior mean mu_tilde (DDPM eq. 7)
        x = (abar_next**0.5 * beta / (1 - abar)) * x0 + ((1 - beta) ** 0.5 * (1 - abar_next) / (1 - abar)) * x
        if t_next >= 0:  # no noise on the final step (Algorithm 2, line 3)
            var = beta * (1 - abar_next) / (1 - abar) if variance == "posterior" else beta
            x = x + var**0.5 * randn_like(x, generator)
        if on_step is not None:
            on_step(i + 1, len(ts) - 1)
    return x
