"""Networks, and the contract every network in conf/model/ keeps.

A network is an `nn.Module` that
- is built from keyword arguments (its YAML), among them `in_channels` (the data's channels), `conditional` and
  `num_classes` (set from the data set when `conditional` is true), and keeps the last two as attributes;
- maps `(x (B,C,H,W), time (B,) float, labels (B,) int64 or None) -> (B,C,H,W)`, where `time` is the objective's
  time input (DDPM's objective: the timestep index in [0, T-1], fractional between table entries) and label
  `num_classes` is the null class of classifier-free guidance (labels=None means the null class; an unconditional
  network refuses labels); a network with an attribute `cond_channels` > 0 (built with it, set from
  `dataset.lowres`) also takes `cond=` (B,cond_channels,H,W), an image condition (super-resolution), and needs it;
- can be built on the meta device (no data-dependent work in __init__) and keeps every tensor it needs in its
  state dict: a non-persistent buffer would come back from a checkpoint uninitialised, so it is refused.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import Tensor, nn

from diffuse import DiffuseError
from diffuse.validate import is_int


@runtime_checkable
class Network(Protocol):
    conditional: bool
    num_classes: int

    def __call__(self, x: Tensor, time: Tensor, labels: Tensor | None = None) -> Tensor: ...


def check_network(network: nn.Module, name: str) -> nn.Module:
    """Refuse a module that breaks the contract above in a way that can be seen without running it."""
    if not isinstance(network, nn.Module) or not isinstance(getattr(network, "conditional", None), bool) or not (
            is_int(getattr(network, "num_classes", None)) and network.num_classes >= 1):
        raise DiffuseError(f"{name} is not a diffuse network: it must be an nn.Module with attributes conditional "
                           f"(bool) and num_classes (int >= 1)")
    kept = set(network.state_dict())
    lost = [key for key, _ in network.named_buffers() if key not in kept]
    if lost:
        raise DiffuseError(f"{name} has non-persistent buffers ({', '.join(lost[:3])}): they would come back from a "
                           f"checkpoint uninitialised; register them with persistent=True or compute them in forward")
    return network
