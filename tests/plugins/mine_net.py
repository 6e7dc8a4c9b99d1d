"""A network added by test_extending.py as one file plus one YAML: two convolutions around a time (and label)
embedding, keeping the contract of diffuse.models."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class MineNet(nn.Module):
    def __init__(self, in_channels: int = 1, width: int = 8, conditional: bool = False, num_classes: int = 10):
        super().__init__()
        self.conditional, self.num_classes = conditional, num_classes
        self.inp = nn.Conv2d(in_channels, width, 3, padding=1)
        self.time = nn.Linear(2, width)
        self.labels = nn.Embedding(num_classes + 1, width) if conditional else None  # the last row: null
        self.out = nn.Conv2d(width, in_channels, 3, padding=1)

    def forward(self, x: Tensor, time: Tensor, labels: Tensor | None = None) -> Tensor:
        emb = self.time(torch.stack([torch.sin(time / 100), torch.cos(time / 100)], 1))  # (B,width)
        if self.labels is not None:
            if labels is None:
                labels = torch.full((x.shape[0],), self.num_classes, dtype=torch.long, device=x.device)
            emb = emb + self.labels(labels)
        elif labels is not None:
            raise ValueError("this network is unconditional: it takes no labels")
        return self.out(F.silu(self.inp(x) + emb[:, :, None, None]))
