"""The DDPM UNet (Ho et al. 2020, Appendix B) with Improved-DDPM scale-shift blocks; sizes come from YAML."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from diffuse.models.layers import Attention, Downsample, ResBlock, Upsample, group_norm, timestep_embedding


class UNet(nn.Module):
    """model(x_t (B,C,H,W), t (B,), labels (B,) | None, cond (B,cond_channels,H,W) | None) -> (B,C,H,W). A
    conditional UNet adds a class embedding to the timestep embedding, with one extra "null" class (index
    num_classes) for classifier-free guidance (Ho & Salimans 2022); labels=None means the null class. With
    cond_channels > 0 it takes an image condition concatenated to its input (SR3, Saharia et al. 2021, sec. 2.4)."""

    def __init__(
        self,
        in_channels: int = 1,  # image channels (the data set's)
        channels: int = 64,  # width of the first level
        channel_mult: tuple[int, ...] = (1, 2, 2),  # width multiplier per resolution level
        num_res_blocks: int = 2,  # residual blocks per level on the way down
        attention_levels: tuple[int, ...] = (2,),  # levels (0 = full resolution) with self-attention
        head_dim: int = 32,  # channels per attention head
        groups: int = 8,  # GroupNorm groups
        dropout: float = 0.0,
        conditional: bool = False,  # add a class-label embedding
        num_classes: int = 10,  # classes of the data set (set from it when training)
        upsample: str = "nearest_conv",  # the order of the up path's conv and 2x nearest (see layers.Upsample)
        upsample_narrows: bool = False,  # the up path's conv maps to the width of the level it enters
        cond_channels: int = 0,  # channels of an image condition (set from dataset.lowres: super-resolution)
    ):
        super().__init__()
        levels = len(channel_mult)
        if not (1 <= channels <= 4096 and 1 <= levels <= 8 and 0 <= num_res_blocks <= 16
                and all(1 <= m <= 64 for m in channel_mult) and 1 <= in_channels <= 4 and 0 <= cond_channels <= 16):
            raise ValueError(f"UNet sizes out of range: channels {channels} (1..4096), channel_mult {list(channel_mult)} "
                             f"(1..8 levels of 1..64), num_res_blocks {num_res_blocks} (0..16), in_channels {in_channels} "
                             f"(1..4), cond_channels {cond_channels} (0..16)")
        if any(not 0 <= a < levels for a in attention_levels):
            raise ValueError(f"attention_levels {list(attention_levels)} must lie in 0..{levels - 1}")
        if conditional and not 1 <= num_classes <= 100000:
            raise ValueError(f"num_classes must be in 1..100000, got {num_classes}")
        emb_dim = 4 * channels
        self.channels, self.conditional, self.num_classes = channels, conditional, num_classes
        self.cond_channels = cond_channels
        self.time_mlp = nn.Sequential(nn.Linear(channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.label_emb = nn.Embedding(num_classes + 1, emb_dim) if conditional else None  # the last row: null
        self.stem = nn.Conv2d(in_channels + cond_channels, channels, 3, padding=1)

        self.down = nn.ModuleList()
        skips, c = [channels], channels
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                block = nn.ModuleList([ResBlock(c, channels * mult, emb_dim, groups, dropout)])
                c = channels * mult
                if level in attention_levels:
                    block.append(Attention(c, groups, head_dim))
                self.down.append(block)
                skips.append(c)
            if level < levels - 1:
                self.down.append(nn.ModuleList([Downsample(c)]))
                skips.append(c)

        self.mid = nn.ModuleList([ResBlock(c, c, emb_dim, groups, dropout), Attention(c, groups, head_dim),
                                  ResBlock(c, c, emb_dim, groups, dropout)])

        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for _ in range(num_res_blocks + 1):
                block = nn.ModuleList([ResBlock(c + skips.pop(), channels * mult, emb_dim, groups, dropout)])
                c = channels * mult
                if level in attention_levels:
                    block.append(Attention(c, groups, head_dim))
                self.up.append(block)
            if level > 0:
                c_next = channels * channel_mult[level - 1] if upsample_narrows else c
                self.up.append(nn.ModuleList([Upsample(c, upsample, c_next)]))
                c = c_next

        self.head = nn.Sequential(group_norm(c, groups), nn.SiLU(), nn.Conv2d(c, in_channels, 3, padding=1))
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)

    def forward(self, x: Tensor, t: Tensor, labels: Tensor | None = None, cond: Tensor | None = None) -> Tensor:
        # x: (B,C,H,W), t: (B,) float timesteps, labels: (B,) int64 in 0..num_classes (num_classes = null),
        # cond: (B,cond_channels,H,W) the image condition
        emb = self.time_mlp(timestep_embedding(t, self.channels))  # (B, emb_dim)
        if self.label_emb is not None:
            if labels is None:
                labels = torch.full((x.shape[0],), self.num_classes, dtype=torch.long, device=x.device)
            emb = emb + self.label_emb(labels)
        elif labels is not None:
            raise ValueError("this model is unconditional: it takes no labels (train it with model.conditional=true)")
        if (cond is None) != (self.cond_channels == 0):
            raise ValueError(f"this model takes {self.cond_channels} condition channels, and was given "
                             f"{'none' if cond is None else cond.shape[1]}")
        h = self.stem(x if cond is None else torch.cat([x, cond.to(x.dtype)], dim=1))
        hs = [h]
        for block in self.down:
            h = _apply(block, h, emb)
            hs.append(h)
        h = _apply(self.mid, h, emb)
        for block in self.up:
            if isinstance(block[0], Upsample):
                h = block[0](h, hs[-1].shape[-2:])
            else:
                h = _apply(block, torch.cat([h, hs.pop()], dim=1), emb)
        return self.head(h)  # (B,C,H,W)


def _apply(block: nn.ModuleList, h: Tensor, emb: Tensor) -> Tensor:
    for layer in block:
        h = layer(h, emb) if isinstance(layer, ResBlock) else layer(h)
    return h
