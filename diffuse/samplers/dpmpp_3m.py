"""DPM-Solver++(3M): the third-order multistep solver in log-SNR with data prediction (Lu et al. 2022,
"DPM-Solver++", sec. 4 and Appendix B; the multistep form of DPM-Solver-3, Lu et al. 2022a, Algorithm 3)."""

from __future__ import annotations

import math
from typing import Callable

from torch import Tensor

from diffuse.samplers import Denoiser, declare
from diffuse.samplers.noise import Generators
from diffuse.schedule import Schedule


@declare(order=3, multistep=True)
def dpmpp_3m(
    denoiser: Denoiser,
    schedule: Schedule,
    x_T: Tensor,  # (B,C,H,W) standard normal
    ts: list[float],  # strictly decreasing timesteps, then -1
    *,
    generator: Generators = None,
    on_step: Callable[[int, int], None] | None = None,
) -> Tensor:
    """Sample with DPM-Solver++(3M); one model evaluation per step, warming up through orders 1 and 2. The
    last step (to clean data, where h is infinite) is the last x0 prediction, and a point at zero SNR
    (lambda = -inf) starts the history afresh."""
    x = x_T
    history: list[tuple[float, Tensor]] = []  # (lambda, x0 prediction) at finite lambda, newest last
    for i, (t, t_next) in enumerate(zip(ts[:-1], ts[1:])):
        _, x0 = denoiser(x, t)
        if t_next < 0:
            x = x0  # sigma_next = 0: the update reduces to x0
        else:
            lam, lam_next = schedule.log_snr(t).item(), schedule.log_snr(t_next).item()
            sigma, sigma_next = schedule.sigma(t).item(), schedule.sigma(t_next).item()
            alpha_next = schedule.alpha(t_next).item()
            h = lam_next - lam  # infinite from zero terminal SNR: the step is then DDIM's
            phi_1 = math.expm1(-h)  # e^{-h} - 1
            x = (sigma_next / sigma) * x - alpha_next * phi_1 * x0  # order 1 (DDIM)
            if history and math.isfinite(h):
                lam_1, x0_1 = history[-1]
                r0 = (lam - lam_1) / h
                D1_0 = (x0 - x0_1) / r0
                if len(history) == 1:  # order 2: DPM-Solver++(2M)'s step (Algorithm 2)
                    x = x - 0.5 * alpha_next * phi_1 * D1_0
                else:  # order 3: the quadratic through the last three x0 predictions, integrated exactly
                    lam_2, x0_2 = history[-2]
                    r1 = (lam_1 - lam_2) / h
                    D1_1 = (x0_1 - x0_2) / r1
                    D1 = D1_0 + r0 / (r0 + r1) * (D1_0 - D1_1)  # ~ h x0'(lam)
                    D2 = (D1_0 - D1_1) / (r0 + r1)  # ~ h^2 x0''(lam) / 2
                    # alpha_next * int_0^h e^{u-h} (u^2/2) x0'' du = -2 alpha_next phi_3 D2, phi_3 = (phi_1+h)/h^2 - 1/2.
                    # The reference code and diffusers weight D2 by -phi_3, half of this, which leaves the method
                    # second order (tests/test_samplers.py measures both).
                    phi_3 = (phi_1 + h) / h ** 2 - 0.5
                    x = x + alpha_next * (phi_1 / h + 1) * D1 - 2 * alpha_next * phi_3 * D2
            history = (history + [(lam, x0)])[-2:] if math.isfinite(lam) else []
        if on_step is not None:
            on_step(i + 1, len(ts) - 1)
    return x
