"""What `diffuse sample` and `diffuse eval ckpt=` start from besides noise: SDEdit's `init=` images (with
`strength`) or RePaint's `inpaint=` images and `mask=` (a preset or a file), read and checked at the boundary
before any sampling, or a super-resolution model's low-res images (`lowres=`); and how far the images drawn from
them moved (`faithfulness`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from diffuse import DiffuseError
from diffuse.data import ImageData
from diffuse.generate import GenerationOptions, sample_seed
from diffuse.image_files import read_images
from diffuse.images import from_uint8, image_distance, to_uint8
from diffuse.samplers import Sampler
from diffuse.superres import degrade

MASKS = ("centre", "half", "random")  # presets; 1 = known (kept), 0 = filled in


@dataclass(frozen=True)
class StartOptions(GenerationOptions):
    """The options of generating from images besides noise, shared by `diffuse sample` and `diffuse eval`
    (defaults: conf/start.yaml); the images themselves (init=, inpaint=, mask=) are read by `start_images`."""

    strength: float  # image-to-image (SDEdit, with init=): the share of the walk from the init image (1: from noise)
    jump_length: int  # inpainting (RePaint): steps walked back at each jump
    resample: int  # inpainting: times each jump point is walked (1: no jumps)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.strength <= 1:
            raise DiffuseError(f"strength must be in [0, 1] (0: the init image itself, 1: plain sampling), "
                               f"got {self.strength}")
        if self.jump_length < 1 or self.resample < 1:
            raise DiffuseError(f"jump_length and resample must be >= 1, got {self.jump_length} and {self.resample}")


@dataclass(frozen=True)
class StartImages:
    """Images that generation starts from besides noise (image i uses images[i % m]): edited (SDEdit, `strength`
    < 1), with a `mask` inpainted (RePaint; the known pixels, mask 1, come back exactly), or, for a
    super-resolution model, low-res images that condition every step (SR3)."""

    images: Tensor  # (m,C,H,W) in [-1, 1]; super-resolution: (m,C,h,w), the low-res images
    source: str  # where they were read from, for the record
    strength: float = 1.0  # SDEdit: the share of the walk taken from the image (1: plain sampling)
    mask: Tensor | None = None  # (k,1,H,W) of 0/1, k = 1 or m: inpainting
    jump: int = 10  # RePaint's jump length (steps walked back at each jump)
    resample: int = 1  # RePaint's resampling: each jump point is walked this many times (1: no jumps)
    superres: bool = False  # the images are low-res inputs of a super-resolution model
    truth: np.ndarray | None = None  # (m,H,W,C) uint8: their high-res originals, when known (the test split)

    def known(self, index: Tensor) -> tuple[Tensor, Tensor | None]:
        """The images and masks of images `index` (b,): (b,C,H,W), (b,1,H,W) or None."""
        mask = None if self.mask is None else self.mask[index % len(self.mask)]
        return self.images[index % len(self.images)], mask


def preset_mask(name: str, count: int, shape: tuple[int, int, int], seed: int) -> Tensor:
    """(count,1,H,W) masks: `centre` hides the middle square of half the side, `half` the bottom half; `random`
    hides each pixel with probability 1/2, mask i drawn from its own seed (seed, i)."""
    _, H, W = shape
    mask = torch.ones(count, 1, H, W)
    if name == "centre":
        mask[..., H // 4: H // 4 + H // 2, W // 4: W // 4 + W // 2] = 0
    elif name == "half":
        mask[..., H // 2:, :] = 0
    else:
        for i in range(count):
            g = torch.Generator().manual_seed(sample_seed(seed, i) ^ 0x5A5A)
            mask[i, 0] = (torch.rand(H, W, generator=g) < 0.5).float()
    return mask


def read_mask(path: str, count: int, shape: tuple[int, int, int]) -> Tensor:
    """A mask file: an .npz whose `mask` (or only) array is (H,W), (k,H,W) or (k,1,H,W), k = 1 or the images'
    count, of 0/1 values (1 = known) -> (k,1,H,W) float."""
    _, H, W = shape
    try:
        with np.load(Path(path).expanduser()) as f:
            keys = list(f.keys())
            array = f["mask"] if "mask" in keys else f[keys[0]] if len(keys) == 1 else None
    except (OSError, ValueError) as e:
        raise DiffuseError(f"mask={path}: not a preset ({', '.join(MASKS)}) nor a readable .npz ({e})") from None
    if array is None:
        raise DiffuseError(f"mask={path}: the .npz holds {keys} and no `mask` array")
    array = array.reshape(1, *array.shape) if array.ndim == 2 else array.reshape(array.shape[0], *array.shape[2:]) \
        if array.ndim == 4 and array.shape[1] == 1 else array
    if array.ndim != 3 or array.shape[1:] != (H, W) or array.shape[0] not in (1, count):
        raise DiffuseError(f"mask={path} has shape {list(array.shape)}; expected {H}x{W} masks, one or one per image "
                           f"({count})")
    if not np.isin(array, (0, 1)).all():
        raise DiffuseError(f"mask={path} is not binary: its values must be 0 (filled in) or 1 (known)")
    return torch.from_numpy(array.astype(np.float32)).unsqueeze(1)


def model_images(path: str, option: str, shape: tuple[int, int, int], takes: str = "makes",
                 ) -> tuple[Tensor, np.ndarray | None]:
    """The images an option names (an .npz or a folder), which must be of the model's (C,H,W): (m,C,H,W) in
    [-1, 1], and their labels (m,) when the file has them."""
    read = read_images(path, None, option)
    images = read.images  # (m,H,W,C) uint8
    C, H, W = shape
    if images.shape[1:] != (H, W, C):
        raise DiffuseError(f"{option}={path} has images of {images.shape[1]}x{images.shape[2]} with {images.shape[3]} "
                           f"channel(s), and the model {takes} {H}x{W} with {C}")
    return from_uint8(images), read.labels


def lowres_images(config: dict, shape: tuple[int, int, int], lowres: int,
                  test_split: Callable[[], ImageData]) -> StartImages:
    """A super-resolution model's inputs: lowres= (an .npz or a folder of low-res images), or else the test split of
    its data set degraded (image i from test image i, whose original is kept as the truth)."""
    C, H, _ = shape
    if config.get("lowres") is not None:
        low, _ = model_images(str(config["lowres"]), "lowres", (C, lowres, lowres),
                              f"upsamples {H // lowres}x from")
        return StartImages(low, str(config["lowres"]), superres=True)
    try:
        data = test_split()
    except DiffuseError as e:
        raise DiffuseError(f"a super-resolution checkpoint needs low-res images: give lowres=NPZ_OR_DIR (the default, "
                           f"its data set's test split, could not be read: {e})") from None
    if data.shape != shape:
        raise DiffuseError(f"the test split of {data.name} has images {list(data.shape)}, and the model makes "
                           f"{list(shape)}: give lowres=NPZ_OR_DIR")
    truth = data.images.float() / 127.5 - 1  # (N,C,H,W)
    return StartImages(degrade(truth, lowres), f"{data.name} test split, degraded to {lowres}x{lowres}",
                       superres=True, truth=to_uint8(truth))


def start_images(config: dict, opts, shape: tuple[int, int, int], sampler: Sampler, lowres: int = 0,
                 test_split: Callable[[], ImageData] | None = None) -> StartImages | None:
    """init= (with strength) or inpaint= (with mask=, jump_length, resample), checked; None for plain sampling. A
    super-resolution model (`lowres` > 0) takes lowres= (or the test split) and neither of those."""
    init, inpaint, mask = config.get("init"), config.get("inpaint"), config.get("mask")
    if config.get("lowres") is not None and not lowres:
        raise DiffuseError(f"lowres={config['lowres']} conditions a super-resolution checkpoint (one trained with "
                           f"dataset.lowres=K), and this one generates from noise")
    if lowres:
        if init is not None or inpaint is not None or opts.strength != 1 or opts.resample != 1:
            raise DiffuseError("a super-resolution checkpoint upsamples lowres= images; init=, strength, inpaint= and "
                               "resample do not apply to it")
        return lowres_images(config, shape, lowres, test_split)
    if init is not None and inpaint is not None:
        raise DiffuseError("give init= (image-to-image) or inpaint= (inpainting), not both")
    if opts.strength != 1 and init is None:
        raise DiffuseError(f"strength={opts.strength} applies to image-to-image sampling: give init=NPZ_OR_FOLDER")
    if opts.resample != 1 and inpaint is None:
        raise DiffuseError(f"resample={opts.resample} applies to inpainting: give inpaint=NPZ_OR_FOLDER and mask=")
    if (mask is None) != (inpaint is None):
        raise DiffuseError("inpainting needs inpaint=NPZ_OR_FOLDER (the images) and mask=" + "|".join(MASKS) +
                           "|NPZ (1 = known pixels) together")
    if inpaint is not None and sampler.facts.multistep:
        raise DiffuseError(f"sampler {sampler.name} reuses its earlier steps' predictions, which inpainting's "
                           f"replaced pixels and jumps make stale; inpaint with a one-step sampler (e.g. ddim, ddpm, "
                           f"euler, heun)")
    if init is None and inpaint is None:
        return None
    option, path = ("init", init) if init is not None else ("inpaint", inpaint)
    x, _ = model_images(str(path), option, shape)
    if init is not None:
        return StartImages(x, str(path), strength=opts.strength)
    masks = (preset_mask(mask, len(x) if mask == "random" else 1, shape, opts.seed) if mask in MASKS
             else read_mask(str(mask), len(x), shape))
    return StartImages(x, str(path), mask=masks, jump=opts.jump_length, resample=opts.resample)


def start_record(images: StartImages | None, ts: list[float]) -> dict | None:
    """What sampling.json and metrics.json say of the images generation started from (init= or inpaint=)."""
    if images is None:
        return None
    if images.superres:
        return {"mode": "super-resolution", "source": images.source, "images": len(images.images),
                "lowres": list(images.images.shape[1:])}
    if images.mask is None:
        return {"mode": "image-to-image", "source": images.source, "images": len(images.images),
                "strength": images.strength, "steps_walked": len(ts) - 1}
    return {"mode": "inpainting", "source": images.source, "images": len(images.images), "masks": len(images.mask),
            "known_share": round(images.mask.mean().item(), 4), "jump_length": images.jump,
            "resample": images.resample}


def faithfulness(images: np.ndarray, start: StartImages) -> dict:
    """How far generated images (n,H,W,C) uint8 are from the images they started from (image i from image i % m)."""
    return image_distance(images, to_uint8(start.images[torch.arange(len(images)) % len(start.images)]))
