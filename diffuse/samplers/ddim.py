"""DDIM (Song et al. 2021, eq. 12): eta = 0 is the deterministic ODE sampler, eta = 1 is DDPM's posterior."""

from __future__ import annotations

from typing import Callable

from torch import Tensor

from diffuse import DiffuseError
from diffuse.samplers import Denoiser, declare
from diffuse.samplers.noise import Generators, randn_like
from diffuse.schedule import Schedule


def check(schedule: Schedule, eta: float = 0.0) -> None:
    if eta < 0:
        raise DiffuseError(f"ddim eta must be >= 0, got {eta}")


@declare(order=1, check=check, invertible=lambda eta=0.0: eta == 0, stochastic=lambda eta=0.0: eta > 0)
def ddim(
    denoiser: Denoiser,
    schedule: Schedule,
    x_T: Tensor,  # (B,C,H,W) standard normal
    ts: list[float],  # strictly decreasing timesteps, then -1
    *,
    eta: float = 0.0,
    generator: Generators = None,
    on_step: Callable[[int, int], None] | None = None,
) -> Tensor:
    """Sample with DDIM; one model evaluation per step."""
    check(schedule, eta)
    x = x_T
    for i, (t, t_next) in enumerate(zip(ts[:-1], ts[1:])):
        eps, x0 = denoiser(x, t)
        abar, abar_next = schedule.abar_at(t).item(), schedule.abar_at(t_next).item()
        # sigma_t(eta), eq. 16: eta * sqrt((1 - abar_next) / (1 - abar) * (1 - abar / abar_next))
        s = eta * ((1 - abar_next) / (1 - abar) * (1 - abar / abar_next)) ** 0.5
        # eq. 12: predicted x0, direction pointing to x_t, random noise
        x = abar_next**0.5 * x0 + max(1 - abar_next - s**2, 0.0) ** 0.5 * eps
        if s > 0:
            x = x + s * randn_like(x, generator)
        if on_step is not None:
            on_step(i + 1, len(ts) - 1)
    return x
