"""The training loop: batch -> loss (the job's: diffusion_loss, or a distillation round's) -> optimizer -> EMA ->
(every N) log row, sample grid, checkpoint; on one process, or as one of the ranks torchrun starts (DDP)."""

from __future__ import annotations

import copy
import logging
import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from diffuse import DiffuseError, precision
from diffuse.background_eval import BackgroundEval
from diffuse.checkpoint import LAST, load_weights
from diffuse.data import BatchIterator
from diffuse.denoiser import DiffusionModel
from diffuse.distributed import World, lost_peer
from diffuse.ema import ema_decay, ema_update
from diffuse.generate import GenerationOptions, generate
from diffuse.images import save_png
from diffuse.sample import picture
from diffuse.stop import StopRequest, TrainingInterrupted
from diffuse.train_records import Checkpointer, MetricsLog
from diffuse.train_state import restore_optimizer, restore_rng
from diffuse.ui import interactive, progress_bar

log = logging.getLogger(__name__)

AGREE_EVERY = 10  # under DDP, the ranks agree on stopping (signal, time budget) every this many steps
PLAN_STEPS = (5, 25)  # with train.max_minutes, the speed of steps 6..25 plans the run's last step; it is planned
# again at steps 50, 100, 200, ... from the speed since the previous plan, and a last time at LAST_PLAN of the plan
LAST_PLAN = 0.9  # (a CPU's speed drifts by 10-20% over minutes: planning only early left 4-8% of a budget unused)
LR_DECAYS = ("none", "cosine", "linear")


@dataclass(frozen=True)
class TrainOptions:
    """The `train.*` options (their defaults and meanings: conf/train_options.yaml)."""

    steps: int
    max_minutes: float
    batch_size: int
    lr: float
    warmup: int
    lr_decay: str
    grad_clip: float
    ema_decay: float
    ema_warmup: bool
    precision: str
    compile: bool
    compile_backend: str
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
    tensorboard: bool

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
        if self.lr_decay not in LR_DECAYS:
            raise DiffuseError(f"train.lr_decay must be one of {', '.join(LR_DECAYS)}, got {self.lr_decay!r}")
        if not 0 <= self.ema_decay < 1:
            raise DiffuseError(f"train.ema_decay must be in [0, 1), got {self.ema_decay}")
        if not -100 <= self.guidance <= 100:
            raise DiffuseError(f"train.guidance must be in -100..100, got {self.guidance}")
        precision.check(self.precision, "train.precision")
        backends = torch.compiler.list_backends(exclude_tags=())
        if self.compile_backend not in backends:
            raise DiffuseError(f"train.compile_backend must be one of {', '.join(backends)}, got {self.compile_backend!r}")
        if self.nonfinite not in ("stop", "skip"):
            raise DiffuseError(f"train.nonfinite must be stop or skip, got {self.nonfinite!r}")

    def generation(self, n: int, steps: int, batch_size: int, seed: int, numeric: str) -> GenerationOptions:
        """How the grids and the background evaluation draw their images."""
        return GenerationOptions(n=n, batch_size=batch_size, steps=steps, seed=seed, precision=numeric,
                                 clip_x0=self.clip_x0, dynamic_threshold=0.0, guidance=self.guidance,
                                 guidance_rescale=0.0)


def lr_at(step: int, opts: TrainOptions, end: int) -> float:
    """Linear warm-up to opts.lr (DDPM, Appendix B), then constant, or decaying to 0 at step `end` along a half
    cosine (Loshchilov & Hutter 2017, eq. 5) or a line."""
    if opts.warmup and step < opts.warmup:
        return opts.lr * step / opts.warmup
    if opts.lr_decay == "none" or end <= opts.warmup:
        return opts.lr
    done = min(1.0, (step - opts.warmup) / (end - opts.warmup))
    return opts.lr * (0.5 * (1 + math.cos(math.pi * done)) if opts.lr_decay == "cosine" else 1 - done)


def planned_end(opts: TrainOptions, world: World, seconds_per_step: float, step: int, seconds_left: float) -> int:
    """The last step a wall-clock budget allows at the measured speed (the ranks' mean, so all agree), kept under
    train.steps, with 3% of what is left spared for checkpoints and the last log lines."""
    rate = world.mean(torch.tensor(1.0 / seconds_per_step, dtype=torch.float64)).item()
    return max(step + 1, min(opts.steps, step + int(0.97 * seconds_left * rate)))


