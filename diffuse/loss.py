"""The training loss of any objective: a (weighted) squared error between the network's output and the
objective's target, with label dropout for conditional networks (classifier-free guidance)."""

from __future__ import annotations

import torch
from torch import Tensor

from diffuse.models import Network
from diffuse.objectives import Objective
from diffuse.schedule import Schedule
from diffuse.superres import degrade, upsample


def diffusion_loss(
    network: Network,
    objective: Objective,
    schedule: Schedule,
    x0: Tensor,  # (B,C,H,W) data in [-1, 1]: the whole (global) batch
    generator: torch.Generator,  # draws the time, the noise and the label dropout of the whole batch, in that order
    labels: Tensor | None = None,  # (B,) class labels for a conditional network
    drop_prob: float = 0.0,  # labels become the null class with this probability
    null_label: int | None = None,  # the network's null class (index num_classes)
    part: slice = slice(None),  # the examples this process trains on (its rank's share of the batch)
    lowres: int = 0,  # super-resolution: the network sees x0 degraded to this side and upsampled (0: off)
) -> Tensor:
    """Mean over `part` of weight * || target - network(x_in, time[, labels]) ||^2 (Ho et al. 2020, eq. 14, for
    DDPM's objective); label dropout trains the unconditional network alongside (Ho & Salimans 2022, Alg. 1). The
    random draws cover the whole batch whatever `part` is, so W ranks, each averaging its share and then
    averaging across ranks, compute the loss of one process on the whole batch. With `lowres` the network is
    conditioned on the degraded x0 (SR3, Saharia et al. 2021, sec. 2.2)."""
    example = objective.example(schedule, x0, generator)
    extra = {"cond": upsample(degrade(x0[part], lowres), x0.shape[-1])} if lowres else {}  # (b,C,H,W)
    if labels is not None and drop_prob > 0:
        drop = torch.rand(x0.shape[0], device=x0.device, generator=generator) < drop_prob
        labels = torch.where(drop, torch.full_like(labels, null_label), labels)
    if labels is None:
        out = network(example.x_in[part], example.time[part], **extra)
    else:
        out = network(example.x_in[part], example.time[part], labels[part], **extra)
    error = (out.float() - example.target[part]).pow(2)  # (b,C,H,W)
    return error.mean() if example.weight is None else (example.weight[part] * error).mean()
