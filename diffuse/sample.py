"""`diffuse sample ckpt=... steps=50`: draw images from a trained model and write them, a grid and a record."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from diffuse import DiffuseError
from diffuse.generate import generate
from diffuse.images import grid, save_png, to_uint8
from diffuse.start_images import StartOptions, start_record
from diffuse.ui import interactive, progress_bar

log = logging.getLogger(__name__)
FORMATS = ("npz", "adm", "folder")


@dataclass(frozen=True)
class SampleOptions(StartOptions):
    """The options of `diffuse sample` (defaults: conf/sample.yaml, conf/start.yaml and conf/generate.yaml)."""

    png: bool  # also write one PNG per image under images/
    trajectory: bool  # also draw trajectory.png: x_t and the predicted x0 across the steps
    format: str  # npz | adm (samples.npz with ADM's keys) | folder (also images/<class>/<i>.png)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.format not in FORMATS:
            raise DiffuseError(f"format must be {' or '.join(FORMATS)}, got {self.format!r}")


class TrajectoryRecorder:
    """Keeps (t, x_t, predicted x0) of every denoiser call, for the first `keep` images of a batch."""

    def __init__(self, keep: int):
        self.keep, self.frames = keep, []

    def __call__(self, t: float, x_t: torch.Tensor, eps: torch.Tensor, x0: torch.Tensor) -> None:
        self.frames.append((float(t), x_t[: self.keep].float().cpu(), x0[: self.keep].float().cpu()))


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


def class_grid(images: np.ndarray, labels: np.ndarray, order: list[int]) -> np.ndarray:
    """One row per class in `order` (blank tiles pad the shorter rows): (H',W',C) uint8."""
    rows = [images[labels == k] for k in order]
    width = max(len(r) for r in rows)
    blank = np.zeros((1, *images.shape[1:]), dtype=images.dtype)
    tiles = np.concatenate([np.concatenate([r, *[blank] * (width - len(r))]) for r in rows])
    return grid(tiles, nrow=width)


def picture(images: np.ndarray, labels: np.ndarray | None, classes: list[int] | None) -> np.ndarray:
    """A grid of the images: square, or one row per class asked for."""
    return grid(images) if labels is None else class_grid(images, labels, list(dict.fromkeys(classes)))


def write_folder(images: np.ndarray, labels: np.ndarray | None, root: Path, num_classes: int) -> None:
    """images/<class>/<i>.png, class folders zero-padded so that sorted order is numeric order (as ImageFolder and
    dataset=folder read them); unconditional samples go to images/<i>.png."""
    width = len(str(max(num_classes - 1, 0)))
    for i, img in enumerate(images):
        sub = root if labels is None else root / f"{int(labels[i]):0{width}d}"
        save_png(img, sub / f"{i:06d}.png")


def sample(job, opts: SampleOptions) -> Path:
    """Write grid.png, samples.npz (key `images`: (n,H,W,C) uint8; `labels` for a conditional model; with
    format=adm `arr_0` and `arr_1`, as openai/guided-diffusion's and DiT's samplers write them) and sampling.json
    into job.out_dir. Under torchrun the ranks share the drawing and rank 0 writes."""
    model, out = job.loaded.model, job.out_dir
    batches = -(-len(job.world.shard(opts.n)) // opts.batch_size)
    with progress_bar("sampling", batches * opts.steps, interactive(job.world.rank)) as bar:
        drawn = generate(model, job.sampler, opts, job.device, job.classes, on_step=bar.update, world=job.world,
                         images=job.images)
    if drawn is None:  # a rank other than 0 under torchrun: rank 0 has the images and writes them
        return out
    out.mkdir(parents=True, exist_ok=True)
    labels = drawn.labels
    keys = ("arr_0", "arr_1") if opts.format == "adm" else ("images", "labels")  # ADM's, or ours
    np.savez_compressed(out / "samples.npz", **{keys[0]: drawn.images}, **({} if labels is None else {keys[1]: labels}))
    save_png(picture(drawn.images, labels, job.classes), out / "grid.png")
    if opts.png or opts.format == "folder":
        write_folder(drawn.images, labels, out / "images", model.network.num_classes)
    if opts.trajectory and len(drawn.timesteps) == 1:
        log.warning("trajectory=true: strength=0 walks no step, so there is no trajectory.png to draw")
    elif opts.trajectory:  # image i depends only on (seed, i): redraw the first few, recording every call
        recorder = TrajectoryRecorder(keep=min(8, opts.n))
        generate(model, job.sampler, replace(opts, n=recorder.keep, batch_size=recorder.keep), job.device,
                 job.classes, observe=recorder, images=job.images)
        strip, shown = trajectory_strip(recorder.frames)
        save_png(strip, out / "trajectory.png")
        (out / "trajectory.json").write_text(json.dumps({"rows": "per image: x_t, then predicted x0",
                                                         "timesteps": shown}, indent=2) + "\n")
    record = {"sampler": job.sampler.name, "settings": {**job.sampler.settings, "spacing": job.sampler.spacing},
              "spacing": job.sampler.spacing_for(model.schedule, opts.steps), "steps": opts.steps,
              "timesteps": drawn.timesteps, "labels": job.classes,
              "start": start_record(job.images, drawn.timesteps),
              "guidance": opts.guidance if labels is not None else None, "nfe_per_image": drawn.nfe_per_image,
              "precision": drawn.precision, "checkpoint": str(job.loaded.path), "checkpoint_step": job.loaded.step,
              "options": asdict(opts), "wall_seconds": round(drawn.seconds, 3),
              "images_per_second": round(opts.n / drawn.seconds, 3)}
    (out / "sampling.json").write_text(json.dumps(record, indent=2) + "\n")
    log.info("wrote %d images to %s (%s, %d steps, %d NFE per image; %.1f s, %.2f images/s)", opts.n, out,
             job.sampler.name, opts.steps, drawn.nfe_per_image, drawn.seconds, opts.n / drawn.seconds)
    return out
