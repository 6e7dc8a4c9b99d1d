"""Consistency distillation (Song et al. 2023, Alg. 2) of a diffusion teacher: the student's x0 at a timestep of the
teacher's walk must match its own x0 (stop-gradient, as Song & Dhariwal 2023 train it) one teacher step later,
and the teacher's x0 at the walk's last step. A student so trained walks DDIM at every (N/k)-th timestep of that
N-step walk, for each k it records. Pure: no I/O; the caller's generator."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from diffuse.objectives import Objective
from diffuse.progressive import TEACHER_STEPS, denoised, predict, scales, walk_draws
from diffuse.schedule import Schedule


def pseudo_huber(a: Tensor, b: Tensor) -> Tensor:
    """sqrt(||a - b||^2 + c^2) - c per example (B,), c = 0.00054 sqrt(d) (Song & Dhariwal 2023, sec. 3.3)."""
    d = a[0].numel()
    c = 0.00054 * d ** 0.5
    return ((a - b).pow(2).flatten(1).sum(1) + c * c).sqrt() - c


class ConsistencyLoss:
    """The consistency loss over the teacher's walk `teacher_ts` (N timesteps, then -1). Called as the training loop
    calls `diffuse.loss.diffusion_loss`; `clip_x0` clamps the teacher's x0 and the target as sampling does."""

    def __init__(self, teacher: nn.Module, teacher_ts: list[float], clip_x0: bool = True, solver: str = "ddim"):
        self.teacher, self.clip_x0 = teacher.eval().requires_grad_(False), clip_x0
        self.step = TEACHER_STEPS[solver]  # the teacher's step along its walk: ddim | heun
        self.ts = torch.tensor(teacher_ts, dtype=torch.float64)  # (N+1,) ending at -1

    def __call__(self, network: nn.Module, objective: Objective, schedule: Schedule, x0: Tensor,
                 generator: torch.Generator, labels: Tensor | None = None, drop_prob: float = 0.0,
                 null_label: int | None = None, part: slice = slice(None)) -> Tensor:
        return self.terms(network, objective, schedule, x0, generator, labels, drop_prob, null_label, part)[0]

    def terms(self, network: nn.Module, objective: Objective, schedule: Schedule, x0: Tensor,
              generator: torch.Generator, labels: Tensor | None = None, drop_prob: float = 0.0,
              null_label: int | None = None, part: slice = slice(None)) -> tuple[Tensor, Tensor]:
        """(the loss, the student's x0 (b,C,H,W)). x_t at walk step i (uniform); one teacher step gives x_t' at step
        i+1; the target is the student's own x0 there (no gradient), or x_t' itself when t' = -1 (the teacher's x0);
        distance: pseudo-Huber, weight 1.
        The teacher steps with `solver`: ddim (one evaluation) or heun (two, second order).
        The draws (step, noise, label dropout, in that order) cover the whole batch, as in diffusion_loss."""
        device, steps = x0.device, len(self.ts) - 1
        i, x0, eps, labels = walk_draws(steps, x0, generator, labels, drop_prob, null_label, part)
        t, t_next = self.ts[i], self.ts[i + 1]
        alpha, sigma = scales(schedule, t, device)
        x_t = alpha * x0 + sigma * eps  # (b,C,H,W)
        with torch.no_grad():
            x_next = self.step(self.teacher, objective, schedule, x_t, t, t_next, labels, self.clip_x0)
            end = (t_next < 0).view(-1, 1, 1, 1).to(device)  # the walk's last step: x_next is the teacher's x0
            t_own = torch.where(t_next < 0, self.ts[steps - 1], t_next)  # any valid timestep where end (unused there)
            own = denoised(network, objective, schedule, x_next, t_own, labels, self.clip_x0)
            target = torch.where(end, x_next, own)  # (b,C,H,W)
        x0_student = predict(network, objective, schedule, x_t, t, labels)[1]
        return pseudo_huber(x0_student, target).mean(), x0_student


class Curriculum:
    """Losses that take turns over a training run, as improved consistency training grows its discretisation (Song &
    Dhariwal 2023, sec. 3.4): the j-th of J losses trains steps ((j-1)/J, j/J] of the run's `end` steps, so a step's
    loss follows from the step alone (a resumed run continues exactly). The training loop asks `at(step, end)`."""

    def __init__(self, losses: list[ConsistencyLoss]):
        self.losses = losses
        self.teacher = losses[-1].teacher  # the student starts from it

    def stage(self, step: int, end: int) -> int:
        """The index of the loss that trains step `step` (1-based) of a run of `end` steps."""
        return min(len(self.losses) - 1, (step - 1) * len(self.losses) // max(end, 1))

    def at(self, step: int, end: int) -> ConsistencyLoss:
        return self.losses[self.stage(step, end)]