def rank_seed(seed: int, rank: int) -> int:
    """Rank r's own global RNG seed (dropout): rank 0 keeps the seed itself, as a single process does."""
    return seed if rank == 0 else (seed * 1_000_003 + rank * 7919) % 2**63


def resume(job, opts: TrainOptions, world: World, model, ema, optimizer, generator,
           batches: BatchIterator) -> tuple[int, int]:
    """Continue exactly where a checkpoint left off: weights, EMA, optimizer, RNG streams, data position. Returns
    (step, non-finite updates skipped so far)."""
    tensors, state, source = job.resume.tensors, job.resume.state, job.resume.source
    load_weights(model, tensors, "model.", source)
    load_weights(ema, tensors, "ema.", source)
    restore_optimizer(optimizer, {k: v for k, v in tensors.items() if k.startswith("optim.")},
                      state["param_groups"])  # load_state_dict moves moments to the parameters' device
    written_by = state.get("world_size", 1)
    if not restore_rng(generator, tensors, world) or written_by != world.size:
        log.warning("resume=%s was written by %d rank(s) and this run has %d: data order, timesteps and noise continue "
                    "exactly (they do not depend on the number of ranks), but dropout streams and the order of float "
                    "sums do, so the weights will not be bitwise those of an unbroken run", source, written_by,
                    world.size)
    if hasattr(job.loss, "load_state"):  # a loss with training state of its own (diffuse.adversarial's critic)
        job.loss.load_state(tensors, source, job.device)
    batches.seek(state["epoch"], state["position"])
    start = state["step"]
    if start >= opts.steps:
        raise DiffuseError(f"resume={source}: the checkpoint is at step {start} and train.steps={opts.steps}; "
                           f"raise train.steps to train further")
    log.info("resumed from %s at step %d", source, start)
    return start, state.get("nonfinite_skipped", 0)


def loss_state(loss) -> dict:
    """The tensors of a loss with training state of its own (diffuse.adversarial's critic), for a checkpoint."""
    return loss.state_tensors() if hasattr(loss, "state_tensors") else {}


