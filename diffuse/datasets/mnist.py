"""MNIST (LeCun et al. 1998) through torchvision: 60k train / 10k test 28x28 grey digits."""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

from diffuse import DiffuseError
from diffuse.data import ImageData, download_error, reshape_images

FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def load_idx(dataset_cls, folder: str, name: str, root: str, train: bool, download: bool, image_size: int,
             channels: int, hflip: bool) -> ImageData:
    """An MNIST-layout data set (`root`/`folder`/raw/*-ubyte) through torchvision, downloaded first when absent
    and `download` is true; missing files offline are a DiffuseError that says where they go."""
    raw = Path(root).expanduser() / folder / "raw"
    present = all((raw / f).is_file() for f in FILES)
    how = (f"put the four *-ubyte files ({', '.join(FILES)}) in {raw.resolve()}, or point "
           f"DIFFUSE_DATA_ROOT (or dataset.root=) at the folder that holds {folder}/raw")
    if not present and not download:
        raise DiffuseError(f"{folder} not found in {raw.resolve()} and dataset.download=false: {how}")
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # torchvision prints each failed mirror
            ds = dataset_cls(os.fspath(Path(root).expanduser()), train=train, download=download and not present)
    except Exception as e:  # URLError, RuntimeError, OSError: the download or the files failed
        raise DiffuseError(f"{folder} not found in {raw.resolve()} and could not be downloaded ({download_error(e)}): "
                           f"{how}") from None
    images = reshape_images(ds.data.unsqueeze(1), channels, image_size)  # (N,C,H,W) uint8
    return ImageData(images=images, labels=ds.targets.long(), num_classes=10, name=name, hflip=hflip)


def mnist(root: str, train: bool = True, download: bool = True, image_size: int = 28, channels: int = 1,
          hflip: bool = False) -> ImageData:
    """Load MNIST from `root`/MNIST/raw, downloading it first when absent and `download` is true."""
    from torchvision.datasets import MNIST

    return load_idx(MNIST, "MNIST", "mnist", root, train, download, image_size, channels, hflip)
