"""Samplers: one algorithm per file, a plain function that walks an explicit list of timesteps,

    algorithm(denoiser, schedule, x_T, ts, *, generator=None, on_step=None, **settings) -> x0

where `ts` is strictly decreasing in [0, T-1] and ends at -1 (clean data), so the algorithm steps through the
pairs (t, t_next) = (ts[i], ts[i+1]) (as k-diffusion's samplers walk a list of sigmas). Each algorithm declares
its facts with `@declare`; `Sampler` binds one to its settings and its default spacing, as the YAML gives them.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Any, Callable

from torch import Tensor

from diffuse import DiffuseError
from diffuse.schedule import SPACINGS, Schedule
from diffuse.validate import is_int, typed

Denoiser = Callable[[Tensor, float], "tuple[Tensor, Tensor]"]  # (x_t (B,C,H,W), t) -> (eps, x0)
RESERVED = ("denoiser", "schedule", "x_T", "ts", "generator", "on_step")  # not settings
AUTO = "auto"  # spacing: auto walks the spacing the sampler's `auto_spacing` table names for the schedule and steps
ANYWHERE = ("linspace", "leading", "trailing", "time_quadratic")  # spacings every schedule takes (even zero SNR)
Rule = tuple  # (spacing,) or (spacing, N, spacing, M, spacing ...): the first below N steps, the next from N on


class InfiniteStart(DiffuseError):
    """A sampler that needs a finite noise level at its first step was asked to start at an infinite one."""


@dataclass(frozen=True)
class Facts:
    """What an algorithm declares about itself, for checks, messages and the generic tests."""

    order: int | None  # convergence order on the probability-flow ODE with its default settings; None: stochastic
    evaluations: Callable[[int], int]  # network evaluations for a walk of n steps that ends at clean data
    finite_start: bool  # needs a finite sigma_t / alpha_t at its first timestep (so no zero terminal SNR)
    check: Callable[..., None] | None  # check(schedule, **settings): refuses bad settings before any work
    multistep: bool = False  # its steps reuse earlier steps' predictions (so a walk cannot be changed between steps)
    invertible: Callable[..., bool] | None = None  # invertible(**settings): whether its walk is DDIM's deterministic
    # update, which diffuse.inversion.invert runs backwards (None: never)
    stochastic: Callable[..., bool] | None = None  # stochastic(**settings): whether these settings draw fresh noise
    # along the walk (order None: always)


def one_per_step(steps: int) -> int:
    return steps


def declare(*, order: int | None, evaluations: Callable[[int], int] = one_per_step, finite_start: bool = False,
            check: Callable[..., None] | None = None, multistep: bool = False,
            invertible: Callable[..., bool] | None = None,
            stochastic: Callable[..., bool] | None = None) -> Callable[[Callable], Callable]:
    """Attach an algorithm's `Facts` to it as `algorithm.facts`."""

    def attach(algorithm: Callable) -> Callable:
        algorithm.facts = Facts(order, evaluations, finite_start, check, multistep, invertible, stochastic)
        return algorithm

    return attach


