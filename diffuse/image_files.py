"""Image files in and out of diffuse: the one reader of image files (used by `dataset=folder` and by `diffuse eval
samples=`), the arrays of an .npz, and the check that a set of images fits a data set."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from diffuse import DiffuseError

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")
GREY_MODES = ("L", "1", "I;16", "I")  # PIL modes that are read as one channel when no mode is asked for


def image_paths(folder: Path, recursive: bool = True) -> list[Path]:
    """The image files under `folder` (by extension, case-insensitive), in sorted order."""
    found = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(f for f in found if f.suffix.lower() in EXTENSIONS and f.is_file())


def read_image(path: Path, mode: str | None = None, transform: Callable | None = None) -> np.ndarray:
    """One image file as (H,W,C) uint8: converted to `mode` ("L" or "RGB"; None keeps grey images grey and makes
    the rest RGB), then `transform` (a PIL image -> PIL image, e.g. a crop and resize). Unreadable: DiffuseError."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert(mode or ("L" if im.mode in GREY_MODES else "RGB"))
            if transform is not None:
                im = transform(im)
            array = np.asarray(im, dtype=np.uint8)
    except Exception as e:
        raise DiffuseError(f"{path} is not a readable image ({type(e).__name__}: {e})") from None
    return array.reshape(*array.shape[:2], -1).copy()  # (H,W) grey -> (H,W,1)


def read_images(path: str | Path) -> np.ndarray:
    """Images to score from another tool or run: an .npz (key `images`, or its only array) of uint8
    (N,H,W,C) or (N,H,W), or a folder of image files (read in sorted order). Returns (N,H,W,C) uint8."""
    p = Path(path).expanduser()
    if p.is_dir():
        files = image_paths(p)
        if not files:
            raise DiffuseError(f"samples={path}: the folder holds no images ({', '.join(EXTENSIONS)})")
        arrays = [read_image(f) for f in files]
        shapes = {a.shape for a in arrays}
        if len(shapes) != 1:
            raise DiffuseError(f"samples={path}: the images differ in size or channels ({sorted(shapes)[:3]})")
        images = np.stack(arrays)
    elif p.is_file() and p.suffix == ".npz":
        images = read_npz_images(p, path)
    else:
        raise DiffuseError(f"samples={path}: expected an .npz file or a folder of images, and it is neither")
    if images.dtype != np.uint8:
        raise DiffuseError(f"samples={path}: images must be uint8 (0..255), got {images.dtype}")
    if images.ndim == 3:
        images = images[..., None].copy()
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise DiffuseError(f"samples={path}: expected images (N,H,W,C) with C 1 or 3, got shape {images.shape}")
    return images


def read_npz_images(p: Path, given: str | Path) -> np.ndarray:
    """The image array of an .npz: key `images`, or its only array. No pickle is read."""
    try:
        with np.load(p, allow_pickle=False) as z:
            keys = list(z.keys())
            key = "images" if "images" in keys else (keys[0] if len(keys) == 1 else None)
            if key is None:
                raise DiffuseError(f"samples={given}: the .npz has no `images` array (it has {keys})")
            return z[key]
    except DiffuseError:
        raise
    except Exception as e:
        raise DiffuseError(f"samples={given}: not a readable .npz ({type(e).__name__}: {e})") from None


def check_images(images: np.ndarray, shape: tuple[int, int, int], what: str) -> None:
    """(N,H,W,C) images must match the data set's (C,H,W), and be at least two."""
    C, H, W = shape
    if images.shape[1:] != (H, W, C):
        raise DiffuseError(f"{what} has images of {images.shape[1]}x{images.shape[2]} with {images.shape[3]} "
                           f"channel(s), but the reference data set has {H}x{W} with {C}")
    if len(images) < 2:
        raise DiffuseError(f"{what} holds {len(images)} image(s); scoring needs at least 2")
