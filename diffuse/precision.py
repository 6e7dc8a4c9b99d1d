"""Numeric precision of the network: fp32, bf16 autocast, or `auto` (bf16 where the hardware computes it natively)."""

from __future__ import annotations

import contextlib
import logging

import torch

from diffuse import DiffuseError

log = logging.getLogger(__name__)
CHOICES = ("auto", "fp32", "bf16")


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes bf16 natively: a CUDA GPU that supports it, or a CPU with AVX512-BF16 or AMX.
    Without them (e.g. an AVX2-only CPU) bf16 autocast is emulated and measured ~10x slower than fp32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    cpu = torch.cpu
    return any(getattr(cpu, name, lambda: False)() for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))


def check(name: str, what: str = "precision") -> str:
    if name not in CHOICES:
        raise DiffuseError(f"{what} must be one of {', '.join(CHOICES)}, got {name!r}")
    return name


def resolve(name: str, device: torch.device) -> str:
    """`auto` -> bf16 where native, else fp32 (logged); fp32 and bf16 are kept as asked."""
    if check(name) != "auto":
        return name
    chosen = "bf16" if native_bf16(device) else "fp32"
    capability = torch.backends.cpu.get_cpu_capability() if device.type == "cpu" else torch.cuda.get_device_name(device)
    log.info("precision auto -> %s (%s: %s)", chosen, capability,
             "native bf16" if chosen == "bf16" else "no native bf16, which would be emulated")
    return chosen


def autocast(name: str, device: torch.device):
    """The autocast context for a resolved precision."""
    if name == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
