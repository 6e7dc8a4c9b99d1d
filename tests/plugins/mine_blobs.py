"""A data set added by test_extending.py as one file plus one YAML: bright squares on the left (class 0) or the
right (class 1) of a dark image, made in memory."""

from __future__ import annotations

import torch

from diffuse.data import ImageData


def mine_blobs(train: bool = True, n: int = 64, image_size: int = 8, channels: int = 1) -> ImageData:
    g = torch.Generator().manual_seed(0 if train else 1)
    labels = torch.arange(n) % 2
    images = torch.randint(0, 40, (n, channels, image_size, image_size), generator=g, dtype=torch.uint8)
    half = image_size // 2
    for i, k in enumerate(labels.tolist()):
        images[i, :, 2:half + 1, (1 if k == 0 else half):(half if k == 0 else image_size - 1)] = 220
    return ImageData(images=images, labels=labels, num_classes=2, name="mine_blobs")
