"""Several processes, one run: the only module that touches torch.distributed. `torchrun` starts the processes
and sets RANK / LOCAL_RANK / WORLD_SIZE; `start()` joins them into one process group (gloo for CPU tensors, and
NCCL for CUDA tensors where CUDA is present) before Hydra composes anything, so that every rank can agree on one
run directory. Without torchrun, `World()` is the single process and every helper here is a no-op."""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch

from diffuse import DiffuseError

TIMEOUT_ENV = "DIFFUSE_DIST_TIMEOUT"  # seconds a collective may wait for a rank before the run stops (default 1800)


@dataclass(frozen=True)
class World:
    """This process's place among the ranks of a run."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0: the one that writes logs, grids, metrics and checkpoints."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1

    def barrier(self) -> None:
        if self.active:
            torch.distributed.barrier()

    def any(self, *flags: bool) -> tuple[bool, ...]:
        """Each flag, true on every rank when it is true on any rank (a stop asked for, a deadline reached)."""
        if not self.active:
            return tuple(bool(f) for f in flags)
        values = torch.tensor([float(f) for f in flags])
        torch.distributed.all_reduce(values, op=torch.distributed.ReduceOp.MAX)
        return tuple(bool(v > 0) for v in values)

    def spread(self, module: torch.nn.Module) -> float:
        """How far the ranks' copies of `module` are apart: the largest difference between ranks of the sum of
        any of its tensors (0 when they agree, as DDP keeps them)."""
        if not self.active:
            return 0.0
        sums = torch.stack([t.detach().double().sum().cpu() for t in module.state_dict().values()])
        high, low = sums.clone(), sums.clone()
        torch.distributed.all_reduce(high, op=torch.distributed.ReduceOp.MAX)
        torch.distributed.all_reduce(low, op=torch.distributed.ReduceOp.MIN)
        return float((high - low).max())

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """The mean over the ranks of a tensor (on CPU: the gloo side of the group)."""
        if not self.active:
            return value
        value = value.detach().to("cpu", torch.float64).clone()
        torch.distributed.all_reduce(value)
        return value / self.size

    def shard(self, n: int) -> range:
        """Rank r's part of items 0..n-1: a contiguous block, the blocks in rank order."""
        per = -(-n // self.size)
        return range(min(n, self.rank * per), min(n, (self.rank + 1) * per))

    def gather(self, rows: torch.Tensor, n: int) -> torch.Tensor | None:
        """Rank 0 gets the rows of every rank's `shard(n)` in index order (CPU tensors, padded to equal size for
        the collective; no pickling); the other ranks get None."""
        if not self.active:
            return rows
        per = -(-n // self.size)
        padded = torch.zeros((per, *rows.shape[1:]), dtype=rows.dtype)
        padded[: len(rows)] = rows.cpu()
        parts = [torch.empty_like(padded) for _ in range(self.size)] if self.main else None
        torch.distributed.gather(padded, parts, dst=0)
        return torch.cat(parts)[:n] if self.main else None

    def broadcast(self, value: int | float) -> int | float:
        """Rank 0's value (an int, or a float as float64), on every rank."""
        if not self.active:
            return value
        tensor = torch.tensor([value], dtype=torch.int64 if isinstance(value, int) else torch.float64)
        torch.distributed.broadcast(tensor, src=0)
        return type(value)(tensor.item())


def lost_peer(error: BaseException) -> bool:
    """Whether `error` is a collective that failed because another rank stopped (or timed out)."""
    words = ("Connection closed", "Connection reset", "Broken pipe", "timed out", "Timed out", "gloo", "NCCL")
    return isinstance(error, getattr(torch.distributed, "DistError", ())) or (isinstance(error, RuntimeError) and any(w in str(error) for w in words))


def from_environment() -> World:
    """The world torchrun describes in the environment (RANK, WORLD_SIZE, LOCAL_RANK), or the single process."""
    try:
        size = int(os.environ.get("WORLD_SIZE", "1"))
        rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError:
        raise DiffuseError("WORLD_SIZE, RANK and LOCAL_RANK must be integers (torchrun sets them)") from None
    if not (size >= 1 and 0 <= rank < size and local_rank >= 0):
        raise DiffuseError(f"RANK {rank} and WORLD_SIZE {size} do not describe a rank of a run")
    return World(rank, size, local_rank)


def timeout() -> datetime.timedelta:
    raw = os.environ.get(TIMEOUT_ENV, "1800")
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1
    if not seconds > 0:
        raise DiffuseError(f"{TIMEOUT_ENV}={raw!r} must be a number of seconds > 0")
    return datetime.timedelta(seconds=seconds)


def start() -> World:
    """Join the process group torchrun set up (a no-op for a single process): gloo carries CPU tensors, NCCL the
    CUDA ones when CUDA is present; a rank that stops makes the others' collectives fail after `timeout()`."""
    world = from_environment()
    if world.active and not torch.distributed.is_initialized():
        backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
        if torch.cuda.is_available():
            torch.cuda.set_device(world.local_rank % torch.cuda.device_count())
        torch.distributed.init_process_group(backend, timeout=timeout())
    return world


def stop(world: World) -> None:
    if world.active and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def device(world: World, chosen: torch.device) -> torch.device:
    """Under torchrun, rank r's device: cuda:LOCAL_RANK (for device=auto or cuda) or the CPU; a single process
    keeps the device it was given."""
    if not world.active or chosen.type != "cuda":
        return chosen
    if chosen.index is not None:
        raise DiffuseError(f"device={chosen} under torchrun: each rank takes cuda:LOCAL_RANK; use device=cuda or auto")
    if world.local_rank >= torch.cuda.device_count():
        raise DiffuseError(f"rank {world.rank} has LOCAL_RANK {world.local_rank}, and this machine has "
                           f"{torch.cuda.device_count()} CUDA device(s): lower --nproc_per_node")
    return torch.device("cuda", world.local_rank)
