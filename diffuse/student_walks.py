"""`diffuse distill search_walks=[2]`: the timesteps a consistency student's k-step walk takes, chosen among those it
was distilled on by the classifier FID of its images against the training split (step_search.search_subwalk), and
written into its checkpoint (`walk_at` in its distill record), which `diffuse sample` then walks at k steps; and the
consistency run's budget, train.max_minutes less the search's expected time (training_minutes)."""

from __future__ import annotations

import json
import logging
import signal
import time
from pathlib import Path
from typing import Callable

from diffuse import DiffuseError
from diffuse.checkpoint import LAST, load_checkpoint, load_model, metadata_config, save_checkpoint
from diffuse.features.classifier import classifier_extractor
from diffuse.features.reference import reference_features
from diffuse.data import ImageData
from diffuse.generate import GenerationOptions, generate
from diffuse.metrics import frechet_distance, gaussian_stats
from diffuse.precision import resolve as resolve_precision
from diffuse.sampler_choice import checked_sampler
from diffuse.step_search import round_walks, search_subwalk
from diffuse.stop import StopRequest, TrainingInterrupted
from diffuse.train import TrainOptions
from diffuse.validate import is_int
from diffuse.walk_file import every

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


def scoring(job) -> tuple:
    """Rank 0's (extractor, reference): the data set's domain classifier (trained once per data set, then cached)
    and the training split's statistics; (None, None) on the other ranks."""
    if not job.world.main:
        return None, None
    extractor = classifier_extractor(job.reference("train"), job.reference("test"), job.cache_dir, job.device)
    return extractor, reference_features(job.reference("train"), "train", extractor, job.cache_dir)


def drawing(train_opts: TrainOptions, n: int, device) -> Callable[[int], GenerationOptions]:
    """k -> how the search draws its n images at k steps: as train.eval_every draws them (train.precision,
    train.clip_x0, train.eval_batch_size), from the noises of seed SEED."""
    precision = resolve_precision(train_opts.precision, device)
    return lambda k: train_opts.generation(n, k, min(n, train_opts.eval_batch_size), SEED, precision)


def scorer(job, model, generation: Callable[[int], GenerationOptions], extractor, reference,
           stop: StopRequest | None = None, what: str = "search_walks") -> Callable[[int, list[float]], float]:
    """fid(k, walk): the FID against the training split (`scoring`'s extractor and reference statistics, on rank 0;
    every rank takes its score) of the images `model` draws walking `walk` (k steps) as generation(k) says; under
    torchrun every rank draws its share. With `stop`, a stop signal ends the search after the walk being scored
    (TrainingInterrupted, naming the resume command)."""
    world = job.world
    network = model.network.to(job.device).eval()
    classes = list(range(network.num_classes)) if network.conditional else None

    def fid(k: int, walk: list[float]) -> float:
        options = generation(k)
        sampler = checked_sampler(job.config["sampler"], model.schedule, k, tuple(walk), "distilled")
        drawn = generate(model, sampler, options, job.device, classes, world=world)
        value = frechet_distance(gaussian_stats(extractor(drawn.images)[0]), reference.stats) if world.main else 0.0
        value = world.broadcast(float(value))  # every rank takes rank 0's score, so all search alike
        log.info("%s: %d steps through %s: FID %.3f (%d images, against the training split)", what, k,
                 [round(t, 1) for t in walk[:-1]], value, options.n)
        if stop is not None and world.any(stop.signal is not None)[0]:
            if stop.then_requeue is not None:  # e.g. submitit's requeue: the student's checkpoint is on disk
                stop.then_requeue(stop.signal, None)
            raise TrainingInterrupted(f"stopped by {signal.Signals(stop.signal or signal.SIGTERM).name} in the walk "
                                      f"search (the student is trained). Resume with: {job.resume_command}")
        return value

    return fid


def search_seconds(job, train_opts: TrainOptions, walks: list[int], n: int) -> tuple[float, int]:
    """The walk search's expected seconds, and the walks it expects to score: for each k in `walks`, one walk timed
    (the teacher, whose weights the student starts from, drawing the n images through every (N/k)-th timestep of
    its walk, scored as the search scores them) times step_search.round_walks(N, k), the walks the search's first
    round scores at most; rank 0's figure on every rank. The timed walks are not the search's (their seconds are
    the caller's to count)."""
    fid = scorer(job, job.teacher.model, drawing(train_opts, n, job.device), *scoring(job),
                 what="timing the walk search")
    total, count, steps = 0.0, 0, len(job.teacher_ts) - 1
    for k in walks:
        started = time.perf_counter()
        fid(k, every(job.teacher_ts, k))
        total += (time.perf_counter() - started) * round_walks(steps, k)
        count += round_walks(steps, k)
    return float(job.world.broadcast(total)), count


