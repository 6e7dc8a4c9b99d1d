"""Exponential moving average of weights, with the warm-up of Tan & Le (used by many DDPM codebases)."""

from __future__ import annotations

import torch
from torch import nn


def ema_decay(step: int, decay: float, warmup: bool) -> float:
    """The effective decay at `step`: min(decay, (1 + step) / (10 + step)) with warm-up, else `decay`."""
    return min(decay, (1 + step) / (10 + step)) if warmup else decay


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model, for every floating-point parameter and buffer."""
    e = [p for p in list(ema.parameters()) + list(ema.buffers()) if p.is_floating_point()]
    m = [p for p in list(model.parameters()) + list(model.buffers()) if p.is_floating_point()]
    torch._foreach_lerp_(e, m, 1.0 - decay)
