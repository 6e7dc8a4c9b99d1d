"""Progressive distillation (Salimans & Ho 2022, Alg. 2): a student learns to take in one deterministic DDIM step
what its teacher takes in two, so each round halves the steps of a walk. Pure: no I/O; the caller's generator."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from diffuse import DiffuseError
from diffuse.objectives import Objective
from diffuse.schedule import Schedule


def halve(ts: list[float]) -> list[float]:
    """The student's walk: every other timestep of the teacher's walk (an even number of steps, ending at -1)."""
    if (len(ts) - 1) % 2 or len(ts) < 3:
        raise DiffuseError(f"a walk of {len(ts) - 1} steps cannot be halved (it needs an even number of steps >= 2)")
    return ts[::2]


def predict(network: nn.Module, objective: Objective, schedule: Schedule, x_t: Tensor, t: Tensor,
            labels: Tensor | None) -> tuple[Tensor, Tensor]:
    """(eps, x0) of the network for x_t (B,C,H,W) at per-example timesteps t (B,) float64 on the CPU: the objective
    reads each distinct timestep (few: a walk's), and the network runs once on the whole batch."""
    mask = {value: (t == value).to(x_t.device).view(-1, 1, 1, 1) for value in t.unique().tolist()}
    x_in, time = x_t, torch.zeros(x_t.shape[0], device=x_t.device)
    for value, m in mask.items():
        x_value, time_value = objective.network_input(schedule, x_t, value)
        x_in, time = torch.where(m, x_value, x_in), torch.where(m.view(-1), time_value, time)
    out = (network(x_in, time) if labels is None else network(x_in, time, labels)).float()  # (B,C,H,W)
    eps, x0 = torch.zeros_like(out), torch.zeros_like(out)
    for value, m in mask.items():
        eps_value, x0_value = objective.to_eps_x0(out, x_t.float(), schedule, value)
        eps, x0 = torch.where(m, eps_value, eps), torch.where(m, x0_value, x0)
    return eps, x0


def scales(schedule: Schedule, t: Tensor, device: torch.device) -> tuple[Tensor, Tensor]:
    """(alpha_t, sigma_t) at timesteps t (B,) float64 (fractional, or -1 for clean data), as (B,1,1,1) float32."""
    abar = schedule.abar_at(t).view(-1, 1, 1, 1)
    return abar.sqrt().float().to(device), (1 - abar).sqrt().float().to(device)


def ddim_from_x0(schedule: Schedule, x: Tensor, x0: Tensor, t: Tensor, t_next: Tensor) -> Tensor:
    """DDIM's update (Song et al. 2021, eq. 12 at eta = 0) from x (B,C,H,W) at t to t_next (B,) for a given x0:
    x_next = (sigma_next/sigma) x + (alpha_next - (sigma_next/sigma) alpha) x0; t_next = -1 lands on x0."""
    (alpha, sigma), (alpha_next, sigma_next) = scales(schedule, t, x.device), scales(schedule, t_next, x.device)
    ratio = sigma_next / sigma  # (B,1,1,1)
    return ratio * x + (alpha_next - ratio * alpha) * x0


def denoised(network: nn.Module, objective: Objective, schedule: Schedule, x: Tensor, t: Tensor,
             labels: Tensor | None, clip_x0: bool) -> Tensor:
    """The network's x0 for x (B,C,H,W) at t (B,), clamped to [-1, 1] when `clip_x0`, as the sampling denoiser does."""
    x0 = predict(network, objective, schedule, x, t, labels)[1]
    return x0.clamp(-1, 1) if clip_x0 else x0


def ddim_step(network: nn.Module, objective: Objective, schedule: Schedule, x: Tensor, t: Tensor, t_next: Tensor,
              labels: Tensor | None, clip_x0: bool) -> Tensor:
    """One deterministic DDIM step (Song et al. 2021, eq. 12 at eta = 0) of `network` from x (B,C,H,W) at t to t_next
    (B,); t_next = -1 lands on its x0. `clip_x0` clamps x0 to [-1, 1] as the sampling denoiser does."""
    return ddim_from_x0(schedule, x, denoised(network, objective, schedule, x, t, labels, clip_x0), t, t_next)


def heun_step(network: nn.Module, objective: Objective, schedule: Schedule, x: Tensor, t: Tensor, t_next: Tensor,
              labels: Tensor | None, clip_x0: bool) -> Tensor:
    """One step of Heun's method (Karras et al. 2022, Alg. 1) in rho = alpha/sigma, where d(x/sigma) = x0 drho (Lu et
    al. 2022b's data-prediction ODE, rho = e^lambda) and DDIM is Euler's method: DDIM with the mean of the x0 at both
    ends, from x (B,C,H,W) at t to t_next (B,). Two evaluations; t_next = -1 (rho infinite) lands on the first x0,
    and its examples take one."""
    x0 = denoised(network, objective, schedule, x, t, labels, clip_x0)
    x_next = ddim_from_x0(schedule, x, x0, t, t_next)  # Euler's step; the answer where t_next = -1
    more = (t_next >= 0).nonzero().flatten()  # the examples whose step ends at noise: the second evaluation's
    if len(more):
        pick = more.to(x.device)
        lab = None if labels is None else labels[pick]
        x0_next = denoised(network, objective, schedule, x_next[pick], t_next[more], lab, clip_x0)
        x0_mean = (x0[pick] + x0_next) / 2
        x_next = x_next.index_copy(0, pick, ddim_from_x0(schedule, x[pick], x0_mean, t[more], t_next[more]))
    return x_next


TEACHER_STEPS = {"ddim": ddim_step, "heun": heun_step}  # the solvers a teacher's walk can take: name -> step


def walk_draws(steps: int, x0: Tensor, generator: torch.Generator, labels: Tensor | None, drop_prob: float,
               null_label: int | None, part: slice) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """A distillation loss's draws for x0 (B,C,H,W): a step of the walk (B,) on the CPU, noise, label dropout, in that
    order over the whole batch (as in diffusion_loss, so every rank draws alike); then this rank's `part` of each."""
    B, device = x0.shape[0], x0.device
    i = torch.randint(0, steps, (B,), device=device, generator=generator).cpu()  # (B,)
    eps = torch.randn(x0.shape, device=device, generator=generator)
    if labels is not None and drop_prob > 0:
        drop = torch.rand(B, device=device, generator=generator) < drop_prob
        labels = torch.where(drop, torch.full_like(labels, null_label), labels)
    return i[part], x0[part].float(), eps[part], None if labels is None else labels[part]


class ProgressiveLoss:
    """The loss of one round: the teacher walks `teacher_ts` (2N steps), the student `halve(teacher_ts)` (N steps).
    Called as the training loop calls `diffuse.loss.diffusion_loss`; `clip_x0` clamps the teacher's x0 as its
    sampling does (diffuse sample's default)."""

    def __init__(self, teacher: nn.Module, teacher_ts: list[float], clip_x0: bool = True, solver: str = "ddim"):
        self.teacher, self.clip_x0 = teacher.eval().requires_grad_(False), clip_x0
        self.step = TEACHER_STEPS[solver]  # the teacher's steps (a student's are DDIM's: it teaches the next round)
        self.teacher_ts = torch.tensor(teacher_ts, dtype=torch.float64)  # (2N+1,)
        self.student_ts = torch.tensor(halve(teacher_ts), dtype=torch.float64)  # (N+1,)

    def __call__(self, network: nn.Module, objective: Objective, schedule: Schedule, x0: Tensor,
                 generator: torch.Generator, labels: Tensor | None = None, drop_prob: float = 0.0,
                 null_label: int | None = None, part: slice = slice(None)) -> Tensor:
        return self.terms(network, objective, schedule, x0, generator, labels, drop_prob, null_label, part)[0]

    def terms(self, network: nn.Module, objective: Objective, schedule: Schedule, x0: Tensor,
              generator: torch.Generator, labels: Tensor | None = None, drop_prob: float = 0.0,
              null_label: int | None = None, part: slice = slice(None)) -> tuple[Tensor, Tensor]:
        """(the loss, the student's x0 (b,C,H,W)). Salimans & Ho 2022, Alg. 2: x_t at a student timestep; two
        teacher steps give x_t''; the student's x0 target is the x0 from which one DDIM step lands there,
        (x_t'' - (sigma_t''/sigma_t) x_t) / (alpha_t'' - (sigma_t''/sigma_t) alpha_t); the error is weighted by
        max(SNR_t, 1) ("truncated SNR", their eq. 9). The draws (step, noise, label dropout, in that order) cover the
        whole batch, as in diffusion_loss."""
        device = x0.device
        i, x0, eps, labels = walk_draws(len(self.student_ts) - 1, x0, generator, labels, drop_prob, null_label, part)
        t, t_mid, t_next = self.student_ts[i], self.teacher_ts[2 * i + 1], self.student_ts[i + 1]
        alpha, sigma = scales(schedule, t, device)
        x_t = alpha * x0 + sigma * eps  # (b,C,H,W)
        with torch.no_grad():
            x_mid = self.step(self.teacher, objective, schedule, x_t, t, t_mid, labels, self.clip_x0)
            x_next = self.step(self.teacher, objective, schedule, x_mid, t_mid, t_next, labels, self.clip_x0)
            alpha_next, sigma_next = scales(schedule, t_next, device)
            ratio = sigma_next / sigma
            target = (x_next - ratio * x_t) / (alpha_next - ratio * alpha)  # (b,C,H,W)
        weight = (alpha / sigma).pow(2).clamp(min=1.0)  # (b,1,1,1)
        x0_student = predict(network, objective, schedule, x_t, t, labels)[1]
        return (weight * (x0_student - target).pow(2)).mean(), x0_student
