"""Fresh Gaussian noise from explicit generators: one generator, or one per sample (batch-size invariant)."""

from __future__ import annotations

import torch
from torch import Tensor

Generators = torch.Generator | list[torch.Generator] | None


def randn_like(x: Tensor, generator: Generators) -> Tensor:
    """Standard normal noise shaped like x (B, ...); a list gives sample i its own generator."""
    if isinstance(generator, (list, tuple)):
        if len(generator) != x.shape[0]:
            raise ValueError(f"got {len(generator)} generators for a batch of {x.shape[0]}")
        return torch.stack([torch.randn(x.shape[1:], generator=g, device=x.device, dtype=x.dtype) for g in generator])
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
