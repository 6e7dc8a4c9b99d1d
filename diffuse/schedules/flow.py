"""The linear interpolant of flow matching / rectified flow (Lipman et al. 2023; Liu et al. 2023) as a table:
x = (1 - tau) x0 + tau eps, i.e. the variance-preserving process with alpha / sigma = (1 - tau) / tau, at
tau_i = i / T (i = 1..T), optionally shifted toward noise as SD3 does for large images (Esser et al. 2024,
sec. 5.3.2): tau -> shift tau / (1 + (shift - 1) tau). The last entry is tau = 1, pure noise (zero terminal SNR).
"""

import torch

from diffuse import DiffuseError
from diffuse.schedule import Schedule, check_T


def shifted(tau: torch.Tensor, shift: float) -> torch.Tensor:
    """SD3's timestep shift (Esser et al. 2024, eq. 23): the same SNR as tau at `shift` times the resolution."""
    return shift * tau / (1 + (shift - 1) * tau)


def flow_time(schedule: Schedule, t: float) -> tuple[float, float]:
    """(tau, alpha_t + sigma_t) at any schedule's timestep t: the flow time of the same SNR, and the factor
    x_t / x_tau (tau = 0 and factor 1 at the clean-data sentinel t = -1)."""
    alpha, sigma = schedule.alpha(t).item(), schedule.sigma(t).item()
    return sigma / (alpha + sigma), alpha + sigma


def flow(T: int = 1000, shift: float = 1.0) -> Schedule:
    """abar(tau) = (1 - tau)^2 / ((1 - tau)^2 + tau^2): the signal share of x / ||(1 - tau, tau)||."""
    check_T(T)
    if not isinstance(shift, (int, float)) or not shift > 0:
        raise DiffuseError(f"flow schedule shift must be > 0, got {shift!r}")
    tau = shifted(torch.arange(1, T + 1, dtype=torch.float64) / T, float(shift))
    abar = (1 - tau) ** 2 / ((1 - tau) ** 2 + tau**2)
    return Schedule(abar=abar, name="flow")
