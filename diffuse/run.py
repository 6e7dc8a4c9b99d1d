"""Config -> objects for each command: `build_train`, `build_sample` and `build_eval` turn the composed config (and
the command's options, already checked) into a small job, checking every input before any long work starts."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from omegaconf import DictConfig
from torch import nn

from diffuse import DiffuseError, config as nodes, distributed, train_state
from diffuse.cas import check_drawn
from diffuse.checkpoint import LoadedModel, load_model
from diffuse.config import DATASETS, MODELS, OBJECTIVES, OPTIMIZERS, SCHEDULES, build
from diffuse.data import ImageData
from diffuse.distributed import World
from diffuse.denoiser import DiffusionModel
from diffuse.features.extractors import choose_features
from diffuse.features.inception import FEATURES as INCEPTION_FEATURES
from diffuse.features.inception_weights import locate_weights
from diffuse.features.reference import StatsFile, read_stats
from diffuse.generate import resolve_classes
from diffuse.image_files import ImageSet, check_images, read_images
from diffuse.loss import diffusion_loss
from diffuse.models import check_network
from diffuse.objectives import Objective
from diffuse.sampler_choice import checked_sampler, chosen_node, names_sampler
from diffuse.samplers import Sampler
from diffuse.schedule import Schedule
from diffuse.start_images import StartImages, start_images
from diffuse.validate import seed as check_seed
from diffuse.walk_file import read_walk_file, student_walk


@dataclass(frozen=True)
class Context:
    """What Hydra and torchrun decided for this run: its folder, the experiment preset chosen, the command-line
    overrides, and this process's rank among the run's processes."""

    out_dir: Path
    experiment: str | None = None
    overrides: tuple[str, ...] = ()
    world: World = World()


@dataclass(eq=False)
class TrainJob:
    world: World  # this process's rank among the run's (one process: World())
    model: DiffusionModel  # a fresh network (weights from `resume` when set), its objective, schedule, image shape
    sampler: Sampler  # for the sample grids and the background evaluation
    data: ImageData
    optimizer: Callable  # (params, lr) -> torch.optim.Optimizer
    device: torch.device
    out_dir: Path
    seed: int
    config: dict  # the resolved config, recorded in every checkpoint
    reference: Callable[[str], ImageData]  # split -> real data, for train.eval_every
    cache_dir: Path  # where the evaluation caches its classifier and features
    resume: train_state.Resume | None = None
    resume_command: str = ""  # the command line that continues this run
    loss: Callable = diffusion_loss  # (network, objective, schedule, x0, generator, labels, ...) -> loss; see train.py


@dataclass(eq=False)
class SampleJob:
    world: World
    loaded: LoadedModel
    sampler: Sampler
    classes: list[int] | None  # the classes asked for, in turn (conditional models)
    device: torch.device
    out_dir: Path
    images: StartImages | None = None  # what sampling starts from besides noise (init= or inpaint=)


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
    images: StartImages | None = None  # with ckpt=: what generation starts from besides noise (init=, inpaint=)


def dataset_builder(node: dict, built: dict[str, ImageData] | None = None) -> Callable[[str], ImageData]:
    """split -> the data set `node` describes, on that split (each split built once; `built` seeds that cache)."""
    built = dict(built or {})

    def reference(split: str) -> ImageData:
        if split not in built:
            built[split] = build({**node, "train": split == "train"}, DATASETS, ImageData)
        return built[split]

    return reference


def train_network(config: dict, data: ImageData) -> nn.Module:
    """The network of config["model"]; a conditional one takes its class count from the data set (recorded)."""
    node = dict(config["model"])
    if node.get("conditional"):
        if data.num_classes < 1:
            raise DiffuseError(f"model.conditional=true needs class labels, and data set {data.name} has none "
                               f"(a folder gives labels through class subfolders)")
        node["num_classes"] = data.num_classes
        config["model"] = node
    return check_network(build(node, MODELS, nn.Module), f"model {node['_target_']}")


def build_train(cfg: DictConfig, ctx: Context, opts) -> TrainJob:
    """Objects for `diffuse train`, each checked as it is built, the cheap ones first."""
    config = {**nodes.plain(cfg), "experiment": ctx.experiment}
    world = ctx.world
    if opts.batch_size % world.size:
        raise DiffuseError(f"train.batch_size={opts.batch_size} is the batch of all ranks together and must split "
                           f"evenly over the {world.size} ranks: use a multiple of {world.size}")
    if opts.tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise DiffuseError("train.tensorboard=true needs the tensorboard package: pip install 'diffuse[tensorboard]'")
    resume = train_state.resumed(config, ctx.out_dir, ctx.experiment)
    torch.manual_seed(check_seed(config["seed"]))  # weight init and dropout
    device = distributed.device(world, nodes.device(config["device"]))
    schedule = build(config["schedule"], SCHEDULES, Schedule)
    objective = build(config["objective"], OBJECTIVES, Objective)
    objective.check(schedule)
    sampler = checked_sampler(config["sampler"], schedule, opts.sample_steps)
    optimizer = build(config["optimizer"], OPTIMIZERS)
    try:  # bad optimizer settings fail now, not after the data set and the model are built
        optimizer([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    except Exception as e:
        raise DiffuseError(f"optimizer {config['optimizer']['_target_']}: {type(e).__name__}: {e}") from None
    data = build(config["dataset"], DATASETS, ImageData)
    if opts.eval_every and choose_features("auto", data.shape, data.num_classes) != "classifier":
        raise DiffuseError(f"train.eval_every uses the domain classifier (1-channel labelled data up to 64 px), and "
                           f"data set {data.name} {list(data.shape)} is not such; score checkpoints with diffuse eval")
    config["dataset_shape"] = list(data.shape)
    network = train_network(config, data)
    keep = [o for o in ctx.overrides if o.split("=", 1)[0].lstrip("+~") not in ("resume", "hydra.run.dir")]
    split = "train" if config["dataset"].get("train", True) else "test"
    return TrainJob(world=world, model=DiffusionModel(network, objective, schedule, data.shape), sampler=sampler, data=data,
                    optimizer=optimizer, device=device, out_dir=ctx.out_dir, seed=config["seed"], config=config,
                    reference=dataset_builder(config["dataset"], {split: data}),
                    cache_dir=Path(str(config["cache_dir"])).expanduser(), resume=resume,
                    resume_command=" ".join(["torchrun <the same options> -m diffuse train" if world.active else
                                             "diffuse train", f"resume={ctx.out_dir.resolve()}", *keep]))


def loaded_checkpoint(config: dict, steps: int, overrides: tuple[str, ...]) -> tuple[LoadedModel, Sampler,
                                                                                    list[int] | None]:
    """ckpt=, weights=, sampler (sampler_choice.chosen_node, or a schedule file's), schedule_file= and labels of
    `diffuse sample`, `diffuse eval ckpt=` and `diffuse tune-steps`: the model, checked."""
    loaded = load_model(config["ckpt"], config["weights"])
    node = chosen_node(config["sampler"], loaded.config, overrides)
    walk, tuned = student_walk(loaded, steps, names_sampler(overrides), config.get("schedule_file")), None
    if config.get("schedule_file") is not None:
        tuned = read_walk_file(Path(str(config["schedule_file"])).expanduser(), loaded)
        if names_sampler(overrides):
            raise DiffuseError(f"schedule_file={config['schedule_file']} walks with the sampler it was tuned for "
                               f"({tuned.sampler.get('_target_')}); leave sampler out, or tune a walk for that sampler")
        node, walk = tuned.sampler, tuple(tuned.timesteps)
    sampler = checked_sampler(node, loaded.model.schedule, steps, walk, "tuned" if tuned else "distilled")
    network = loaded.model.network
    classes = resolve_classes(config.get("labels"), config.get("label"), network.conditional, network.num_classes)
    return loaded, sampler, classes


def checkpoint_job(config: dict, ctx: Context, steps: int) -> SampleJob:
    """ckpt= (required), the device and `loaded_checkpoint`, the network moved: `diffuse sample`'s job."""
    if config.get("ckpt") is None:
        raise DiffuseError("ckpt is required: ckpt=PATH to a .safetensors checkpoint or a training run directory")
    device = distributed.device(ctx.world, nodes.device(config["device"]))
    loaded, sampler, classes = loaded_checkpoint(config, steps, ctx.overrides)
    loaded.model.network.to(device)
    return SampleJob(ctx.world, loaded, sampler, classes, device, ctx.out_dir)


def build_sample(cfg: DictConfig, ctx: Context, opts) -> SampleJob:
    config = nodes.plain(cfg)
    job = checkpoint_job(config, ctx, opts.steps)
    job.images = start_images(config, opts, job.loaded.model.shape, job.sampler)
    return job


def build_tune(cfg: DictConfig, ctx: Context, opts) -> SampleJob:
    """`diffuse tune-steps`: the checkpoint and a deterministic sampler that fits nfe= with at least 2 steps."""
    config = nodes.plain(cfg)
    if config.get("ckpt") is not None and config.get("schedule_file") is not None:
        raise DiffuseError("schedule_file= is what tune-steps writes; it starts from the sampler's spacing")
    job = checkpoint_job(config, ctx, opts.steps)
    if not job.sampler.deterministic:
        raise DiffuseError(f"sampler {job.sampler.name} draws fresh noise along its walk; tune-steps needs a "
                           f"deterministic one (its walks from one noise must agree), e.g. ddim, dpmpp_2m, unipc")
    job.sampler.check(job.loaded.model.schedule, opts.steps_for(job.sampler))
    return job


def reference_node(config: dict, loaded: LoadedModel | None, why: str) -> dict:
    """The data set to score against: dataset=NAME, or else the one the checkpoint was trained on (read from this
    machine's data root)."""
    node = config.get("dataset")
    if node is None and loaded is None:
        raise DiffuseError(f"{why}: pass dataset=NAME (e.g. dataset=mnist)")
    if node is None:
        node = dict(loaded.config.get("dataset") or {})
        if not node:
            raise DiffuseError(f"ckpt={config['ckpt']}: its config names no data set; pass dataset=NAME")
        if "root" in node:
            node["root"] = config["data_root"]
    if not isinstance(node, dict) or "_target_" not in node:
        raise DiffuseError(f"dataset {node!r} is not a data set config")
    return node


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
            config.get(k) is not None for k in ("labels", "label", "init", "inpaint", "mask"))):
        raise DiffuseError("labels, guidance, init=, strength, inpaint=, mask= and resample apply to generating "
                           "(ckpt=); samples= scores the images as they are")
    if has_ckpt == has_samples:
        raise DiffuseError("give exactly one of ckpt=PATH (generate from a checkpoint) or samples=PATH (score an "
                           ".npz or a folder of images)")
    job = EvalJob(ctx.world, opts.features, distributed.device(ctx.world, nodes.device(config["device"])), ctx.out_dir,
                  Path(str(config["cache_dir"])).expanduser(), None, None)
    if has_ckpt:
        job.loaded, job.sampler, job.classes = loaded_checkpoint(config, opts.steps, ctx.overrides)
        shape = job.loaded.model.shape
        job.images = start_images(config, opts, shape, job.sampler)
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
        job.reference = dataset_builder(reference_node(config, job.loaded, why))
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
