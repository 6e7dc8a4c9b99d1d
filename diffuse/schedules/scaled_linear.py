"""The "scaled linear" schedule of Latent/Stable Diffusion (Rombach et al. 2022): sqrt(beta) is linear."""

import torch

from diffuse import DiffuseError
from diffuse.schedule import Schedule, check_T, from_betas


def scaled_linear(T: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012,
                  zero_terminal_snr: bool = False) -> Schedule:
    """beta_t = (sqrt(beta_start) + t/(T-1) (sqrt(beta_end) - sqrt(beta_start)))^2."""
    check_T(T)
    if not 0 < beta_start < beta_end < 1:
        raise DiffuseError(f"scaled_linear schedule needs 0 < beta_start < beta_end < 1, got {beta_start}, {beta_end}")
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, T, dtype=torch.float64) ** 2
    return from_betas(betas, "scaled_linear", zero_terminal_snr)
