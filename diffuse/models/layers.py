"""UNet building blocks: timestep embedding, residual block, self-attention, resampling."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps (Vaswani et al. 2017, sec. 3.5). t: (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


def group_norm(channels: int, groups: int) -> nn.GroupNorm:
    if channels % groups:
        raise ValueError(f"GroupNorm: {channels} channels do not split into {groups} groups")
    return nn.GroupNorm(groups, channels)


class ResBlock(nn.Module):
    """Residual block with a scale-shift timestep modulation (Nichol & Dhariwal 2021, sec. 3; BigGAN-style)."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, groups: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = group_norm(c_in, groups)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * c_out)
        self.norm2 = group_norm(c_out, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)  # each block starts as the identity
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:  # x: (B,c_in,H,W), emb: (B,emb_dim)
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h  # (B,c_out,H,W)


class Attention(nn.Module):
    """Multi-head self-attention over the H*W positions (DDPM's attention block)."""

    def __init__(self, channels: int, groups: int, head_dim: int = 32):
        super().__init__()
        if channels % head_dim:
            raise ValueError(f"attention: {channels} channels do not split into heads of {head_dim}")
        self.heads = channels // head_dim
        self.norm = group_norm(channels, groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: Tensor) -> Tensor:  # (B,C,H,W)
        B, C, H, W = x.shape
        qkv = self.qkv(self.norm(x)).reshape(B, 3, self.heads, C // self.heads, H * W)
        q, k, v = qkv.transpose(-1, -2).unbind(1)  # each (B, heads, HW, head_dim)
        h = F.scaled_dot_product_attention(q, k, v)
        h = h.transpose(-1, -2).reshape(B, C, H, W)
        return x + self.proj(h)


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:  # (B,C,H,W) -> (B,C,ceil(H/2),ceil(W/2))
        return self.conv(x)


class Upsample(nn.Module):
    """2x nearest upsampling with a 3x3 conv: after it ("nearest_conv", DDPM's) or before it at the low
    resolution ("conv_nearest": a quarter of the FLOPs, the same parameters). out_channels below channels
    narrows the features as U-Net's up-convolution does (Ronneberger et al. 2015, sec. 2)."""

    ORDERS = ("nearest_conv", "conv_nearest")

    def __init__(self, channels: int, order: str = "nearest_conv", out_channels: int | None = None):
        super().__init__()
        if order not in self.ORDERS:
            raise ValueError(f"upsample {order!r} is not one of {', '.join(self.ORDERS)}")
        self.order = order
        self.conv = nn.Conv2d(channels, out_channels or channels, 3, padding=1)

    def forward(self, x: Tensor, size: tuple[int, int]) -> Tensor:  # (B,C,h,w) -> (B,C_out,*size)
        if self.order == "conv_nearest":
            return F.interpolate(self.conv(x), size=size, mode="nearest")
        return self.conv(F.interpolate(x, size=size, mode="nearest"))
