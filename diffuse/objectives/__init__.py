"""Training objectives: one object per objective owns how a network is trained on a noising process and how its
output is read back during sampling (DESIGN.md sec. 9). The samplers walk the variance-preserving process of a
`Schedule`, x_t = alpha_t x0 + sigma_t eps, and see only (eps, x0); so every sampler serves every objective. An
objective whose own process is scaled differently (flow matching's (1 - t) x0 + t eps, EDM's x0 + sigma eps) meets
the sampler's x_t at the same signal-to-noise ratio and rescales it.

An objective is any object with the methods of the `Objective` protocol below; its YAML in conf/objective/ builds
it, and checkpoints record that node. `noising` and `target` write down its training process so that the tests can
build its exact network for data with a closed-form posterior (tests/exact.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from diffuse import DiffuseError
from diffuse.schedule import Schedule


@dataclass
class Example:
    """One training batch as the network sees it."""

    x_in: Tensor  # (B,C,H,W) the network's input
    time: Tensor  # (B,) float: the network's time input
    target: Tensor  # (B,C,H,W) float32: what the network's output should be
    weight: Tensor | None = None  # (B,1,1,1) the loss weight of each example; None: 1


@runtime_checkable
class Objective(Protocol):
    def check(self, schedule: Schedule) -> None:
        """Refuse a schedule this objective cannot train or sample on (a DiffuseError)."""

    def example(self, schedule: Schedule, x0: Tensor, generator: torch.Generator) -> Example:
        """Draw the time (its training density) and the noise, noise x0 (B,C,H,W) and give input, target, weight."""

    def network_input(self, schedule: Schedule, x_t: Tensor, t: float) -> tuple[Tensor, Tensor]:
        """At sampling: the network's input and time input (B,) for x_t (B,C,H,W) at schedule timestep t."""

    def to_eps_x0(self, out: Tensor, x_t: Tensor, schedule: Schedule, t: float) -> tuple[Tensor, Tensor]:
        """The network's output (B,C,H,W) for x_t at timestep t, as (eps, x0) of the variance-preserving process."""

    def noising(self, schedule: Schedule, time: Tensor) -> tuple[Tensor, Tensor]:
        """(a, b), each (B,1,1,1): at the network's time input `time` (B,) its input is a x0 + b eps."""

    def target(self, schedule: Schedule, x0: Tensor, eps: Tensor, time: Tensor) -> Tensor:
        """What the network is trained to output for (x0, eps) (B,C,H,W) at time input `time` (B,)."""


def check_loss_weight(objective: str, loss_weight: str, allowed: tuple[str, ...]) -> None:
    if loss_weight not in allowed:
        why = (" (min_snr weighs DDPM's eps, x0 and v predictions by their SNR, Hang et al. 2023)"
               if loss_weight == "min_snr" else "")
        raise DiffuseError(f"objective.loss_weight={loss_weight!r} does not apply to objective {objective}{why}; "
                           f"allowed: {', '.join(allowed)}")


def from_parameterization(name: str) -> dict:
    """The objective node that a checkpoint written before objectives existed means by its `parameterization`."""
    return {"_target_": "diffuse.objectives.ddpm.DDPM", "prediction": name}
