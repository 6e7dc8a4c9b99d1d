"""The one path from a model to images: `generate(model, sampler, options, device)`, used by `diffuse sample`,
`diffuse eval`, the training grids and the background evaluation."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch
from torch import Tensor

from diffuse import DiffuseError
from diffuse.denoiser import DiffusionModel, ModelDenoiser
from diffuse.distributed import World
from diffuse.images import to_uint8
from diffuse.precision import check as check_precision, resolve as resolve_precision
from diffuse.repaint import inpaint
from diffuse.samplers import Sampler
from diffuse.samplers.noise import randn_like
from diffuse.superres import upsample
from diffuse.validate import is_int, seed as check_seed

if TYPE_CHECKING:
    from diffuse.start_images import StartImages


@dataclass(frozen=True)
class GenerationOptions:
    """How images are drawn (the defaults are in conf/generate.yaml, or the train.* options for grids)."""

    n: int  # images
    batch_size: int  # images per sampler call (the images do not depend on it)
    steps: int  # sampler steps
    seed: int  # image i's noise is seeded from (seed, i)
    precision: str  # fp32 | bf16 | auto: autocast for the network
    clip_x0: bool  # clamp every x0 prediction to [-1, 1]
    dynamic_threshold: float  # Imagen's dynamic thresholding percentile (0 = off)
    guidance: float  # classifier-free guidance scale (conditional models)
    guidance_rescale: float  # phi of Lin et al. 2024 (0 = off)

    def __post_init__(self) -> None:
        if self.n < 1:
            raise DiffuseError(f"n must be >= 1, got {self.n}")
        if self.batch_size < 1:
            raise DiffuseError(f"batch_size must be >= 1, got {self.batch_size}")
        check_seed(self.seed)
        check_precision(self.precision)
        if not -100 <= self.guidance <= 100:
            raise DiffuseError(f"guidance must be in -100..100, got {self.guidance}")
        if not 0 <= self.guidance_rescale <= 1:
            raise DiffuseError(f"guidance_rescale must be in [0, 1], got {self.guidance_rescale}")
        if not 0 <= self.dynamic_threshold <= 1:
            raise DiffuseError(f"dynamic threshold percentile must be in (0, 1], or 0 for off; got {self.dynamic_threshold}")


@dataclass
class Generated:
    images: np.ndarray  # (n,H,W,C) uint8, quantized exactly as saved
    labels: np.ndarray | None  # (n,) the class each image asked for, or None (unconditional)
    timesteps: list[float]  # the sampler's walk
    nfe_per_image: int  # network evaluations per image (a guided evaluation counts two)
    precision: str  # the precision the network ran in (auto resolved)
    seconds: float


def sample_seed(seed: int, index: int) -> int:
    """A per-image seed: images do not depend on the batch size they were drawn in."""
    return (seed * 0x9E3779B97F4A7C15 + index) % 2**63


def image_labels(classes: list[int] | None, n: int) -> np.ndarray | None:
    """Image i asks for classes[i % len(classes)]: every class gets n/len(classes) images, give or take one."""
    return None if classes is None else np.array([classes[i % len(classes)] for i in range(n)], dtype=np.int64)


def resolve_classes(labels: Any, label: Any, conditional: bool, num_classes: int) -> list[int] | None:
    """`labels=[3,7]`, `labels=all` or `label=3` -> the classes asked for; None for an unconditional model. An
    unconditional model takes no labels; a conditional one draws every class in turn unless told otherwise."""
    if labels is not None and label is not None:
        raise DiffuseError("give labels=[...] or label=K, not both")
    if label is not None:
        labels = [label]
    if labels is None:
        return list(range(num_classes)) if conditional else None
    if not conditional:
        raise DiffuseError("labels/label need a conditional model, and the ckpt is unconditional (train one with "
                           "model.conditional=true)")
    if labels == "all":
        return list(range(num_classes))
    if is_int(labels):
        labels = [labels]
    if not (isinstance(labels, (list, tuple)) and labels and all(is_int(v) for v in labels)):
        raise DiffuseError(f"labels must be a list of class indices, `all`, or one index; got {labels!r}")
    bad = [v for v in labels if not 0 <= v < num_classes]
    if bad:
        raise DiffuseError(f"label {bad[0]} is out of range: the model knows classes 0..{num_classes - 1}")
    return list(labels)


Observer = Callable[[float, Tensor, Tensor, Tensor], None]  # (t, x_t, eps, x0) after each network call


def start_noise(shape: tuple[int, ...], seed: int, start: int, count: int,
                device: torch.device) -> tuple[Tensor, list[torch.Generator]]:
    """x_T of images start .. start+count-1, each from its own generator seeded by (seed, i): (count,C,H,W), and
    the generators, which the sampler's fresh noise then draws from."""
    gens = [torch.Generator(device).manual_seed(sample_seed(seed, i)) for i in range(start, start + count)]
    return randn_like(torch.empty((count, *shape), device=device), gens), gens


