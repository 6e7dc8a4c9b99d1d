"""Euler on the probability-flow ODE written in sigma = sigma_t / alpha_t (Karras et al. 2022, Algorithm 1
without its second-order correction); the same update as DDIM with eta = 0 (Karras et al., sec. 3)."""

from __future__ import annotations

from typing import Callable

from torch import Tensor

from diffuse.samplers import Denoiser, declare
from diffuse.samplers.noise import Generators
from diffuse.schedule import Schedule


@declare(order=1, invertible=lambda: True)
def euler(
    denoiser: Denoiser,
    schedule: Schedule,
    x_T: Tensor,  # (B,C,H,W) standard normal
    ts: list[float],  # strictly decreasing timesteps, then -1
    *,
    generator: Generators = None,
    on_step: Callable[[int, int], None] | None = None,
) -> Tensor:
    """Sample with Euler steps in sigma_VE; one model evaluation per step."""
    x = x_T
    for i, (t, t_next) in enumerate(zip(ts[:-1], ts[1:])):
        eps, x0 = denoiser(x, t)
        alpha_next, s_next = schedule.alpha(t_next).item(), schedule.sigma_ve(t_next).item()
        # Karras eq. 3 with sigma(t) = t, s(t) = 1 for x~ = x / alpha: dx~/dsigma = (x~ - x0) / sigma = eps, so
        # the Euler step x~ + (s_next - s) eps equals x0 + s_next eps, since x~ = x0 + s eps. Written this way
        # it needs no division by alpha (exact in float32 far from the data, and fine at zero terminal SNR).
        x = alpha_next * (x0 + s_next * eps)
        if on_step is not None:
            on_step(i + 1, len(ts) - 1)
    return x
