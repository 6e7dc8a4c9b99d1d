"""The explicit midpoint method (second-order Runge-Kutta) on the probability-flow ODE in sigma = sigma_t /
alpha_t: a sampler added by test_extending.py as one file plus one YAML."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from diffuse.samplers import Denoiser, declare
from diffuse.schedule import Schedule


def evaluations(steps: int) -> int:
    return 2 * steps - 1  # the last step, to sigma = 0, is x0 itself


@declare(order=2, evaluations=evaluations, finite_start=True)
def mine_midpoint(denoiser: Denoiser, schedule: Schedule, x_T: Tensor, ts: list[float], *, generator=None,
                  on_step: Callable[[int, int], None] | None = None) -> Tensor:
    x = x_T
    for i, (t, t_next) in enumerate(zip(ts[:-1], ts[1:])):
        eps, x0 = denoiser(x, t)
        if t_next < 0:
            x = x0
        else:
            s, s_next = schedule.sigma_ve(t).item(), schedule.sigma_ve(t_next).item()
            s_mid = 0.5 * (s + s_next)
            t_mid = schedule.t_of_sigma_ve(torch.tensor(s_mid)).item()
            eps_mid, _ = denoiser(schedule.alpha(t_mid).item() * (x0 + s_mid * eps), t_mid)  # x~ = x0 + s eps
            x = schedule.alpha(t_next).item() * (x0 + s * eps + (s_next - s) * eps_mid)
        if on_step is not None:
            on_step(i + 1, len(ts) - 1)
    return x
