"""Denoisers: callables `(x_t (B,C,H,W), t) -> (eps, x0)` that every sampler consumes."""

from __future__ import annotations

import copy
from typing import Callable

import torch
from torch import Tensor, nn

from diffuse import DiffuseError
from diffuse.precision import autocast
from diffuse.parameterization import check, check_schedule, to_eps_x0
from diffuse.schedule import Schedule


def dynamic_threshold(x0: Tensor, percentile: float) -> Tensor:
    """Imagen's dynamic thresholding (Saharia et al. 2022, sec. 2.3): s = max(1, the percentile of |x0| per
    sample), then x0 <- clip(x0, -s, s) / s. x0: (B,C,H,W)."""
    s = torch.quantile(x0.abs().flatten(1).float(), percentile, dim=1).clamp(min=1.0).view(-1, 1, 1, 1)
    return torch.maximum(torch.minimum(x0, s), -s) / s


def guide(cond: Tensor, uncond: Tensor, scale: float, rescale: float = 0.0) -> Tensor:
    """Classifier-free guidance (Ho & Salimans 2022, eq. 6): uncond + w (cond - uncond), on the model's output
    (eps, x0 and v are affine in it, so this is the same as guiding eps). `rescale` phi matches the guided
    output's per-sample std to the conditional one's, then mixes (Lin et al. 2024, sec. 3.4, eqs. 15-16)."""
    out = uncond + scale * (cond - uncond)
    if rescale:
        dims = tuple(range(1, out.ndim))
        ratio = cond.std(dim=dims, keepdim=True) / out.std(dim=dims, keepdim=True).clamp(min=1e-12)
        out = rescale * out * ratio + (1 - rescale) * out
    return out


class ModelDenoiser:
    """A network plus what its output means; optional x0 clipping; classifier-free guidance for conditional
    networks (`with_labels`); counts its network evaluations per image (NFE; a guided call counts two)."""

    def __init__(self, model: nn.Module, schedule: Schedule, parameterization: str, precision: str = "fp32",
                 clip_x0: bool = False, threshold: float = 0.0, guidance: float = 1.0, guidance_rescale: float = 0.0):
        self.model, self.schedule, self.parameterization = model, schedule, check(parameterization)
        check_schedule(parameterization, schedule.terminal_snr)
        if not 0 <= threshold <= 1:
            raise DiffuseError(f"dynamic threshold percentile must be in (0, 1], or 0 for off; got {threshold}")
        if precision not in ("fp32", "bf16"):
            raise DiffuseError(f"the denoiser's precision must be resolved to fp32 or bf16, got {precision!r}")
        if not 0 <= guidance_rescale <= 1:
            raise DiffuseError(f"guidance_rescale must be in [0, 1], got {guidance_rescale}")
        self.precision, self.clip_x0, self.threshold = precision, clip_x0, threshold
        self.guidance, self.guidance_rescale = guidance, guidance_rescale
        self.labels: Tensor | None = None  # (B,) classes asked for, or None: unconditional
        self._count = [0]  # shared with the copies `with_labels` makes

    @property
    def nfe(self) -> int:
        return self._count[0]

    def with_labels(self, labels: Tensor | None) -> "ModelDenoiser":
        """This denoiser for a batch whose images ask for `labels` (B,) (None: the null class)."""
        if labels is not None and not getattr(self.model, "conditional", False):
            raise DiffuseError("labels need a conditional model (trained with model.conditional=true)")
        bound = copy.copy(self)
        bound.labels = labels
        return bound

    def _autocast(self, device: torch.device):
        return autocast(self.precision, device)

    def _network(self, x_t: Tensor, t: float) -> Tensor:
        B = x_t.shape[0]
        t_batch = torch.full((B,), float(t), device=x_t.device)  # (B,)
        with self._autocast(x_t.device):
            if self.labels is None:
                self._count[0] += 1
                return self.model(x_t, t_batch)
            labels = self.labels.to(x_t.device)
            if self.guidance == 1.0:  # the conditional model alone
                self._count[0] += 1
                return self.model(x_t, t_batch, labels)
            null = torch.full_like(labels, self.model.num_classes)
            if self.guidance == 0.0:  # the unconditional model alone
                self._count[0] += 1
                return self.model(x_t, t_batch, null)
            self._count[0] += 2  # conditional and unconditional in one batch of 2B
            both = self.model(torch.cat([x_t, x_t]), torch.cat([t_batch, t_batch]), torch.cat([labels, null]))
        cond, uncond = both.float().chunk(2)
        return guide(cond, uncond, self.guidance, self.guidance_rescale)

    @torch.no_grad()
    def __call__(self, x_t: Tensor, t: float) -> tuple[Tensor, Tensor]:
        out = self._network(x_t, t)
        alpha, sigma = self.schedule.alpha(t).item(), self.schedule.sigma(t).item()
        eps, x0 = to_eps_x0(out.float(), x_t, alpha, sigma, self.parameterization)
        if self.clip_x0 or self.threshold:
            x0 = dynamic_threshold(x0, self.threshold) if self.threshold else x0.clamp(-1, 1)
            eps = (x_t - alpha * x0) / sigma  # keep (eps, x0) consistent with x_t
        return eps, x0


def eps_denoiser(eps_fn: Callable[[Tensor, float], Tensor], schedule: Schedule) -> Callable[[Tensor, float], tuple[Tensor, Tensor]]:
    """Wrap your own function `(x_t, t) -> eps` into a denoiser for any sampler."""

    def denoise(x_t: Tensor, t: float) -> tuple[Tensor, Tensor]:
        return to_eps_x0(eps_fn(x_t, t), x_t, schedule.alpha(t).item(), schedule.sigma(t).item(), "eps")

    return denoise
