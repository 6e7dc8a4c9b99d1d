"""Super-resolution by conditioning (SR3, Saharia et al. 2021, sec. 2): the degradation that makes a low-resolution
image from a high-resolution one, the upsampling that conditions the network (its extra input channels), and how
close an upsampled image is to the truth and to its own low-resolution input."""

from __future__ import annotations

import numpy as np
import torch.nn.functional as F
from torch import Tensor

from diffuse import DiffuseError
from diffuse.images import from_uint8, image_distance, ssim
from diffuse.validate import is_int


def check_lowres(lowres, shape: tuple[int, int, int], where: str = "dataset.lowres") -> int:
    """The low-resolution side for images of shape (C,H,W): 0 (no super-resolution) or a side that divides the
    square images' side at a factor of 2 or more."""
    if lowres is None or (is_int(lowres) and lowres == 0):
        return 0
    _, H, W = shape
    if not is_int(lowres) or lowres < 1 or H != W or H % lowres or H // lowres < 2:
        sides = [s for s in range(1, H // 2 + 1) if H % s == 0] if H == W else []
        raise DiffuseError(f"{where}={lowres!r}: the low-resolution side must divide the {H}x{W} images' side at a "
                           f"factor of 2 or more (allowed: 0 for off, {', '.join(map(str, sides)) or 'none'})")
    return int(lowres)


def degrade(x: Tensor, size: int) -> Tensor:
    """(B,C,H,W) in [-1, 1] -> (B,C,size,size): each low-resolution pixel the mean of its H/size square (a box
    filter), quantized to uint8 levels as an image file would hold it."""
    low = F.avg_pool2d(x.float(), x.shape[-1] // size)
    return ((low + 1) * 127.5).round().clamp(0, 255) / 127.5 - 1


def upsample(low: Tensor, size: int) -> Tensor:
    """(B,C,h,w) in [-1, 1] -> (B,C,size,size): bicubic, clipped to [-1, 1]; the network's condition (SR3 sec. 2.4)
    and the baseline it is compared with."""
    return F.interpolate(low.float(), size=(size, size), mode="bicubic", align_corners=False).clamp(-1, 1)


def superres_scores(images: np.ndarray, low: Tensor, truth: np.ndarray | None) -> dict:
    """How good upsampled images (n,H,W,C) uint8 are: consistency (their degradation against the low-res inputs
    (n,C,h,w) in [-1, 1], in uint8 levels: mean, largest, share within one level) and, when the true
    high-resolution images (n,H,W,C) uint8 are known, PSNR (all pixels together), RMSE and mean SSIM against them."""
    back = degrade(from_uint8(images), low.shape[-1])
    levels = ((back - low.float()).abs() * 127.5).round()  # (n,C,h,w) in uint8 levels
    out = {"consistency": {"mean_abs_uint8": round(levels.mean().item(), 4), "max_abs_uint8": int(levels.max().item()),
                           "within_1_share": round((levels <= 1).float().mean().item(), 6)}}
    if truth is not None:
        distance = image_distance(images, truth)
        out.update(psnr_db=distance["psnr_db"], rmse=distance["rmse"], ssim=ssim(images, truth))
    return out
