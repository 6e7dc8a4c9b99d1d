"""Inpainting without retraining: RePaint (Lugmayr et al. 2022), any model, any sampler whose step reads only the
current x_t. Pure: no I/O; noise from the caller's per-image generators."""

from __future__ import annotations

from typing import Callable

from torch import Tensor

from diffuse import DiffuseError
from diffuse.samplers import Denoiser, Sampler
from diffuse.samplers.noise import Generators, randn_like
from diffuse.schedule import Schedule


def repaint_path(steps: int, jump: int, resample: int) -> list[int]:
    """The positions along a walk of `steps` steps that RePaint visits (their sec. 4.2 jump schedule): k = steps
    taken; on reaching k = steps, steps - jump, steps - 2 jump, ... (k > jump) it goes back `jump` positions and
    walks down again, `resample` - 1 times each. resample = 1 is one plain walk."""
    if steps < 1 or jump < 1 or resample < 1:
        raise DiffuseError(f"RePaint needs steps, jump_length and resample >= 1, got {steps}, {jump}, {resample}")
    left = {k: resample - 1 for k in range(steps, jump, -jump)}
    path, k = [0], 0
    while True:
        if left.get(k, 0) > 0:
            left[k] -= 1
            k -= jump
        elif k == steps:
            return path
        else:
            k += 1
        path.append(k)


def inpaint(sampler: Sampler, denoiser: Denoiser, schedule: Schedule, x_T: Tensor, ts: list[float], known: Tensor,
            mask: Tensor, *, jump: int, resample: int, generator: Generators = None,
            on_step: Callable[[int, int], None] | None = None) -> Tensor:
    """RePaint's Alg. 1 on the walk `ts`: each step down is one step of `sampler`, after which the known pixels
    (mask 1) are replaced by the known image noised to the new timestep, q(x_t' | x0); each jump up noises x from
    t to the earlier t'' by q(x_t'' | x_t) = N(sqrt(abar_t''/abar_t) x_t, (1 - abar_t''/abar_t) I). At the end
    (t = -1) the known pixels are the known image exactly. x_T, known: (B,C,H,W); mask: (B|1,1|C,H,W) of 0/1."""
    path = repaint_path(len(ts) - 1, jump, resample)
    x, down = x_T, 0
    for a, b in zip(path, path[1:]):
        if b == a + 1:
            x = sampler(denoiser, schedule, x, [ts[a], ts[b]], generator=generator)
            alpha, sigma = schedule.alpha(ts[b]).item(), schedule.sigma(ts[b]).item()
            noised = alpha * known + sigma * randn_like(x, generator) if sigma > 0 else known
            x = mask * noised + (1 - mask) * x
            down += 1
            if on_step is not None:
                on_step(down, len(path) - 1)
        else:
            ratio = (schedule.abar_at(ts[b]) / schedule.abar_at(ts[a])).item()  # < 1: back toward noise
            x = ratio**0.5 * x + (1 - ratio) ** 0.5 * randn_like(x, generator)
    return x
