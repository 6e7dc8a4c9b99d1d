"""Keep freed memory in the process where glibc's malloc serves PyTorch's CPU tensors. glibc maps each block above
its mmap threshold (at most 32 MiB) afresh and unmaps it when freed, so a sampler at batch 250 or 1000 page-faults
its activations in again at every network call: on a 2-core Xeon, `diffuse eval` at batch 1000 spent almost as
much CPU time in the kernel as in user space (benchmarks/RESULTS.md, "Freed memory kept"). Called by the command line
only: a library user's process keeps its own malloc settings. The main thread's heap is the one it changes: a
thread of its own (training's background evaluation) still gets blocks above 64 MiB mapped afresh, as glibc does for
any thread's arena that cannot grow that far."""

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


def user_tuned(environ: Mapping[str, str]) -> str | None:
    """The variable by which the environment tunes glibc's malloc itself (MALLOC_ARENA_MAX, MALLOC_TOP_PAD_, ...,
    or GLIBC_TUNABLES with glibc.malloc.*), or None."""
    if "glibc.malloc." in environ.get("GLIBC_TUNABLES", ""):
        return "GLIBC_TUNABLES"
    return next((k for k in sorted(environ) if k.startswith("MALLOC_")), None)


def keep_freed_memory(environ: Mapping[str, str] = os.environ) -> tuple[bool, str]:
    """No mmap'd blocks, and no trimming of the heap's top below 2 GiB (mallopt M_MMAP_MAX=0, M_TRIM_THRESHOLD): a
    freed tensor's pages serve the next tensors. Returns whether it is set, and in words why (for the run's log): not
    where `DIFFUSE_KEEP_FREED_MEMORY=0`, the environment tunes malloc itself, or the process has no glibc mallopt."""
    value = environ.get(SWITCH, "1")
    if value not in ("0", "1"):
        raise DiffuseError(f"{SWITCH}={value!r}: allowed 1 (keep freed memory for the next tensors, the default) or "
                           f"0 (glibc's own malloc settings)")
    if value == "0":
        return False, f"malloc: its own settings ({SWITCH}=0)"
    if (tuned := user_tuned(environ)) is not None:
        return False, f"malloc: glibc's settings with the environment's {tuned} ({SWITCH} leaves them as they are)"
    if not sys.platform.startswith("linux"):
        return False, f"malloc: its own settings (no glibc on {sys.platform})"
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library this process runs on
    except (OSError, AttributeError):
        return False, "malloc: its own settings (this C library has no mallopt)"
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # glibc returns 1 for both; a C library that refuses the first is left as it was (nothing half set)
    if mallopt(M_MMAP_MAX, 0) != 1:
        return False, "malloc: its own settings (this C library refused mallopt M_MMAP_MAX)"
    if mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) != 1:
        return False, "malloc: no mmap'd blocks, but the C library refused mallopt M_TRIM_THRESHOLD"
    return True, f"malloc: freed memory kept for the next tensors ({SWITCH}=0 leaves glibc's own settings)"
