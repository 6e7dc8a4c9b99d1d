"""Scores of a set of images against a real split: every metric of their features, and the floor (real images
of the other split scored the same way: the best a model can do)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from diffuse import DiffuseError, metrics
from diffuse.features.extractors import Extractor
from diffuse.features.reference import Reference


@dataclass(frozen=True)
class ScoreSettings:
    """The scoring protocol, recorded beside the scores."""

    kid_subsets: int  # KID: mean and std over this many random subsets
    kid_subset_size: int  # of this size (capped at the number of images)
    pr_k: int  # neighbours for the precision/recall manifolds
    seed: int  # seeds the KID subsets and the score splits

    def __post_init__(self) -> None:
        if self.kid_subsets < 1 or self.kid_subset_size < 2 or self.pr_k < 1:
            raise DiffuseError("kid_subsets must be >= 1, kid_subset_size >= 2 and pr_k >= 1")


def score(features: Tensor, logits: Tensor, ref: Reference, settings: ScoreSettings,
          labels: Tensor | None = None, with_classes: bool = True) -> dict:
    """Every metric of (N,D) features and (N,K) logits against a reference; `labels` (N,) the classes the
    images were asked for (conditional models). `with_classes`: the logits are over the data set's own classes
    (the domain classifier), so class coverage and conditional accuracy mean something. Against statistics
    alone (a reference file) only FID and the classifier score can be computed."""
    n = len(features)
    if features.shape[1] != len(ref.stats.mu):
        raise DiffuseError(f"the reference holds statistics of {len(ref.stats.mu)}-d features, and these features "
                           f"are {features.shape[1]}-d: they come from different extractors")
    out = {"fid": metrics.frechet_distance(metrics.gaussian_stats(features), ref.stats)}
    protocol = {"n": n, "reference_n": ref.stats.n}
    if ref.features is not None:
        k = min(settings.pr_k, n - 1, len(ref.features) - 1)
        kid_mean, kid_std = metrics.kernel_distance(ref.features, features, settings.kid_subsets,
                                                    settings.kid_subset_size, settings.seed)
        precision, recall = metrics.precision_recall(ref.features, features, k)
        out.update(kid=kid_mean, kid_std=kid_std, precision=precision, recall=recall)
        protocol.update(kid_subset_size=min(settings.kid_subset_size, n, len(ref.features)),
                        kid_subsets=settings.kid_subsets, pr_k=k)
    splits = min(10, n)
    is_mean, is_std = metrics.classifier_score(logits, splits, settings.seed)  # Inception score with Inception logits
    out.update(classifier_score=is_mean, classifier_score_std=is_std)
    if with_classes and ref.labels is not None:
        num_classes = ref.logits.shape[1]
        real_hist = torch.bincount(ref.labels, minlength=num_classes).double() / len(ref.labels)
        covered, tv = metrics.class_coverage(metrics.class_histogram(logits, num_classes), real_hist)
        out.update(class_coverage=covered, class_tv=tv)
    if labels is not None and with_classes:
        acc, per_class = metrics.conditional_accuracy(logits, labels, logits.shape[1])
        out.update(conditional_accuracy=acc, conditional_accuracy_per_class=per_class)
    out["protocol"] = {**protocol, "score_splits": splits}
    return out


def score_images(images: np.ndarray, ref: Reference, extractor: Extractor, settings: ScoreSettings,
                 labels: np.ndarray | None = None, floor: Reference | None = None) -> dict:
    """Score (N,H,W,C) uint8 images against `ref`, and the floor: real images (`floor`, their features) scored the
    same way. Returns {"model": scores, "floor": scores or None, "score_seconds": s}."""
    t0 = time.perf_counter()
    features, logits = extractor(images)
    with_classes = extractor.name == "classifier"
    asked = None if labels is None else torch.from_numpy(labels)
    result = {"model": score(features, logits, ref, settings, asked, with_classes), "floor": None}
    if floor is not None:
        result["floor"] = score(floor.features, floor.logits, ref, settings, None, with_classes)
    result["score_seconds"] = round(time.perf_counter() - t0, 2)
    return result