def model_denoiser(model: DiffusionModel, opts: GenerationOptions, labels: np.ndarray | None, precision: str,
                   cond: Tensor | None = None) -> ModelDenoiser:
    """The denoiser the samplers call, with the generation options' clipping and guidance; labels (B,) or None;
    a super-resolution model's condition (B,C,H,W)."""
    return ModelDenoiser(model, labels=None if labels is None else torch.as_tensor(labels, dtype=torch.long),
                         precision=precision, clip_x0=opts.clip_x0, threshold=opts.dynamic_threshold,
                         guidance=opts.guidance, guidance_rescale=opts.guidance_rescale, cond=cond)


def edit_walk(ts: list[float], strength: float) -> list[float]:
    """SDEdit's walk (Meng et al. 2022, sec. 3): the last floor(strength * steps) steps of a walk (as diffusers'
    img2img pipelines take them), so strength 0 is no step and 1 the whole walk."""
    steps = len(ts) - 1
    return ts[steps - math.floor(round(strength * steps, 9)):]


def generate(model: DiffusionModel, sampler: Sampler, opts: GenerationOptions, device: torch.device,
             classes: list[int] | None = None, *, on_step: Callable[[int], None] | None = None,
             observe: Observer | None = None, world: World = World(), images: StartImages | None = None,
             noise: Tensor | None = None) -> Generated | None:
    """Draw opts.n images of `model` with `sampler`; image i asks for classes[i % len(classes)] (conditional
    models). `on_step(k)` reports the k-th sampler step overall; `observe` sees every denoiser call. Under
    torchrun each rank draws its block of the indices and rank 0 gets them all (the other ranks get None): image
    i is seeded from (seed, i), so the images are those of one process. With `images`, image i starts from image
    i % m too: SDEdit (its own noise takes it to the walk's first timestep at strength < 1, where `edit_walk`
    starts; strength 0 returns it as it is, 1 samples from that noise alone), RePaint (`repaint.inpaint`) or
    super-resolution (image i % m, low-res, conditions every step of image i: SR3).
    With `noise` (n,C,H,W), image i starts from noise[i] instead of its seeded draw (interpolation, inversion)."""
    ts = sampler.check(model.schedule, opts.steps)
    if noise is not None and tuple(noise.shape) != (opts.n, *model.shape):
        raise DiffuseError(f"noise of shape {list(noise.shape)} for {opts.n} images of {list(model.shape)}")
    if (images is not None and images.superres) != (model.lowres > 0):
        raise DiffuseError("a super-resolution model needs low-res images (lowres=NPZ_OR_DIR)" if model.lowres else
                           "low-res images condition a super-resolution model, and this one generates from noise")
    masked = images is not None and images.mask is not None
    editing = images is not None and not masked and images.strength < 1
    if editing:
        ts = edit_walk(ts, images.strength)
    precision = resolve_precision(opts.precision, device)
    labels = image_labels(classes, opts.n)
    mine = world.shard(opts.n)
    out, evaluations, batches = [], 0, 0
    t0 = time.perf_counter()
    for start in range(mine.start, mine.stop, opts.batch_size):
        b = min(opts.batch_size, mine.stop - start)
        x_T, gens = start_noise(model.shape, opts.seed, start, b, device)  # (b,C,H,W)
        if noise is not None:
            x_T = noise[start:start + b].to(device=device, dtype=x_T.dtype)
        known, mask = images.known(torch.arange(start, start + b)) if images is not None else (None, None)
        if editing:  # x_t = alpha_t x0 + sigma_t eps at the walk's start
            if len(ts) == 1:  # strength 0: no step
                out.append(to_uint8(known))
                batches += 1
                continue
            x_T = model.schedule.alpha(ts[0]).item() * known.to(device) + model.schedule.sigma(ts[0]).item() * x_T
        cond = upsample(known, model.shape[-1]).to(device) if model.lowres else None  # (b,C,H,W)
        denoiser = model_denoiser(model, opts, None if labels is None else labels[start:start + b], precision, cond)

        def counted(x_t: Tensor, t: float, denoiser: ModelDenoiser = denoiser) -> tuple[Tensor, Tensor]:
            nonlocal evaluations
            evaluations += denoiser.evaluations
            eps, x0 = denoiser(x_t, t)
            if observe is not None:
                observe(t, x_t, eps, x0)
            return eps, x0

        def step(i: int, total: int, done: int = batches * (len(ts) - 1)) -> None:
            if on_step is not None:
                on_step(done + i)

        if masked:
            x0 = inpaint(sampler, counted, model.schedule, x_T, ts, known.to(device), mask.to(device),
                         jump=images.jump, resample=images.resample, generator=gens, on_step=step)
        else:
            x0 = sampler(counted, model.schedule, x_T, ts, generator=gens, on_step=step)
        out.append(to_uint8(x0))
        batches += 1
    shape = (0, model.shape[1], model.shape[2], model.shape[0])
    images = world.gather(torch.from_numpy(np.concatenate(out) if out else np.zeros(shape, np.uint8)), opts.n)
    if images is None:
        return None
    return Generated(images=images.numpy(), labels=labels, timesteps=ts, nfe_per_image=evaluations // max(batches, 1),
                     precision=precision, seconds=time.perf_counter() - t0)
