"""Any folder of images. Class subfolders (`path/<class>/*.png`) become labels in sorted order, as torchvision's
ImageFolder reads them; images directly in `path` make an unlabelled set."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import torch

from diffuse import DiffuseError
from diffuse.data import ImageData, reshape_images
from diffuse.image_files import EXTENSIONS, image_paths, read_image


def square(im, image_size: int, center_crop: bool):
    """A PIL image cropped to its largest centred square (when `center_crop`), resized to image_size (bicubic)."""
    from PIL import Image

    if center_crop:
        w, h = im.size
        s = min(w, h)
        im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
    return im.resize((image_size, image_size), Image.Resampling.BICUBIC) if im.size != (image_size, image_size) else im


def folder(path: str | None = None, train: bool = True, test_path: str | None = None, image_size: int = 32,
           channels: int = 3, center_crop: bool = True, hflip: bool = True) -> ImageData:
    """Images under `path` (the train split) or `test_path` (the test split), resized to `image_size` square
    (after a centre crop to a square when `center_crop`), with `channels` 1 or 3."""
    if path is None:
        raise DiffuseError("dataset=folder needs dataset.path=DIR (a folder of images, or of class subfolders)")
    chosen = path if train else test_path
    if chosen is None:
        raise DiffuseError("dataset=folder has no test split: set dataset.test_path=DIR, or score against the "
                           "training images with reference_split=train floor=false")
    base = Path(chosen).expanduser()
    if not base.is_dir():
        raise DiffuseError(f"dataset.{'path' if train else 'test_path'}={chosen} is not a folder")
    reshape_images(torch.zeros(1, 1, 8, 8, dtype=torch.uint8), channels, image_size)  # checks channels and size
    classes = sorted(d.name for d in base.iterdir() if d.is_dir() and not d.name.startswith("."))
    if classes:
        files = [(f, k) for k, c in enumerate(classes) for f in image_paths(base / c)]
    else:
        files = [(f, 0) for f in image_paths(base, recursive=False)]
    if not files:
        raise DiffuseError(f"no images ({', '.join(EXTENSIONS)}) under {base}")
    resize = partial(square, image_size=image_size, center_crop=center_crop)
    mode = "L" if channels == 1 else "RGB"
    images = torch.stack([torch.from_numpy(read_image(f, mode, resize)).permute(2, 0, 1) for f, _ in files])  # (N,C,H,W)
    labels = torch.tensor([k for _, k in files], dtype=torch.long)
    return ImageData(images=images, labels=labels, num_classes=len(classes) if classes else 0,
                     name=f"folder-{Path(path).expanduser().resolve().name}", hflip=hflip, class_names=tuple(classes))
