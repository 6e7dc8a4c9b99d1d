"""iPNDM: Adams-Bashforth multistep on the probability-flow ODE in sigma = sigma_t / alpha_t, up to 4th order
with a lower-order warm start (Zhang & Chen 2023, "DEIS", sec. 4 and Appendix; Liu et al. 2022's PNDM without
its Runge-Kutta start), with the step-size-aware coefficients of a variable-step Adams-Bashforth method."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from diffuse import DiffuseError
from diffuse.samplers import Denoiser, declare
from diffuse.samplers.noise import Generators
from diffuse.schedule import Schedule

MAX_ORDER = 4


def check(schedule: Schedule, order: int = 4) -> None:
    if order not in range(1, MAX_ORDER + 1):
        raise DiffuseError(f"ipndm order must be 1..{MAX_ORDER}, got {order}")


def adams_bashforth(nodes: list[float], s: float, s_next: float) -> list[float]:
    """Weights w_j with sum_j w_j f(nodes[j]) = the integral over [s, s_next] of the polynomial through the points
    (nodes[j], f(nodes[j])), nodes[0] = s (Adams-Bashforth on any steps). On even steps they are the classical
    (1), (3, -1)/2, (23, -16, 5)/12, (55, -59, 37, -9)/24 times s_next - s."""
    h = s_next - s
    u = torch.tensor([(n - s) / h for n in nodes], dtype=torch.float64)  # 0, then negative: the past
    k = len(nodes)
    vander = u.unsqueeze(0) ** torch.arange(k, dtype=torch.float64).unsqueeze(1)  # (k, k): row m = u^m
    moments = 1 / torch.arange(1, k + 1, dtype=torch.float64)  # integral of u^m over [0, 1]
    return (h * torch.linalg.solve(vander, moments)).tolist()


@declare(order=4, finite_start=True, check=check, multistep=True)
def ipndm(
    denoiser: Denoiser,
    schedule: Schedule,
    x_T: Tensor,  # (B,C,H,W) standard normal
    ts: list[float],  # strictly decreasing timesteps, then -1
    *,
    order: int = 4,
    generator: Generators = None,
    on_step: Callable[[int, int], None] | None = None,
) -> Tensor:
    """Sample with iPNDM of the given order; one model evaluation per step, the first steps at orders 1, 2, ...
    as the history fills. The slope dx~/dsigma of x~ = x / alpha is the eps prediction (Karras et al. 2022,
    eq. 3), so each step is x~_next = x0 + s eps + sum_j w_j eps_j, with x~ = x0 + s eps."""
    check(schedule, order)
    x, history = x_T, []  # (sigma, eps) newest first
    for i, (t, t_next) in enumerate(zip(ts[:-1], ts[1:])):
        eps, x0 = denoiser(x, t)
        s, s_next = schedule.sigma_ve(t).item(), schedule.sigma_ve(t_next).item()
        alpha_next = schedule.alpha(t_next).item()
        history = [(s, eps)] + history[: order - 1]
        weights = adams_bashforth([node for node, _ in history], s, s_next)
        weights[0] += s  # x~ = x0 + s eps: summed as numbers first, so a large s cancels exactly (Euler: s_next)
        x = alpha_next * (x0 + sum(w * e for w, (_, e) in zip(weights, history)))
        if on_step is not None:
            on_step(i + 1, len(ts) - 1)
    return x
