"""Heun's second-order method on the probability-flow ODE in sigma (Karras et al. 2022, Algorithm 1)."""

from __future__ import annotations

from typing import Callable

from torch import Tensor

from diffuse import DiffuseError
from diffuse.samplers import Denoiser, declare
from diffuse.samplers.noise import Generators
from diffuse.schedule import Schedule


def evaluations(steps: int) -> int:
    """Two per step but the last, which lands on sigma = 0 with a plain Euler step."""
    return 2 * steps - 1


@declare(order=2, evaluations=evaluations, finite_start=True)
def heun(
    denoiser: Denoiser,
    schedule: Schedule,
    x_T: Tensor,  # (B,C,H,W) standard normal
    ts: list[float],  # strictly decreasing timesteps, then -1
    *,
    generator: Generators = None,
    on_step: Callable[[int, int], None] | None = None,
) -> Tensor:
    """Sample with Heun steps; 2 model evaluations per step, 1 on the last (to sigma = 0): 2 * steps - 1 NFE."""
    if schedule.sigma_ve(ts[0]).isinf():
        raise DiffuseError("heun integrates in sigma = sigma_t / alpha_t, which is infinite at zero terminal SNR")
    x = x_T
    for i, (t, t_next) in enumerate(zip(ts[:-1], ts[1:])):
        alpha_next = schedule.alpha(t_next).item()
        s, s_next = schedule.sigma_ve(t).item(), schedule.sigma_ve(t_next).item()
        d, x0 = denoiser(x, t)  # dx~/dsigma at (x~ = x / alpha, sigma) is eps (Algorithm 1, line 4)
        x_tilde = x0 + s_next * d  # the Euler step x~ + (s_next - s) d, with x~ = x0 + s d (line 5)
        if t_next >= 0:  # second-order correction unless sigma_next = 0 (lines 6-8)
            d_next, _ = denoiser(alpha_next * x_tilde, t_next)
            # x~ + (s_next - s) (d + d_next) / 2, again without dividing x by alpha
            x_tilde = x0 + s_next * 0.5 * (d + d_next) + s * 0.5 * (d - d_next)
        x = alpha_next * x_tilde
        if on_step is not None:
            on_step(i + 1, len(ts) - 1)
    return x
