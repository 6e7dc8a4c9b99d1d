"""Image files in and out of diffuse: the one reader of image files (used by `dataset=folder` and by `diffuse eval
samples=`), image arrays of an .npz in the layouts other tools write, and the check that they fit a data set."""

from __future__ import annotations

from dataclasses import dataclass
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


KEYS = (("images", "labels"), ("arr_0", "arr_1"))  # (images, labels) in an .npz: ours, then ADM's and DiT's


@dataclass
class ImageSet:
    """Images read from files, and the class each was drawn for when the files say so."""

    images: np.ndarray  # (N,H,W,C) uint8
    labels: np.ndarray | None  # (N,) int64, or None


def read_images(path: str | Path, value_range: tuple[float, float] | None = None, option: str = "samples") -> ImageSet:
    """Images to score from another tool or run: an .npz (ours: `images` and `labels`; ADM's: `arr_0` and
    `arr_1`; or its only image array) of (N,H,W,C), (N,C,H,W) or (N,H,W) arrays, uint8 or, with `value_range`,
    float; or a folder of image files (sorted order; integer-named class folders give labels)."""
    p = Path(path).expanduser()
    what = f"{option}={path}"
    if p.is_dir():
        array, labels = read_folder(p, what)
    elif p.is_file() and p.suffix == ".npz":
        array, labels = read_npz(p, what)
    else:
        raise DiffuseError(f"{what}: expected an .npz file or a folder of images, and it is neither")
    images = to_uint8(channels_last(array, what), value_range, what)
    return ImageSet(images, None if labels is None else check_labels(labels, len(images), what))


def read_folder(folder: Path, what: str) -> tuple[np.ndarray, np.ndarray | None]:
    """(N,H,W,C) uint8 from the image files under `folder`; labels when every file sits in a class folder
    named by its index (as `diffuse sample format=folder` writes them)."""
    files = image_paths(folder)
    if not files:
        raise DiffuseError(f"{what}: the folder holds no images ({', '.join(EXTENSIONS)})")
    arrays = [read_image(f) for f in files]
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise DiffuseError(f"{what}: the images differ in size or channels ({sorted(shapes)[:3]})")
    by_class = all(f.parent.parent == folder and f.parent.name.isdigit() for f in files)
    return np.stack(arrays), np.array([int(f.parent.name) for f in files]) if by_class else None


def read_npz(p: Path, what: str) -> tuple[np.ndarray, np.ndarray | None]:
    """The image array of an .npz and its labels, by the names in KEYS, or its only image-like array (3 or 4
    dimensions). No pickle is read."""
    try:
        with np.load(p, allow_pickle=False) as z:
            keys = list(z.keys())
            for image_key, label_key in KEYS:
                if image_key in keys:
                    return z[image_key], z[label_key] if label_key in keys else None
            image_like = [k for k in keys if z[k].ndim in (3, 4)]
            if len(image_like) == 1:
                return z[image_like[0]], None
    except Exception as e:
        raise DiffuseError(f"{what}: not a readable .npz ({type(e).__name__}: {e})") from None
    raise DiffuseError(f"{what}: the .npz has {len(image_like) or 'no'} image-like arrays ({', '.join(keys)}) and none is "
                       f"named images or arr_0: save the images under one of those names (labels as labels or arr_1)")


def channels_last(array: np.ndarray, what: str) -> np.ndarray:
    """(N,H,W,C) from (N,H,W,C), (N,C,H,W) (C in 1, 3 on axis 1 and not on the last) or (N,H,W)."""
    if array.ndim == 3:
        return array[..., None]
    if array.ndim == 4:
        last, first = array.shape[-1] in (1, 3), array.shape[1] in (1, 3)
        if last and first:
            raise DiffuseError(f"{what}: images of shape {array.shape} could be (N,H,W,C) or (N,C,H,W); save them "
                               f"as (N,H,W,C)")
        if last:
            return array
        if first:
            return array.transpose(0, 2, 3, 1).copy()
    raise DiffuseError(f"{what}: expected images (N,H,W,C) or (N,C,H,W) with C 1 or 3, or (N,H,W); got shape "
                       f"{array.shape}")


def to_uint8(images: np.ndarray, value_range: tuple[float, float] | None, what: str) -> np.ndarray:
    """uint8 images as they are; float images mapped from `value_range` to 0..255, rounded (never guessed)."""
    if images.dtype == np.uint8:
        if value_range is not None:
            raise DiffuseError(f"{what}: the images are uint8 (0..255) already; samples_range is for float images")
        return images
    if not np.issubdtype(images.dtype, np.floating):
        raise DiffuseError(f"{what}: images must be uint8 (0..255), or float with samples_range=[LOW,HIGH]; got "
                           f"{images.dtype}")
    if value_range is None:
        raise DiffuseError(f"{what}: the images are {images.dtype}; give their range with samples_range=[0,1] or "
                           f"samples_range=[-1,1]")
    low, high = value_range
    span = (float(np.min(images)), float(np.max(images)))
    slack = 1e-5 * (high - low)  # float round-off, not a clamp of real values
    if not (np.isfinite(span).all() and low - slack <= span[0] and span[1] <= high + slack):
        raise DiffuseError(f"{what}: the images span [{span[0]:.6g}, {span[1]:.6g}], outside samples_range "
                           f"[{low:g}, {high:g}]")
    return np.clip(np.rint((images.astype(np.float64) - low) / (high - low) * 255), 0, 255).astype(np.uint8)


def check_labels(labels: np.ndarray, n: int, what: str) -> np.ndarray:
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer) or (len(labels) and labels.min() < 0):
        raise DiffuseError(f"{what}: labels must be a 1-D array of class indices, got {labels.dtype} of shape "
                           f"{labels.shape}")
    if len(labels) != n:
        raise DiffuseError(f"{what}: {len(labels)} labels for {n} images")
    return labels.astype(np.int64)


def check_images(images: np.ndarray, shape: tuple[int, int, int], what: str) -> None:
    """(N,H,W,C) images must match the data set's (C,H,W), and be at least two."""
    C, H, W = shape
    if images.shape[1:] != (H, W, C):
        raise DiffuseError(f"{what} has images of {images.shape[1]}x{images.shape[2]} with {images.shape[3]} "
                           f"channel(s), but the reference data set has {H}x{W} with {C}")
    if len(images) < 2:
        raise DiffuseError(f"{what} holds {len(images)} image(s); scoring needs at least 2")

