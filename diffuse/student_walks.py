"""`diffuse distill search_walks=[2]`: the timesteps a consistency student's k-step walk takes, chosen among those it
was distilled on by the classifier FID of its images against the training split (step_search.search_subwalk), and
written into its checkpoint (`walk_at` in its distill record), which `diffuse sample` then walks at k steps."""

from __future__ import annotations

import json
import logging
import signal
import time
from pathlib import Path

from diffuse import DiffuseError
from diffuse.checkpoint import load_checkpoint, load_model, metadata_config, save_checkpoint
from diffuse.features.classifier import classifier_extractor
from diffuse.features.reference import reference_features
from diffuse.data import ImageData
from diffuse.generate import GenerationOptions, generate
from diffuse.metrics import frechet_distance, gaussian_stats
from diffuse.precision import resolve as resolve_precision
from diffuse.sampler_choice import checked_sampler
from diffuse.step_search import search_subwalk
from diffuse.stop import StopRequest, TrainingInterrupted
from diffuse.train import TrainOptions
from diffuse.validate import is_int

log = logging.getLogger(__name__)

AUTO = (2, 4)  # search_walks=auto's step counts (benchmarks/RESULTS.md, "Searched 4-step walks": 2 and 4 gain)
SEED = 1  # the searched images' noises: not diffuse sample's and eval's default seed (0), which score the walk after


def search_counts(opts, data: ImageData | None = None) -> list[int]:
    """The DistillOptions' search_walks resolved for the teacher's data set (None: not known yet): auto is those of
    AUTO a consistency student walks with a timestep to choose (fewer steps than its teacher's walk) on a data set
    with class labels (the classifier that scores the walks needs them), else []; refused in one line: what cannot
    be searched."""
    given, walks = opts.search_walks, opts.walks
    labelled = data is None or data.num_classes >= 2
    if given == "auto":
        auto = [k for k in AUTO if k in walks and 1 < k < opts.teacher_steps]
        given = auto if opts.method == "consistency" and labelled else []
    if not isinstance(given, (list, tuple)) or not all(is_int(k) for k in given):
        raise DiffuseError(f"search_walks={given!r} must be a list of step counts, e.g. [2] or [2,4], or auto")
    if given and opts.method != "consistency":
        raise DiffuseError(f"search_walks={list(given)} chooses the walks of a consistency student; "
                           f"method={opts.method}'s students walk their round's timesteps: leave it auto or []")
    choosable = [k for k in walks if k not in (1, opts.teacher_steps)]
    bad = [k for k in given if k not in choosable]
    if bad:
        raise DiffuseError(f"search_walks={list(given)}: {bad[0]} is not a step count with a timestep to choose; "
                           f"allowed: {', '.join(map(str, choosable)) or 'none'}")
    if not is_int(opts.search_n) or opts.search_n < 2:
        raise DiffuseError(f"search_n={opts.search_n!r} must be an integer >= 2 (images per walk the search "
                           f"scores)")
    if given and not labelled:
        raise DiffuseError(f"search_walks={list(given)} scores walks with the data set's domain classifier, and "
                           f"{data.name!r} has no class labels: use search_walks=[]")
    return sorted(set(given))


def searchable(opts, data: ImageData, reference) -> list[int]:
    """search_counts for the teacher's data set, whose test split (`reference("test")`) the classifier is checked
    on: where it has none, auto searches nothing (logged) and a list is refused, before training."""
    search = search_counts(opts, data)
    if search:
        try:
            reference("test")
        except DiffuseError as e:
            if opts.search_walks != "auto":
                raise DiffuseError(f"search_walks={search} scores walks with a classifier checked on the data set's "
                                   f"test split, and the teacher's data set {data.name!r} has none to read here "
                                   f"({str(e).split(':')[0]}): use search_walks=[]") from None
            search = []
    if opts.search_walks == "auto" and search_counts(opts) and not search:
        log.info("search_walks=auto: %s has no class labels or no test split for the classifier that scores walks, so "
                 "the student walks every (N/k)-th of its timesteps", data.name)
    return search


