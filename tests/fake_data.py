"""Small stand-in data sets in the real on-disk layouts, written by the tests (nothing is downloaded)."""

import struct
from pathlib import Path

import numpy as np
from PIL import Image

from diffuse.datasets.mnist import FILES


def write_idx(root: Path, folder: str, n_train: int = 40, n_test: int = 20, seed: int = 0) -> None:
    """root/folder/raw/*-ubyte in the MNIST idx format: random 28x28 images, labels 0..9."""
    rng = np.random.default_rng(seed)
    raw = root / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, n, 28, 28) + images.tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, n) + labels.tobytes())
    assert all((raw / f).is_file() for f in FILES)


def write_cifar_bin(root: Path, per_file: int = 10, seed: int = 0) -> None:
    """root/cifar-10-batches-bin/{data_batch_1..5,test_batch}.bin: records of label byte + 3072 pixel bytes."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-bin"
    folder.mkdir(parents=True, exist_ok=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = (np.arange(per_file) % 10).astype(np.uint8)[:, None]
        pixels = rng.integers(0, 256, (per_file, 3072), dtype=np.uint8)
        (folder / f"{name}.bin").write_bytes(np.concatenate([labels, pixels], axis=1).tobytes())


def write_image_folder(root: Path, classes: tuple[str, ...] = ("cat", "dog"), per_class: int = 4,
                       size: tuple[int, int] = (40, 30), mode: str = "RGB", seed: int = 0) -> Path:
    """root/<class>/<i>.png: images of `size` (w, h); class k's images are filled with the value 60 * k."""
    rng = np.random.default_rng(seed)
    for k, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
            array = np.full(shape, 60 * k, np.uint8) + rng.integers(0, 5, shape, dtype=np.uint8)
            Image.fromarray(array, mode).save(root / name / f"{i}.png")
    return root
