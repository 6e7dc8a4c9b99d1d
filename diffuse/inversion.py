"""DDIM inversion (Song et al. 2021, sec. 4.3; Dhariwal & Nichol 2021, app. F): the deterministic walk run from the
data to the noise, so that walking it back (ddim with eta 0, euler, flow_euler: one update) returns the image; and
spherical interpolation between noises (Song et al. 2021, sec. 5.3). Pure: no I/O."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from diffuse import DiffuseError
from diffuse.samplers import Denoiser
from diffuse.schedule import Schedule


def slerp(a: Tensor, b: Tensor, w: float) -> Tensor:
    """Spherical interpolation between noises a and b (B,C,H,W), per image: w=0 gives a, w=1 gives b, and the
    norm stays that of Gaussian noise between them (a straight line would shrink it)."""
    a_flat, b_flat = a.flatten(1).double(), b.flatten(1).double()  # (B,D)
    cos = (a_flat * b_flat).sum(1) / (a_flat.norm(dim=1) * b_flat.norm(dim=1))
    theta = torch.arccos(cos.clamp(-1, 1))[:, None]  # (B,1)
    sin = torch.sin(theta)
    parallel = sin < 1e-6  # nearly the same direction: the straight line is the arc
    wa = torch.where(parallel, torch.full_like(theta, 1 - w), torch.sin((1 - w) * theta) / sin.clamp_min(1e-12))
    wb = torch.where(parallel, torch.full_like(theta, w), torch.sin(w * theta) / sin.clamp_min(1e-12))
    return (wa * a_flat + wb * b_flat).reshape(a.shape).to(a.dtype)


def invert(denoiser: Denoiser, schedule: Schedule, x0: Tensor, ts: list[float], *, refine: int = 1,
           on_step: Callable[[int, int], None] | None = None) -> Tensor:
    """The x_T from which the DDIM walk `ts` (decreasing, ending at -1) returns the images x0 (B,C,H,W): each
    DDIM step x_t = alpha_t x0(x_t') + sigma_t eps(x_t'), solved for x_t' from x_t (t' the higher timestep).
    The first guess takes eps at (x_t, t) (the naive inversion; at the data, t = -1, at (x_t, t')), and `refine`
    fixed-point rounds each re-evaluate eps at the new x_t' (Pan et al. 2023's exact inversion), so the
    network evaluations are (1 + refine) per step."""
    up = ts[::-1]  # -1, then increasing timesteps: the walk backwards
    x = x0
    for i, (t, t_up) in enumerate(zip(up[:-1], up[1:])):
        alpha, sigma = schedule.alpha(t).item(), schedule.sigma(t).item()  # t = -1: alpha 1, sigma 0
        alpha_up, sigma_up = schedule.alpha(t_up).item(), schedule.sigma(t_up).item()
        if alpha_up == 0 and sigma == 0:
            raise DiffuseError("a one-step walk from zero terminal SNR sends every noise to the same image; "
                               "it cannot be inverted: walk more steps")
        eps, x0_hat = denoiser(x, t if t >= 0 else t_up)
        for k in range(refine + 1):
            if alpha_up > 0:  # the DDIM step back from t' read forwards: x0 = (x_t - sigma_t eps) / alpha_t (alpha_t
                # > 0 below the walk's first timestep), x_t' = alpha_t' x0 + sigma_t' eps
                x_up = alpha_up * (x - sigma * eps) / alpha + sigma_up * eps
            else:  # zero terminal SNR: eps(x_T) = x_T / sigma_T whatever x_T, so the step's x0 carries it:
                x_up = sigma_up * (x - alpha * x0_hat) / sigma  # x_t = alpha_t x0(x_T) + sigma_t x_T / sigma_T
            if k < refine:
                eps, x0_hat = denoiser(x_up, t_up)
        x = x_up
        if on_step is not None:
            on_step(i + 1, len(ts) - 1)
    return x
