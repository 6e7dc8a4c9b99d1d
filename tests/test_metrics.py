"""Quality metrics against closed forms, brute-force definitions and torchmetrics' reference implementations."""

import numpy as np
import pytest
import torch
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.inception import InceptionScore
from torchmetrics.image.kid import KernelInceptionDistance

from diffuse import DiffuseError
from diffuse import metrics
from diffuse.metrics import GaussianStats


def gaussian(n: int, mu, std, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, len(mu), generator=g, dtype=torch.float64) * torch.tensor(std) + torch.tensor(mu)


class Features(torch.nn.Module):
    """A "feature extractor" that passes precomputed features through, for torchmetrics' metrics."""

    def __init__(self, d: int):
        super().__init__()
        self.num_features = d

    def forward(self, x):
        return x


def test_fid_of_a_set_with_itself_is_zero():
    x = gaussian(500, [0.0] * 8, [1.0] * 8, 0) @ torch.randn(8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    s = metrics.gaussian_stats(x)
    assert s.mu.dtype == torch.float64 and s.cov.dtype == torch.float64
    assert metrics.frechet_distance(s, s) == pytest.approx(0.0, abs=1e-9)


def test_fid_of_two_diagonal_gaussians_is_the_closed_form():
    mu_a, mu_b = torch.tensor([0.0, 1.0, -2.0], dtype=torch.float64), torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64)
    va, vb = torch.tensor([1.0, 4.0, 0.25], dtype=torch.float64), torch.tensor([9.0, 1.0, 0.25], dtype=torch.float64)
    exact = float((mu_a - mu_b).square().sum() + (va.sqrt() - vb.sqrt()).square().sum())  # 5 + (4 + 1 + 0)
    got = metrics.frechet_distance(GaussianStats(mu_a, torch.diag(va), 2), GaussianStats(mu_b, torch.diag(vb), 2))
    assert got == pytest.approx(exact, rel=1e-12) and exact == pytest.approx(10.0)


