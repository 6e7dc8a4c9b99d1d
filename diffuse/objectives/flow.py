"""Flow matching with the linear interpolant (Lipman et al. 2023, eq. 22 with sigma_min = 0; rectified flow, Liu
et al. 2023): x_tau = (1 - tau) x0 + tau eps, the network predicts the velocity v = eps - x0, tau drawn from a
logit-normal or uniform density and optionally shifted toward noise (Esser et al. 2024, eqs. 19 and 23).

At a sampler's timestep t of any schedule, tau = sigma_t / (alpha_t + sigma_t) has the same signal-to-noise ratio,
and x_tau = x_t / (alpha_t + sigma_t). The network's time input is 1000 tau (as diffusers' flow schedulers).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from diffuse import DiffuseError
from diffuse.objectives import Example, check_loss_weight
from diffuse.schedule import Schedule
from diffuse.schedules.flow import flow_time, shifted

TIME_SCALE = 1000.0  # network time input = TIME_SCALE * tau
DENSITIES = ("logit_normal", "uniform")


@dataclass(frozen=True)
class Flow:
    """The network predicts eps - x0 at tau ~ sigmoid(N(mean, std^2)) (or U(0, 1)), then shifted by `shift`."""

    time_density: str = "logit_normal"
    mean: float = 0.0  # logit-normal location (SD3: 0)
    std: float = 1.0  # logit-normal scale (SD3: 1)
    shift: float = 1.0  # tau -> shift tau / (1 + (shift - 1) tau); 1 = none
    loss_weight: str = "none"  # flow matching's loss is unweighted in tau; its density does the weighting

    def __post_init__(self) -> None:
        if self.time_density not in DENSITIES:
            raise DiffuseError(f"unknown objective.time_density {self.time_density!r}; allowed: {', '.join(DENSITIES)}")
        for name in ("mean", "std", "shift"):
            if not isinstance(getattr(self, name), (int, float)) or isinstance(getattr(self, name), bool):
                raise DiffuseError(f"objective.{name} must be a number, got {getattr(self, name)!r}")
        if not self.std > 0:
            raise DiffuseError(f"objective.std (the logit-normal's scale) must be > 0, got {self.std}")
        if not self.shift > 0:
            raise DiffuseError(f"objective.shift must be > 0, got {self.shift}")
        check_loss_weight("flow", self.loss_weight, ("none",))

    def check(self, schedule: Schedule) -> None:
        """Any schedule: tau runs over [0, 1], so every noise level, pure noise included, has its tau."""

    def draw_tau(self, n: int, device, generator: torch.Generator) -> Tensor:
        """The training density of tau (B,): logit-normal (Esser et al. 2024, eq. 19) or uniform, then shifted."""
        if self.time_density == "uniform":
            tau = torch.rand(n, device=device, generator=generator)
        else:
            tau = torch.sigmoid(self.mean + self.std * torch.randn(n, device=device, generator=generator))
        return shifted(tau, self.shift) if self.shift != 1 else tau

    def example(self, schedule: Schedule, x0: Tensor, generator: torch.Generator) -> Example:
        tau = self.draw_tau(x0.shape[0], x0.device, generator)  # (B,)
        eps = torch.randn(x0.shape, device=x0.device, generator=generator)
        return Example(self._noised(x0, eps, tau), TIME_SCALE * tau, eps - x0)

    @staticmethod
    def _noised(x0: Tensor, eps: Tensor, tau: Tensor) -> Tensor:
        tau = tau.view(-1, 1, 1, 1)
        return (1 - tau) * x0 + tau * eps  # (B,C,H,W)

    def network_input(self, schedule: Schedule, x_t: Tensor, t: float) -> tuple[Tensor, Tensor]:
        tau, scale = flow_time(schedule, t)
        return x_t / scale, torch.full((x_t.shape[0],), TIME_SCALE * tau, device=x_t.device)

    def to_eps_x0(self, out: Tensor, x_t: Tensor, schedule: Schedule, t: float) -> tuple[Tensor, Tensor]:
        tau, scale = flow_time(schedule, t)
        x = x_t / scale  # x_tau = (1 - tau) x0 + tau eps, and out = eps - x0
        return x + (1 - tau) * out, x - tau * out

    def noising(self, schedule: Schedule, time: Tensor) -> tuple[Tensor, Tensor]:
        tau = (time / TIME_SCALE).double().view(-1, 1, 1, 1)
        return 1 - tau, tau

    def target(self, schedule: Schedule, x0: Tensor, eps: Tensor, time: Tensor) -> Tensor:
        return eps - x0
