"""`diffuse tune-steps ckpt=... nfe=10`: the timesteps of a few-step walk for one checkpoint and sampler, searched
(diffuse.step_search) so that its images land where the same sampler's many-step walk from the same noises lands,
and written to walk.json, which `diffuse sample schedule_file=...` (and `diffuse eval`) walk."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor

from diffuse import DiffuseError
from diffuse.features.cache import sha256
from diffuse.generate import GenerationOptions, image_labels, model_denoiser, start_noise
from diffuse.precision import resolve as resolve_precision
from diffuse.samplers import Sampler
from diffuse.step_search import search_timesteps
from diffuse.walk_file import WalkFile, write_walk_file

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TuneOptions(GenerationOptions):
    """The options of `diffuse tune-steps` (defaults: conf/tune-steps.yaml and conf/generate.yaml); `n` images
    are tuned on and `held_out` more (the next indices) only scored. `steps` is the reference walk's."""

    nfe: int  # network evaluations per image of the walk to tune (the most steps that fit)
    held_out: int  # images scored before and after, not tuned on
    rounds: int  # search rounds; round r moves timesteps by 1/2^(r+1) of the gap to a neighbour

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.held_out < 0 or self.rounds < 1:
            raise DiffuseError(f"held_out must be >= 0 and rounds >= 1, got {self.held_out}, {self.rounds}")

    def steps_for(self, sampler: Sampler) -> int:
        """The most steps whose network evaluations fit nfe; at least 2 (a 1-step walk has nothing to tune)."""
        fits = [k for k in range(2, self.steps) if sampler.facts.evaluations(k) <= self.nfe]
        if not fits:
            raise DiffuseError(f"nfe={self.nfe} leaves {sampler.name} fewer than 2 steps, or not fewer than the "
                               f"reference's steps={self.steps}: nothing to tune; raise nfe (or steps)")
        return max(fits)


def walk_ends(job, sampler: Sampler, ts: list[float], x_T: Tensor, gens, labels, opts: TuneOptions,
              precision: str) -> Tensor:
    """Where `sampler` walking `ts` takes the noises x_T (N,C,H,W), in batches: (N,C,H,W) float, unquantized."""
    model = job.loaded.model
    out = []
    with torch.no_grad():
        for a in range(0, len(x_T), opts.batch_size):
            b = slice(a, a + opts.batch_size)
            denoiser = model_denoiser(model, opts, None if labels is None else labels[b], precision)
            out.append(sampler(denoiser, model.schedule, x_T[b], ts, generator=gens[b]).float())
    return torch.cat(out)


def tune_steps(job, opts: TuneOptions) -> Path:
    """Reference walks of every image, then the search on the first n; writes walk.json and returns its path."""
    model, sampler, out = job.loaded.model, job.sampler, job.out_dir
    steps = opts.steps_for(sampler)
    start = sampler.timesteps(model.schedule, steps)
    count = opts.n + opts.held_out
    x_T, gens = start_noise(model.shape, opts.seed, 0, count, job.device)  # (count,C,H,W)
    labels = image_labels(job.classes, count)
    precision = resolve_precision(opts.precision, job.device)
    t0 = time.perf_counter()
    reference = walk_ends(job, sampler, sampler.timesteps(model.schedule, opts.steps), x_T, gens, labels, opts,
                          precision)
    seconds_reference = time.perf_counter() - t0
    tune, held = slice(0, opts.n), slice(opts.n, count)

    def rmse(ts: list[float], part: slice) -> float:
        if part.start == part.stop:
            return float("nan")
        ends = walk_ends(job, sampler, ts, x_T[part], gens[part], None if labels is None else labels[part], opts,
                         precision)
        return (ends - reference[part]).pow(2).mean().sqrt().item()

    def scored(ts: list[float]) -> float:
        value = rmse(ts, tune)
        log.info("rmse %.5f  %s", value, [round(t, 1) for t in ts[:-1]])
        return value

    t1 = time.perf_counter()
    found = search_timesteps(scored, start, rounds=opts.rounds)
    seconds_search = time.perf_counter() - t1
    spacing = sampler.spacing_for(model.schedule, steps)
    record = {"start_spacing": spacing, "start_timesteps": start, "reference_steps": opts.steps,
              "rmse_to_reference": {"start": {"tuned_on": found.start_loss, "held_out": rmse(start, held)},
                                    "tuned": {"tuned_on": found.loss, "held_out": rmse(found.timesteps, held)}},
              "walks_scored": found.evaluations, "seconds": {"reference": round(seconds_reference, 2),
                                                               "search": round(seconds_search, 2)},
              "options": asdict(opts)}
    node = {"_target_": f"{sampler.algorithm.__module__}.{sampler.name}", **sampler.settings,
            "spacing": sampler.spacing, **({"auto_spacing": {k: list(v) for k, v in sampler.auto_spacing.items()}}
                                           if sampler.auto_spacing else {})}
    walk = WalkFile(checkpoint=str(job.loaded.path), checkpoint_sha256=sha256(job.loaded.path),
                    weights=job.loaded.weights, sampler=node, steps=steps,
                    nfe=sampler.facts.evaluations(steps), timesteps=found.timesteps, record=record)
    out.mkdir(parents=True, exist_ok=True)
    write_walk_file(walk, out / "walk.json")
    r = record["rmse_to_reference"]
    log.info("%s, %d steps (%d NFE): RMSE to the %d-step walk %.4f -> %.4f on the %d tuned images, %.4f -> %.4f on "
             "%d held out; %d walks scored in %.0f s", sampler.name, steps, walk.nfe, opts.steps,
             r["start"]["tuned_on"], r["tuned"]["tuned_on"], opts.n, r["start"]["held_out"], r["tuned"]["held_out"],
             opts.held_out, found.evaluations, seconds_search)
    log.info("wrote %s; sample with: diffuse sample ckpt=%s schedule_file=%s steps=%d", out / "walk.json",
             job.loaded.path, (out / "walk.json").resolve(), steps)
    return out / "walk.json"

