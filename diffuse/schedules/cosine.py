"""The cosine schedule of Improved DDPM (Nichol & Dhariwal 2021, eq. 17)."""

import math

import torch

from diffuse.schedule import Schedule, check_T, from_betas


def cosine(T: int = 1000, s: float = 0.008, max_beta: float = 0.999, zero_terminal_snr: bool = False) -> Schedule:
    """abar(t) = f(t) / f(0), f(t) = cos^2(((t/T + s) / (1 + s)) pi/2); betas capped at max_beta."""
    check_T(T)
    t = torch.arange(T + 1, dtype=torch.float64) / T
    f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    betas = (1 - f[1:] / f[:-1]).clamp(max=max_beta)  # the paper's cap against a singularity at t = T
    return from_betas(betas, "cosine", zero_terminal_snr)
