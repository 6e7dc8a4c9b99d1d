"""EDM's objective (Karras et al. 2022, sec. 5 and Table 1): x = x0 + sigma eps with ln sigma ~ N(P_mean, P_std^2),
the denoiser D(x; sigma) = c_skip x + c_out F(c_in x; c_noise) with

    c_skip = sigma_data^2 / (sigma^2 + sigma_data^2),  c_out = sigma sigma_data / sqrt(sigma^2 + sigma_data^2),
    c_in = 1 / sqrt(sigma^2 + sigma_data^2),            c_noise = ln(sigma) / 4,

trained with lambda(sigma) = 1 / c_out^2, so the network's own error || F - (x0 - c_skip x) / c_out ||^2 is
unweighted (eq. 8). At a sampler's timestep t, sigma = sigma_t / alpha_t and x = x_t / alpha_t. The network's
time input is 1000 c_noise (our networks embed time at the scale of timestep indices).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from diffuse import DiffuseError
from diffuse.objectives import Example, check_loss_weight
from diffuse.schedule import Schedule

TIME_SCALE = 1000.0 / 4  # network time input = 1000 c_noise = 250 ln sigma


@dataclass(frozen=True)
class EDM:
    """EDM's preconditioned denoiser, trained at log-normal sigma."""

    sigma_data: float = 0.5  # the data's standard deviation (EDM: 0.5 for images in [-1, 1])
    p_mean: float = -1.2  # ln sigma ~ N(p_mean, p_std^2) while training
    p_std: float = 1.2
    loss_weight: str = "edm"  # lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2 (eq. 8 / Table 1)

    def __post_init__(self) -> None:
        for name in ("sigma_data", "p_mean", "p_std"):
            if not isinstance(getattr(self, name), (int, float)) or isinstance(getattr(self, name), bool):
                raise DiffuseError(f"objective.{name} must be a number, got {getattr(self, name)!r}")
        if not self.sigma_data > 0:
            raise DiffuseError(f"objective.sigma_data must be > 0, got {self.sigma_data}")
        if not self.p_std > 0:
            raise DiffuseError(f"objective.p_std must be > 0, got {self.p_std}")
        check_loss_weight("edm", self.loss_weight, ("edm",))

    def check(self, schedule: Schedule) -> None:
        if schedule.terminal_snr == 0:
            raise DiffuseError("objective=edm preconditions with sigma = sigma_t / alpha_t, which is infinite at zero "
                               "terminal SNR, where this schedule ends; use a schedule with a finite largest noise "
                               "level (schedule=edm)")

    def scalings(self, sigma):
        """(c_skip, c_out, c_in) at sigma (a float or a tensor)."""
        sd2 = self.sigma_data**2
        root = (sigma**2 + sd2) ** 0.5
        return sd2 / (sigma**2 + sd2), sigma * self.sigma_data / root, 1 / root

    def example(self, schedule: Schedule, x0: Tensor, generator: torch.Generator) -> Example:
        log_sigma = self.p_mean + self.p_std * torch.randn(x0.shape[0], device=x0.device, generator=generator)  # (B,)
        eps = torch.randn(x0.shape, device=x0.device, generator=generator)
        sigma = log_sigma.exp().view(-1, 1, 1, 1)
        c_skip, c_out, c_in = self.scalings(sigma)
        x = x0 + sigma * eps  # (B,C,H,W)
        return Example(c_in * x, TIME_SCALE * log_sigma, (x0 - c_skip * x) / c_out)

    @staticmethod
    def sigma(schedule: Schedule, t: float) -> tuple[float, float]:
        """(sigma, alpha_t) at the schedule's timestep t: x = x_t / alpha_t has noise level sigma."""
        return schedule.sigma_ve(t).item(), schedule.alpha(t).item()

    def network_input(self, schedule: Schedule, x_t: Tensor, t: float) -> tuple[Tensor, Tensor]:
        sigma, alpha = self.sigma(schedule, t)
        c_in = self.scalings(sigma)[2]
        return x_t * (c_in / alpha), torch.full((x_t.shape[0],), TIME_SCALE * math.log(sigma), device=x_t.device)

    def to_eps_x0(self, out: Tensor, x_t: Tensor, schedule: Schedule, t: float) -> tuple[Tensor, Tensor]:
        sigma, alpha = self.sigma(schedule, t)
        c_skip, c_out, _ = self.scalings(sigma)
        x0 = (c_skip / alpha) * x_t + c_out * out  # D(x; sigma), x = x_t / alpha
        return (x_t - alpha * x0) / (alpha * sigma), x0  # eps = (x - x0) / sigma; alpha sigma = sigma_t

    def noising(self, schedule: Schedule, time: Tensor) -> tuple[Tensor, Tensor]:
        sigma = (time.double() / TIME_SCALE).exp().view(-1, 1, 1, 1)
        c_in = self.scalings(sigma)[2]
        return c_in, c_in * sigma

    def target(self, schedule: Schedule, x0: Tensor, eps: Tensor, time: Tensor) -> Tensor:
        sigma = (time.double() / TIME_SCALE).exp().view(-1, 1, 1, 1)
        c_skip, c_out, _ = self.scalings(sigma)
        return (x0 - c_skip * (x0 + sigma * eps)) / c_out
