"""Any folder of images. Class subfolders (`path/<class>/*.png`) become labels in sorted order, as torchvision's
ImageFolder reads them; images directly in `path` make an unlabelled set."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from diffuse import DiffuseError
from diffuse.data import ImageData, reshape_images

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")


def _load(path: Path, channels: int, image_size: int, center_crop: bool) -> torch.Tensor:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert("L" if channels == 1 else "RGB")
            if center_crop:  # the largest centred square
                w, h = im.size
                s = min(w, h)
                im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
            im = im.resize((image_size, image_size), Image.Resampling.BICUBIC) if im.size != (image_size, image_size) else im
            array = np.asarray(im, dtype=np.uint8)
    except Exception as e:
        raise DiffuseError(f"{path} is not a readable image ({type(e).__name__}: {e})") from None
    return torch.from_numpy(array.reshape(image_size, image_size, channels).copy()).permute(2, 0, 1)  # (C,H,W)


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
        files = [(f, k) for k, c in enumerate(classes) for f in sorted((base / c).rglob("*"))
                 if f.suffix.lower() in EXTENSIONS]
    else:
        files = [(f, 0) for f in sorted(base.iterdir()) if f.suffix.lower() in EXTENSIONS]
    if not files:
        raise DiffuseError(f"no images ({', '.join(EXTENSIONS)}) under {base}")
    images = torch.stack([_load(f, channels, image_size, center_crop) for f, _ in files])  # (N,C,H,W) uint8
    labels = torch.tensor([k for _, k in files], dtype=torch.long)
    return ImageData(images=images, labels=labels, num_classes=len(classes) if classes else 0,
                     name=f"folder-{Path(path).expanduser().resolve().name}", hflip=hflip, class_names=tuple(classes))
