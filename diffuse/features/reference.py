"""Features of a real split and their Gaussian statistics, computed once per data set, split, extractor and n,
and cached as safetensors; and the statistics as a file to share (`mu`, `sigma`: the way FID references travel)."""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save as safetensors_bytes
from torch import Tensor

from diffuse import DiffuseError, metrics
from diffuse.checkpoint import write_atomic
from diffuse.data import ImageData
from diffuse.features.cache import fingerprint, read_tensors
from diffuse.features.extractors import Extractor

log = logging.getLogger(__name__)


@dataclass
class Reference:
    """What images are scored against: the statistics FID needs, and (from a real split) the features, logits
    and labels that KID, precision/recall and class coverage need."""

    stats: metrics.GaussianStats
    features: Tensor | None = None  # (N,D) float32
    logits: Tensor | None = None  # (N,K) float32
    labels: Tensor | None = None  # (N,)


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
            return Reference(metrics.GaussianStats(t["mu"], t["cov"], len(t["features"])), t["features"], t["logits"],
                             t["labels"])
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
    return Reference(stats, features, logits, labels)


STATS_FORMAT = "diffuse.reference-stats/1"


@dataclass
class StatsFile:
    """Reference statistics read from a file (ours, or pytorch-fid's and ADM's `mu`/`sigma`)."""

    path: Path
    stats: metrics.GaussianStats
    extractor: str | None  # the extractor id (name and weights hash) that made them; None: a foreign file
    image_shape: tuple[int, int, int] | None  # (C,H,W) of the images they describe, when recorded
    source: str  # e.g. "mnist test split, 10000 images"

    @property
    def kind(self) -> str:
        """The extractor kind; a file that records none holds FID Inception statistics (pytorch-fid's, ADM's)."""
        return self.extractor.split("-")[0] if self.extractor else "inception"


def write_stats(path: Path, ref: Reference, extractor: Extractor, data: ImageData, split: str) -> None:
    """`mu` and `sigma` of a reference (float64, as pytorch-fid's --save-stats and ADM's reference batches hold
    them) with the extractor and images they come from: a file to share and score against (reference=FILE)."""
    buffer = io.BytesIO()
    np.savez(buffer, mu=ref.stats.mu.numpy(), sigma=ref.stats.cov.numpy(), n=np.int64(ref.stats.n),
             format=np.str_(STATS_FORMAT), extractor=np.str_(extractor.id),
             extractor_sha256=np.str_(extractor.weights_sha256), image_shape=np.array(data.shape, np.int64),
             source=np.str_(f"{data.name} {split} split, {ref.stats.n} images"))
    write_atomic(path, buffer.getvalue())


def read_stats(path: Path) -> StatsFile:
    """Statistics to score against; any malformed file is a DiffuseError. No pickle is read."""
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in ("mu", "sigma") if k not in z.files]
            if missing:
                raise DiffuseError(f"reference={path}: the .npz has no {missing[0]!r} array (statistics files hold mu "
                                   f"and sigma; it has {', '.join(z.files) or 'nothing'})")
            mu, sigma = z["mu"].astype(np.float64), z["sigma"].astype(np.float64)
            ours = "format" in z and str(z["format"]) == STATS_FORMAT
            extractor = str(z["extractor"]) if ours else None
            shape = tuple(int(v) for v in z["image_shape"]) if ours else None
            source = str(z["source"]) if ours else f"{path.name} (mu and sigma only)"
            n = int(z["n"]) if ours else 0
    except DiffuseError:
        raise
    except Exception as e:
        raise DiffuseError(f"reference={path}: not a readable .npz ({type(e).__name__}: {e})") from None
    if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)) or not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise DiffuseError(f"reference={path}: mu {mu.shape} and sigma {sigma.shape} are not a mean and covariance")
    return StatsFile(path, metrics.GaussianStats(torch.from_numpy(mu), torch.from_numpy(sigma), n), extractor, shape,
                     source)
