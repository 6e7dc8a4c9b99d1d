"""The training loop: batch -> loss -> AdamW -> EMA -> (every N) log row, sample grid, checkpoint."""

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
from diffuse.checkpoint import LAST, checkpoint_metadata, load_weights, prune_checkpoints, save_checkpoint, state_tensors
from diffuse.data import BatchIterator
from diffuse.denoiser import ModelDenoiser
from diffuse.ema import ema_decay, ema_update
from diffuse.evaluate import BackgroundEval
from diffuse.images import grid, save_png
from diffuse.loss import diffusion_loss
from diffuse.sample import class_grid, generate, image_labels
from diffuse.train_state import STATE_KEY, encode, optimizer_tensors, restore_optimizer, restore_rng, rng_tensors
from diffuse.ui import interactive, progress_bar

log = logging.getLogger(__name__)

EVAL_COLUMNS = ("fid", "kid", "precision", "recall", "classifier_score")  # train.eval_every rows


@dataclass
class TrainOptions:
    steps: int = 20000  # optimizer steps
    max_minutes: float = 0.0  # also stop after this much wall-clock time in the loop, as if at the last step (0 = off)
    batch_size: int = 128  # images per step
    lr: float = 2e-4  # peak learning rate, reached after `warmup` steps
    warmup: int = 500  # linear learning-rate warm-up steps
    grad_clip: float = 1.0  # max global gradient norm (0 = off)
    ema_decay: float = 0.9999  # EMA decay of the weights used for sampling
    ema_warmup: bool = True  # effective decay min(ema_decay, (1+step)/(10+step))
    precision: str = "auto"  # auto (bf16 where native) | fp32 | bf16 (autocast for forward and loss)
    compile: bool = False  # torch.compile the model
    log_every: int = 100  # a metrics.csv row and a log line every N steps
    sample_every: int = 1000  # an EMA sample grid every N steps (0 = only at the end)
    sample_n: int = 64  # images in each grid (fixed noise)
    sample_steps: int = 50  # sampler steps for the grids
    ckpt_every: int = 5000  # a step_N checkpoint every N steps (0 = only last)
    keep_last: int = 3  # step_N checkpoints kept (0 = all), besides milestones
    milestone_every: int = 0  # step_N checkpoints at multiples of this are never deleted (0 = none)
    nonfinite: str = "stop"  # a NaN/inf loss: stop (keep the last good checkpoint) | skip (drop that update)
    cond_drop_prob: float = 0.1  # conditional models: share of labels replaced by the null class (for guidance)
    eval_every: int = 0  # score the EMA weights every N steps in a background thread (0 = off)
    eval_n: int = 500  # images per evaluation
    eval_steps: int = 20  # sampler steps for them

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "log_every", "sample_n", "sample_steps"):
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
        precision.check(self.precision, "train.precision")
        if self.nonfinite not in ("stop", "skip"):
            raise DiffuseError(f"train.nonfinite must be stop or skip, got {self.nonfinite!r}")


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


