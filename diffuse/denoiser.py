"""Denoisers: callables `(x_t (B,C,H,W), t) -> (eps, x0)` that every sampler consumes, made from a network and
the objective it was trained with."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn

from diffuse import DiffuseError
from diffuse.objectives import Objective
from diffuse.objectives.ddpm import to_eps_x0
from diffuse.precision import autocast
from diffuse.schedule import Schedule


@dataclass(eq=False)
class DiffusionModel:
    """A network and the process it was trained on: what generating images needs."""

    network: nn.Module  # see diffuse.models: (x, time, labels) -> (B,C,H,W)
    objective: Objective
    schedule: Schedule
    shape: tuple[int, int, int]  # (C,H,W) of its images
    lowres: int = 0  # super-resolution: the side of the low-res images it upsamples (0: it generates from noise)


def dynamic_threshold(x0: Tensor, percentile: float) -> Tensor:
    """Imagen's dynamic thresholding (Saharia et al. 2022, sec. 2.3): s = max(1, the percentile of |x0| per
    sample), then x0 <- clip(x0, -s, s) / s. x0: (B,C,H,W)."""
    s = torch.quantile(x0.abs().flatten(1).float(), percentile, dim=1).clamp(min=1.0).view(-1, 1, 1, 1)
    return torch.maximum(torch.minimum(x0, s), -s) / s


def guide(cond: Tensor, uncond: Tensor, scale: float, rescale: float = 0.0) -> Tensor:
    """Classifier-free guidance (Ho & Salimans 2022, eq. 6): uncond + w (cond - uncond), on the network's output
    (every objective reads eps and x0 affinely from it, so this is the same as guiding eps). `rescale` phi matches
    the guided output's per-sample std to the conditional one's, then mixes (Lin et al. 2024, sec. 3.4, eqs. 15-16)."""
    out = uncond + scale * (cond - uncond)
    if rescale:
        dims = tuple(range(1, out.ndim))
        ratio = cond.std(dim=dims, keepdim=True) / out.std(dim=dims, keepdim=True).clamp(min=1e-12)
        out = rescale * out * ratio + (1 - rescale) * out
    return out


class ModelDenoiser:
    """A model as a denoiser for one batch: the classes its images ask for (`labels` (B,), None: unconditional),
    classifier-free guidance, optional x0 clipping or dynamic thresholding, and the network's precision; a
    super-resolution model's condition `cond` (B,C,H,W), the upsampled low-res images. `evaluations` is the
    network evaluations per image of one call (2 when guided)."""

    def __init__(self, model: DiffusionModel, *, labels: Tensor | None = None, precision: str = "fp32",
                 clip_x0: bool = False, threshold: float = 0.0, guidance: float = 1.0, guidance_rescale: float = 0.0,
                 cond: Tensor | None = None):
        model.objective.check(model.schedule)
        if (cond is None) != (model.lowres == 0):
            raise DiffuseError("a super-resolution model needs its low-res images (lowres=NPZ_OR_DIR)" if cond is None
                               else "this model generates from noise: it takes no low-res images")
        if not 0 <= threshold <= 1:
            raise DiffuseError(f"dynamic threshold percentile must be in (0, 1], or 0 for off; got {threshold}")
        if precision not in ("fp32", "bf16"):
            raise DiffuseError(f"the denoiser's precision must be resolved to fp32 or bf16, got {precision!r}")
        if not 0 <= guidance_rescale <= 1:
            raise DiffuseError(f"guidance_rescale must be in [0, 1], got {guidance_rescale}")
        if labels is not None and not model.network.conditional:
            raise DiffuseError("labels need a conditional model (trained with model.conditional=true)")
        self.model, self.labels, self.precision, self.cond = model, labels, precision, cond
        self.clip_x0, self.threshold, self.guidance, self.guidance_rescale = clip_x0, threshold, guidance, guidance_rescale
        self.evaluations = 2 if labels is not None and guidance not in (0.0, 1.0) else 1

    def _network(self, x_in: Tensor, time: Tensor) -> Tensor:
        network = self.model.network
        extra = {} if self.cond is None else {"cond": self.cond.to(x_in.device)}
        with autocast(self.precision, x_in.device):
            if self.labels is None:
                return network(x_in, time, **extra)
            labels = self.labels.to(x_in.device)
            if self.guidance == 1.0:  # the conditional network alone
                return network(x_in, time, labels, **extra)
            null = torch.full_like(labels, network.num_classes)
            if self.guidance == 0.0:  # the unconditional network alone
                return network(x_in, time, null, **extra)
            extra = {k: torch.cat([v, v]) for k, v in extra.items()}
            both = network(torch.cat([x_in, x_in]), torch.cat([time, time]), torch.cat([labels, null]), **extra)  # 2B
        cond, uncond = both.float().chunk(2)
        return guide(cond, uncond, self.guidance, self.guidance_rescale)

    @torch.no_grad()
    def __call__(self, x_t: Tensor, t: float) -> tuple[Tensor, Tensor]:
        objective, schedule = self.model.objective, self.model.schedule
        out = self._network(*objective.network_input(schedule, x_t, t))
        eps, x0 = objective.to_eps_x0(out.float(), x_t, schedule, t)
        if self.clip_x0 or self.threshold:
            x0 = dynamic_threshold(x0, self.threshold) if self.threshold else x0.clamp(-1, 1)
            alpha, sigma = schedule.alpha(t).item(), schedule.sigma(t).item()
            eps = (x_t - alpha * x0) / sigma  # keep (eps, x0) consistent with x_t
        return eps, x0


def eps_denoiser(eps_fn: Callable[[Tensor, float], Tensor], schedule: Schedule) -> Callable[[Tensor, float], tuple[Tensor, Tensor]]:
    """Wrap your own function `(x_t, t) -> eps` into a denoiser for any sampler."""

    def denoise(x_t: Tensor, t: float) -> tuple[Tensor, Tensor]:
        return to_eps_x0(eps_fn(x_t, t), x_t, schedule.alpha(t).item(), schedule.sigma(t).item(), "eps")

    return denoise
