"""Euler's method on the flow-matching ODE dx/dtau = v = eps - x0 in flow time tau = sigma_t / (alpha_t + sigma_t)
(Liu et al. 2023, sec. 2.1; the sampler of SD3 and diffusers' FlowMatchEulerDiscreteScheduler). Written as flow
users write it; the update equals euler's and DDIM's (eta 0) on any schedule, which the tests check."""

from __future__ import annotations

from typing import Callable

from torch import Tensor

from diffuse.samplers import Denoiser, declare
from diffuse.samplers.noise import Generators
from diffuse.schedule import Schedule
from diffuse.schedules.flow import flow_time


@declare(order=1, invertible=lambda: True)
def flow_euler(
    denoiser: Denoiser,
    schedule: Schedule,
    x_T: Tensor,  # (B,C,H,W) standard normal
    ts: list[float],  # strictly decreasing timesteps, then -1
    *,
    generator: Generators = None,
    on_step: Callable[[int, int], None] | None = None,
) -> Tensor:
    """Sample with Euler steps in tau; one model evaluation per step."""
    x = x_T
    for i, (t, t_next) in enumerate(zip(ts[:-1], ts[1:])):
        (tau, scale), (tau_next, scale_next) = flow_time(schedule, t), flow_time(schedule, t_next)
        eps, x0 = denoiser(x, t)
        x = scale_next * (x / scale + (tau_next - tau) * (eps - x0))  # x_tau = x_t / (alpha_t + sigma_t)
        if on_step is not None:
            on_step(i + 1, len(ts) - 1)
    return x
