"""Generate images from a trained model: `diffuse sample ckpt=... steps=50`."""

from __future__ import annotations

import inspect
import json
import logging
import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from diffuse import DiffuseError
from diffuse.denoiser import ModelDenoiser
from diffuse.precision import check as check_precision, resolve as resolve_precision
from diffuse.images import grid, save_png, to_uint8
from diffuse.samplers.noise import randn_like
from diffuse.schedule import Schedule
from diffuse.ui import interactive, progress_bar

log = logging.getLogger(__name__)


@dataclass
class SampleOptions:
    n: int = 64  # number of images
    batch_size: int = 64  # images per sampler call
    steps: int = 50  # sampler steps (timesteps visited)
    seed: int = 0  # image i's noise comes from its own generator, seeded from (seed, i)
    precision: str = "fp32"  # fp32 | bf16 | auto (bf16 where native): autocast for the network
    png: bool = False  # also write one PNG per image under images/
    clip_x0: bool = True  # clamp each x0 prediction to [-1, 1], the data's range
    dynamic_threshold: float = 0.0  # Imagen's dynamic thresholding at this percentile of |x0| (0 = off)
    trajectory: bool = False  # also draw trajectory.png: x_t and the predicted x0 across the steps
    guidance: float = 1.0  # classifier-free guidance scale w (conditional models; 1 = conditional, 0 = unconditional)
    guidance_rescale: float = 0.0  # phi of Lin et al. 2024 (0 = off)
    format: str = "npz"  # npz | folder (also images/<class>/<i>.png, an ImageFolder of the samples)

    def __post_init__(self) -> None:
        if self.n < 1:
            raise DiffuseError(f"n must be >= 1, got {self.n}")
        if self.batch_size < 1:
            raise DiffuseError(f"batch_size must be >= 1, got {self.batch_size}")
        check_precision(self.precision)
        if self.format not in ("npz", "folder"):
            raise DiffuseError(f"format must be npz or folder, got {self.format!r}")
        if not -100 <= self.guidance <= 100:
            raise DiffuseError(f"guidance must be in -100..100, got {self.guidance}")


def sample_seed(seed: int, index: int) -> int:
    """A per-image seed: images do not depend on the batch size they were drawn in."""
    return (seed * 0x9E3779B97F4A7C15 + index) % 2**63


def generate(
    denoiser: Callable,
    schedule: Schedule,
    sampler: Callable,
    shape: tuple[int, int, int],  # (C,H,W)
    *,
    n: int,
    batch_size: int,
    steps: int,
    seed: int,
    device: torch.device,
    on_step: Callable[[int], None] | None = None,
    labels: np.ndarray | None = None,  # (n,) the class each image asks for (conditional models)
) -> np.ndarray:
    """Draw n images with `sampler`; returns (n,H,W,C) uint8, quantized exactly as saved."""
    out, done = [], 0
    base_denoiser = denoiser
    for start in range(0, n, batch_size):
        b = min(batch_size, n - start)
        gens = [torch.Generator(device).manual_seed(sample_seed(seed, i)) for i in range(start, start + b)]
        x_T = randn_like(torch.empty((b, *shape), device=device), gens)  # (b,C,H,W)
        if labels is not None:
            denoiser = base_denoiser.with_labels(torch.as_tensor(labels[start:start + b], dtype=torch.long))

        def step(i: int, total: int, base: int = done) -> None:
            if on_step is not None:
                on_step(base + i)

        x0 = sampler(denoiser, schedule, x_T, steps=steps, generator=gens, on_step=step)
        out.append(to_uint8(x0))
        done += steps
    return np.concatenate(out)


class TrajectoryRecorder:
    """Wraps a denoiser and keeps (t, x_t, predicted x0) of every call, for the first `keep` images."""

    def __init__(self, denoiser: Callable, keep: int):
        self.denoiser, self.keep, self.frames = denoiser, keep, []

    def with_labels(self, labels):
        bound = TrajectoryRecorder(self.denoiser.with_labels(labels), self.keep)
        bound.frames = self.frames
        return bound

    def __call__(self, x_t: torch.Tensor, t: float):
        eps, x0 = self.denoiser(x_t, t)
        self.frames.append((float(t), x_t[: self.keep].float().cpu(), x0[: self.keep].float().cpu()))
        return eps, x0


def trajectory_strip(frames: list[tuple[float, torch.Tensor, torch.Tensor]], columns: int = 10) -> tuple[np.ndarray, list[float]]:
    """A picture of denoising: for each image a row of x_t and a row of predicted x0, at `columns` evenly spaced
    network calls (first and last included). Returns the (H',W',C) uint8 strip and the timesteps shown."""
    m = min(columns, len(frames))
    picks = sorted({round(i * (len(frames) - 1) / max(1, m - 1)) for i in range(m)})
    rows = []
    for b in range(frames[0][1].shape[0]):
        rows.append(torch.stack([frames[i][1][b].clamp(-1, 1) for i in picks]))  # x_t, clipped for display
        rows.append(torch.stack([frames[i][2][b] for i in picks]))  # predicted x0
    tiles = to_uint8(torch.cat(rows))  # (2*B*len(picks),H,W,C)
    return grid(tiles, nrow=len(picks)), [frames[i][0] for i in picks]


