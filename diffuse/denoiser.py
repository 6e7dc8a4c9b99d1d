"""Denoisers: callables `(x_t (B,C,H,W), t) -> (eps, x0)` that every sampler consumes."""

from __future__ import annotations

import contextlib
from typing import Callable

import torch
from torch import Tensor, nn

from diffuse import DiffuseError
from diffuse.parameterization import check, check_schedule, to_eps_x0
from diffuse.schedule import Schedule


def dynamic_threshold(x0: Tensor, percentile: float) -> Tensor:
    """Imagen's dynamic thresholding (Saharia et al. 2022, sec. 2.3): s = max(1, the percentile of |x0| per
    sample), then x0 <- clip(x0, -s, s) / s. x0: (B,C,H,W)."""
    s = torch.quantile(x0.abs().flatten(1).float(), percentile, dim=1).clamp(min=1.0).view(-1, 1, 1, 1)
    return torch.maximum(torch.minimum(x0, s), -s) / s


class ModelDenoiser:
    """A network plus what its output means; optional x0 clipping; counts its evaluations (NFE)."""

    def __init__(self, model: nn.Module, schedule: Schedule, parameterization: str, precision: str = "fp32",
                 clip_x0: bool = False, threshold: float = 0.0):
        self.model, self.schedule, self.parameterization = model, schedule, check(parameterization)
        check_schedule(parameterization, schedule.terminal_snr)
        if not 0 <= threshold <= 1:
            raise DiffuseError(f"dynamic threshold percentile must be in (0, 1], or 0 for off; got {threshold}")
        self.precision, self.clip_x0, self.threshold = precision, clip_x0, threshold
        self.nfe = 0

    def _autocast(self, device: torch.device):
        if self.precision == "bf16":
            return torch.autocast(device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @torch.no_grad()
    def __call__(self, x_t: Tensor, t: float) -> tuple[Tensor, Tensor]:
        self.nfe += 1
        t_batch = torch.full((x_t.shape[0],), float(t), device=x_t.device)  # (B,)
        with self._autocast(x_t.device):
            out = self.model(x_t, t_batch)
        alpha, sigma = self.schedule.alpha(t).item(), self.schedule.sigma(t).item()
        eps, x0 = to_eps_x0(out.float(), x_t, alpha, sigma, self.parameterization)
        if self.clip_x0 or self.threshold:
            x0 = dynamic_threshold(x0, self.threshold) if self.threshold else x0.clamp(-1, 1)
            eps = (x_t - alpha * x0) / sigma  # keep (eps, x0) consistent with x_t
        return eps, x0


def eps_denoiser(eps_fn: Callable[[Tensor, float], Tensor], schedule: Schedule) -> Callable[[Tensor, float], tuple[Tensor, Tensor]]:
    """Wrap your own function `(x_t, t) -> eps` into a denoiser for any sampler."""

    def denoise(x_t: Tensor, t: float) -> tuple[Tensor, Tensor]:
        return to_eps_x0(eps_fn(x_t, t), x_t, schedule.alpha(t).item(), schedule.sigma(t).item(), "eps")

    return denoise
