"""The linear beta schedule of DDPM (Ho et al. 2020, sec. 4)."""

import torch

from diffuse import DiffuseError
from diffuse.schedule import Schedule, check_T, from_betas


def linear(T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02, zero_terminal_snr: bool = False) -> Schedule:
    """beta_t rises linearly from beta_start to beta_end over T steps."""
    check_T(T)
    if not 0 < beta_start < beta_end < 1:
        raise DiffuseError(f"linear schedule needs 0 < beta_start < beta_end < 1, got {beta_start}, {beta_end}")
    return from_betas(torch.linspace(beta_start, beta_end, T, dtype=torch.float64), "linear", zero_terminal_snr)
