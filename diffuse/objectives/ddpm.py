"""DDPM's objective (Ho et al. 2020, eq. 14) for an eps, x0 or v prediction: timesteps drawn uniformly from the
schedule's table, the timestep index as the network's time input, a squared error, unweighted or weighted by
Min-SNR-gamma (Hang et al. 2023, sec. 3.4).

v = alpha_t * eps - sigma_t * x0 (Salimans & Ho 2022, sec. 4), so with x_t = alpha_t x0 + sigma_t eps:
x0 = alpha_t x_t - sigma_t v and eps = sigma_t x_t + alpha_t v.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from diffuse import DiffuseError
from diffuse.objectives import Example, check_loss_weight
from diffuse.schedule import Schedule

PREDICTIONS = ("eps", "x0", "v")
LOSS_WEIGHTS = ("none", "min_snr")


def check_prediction(prediction: str) -> str:
    if not isinstance(prediction, str) or prediction not in PREDICTIONS:
        raise DiffuseError(f"unknown prediction {prediction!r}; allowed: {', '.join(PREDICTIONS)}")
    return prediction


def to_eps_x0(out: Tensor, x_t: Tensor, alpha, sigma, prediction: str) -> tuple[Tensor, Tensor]:
    """A prediction as (eps, x0). out, x_t: (B,C,H,W); alpha, sigma: floats or broadcastable tensors."""
    if prediction == "eps":
        return out, (x_t - sigma * out) / alpha  # DDPM eq. 15 rearranged
    if prediction == "x0":
        return (x_t - alpha * out) / sigma, out
    return sigma * x_t + alpha * out, alpha * x_t - sigma * out  # v


def target(x0: Tensor, eps: Tensor, alpha: Tensor, sigma: Tensor, prediction: str) -> Tensor:
    """What the network should predict for a training pair (x0, eps) at noise level (alpha, sigma)."""
    if prediction == "eps":
        return eps
    if prediction == "x0":
        return x0
    return alpha * eps - sigma * x0  # v


def min_snr_weight(snr: Tensor, gamma: float, prediction: str) -> Tensor:
    """Min-SNR-gamma (Hang et al. 2023, eq. 8 and sec. 3.4): min(SNR, gamma) as an x0 loss, written for the
    prediction's own error: / SNR for eps, / (SNR + 1) for v."""
    clipped = snr.clamp(max=gamma)
    if prediction == "eps":
        return clipped / snr
    if prediction == "v":
        return clipped / (snr + 1)
    return clipped


@dataclass(frozen=True)
class DDPM:
    """The network predicts `prediction` (eps | x0 | v) at integer timesteps t ~ U{0..T-1}."""

    prediction: str = "eps"
    loss_weight: str = "none"  # none | min_snr (checkpoints from before loss weights are unweighted)
    snr_gamma: float = 5.0  # min_snr's gamma

    def __post_init__(self) -> None:
        check_prediction(self.prediction)
        check_loss_weight(self.prediction, self.loss_weight, LOSS_WEIGHTS)
        if not (isinstance(self.snr_gamma, (int, float)) and self.snr_gamma > 0):
            raise DiffuseError(f"objective.snr_gamma must be > 0, got {self.snr_gamma!r}")

    def check(self, schedule: Schedule) -> None:
        """At zero terminal SNR (alpha = 0) an eps prediction carries no information about x0 (Lin et al. 2024,
        sec. 3.2)."""
        if self.prediction == "eps" and schedule.terminal_snr == 0:
            raise DiffuseError("a schedule with zero terminal SNR needs objective=v (or x0): at alpha = 0 an eps "
                               "prediction says nothing about x0")

    def example(self, schedule: Schedule, x0: Tensor, generator: torch.Generator) -> Example:
        B = x0.shape[0]
        t = torch.randint(0, schedule.T, (B,), device=x0.device, generator=generator)  # (B,)
        eps = torch.randn(x0.shape, device=x0.device, generator=generator)
        alpha, sigma = schedule.scales(t)  # (B,1,1,1) each
        x_t = alpha * x0 + sigma * eps  # DDPM eq. 4
        weight = None
        if self.loss_weight == "min_snr":  # at alpha = 0 (v only) the weight is 0: nothing to learn there
            weight = min_snr_weight(alpha**2 / sigma**2, self.snr_gamma, self.prediction)
        return Example(x_t, t.float(), target(x0, eps, alpha, sigma, self.prediction), weight)

    def network_input(self, schedule: Schedule, x_t: Tensor, t: float) -> tuple[Tensor, Tensor]:
        return x_t, torch.full((x_t.shape[0],), float(t), device=x_t.device)

    def to_eps_x0(self, out: Tensor, x_t: Tensor, schedule: Schedule, t: float) -> tuple[Tensor, Tensor]:
        return to_eps_x0(out, x_t, schedule.alpha(t).item(), schedule.sigma(t).item(), self.prediction)

    def noising(self, schedule: Schedule, time: Tensor) -> tuple[Tensor, Tensor]:
        return schedule.alpha(time).view(-1, 1, 1, 1), schedule.sigma(time).view(-1, 1, 1, 1)

    def target(self, schedule: Schedule, x0: Tensor, eps: Tensor, time: Tensor) -> Tensor:
        return target(x0, eps, *self.noising(schedule, time), self.prediction)
