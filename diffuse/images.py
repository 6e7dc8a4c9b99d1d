"""Tensors <-> uint8 images, grids, and distances between images."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor


def to_uint8(x: Tensor) -> np.ndarray:
    """(B,C,H,W) floats in [-1, 1] -> (B,H,W,C) uint8, rounding to nearest (values outside are clipped)."""
    x = ((x.float().cpu() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


def from_uint8(images: np.ndarray) -> Tensor:
    """(N,H,W,C) uint8 -> (N,C,H,W) float32 in [-1, 1]: the inverse of `to_uint8` on its values."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1


def grid(images: np.ndarray, nrow: int | None = None, pad: int = 2) -> np.ndarray:
    """Tile (B,H,W,C) uint8 images into one (H', W', C) image, `nrow` per row (default: square)."""
    B, H, W, C = images.shape
    nrow = nrow or math.ceil(math.sqrt(B))
    rows = math.ceil(B / nrow)
    out = np.zeros((rows * (H + pad) + pad, nrow * (W + pad) + pad, C), dtype=np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, nrow)
        out[pad + r * (H + pad): pad + r * (H + pad) + H, pad + c * (W + pad): pad + c * (W + pad) + W] = img
    return out


def save_png(image: np.ndarray, path: Path) -> None:
    """Write one (H,W,C) uint8 image, C in {1, 3}."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(path)


def image_distance(a: np.ndarray, b: np.ndarray) -> dict:
    """How far (N,H,W,C) uint8 images a are from b: the mean and worst per-image RMSE in [0, 1] units, the PSNR of
    all the pixels together in dB (None when a equals b), the share of images equal to theirs, and the largest
    difference of one pixel in uint8 levels."""
    diff = a.astype(np.float64) - b.astype(np.float64)
    mse = (diff ** 2).reshape(len(diff), -1).mean(1) / 255 ** 2  # (N,)
    rmse = np.sqrt(mse)
    return {"images": len(diff), "rmse": float(rmse.mean()), "rmse_max": float(rmse.max()),
            "psnr_db": float(10 * np.log10(1 / mse.mean())) if mse.mean() > 0 else None,
            "exact_share": float((mse == 0).mean()), "max_abs_uint8": int(np.abs(diff).max())}


def ssim(a: np.ndarray, b: np.ndarray, window: int = 11, sigma: float = 1.5) -> float:
    """The mean structural similarity of (N,H,W,C) uint8 images a and b (Wang et al. 2004, eq. 13): Gaussian
    window of `window` px and std `sigma`, K1 0.01, K2 0.03, data range 255, over every valid window position
    and channel, averaged over the images."""
    x, y = (torch.from_numpy(np.ascontiguousarray(v)).permute(0, 3, 1, 2).double() for v in (a, b))  # (N,C,H,W)
    C = x.shape[1]
    g = torch.exp(-((torch.arange(window, dtype=torch.float64) - (window - 1) / 2) ** 2) / (2 * sigma ** 2))
    g = g / g.sum()
    kernel = (g[:, None] * g[None, :]).expand(C, 1, window, window)

    def blur(v: Tensor) -> Tensor:
        return torch.nn.functional.conv2d(v, kernel, groups=C)

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mx, my = blur(x), blur(y)
    vx, vy, cov = blur(x * x) - mx ** 2, blur(y * y) - my ** 2, blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
    return float(s.mean())
