"""Keep freed memory in the process where glibc's malloc serves PyTorch's CPU tensors. glibc maps each block above
its mmap threshold (at most 32 MiB) afresh and unmaps it when freed, so a sampler at batch 250 or 1000 page-faults
its activations in again at every network call: on a 2-core Xeon, `diffuse eval` at batch 1000 spent almost as
much CPU time in the kernel as in PyTorch (benchmarks/RESULTS.md, "Freed memory kept"). Called by the command line
only: a library user's process keeps its own malloc settings."""

from __future__ import annotations

import ctypes
import os
import sys
from typing import Mapping

from diffuse import DiffuseError

SWITCH = "DIFFUSE_KEEP_FREED_MEMORY"  # 1 (the default) | 0: glibc's own settings
M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
M_MMAP_MAX = -4
TRIM_THRESHOLD = 2**31 - 1  # bytes free at the heap's top before glibc returns them (mallopt takes an int: 2 GiB)


def user_tuned(environ: Mapping[str, str]) -> bool:
    """Whether the environment sets glibc's malloc tunables itself (MALLOC_*_ or GLIBC_TUNABLES=glibc.malloc...)."""
    return (any(k.startswith("MALLOC_") and k.endswith("_") for k in environ)
            or "glibc.malloc." in environ.get("GLIBC_TUNABLES", ""))


def keep_freed_memory(environ: Mapping[str, str] = os.environ) -> bool:
    """No mmap'd blocks, and no trimming of the heap's top below 2 GiB (mallopt M_MMAP_MAX=0, M_TRIM_THRESHOLD): a
    freed tensor's pages serve the next tensors. True where set; False where `DIFFUSE_KEEP_FREED_MEMORY=0`, the
    environment tunes malloc itself, or the process has no glibc (not Linux, or a C library without mallopt)."""
    value = environ.get(SWITCH, "1")
    if value not in ("0", "1"):
        raise DiffuseError(f"{SWITCH}={value!r}: allowed 1 (keep freed memory for the next tensors, the default) or "
                           f"0 (glibc's own malloc settings)")
    if value == "0" or not sys.platform.startswith("linux") or user_tuned(environ):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library this process runs on
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(M_MMAP_MAX, 0) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
