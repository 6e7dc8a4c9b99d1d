"""Classification accuracy score (Ravuri & Vinyals 2019, sec. 3): a classifier of one fixed recipe (the domain
classifier's, diffuse.features.classifier) trained only on n generated labelled images and tested on the real
test split, beside the same recipe trained on n real training images. Also the recipe the augmentation benchmark
trains on real and generated images together."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from diffuse import DiffuseError
from diffuse.checkpoint import write_atomic
from diffuse.data import ImageData
from diffuse.features.cache import fingerprint
from diffuse.features.classifier import VERSION, accuracy, train_classifier

log = logging.getLogger(__name__)


def recipe_accuracy(images: torch.Tensor, labels: torch.Tensor, test: ImageData, *, steps: int, seed: int,
                  device: torch.device) -> float:
    """Train the recipe on (N,C,H,W) uint8 images and their labels (N,); its accuracy on the real test split."""
    model = train_classifier(images, labels, test.num_classes, steps=steps, seed=seed, flip=test.hflip, device=device)
    return accuracy(model, test.images.to(device), test.labels.to(device))


def balanced_subset(data: ImageData, n: int, seed: int) -> torch.Tensor:
    """Indices of n images of `data`, the classes as even as n allows (the first n of a seeded order that takes
    the classes in turn): (n,) int64."""
    if not 1 <= n <= len(data):
        raise DiffuseError(f"a subset of {n} images of {data.name}, which has {len(data)}")
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    by_class = [order[data.labels[order] == k] for k in range(data.num_classes)]
    rank = torch.empty(len(data), dtype=torch.long)  # an image's place among its class, in the seeded order
    for members in by_class:
        rank[members] = torch.arange(len(members))
    turns = rank[order] * data.num_classes + data.labels[order]  # round r of class k comes at r * K + k
    return order[torch.argsort(turns, stable=True)[:n]]


def real_accuracy(train: ImageData, test: ImageData, n: int, *, steps: int, seed: int, device: torch.device,
                  cache_dir: Path) -> float:
    """The recipe trained on n real training images (`balanced_subset`), tested on the test split; cached per
    data set, n, steps and seed (a JSON file in the evaluation cache)."""
    path = cache_dir / (f"cas-real-{train.name}-{fingerprint(train)}-{fingerprint(test)}-n{n}-s{steps}-seed{seed}"
                        f"-v{VERSION}.json")
    if path.is_file():
        try:
            return float(json.loads(path.read_text())["accuracy"])
        except (ValueError, KeyError, TypeError):
            raise DiffuseError(f"cache file {path} is damaged; delete it to rebuild it") from None
    t0 = time.perf_counter()
    index = balanced_subset(train, n, seed)
    acc = recipe_accuracy(train.images[index], train.labels[index], test, steps=steps, seed=seed, device=device)
    write_atomic(path, json.dumps({"accuracy": acc, "n": n, "steps": steps, "seed": seed,
                                   "seconds": round(time.perf_counter() - t0, 1)}).encode())
    return acc


def check_drawn(labels, n: int, data: ImageData, test: ImageData, source: str) -> None:
    """Before any work: the images are labelled (the classes a checkpoint draws in turn, or a file's labels),
    every class of the data set is among the n drawn, the train split `data` has n images for the baseline, and
    the `test` split the classifiers are tested on has the same classes."""
    if n > len(data):
        raise DiffuseError(f"cas=true trains the real baseline on as many training images as there are images "
                           f"({n}), and {data.name}'s train split has {len(data)}: use n <= {len(data)}")
    if data.num_classes < 2:
        raise DiffuseError(f"cas=true needs a labelled data set, and {data.name} has no classes")
    if test.num_classes != data.num_classes:
        raise DiffuseError(f"cas=true tests on {data.name}'s test split, which has {test.num_classes} classes, and "
                           f"its train split has {data.num_classes}")
    if labels is None:
        raise DiffuseError(f"cas=true needs labelled images, and {source} has none: a conditional checkpoint "
                           f"(model.conditional=true), or samples= with labels")
    drawn = {int(labels[i % len(labels)]) for i in range(n)}  # image i asks for classes[i % len(classes)]
    missing = sorted(set(range(data.num_classes)) - drawn)
    if missing:
        raise DiffuseError(f"cas=true trains a classifier of all {data.num_classes} classes on the images, and "
                           f"{source} gives none of class(es) {missing}: draw every class (labels=all, n >= "
                           f"{data.num_classes})")


def classification_accuracy_score(images: np.ndarray, labels: np.ndarray, train: ImageData, test: ImageData, *,
                                  steps: int, seed: int, device: torch.device, cache_dir: Path) -> dict:
    """CAS of generated images (N,H,W,C) uint8 with the classes they were drawn for (N,), next to the same recipe
    on N real images. Every class must be drawn (the test split has them all)."""
    check_drawn(labels, len(labels), train, test, "the images")  # checked before the drawing too (eval_job.build_eval)
    t0 = time.perf_counter()
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()  # (N,C,H,W) uint8
    generated = recipe_accuracy(x, torch.from_numpy(labels).long(), test, steps=steps, seed=seed, device=device)
    real = real_accuracy(train, test, len(images), steps=steps, seed=seed, device=device, cache_dir=cache_dir)
    log.info("classification accuracy score %.4f (the same recipe on %d real images: %.4f)", generated,
             len(images), real)
    return {"accuracy": generated, "real_accuracy": real, "ratio": generated / real, "n": len(images),
            "steps": steps, "seed": seed, "tested_on": f"{test.name} test split ({len(test)} images)",
            "seconds": round(time.perf_counter() - t0, 1)}
