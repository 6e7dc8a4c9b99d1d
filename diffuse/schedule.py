"""The discrete variance-preserving noise process of DDPM (Ho et al. 2020, eq. 4):

    x_t = sqrt(abar_t) * x0 + sqrt(1 - abar_t) * eps,   t = 0 .. T-1,

with the sentinel abar(-1) = 1 ("clean data"), so that every sampler's last step lands on x0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from diffuse import DiffuseError

SPACINGS = ("linspace", "leading", "trailing")


@dataclass(frozen=True, eq=False)
class Schedule:
    """A noise schedule as its table of abar_t (cumulative product of 1 - beta_t)."""

    abar: Tensor  # (T,) float64, strictly decreasing, in (0, 1]
    name: str = "custom"

    def __post_init__(self) -> None:
        abar = torch.as_tensor(self.abar, dtype=torch.float64)
        if abar.ndim != 1 or len(abar) < 2:
            raise DiffuseError(f"a schedule needs a 1-D abar table of length >= 2, got shape {tuple(abar.shape)}")
        if not bool(((abar >= 0) & (abar <= 1)).all()) or not bool((abar[1:] < abar[:-1]).all()):
            raise DiffuseError("a schedule's abar must lie in [0, 1] and decrease strictly with t")
        object.__setattr__(self, "abar", abar)

    @property
    def T(self) -> int:
        return len(self.abar)

    @property
    def betas(self) -> Tensor:
        """beta_t = 1 - abar_t / abar_{t-1} (DDPM eq. 2); (T,) float64."""
        prev = torch.cat([self.abar.new_ones(1), self.abar[:-1]])
        return 1 - self.abar / prev

    @property
    def terminal_snr(self) -> float:
        return float(self.abar[-1] / (1 - self.abar[-1]))

    def abar_at(self, t: Tensor | int) -> Tensor:
        """abar_t for integer t in [-1, T-1] (any shape), with abar(-1) = 1; float64."""
        t = torch.as_tensor(t, dtype=torch.long)
        if bool(((t < -1) | (t >= self.T)).any()):
            raise DiffuseError(f"timestep out of range: allowed -1..{self.T - 1}, got {t.tolist()}")
        table = torch.cat([self.abar.new_ones(1), self.abar])
        return table[t + 1]

    def alpha(self, t: Tensor | int) -> Tensor:
        """alpha_t = sqrt(abar_t): the signal scale (DPM-Solver's notation, Lu et al. 2022, sec. 2)."""
        return self.abar_at(t).sqrt()

    def sigma(self, t: Tensor | int) -> Tensor:
        """sigma_t = sqrt(1 - abar_t): the noise scale."""
        return (1 - self.abar_at(t)).sqrt()

    def log_snr(self, t: Tensor | int) -> Tensor:
        """lambda_t = log(alpha_t / sigma_t) (Lu et al. 2022, sec. 3.1); +inf at t = -1."""
        abar = self.abar_at(t)
        return 0.5 * (abar.log() - (1 - abar).log())

    def add_noise(self, x0: Tensor, eps: Tensor, t: Tensor) -> Tensor:
        """Sample q(x_t | x0) (DDPM eq. 4). x0, eps: (B, ...); t: (B,) long."""
        abar = self.abar_at(t.cpu()).to(device=x0.device, dtype=x0.dtype)
        abar = abar.view(-1, *([1] * (x0.ndim - 1)))
        return abar.sqrt() * x0 + (1 - abar).sqrt() * eps

    def timesteps(self, steps: int, spacing: str = "trailing") -> list[int]:
        """`steps` strictly decreasing timesteps in [0, T-1], followed by the clean-data sentinel -1.

        Spacings as named in Lin et al. 2024 (Table 2): `linspace` spans [0, T-1] evenly, `leading`
        is DDIM's `range(0, T, T // steps)`, `trailing` starts at T-1 and steps back by T / steps.
        """
        if not isinstance(steps, int) or isinstance(steps, bool) or not 1 <= steps <= self.T:
            raise DiffuseError(f"steps must be an integer in 1..{self.T} (the schedule's T), got {steps!r}")
        T = self.T
        if spacing == "linspace":
            ts = torch.linspace(0, T - 1, steps, dtype=torch.float64).round().long().flip(0)
        elif spacing == "leading":
            ts = (torch.arange(steps) * (T // steps)).flip(0)
        elif spacing == "trailing":
            ts = (torch.arange(T, 0, -T / steps, dtype=torch.float64).round().long() - 1)[:steps]
        else:
            raise DiffuseError(f"unknown timestep spacing {spacing!r}; allowed: {', '.join(SPACINGS)}")
        return [int(t) for t in ts] + [-1]


def from_betas(betas: Tensor, name: str) -> Schedule:
    """abar_t = prod_{s<=t} (1 - beta_s) (DDPM, below eq. 4)."""
    return Schedule(abar=torch.cumprod(1 - torch.as_tensor(betas, dtype=torch.float64), 0), name=name)
