"""What a network predicts (eps, x0 or v) and how that becomes (eps, x0): the one place it is converted.

v = alpha_t * eps - sigma_t * x0 (Salimans & Ho 2022, sec. 4), so with x_t = alpha_t x0 + sigma_t eps:
x0 = alpha_t x_t - sigma_t v and eps = sigma_t x_t + alpha_t v.
"""

from __future__ import annotations

from torch import Tensor

from diffuse import DiffuseError

PARAMETERIZATIONS = ("eps", "x0", "v")


def check(parameterization: str) -> str:
    if not isinstance(parameterization, str) or parameterization not in PARAMETERIZATIONS:
        raise DiffuseError(f"unknown parameterization {parameterization!r}; allowed: {', '.join(PARAMETERIZATIONS)}")
    return parameterization


def check_schedule(parameterization: str, terminal_snr: float) -> None:
    """At zero terminal SNR (alpha = 0) an eps prediction carries no information about x0 (Lin et al. 2024, sec. 3.2)."""
    if parameterization == "eps" and terminal_snr == 0:
        raise DiffuseError("a schedule with zero terminal SNR needs parameterization=v (or x0): at alpha = 0 an eps "
                           "prediction says nothing about x0")


def to_eps_x0(out: Tensor, x_t: Tensor, alpha: Tensor, sigma: Tensor, parameterization: str) -> tuple[Tensor, Tensor]:
    """Convert a network output into (eps, x0). out, x_t: (B,C,H,W); alpha, sigma broadcastable."""
    if parameterization == "eps":
        return out, (x_t - sigma * out) / alpha  # DDPM eq. 15 rearranged
    if parameterization == "x0":
        return (x_t - alpha * out) / sigma, out
    if parameterization == "v":
        return sigma * x_t + alpha * out, alpha * x_t - sigma * out
    raise DiffuseError(f"unknown parameterization {parameterization!r}; allowed: {', '.join(PARAMETERIZATIONS)}")


def target(x0: Tensor, eps: Tensor, alpha: Tensor, sigma: Tensor, parameterization: str) -> Tensor:
    """The regression target for a training pair (x0, eps) at noise level (alpha, sigma)."""
    if parameterization == "eps":
        return eps
    if parameterization == "x0":
        return x0
    if parameterization == "v":
        return alpha * eps - sigma * x0
    raise DiffuseError(f"unknown parameterization {parameterization!r}; allowed: {', '.join(PARAMETERIZATIONS)}")
