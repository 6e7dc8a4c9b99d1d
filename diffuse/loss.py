"""The simple denoising objective (Ho et al. 2020, eq. 14), for any parameterization."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from diffuse.parameterization import target
from diffuse.schedule import Schedule


def diffusion_loss(
    model: nn.Module,
    schedule: Schedule,
    x0: Tensor,  # (B,C,H,W) data in [-1, 1]
    parameterization: str,
    generator: torch.Generator,
    abar_table: Tensor | None = None,  # (T,) schedule.abar on x0's device, to skip a host copy per step
    labels: Tensor | None = None,  # (B,) class labels for a conditional model
    null_label: int | None = None,  # the model's null class: labels become it with probability `drop_prob`
    drop_prob: float = 0.0,
) -> Tensor:
    """Mean over the batch of || target - model(x_t, t[, labels]) ||^2 with t ~ U{0..T-1}, eps ~ N(0, I); label
    dropout trains the unconditional model alongside (classifier-free guidance, Ho & Salimans 2022, Alg. 1)."""
    B = x0.shape[0]
    t = torch.randint(0, schedule.T, (B,), device=x0.device, generator=generator)  # (B,)
    eps = torch.randn(x0.shape, device=x0.device, generator=generator)
    table = abar_table if abar_table is not None else schedule.abar.to(x0.device)
    abar = table[t].float().view(B, 1, 1, 1)
    alpha, sigma = abar.sqrt(), (1 - abar).sqrt()
    x_t = alpha * x0 + sigma * eps  # DDPM eq. 4
    if labels is None:
        out = model(x_t, t.float())
    else:
        if drop_prob > 0:
            drop = torch.rand(B, device=x0.device, generator=generator) < drop_prob
            labels = torch.where(drop, torch.full_like(labels, null_label), labels)
        out = model(x_t, t.float(), labels)
    return (out.float() - target(x0, eps, alpha, sigma, parameterization)).pow(2).mean()
