"""`diffuse distill halve_walks=[4]`: after consistency distillation, a progressive round (Salimans & Ho 2022) whose
teacher is the consistency student walking its k-step walk (the searched one where chosen) trains a k/2-step student
that takes in one DDIM step each pair of those steps. This module checks the option and builds each round's record
and loss; diffuse.distill runs them."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from diffuse import DiffuseError
from diffuse.checkpoint import load_model
from diffuse.progressive import ProgressiveLoss, halve
from diffuse.validate import is_int
from diffuse.walk_file import student_walk

log = logging.getLogger(__name__)


def halve_counts(opts) -> None:
    """The DistillOptions' halve_walks (even step counts the consistency student walks) and halve_share (leaves its
    run some time), refused in one line otherwise."""
    given = opts.halve_walks
    if not isinstance(given, (list, tuple)) or not all(is_int(k) for k in given):
        raise DiffuseError(f"halve_walks={given!r} must be a list of step counts, e.g. [4] or []")
    if given and opts.method != "consistency":
        raise DiffuseError(f"halve_walks={list(given)} halves a consistency student's walks; method={opts.method} "
                           f"halves its walk in every round already: leave it []")
    bad = [k for k in given if k % 2 or k not in opts.walks]
    if bad:
        allowed = ", ".join(str(k) for k in opts.walks if k % 2 == 0) or "none"
        raise DiffuseError(f"halve_walks={list(given)}: {bad[0]} is not an even step count the consistency student "
                           f"walks; allowed: {allowed}")
    share = opts.halve_share
    if not isinstance(share, (int, float)) or isinstance(share, bool) or not 0 < share * max(len(given), 1) < 1:
        raise DiffuseError(f"halve_share={share!r} must be a fraction of train.max_minutes above 0 and below "
                           f"{1 / max(len(given), 1):g} (each of the {len(given)} halving round(s) trains that "
                           f"share; the consistency run, the rest)")


def halving_round(consistency: Path, k: int, j: int, rounds: int, clip_x0: bool, first: dict,
                  device: torch.device) -> tuple[dict, ProgressiveLoss]:
    """Round j's distill record and loss: the consistency student at `consistency` (EMA) walks its k-step walk as
    `diffuse sample steps=k` walks it, and the k/2-step student (started from it) every other timestep of that walk."""
    teacher = load_model(consistency, "ema")
    walk = list(student_walk(teacher, k, False, None))
    n, student_ts = k // 2, halve(walk)
    record = {"method": "progressive", "teacher": str(consistency), "teacher_steps": k, "steps": n,
              "timesteps": student_ts, "walks": [n], "round": j, "rounds": rounds, "teacher_solver": "ddim", **first}
    log.info("round %d: a %d-step student halving the consistency student's %d-step walk %s", j, n, k,
             [round(t, 1) for t in walk[:-1]])
    return record, ProgressiveLoss(teacher.model.network.to(device), walk, clip_x0, "ddim")
