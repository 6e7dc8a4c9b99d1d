"""An objective added by test_extending.py as one file plus one YAML: the network predicts the score
-eps / sigma_t from the log-SNR as its time input, trained with the weight sigma_t^2 (denoising score matching,
Song & Ermon 2019)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from diffuse import DiffuseError
from diffuse.objectives import Example
from diffuse.schedule import Schedule


@dataclass(frozen=True)
class MineScore:
    def check(self, schedule: Schedule) -> None:
        if schedule.terminal_snr == 0:
            raise DiffuseError("the score objective needs alpha_t > 0: it cannot use zero terminal SNR")

    def example(self, schedule: Schedule, x0: Tensor, generator: torch.Generator) -> Example:
        t = torch.randint(0, schedule.T, (x0.shape[0],), device=x0.device, generator=generator)
        eps = torch.randn(x0.shape, device=x0.device, generator=generator)
        alpha, sigma = schedule.scales(t)
        time = (alpha / sigma).log().flatten()  # the log-SNR lambda_t
        return Example(alpha * x0 + sigma * eps, time, -eps / sigma, sigma**2)

    def network_input(self, schedule: Schedule, x_t: Tensor, t: float) -> tuple[Tensor, Tensor]:
        return x_t, torch.full((x_t.shape[0],), schedule.log_snr(t).item(), device=x_t.device)

    def to_eps_x0(self, out: Tensor, x_t: Tensor, schedule: Schedule, t: float) -> tuple[Tensor, Tensor]:
        alpha, sigma = schedule.alpha(t).item(), schedule.sigma(t).item()
        eps = -sigma * out
        return eps, (x_t - sigma * eps) / alpha

    def noising(self, schedule: Schedule, time: Tensor) -> tuple[Tensor, Tensor]:
        lam = time.double().view(-1, 1, 1, 1)  # alpha^2 = sigmoid(2 lambda), sigma^2 = sigmoid(-2 lambda)
        return torch.sigmoid(2 * lam).sqrt(), torch.sigmoid(-2 * lam).sqrt()

    def target(self, schedule: Schedule, x0: Tensor, eps: Tensor, time: Tensor) -> Tensor:
        return -eps / self.noising(schedule, time)[1]