def test_fid_of_scaled_full_covariances_is_the_closed_form():
    # S_b = c^2 S_a (not diagonal): tr((S_a S_b)^1/2) = c tr(S_a), so FID = |dmu|^2 + (1 - c)^2 tr(S_a)
    a = torch.randn(6, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    cov, c = a @ a.T + 0.1 * torch.eye(6, dtype=torch.float64), 1.7
    mu_a, mu_b = torch.zeros(6, dtype=torch.float64), torch.full((6,), 0.5, dtype=torch.float64)
    got = metrics.frechet_distance(GaussianStats(mu_a, cov, 2), GaussianStats(mu_b, c * c * cov, 2))
    assert got == pytest.approx(6 * 0.25 + (1 - c) ** 2 * float(cov.trace()), rel=1e-10)


def test_fid_from_samples_approaches_the_closed_form():
    a, b = gaussian(20000, [0.0, 0.0], [1.0, 2.0], 0), gaussian(20000, [1.0, 0.0], [2.0, 2.0], 1)
    got = metrics.frechet_distance(metrics.gaussian_stats(a), metrics.gaussian_stats(b))
    assert got == pytest.approx(1.0 + 1.0, abs=0.08)


def test_fid_matches_torchmetrics_on_the_same_features():
    a = gaussian(300, [0.0] * 16, [1.0] * 16, 0)
    b = gaussian(400, [0.2] * 16, [1.5] * 16, 1) @ torch.randn(16, 16, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    reference = FrechetInceptionDistance(feature=Features(16))
    reference.update(a, real=True)
    reference.update(b, real=False)
    ours = metrics.frechet_distance(metrics.gaussian_stats(a), metrics.gaussian_stats(b))
    assert ours == pytest.approx(float(reference.compute()), rel=1e-6)


def test_kid_matches_torchmetrics_on_the_whole_set_and_separates_distributions():
    real, fake = gaussian(200, [0.0] * 4, [1.0] * 4, 0), gaussian(200, [0.5] * 4, [1.0] * 4, 1)
    reference = KernelInceptionDistance(feature=torch.nn.Identity(), subsets=1, subset_size=200)
    reference.update(real, real=True)
    reference.update(fake, real=False)
    ours, std = metrics.kernel_distance(real, fake, subsets=1, subset_size=200, seed=0)
    assert ours == pytest.approx(float(reference.compute()[0]), rel=1e-9) and std == 0.0
    same, _ = metrics.kernel_distance(gaussian(1000, [0.0] * 4, [1.0] * 4, 3), gaussian(1000, [0.0] * 4, [1.0] * 4, 2),
                                      20, 500, seed=0)
    apart, _ = metrics.kernel_distance(real, fake, 20, 100, seed=0)
    assert abs(same) < 0.02 and apart > 1.0  # unbiased: about 0 for one distribution
    assert metrics.kernel_distance(real, fake, 20, 100, seed=3) == metrics.kernel_distance(real, fake, 20, 100, seed=3)


def brute_force_precision_recall(real: np.ndarray, fake: np.ndarray, k: int) -> tuple[float, float]:
    def radii(x):
        d = np.linalg.norm(x[:, None] - x[None], axis=-1)
        return np.sort(d, axis=1)[:, k]  # index 0 is the point itself

    def inside(points, centres, r):
        d = np.linalg.norm(points[:, None] - centres[None], axis=-1)
        return float(np.mean([(d[i] <= r).any() for i in range(len(points))]))

    return inside(fake, real, radii(real)), inside(real, fake, radii(fake))


def test_precision_recall_match_the_definition():
    real = gaussian(80, [0.0] * 5, [1.0] * 5, 0).float()
    fake = gaussian(70, [0.7] * 5, [0.5] * 5, 1).float()
    got = metrics.precision_recall(real, fake, k=3)
    want = brute_force_precision_recall(real.numpy(), fake.numpy(), 3)
    assert got == pytest.approx(want, abs=1e-9)
    assert 0 < got[0] < 1 and 0 < got[1] < 1
    assert metrics.precision_recall(real, real, k=3) == (1.0, 1.0)
    assert metrics.precision_recall(real, real + 100, k=3) == (0.0, 0.0)


def test_classifier_score_matches_torchmetrics_and_its_bounds():
    logits = torch.randn(500, 10, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3
    reference = InceptionScore(feature=torch.nn.Identity(), splits=1)
    reference.update(logits)
    assert metrics.classifier_score(logits, splits=1)[0] == pytest.approx(float(reference.compute()[0]), rel=1e-9)
    confident = torch.full((1000, 10), -50.0, dtype=torch.float64)
    confident[torch.arange(1000), torch.arange(1000) % 10] = 50.0  # sure of each, all 10 classes equally often
    assert metrics.classifier_score(confident, splits=1)[0] == pytest.approx(10.0, rel=1e-6)  # exp(log 10)
    assert metrics.classifier_score(torch.zeros(100, 10), splits=10) == pytest.approx((1.0, 0.0))


def test_class_coverage_and_conditional_accuracy():
    real = torch.full((4,), 0.25, dtype=torch.float64)
    fake = torch.tensor([0.5, 0.5, 0.0, 0.0], dtype=torch.float64)
    assert metrics.class_coverage(fake, real) == pytest.approx((0.5, 0.5))
    assert metrics.class_coverage(real, real) == pytest.approx((1.0, 0.0))
    logits = torch.eye(3)[[0, 1, 2, 2]]  # reads 0, 1, 2, 2
    acc, per_class = metrics.conditional_accuracy(logits, torch.tensor([0, 1, 1, 2]), 4)
    assert acc == 0.75 and per_class == [1.0, 0.5, 1.0, None]


def test_too_few_images_is_a_clear_error():
    with pytest.raises(DiffuseError, match="at least 2"):
        metrics.gaussian_stats(torch.zeros(1, 3))
    with pytest.raises(DiffuseError, match="k-NN"):
        metrics.precision_recall(torch.zeros(3, 2), torch.zeros(3, 2), k=3)
