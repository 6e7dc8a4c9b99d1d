"""The sigmoid beta schedule of GeoDiff (Xu et al. 2022, Appendix): betas follow a sigmoid in t."""

import torch

from diffuse import DiffuseError
from diffuse.schedule import Schedule, check_T, from_betas


def sigmoid(T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02, width: float = 6.0,
            zero_terminal_snr: bool = False) -> Schedule:
    """beta_t = beta_start + (beta_end - beta_start) * sigmoid(linspace(-width, width, T))."""
    check_T(T)
    if not 0 < beta_start < beta_end < 1:
        raise DiffuseError(f"sigmoid schedule needs 0 < beta_start < beta_end < 1, got {beta_start}, {beta_end}")
    ramp = torch.sigmoid(torch.linspace(-width, width, T, dtype=torch.float64))
    return from_betas(beta_start + (beta_end - beta_start) * ramp, "sigmoid", zero_terminal_snr)
