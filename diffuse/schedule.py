"""The discrete variance-preserving noise process of DDPM (Ho et al. 2020, eq. 4):

    x_t = sqrt(abar_t) * x0 + sqrt(1 - abar_t) * eps,   t = 0 .. T-1,

with the sentinel abar(-1) = 1 ("clean data"), so that every sampler's last step lands on x0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from diffuse import DiffuseError
from diffuse.validate import int_in, is_int

SPACINGS = ("linspace", "leading", "trailing", "karras", "logsnr", "time_quadratic")


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
        object.__setattr__(self, "_tables", {})  # device -> abar on that device, for `scales`

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

    @property
    def log_sigma_ve(self) -> Tensor:
        """log of sigma_VE = sigma_t / alpha_t, the noise level of x_t / alpha_t (Karras et al. 2022, eq. 4); (T,)."""
        return 0.5 * ((1 - self.abar).log() - self.abar.log())

    def abar_at(self, t: Tensor | float) -> Tensor:
        """abar_t for t = -1 or t in [0, T-1] (any shape), with abar(-1) = 1; float64.

        Fractional t interpolates log sigma_VE linearly between neighbouring steps (as k-diffusion does for
        discrete models), so Karras-spaced samplers can visit noise levels between the table's entries.
        """
        t = torch.as_tensor(t, dtype=torch.float64)
        if bool(((t != -1) & ~((t >= 0) & (t <= self.T - 1))).any()):  # NaN fails both comparisons
            raise DiffuseError(f"timestep out of range: allowed -1 or 0..{self.T - 1}, got {t.tolist()}")
        lo = t.floor().clamp(0, self.T - 1).long()
        hi = (lo + 1).clamp(max=self.T - 1)
        w = (t - lo).clamp(min=0)
        log_s = self.log_sigma_ve
        log_between = (1 - w) * log_s[lo] + w * log_s[hi]  # not torch.lerp: it computes inf - inf at w >= 0.5
        between = torch.sigmoid(-2 * torch.where(torch.isinf(log_s[hi]) & (w > 0), torch.inf, log_between))
        abar = torch.where(w == 0, self.abar[lo], between)
        return torch.where(t == -1, torch.ones_like(abar), abar)

    def t_of_sigma_ve(self, sigma: Tensor) -> Tensor:
        """The (fractional) timestep whose sigma_VE is `sigma`, inverting abar_at's interpolation; float64."""
        log_s, ls = self.log_sigma_ve, torch.as_tensor(sigma, dtype=torch.float64).log()
        if bool(((ls < log_s[0]) | (ls > log_s[-1])).any()):
            raise DiffuseError(f"sigma {sigma} lies outside the schedule's range [{log_s[0].exp():.4g}, {log_s[-1].exp():.4g}]")
        hi = torch.searchsorted(log_s, ls).clamp(1, self.T - 1)
        lo = hi - 1
        return lo + (ls - log_s[lo]) / (log_s[hi] - log_s[lo])

    def alpha(self, t: Tensor | int) -> Tensor:
        """alpha_t = sqrt(abar_t): the signal scale (DPM-Solver's notation, Lu et al. 2022, sec. 2)."""
        return self.abar_at(t).sqrt()

    def sigma(self, t: Tensor | int) -> Tensor:
        """sigma_t = sqrt(1 - abar_t): the noise scale."""
        return (1 - self.abar_at(t)).sqrt()

    def sigma_ve(self, t: Tensor | float) -> Tensor:
        """sigma_VE(t) = sigma_t / alpha_t, the noise level of x_t / alpha_t; 0 at t = -1, inf at zero SNR."""
        abar = self.abar_at(t)
        return ((1 - abar) / abar).sqrt()

    def log_snr(self, t: Tensor | int) -> Tensor:
        """lambda_t = log(alpha_t / sigma_t) (Lu et al. 2022, sec. 3.1); +inf at t = -1."""
        abar = self.abar_at(t)
        return 0.5 * (abar.log() - (1 - abar).log())

    def scales(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """(alpha_t, sigma_t) at integer timesteps t (B,) as (B,1,1,1) float32 on t's device, from a copy of the
        table kept on that device (no host copy per training step)."""
        table = self._tables.get(t.device)
        if table is None:
            table = self._tables[t.device] = self.abar.to(t.device)
        abar = table[t].float().view(-1, 1, 1, 1)
        return abar.sqrt(), (1 - abar).sqrt()

    def timesteps(self, steps: int, spacing: str = "trailing") -> list[float]:
        """`steps` strictly decreasing timesteps in [0, T-1], followed by the clean-data sentinel -1.

        Spacings as named in Lin et al. 2024 (Table 2): `linspace` spans [0, T-1] evenly, `leading`
        is DDIM's `range(0, T, T // steps)`, `trailing` starts at T-1 and steps back by T / steps; all three
        give integers. `karras` spaces sigma_VE from the schedule's largest to its smallest with rho = 7
        (Karras et al. 2022, eq. 5), at fractional timesteps. With steps = 1, `linspace` and `leading`
        visit only t = 0 (as in Lin et al.'s table): use `trailing` or `karras` for one-step sampling.
        """
        if not is_int(steps) or not 1 <= steps <= self.T:
            raise DiffuseError(f"steps must be an integer in 1..{self.T} (the schedule's T), got {steps!r}")
        T = self.T
        if spacing == "linspace":
            ts = torch.linspace(0, T - 1, steps, dtype=torch.float64).round().long().flip(0)
        elif spacing == "leading":
            ts = (torch.arange(steps) * (T // steps)).flip(0)
        elif spacing == "trailing":
            ts = (torch.arange(T, 0, -T / steps, dtype=torch.float64).round().long() - 1)[:steps]
        elif spacing == "karras":
            return karras_timesteps(self, steps) + [-1]
        elif spacing == "logsnr":
            return karras_timesteps(self, steps, rho=math.inf) + [-1]
        elif spacing == "time_quadratic":  # DEIS's quadratic time steps (Zhang & Chen 2023, sec. 5): denser near data
            ramp = torch.linspace(0, 1, steps, dtype=torch.float64) if steps > 1 else torch.zeros(1, dtype=torch.float64)
            return [float(t) for t in (T - 1) * (1 - ramp) ** 2] + [-1]
        else:
            raise DiffuseError(f"unknown timestep spacing {spacing!r}; allowed: {', '.join(SPACINGS)}")
        return [int(t) for t in ts] + [-1]


def karras_timesteps(schedule: Schedule, steps: int, rho: float = 7.0) -> list[float]:
    """Timesteps at sigma_i = (s_max^(1/rho) + i/(n-1) (s_min^(1/rho) - s_max^(1/rho)))^rho (Karras et al. 2022, eq. 5);
    rho = inf: even in log sigma, i.e. in log-SNR (DPM-Solver's spacing, Lu et al. 2022, sec. 3.3)."""
    log_s = schedule.log_sigma_ve
    if not torch.isfinite(log_s[-1]):
        name = "karras" if math.isfinite(rho) else "logsnr"
        raise DiffuseError(f"{name} spacing needs a finite largest noise level, and this schedule has zero terminal "
                           "SNR; use spacing=trailing")
    if steps == 1:
        return [float(schedule.T - 1)]
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    if math.isinf(rho):
        sigmas = (log_s[-1] + ramp * (log_s[0] - log_s[-1])).exp()
    else:
        s_min, s_max = log_s[0].exp(), log_s[-1].exp()
        sigmas = (s_max ** (1 / rho) + ramp * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho
    inner = schedule.t_of_sigma_ve(sigmas[1:-1])  # the ends are the table's ends exactly, free of round-off
    return [float(schedule.T - 1)] + [float(t) for t in inner] + [0.0]


MAX_T = 100_000


def check_T(T: int) -> int:
    """Schedules are tables of T entries: a bounded, positive integer."""
    return int_in(T, 2, MAX_T, "schedule T")


def from_betas(betas: Tensor, name: str, zero_terminal_snr: bool = False) -> Schedule:
    """abar_t = prod_{s<=t} (1 - beta_s) (DDPM, below eq. 4), optionally rescaled to zero terminal SNR."""
    abar = torch.cumprod(1 - torch.as_tensor(betas, dtype=torch.float64), 0)
    return Schedule(abar=rescale_zero_terminal_snr(abar) if zero_terminal_snr else abar, name=name)


def rescale_zero_terminal_snr(abar: Tensor) -> Tensor:
    """Shift and scale sqrt(abar) so that abar_0 is kept and abar_{T-1} = 0 (Lin et al. 2024, Algorithm 1)."""
    root = abar.sqrt()
    first, last = root[0].clone(), root[-1].clone()
    root = (root - last) * first / (first - last)
    return root**2
