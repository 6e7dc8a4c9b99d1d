"""What a training run writes along the way (rank 0 only): checkpoints, metrics.csv and TensorBoard events."""

from __future__ import annotations

import csv
import logging
import time
from pathlib import Path

import numpy as np
import torch

from diffuse import DiffuseError
from diffuse.checkpoint import LAST, checkpoint_metadata, prune_checkpoints, save_checkpoint, state_tensors
from diffuse.data import BatchIterator
from diffuse.distributed import World
from diffuse.train_state import STATE_KEY, encode, optimizer_tensors, rng_tensors

log = logging.getLogger(__name__)

EVAL_COLUMNS = ("fid", "kid", "precision", "recall", "classifier_score")  # train.eval_every rows


def finite(*modules_or_optimizers) -> bool:
    """Whether every floating-point weight, buffer and optimizer moment is finite."""
    for item in modules_or_optimizers:
        if isinstance(item, torch.optim.Optimizer):
            values = [v for state in item.state.values() for v in state.values() if torch.is_tensor(v)]
        else:
            values = [*item.parameters(), *item.buffers()]
        if not all(bool(torch.isfinite(v).all()) for v in values if v.is_floating_point()):
            return False
    return True


class Checkpointer:
    """Writes last.safetensors (and step_N every ckpt_every steps): EMA and raw weights, optimizer, every rank's
    RNG states and the data position, so that a resume continues exactly; never over a good checkpoint with
    non-finite weights. Under DDP every rank takes part (the weights are the same on all; the RNG states are
    gathered), rank 0 writes, and no rank goes on before the file is on disk."""

    def __init__(self, folder: Path, opts, config: dict, world: World):
        self.folder, self.opts, self.config, self.world = folder, opts, config, world

    def save(self, step: int, model, ema, optimizer, generator, batches: BatchIterator, skipped: int,
             end: int | None, extra: dict | None = None) -> Path:
        """`extra`: more tensors to keep (a loss's own training state, under its own prefix)."""
        if not finite(ema, model, optimizer):  # the same answer on every rank
            raise DiffuseError(f"non-finite weights at step {step}: not overwriting the last good checkpoint in "
                               f"{self.folder}; lower train.lr (now {self.opts.lr}) or use train.precision=fp32")
        rng = rng_tensors(generator, self.world)  # a collective under DDP
        paths = [self.folder / LAST]
        if self.opts.ckpt_every and step % self.opts.ckpt_every == 0:
            paths.insert(0, self.folder / f"step_{step:07d}.safetensors")
        if self.world.main:
            optim, groups = optimizer_tensors(optimizer)
            tensors = {**state_tensors(ema, "ema."), **state_tensors(model, "model."), **optim, **rng, **(extra or {})}
            meta = checkpoint_metadata(step, self.config)
            meta[STATE_KEY] = encode(step, batches.epoch, batches.position, groups, skipped, self.world.size, end)
            save_checkpoint(paths, tensors, meta)
            prune_checkpoints(self.folder, self.opts.keep_last, self.opts.milestone_every)
        self.world.barrier()
        return paths[-1]


class MetricsLog:
    """metrics.csv: a row every log_every steps (loss, learning rate, speed) and one per background evaluation;
    with `tensorboard`, the same as TensorBoard scalars, and the sample grids as images."""

    def __init__(self, folder: Path, append: bool, tensorboard: bool):
        self.file = open(folder / "metrics.csv", "a" if append else "w", newline="")  # a resume into its dir appends
        self.writer = csv.writer(self.file)
        if self.file.tell() == 0:
            self.writer.writerow(["step", "loss", "lr", "images_per_s", "elapsed_s", *EVAL_COLUMNS])
        self.board = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.board = SummaryWriter(str(folder / "tensorboard"))
        self.t_start = time.perf_counter()

    def training(self, step: int, loss: float, lr: float, images_per_s: float, now: float) -> None:
        self.writer.writerow([step, f"{loss:.6f}", f"{lr:.3e}", f"{images_per_s:.1f}", f"{now - self.t_start:.2f}",
                              *[""] * len(EVAL_COLUMNS)])
        self.file.flush()
        if self.board is not None:
            for name, value in (("loss", loss), ("lr", lr), ("images_per_s", images_per_s)):
                self.board.add_scalar(f"train/{name}", value, step)

    def evaluations(self, results: list[tuple[int, dict]], n: int) -> None:
        for at, m in results:  # a row of its own: the step whose EMA weights were scored
            self.writer.writerow([at, "", "", "", f"{time.perf_counter() - self.t_start:.2f}",
                                  *(f"{m[k]:.6g}" for k in EVAL_COLUMNS)])
            self.file.flush()
            log.info("eval at step %d (%d images, %.0f s): FID %.3f  precision %.3f  recall %.3f  classifier score %.3f",
                     at, n, m["eval_seconds"], m["fid"], m["precision"], m["recall"], m["classifier_score"])
            if self.board is not None:
                for key in EVAL_COLUMNS:
                    self.board.add_scalar(f"eval/{key}", m[key], at)

    def grid(self, step: int, picture: np.ndarray) -> None:
        if self.board is not None:  # (H,W,C) uint8
            self.board.add_image("samples", picture, step, dataformats="HWC")

    def close(self) -> None:
        self.file.close()
        if self.board is not None:
            self.board.close()
