"""The training loss of any objective: a (weighted) squared error between the network's output and the
objective's target, with label dropout for conditional networks (classifier-free guidance)."""

from __future__ import annotations

import torch
from torch import Tensor

from diffuse.models import Network
from diffuse.objectives import Objective
from diffuse.schedule import Schedule


def diffusion_loss(
    network: Network,
    objective: Objective,
    schedule: Schedule,
    x0: Tensor,  # (B,C,H,W) data in [-1, 1]
    generator: torch.Generator,  # draws the time, the noise and the label dropout, in that order
    labels: Tensor | None = None,  # (B,) class labels for a conditional network
    drop_prob: float = 0.0,  # labels become the null class (index num_classes) with this probability
) -> Tensor:
    """Mean over the batch of weight * || target - network(x_in, time[, labels]) ||^2 (Ho et al. 2020, eq. 14, for
    DDPM's objective); label dropout trains the unconditional network alongside (Ho & Salimans 2022, Alg. 1)."""
    example = objective.example(schedule, x0, generator)
    if labels is None:
        out = network(example.x_in, example.time)
    else:
        if drop_prob > 0:
            drop = torch.rand(x0.shape[0], device=x0.device, generator=generator) < drop_prob
            labels = torch.where(drop, torch.full_like(labels, network.num_classes), labels)
        out = network(example.x_in, example.time, labels)
    error = (out.float() - example.target).pow(2)  # (B,C,H,W)
    return error.mean() if example.weight is None else (example.weight * error).mean()
