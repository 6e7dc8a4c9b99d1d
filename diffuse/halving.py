"""`diffuse distill halve_walks` (by default [2]): after consistency distillation, a progressive round (Salimans & Ho
2022) whose teacher is the consistency student walking its k-step walk (the searched one where chosen) trains a
k/2-step student that takes in one DDIM step each pair of those steps. This module resolves and checks the option
and builds each round's record and loss; diffuse.distill runs them."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from diffuse import DiffuseError
from diffuse.adversarial import AdversarialLoss
from diffuse.checkpoint import load_model
from diffuse.progressive import ProgressiveLoss, halve
from diffuse.validate import is_int, weight
from diffuse.walk_file import student_walk

log = logging.getLogger(__name__)

# halve_walks=auto's step counts k, where the consistency student walks k and k/2 (benchmarks/RESULTS.md, "Halving the
# 2-step walk by default": a 1.5-minute round, 1 step 22% better, 2 steps 3% worse, in 3 seeds on an fp32 box)
AUTO = (2,)


def halve_counts(opts) -> list[int]:
    """The DistillOptions' halve_walks resolved (auto: those of AUTO a consistency student walks with their halves, so
    students of 1 step are wanted; else []), checked with halve_share (leaves the consistency run some time) and
    halve_adversarial (a finite weight >= 0); refused in one line otherwise."""
    given = opts.halve_walks
    if given == "auto":
        given = [k for k in AUTO if k in opts.walks and k // 2 in opts.walks] if opts.method == "consistency" else []
    if not isinstance(given, (list, tuple)) or not all(is_int(k) for k in given):
        raise DiffuseError(f"halve_walks={given!r} must be a list of step counts, e.g. [2] or [], or auto")
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
    weight(opts.halve_adversarial, "halve_adversarial", "the halving rounds' adversarial term")
    return list(given)


def halving_round(consistency: Path, k: int, j: int, opts, first: dict, device: torch.device,
                  seed: int) -> tuple[dict, ProgressiveLoss | AdversarialLoss]:
    """Round j's distill record and loss: the consistency student at `consistency` (EMA) walks its k-step walk as
    `diffuse sample steps=k` walks it, and the k/2-step student (started from it) every other timestep of that walk;
    with the DistillOptions' halve_adversarial > 0, the loss gains that weight of diffuse.adversarial's term (its
    critic from `seed`)."""
    rounds, clip_x0, adversarial = 1 + len(opts.halve_walks), opts.clip_x0, opts.halve_adversarial
    teacher = load_model(consistency, "ema")
    walk = list(student_walk(teacher, k, False, None))
    n, student_ts = k // 2, halve(walk)
    record = {"method": "progressive", "teacher": str(consistency), "teacher_steps": k, "steps": n,
              "timesteps": student_ts, "walks": [n], "round": j, "rounds": rounds, "teacher_solver": "ddim", **first}
    loss = ProgressiveLoss(teacher.model.network.to(device), walk, clip_x0, "ddim")
    if adversarial:
        record["adversarial"] = adversarial
        loss = AdversarialLoss(loss, adversarial, teacher.model.shape, seed).to(device)
    log.info("round %d: a %d-step student halving the consistency student's %d-step walk %s%s", j, n, k,
             [round(t, 1) for t in walk[:-1]], f", with an adversarial term of weight {adversarial:g}" if adversarial
             else "")
    return record, loss