def train(job, opts: TrainOptions) -> Path:
    """Train job.model's network on job.data (resuming from job.resume when set); returns the last checkpoint.
    Under torchrun (job.world.size W > 1) every rank runs this: each step, every rank draws the whole batch's
    timesteps and noise from the one seeded stream and trains on its 1/W share (DDP averages the gradients), so
    the run is the same, up to float summation order, for any number of ranks."""
    out, device, world = job.out_dir, job.device, job.world
    objective, schedule = job.model.objective, job.model.schedule

    # --- the network, its EMA copy, the optimizer, and the random streams of timesteps, noise and data order
    model = job.model.network.to(device).train()
    ema = copy.deepcopy(model).eval().requires_grad_(False)  # the weights we sample from
    optimizer = job.optimizer(model.parameters(), lr=lr_at(1, opts, opts.steps))
    generator = torch.Generator(device).manual_seed(job.seed)  # timesteps, noise, label dropout: the same on all ranks
    batches = BatchIterator(job.data, opts.batch_size, device, job.seed)  # the whole batch, on every rank
    if world.rank:
        torch.manual_seed(rank_seed(job.seed, world.rank))  # its own dropout; the weights come from rank 0 (DDP)
    start, skipped = resume(job, opts, world, model, ema, optimizer, generator, batches) if job.resume else (0, 0)
    # the last step: train.steps, or, with a time budget, what the speed measured over steps PLAN_STEPS allows;
    # a resumed run keeps the plan it was written with, so its learning rates continue exactly
    planned = job.resume.state.get("end") if job.resume else None
    if planned is not None and start >= planned:
        raise DiffuseError(f"resume={job.resume.source}: the checkpoint is at step {start}, where its train.max_minutes "
                           f"budget planned the run to end; start a new run to train further")
    end = planned if planned is not None and planned <= opts.steps else opts.steps
    planning = opts.max_minutes > 0 and end == opts.steps and start < PLAN_STEPS[0]
    mark, next_plan = PLAN_STEPS
    final = False

    # --- how each step runs
    share = opts.batch_size // world.size
    part = slice(world.rank * share, (world.rank + 1) * share)  # this rank's examples of each batch
    forward = model
    if world.active:
        from torch.nn.parallel import DistributedDataParallel

        forward = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    forward = torch.compile(forward, backend=opts.compile_backend) if opts.compile else forward  # the DDP module
    conditional = model.conditional
    numeric = precision.resolve(opts.precision, device)
    autocast = precision.autocast(numeric, device)
    classes = list(range(model.num_classes)) if conditional else None  # grids: a row per class
    grids = opts.generation(opts.sample_n, opts.sample_steps, opts.sample_n, job.seed, numeric)
    log.info("training %s (%.2fM parameters) on %s, %s, steps %d..%d of %d images%s -> %s", type(model).__name__,
             sum(p.numel() for p in model.parameters()) / 1e6, device, numeric, start + 1, opts.steps,
             opts.batch_size, f" ({world.size} ranks of {share})" if world.active else "", out)

    # --- what is written along the way (rank 0)
    checkpoints = Checkpointer(out / "checkpoints", opts, job.config, world)
    metrics = MetricsLog(out, append=bool(start), tensorboard=opts.tensorboard) if world.main else None
    evaluator = BackgroundEval(job, opts.generation(opts.eval_n, opts.eval_steps, opts.eval_batch_size, job.seed,
                                                    numeric)) if opts.eval_every and world.main else None

    # --- the loop
    staged = getattr(job.loss, "at", None)  # (step, end) -> the step's loss, for one that varies (a Curriculum)
    loss_sum, loss_count = torch.zeros((), device=device), 0
    t_start = t_last = time.perf_counter()
    deadline = t_start + 60 * opts.max_minutes if opts.max_minutes else math.inf
    try:
        with progress_bar("training", end, interactive(world.rank)) as bar, StopRequest() as stop:
            for step in range(start + 1, opts.steps + 1):
                # one optimizer step
                lr = lr_at(step, opts, end)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                x0, labels = next(batches)  # (B,C,H,W) in [-1, 1], (B,): the whole batch
                with autocast:
                    step_loss = staged(step, end) if staged else job.loss
                    loss = step_loss(forward, objective, schedule, x0, generator, labels if conditional else None,
                                     opts.cond_drop_prob, model.num_classes, part)
                if opts.nonfinite == "skip" and world.any(not bool(torch.isfinite(loss)))[0]:  # a host sync a step
                    skipped += 1
                    log.warning("step %d: non-finite loss %s, update skipped (%d so far)", step, loss.item(), skipped)
                else:
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()  # under DDP, the gradients are averaged over the ranks here
                    if opts.grad_clip:
                        torch.nn.utils.clip_grad_norm_(model.parameters(), opts.grad_clip)
                    optimizer.step()
                    ema_update(ema, model, ema_decay(step, opts.ema_decay, opts.ema_warmup))
                    loss_sum += loss.detach()  # no host sync until a log step
                    loss_count += 1

                # is this the last step, and does it log or save? (all ranks decide alike)
                if planning and step == mark:
                    t_mark = time.perf_counter()
                elif planning and step == next_plan:
                    now = time.perf_counter()
                    end = planned_end(opts, world, (now - t_mark) / (step - mark), step, deadline - now)
                    log.info("train.max_minutes=%g: planned %d steps at the speed of steps %d-%d (%.2f steps/s)%s",
                             opts.max_minutes, end, mark + 1, step, (step - mark) / (now - t_mark),
                             f"; the learning rate decays ({opts.lr_decay}) to 0 there" if opts.lr_decay != "none" else "")
                    bar.update(step, total=end)
                    if final or int(LAST_PLAN * end) <= step:
                        planning = False  # the last tenth keeps its plan
                    elif 2 * step < LAST_PLAN * end:
                        mark, t_mark, next_plan = step, now, 2 * step
                    else:  # the last plan measures from the same mark: a window of at least a quarter of the run
                        next_plan, final = int(LAST_PLAN * end), True
                agree = not world.active or step % AGREE_EVERY == 0 or step == end
                out_of_time, stopping = world.any(time.perf_counter() >= deadline, stop.signal is not None) if agree \
                    else (False, False)
                last = step == end or out_of_time
                if out_of_time and step < end:
                    log.info("train.max_minutes=%g reached after step %d: finishing as the last step", opts.max_minutes, step)
                checkpoint = last or stopping or (opts.ckpt_every and step % opts.ckpt_every == 0)

                # the loss, every log_every steps (and before every checkpoint: a blown-up loss saves nothing)
                if step % opts.log_every == 0 or last or checkpoint:
                    now = time.perf_counter()
                    mean_loss = world.mean(loss_sum / max(loss_count, 1)).item()  # over the ranks' shares
                    if not math.isfinite(mean_loss):
                        kept = (f"the last good checkpoint is {checkpoints.folder / LAST}" if (checkpoints.folder / LAST).exists()
                                else "no checkpoint had been written yet")
                        raise DiffuseError(f"the loss became {mean_loss} by step {step}; {kept}. Lower train.lr (now "
                                           f"{opts.lr}), use train.precision=fp32, or train.nonfinite=skip")
                    if (step % opts.log_every == 0 or last) and world.main:
                        metrics.training(step, mean_loss, lr, loss_count * opts.batch_size / (now - t_last), now)
                        log.info("step %d/%d  loss %.4f  lr %.2e  %.1f images/s", step, end, mean_loss, lr,
                                 loss_count * opts.batch_size / (now - t_last))
                        bar.update(step, loss=f"{mean_loss:.4f}", speed=f"{loss_count / (now - t_last):.2f} it/s")
                    if step % opts.log_every == 0 or last:
                        loss_sum.zero_()
                        loss_count, t_last = 0, now
                bar.update(step)

                # background evaluation of the EMA weights (rank 0)
                if evaluator is not None:
                    if last:  # the final weights are always scored: let a running evaluation finish first
                        metrics.evaluations(evaluator.collect(wait=True), opts.eval_n)
                    if step % opts.eval_every == 0 or last:
                        evaluator.submit(step, ema)
                    metrics.evaluations(evaluator.collect(wait=last), opts.eval_n)

                # a grid of EMA samples from fixed noise (rank 0; the others wait at the next step's gradients)
                if world.main and (last or (opts.sample_every and step % opts.sample_every == 0)):
                    drawn = generate(DiffusionModel(ema, objective, schedule, job.model.shape, job.model.lowres),
                                     job.sampler, grids, device, classes, images=job.grid_images)
                    image = picture(drawn.images, drawn.labels, classes)
                    save_png(image, out / "samples" / f"step_{step:07d}.png")
                    metrics.grid(step, image)
                    t_last = time.perf_counter()  # sampling time is not training time

                # the checkpoint, and a stop asked for by a signal (on one process it may also arrive during the grid)
                stopping = stopping or (not world.active and stop.signal is not None)
                if checkpoint or stopping:
                    path = checkpoints.save(step, model, ema, optimizer, generator, batches, skipped,
                                            end if end < opts.steps else None, loss_state(job.loss))
                    t_last = time.perf_counter()
                if stopping and not last:
                    if stop.then_requeue is not None:  # e.g. submitit's requeue, now that the checkpoint is on disk
                        stop.then_requeue(stop.signal, None)
                    raise TrainingInterrupted(
                        f"stopped by {signal.Signals(stop.signal or signal.SIGTERM).name} after step {step}; checkpoint "
                        f"{path}. Resume with: {job.resume_command}")
                if last:
                    break
    except RuntimeError as e:
        if world.active and lost_peer(e):  # another rank stopped: say so in one line, and what to do
            first = next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)
            raise DiffuseError(f"rank {world.rank} lost the other ranks ({first[:200]}); the last checkpoint is "
                               f"{checkpoints.folder / LAST}: rerun the same command with resume=auto or "
                               f"resume={out}") from None
        raise
    finally:
        if metrics is not None:
            metrics.close()
    if world.active:
        spread = world.spread(ema)
        (log.info if spread == 0 else log.warning)("the %d ranks' EMA weights agree (largest difference %g)",
                                                    world.size, spread)
    log.info("done: steps %d..%d in %.1f s; checkpoint %s", start + 1, step, time.perf_counter() - t_start,
             checkpoints.folder / LAST)
    if skipped:
        log.warning("%d updates were skipped for non-finite losses", skipped)
    return checkpoints.folder / LAST