def said(seconds: float) -> str:
    """Seconds as a message gives them: 3 significant digits below 100, whole seconds from there."""
    return f"{seconds:.3g}" if seconds < 100 else f"{seconds:.0f}"


def training_minutes(job, opts, folder: Path) -> float:
    """The consistency run's train.max_minutes: what the halving rounds leave of train.max_minutes (each takes
    halve_share of it), less the walk search's expected seconds and those spent timing them (search_seconds), so
    that train.max_minutes covers the search too; not less the search's without a budget, a search, or where the
    run in `folder` has begun (a resumed run keeps its plan). Refused in one line where the search would leave the
    run no time."""
    minutes = opts.train.max_minutes * (1 - opts.halve_share * len(opts.halve_walks))
    if not minutes or not job.search_walks or (folder / "checkpoints" / LAST).is_file():
        return minutes
    started = time.perf_counter()
    expected, walks = search_seconds(job, opts.train, job.search_walks, opts.search_n)
    spent = float(job.world.broadcast(time.perf_counter() - started))
    left = minutes - (expected + spent) / 60
    if left <= 0:
        raise DiffuseError(f"train.max_minutes={opts.train.max_minutes:g} covers the walk search, and leaves the "
                           f"consistency run no time: of its share, {said(minutes * 60)} s, the search of {walks} "
                           f"walks of search_n={opts.search_n} images is expected to take {said(expected)} s here and "
                           f"timing it took {said(spent)} s; raise train.max_minutes, lower search_n, or give "
                           f"search_walks=[]")
    log.info("train.max_minutes=%g covers the walk search: %d walks of %d images, expected to take %.0f s here "
             "(timed in %.0f s), so the consistency run trains %.2f minutes", opts.train.max_minutes, walks,
             opts.search_n, expected, spent, left)
    return left


def search_walks(job, train_opts: TrainOptions, walks: list[int], n: int, checkpoint: Path) -> dict[str, dict]:
    """For each k in `walks`: the k-step walk of the student at `checkpoint` (EMA weights) through its distilled
    timesteps whose n images have the lowest FID against the training split (`scorer`). A stop signal ends the
    search after the walk being scored. Rank 0 adds the walks to the checkpoint's distill record (walk_at {k:
    timesteps}); returns {k: {timesteps, fid, start_fid, fid_of, ...}}."""
    world = job.world
    loaded = load_model(checkpoint, "ema")
    model, record = loaded.model, loaded.config["distill"]
    found: dict[str, dict] = {}
    generation = drawing(train_opts, n, job.device)
    with StopRequest() as stop:
        fid = scorer(job, model, generation, *scoring(job), stop)
        for k in walks:
            found[str(k)] = search_walk(fid, record["timesteps"], k, generation(k))
    if world.main:
        tensors, metadata = load_checkpoint(checkpoint)
        config = metadata_config(metadata)
        config["distill"]["walk_at"] = {**config["distill"].get("walk_at", {}),
                                        **{k: v["timesteps"] for k, v in found.items()}}
        metadata["config"] = json.dumps(config, sort_keys=True)
        save_checkpoint([checkpoint], tensors, metadata)
    world.barrier()
    return found


def search_walk(fid, ts: list[float], k: int, generation: GenerationOptions) -> dict:
    """The k-step walk through the walk ts with the lowest FID (`scorer`'s fid, drawing as `generation`), as
    search_walks records it."""
    t0 = time.perf_counter()
    searched, scores = search_subwalk(lambda walk: fid(k, walk), ts, k)
    log.info("search_walks: the %d-step walk goes through %s (FID %.3f; every (N/k)-th: %.3f)", k,
             [round(t, 1) for t in searched.timesteps[:-1]], searched.loss, searched.start_loss)
    return {"timesteps": searched.timesteps, "fid": searched.loss, "start_fid": searched.start_loss, "n": generation.n,
            "seed": generation.seed, "precision": generation.precision, "seconds": round(time.perf_counter() - t0, 1),
            "fid_of": [{"timesteps": list(w), "fid": v} for w, v in scores.items()]}
