"""A feature extractor: a network that maps uint8 images to (features, logits), identified by its weights'
hash; which one a data set gets; and making it."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from diffuse.data import ImageData

KINDS = ("auto", "classifier", "inception")


class Extractor:
    """uint8 images (N,H,W,C) -> (features (N,D) float32, logits (N,K) float32), batched, on `device`."""

    def __init__(self, name: str, network: torch.nn.Module, weights_sha256: str, device: torch.device,
                 info: dict | None = None, batch_size: int = 500):
        self.name, self.weights_sha256, self.info = name, weights_sha256, info or {}
        self.network, self.device, self.batch_size = network.to(device).eval(), device, batch_size

    @property
    def id(self) -> str:
        return f"{self.name}-{self.weights_sha256[:12]}"

    @torch.no_grad()
    def __call__(self, images: np.ndarray) -> tuple[Tensor, Tensor]:
        feats, logits = [], []
        for start in range(0, len(images), self.batch_size):
            x = torch.from_numpy(np.ascontiguousarray(images[start:start + self.batch_size]))
            # (B,C,H,W) uint8 in one memory layout whatever the source's strides (they pick the convolution kernels,
            # and so the last bits of the features); a clone, as .contiguous() keeps odd strides of size-1 axes
            x = x.permute(0, 3, 1, 2).clone(memory_format=torch.contiguous_format).to(self.device)
            f, l = self.network(x)
            feats.append(f.float().cpu())
            logits.append(l.float().cpu())
        return torch.cat(feats), torch.cat(logits)


def choose_features(name: str, shape: tuple[int, int, int], num_classes: int) -> str:
    """`auto`: the domain classifier for labelled 1-channel images up to 64 px, else the FID Inception."""
    if name != "auto":
        return name
    C, H, W = shape
    return "classifier" if C == 1 and max(H, W) <= 64 and num_classes >= 2 else "inception"


def make_extractor(kind: str, reference: Callable[[str], ImageData], cache_dir: Path, device: torch.device,
                   classifier_steps: int, inception) -> Extractor:
    """The extractor `kind` names: the classifier of `reference`'s data set (trained at first use, then cached),
    or the Inception-v3 of FID from the weights `inception` (InceptionOptions) locates."""
    if kind == "classifier":
        from diffuse.features.classifier import classifier_extractor

        return classifier_extractor(reference("train"), reference("test"), cache_dir, device, steps=classifier_steps)
    from diffuse.features.inception_weights import inception_extractor

    return inception_extractor(inception, cache_dir, device)
