"""UniPC: the unified predictor-corrector multistep solver with data prediction, B(h) = e^h - 1 ("bh2") or
B(h) = h ("bh1") (Zhao et al. 2023, Algorithms 2 and 3; UniP-p predictor, UniC corrector)."""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from diffuse import DiffuseError
from diffuse.samplers import Denoiser, declare
from diffuse.samplers.noise import Generators
from diffuse.schedule import Schedule

VARIANTS = ("bh1", "bh2")


def coefficients(rks: list[float], h: float, variant: str) -> tuple[Tensor, Tensor, float]:
    """The linear system R rho = b of UniPC (Zhao et al. 2023, eq. 9 / Algorithm 2), with B(h)."""
    hh = -h  # data prediction integrates in -lambda
    h_phi_k = math.expm1(hh) / hh - 1  # phi_2(h) h-scaled, then the higher phi_k by recursion
    B_h = math.expm1(hh) if variant == "bh2" else hh
    R, b, factorial = [], [], 1
    for k in range(1, len(rks) + 1):
        R.append([r ** (k - 1) for r in rks])
        b.append(h_phi_k * factorial / B_h)
        factorial *= k + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    return torch.tensor(R, dtype=torch.float64), torch.tensor(b, dtype=torch.float64), B_h


def check(schedule: Schedule, order: int = 2, variant: str = "bh2") -> None:
    if order not in (1, 2, 3):
        raise DiffuseError(f"unipc order must be 1, 2 or 3, got {order}")
    if variant not in VARIANTS:
        raise DiffuseError(f"unknown unipc variant {variant!r}; allowed: {', '.join(VARIANTS)}")
    if variant == "bh1" and schedule.terminal_snr == 0:
        raise DiffuseError("unipc variant bh1 has B(h) = h, infinite on the first step from zero terminal SNR; "
                           "use variant=bh2")


# UniPC-2's corrector lifts it to order 3 (Zhao et al. 2023, Theorem 3.3)
@declare(order=3, check=check, multistep=True)
def unipc(
    denoiser: Denoiser,
    schedule: Schedule,
    x_T: Tensor,  # (B,C,H,W) standard normal
    ts: list[float],  # strictly decreasing timesteps, then -1
    *,
    order: int = 2,
    variant: str = "bh2",
    generator: Generators = None,
    on_step: Callable[[int, int], None] | None = None,
) -> Tensor:
    """Sample with UniPC of the given order (warming up from order 1); one model evaluation per step: the
    evaluation at each new point serves both the corrector of this step and the predictor of the next."""
    check(schedule, order, variant)
    x = x_T
    _, x0 = denoiser(x, ts[0])
    history = [(schedule.log_snr(ts[0]).item(), x0)]  # (lambda, x0 prediction) at finite lambda, newest last
    for i, (t, t_next) in enumerate(zip(ts[:-1], ts[1:])):
        lam, m0 = history[-1]
        if t_next < 0:
            x = m0  # sigma_next = 0: the step reduces to the last x0 prediction
        else:
            lam_next = schedule.log_snr(t_next).item()
            sigma, sigma_next = schedule.sigma(t).item(), schedule.sigma(t_next).item()
            alpha_next = schedule.alpha(t_next).item()
            h = lam_next - lam
            p = min(order, len(history)) if math.isfinite(lam) else 1
            rks = [(history[-(k + 1)][0] - lam) / h for k in range(1, p)] + [1.0]
            D1s = [(history[-(k + 1)][1] - m0) / rks[k - 1] for k in range(1, p)]
            R, b, B_h = coefficients(rks, h, variant) if math.isfinite(h) else (None, None, -1.0)  # e^-inf - 1
            x_lin = (sigma_next / sigma) * x - alpha_next * math.expm1(-h) * m0
            x_pred = x_lin  # predictor UniP-p
            if p >= 2:
                rhos_p = [0.5] if p == 2 else torch.linalg.solve(R[:-1, :-1], b[:-1]).tolist()
                x_pred = x_lin - alpha_next * B_h * sum(r * d for r, d in zip(rhos_p, D1s))
            _, x0_next = denoiser(x_pred, t_next)
            # corrector UniC: uses the new evaluation, raising the order by one
            rhos_c = [0.5] if p == 1 else torch.linalg.solve(R, b).tolist()
            corr = sum((r * d for r, d in zip(rhos_c[:-1], D1s)), torch.zeros_like(x)) + rhos_c[-1] * (x0_next - m0)
            x = x_lin - alpha_next * B_h * corr
            if not math.isfinite(lam):
                history = []  # a point at zero SNR (lambda = -inf) cannot enter a higher-order difference
            history = (history + [(lam_next, x0_next)])[-order:]
        if on_step is not None:
            on_step(i + 1, len(ts) - 1)
    return x
