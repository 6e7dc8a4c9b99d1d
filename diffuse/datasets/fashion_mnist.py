"""Fashion-MNIST (Xiao et al. 2017) through torchvision: 60k train / 10k test 28x28 grey clothing images, 10 classes."""

from __future__ import annotations

from diffuse.data import ImageData
from diffuse.datasets.mnist import load_idx


def fashion_mnist(root: str, train: bool = True, download: bool = True, image_size: int = 28, channels: int = 1,
                  hflip: bool = False) -> ImageData:
    """Load Fashion-MNIST from `root`/FashionMNIST/raw, downloading it first when absent and `download` is true."""
    from torchvision.datasets import FashionMNIST

    return load_idx(FashionMNIST, "FashionMNIST", "fashion_mnist", root, train, download, image_size, channels, hflip)
