"""In-memory image data sets and the batch iterator that feeds training."""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from diffuse import DiffuseError


@dataclass(eq=False)
class ImageData:
    """A whole data set as one uint8 tensor: no per-item decoding in the training loop."""

    images: Tensor  # (N,C,H,W) uint8
    labels: Tensor  # (N,) int64
    num_classes: int  # 0: unlabelled
    name: str
    hflip: bool = False  # random horizontal flips while training (off for digits and text)
    class_names: tuple[str, ...] = ()

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # (C,H,W)

    def __len__(self) -> int:
        return len(self.images)


def reshape_images(images: Tensor, channels: int, image_size: int) -> Tensor:
    """Bring (N,C,H,W) uint8 images to `channels` (1 or 3) and a square `image_size` (antialiased resize)."""
    c = images.shape[1]
    if channels not in (1, 3):
        raise DiffuseError(f"dataset.channels must be 1 or 3, got {channels}")
    if not 8 <= image_size <= 1024:
        raise DiffuseError(f"dataset.image_size must be in 8..1024, got {image_size}")
    if c != channels:
        if c == 1:
            images = images.expand(-1, 3, -1, -1)
        else:  # ITU-R BT.601 luma, as PIL's convert("L")
            w = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
            images = (images.float() * w).sum(1, keepdim=True).round().to(torch.uint8)
    if images.shape[-1] != image_size or images.shape[-2] != image_size:
        out = F.interpolate(images.float(), size=(image_size, image_size), mode="bilinear", antialias=True)
        images = out.round().clamp(0, 255).to(torch.uint8)
    return images.contiguous()


def download_error(error: Exception) -> str:
    """Why a download failed, in one line: torchvision's message names every mirror it tried on lines of its own."""
    text = str(error)
    mirrors = re.findall(r"Tried (\S+?),? got", text)
    reasons = [m.strip() for m in re.findall(r"<urlopen error (.*?)>", text)]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    reason = reasons[-1] if reasons else (lines[-1] if lines else type(error).__name__)
    return f"tried {' and '.join(mirrors)}: {reason}" if mirrors else reason if reasons else "; ".join(lines) or reason


class BatchIterator:
    """Endless shuffled batches in [-1, 1] on `device`; epoch e's order is a pure function of (seed, e)."""

    def __init__(self, data: ImageData, batch_size: int, device: torch.device, seed: int):
        if not 1 <= batch_size <= len(data):
            raise DiffuseError(f"batch_size must be in 1..{len(data)} (the data set's size), got {batch_size}")
        pin = device.type == "cuda"
        self.images = data.images.pin_memory().to(device, non_blocking=True) if pin else data.images.to(device)
        self.labels = data.labels.to(device)
        self.batch_size, self.seed, self.device, self.hflip = batch_size, seed, device, data.hflip
        self.epoch, self.position = 0, 0  # where the next batch starts: enough to resume the data order
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(len(self.images), generator=g).to(self.device)

    def seek(self, epoch: int, position: int) -> None:
        """Continue from a saved (epoch, position): the batches that follow are the ones an unbroken run sees."""
        if epoch < 0 or not 0 <= position <= len(self.images):
            raise DiffuseError(f"data position (epoch {epoch}, item {position}) does not fit a data set of {len(self.images)}")
        self.epoch, self.position = epoch, position
        self._order = self._permutation(epoch)

    def __iter__(self) -> "BatchIterator":
        return self

    def __next__(self) -> tuple[Tensor, Tensor]:
        if self.position + self.batch_size > len(self.images):  # drop the ragged tail of each epoch
            self.epoch, self.position = self.epoch + 1, 0
            self._order = self._permutation(self.epoch)
        idx = self._order[self.position : self.position + self.batch_size]
        x = self.images[idx].float().div_(127.5).sub_(1.0)  # (B,C,H,W) in [-1, 1]
        if self.hflip:  # on the device; the flips are a pure function of (seed, epoch, position), so resume-exact
            g = torch.Generator(self.device).manual_seed((self.seed * 1_000_003 + self.epoch) * 1_000_033 + self.position)
            flip = torch.rand(len(idx), generator=g, device=self.device) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        self.position += self.batch_size
        return x, self.labels[idx]
