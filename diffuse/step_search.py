"""A few-step walk's timesteps, searched against a reference: the inner timesteps of `ts` move one at a time toward
either neighbour by a shrinking fraction of the gap, and a move stays when it lowers `loss` (a derivative-free
cousin of LD3's learned timesteps, Tong et al. 2025, which fit the same target: a few-step walk's end against a
many-step walk's from the same noise). Pure: the loss is the caller's."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from diffuse import DiffuseError


@dataclass(frozen=True)
class Searched:
    timesteps: list[float]  # the walk found: strictly decreasing, its first and its final -1 as given
    loss: float  # its loss
    start_loss: float  # the loss of the walk it started from
    evaluations: int  # walks scored


def search_timesteps(loss: Callable[[list[float]], float], ts: list[float], rounds: int = 4,
                     first_move: float = 0.5) -> Searched:
    """Coordinate search over ts[1:-1] (ts: strictly decreasing timesteps ending at -1; its first is the start and
    stays, as does -1). Round r tries moving each inner timestep a fraction first_move / 2^r of the way to each
    neighbour (0 below the last), keeping the best of the three; every walk tried stays strictly decreasing."""
    if len(ts) < 3 or ts[-1] != -1 or any(a <= b for a, b in zip(ts, ts[1:])):
        raise DiffuseError(f"a walk to tune needs at least 2 steps of strictly decreasing timesteps ending at -1, "
                           f"got {ts}")
    if rounds < 1 or not 0 < first_move < 1:
        raise DiffuseError(f"rounds must be >= 1 and first_move in (0, 1), got {rounds}, {first_move}")
    best, best_loss = list(ts), loss(list(ts))
    start_loss, evaluations = best_loss, 1
    for r in range(rounds):
        move = first_move / 2**r
        for i in range(1, len(best) - 1):
            above, below = best[i - 1], max(best[i + 1], 0.0)
            for t in (best[i] + move * (above - best[i]), best[i] - move * (best[i] - below)):
                if not below <= t < above or t == best[i] or (t == below and best[i + 1] == 0.0):
                    continue  # a move that would not keep the walk strictly decreasing
                trial = best[:i] + [t] + best[i + 1:]
                value = loss(trial)
                evaluations += 1
                if value < best_loss:
                    best, best_loss = trial, value
    return Searched(best, best_loss, start_loss, evaluations)
