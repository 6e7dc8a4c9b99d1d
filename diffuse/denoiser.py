"""Denoisers: callables `(x_t (B,C,H,W), t: int) -> (eps, x0)` that every sampler consumes."""

from __future__ import annotations

import contextlib
from typing import Callable

import torch
from torch import Tensor, nn

from diffuse.parameterization import check, to_eps_x0
from diffuse.schedule import Schedule


class ModelDenoiser:
    """A network plus what its output means; counts its evaluations (NFE)."""

    def __init__(self, model: nn.Module, schedule: Schedule, parameterization: str, precision: str = "fp32"):
        self.model, self.schedule, self.parameterization = model, schedule, check(parameterization)
        self.precision = precision
        self.nfe = 0

    def _autocast(self, device: torch.device):
        if self.precision == "bf16":
            return torch.autocast(device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @torch.no_grad()
    def __call__(self, x_t: Tensor, t: int) -> tuple[Tensor, Tensor]:
        self.nfe += 1
        t_batch = torch.full((x_t.shape[0],), float(t), device=x_t.device)  # (B,)
        with self._autocast(x_t.device):
            out = self.model(x_t, t_batch)
        alpha = self.schedule.alpha(t).item()
        sigma = self.schedule.sigma(t).item()
        return to_eps_x0(out.float(), x_t, alpha, sigma, self.parameterization)


def eps_denoiser(eps_fn: Callable[[Tensor, int], Tensor], schedule: Schedule) -> Callable[[Tensor, int], tuple[Tensor, Tensor]]:
    """Wrap your own function `(x_t, t) -> eps` into a denoiser for any sampler."""

    def denoise(x_t: Tensor, t: int) -> tuple[Tensor, Tensor]:
        return to_eps_x0(eps_fn(x_t, t), x_t, schedule.alpha(t).item(), schedule.sigma(t).item(), "eps")

    return denoise
