"""Config -> the job of `diffuse eval`: what it scores (a checkpoint's samples, or images read from files) and
against what, every input checked in the order of its cost before any long work."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from omegaconf import DictConfig

from diffuse import DiffuseError, config as nodes, distributed
from diffuse.cas import check_drawn
from diffuse.checkpoint import LoadedModel
from diffuse.data import ImageData
from diffuse.distributed import World
from diffuse.features.extractors import choose_features
from diffuse.features.inception import FEATURES as INCEPTION_FEATURES
from diffuse.features.inception_weights import locate_weights
from diffuse.features.reference import StatsFile, read_stats
from diffuse.image_files import ImageSet, check_images, read_images
from diffuse.run import Context, checkpoint_test_split, dataset_builder, loaded_checkpoint, reference_node
from diffuse.samplers import Sampler
from diffuse.start_images import StartImages, start_images


@dataclass(eq=False)
class EvalJob:
    """What `diffuse eval` scores (a checkpoint's samples, or images read from files) and against what: a real
    data set, or statistics read from a file (reference=)."""

    world: World
    features: str  # the feature extractor: classifier | inception
    device: torch.device
    out_dir: Path
    cache_dir: Path
    reference: Callable[[str], ImageData] | None  # split ("train" | "test") -> the real data set (None: not needed)
    data: ImageData | None  # the reference split itself
    stats_file: StatsFile | None = None  # with reference=: the statistics to score against
    loaded: LoadedModel | None = None  # with ckpt=: the model that draws the images
    sampler: Sampler | None = None
    classes: list[int] | None = None
    samples: ImageSet | None = None  # with samples=: the images to score, as read
    samples_path: Path | None = None
    images: StartImages | None = None  # with ckpt=: what generation starts from besides noise (init=, inpaint=,
    # or a super-resolution model's low-res images)


def file_features(opts, stats: StatsFile) -> str:
    """The extractor a statistics file was made with, which the evaluation must use too."""
    if opts.features not in ("auto", stats.kind):
        raise DiffuseError(f"reference={stats.path} holds {stats.kind} statistics, and features={opts.features}: "
                           f"score with the extractor that made them")
    if stats.extractor is None and len(stats.stats.mu) != INCEPTION_FEATURES:
        raise DiffuseError(f"reference={stats.path} records no extractor and holds {len(stats.stats.mu)}-d statistics, "
                           f"not the {INCEPTION_FEATURES}-d FID Inception features such files carry")
    return stats.kind


def build_eval(cfg: DictConfig, ctx: Context, opts) -> EvalJob:
    """Checks in the order of their cost: the arguments, the images to score or the checkpoint, a statistics
    file, the extractor's weights file; then the reference data set is read when one is needed."""
    config = nodes.plain(cfg)
    has_ckpt, has_samples = config.get("ckpt") is not None, config.get("samples") is not None
    if has_samples and (opts.guidance != 1.0 or opts.strength != 1.0 or opts.resample != 1 or any(
            config.get(k) is not None for k in ("labels", "label", "init", "inpaint", "mask", "lowres"))):
        raise DiffuseError("labels, guidance, init=, strength, inpaint=, mask= and resample apply to generating "
                           "(ckpt=), and lowres= to upsampling with one; samples= scores the images as they are")
    if has_ckpt == has_samples:
        raise DiffuseError("give exactly one of ckpt=PATH (generate from a checkpoint) or samples=PATH (score an "
                           ".npz or a folder of images)")
    job = EvalJob(ctx.world, opts.features, distributed.device(ctx.world, nodes.device(config["device"])), ctx.out_dir,
                  Path(str(config["cache_dir"])).expanduser(), None, None)
    read: dict[str, ImageData] = {}  # splits read on the way (a super-resolution model's inputs), reused below
    if has_ckpt:
        job.loaded, job.sampler, job.classes = loaded_checkpoint(config, opts.steps, ctx.overrides)
        shape = job.loaded.model.shape

        def test_split() -> ImageData:
            read["test"] = checkpoint_test_split(config, job.loaded)
            return read["test"]

        job.images = start_images(config, opts, shape, job.sampler, job.loaded.model.lowres, test_split)
    else:
        job.samples_path = Path(str(config["samples"])).expanduser()
        job.samples = read_images(job.samples_path, opts.samples_range)
        shape = tuple(job.samples.images.shape[i] for i in (3, 1, 2))
    if config.get("reference") is not None:
        job.stats_file = read_stats(Path(str(config["reference"])).expanduser())
        job.features = file_features(opts, job.stats_file)
        if job.stats_file.image_shape not in (None, shape):
            raise DiffuseError(f"reference={job.stats_file.path} describes images {list(job.stats_file.image_shape)} "
                               f"(C,H,W), and these are {list(shape)}")
    if job.features == "inception":  # absent and not downloadable: fail before reading any data
        locate_weights(opts.inception, job.cache_dir)
    if job.stats_file is None or opts.floor or job.features == "classifier" or opts.cas:
        why = ("samples= needs the data set to score against" if job.stats_file is None else
               "floor=true scores real images of a data set (floor=false scores against reference= alone)"
               if opts.floor else "cas=true trains and tests a classifier on a data set" if opts.cas else
               "classifier statistics need the classifier, trained on a data set")
        job.reference = dataset_builder(reference_node(config, job.loaded, why), read)
        job.data = job.reference(opts.reference_split)
        check_real_data(job, shape, opts)
    if job.loaded is not None:
        job.loaded.model.network.to(job.device)
    return job


def check_real_data(job: EvalJob, shape: tuple[int, int, int], opts) -> None:
    """The images to score must fit the real data set; the extractor `auto` names is decided by it."""
    data = job.data
    if job.samples is not None:
        check_images(job.samples.images, data.shape, f"samples {job.samples_path}")
        labels = job.samples.labels
        if labels is not None and len(labels) and data.num_classes and labels.max() >= data.num_classes:
            raise DiffuseError(f"samples {job.samples_path}: labels run up to {labels.max()}, and {data.name} has "
                               f"classes 0..{data.num_classes - 1}")
    elif shape != data.shape:
        raise DiffuseError(f"the data set {data.name} has images {list(data.shape)} (C,H,W), but ckpt={job.loaded.path} "
                           f"generates {list(shape)}: evaluate against the data set it was trained on")
    if opts.cas:  # labelled, every class drawn, and the real baseline's n training images there
        drawn = (job.classes, opts.n, f"ckpt={job.loaded.path}") if job.loaded else (
            job.samples.labels, len(job.samples.images), f"samples {job.samples_path}")
        check_drawn(*drawn[:2], job.reference("train"), job.reference("test"), drawn[2])
    if job.features == "auto":
        job.features = choose_features("auto", data.shape, data.num_classes)
        if job.features == "inception":
            locate_weights(opts.inception, job.cache_dir)
