"""Features of a real split and their Gaussian statistics, computed once per data set, split, extractor and n,
and cached as safetensors."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save as safetensors_bytes
from torch import Tensor

from diffuse import metrics
from diffuse.checkpoint import write_atomic
from diffuse.data import ImageData
from diffuse.features.cache import fingerprint, read_tensors
from diffuse.features.extractors import Extractor

log = logging.getLogger(__name__)


@dataclass
class Reference:
    """Features of a real split, and what FID needs of them."""

    features: Tensor  # (N,D) float32
    logits: Tensor  # (N,K) float32
    labels: Tensor  # (N,)
    stats: metrics.GaussianStats


def reference_features(data: ImageData, split: str, extractor: Extractor, cache_dir: Path,
                       n: int | None = None) -> Reference:
    """Features of `data` (the first `n` images of a fixed permutation when n is given), cached per data set,
    split, shape, extractor weights and n."""
    C, H, W = data.shape
    tag = "all" if n is None or n >= len(data) else f"n{n}"
    path = cache_dir / f"reference-{data.name}-{split}-{C}x{H}x{W}-{fingerprint(data)}-{tag}-{extractor.id}.safetensors"
    if path.is_file():
        t, _ = read_tensors(path)
        if {"features", "logits", "labels", "mu", "cov"} <= t.keys():
            return Reference(t["features"], t["logits"], t["labels"],
                             metrics.GaussianStats(t["mu"], t["cov"], len(t["features"])))
    images, labels = data.images, data.labels
    if tag != "all":
        keep = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))[:n]
        images, labels = images[keep], labels[keep]
    log.info("computing %s features of %d %s %s images (once; cached at %s)", extractor.name, len(images),
             data.name, split, path)
    features, logits = extractor(images.permute(0, 2, 3, 1).numpy())
    stats = metrics.gaussian_stats(features)
    write_atomic(path, safetensors_bytes({"features": features.contiguous(), "logits": logits.contiguous(),
                                          "labels": labels.contiguous(), "mu": stats.mu, "cov": stats.cov}))
    return Reference(features, logits, labels, stats)
