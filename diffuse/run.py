"""Config -> objects for each command: `build_train`, `build_sample` and `build_eval` turn the composed config (and
the command's options, already checked) into a small job, checking every input before any long work starts."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

import torch
from omegaconf import DictConfig
from torch import nn

from diffuse import DiffuseError, config as nodes, distributed, train_state
from diffuse.checkpoint import LoadedModel, load_model
from diffuse.config import MODELS, OBJECTIVES, OPTIMIZERS, SCHEDULES, build
from diffuse.data import ImageData
from diffuse.distributed import World
from diffuse.denoiser import DiffusionModel
from diffuse.features.extractors import choose_features
from diffuse.generate import resolve_classes
from diffuse.loss import diffusion_loss
from diffuse.models import check_network
from diffuse.objectives import Objective
from diffuse.sampler_choice import checked_sampler, chosen_node, names_sampler
from diffuse.samplers import Sampler
from diffuse.schedule import Schedule
from diffuse.start_images import StartImages, start_images
from diffuse.superres import check_lowres, degrade
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
    loss: Callable = diffusion_loss  # (network, objective, schedule, x0, generator, labels, ...) -> loss, or an object
    # whose at(step, end) gives the step's such loss (consistency.Curriculum); see train.py
    grid_images: StartImages | None = None  # a super-resolution model's grids: the low-res images they upsample


@dataclass(eq=False)
class SampleJob:
    world: World
    loaded: LoadedModel
    sampler: Sampler
    classes: list[int] | None  # the classes asked for, in turn (conditional models)
    device: torch.device
    out_dir: Path
    images: StartImages | None = None  # what sampling starts from besides noise (init=, inpaint=, lowres=)


def dataset_builder(node: dict, built: dict[str, ImageData] | None = None) -> Callable[[str], ImageData]:
    """split -> the data set `node` describes, on that split (each split built once; `built` seeds that cache)."""
    built = dict(built or {})

    def reference(split: str) -> ImageData:
        if split not in built:
            built[split] = nodes.dataset(node, split == "train")
        return built[split]

    return reference


def train_network(config: dict, data: ImageData) -> nn.Module:
    """The network of config["model"]; a conditional one takes its class count from the data set (recorded)."""
    node = dict(config["model"])
    lowres = check_lowres(config["dataset"].get("lowres"), data.shape)
    if node.get("cond_channels") and not lowres:
        raise DiffuseError(f"model.cond_channels={node['cond_channels']} is set from dataset.lowres (super-resolution); "
                           f"set dataset.lowres=K instead")
    if lowres:
        node["cond_channels"] = data.shape[0]
        config["model"] = node
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
    data = nodes.dataset(config["dataset"])
    lowres = check_lowres(config["dataset"].get("lowres"), data.shape)
    if opts.eval_every and lowres:
        raise DiffuseError("train.eval_every scores images drawn from noise; score a super-resolution model "
                           "(dataset.lowres) with diffuse eval ckpt=RUN (PSNR, SSIM and FID against the test split)")
    if opts.eval_every and choose_features("auto", data.shape, data.num_classes) != "classifier":
        raise DiffuseError(f"train.eval_every uses the domain classifier (1-channel labelled data up to 64 px), and "
                           f"data set {data.name} {list(data.shape)} is not such; score checkpoints with diffuse eval")
    config["dataset_shape"] = list(data.shape)
    network = train_network(config, data)
    keep = [o for o in ctx.overrides if o.split("=", 1)[0].lstrip("+~") not in ("resume", "hydra.run.dir")]
    split = "train" if config["dataset"].get("train", True) else "test"
    grid_lowres = None if not lowres else StartImages(  # the grids upsample the first training images
        degrade(data.images[:opts.sample_n].float() / 127.5 - 1, lowres), "training images", superres=True)
    return TrainJob(world=world, model=DiffusionModel(network, objective, schedule, data.shape, lowres),
                    sampler=sampler, data=data, grid_images=grid_lowres,
                    loss=partial(diffusion_loss, lowres=lowres) if lowres else diffusion_loss,
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


def checkpoint_job(config: dict, ctx: Context, steps: int, upsamples: bool = False) -> SampleJob:
    """ckpt= (required), the device and `loaded_checkpoint`, the network moved: `diffuse sample`'s job (the one
    command besides eval that `upsamples` with a super-resolution checkpoint)."""
    if config.get("ckpt") is None:
        raise DiffuseError("ckpt is required: ckpt=PATH to a .safetensors checkpoint or a training run directory")
    device = distributed.device(ctx.world, nodes.device(config["device"]))
    loaded, sampler, classes = loaded_checkpoint(config, steps, ctx.overrides)
    if loaded.model.lowres and not upsamples:
        raise DiffuseError(f"ckpt={config['ckpt']} is a super-resolution model (dataset.lowres={loaded.model.lowres}): "
                           f"diffuse sample and diffuse eval upsample low-res images with it; this command draws from noise")
    loaded.model.network.to(device)
    return SampleJob(ctx.world, loaded, sampler, classes, device, ctx.out_dir)


def build_sample(cfg: DictConfig, ctx: Context, opts) -> SampleJob:
    config = nodes.plain(cfg)
    job = checkpoint_job(config, ctx, opts.steps, upsamples=True)
    job.images = start_images(config, opts, job.loaded.model.shape, job.sampler, job.loaded.model.lowres,
                              lambda: checkpoint_test_split(config, job.loaded))
    return job


def checkpoint_test_split(config: dict, loaded: LoadedModel) -> ImageData:
    """The test split of the checkpoint's data set (a super-resolution model's default inputs)."""
    return dataset_builder(reference_node(config, loaded, "the low-res inputs"))("test")


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
