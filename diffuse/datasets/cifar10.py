"""CIFAR-10 (Krizhevsky 2009): 50k train / 10k test 32x32 colour images, 10 classes. Read from the binary
distribution (cifar-10-batches-bin: records of 1 label byte + 3072 pixel bytes), so no pickle is unpickled."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import torch

from diffuse import DiffuseError
from diffuse.data import ImageData, download_error, reshape_images

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
TEST_FILES = ("test_batch.bin",)
RECORD = 1 + 3 * 32 * 32
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def read_batches(paths: list[Path]) -> tuple[torch.Tensor, torch.Tensor]:
    """CIFAR binary batch files -> images (N,3,32,32) uint8, labels (N,) int64."""
    chunks = []
    for p in paths:
        raw = np.fromfile(p, dtype=np.uint8)
        if raw.size == 0 or raw.size % RECORD:
            raise DiffuseError(f"{p} is not a CIFAR-10 binary batch ({raw.size} bytes is not a multiple of {RECORD})")
        chunks.append(raw.reshape(-1, RECORD))
    records = np.concatenate(chunks)
    labels = torch.from_numpy(records[:, 0].astype(np.int64))
    if int(labels.max()) > 9:
        raise DiffuseError(f"{paths[0].parent} holds labels above 9: not CIFAR-10")
    return torch.from_numpy(records[:, 1:].reshape(-1, 3, 32, 32).copy()), labels


def cifar10(root: str, train: bool = True, download: bool = True, image_size: int = 32, channels: int = 3,
            hflip: bool = True) -> ImageData:
    """Load CIFAR-10 from `root`/cifar-10-batches-bin, downloading and extracting it first when absent and
    `download` is true."""
    folder = Path(root).expanduser() / "cifar-10-batches-bin"
    files = [folder / f for f in (TRAIN_FILES if train else TEST_FILES)]
    how = (f"download {URL} and extract it in {folder.parent.resolve()} (it makes cifar-10-batches-bin), or point "
           f"DIFFUSE_DATA_ROOT (or dataset.root=) at the folder that holds cifar-10-batches-bin")
    if not all(f.is_file() for f in files):
        if not download:
            raise DiffuseError(f"CIFAR-10 not found in {folder.resolve()} and dataset.download=false: {how}")
        try:
            from torchvision.datasets.utils import download_and_extract_archive

            with contextlib.redirect_stdout(io.StringIO()):
                download_and_extract_archive(URL, str(folder.parent))
        except Exception as e:
            raise DiffuseError(f"CIFAR-10 not found in {folder.resolve()} and could not be downloaded "
                               f"({download_error(e)}): {how}") from None
    images, labels = read_batches(files)
    return ImageData(images=reshape_images(images, channels, image_size), labels=labels, num_classes=10,
                     name="cifar10", hflip=hflip, class_names=CLASSES)