def image_labels(labels: list[int] | None, n: int) -> np.ndarray | None:
    """Image i asks for labels[i % len(labels)]: every class gets n/len(labels) images, give or take one."""
    return None if labels is None else np.array([labels[i % len(labels)] for i in range(n)], dtype=np.int64)


def class_grid(images: np.ndarray, labels: np.ndarray, order: list[int]) -> np.ndarray:
    """One row per class in `order` (blank tiles pad the shorter rows): (H',W',C) uint8."""
    rows = [images[labels == k] for k in order]
    width = max(len(r) for r in rows)
    blank = np.zeros((1, *images.shape[1:]), dtype=images.dtype)
    tiles = np.concatenate([np.concatenate([r, *[blank] * (width - len(r))]) for r in rows])
    return grid(tiles, nrow=width)


def write_folder(images: np.ndarray, labels: np.ndarray | None, root: Path, num_classes: int) -> None:
    """images/<class>/<i>.png, class folders zero-padded so that sorted order is numeric order (as ImageFolder and
    dataset=folder read them); unconditional samples go to images/<i>.png."""
    width = len(str(max(num_classes - 1, 0)))
    for i, img in enumerate(images):
        sub = root if labels is None else root / f"{int(labels[i]):0{width}d}"
        save_png(img, sub / f"{i:06d}.png")


def sampler_record(sampler: Callable, schedule: Schedule, steps: int) -> dict:
    """What was run, for the output folder: the algorithm, its settings and the timesteps it visits."""
    fn = sampler.func if isinstance(sampler, partial) else sampler
    settings = dict(sampler.keywords) if isinstance(sampler, partial) else {}
    spacing = settings.get("spacing", inspect.signature(fn).parameters["spacing"].default)
    return {"sampler": fn.__name__, "settings": settings, "steps": steps,
            "timesteps": schedule.timesteps(steps, spacing)}


def sample(run, opts: SampleOptions) -> Path:
    """Write grid.png, samples.npz (key `images`: (n,H,W,C) uint8) and sampling.json into run.out_dir."""
    run.model.eval()
    denoiser = ModelDenoiser(run.model, run.schedule, run.parameterization, resolve_precision(opts.precision, run.device), opts.clip_x0,
                             opts.dynamic_threshold, opts.guidance, opts.guidance_rescale)
    labels = image_labels(run.labels, opts.n)
    batches = -(-opts.n // opts.batch_size)
    t0 = time.perf_counter()
    with progress_bar("sampling", batches * opts.steps, interactive()) as bar:
        images = generate(denoiser, run.schedule, run.sampler, run.shape, n=opts.n, batch_size=opts.batch_size,
                          steps=opts.steps, seed=opts.seed, device=run.device, on_step=bar.update, labels=labels)
    wall = time.perf_counter() - t0
    out = Path(run.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out / "samples.npz", images=images, **({} if labels is None else {"labels": labels}))
    save_png(grid(images) if labels is None else class_grid(images, labels, list(dict.fromkeys(run.labels))), out / "grid.png")
    if opts.png or opts.format == "folder":
        write_folder(images, labels, out / "images", getattr(run.model, "num_classes", 1))
    nfe_per_image = denoiser.nfe // batches
    if opts.trajectory:  # image i depends only on (seed, i): redraw the first few with a recorder
        recorder = TrajectoryRecorder(denoiser, keep=min(8, opts.n))
        generate(recorder, run.schedule, run.sampler, run.shape, n=recorder.keep, batch_size=recorder.keep,
                 steps=opts.steps, seed=opts.seed, device=run.device,
                 labels=None if labels is None else labels[: recorder.keep])
        strip, shown = trajectory_strip(recorder.frames)
        save_png(strip, out / "trajectory.png")
        (out / "trajectory.json").write_text(json.dumps({"rows": "per image: x_t, then predicted x0",
                                                         "timesteps": shown}, indent=2) + "\n")
    record = sampler_record(run.sampler, run.schedule, opts.steps)
    record.update(labels=run.labels, guidance=opts.guidance if labels is not None else None,
                  nfe_per_image=nfe_per_image, checkpoint=str(run.checkpoint), checkpoint_step=run.step,
                  options=asdict(opts), wall_seconds=round(wall, 3), images_per_second=round(opts.n / wall, 3))
    (out / "sampling.json").write_text(json.dumps(record, indent=2) + "\n")
    log.info("wrote %d images to %s (%.1f s, %.2f images/s, %d NFE per image)", opts.n, out, wall, opts.n / wall,
             record["nfe_per_image"])
    return out
