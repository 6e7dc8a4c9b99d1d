"""The training loop: batch -> loss -> optimizer -> EMA -> (every N) log row, sample grid, checkpoint."""

from __future__ import annotations

import copy
import csv
import logging
import math
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from diffuse import DiffuseError, precision
from diffuse.background_eval import BackgroundEval
from diffuse.checkpoint import LAST, checkpoint_metadata, load_weights, prune_checkpoints, save_checkpoint, state_tensors
from diffuse.data import BatchIterator
from diffuse.denoiser import DiffusionModel
from diffuse.ema import ema_decay, ema_update
from diffuse.generate import GenerationOptions, generate
from diffuse.images import save_png
from diffuse.loss import diffusion_loss
from diffuse.sample import picture
from diffuse.train_state import STATE_KEY, encode, optimizer_tensors, restore_optimizer, restore_rng, rng_tensors
from diffuse.ui import interactive, progress_bar

log = logging.getLogger(__name__)

EVAL_COLUMNS = ("fid", "kid", "precision", "recall", "classifier_score")  # train.eval_every rows


@dataclass(frozen=True)
class TrainOptions:
    """The `train.*` options (their defaults and meanings: conf/train.yaml)."""

    steps: int
    max_minutes: float
    batch_size: int
    lr: float
    warmup: int
    grad_clip: float
    ema_decay: float
    ema_warmup: bool
    precision: str
    compile: bool
    log_every: int
    sample_every: int
    sample_n: int
    sample_steps: int
    clip_x0: bool
    guidance: float
    ckpt_every: int
    keep_last: int
    milestone_every: int
    nonfinite: str
    cond_drop_prob: float
    eval_every: int
    eval_n: int
    eval_steps: int
    eval_batch_size: int

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "log_every", "sample_n", "sample_steps", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise DiffuseError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.cond_drop_prob < 1:
            raise DiffuseError(f"train.cond_drop_prob must be in [0, 1), got {self.cond_drop_prob}")
        if self.eval_n < 2 or self.eval_steps < 1:
            raise DiffuseError(f"train.eval_n must be >= 2 and train.eval_steps >= 1, got {self.eval_n} and {self.eval_steps}")
        for name in ("warmup", "sample_every", "ckpt_every", "grad_clip", "keep_last", "milestone_every", "eval_every",
                     "max_minutes"):
            if getattr(self, name) < 0:
                raise DiffuseError(f"train.{name} must be >= 0, got {getattr(self, name)}")
        if not self.lr > 0:
            raise DiffuseError(f"train.lr must be > 0, got {self.lr}")
        if not 0 <= self.ema_decay < 1:
            raise DiffuseError(f"train.ema_decay must be in [0, 1), got {self.ema_decay}")
        if not -100 <= self.guidance <= 100:
            raise DiffuseError(f"train.guidance must be in -100..100, got {self.guidance}")
        precision.check(self.precision, "train.precision")
        if self.nonfinite not in ("stop", "skip"):
            raise DiffuseError(f"train.nonfinite must be stop or skip, got {self.nonfinite!r}")

    def generation(self, n: int, steps: int, batch_size: int, seed: int, numeric: str) -> GenerationOptions:
        """How the grids and the background evaluation draw their images."""
        return GenerationOptions(n=n, batch_size=batch_size, steps=steps, seed=seed, precision=numeric,
                                 clip_x0=self.clip_x0, dynamic_threshold=0.0, guidance=self.guidance,
                                 guidance_rescale=0.0)


class TrainingInterrupted(DiffuseError):
    """SIGINT or SIGTERM: the step finished and a checkpoint was written."""


