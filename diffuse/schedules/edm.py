"""EDM's noise levels (Karras et al. 2022, sec. 5) as a table: sigma from sigma_min to sigma_max, even in
log sigma, as the variance-preserving abar = 1 / (1 + sigma^2) (x_VP = x / sqrt(1 + sigma^2)). Walked with
spacing=karras, the samplers visit exactly EDM's rho = 7 grid (eq. 5): heun on it is EDM's Algorithm 1.
"""

import torch

from diffuse import DiffuseError
from diffuse.schedule import Schedule, check_T


def edm(T: int = 1000, sigma_min: float = 0.002, sigma_max: float = 80.0) -> Schedule:
    """sigma_i = sigma_min (sigma_max / sigma_min)^(i / (T - 1)), i = 0..T-1."""
    check_T(T)
    if not (isinstance(sigma_min, (int, float)) and isinstance(sigma_max, (int, float)) and 0 < sigma_min < sigma_max):
        raise DiffuseError(f"edm schedule needs 0 < sigma_min < sigma_max, got {sigma_min!r}, {sigma_max!r}")
    log_sigma = torch.linspace(torch.tensor(float(sigma_min)).log().item(), torch.tensor(float(sigma_max)).log().item(),
                               T, dtype=torch.float64)
    return Schedule(abar=torch.sigmoid(-2 * log_sigma), name="edm")  # 1 / (1 + sigma^2), exact in float64
