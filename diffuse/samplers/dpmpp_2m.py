"""DPM-Solver++(2M): the second-order multistep solver in log-SNR with data prediction
(Lu et al. 2022, "DPM-Solver++", Algorithm 2)."""

from __future__ import annotations

import math
from typing import Callable

from torch import Tensor

from diffuse.samplers import Denoiser, declare
from diffuse.samplers.noise import Generators
from diffuse.schedule import Schedule


@declare(order=2, multistep=True)
def dpmpp_2m(
    denoiser: Denoiser,
    schedule: Schedule,
    x_T: Tensor,  # (B,C,H,W) standard normal
    ts: list[float],  # strictly decreasing timesteps, then -1
    *,
    generator: Generators = None,
    on_step: Callable[[int, int], None] | None = None,
) -> Tensor:
    """Sample with DPM-Solver++(2M); one model evaluation per step. The first step, and the last one (to
    clean data, where h is infinite), are first order (DPM-Solver++(1) = DDIM)."""
    x, x0_prev, h_prev = x_T, None, math.inf
    for i, (t, t_next) in enumerate(zip(ts[:-1], ts[1:])):
        _, x0 = denoiser(x, t)
        if t_next < 0:
            x = x0  # sigma_next = 0: the update below reduces to x0
        else:
            lam, lam_next = schedule.log_snr(t).item(), schedule.log_snr(t_next).item()
            sigma, sigma_next = schedule.sigma(t).item(), schedule.sigma(t_next).item()
            alpha_next = schedule.alpha(t_next).item()
            h = lam_next - lam  # step in lambda = log(alpha / sigma); infinite from zero terminal SNR
            if x0_prev is None or not math.isfinite(h_prev):
                D = x0
            else:  # Algorithm 2, line 8: r = h_{i-1} / h_i, D = (1 + 1/(2r)) x0_i - 1/(2r) x0_{i-1}
                r = h_prev / h
                D = (1 + 1 / (2 * r)) * x0 - 1 / (2 * r) * x0_prev
            # line 9: x_{t_i} = sigma_{t_i} / sigma_{t_{i-1}} x - alpha_{t_i} (e^{-h_i} - 1) D
            x = (sigma_next / sigma) * x - alpha_next * math.expm1(-h) * D
            x0_prev, h_prev = x0, h
        if on_step is not None:
            on_step(i + 1, len(ts) - 1)
    return x
