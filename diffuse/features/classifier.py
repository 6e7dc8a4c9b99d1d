"""A small CNN classifier for small image data sets (MNIST-like): its penultimate layer gives the features
for a "classifier FID", its logits the classifier score and class coverage (the protocol pytorch-fid's
maintainers suggest for MNIST instead of ImageNet Inception features). Trained once per data set, then cached."""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save as safetensors_bytes
from torch import Tensor, nn

from diffuse import DiffuseError
from diffuse.checkpoint import write_atomic
from diffuse.data import ImageData
from diffuse.features.cache import fingerprint, read_tensors, sha256
from diffuse.features.extractors import Extractor

log = logging.getLogger(__name__)
VERSION = 2  # bump when the classifier's architecture or training changes: old caches are not reused
# v2: channels_last weights and batches (the same recipe; training and features 1.3x faster on a CPU:
# benchmarks/classifier.py)
MEMORY_FORMAT = torch.channels_last

FEATURES = 128  # width of the feature layer


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())


class Classifier(nn.Module):
    """conv-pool, conv-pool, conv-conv, global average pool, 128-d features, linear head.
    Input: uint8 images (B,C,H,W); output: (features (B,128), logits (B,K))."""

    def __init__(self, channels: int = 1, num_classes: int = 10):
        super().__init__()
        self.body = nn.Sequential(_block(channels, 32), nn.MaxPool2d(2), _block(32, 64), nn.MaxPool2d(2),
                                  _block(64, 128), _block(128, 128), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.embed = nn.Linear(128, FEATURES)
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(FEATURES, num_classes))

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        x = images.float().div(127.5).sub(1.0).contiguous(memory_format=MEMORY_FORMAT)  # (B,C,H,W) in [-1, 1]
        features = self.embed(self.body(x))  # (B,128), before the non-linearity
        return features, self.head(features)


def shift(x: Tensor, max_shift: int, generator: torch.Generator) -> Tensor:
    """Random translation by up to `max_shift` pixels per image (zero padding): (B,C,H,W) -> (B,C,H,W)."""
    B, _, H, W = x.shape
    padded = F.pad(x, (max_shift,) * 4)
    dy, dx = torch.randint(0, 2 * max_shift + 1, (2, B), generator=generator, device=generator.device).tolist()
    return torch.stack([padded[i, :, dy[i]:dy[i] + H, dx[i]:dx[i] + W] for i in range(B)])


@torch.no_grad()
def accuracy(model: Classifier, images: Tensor, labels: Tensor, batch_size: int = 1000) -> float:
    """Share of (N,C,H,W) uint8 images the model labels correctly."""
    model.eval()
    hits = 0
    for start in range(0, len(images), batch_size):
        _, logits = model(images[start:start + batch_size])
        hits += int((logits.argmax(1) == labels[start:start + batch_size]).sum())
    return hits / len(images)


def train_classifier(images: Tensor, labels: Tensor, num_classes: int, *, steps: int, batch_size: int = 128,
                     lr: float = 3e-3, max_shift: int = 2, flip: bool = False, seed: int = 0,
                     device: torch.device = torch.device("cpu")) -> Classifier:
    """Train a Classifier on (N,C,H,W) uint8 images: AdamW, one-cycle cosine learning rate, random shifts
    (and horizontal flips when `flip`). fp32: bf16 autocast measured 10x slower for these small convolutions
    on a CPU without AMX."""
    with torch.device("meta"):  # built without drawing from the global RNG: training may run in another thread
        model = Classifier(images.shape[1], num_classes)
    model = model.to_empty(device="cpu")
    init = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_parameters()  # ones, zeros and fresh running statistics: no randomness
        elif isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5), generator=init)  # torch's default, seeded
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    model = model.to(device, memory_format=MEMORY_FORMAT).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    g = torch.Generator(device).manual_seed(seed)
    images, labels = images.to(device), labels.to(device)
    for step in range(steps):
        for group in optimizer.param_groups:
            warm = min(1.0, (step + 1) / max(1, steps // 20))
            group["lr"] = lr * warm * 0.5 * (1 + math.cos(math.pi * step / steps))
        idx = torch.randint(0, len(images), (batch_size,), generator=g, device=device)
        x = shift(images[idx], max_shift, g) if max_shift else images[idx]  # (B,C,H,W) uint8
        if flip:
            mirror = torch.rand(batch_size, generator=g, device=device) < 0.5
            x = torch.where(mirror[:, None, None, None], x.flip(-1), x)
        _, logits = model(x)
        loss = F.cross_entropy(logits, labels[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return model.eval()


def classifier_extractor(train: ImageData, test: ImageData, cache_dir: Path, device: torch.device,
                         steps: int = 800, seed: int = 0) -> Extractor:
    """The domain classifier for `train`'s data set: loaded from the cache, or trained on the train split (and
    its test-split accuracy measured) at first use, then cached as safetensors."""
    if train.num_classes < 2:
        raise DiffuseError(f"data set {train.name!r} has no class labels, so there is no classifier for it; "
                           f"use features=inception")
    C, H, W = train.shape
    path = cache_dir / (f"classifier-{train.name}-{C}x{H}x{W}-k{train.num_classes}-{fingerprint(train)}-s{steps}"
                        f"-seed{seed}-v{VERSION}.safetensors")
    if not path.is_file():
        log.info("training the %s classifier (%d steps, once; cached at %s)", train.name, steps, path)
        t0 = time.perf_counter()
        model = train_classifier(train.images, train.labels, train.num_classes, steps=steps, seed=seed,
                                 flip=train.hflip, device=device)
        acc = accuracy(model, test.images.to(device), test.labels.to(device))
        meta = {"dataset": train.name, "test_accuracy": f"{acc:.6f}", "steps": str(steps), "seed": str(seed),
                "version": str(VERSION), "shape": json.dumps([C, H, W]),
                "num_classes": str(train.num_classes), "train_seconds": f"{time.perf_counter() - t0:.1f}"}
        tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        write_atomic(path, safetensors_bytes(tensors, metadata=meta))
        log.info("classifier test accuracy %.4f (%.0f s)", acc, time.perf_counter() - t0)
    tensors, meta = read_tensors(path)
    with torch.device("meta"):  # no global RNG draws (this may run beside training)
        model = Classifier(C, train.num_classes)
    try:
        model.load_state_dict(tensors, assign=True)
    except RuntimeError:
        raise DiffuseError(f"cache file {path} does not fit the classifier; delete it to rebuild it") from None
    model = model.to(memory_format=MEMORY_FORMAT)
    info = {"test_accuracy": float(meta.get("test_accuracy", "nan")), "trained_on": f"{train.name} train split",
            "steps": int(meta.get("steps", steps)), "path": str(path)}
    return Extractor("classifier", model, sha256(path), device, info)
