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
    precision: str = "fp32"  # fp32 | bf16 (autocast for the network)
    png: bool = False  # also write one PNG per image under images/
    clip_x0: bool = False  # clamp each x0 prediction to [-1, 1]
    dynamic_threshold: float = 0.0  # Imagen's dynamic thresholding at this percentile of |x0| (0 = off)

    def __post_init__(self) -> None:
        if self.n < 1:
            raise DiffuseError(f"n must be >= 1, got {self.n}")
        if self.batch_size < 1:
            raise DiffuseError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.precision not in ("fp32", "bf16"):
            raise DiffuseError(f"precision must be fp32 or bf16, got {self.precision!r}")


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
) -> np.ndarray:
    """Draw n images with `sampler`; returns (n,H,W,C) uint8, quantized exactly as saved."""
    out, done = [], 0
    for start in range(0, n, batch_size):
        b = min(batch_size, n - start)
        gens = [torch.Generator(device).manual_seed(sample_seed(seed, i)) for i in range(start, start + b)]
        x_T = randn_like(torch.empty((b, *shape), device=device), gens)  # (b,C,H,W)

        def step(i: int, total: int, base: int = done) -> None:
            if on_step is not None:
                on_step(base + i)

        x0 = sampler(denoiser, schedule, x_T, steps=steps, generator=gens, on_step=step)
        out.append(to_uint8(x0))
        done += steps
    return np.concatenate(out)


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
    denoiser = ModelDenoiser(run.model, run.schedule, run.parameterization, opts.precision, opts.clip_x0,
                             opts.dynamic_threshold)
    batches = -(-opts.n // opts.batch_size)
    t0 = time.perf_counter()
    with progress_bar("sampling", batches * opts.steps, interactive()) as bar:
        images = generate(denoiser, run.schedule, run.sampler, run.shape, n=opts.n, batch_size=opts.batch_size,
                          steps=opts.steps, seed=opts.seed, device=run.device, on_step=bar.update)
    wall = time.perf_counter() - t0
    out = Path(run.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out / "samples.npz", images=images)
    save_png(grid(images), out / "grid.png")
    if opts.png:
        for i, img in enumerate(images):
            save_png(img, out / "images" / f"{i:06d}.png")
    record = sampler_record(run.sampler, run.schedule, opts.steps)
    record.update(nfe_per_image=denoiser.nfe // batches, checkpoint=str(run.checkpoint), checkpoint_step=run.step,
                  options=asdict(opts), wall_seconds=round(wall, 3), images_per_second=round(opts.n / wall, 3))
    (out / "sampling.json").write_text(json.dumps(record, indent=2) + "\n")
    log.info("wrote %d images to %s (%.1f s, %.2f images/s, %d NFE per image)", opts.n, out, wall, opts.n / wall,
             record["nfe_per_image"])
    return out
