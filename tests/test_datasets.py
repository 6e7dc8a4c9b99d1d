"""Data sets beyond MNIST: image folders, Fashion-MNIST and CIFAR-10 layouts, and flips that resume exactly."""

import pytest
import torch

from diffuse import DiffuseError
from diffuse.data import BatchIterator, ImageData
from diffuse.datasets.cifar10 import cifar10
from diffuse.datasets.fashion_mnist import fashion_mnist
from diffuse.datasets.folder import folder
from fake_data import write_cifar_bin, write_idx, write_image_folder


def test_folder_reads_class_subfolders_as_sorted_labels(tmp_path):
    root = write_image_folder(tmp_path / "img", classes=("zebra", "ant", "bee"), per_class=3, size=(40, 30))
    data = folder(str(root), image_size=16)
    assert data.shape == (3, 16, 16) and len(data) == 9 and data.num_classes == 3
    assert data.class_names == ("ant", "bee", "zebra")
    # class k of the sorted names was written with the value 60 * (its index in the writing order)
    means = [float(data.images[data.labels == k].float().mean()) for k in range(3)]
    assert means == pytest.approx([60 + 2, 120 + 2, 0 + 2], abs=1.5)
    grey = folder(str(root), image_size=8, channels=1, center_crop=False)
    assert grey.shape == (1, 8, 8)


def test_folder_centre_crop_keeps_the_middle(tmp_path):
    from PIL import Image
    import numpy as np

    root = tmp_path / "one"
    root.mkdir()
    array = np.zeros((20, 60, 3), np.uint8)
    array[:, 20:40] = 255  # a white middle third
    Image.fromarray(array).save(root / "a.png")
    cropped = folder(str(root), image_size=20, center_crop=True)
    squashed = folder(str(root), image_size=20, center_crop=False)
    assert cropped.num_classes == 0 and float(cropped.images.float().mean()) == pytest.approx(255, abs=1)
    assert float(squashed.images.float().mean()) == pytest.approx(255 / 3, abs=8)


@pytest.mark.parametrize("kwargs,expected", [
    ({}, "needs dataset.path"),
    ({"path": "/nonexistent/images"}, "is not a folder"),
    ({"path": ".", "train": False}, "no test split"),
    ({"path": "EMPTY"}, "no images"),
])
def test_folder_errors_are_clear(tmp_path, kwargs, expected):
    if kwargs.get("path") == "EMPTY":
        kwargs["path"] = str(tmp_path)
    with pytest.raises(DiffuseError, match=expected):
        folder(**kwargs)


def test_fashion_mnist_and_cifar10_read_their_layouts_and_explain_a_missing_download(tmp_path):
    write_idx(tmp_path, "FashionMNIST", n_train=30, n_test=10)
    write_cifar_bin(tmp_path, per_file=4)
    f = fashion_mnist(str(tmp_path), train=False, download=False)
    c = cifar10(str(tmp_path), train=True, download=False)
    assert (f.shape, len(f), f.name, f.hflip) == ((1, 28, 28), 10, "fashion_mnist", False)
    assert (c.shape, len(c), c.name, c.hflip) == ((3, 32, 32), 20, "cifar10", True)
    assert c.labels.tolist()[:4] == [0, 1, 2, 3]
    with pytest.raises(DiffuseError, match=r"FashionMNIST not found in .*dataset.download=false: put the four"):
        fashion_mnist(str(tmp_path / "empty"), download=False)
    with pytest.raises(DiffuseError, match=r"CIFAR-10 not found in .*cifar-10-binary.tar.gz"):
        cifar10(str(tmp_path / "empty"), download=False)
    (tmp_path / "cifar-10-batches-bin" / "test_batch.bin").write_bytes(b"\x00" * 100)
    with pytest.raises(DiffuseError, match="not a CIFAR-10 binary batch"):
        cifar10(str(tmp_path), train=False, download=False)


def test_flips_are_random_per_image_and_resume_exactly():
    images = torch.zeros(64, 1, 4, 4, dtype=torch.uint8)
    images[:, :, :, 0] = 255  # a bright left column: mirrored, it is on the right
    data = ImageData(images=images, labels=torch.zeros(64, dtype=torch.long), num_classes=1, name="t", hflip=True)
    a = BatchIterator(data, 16, torch.device("cpu"), seed=3)
    batches = [next(a)[0] for _ in range(6)]  # crosses an epoch boundary
    left = torch.cat([(b[:, 0, 0, 0] > 0) for b in batches])
    assert 0.3 < left.float().mean() < 0.7  # some flipped, some not
    b = BatchIterator(data, 16, torch.device("cpu"), seed=3)
    b.seek(1, 0)  # where batch 4 of the unbroken run starts (4 batches of 16 per epoch)
    assert torch.equal(next(b)[0], batches[4]) and torch.equal(next(b)[0], batches[5])
    plain = BatchIterator(ImageData(images, data.labels, 1, "t", hflip=False), 16, torch.device("cpu"), seed=3)
    assert all(bool((next(plain)[0][:, 0, 0, 0] > 0).all()) for _ in range(4))