class StopRequest:
    """Turns SIGINT/SIGTERM into a flag checked between steps; a second signal interrupts at once."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._saved: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        if self.signal is not None:
            raise KeyboardInterrupt
        self.signal = signum
        log.warning("%s received: finishing this step, then saving a checkpoint (again to stop at once)",
                    signal.Signals(signum).name)

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._saved[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._saved.items():
            signal.signal(sig, handler)


def lr_at(step: int, opts: TrainOptions) -> float:
    """Linear warm-up to opts.lr, then constant (DDPM, Appendix B)."""
    return opts.lr * min(1.0, step / opts.warmup) if opts.warmup else opts.lr


class Checkpointer:
    """Writes last.safetensors (and step_N every ckpt_every steps): EMA and raw weights, optimizer, RNG states
    and the data position, so that a resume continues exactly; never over a good checkpoint with non-finite
    weights."""

    def __init__(self, folder: Path, opts: TrainOptions, config: dict):
        self.folder, self.opts, self.config = folder, opts, config

    def save(self, step: int, model, ema, optimizer, generator, batches: BatchIterator, skipped: int) -> Path:
        optim, groups = optimizer_tensors(optimizer)
        tensors = {**state_tensors(ema, "ema."), **state_tensors(model, "model."), **optim, **rng_tensors(generator)}
        if not all(bool(torch.isfinite(t).all()) for t in tensors.values() if t.is_floating_point()):
            raise DiffuseError(f"non-finite weights at step {step}: not overwriting the last good checkpoint in "
                               f"{self.folder}; lower train.lr (now {self.opts.lr}) or use train.precision=fp32")
        meta = checkpoint_metadata(step, self.config)
        meta[STATE_KEY] = encode(step, batches.epoch, batches.position, groups, skipped)
        paths = [self.folder / LAST]
        if self.opts.ckpt_every and step % self.opts.ckpt_every == 0:
            paths.insert(0, self.folder / f"step_{step:07d}.safetensors")
        save_checkpoint(paths, tensors, meta)
        prune_checkpoints(self.folder, self.opts.keep_last, self.opts.milestone_every)
        return paths[-1]


class MetricsLog:
    """metrics.csv: a row every log_every steps (loss, learning rate, speed) and one per background evaluation."""

    def __init__(self, path: Path, append: bool):
        self.file = open(path, "a" if append else "w", newline="")  # a resume into its own dir appends
        self.writer = csv.writer(self.file)
        if self.file.tell() == 0:
            self.writer.writerow(["step", "loss", "lr", "images_per_s", "elapsed_s", *EVAL_COLUMNS])
        self.t_start = time.perf_counter()

    def training(self, step: int, loss: float, lr: float, images_per_s: float, now: float) -> None:
        self.writer.writerow([step, f"{loss:.6f}", f"{lr:.3e}", f"{images_per_s:.1f}", f"{now - self.t_start:.2f}",
                              *[""] * len(EVAL_COLUMNS)])
        self.file.flush()

    def evaluations(self, results: list[tuple[int, dict]], n: int) -> None:
        for at, m in results:  # a row of its own: the step whose EMA weights were scored
            self.writer.writerow([at, "", "", "", f"{time.perf_counter() - self.t_start:.2f}",
                                  *(f"{m[k]:.6g}" for k in EVAL_COLUMNS)])
            self.file.flush()
            log.info("eval at step %d (%d images, %.0f s): FID %.3f  precision %.3f  recall %.3f  classifier score %.3f",
                     at, n, m["eval_seconds"], m["fid"], m["precision"], m["recall"], m["classifier_score"])

    def close(self) -> None:
        self.file.close()


def train(job, opts: TrainOptions) -> Path:
    """Train job.model's network on job.data (resuming from job.resume when set); returns the last checkpoint."""
    out, device = job.out_dir, job.device
    objective, schedule = job.model.objective, job.model.schedule

    # --- the network, its EMA copy, the optimizer, and the random streams of timesteps, noise and data order
    model = job.model.network.to(device).train()
    ema = copy.deepcopy(model).eval().requires_grad_(False)  # the weights we sample from
    optimizer = job.optimizer(model.parameters(), lr=lr_at(1, opts))
    generator = torch.Generator(device).manual_seed(job.seed)  # timesteps, noise, label dropout
    batches = BatchIterator(job.data, opts.batch_size, device, job.seed)
    start, skipped = 0, 0

    # --- continue exactly where a checkpoint left off
    if job.resume is not None:
        tensors, state, source = job.resume.tensors, job.resume.state, job.resume.source
        load_weights(model, tensors, "model.", source)
        load_weights(ema, tensors, "ema.", source)
        restore_optimizer(optimizer, {k: v for k, v in tensors.items() if k.startswith("optim.")},
                          state["param_groups"])  # load_state_dict moves moments to the parameters' device
        restore_rng(generator, tensors)
        batches.seek(state["epoch"], state["position"])
        start, skipped = state["step"], state.get("nonfinite_skipped", 0)
        if start >= opts.steps:
            raise DiffuseError(f"resume={source}: the checkpoint is at step {start} and train.steps={opts.steps}; "
                               f"raise train.steps to train further")
        log.info("resumed from %s at step %d", source, start)

    # --- how each step runs
    forward = torch.compile(model) if opts.compile else model
    conditional = model.conditional
    numeric = precision.resolve(opts.precision, device)
    autocast = precision.autocast(numeric, device)
    classes = list(range(model.num_classes)) if conditional else None  # grids: a row per class
    grids = opts.generation(opts.sample_n, opts.sample_steps, opts.sample_n, job.seed, numeric)
    log.info("training %s (%.2fM parameters) on %s, %s, steps %d..%d of %d images -> %s", type(model).__name__,
             sum(p.numel() for p in model.parameters()) / 1e6, device, numeric, start + 1, opts.steps,
             opts.batch_size, out)

    # --- what is written along the way
    checkpoints = Checkpointer(out / "checkpoints", opts, job.config)
    metrics = MetricsLog(out / "metrics.csv", append=bool(start))
    evaluator = BackgroundEval(job, opts.generation(opts.eval_n, opts.eval_steps, opts.eval_batch_size, job.seed,
                                                    numeric)) if opts.eval_every else None

    # --- the loop
    loss_sum, loss_count = torch.zeros((), device=device), 0
    t_last = metrics.t_start
    deadline = metrics.t_start + 60 * opts.max_minutes if opts.max_minutes else math.inf
    try:
        with progress_bar("training", opts.steps, interactive()) as bar, StopRequest() as stop:
            for step in range(start + 1, opts.steps + 1):
                # one optimizer step
                lr = lr_at(step, opts)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                x0, labels = next(batches)  # (B,C,H,W) in [-1, 1], (B,)
                with autocast:
                    loss = diffusion_loss(forward, objective, schedule, x0, generator,
                                          labels if conditional else None, opts.cond_drop_prob)
                if opts.nonfinite == "skip" and not bool(torch.isfinite(loss)):  # one host sync a step, in this mode only
                    skipped += 1
                    log.warning("step %d: non-finite loss %s, update skipped (%d so far)", step, loss.item(), skipped)
                else:
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    if opts.grad_clip:
                        torch.nn.utils.clip_grad_norm_(model.parameters(), opts.grad_clip)
                    optimizer.step()
                    ema_update(ema, model, ema_decay(step, opts.ema_decay, opts.ema_warmup))
                    loss_sum += loss.detach()  # no host sync until a log step
                    loss_count += 1

                # is this the last step, and does it log or save?
                last = step == opts.steps or time.perf_counter() >= deadline
                if last and step < opts.steps:
                    log.info("train.max_minutes=%g reached after step %d: finishing as the last step", opts.max_minutes, step)
                checkpoint = last or stop.signal is not None or (opts.ckpt_every and step % opts.ckpt_every == 0)

                # the loss, every log_every steps (and before every checkpoint: a blown-up loss saves nothing)
                if step % opts.log_every == 0 or last or checkpoint:
                    now = time.perf_counter()
                    mean_loss = (loss_sum / max(loss_count, 1)).item()
                    if not math.isfinite(mean_loss):
                        kept = (f"the last good checkpoint is {checkpoints.folder / LAST}" if (checkpoints.folder / LAST).exists()
                                else "no checkpoint had been written yet")
                        raise DiffuseError(f"the loss became {mean_loss} by step {step}; {kept}. Lower train.lr (now "
                                           f"{opts.lr}), use train.precision=fp32, or train.nonfinite=skip")
                    if step % opts.log_every == 0 or last:
                        metrics.training(step, mean_loss, lr, loss_count * opts.batch_size / (now - t_last), now)
                        log.info("step %d/%d  loss %.4f  lr %.2e  %.1f images/s", step, opts.steps, mean_loss, lr,
                                 loss_count * opts.batch_size / (now - t_last))
                        bar.update(step, loss=f"{mean_loss:.4f}", speed=f"{loss_count / (now - t_last):.2f} it/s")
                        loss_sum.zero_()
                        loss_count, t_last = 0, now
                bar.update(step)

                # background evaluation of the EMA weights
                if evaluator is not None:
                    if last:  # the final weights are always scored: let a running evaluation finish first
                        metrics.evaluations(evaluator.collect(wait=True), opts.eval_n)
                    if step % opts.eval_every == 0 or last:
                        evaluator.submit(step, ema)
                    metrics.evaluations(evaluator.collect(wait=last), opts.eval_n)

                # a grid of EMA samples from fixed noise
                if last or (opts.sample_every and step % opts.sample_every == 0):
                    drawn = generate(DiffusionModel(ema, objective, schedule, job.model.shape), job.sampler, grids,
                                     device, classes)
                    save_png(picture(drawn.images, drawn.labels, classes), out / "samples" / f"step_{step:07d}.png")
                    t_last = time.perf_counter()  # sampling time is not training time

                # the checkpoint, and a stop asked for by a signal (which may also arrive while the grid is drawn)
                if checkpoint or stop.signal is not None:
                    path = checkpoints.save(step, model, ema, optimizer, generator, batches, skipped)
                    t_last = time.perf_counter()
                if stop.signal is not None and not last:
                    raise TrainingInterrupted(
                        f"stopped by {signal.Signals(stop.signal).name} after step {step}; checkpoint {path}. "
                        f"Resume with: {job.resume_command}")
                if last:
                    break
    finally:
        metrics.close()
    log.info("done: steps %d..%d in %.1f s; checkpoint %s", start + 1, step, time.perf_counter() - metrics.t_start,
             checkpoints.folder / LAST)
    if skipped:
        log.warning("%d updates were skipped for non-finite losses", skipped)
    return checkpoints.folder / LAST