@dataclass(frozen=True)
class Sampler:
    """An algorithm with its settings and its default timestep spacing (a sampler YAML, built)."""

    algorithm: Callable
    settings: dict[str, Any]
    spacing: str  # the timestep spacing of its walks (see Schedule.timesteps), or `auto`
    auto_spacing: dict[str, Rule] = field(default_factory=dict)  # schedule name (or `other`) -> rule, for `auto`
    walk: tuple[float, ...] | None = None  # timesteps walked instead of a spacing's (see walk_kind)
    walk_kind: str = "tuned"  # whose walk, recorded as the spacing: tuned (tune-steps) | distilled (a student's)

    def __post_init__(self) -> None:
        if not isinstance(getattr(self.algorithm, "facts", None), Facts):
            raise DiffuseError(f"{getattr(self.algorithm, '__name__', self.algorithm)!r} is not a sampler: it declares "
                               f"no facts (decorate it with diffuse.samplers.declare)")

    @property
    def name(self) -> str:
        return self.algorithm.__name__

    @property
    def facts(self) -> Facts:
        return self.algorithm.facts

    @property
    def deterministic(self) -> bool:
        """Whether its walk, with these settings, draws no fresh noise (one noise, one image)."""
        stochastic = self.facts.stochastic is not None and bool(self.facts.stochastic(**self.settings))
        return self.facts.order is not None and not stochastic

    @property
    def invertible(self) -> bool:
        """Whether its walk, with these settings, is DDIM's deterministic update (so DDIM inversion undoes it)."""
        return self.facts.invertible is not None and bool(self.facts.invertible(**self.settings))

    def spacing_for(self, schedule: Schedule, steps: int) -> str:
        """The spacing a walk of `steps` steps on `schedule` takes (`tuned`/`distilled` for a given walk): the
        sampler's own, or for `auto` the one its table names for this schedule (else for `other`) and step count.
        At zero terminal SNR, where only the spacings in ANYWHERE can start, a table entry outside them gives way
        to `other` (always one of them)."""
        if self.walk is not None:
            return self.walk_kind
        if self.spacing != AUTO:
            return self.spacing
        if not self.auto_spacing:
            raise DiffuseError(f"sampler {self.name} has spacing auto and no auto_spacing table; give a spacing: "
                               f"{', '.join(SPACINGS)}")
        rule = self.auto_spacing.get(schedule.name, self.auto_spacing["other"])
        chosen = rule[0]
        for i in range(1, len(rule), 2):
            if steps >= rule[i]:
                chosen = rule[i + 1]
        if chosen not in ANYWHERE and schedule.terminal_snr == 0:
            return self.auto_spacing["other"][0]
        return chosen

    def timesteps(self, schedule: Schedule, steps: int) -> list[float]:
        """The walk for `steps` steps: strictly decreasing timesteps, then -1 (a tuned walk's, when given)."""
        if self.walk is not None:
            if steps != len(self.walk) - 1:
                raise DiffuseError(f"the schedule file's walk has {len(self.walk) - 1} steps, and steps={steps}: pass "
                                   f"steps={len(self.walk) - 1}")
            return list(self.walk)
        return schedule.timesteps(steps, self.spacing_for(schedule, steps))

    def check(self, schedule: Schedule, steps: int) -> list[float]:
        """Every setting against the algorithm's signature, its types and its own check, and the timesteps for
        `steps` on `schedule`; no network runs. Returns the timesteps."""
        params = {name: p for name, p in inspect.signature(self.algorithm).parameters.items() if name not in RESERVED}
        try:
            unknown = sorted(set(self.settings) - set(params))
            if unknown:
                raise DiffuseError(f"unknown setting {unknown[0]!r}; allowed: {', '.join(params) or 'none'}")
            settings = {k: typed(v, params[k].annotation, k) for k, v in self.settings.items()}
        except DiffuseError as e:
            raise DiffuseError(f"sampler {self.name}: bad settings ({e})") from None
        if self.facts.check is not None:
            self.facts.check(schedule, **settings)
        ts = self.timesteps(schedule, steps)
        if self.facts.finite_start and math.isinf(schedule.sigma_ve(ts[0]).item()):
            raise InfiniteStart(f"sampler {self.name} integrates in sigma = sigma_t / alpha_t, which is infinite at "
                               f"zero terminal SNR, where this walk starts")
        return ts

    def __call__(self, denoiser: Denoiser, schedule: Schedule, x_T: Tensor, ts: list[float], *, generator=None,
                 on_step: Callable[[int, int], None] | None = None) -> Tensor:
        return self.algorithm(denoiser, schedule, x_T, ts, generator=generator, on_step=on_step, **self.settings)


def auto_table(table: Any, where: str) -> dict[str, Rule]:
    """A sampler node's `auto_spacing`: schedule name -> a spacing, or [spacing, N, spacing, ...] (the first below N
    steps, the next from N on; N increasing), with an `other` entry (a spacing every schedule takes) for the rest."""
    if not isinstance(table, dict) or "other" not in table:
        raise DiffuseError(f"{where}: auto_spacing must map schedule names to spacings, with an `other` entry; got "
                           f"{table!r}")
    out = {}
    for name, rule in table.items():
        rule = tuple(rule) if isinstance(rule, (list, tuple)) else (rule,)
        spacings, bounds = rule[0::2], rule[1::2]
        bad = [s for s in spacings if s not in SPACINGS]
        if bad or len(rule) % 2 == 0 or not all(is_int(n) and n >= 2 for n in bounds) or list(bounds) != sorted(set(bounds)):
            raise DiffuseError(f"{where}: auto_spacing.{name} must be a spacing ({', '.join(SPACINGS)}) or [spacing, "
                               f"N, spacing, ...] with step counts N >= 2 increasing; got {list(rule)!r}")
        out[str(name)] = rule
    if len(out["other"]) != 1 or out["other"][0] not in ANYWHERE:
        raise DiffuseError(f"{where}: auto_spacing.other must be one spacing that every schedule takes "
                           f"({', '.join(ANYWHERE)}); got {list(out['other'])!r}")
    return out
