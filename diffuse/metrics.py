"""Sample-quality metrics on feature vectors: FID, KID, precision/recall, classifier score, class coverage.

Pure functions of tensors; the feature extractors and the files live in evaluate.py. Statistics are float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from diffuse import DiffuseError


@dataclass(frozen=True)
class GaussianStats:
    """Mean and covariance of a feature set, float64: what FID compares."""

    mu: Tensor  # (D,) float64
    cov: Tensor  # (D,D) float64
    n: int


def gaussian_stats(features: Tensor) -> GaussianStats:
    """Sample mean and unbiased covariance of (N,D) features, accumulated in float64."""
    if features.ndim != 2 or features.shape[0] < 2:
        raise DiffuseError(f"statistics need at least 2 feature vectors, got shape {tuple(features.shape)}")
    f = features.double()
    mu = f.mean(0)
    centred = f - mu
    return GaussianStats(mu=mu, cov=centred.T @ centred / (f.shape[0] - 1), n=f.shape[0])


def _sqrt_psd(a: Tensor) -> Tensor:
    """Symmetric square root of a positive semi-definite matrix (eigenvalues below 0 from round-off -> 0)."""
    w, v = torch.linalg.eigh((a + a.T) / 2)
    return (v * w.clamp(min=0).sqrt()) @ v.T


def frechet_distance(a: GaussianStats, b: GaussianStats) -> float:
    """FID (Heusel et al. 2017, eq. 6): |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)).
    tr((S_a S_b)^(1/2)) = sum of sqrt(eig(S_a^(1/2) S_b S_a^(1/2))), a symmetric PSD form: no complex round-off."""
    root_a = _sqrt_psd(a.cov)
    inner = root_a @ b.cov @ root_a
    cross = torch.linalg.eigvalsh((inner + inner.T) / 2).clamp(min=0).sqrt().sum()
    d = (a.mu - b.mu).square().sum() + a.cov.trace() + b.cov.trace() - 2 * cross
    return float(d.clamp(min=0))


def kernel_distance(real: Tensor, fake: Tensor, subsets: int, subset_size: int, seed: int) -> tuple[float, float]:
    """KID (Binkowski et al. 2018): unbiased MMD^2 with the kernel (x.y/D + 1)^3, mean and (population) std over
    random subsets. The kernel and MMD are torchmetrics'; the subsets come from a seeded generator, not the
    global RNG (training may run beside an evaluation)."""
    from torchmetrics.image.kid import poly_mmd

    size = min(subset_size, len(real), len(fake))
    if size < 2:
        raise DiffuseError(f"KID needs at least 2 real and 2 generated images, got {len(real)} and {len(fake)}")
    g = torch.Generator().manual_seed(seed)
    r, f = real.double(), fake.double()
    scores = torch.stack([poly_mmd(r[torch.randperm(len(r), generator=g)[:size]],
                                   f[torch.randperm(len(f), generator=g)[:size]]) for _ in range(subsets)])
    return float(scores.mean()), float(scores.std(unbiased=False))


def kth_neighbour_radii(features: Tensor, k: int, chunk: int = 2048) -> Tensor:
    """Distance from each row of (N,D) features to its k-th nearest other row: (N,)."""
    if not 1 <= k < len(features):
        raise DiffuseError(f"k-NN radii need 1 <= k < N, got k={k} with N={len(features)}")
    f = features.float()
    radii = []
    for start in range(0, len(f), chunk):
        d = torch.cdist(f[start:start + chunk], f)  # (chunk,N); the zero self-distance is the 0-th neighbour
        radii.append(d.kthvalue(k + 1, dim=1).values)
    return torch.cat(radii)


def manifold_coverage(points: Tensor, centres: Tensor, radii: Tensor, chunk: int = 2048) -> float:
    """Share of `points` inside at least one ball (centre_i, radius_i): the k-NN manifold estimate."""
    p, c = points.float(), centres.float()
    inside = 0
    for start in range(0, len(p), chunk):
        d = torch.cdist(p[start:start + chunk], c)  # (chunk,M)
        inside += int((d <= radii[None, :]).any(dim=1).sum())
    return inside / len(p)


def precision_recall(real: Tensor, fake: Tensor, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019, eqs. 1-3): precision is the share of generated
    samples inside the real k-NN manifold, recall the share of real samples inside the generated one."""
    precision = manifold_coverage(fake, real, kth_neighbour_radii(real, k))
    recall = manifold_coverage(real, fake, kth_neighbour_radii(fake, k))
    return precision, recall


def classifier_score(logits: Tensor, splits: int = 10, seed: int = 0) -> tuple[float, float]:
    """Inception score (Salimans et al. 2016, sec. 4): exp(E_x KL(p(y|x) || p(y))), mean and std over `splits`
    parts of a seeded shuffle, on any classifier's logits (N,K). Same formula as torchmetrics' InceptionScore."""
    if not 1 <= splits <= len(logits):
        raise DiffuseError(f"the classifier score needs 1 <= splits <= N, got {splits} splits of {len(logits)} images")
    order = torch.randperm(len(logits), generator=torch.Generator().manual_seed(seed))
    scores = []
    for part in logits.double()[order].tensor_split(splits):  # exactly `splits` parts
        log_p = part.log_softmax(1)  # (n,K) log p(y|x)
        log_marginal = log_p.exp().mean(0, keepdim=True).log()  # (1,K) log p(y)
        scores.append((log_p.exp() * (log_p - log_marginal)).sum(1).mean().exp())
    s = torch.stack(scores)
    return float(s.mean()), float(s.std()) if splits > 1 else 0.0


def class_histogram(logits: Tensor, num_classes: int) -> Tensor:
    """Share of images the classifier assigns to each class: (K,) float64."""
    return torch.bincount(logits.argmax(1), minlength=num_classes).double() / len(logits)


def class_coverage(fake: Tensor, real: Tensor, threshold: float = 0.5) -> tuple[float, float]:
    """Mode coverage from two class histograms (K,): the share of classes generated at least `threshold` times
    as often as they occur in the real data, and the total-variation distance between the histograms."""
    present = real > 0
    covered = ((fake >= threshold * real) & present).sum() / present.sum()
    return float(covered), float(0.5 * (fake - real).abs().sum())


def conditional_accuracy(logits: Tensor, labels: Tensor, num_classes: int) -> tuple[float, list[float | None]]:
    """Share of images asked for class k that the classifier reads as k: overall, and per class (None where no
    image asked for that class)."""
    hit = logits.argmax(1) == labels
    per_class = []
    for k in range(num_classes):
        asked = labels == k
        per_class.append(float(hit[asked].double().mean()) if asked.any() else None)
    return float(hit.double().mean()), per_class

