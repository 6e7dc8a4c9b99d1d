"""`diffuse interpolate ckpt=...`: images along the spherical path between two noises, or, with images=, between two
real images through DDIM inversion, written as a strip; with images=, each image's round trip (inverted, then
walked back) is measured."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from torch import Tensor

from diffuse import DiffuseError, config as nodes
from diffuse.generate import GenerationOptions, generate, image_labels, model_denoiser, start_noise
from diffuse.images import grid, image_distance, save_png, to_uint8
from diffuse.inversion import invert, slerp
from diffuse.precision import resolve as resolve_precision
from diffuse.run import Context, SampleJob, checkpoint_job
from diffuse.start_images import model_images
from diffuse.ui import interactive, progress_bar

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InterpolateOptions(GenerationOptions):
    """The options of `diffuse interpolate` (defaults: conf/interpolate.yaml and conf/generate.yaml); `n` is the
    number of pairs (the strip's rows)."""

    frames: int  # images per pair, both ends included
    refine: int  # inversion (images=): fixed-point rounds per step (network evaluations per step: 1 + refine)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 2 <= self.frames <= 1000:
            raise DiffuseError(f"frames must be in 2..1000 (both ends included), got {self.frames}")
        if not 0 <= self.refine <= 20:
            raise DiffuseError(f"refine must be in 0..20 (fixed-point rounds per inversion step), got {self.refine}")


@dataclass(eq=False)
class InterpolateJob(SampleJob):
    ends: Tensor | None = None  # with images=: the real images the pairs run between, (m,C,H,W) in [-1, 1]
    source: str | None = None
    pair_classes: list[int] | None = None  # a conditional model with labelled images=: each pair's class


def build_interpolate(cfg: DictConfig, ctx: Context, opts: InterpolateOptions) -> InterpolateJob:
    """The checkpoint and a deterministic sampler (DDIM's update, with images=), and the images, checked."""
    config = nodes.plain(cfg)
    job = InterpolateJob(**vars(checkpoint_job(config, ctx, opts.steps)))
    sampler = job.sampler
    if not sampler.deterministic:
        raise DiffuseError(f"sampler {sampler.name} draws fresh noise along its walk, so nearby noises do not give "
                           f"nearby images; interpolate with a deterministic one, e.g. ddim (eta 0), dpmpp_2m, "
                           f"flow_euler")
    path = config.get("images")
    if path is not None:
        if not sampler.invertible:
            settings = f" with {sampler.settings}" if sampler.settings else ""
            raise DiffuseError(f"images= inverts the images with DDIM's update, and sampler {sampler.name}{settings} "
                               f"does not walk it back; use ddim (eta 0), euler or flow_euler")
        job.ends, labels = model_images(str(path), "images", job.loaded.model.shape)
        job.source = str(path)
        if len(job.ends) < 2:
            raise DiffuseError(f"images={path} holds {len(job.ends)} image; interpolation needs two (a pair per row)")
        if job.loaded.model.network.conditional and labels is not None and config.get("labels") is None and \
                config.get("label") is None:  # the images' own classes, one per row
            classes = job.loaded.model.network.num_classes
            if labels.min() < 0 or labels.max() >= classes:
                raise DiffuseError(f"images={path} has labels {labels.min()}..{labels.max()}, and the model knows "
                                   f"classes 0..{classes - 1}")
            index = np.arange(2 * opts.n) % len(labels)
            first, second = labels[index[0::2]], labels[index[1::2]]
            if (first != second).any():
                p = int(np.nonzero(first != second)[0][0])
                raise DiffuseError(f"images={path}: pair {p} runs from a {first[p]} to a {second[p]}, and a "
                                   f"conditional model walks each row under one class: pair images of one class, "
                                   f"or pass label=K")
            job.pair_classes = [int(k) for k in first]
    return job


def interpolate(job: InterpolateJob, opts: InterpolateOptions) -> Path:
    """Write strip.png (a row per pair; with images=, each row framed by its two real images), frames.npz
    (`images` (n*frames,H,W,C) uint8 pair by pair, `weights`, `labels` for a conditional model) and
    interpolation.json (with images=: the round trip of every image at the strip's ends)."""
    model, device, pairs = job.loaded.model, job.device, opts.n
    precision = resolve_precision(opts.precision, device)
    labels = (np.array(job.pair_classes) if job.pair_classes is not None  # the images' classes, or
              else image_labels(job.classes, pairs))  # pair p asks for classes[p % len(classes)]
    if job.ends is None:  # noises of images 0..2n-1, as `diffuse sample` seeds them
        noises, _ = start_noise(model.shape, opts.seed, 0, 2 * pairs, device)  # (2n,C,H,W)
        real = None
    else:
        index = torch.arange(2 * pairs) % len(job.ends)
        real = job.ends[index].to(device)  # (2n,C,H,W): pair p runs from image 2p to 2p+1 (mod their count)
        ts = job.sampler.check(model.schedule, opts.steps)
        pair_labels = None if labels is None else np.repeat(labels, 2)
        noises, total, evaluations = [], -(-2 * pairs // opts.batch_size) * opts.steps, 1
        with progress_bar("inverting", total, interactive(job.world.rank)) as bar:
            for a in range(0, 2 * pairs, opts.batch_size):
                b = slice(a, a + opts.batch_size)
                denoiser = model_denoiser(model, opts, None if labels is None else pair_labels[b], precision)
                evaluations = denoiser.evaluations  # per call: 2 when guided
                noises.append(invert(denoiser, model.schedule, real[b], ts, refine=opts.refine,
                                     on_step=lambda i, _, done=a // opts.batch_size * opts.steps:
                                     bar.update(done + i)))
        noises = torch.cat(noises)
    weights = np.linspace(0, 1, opts.frames)
    path = torch.stack([slerp(noises[0::2], noises[1::2], float(w)) for w in weights], 1)  # (n,frames,C,H,W)
    classes = None if labels is None else [int(k) for k in np.repeat(labels, opts.frames)]
    frames = replace(opts, n=pairs * opts.frames)
    with progress_bar("walking", -(-frames.n // opts.batch_size) * opts.steps, interactive(job.world.rank)) as bar:
        drawn = generate(model, job.sampler, frames, device, classes, on_step=bar.update, world=job.world,
                         noise=path.flatten(0, 1))
    if drawn is None:  # a rank other than 0 under torchrun
        return job.out_dir
    out = job.out_dir
    out.mkdir(parents=True, exist_ok=True)
    rows = drawn.images.reshape(pairs, opts.frames, *drawn.images.shape[1:])  # (n,frames,H,W,C)
    record = {"mode": "images" if real is not None else "noise", "pairs": pairs, "frames": opts.frames,
              "weights": weights.tolist(), "sampler": job.sampler.name, "steps": opts.steps,
              "spacing": job.sampler.spacing_for(model.schedule, opts.steps), "timesteps": drawn.timesteps,
              "nfe_per_image": drawn.nfe_per_image, "labels": None if labels is None else labels.tolist(),
              "checkpoint": str(job.loaded.path), "checkpoint_step": job.loaded.step, "options": asdict(opts)}
    if real is not None:
        ends = np.concatenate([rows[:, 0], rows[:, -1]])  # the walked-back images 2p, then 2p+1
        inversion = {"refine": opts.refine, "nfe_per_image": opts.steps * (1 + opts.refine) * evaluations,
                     "labels_from_file": job.pair_classes is not None}
        record.update(source=job.source, inversion=inversion,
                      round_trip=image_distance(ends, to_uint8(torch.cat([real[0::2], real[1::2]]))))
        real_u8 = to_uint8(real).reshape(pairs, 2, *rows.shape[2:])
        rows = np.concatenate([real_u8[:, :1], rows, real_u8[:, 1:]], 1)  # each row framed by its real images
    np.savez_compressed(out / "frames.npz", images=drawn.images, weights=weights,
                        **({} if labels is None else {"labels": np.repeat(labels, opts.frames)}))
    save_png(grid(rows.reshape(-1, *rows.shape[2:]), nrow=rows.shape[1]), out / "strip.png")
    (out / "interpolation.json").write_text(json.dumps(record, indent=2) + "\n")
    trip = record.get("round_trip")
    log.info("wrote %d pairs x %d frames to %s%s", pairs, opts.frames, out,
             "" if trip is None else f" (round trip: RMSE {trip['rmse']:.4f}, {trip['exact_share']:.0%} of the images "
                                     f"exact, largest pixel error {trip['max_abs_uint8']}/255)")
    return out