def search_walks(job, train_opts: TrainOptions, walks: list[int], n: int, checkpoint: Path) -> dict[str, dict]:
    """For each k in `walks`: the k-step walk of the student at `checkpoint` (EMA weights) through its distilled
    timesteps whose n images (drawn as train.eval_every draws them: train.precision, train.clip_x0,
    train.eval_batch_size) have the lowest FID against the training split (the domain classifier's features). Under
    torchrun every rank draws its share of each walk's images and rank 0 scores them (all ranks follow its scores).
    A stop signal ends the search after the walk being scored (TrainingInterrupted, naming the resume command).
    Rank 0 adds the walks to the checkpoint's distill record (walk_at {k: timesteps}); returns
    {k: {timesteps, fid, start_fid, fid_of, ...}}."""
    world = job.world
    loaded = load_model(checkpoint, "ema")
    model, record = loaded.model, loaded.config["distill"]
    network = model.network.to(job.device).eval()
    classes = list(range(network.num_classes)) if network.conditional else None
    extractor = reference = None
    if world.main:  # the classifier (trained once per data set, then cached) and the training split's statistics
        extractor = classifier_extractor(job.reference("train"), job.reference("test"), job.cache_dir, job.device)
        reference = reference_features(job.reference("train"), "train", extractor, job.cache_dir)
    precision = resolve_precision(train_opts.precision, job.device)
    found: dict[str, dict] = {}
    with StopRequest() as stop:
        for k in walks:
            generation = train_opts.generation(n, k, min(n, train_opts.eval_batch_size), SEED, precision)
            found[str(k)] = search_walk(job, model, record["timesteps"], k, generation, classes, extractor, reference,
                                        stop)
    if world.main:
        tensors, metadata = load_checkpoint(checkpoint)
        config = metadata_config(metadata)
        config["distill"]["walk_at"] = {**config["distill"].get("walk_at", {}),
                                        **{k: v["timesteps"] for k, v in found.items()}}
        metadata["config"] = json.dumps(config, sort_keys=True)
        save_checkpoint([checkpoint], tensors, metadata)
    world.barrier()
    return found


def search_walk(job, model, ts: list[float], k: int, generation: GenerationOptions, classes: list[int] | None,
                extractor, reference, stop: StopRequest) -> dict:
    """The k-step walk through the walk ts whose generation.n images have the lowest FID (rank 0's extractor and
    reference statistics; the other ranks draw their share and take rank 0's scores), as search_walks records it."""
    world = job.world

    def fid(walk: list[float]) -> float:
        sampler = checked_sampler(job.config["sampler"], model.schedule, k, tuple(walk), "distilled")
        drawn = generate(model, sampler, generation, job.device, classes, world=world)
        value = frechet_distance(gaussian_stats(extractor(drawn.images)[0]), reference.stats) if world.main else 0.0
        value = world.broadcast(float(value))  # every rank takes rank 0's score, so all search alike
        log.info("search_walks: %d steps through %s: FID %.3f (%d images, against the training split)", k,
                 [round(t, 1) for t in walk[:-1]], value, generation.n)
        if world.any(stop.signal is not None)[0]:
            if stop.then_requeue is not None:  # e.g. submitit's requeue: the student's checkpoint is on disk
                stop.then_requeue(stop.signal, None)
            raise TrainingInterrupted(f"stopped by {signal.Signals(stop.signal or signal.SIGTERM).name} in the walk "
                                      f"search (the student is trained). Resume with: {job.resume_command}")
        return value

    t0 = time.perf_counter()
    searched, scores = search_subwalk(fid, ts, k)
    log.info("search_walks: the %d-step walk goes through %s (FID %.3f; every (N/k)-th: %.3f)", k,
             [round(t, 1) for t in searched.timesteps[:-1]], searched.loss, searched.start_loss)
    return {"timesteps": searched.timesteps, "fid": searched.loss, "start_fid": searched.start_loss,
            "n": generation.n, "seed": generation.seed, "precision": generation.precision,
            "seconds": round(time.perf_counter() - t0, 1),
            "fid_of": [{"timesteps": list(w), "fid": v} for w, v in scores.items()]}
