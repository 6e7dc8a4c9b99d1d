"""Heun's method on the flow-matching ODE dx/dtau = v = eps - x0 in flow time tau = sigma_t / (alpha_t + sigma_t),
where x_tau = x_t / (alpha_t + sigma_t) = (1 - tau) x0 + tau eps (Liu et al. 2023; Esser et al. 2024's Heun
baseline). tau is finite at pure noise, so it starts from zero terminal SNR (unlike heun, which integrates in
sigma_t / alpha_t). Its Euler half is flow_euler."""

from __future__ import annotations

from typing import Callable

from torch import Tensor

from diffuse.samplers import Denoiser, declare
from diffuse.samplers.noise import Generators
from diffuse.schedule import Schedule
from diffuse.schedules.flow import flow_time


def evaluations(steps: int) -> int:
    """Two per step but the last, which lands on tau = 0 with a plain Euler step."""
    return 2 * steps - 1


@declare(order=2, evaluations=evaluations)
def flow_heun(
    denoiser: Denoiser,
    schedule: Schedule,
    x_T: Tensor,  # (B,C,H,W) standard normal
    ts: list[float],  # strictly decreasing timesteps, then -1
    *,
    generator: Generators = None,
    on_step: Callable[[int, int], None] | None = None,
) -> Tensor:
    """Sample with Heun steps in tau; 2 model evaluations per step, 1 on the last: 2 * steps - 1 NFE."""
    x = x_T
    for i, (t, t_next) in enumerate(zip(ts[:-1], ts[1:])):
        tau, _ = flow_time(schedule, t)
        tau_next, scale_next = flow_time(schedule, t_next)
        eps, x0 = denoiser(x, t)
        # the Euler step x_tau + (tau_next - tau) (eps - x0), written as x0 and eps renoised at tau_next
        x_flow = (1 - tau_next) * x0 + tau_next * eps
        if t_next >= 0:  # the trapezoid: average the velocity at both ends
            eps_next, x0_next = denoiser(scale_next * x_flow, t_next)
            x_flow = x_flow + (tau_next - tau) * 0.5 * ((eps_next - x0_next) - (eps - x0))
        x = scale_next * x_flow
        if on_step is not None:
            on_step(i + 1, len(ts) - 1)
    return x
