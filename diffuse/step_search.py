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


def round_walks(n: int, k: int) -> int:
    """The most walks search_subwalk's first round scores choosing a k-step walk inside an n-step one: the start, then
    at inner position p the timesteps between the lowest its left neighbour can have moved to (p - 1) and its right
    one's start, round((p+1) n / k), less the one it holds (a later round rescores mostly walks already scored)."""
    return 1 + sum(round((p + 1) * n / k) - p - 1 for p in range(1, k))


def search_subwalk(loss: Callable[[list[float]], float], ts: list[float], k: int,
                   rounds: int = 3) -> tuple[Searched, dict[tuple[float, ...], float]]:
    """The k-step walk through the timesteps of the walk ts (N steps, ending at -1) with the lowest loss, by
    coordinate search: from every (N/k)-th timestep, each inner timestep in turn takes the best of the timesteps of
    ts strictly between its neighbours, for `rounds` rounds or until one changes nothing. The first timestep and the
    final -1 stay (a consistency student's k-step walk, Song et al. 2023, who chose its middle noise level by FID).
    Returns the best walk and every walk's loss (each scored once)."""
    n = len(ts) - 1
    if k < 2 or k >= n or ts[-1] != -1 or any(a <= b for a, b in zip(ts, ts[1:])):
        raise DiffuseError(f"a {k}-step walk inside a {n}-step walk has no timestep to choose (it needs 2 <= k < {n} "
                           f"and strictly decreasing timesteps ending at -1)")
    if rounds < 1:
        raise DiffuseError(f"rounds must be >= 1, got {rounds}")
    scores: dict[tuple[float, ...], float] = {}

    def scored(at: list[int]) -> float:
        walk = tuple(ts[i] for i in at)
        if walk not in scores:
            scores[walk] = loss(list(walk))
        return scores[walk]

    best = [round(j * n / k) for j in range(k + 1)]  # every (N/k)-th where k divides N
    start_loss = scored(best)
    for _ in range(rounds):
        before = list(best)
        for p in range(1, k):
            best[p] = min(range(best[p - 1] + 1, best[p + 1]), key=lambda i: scored(best[:p] + [i] + best[p + 1:]))
        if best == before:
            break
    found = [ts[i] for i in best]
    return Searched(found, scores[tuple(found)], start_loss, len(scores)), scores