def train(run, opts: TrainOptions) -> Path:
    """Train run.model on run.dataset (resuming from run.resume when set); returns the last checkpoint's path."""
    out, ckpt_dir = Path(run.out_dir), Path(run.out_dir) / "checkpoints"
    device, schedule = run.device, run.schedule
    model = run.model.to(device).train()
    ema = copy.deepcopy(model).eval().requires_grad_(False)  # the weights we sample from
    optimizer = run.optimizer(model.parameters(), lr=lr_at(1, opts))
    generator = torch.Generator(device).manual_seed(run.seed)  # timesteps and noise
    batches = BatchIterator(run.dataset, opts.batch_size, device, run.seed)
    start, skipped = 0, 0
    if run.resume is not None:
        tensors, state, source = run.resume
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
    forward = torch.compile(model) if opts.compile else model
    conditional = bool(getattr(model, "conditional", False))
    numeric = precision.resolve(opts.precision, device)
    autocast = precision.autocast(numeric, device)
    abar_table = schedule.abar.to(device)
    log.info("training %s (%.2fM parameters) on %s, %s, steps %d..%d of %d images -> %s", type(model).__name__,
             sum(p.numel() for p in model.parameters()) / 1e6, device, numeric, start + 1, opts.steps,
             opts.batch_size, out)

    def save(step: int) -> Path:
        optim, groups = optimizer_tensors(optimizer)
        tensors = {**state_tensors(ema, "ema."), **state_tensors(model, "model."), **optim, **rng_tensors(generator)}
        if not all(bool(torch.isfinite(t).all()) for t in tensors.values() if t.is_floating_point()):
            raise DiffuseError(f"non-finite weights at step {step}: not overwriting the last good checkpoint in "
                               f"{ckpt_dir}; lower train.lr (now {opts.lr}) or use train.precision=fp32")
        meta = checkpoint_metadata(step, run.parameterization, run.config)
        meta[STATE_KEY] = encode(step, batches.epoch, batches.position, groups, skipped)
        paths = [ckpt_dir / LAST]
        if opts.ckpt_every and step % opts.ckpt_every == 0:
            paths.insert(0, ckpt_dir / f"step_{step:07d}.safetensors")
        save_checkpoint(paths, tensors, meta)
        prune_checkpoints(ckpt_dir, opts.keep_last, opts.milestone_every)
        return paths[-1]

    metrics = open(out / "metrics.csv", "a" if start else "w", newline="")  # a resume into its own dir appends
    writer = csv.writer(metrics)
    if metrics.tell() == 0:
        writer.writerow(["step", "loss", "lr", "images_per_s", "elapsed_s", *EVAL_COLUMNS])
    evaluator = BackgroundEval(run, opts.eval_n, opts.eval_steps, numeric) if opts.eval_every else None

    def write_evals(results: list[tuple[int, dict]]) -> None:
        for at, m in results:  # a row of its own: the step whose EMA weights were scored
            writer.writerow([at, "", "", "", f"{time.perf_counter() - t_start:.2f}", *(f"{m[k]:.6g}" for k in EVAL_COLUMNS)])
            metrics.flush()
            log.info("eval at step %d (%d images, %.0f s): FID %.3f  precision %.3f  recall %.3f  classifier score %.3f",
                     at, opts.eval_n, m["eval_seconds"], m["fid"], m["precision"], m["recall"], m["classifier_score"])

    loss_sum, loss_count = torch.zeros((), device=device), 0
    t_start = t_last = time.perf_counter()
    deadline = t_start + 60 * opts.max_minutes if opts.max_minutes else math.inf
    with metrics, progress_bar("training", opts.steps, interactive()) as bar, StopRequest() as stop:
        for step in range(start + 1, opts.steps + 1):
            lr = lr_at(step, opts)
            for group in optimizer.param_groups:
                group["lr"] = lr
            x0, labels = next(batches)  # (B,C,H,W) in [-1, 1], (B,)
            with autocast:
                if conditional:
                    loss = diffusion_loss(forward, schedule, x0, run.parameterization, generator, abar_table,
                                          labels, model.num_classes, opts.cond_drop_prob)
                else:
                    loss = diffusion_loss(forward, schedule, x0, run.parameterization, generator, abar_table)
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

            last = step == opts.steps or time.perf_counter() >= deadline
            if last and step < opts.steps:
                log.info("train.max_minutes=%g reached after step %d: finishing as the last step", opts.max_minutes, step)
            checkpoint = last or stop.signal is not None or (opts.ckpt_every and step % opts.ckpt_every == 0)
            if step % opts.log_every == 0 or last or checkpoint:
                now = time.perf_counter()
                mean_loss = (loss_sum / max(loss_count, 1)).item()
                if not math.isfinite(mean_loss):
                    kept = (f"the last good checkpoint is {ckpt_dir / LAST}" if (ckpt_dir / LAST).exists()
                            else "no checkpoint had been written yet")
                    raise DiffuseError(f"the loss became {mean_loss} by step {step}; {kept}. Lower train.lr (now "
                                       f"{opts.lr}), use train.precision=fp32, or train.nonfinite=skip")
                if step % opts.log_every == 0 or last:
                    ips = loss_count * opts.batch_size / (now - t_last)
                    writer.writerow([step, f"{mean_loss:.6f}", f"{lr:.3e}", f"{ips:.1f}", f"{now - t_start:.2f}",
                                     *[""] * len(EVAL_COLUMNS)])
                    metrics.flush()
                    log.info("step %d/%d  loss %.4f  lr %.2e  %.1f images/s", step, opts.steps, mean_loss, lr, ips)
                    bar.update(step, loss=f"{mean_loss:.4f}", speed=f"{loss_count / (now - t_last):.2f} it/s")
                    loss_sum.zero_()
                    loss_count, t_last = 0, now
            bar.update(step)
            if evaluator is not None:
                if last:  # the final weights are always scored: let a running evaluation finish first
                    write_evals(evaluator.collect(wait=True))
                if step % opts.eval_every == 0 or last:
                    evaluator.submit(step, ema)
                write_evals(evaluator.collect(wait=last))

            if last or (opts.sample_every and step % opts.sample_every == 0):
                classes = list(range(model.num_classes)) if conditional else None  # a row per class
                labels = image_labels(classes, opts.sample_n)
                images = generate(ModelDenoiser(ema, schedule, run.parameterization, numeric, clip_x0=True), schedule,
                                  run.sampler, run.shape, n=opts.sample_n, batch_size=opts.sample_n,
                                  steps=opts.sample_steps, seed=run.seed, device=device, labels=labels)
                picture = grid(images) if labels is None else class_grid(images, labels, classes)
                save_png(picture, out / "samples" / f"step_{step:07d}.png")
                t_last = time.perf_counter()  # sampling time is not training time
            if checkpoint or stop.signal is not None:  # a signal may also arrive while the grid is drawn
                path = save(step)
                t_last = time.perf_counter()
            if stop.signal is not None and not last:
                raise TrainingInterrupted(
                    f"stopped by {signal.Signals(stop.signal).name} after step {step}; checkpoint {path}. "
                    f"Resume with: {run.resume_command}")
            if last:
                break
    log.info("done: steps %d..%d in %.1f s; checkpoint %s", start + 1, step, time.perf_counter() - t_start,
             ckpt_dir / LAST)
    if skipped:
        log.warning("%d updates were skipped for non-finite losses", skipped)
    return ckpt_dir / LAST
