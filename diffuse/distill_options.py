"""The options of `diffuse distill` (conf/distill.yaml), checked and resolved where they are read: the method's own
teacher walk and adversarial weight where null, the walk search's and halving rounds' step counts (diffuse.
student_walks, diffuse.halving)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from diffuse import DiffuseError
from diffuse.data import ImageData
from diffuse.halving import halve_counts
from diffuse.progressive import TEACHER_STEPS
from diffuse.schedule import SPACINGS
from diffuse.student_walks import search_counts
from diffuse.train import TrainOptions
from diffuse.validate import doubles_to, weight

# each method's own where teacher_steps / teacher_solver / adversarial are null: (steps, solver, adversarial);
# benchmarks/RESULTS.md ("The default teacher walk"): consistency students of the Heun 8-step walk beat those of
# DDIM's 16 at 1, 2 and 4 steps; ("An adversarial term in the consistency run"): a critic of weight 2 in the
# consistency run took the 2-step student from 1.32x to 1.05-1.07x of the converged FID (0.5: 1.26x; 8: 0.96x, but
# 1 step worse and precision lower)
METHODS = {"progressive": (16, "ddim", 0.0), "consistency": (8, "heun", 2.0)}


@dataclass(frozen=True)
class DistillOptions:
    """The options of `diffuse distill` (defaults: conf/distill.yaml, and conf/train_options.yaml for train.*).
    train.max_minutes is the distillation's budget: progressive rounds share it evenly; a consistency run has what its
    halving rounds and walk search leave (student_walks.training_minutes). train.steps caps each round."""

    method: str  # progressive (rounds of halving) | consistency (one run over the teacher's walk)
    teacher_steps: int | None  # the teacher's walk that the first round halves (None: the method's, METHODS)
    student_steps: int  # the last round's student; each round halves the steps
    spacing: str  # the spacing of the teacher's walk
    teacher_solver: str | None  # the teacher's step along its walk: ddim | heun (second order, two evaluations;
    # None: the method's, METHODS)
    teacher_steps_start: int | None  # consistency: the teacher's walk starts this long and doubles up to teacher_steps
    clip_x0: bool  # clamp the teacher's x0 to [-1, 1] in its steps, as its sampling does
    search_walks: Any  # consistency: the step counts whose walk is chosen by FID (auto: see checked_search)
    search_n: int  # images per walk the search scores
    halve_walks: Any  # consistency: step counts k whose walk a progressive round halves (k/2 steps; auto: halving.AUTO)
    halve_share: float  # each halving round's share of train.max_minutes (the consistency run's: training_minutes)
    halve_adversarial: float  # the weight of the halving rounds' adversarial term (diffuse.adversarial; 0: none)
    adversarial: float | None  # consistency: the weight of its run's adversarial term (0: none; None: METHODS')
    train: TrainOptions

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise DiffuseError(f"method={self.method!r} is not a distillation method; allowed: {', '.join(METHODS)}")
        steps, solver, adversarial = METHODS[self.method]
        if self.teacher_steps is None:  # resolved here, so distill.json and the students record the walk taken
            object.__setattr__(self, "teacher_steps", steps)
        if self.teacher_solver is None:
            object.__setattr__(self, "teacher_solver", solver)
        if self.adversarial is None:
            object.__setattr__(self, "adversarial", adversarial)
        if self.teacher_steps <= self.student_steps or not doubles_to(self.student_steps, self.teacher_steps):
            raise DiffuseError(f"teacher_steps must be student_steps times a power of 2 (each round halves the steps), "
                               f"got teacher_steps={self.teacher_steps} and student_steps={self.student_steps}")
        if self.spacing not in SPACINGS:
            raise DiffuseError(f"spacing={self.spacing!r} is not a spacing; allowed: {', '.join(SPACINGS)}")
        if self.teacher_solver not in TEACHER_STEPS:
            raise DiffuseError(f"teacher_solver={self.teacher_solver!r} is not a teacher's solver; allowed: "
                               f"{', '.join(TEACHER_STEPS)}")
        start = self.teacher_steps_start
        if start is not None:
            if self.method != "consistency":
                raise DiffuseError(f"teacher_steps_start={start} is consistency distillation's curriculum; "
                                   f"method={self.method} halves its walk in rounds instead: leave it null")
            if start >= self.teacher_steps or not doubles_to(start, self.teacher_steps):
                raise DiffuseError(f"teacher_steps_start={start} must be teacher_steps={self.teacher_steps} divided by "
                                   f"a power of 2 (the walk doubles up to it), or null (no curriculum)")
        self.checked_search()
        object.__setattr__(self, "adversarial", weight(self.adversarial, "adversarial",
                                                       "the consistency run's adversarial term"))
        if self.adversarial and self.method != "consistency":
            raise DiffuseError(f"adversarial={self.adversarial:g} is a term of the consistency run's loss; method="
                               f"{self.method} has none: leave it 0 (or give method=consistency)")
        object.__setattr__(self, "halve_walks", halve_counts(self))  # auto resolved: distill.json records the rounds

    def checked_search(self, data: ImageData | None = None) -> list[int]:
        """search_walks resolved (diffuse.student_walks.search_counts)."""
        return search_counts(self, data)

    @property
    def rounds(self) -> int:
        """Progressive distillation's rounds (one run for consistency distillation)."""
        return (self.teacher_steps // self.student_steps).bit_length() - 1 if self.method == "progressive" else 1

    @property
    def walks(self) -> list[int]:
        """The step counts the students walk: student_steps, twice that, ... below teacher_steps (progressive: one
        student each), or up to teacher_steps itself (consistency: one student for all)."""
        top = (self.teacher_steps // self.student_steps).bit_length() - (self.method == "progressive")
        return [self.student_steps << j for j in range(top)]

    @property
    def curriculum(self) -> list[int]:
        """The teacher's walk lengths over a consistency run, each for an equal share of its steps: teacher_steps_start,
        twice that, ... teacher_steps (iCT's growing discretisation); [teacher_steps] without a curriculum."""
        n = self.teacher_steps_start or self.teacher_steps
        return [n << j for j in range((self.teacher_steps // n).bit_length())]
