"""The training loop: batch -> loss -> AdamW -> EMA -> (every N) log row, sample grid, checkpoint."""

from __future__ import annotations

import contextlib
import copy
import csv
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from diffuse import DiffuseError
from diffuse.checkpoint import LAST, checkpoint_metadata, save_checkpoint, state_tensors
from diffuse.data import BatchIterator
from diffuse.denoiser import ModelDenoiser
from diffuse.ema import ema_decay, ema_update
from diffuse.images import grid, save_png
from diffuse.loss import diffusion_loss
from diffuse.sample import generate
from diffuse.ui import interactive, progress_bar

log = logging.getLogger(__name__)


@dataclass
class TrainOptions:
    steps: int = 20000  # optimizer steps
    batch_size: int = 128  # images per step
    lr: float = 2e-4  # peak learning rate, reached after `warmup` steps
    warmup: int = 500  # linear learning-rate warm-up steps
    grad_clip: float = 1.0  # max global gradient norm (0 = off)
    ema_decay: float = 0.9999  # EMA decay of the weights used for sampling
    ema_warmup: bool = True  # effective decay min(ema_decay, (1+step)/(10+step))
    precision: str = "bf16"  # fp32 | bf16 (autocast for forward and loss)
    compile: bool = False  # torch.compile the model
    log_every: int = 100  # a metrics.csv row and a log line every N steps
    sample_every: int = 1000  # an EMA sample grid every N steps (0 = only at the end)
    sample_n: int = 64  # images in each grid (fixed noise)
    sample_steps: int = 50  # sampler steps for the grids
    ckpt_every: int = 5000  # a step_N checkpoint every N steps (0 = only last)

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "log_every", "sample_n", "sample_steps"):
            if getattr(self, name) < 1:
                raise DiffuseError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup", "sample_every", "ckpt_every", "grad_clip"):
            if getattr(self, name) < 0:
                raise DiffuseError(f"train.{name} must be >= 0, got {getattr(self, name)}")
        if not self.lr > 0:
            raise DiffuseError(f"train.lr must be > 0, got {self.lr}")
        if not 0 <= self.ema_decay < 1:
            raise DiffuseError(f"train.ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.precision not in ("fp32", "bf16"):
            raise DiffuseError(f"train.precision must be fp32 or bf16, got {self.precision!r}")


def lr_at(step: int, opts: TrainOptions) -> float:
    """Linear warm-up to opts.lr, then constant (DDPM, Appendix B)."""
    return opts.lr * min(1.0, step / opts.warmup) if opts.warmup else opts.lr


def train(run, opts: TrainOptions) -> Path:
    """Train run.model on run.dataset; returns the path of the last checkpoint."""
    out = Path(run.out_dir)
    device, schedule = run.device, run.schedule
    model = run.model.to(device).train()
    ema = copy.deepcopy(model).eval().requires_grad_(False)  # the weights we sample from
    optimizer = run.optimizer(model.parameters(), lr=lr_at(1, opts))
    forward = torch.compile(model) if opts.compile else model
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if opts.precision == "bf16"
                else contextlib.nullcontext())
    generator = torch.Generator(device).manual_seed(run.seed)  # timesteps and noise
    batches = BatchIterator(run.dataset, opts.batch_size, device, run.seed)
    abar_table = schedule.abar.to(device)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("training %s (%.2fM parameters) on %s, %s, %d steps of %d images -> %s", type(model).__name__,
             n_params / 1e6, device, opts.precision, opts.steps, opts.batch_size, out)

    metrics = open(out / "metrics.csv", "w", newline="")
    writer = csv.writer(metrics)
    writer.writerow(["step", "loss", "lr", "images_per_s", "elapsed_s"])
    loss_sum, loss_count = torch.zeros((), device=device), 0
    t_start = t_last = time.perf_counter()
    with metrics, progress_bar("training", opts.steps, interactive()) as bar:
        for step in range(1, opts.steps + 1):
            lr = lr_at(step, opts)
            for group in optimizer.param_groups:
                group["lr"] = lr
            x0, _ = next(batches)  # (B,C,H,W) in [-1, 1]
            with autocast:
                loss = diffusion_loss(forward, schedule, x0, run.parameterization, generator, abar_table)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if opts.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), opts.grad_clip)
            optimizer.step()
            ema_update(ema, model, ema_decay(step, opts.ema_decay, opts.ema_warmup))
            loss_sum += loss.detach()  # no host sync until a log step
            loss_count += 1

            if step % opts.log_every == 0 or step == opts.steps:
                now = time.perf_counter()
                mean_loss = (loss_sum / loss_count).item()
                if not math.isfinite(mean_loss):
                    raise DiffuseError(f"the loss became {mean_loss} by step {step}; lower train.lr "
                                       f"(now {opts.lr}) or use train.precision=fp32")
                ips = loss_count * opts.batch_size / (now - t_last)
                writer.writerow([step, f"{mean_loss:.6f}", f"{lr:.3e}", f"{ips:.1f}", f"{now - t_start:.2f}"])
                metrics.flush()
                log.info("step %d/%d  loss %.4f  lr %.2e  %.1f images/s", step, opts.steps, mean_loss, lr, ips)
                bar.update(step, loss=f"{mean_loss:.4f}", speed=f"{loss_count / (now - t_last):.2f} it/s")
                loss_sum.zero_()
                loss_count, t_last = 0, now
            else:
                bar.update(step)

            last = step == opts.steps
            if last or (opts.sample_every and step % opts.sample_every == 0):
                images = generate(ModelDenoiser(ema, schedule, run.parameterization, opts.precision), schedule,
                                  run.sampler, run.shape, n=opts.sample_n, batch_size=opts.sample_n,
                                  steps=opts.sample_steps, seed=run.seed, device=device)
                save_png(grid(images), out / "samples" / f"step_{step:07d}.png")
                t_last = time.perf_counter()  # sampling time is not training time
            if last or (opts.ckpt_every and step % opts.ckpt_every == 0):
                tensors = {**state_tensors(ema, "ema."), **state_tensors(model, "model.")}
                meta = checkpoint_metadata(step, run.parameterization, run.config)
                paths = [out / "checkpoints" / LAST]
                if opts.ckpt_every and step % opts.ckpt_every == 0:
                    paths.insert(0, out / "checkpoints" / f"step_{step:07d}.safetensors")
                save_checkpoint(paths, tensors, meta)
                t_last = time.perf_counter()
    log.info("done: %d steps in %.1f s; checkpoint %s", opts.steps, time.perf_counter() - t_start,
             out / "checkpoints" / LAST)
    return out / "checkpoints" / LAST
