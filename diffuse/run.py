"""The one place a Hydra config becomes objects: `build(node)` and `build_train` / `build_sample`."""

from __future__ import annotations

import dataclasses
import functools
import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from diffuse import DiffuseError
from diffuse import train_state
from diffuse.checkpoint import load_checkpoint, load_weights, metadata_config, read_metadata, resolve_checkpoint
from diffuse.data import ImageData
from diffuse.parameterization import check as check_parameterization, check_schedule
from diffuse.schedule import Schedule

ALLOWED_MODULES = ("diffuse.", "torch.optim.")  # where a `_target_` may point: configs come back out of files
# and, narrower, where each kind of node may point
MODELS, SCHEDULES, DATASETS, SAMPLERS, OPTIMIZERS = (("diffuse.models.",), ("diffuse.schedules.",),
                                                      ("diffuse.datasets.",), ("diffuse.samplers.",), ("torch.optim.",))


@dataclass(eq=False)
class Run:
    """A composed experiment as plain objects, plus the resolved config (a plain dict) for records."""

    model: nn.Module
    schedule: Schedule
    parameterization: str
    sampler: Callable  # a sampler with its settings bound (functools.partial)
    shape: tuple[int, int, int]  # (C,H,W) of the images
    device: torch.device
    out_dir: Path
    seed: int
    config: dict
    dataset: ImageData | None = None  # training only
    optimizer: Callable | None = None  # training only: params, lr -> torch.optim.Optimizer
    checkpoint: Path | None = None  # sampling only
    step: int = 0  # the checkpoint's training step
    resume: tuple[dict, dict, str] | None = None  # training only: (tensors, training state, source) to continue from
    resume_command: str = ""  # training only: the command line that continues this run
    reference: Callable[[str], ImageData] | None = None  # training only: split -> real data, for train.eval_every
    cache_dir: Path | None = None  # training only: where evaluation caches its classifier and features
    labels: list[int] | None = None  # sampling a conditional model: the classes asked for, in turn


def locate(target: str, under: tuple[str, ...] = ALLOWED_MODULES) -> Callable:
    """Import `target` ("pkg.module.name") and check it is a public callable defined under `under`."""
    if (not isinstance(target, str) or not target.startswith(under)
            or any(part.startswith("_") or not part.isidentifier() for part in target.split("."))):
        raise DiffuseError(f"_target_ {target!r} is not allowed here: targets must be public names under "
                           f"{', '.join(under)}")
    module_name, _, attr = target.rpartition(".")
    try:
        obj = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError):
        raise DiffuseError(f"_target_ {target!r} does not exist") from None
    # the object itself must be defined there: a name re-exported from elsewhere (an imported `os`) is refused
    module = getattr(obj, "__module__", None) or ""
    if not (callable(obj) and any(module == m.rstrip(".") or module.startswith(m) for m in under)):
        raise DiffuseError(f"_target_ {target!r} is not allowed: it resolves outside {', '.join(under)}")
    return obj


def build(node: dict | DictConfig, under: tuple[str, ...] = ALLOWED_MODULES, kind: type | None = None) -> Any:
    """Instantiate one config node: `_target_` through the allow-list `under`, `_partial_` gives a
    functools.partial; the result must be a `kind` when one is given. Any failure is a DiffuseError."""
    if isinstance(node, DictConfig):
        node = OmegaConf.to_container(node, resolve=True)
    if not isinstance(node, dict) or "_target_" not in node:
        raise DiffuseError(f"config node {node!r} has no _target_")
    kwargs = {k: v for k, v in node.items() if k not in ("_target_", "_partial_")}
    if any(isinstance(v, dict) and "_target_" in v for v in kwargs.values()):
        raise DiffuseError(f"nested _target_ nodes are not supported in {node['_target_']}")
    fn = locate(node["_target_"], under)
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
    if node.get("_partial_", False):
        return functools.partial(fn, **kwargs)
    try:
        obj = fn(**kwargs)
    except DiffuseError:
        raise
    except Exception as e:  # bad arguments, e.g. from a config read out of a file: never a traceback
        raise DiffuseError(f"{node['_target_']}: {type(e).__name__}: {e}") from None
    if kind is not None and not isinstance(obj, kind):
        raise DiffuseError(f"{node['_target_']} did not build a {kind.__name__}")
    return obj


def options(cls: type, node: dict | DictConfig, prefix: str) -> Any:
    """Build an options dataclass from a config node, checking each value's type against its field."""
    values = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key, value in values.items():
        if key not in fields:
            raise DiffuseError(f"unknown option {prefix}{key}; allowed: {', '.join(fields)}")
        kind = {"int": int, "float": float, "bool": bool, "str": str}.get(str(fields[key].type))
        ok = (isinstance(value, kind) and not (kind is int and isinstance(value, bool))) or (
            kind is float and isinstance(value, int) and not isinstance(value, bool))
        if kind is not None and not ok:
            raise DiffuseError(f"{prefix}{key} must be {fields[key].type}, got {value!r}")
        if kind is float:
            values[key] = float(value)
    return cls(**values)


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA when present, else the CPU; an explicit device that is absent is an error."""
    if not isinstance(name, str):
        raise DiffuseError(f"device={name!r} is not a device; allowed: auto, cpu, cuda, cuda:N")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DiffuseError(f"device={name!r} is not a device; allowed: auto, cpu, cuda, cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DiffuseError(f"device={name} was asked for, but CUDA is not available here; use device=auto or device=cpu")
    if device.type not in ("cpu", "cuda"):
        raise DiffuseError(f"device={name!r} is not supported; allowed: auto, cpu, cuda, cuda:N")
    return device


def check_sampler(sampler: Callable, schedule: Schedule, steps: int, shape: tuple[int, int, int]) -> None:
    """Run the sampler once on a constant denoiser so that bad settings fail now, not after training."""
    x = torch.zeros(1, *shape)
    try:
        sampler(lambda x_t, t: (torch.zeros_like(x_t), torch.zeros_like(x_t)), schedule, x, steps=steps,
                generator=torch.Generator().manual_seed(0))
    except (TypeError, ValueError) as e:  # e.g. an unknown or mistyped sampler setting
        name = getattr(getattr(sampler, "func", sampler), "__name__", "sampler")
        raise DiffuseError(f"sampler {name}: bad settings ({e})") from None


def check_seed(seed: Any) -> int:
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**40:
        raise DiffuseError(f"seed must be an integer in 0..2^40, got {seed!r}")
    return seed


def find_latest(runs_root: Path, experiment: str | None) -> Path:
    """The newest training run under `runs_root` (runs and sweeps) of the same experiment, with a last checkpoint."""
    found = [p.parent.parent for p in runs_root.glob("train*/**/checkpoints/last.safetensors")]
    same = []
    for run_dir in found:
        try:
            if metadata_config(read_metadata(run_dir)).get("experiment") == experiment:
                same.append(run_dir)
        except (DiffuseError, KeyError, ValueError):
            continue  # an unreadable run is not a candidate
    if not same:
        raise DiffuseError(f"resume=latest: no training run of experiment {experiment!r} with a checkpoint under "
                           f"{runs_root.resolve()}")
    return max(same, key=lambda d: (d / "checkpoints" / "last.safetensors").stat().st_mtime)


def build_train(cfg: DictConfig, out_dir: str, experiment: str | None = None, overrides: tuple[str, ...] = ()) -> Run:
    """Objects for `diffuse train`; with `resume`, the model, schedule, data set, optimizer and seed come
    from the checkpoint (so that it continues exactly), and the `train.*` options from this command."""
    config = OmegaConf.to_container(cfg, resolve=True)
    config["experiment"] = experiment
    resume = None
    if cfg.get("resume"):
        source = find_latest(Path("outputs"), experiment) if cfg.resume == "latest" else resolve_checkpoint(cfg.resume)
        tensors, metadata = load_checkpoint(source)
        resume = (tensors, train_state.decode(metadata, str(cfg.resume)), str(source))
        trained = metadata_config(metadata)
        for key in ("model", "schedule", "dataset", "optimizer", "parameterization", "seed", "experiment"):
            if key in trained:
                config[key] = trained[key]
        cfg = OmegaConf.create({**OmegaConf.to_container(cfg, resolve=True), **{k: config[k] for k in (
            "model", "schedule", "dataset", "optimizer", "parameterization", "seed")}})
    torch.manual_seed(check_seed(cfg.seed))  # weight init and dropout
    device = resolve_device(cfg.device)
    schedule = build(cfg.schedule, SCHEDULES, Schedule)
    sampler = build(cfg.sampler, SAMPLERS)
    check_schedule(check_parameterization(cfg.parameterization), schedule.terminal_snr)
    optimizer = build(cfg.optimizer, OPTIMIZERS)
    try:  # bad optimizer settings fail now, not after the data set and the model are built
        optimizer([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    except Exception as e:
        raise DiffuseError(f"optimizer {cfg.optimizer._target_}: {type(e).__name__}: {e}") from None
    dataset = build(cfg.dataset, DATASETS, ImageData)
    check_sampler(sampler, schedule, cfg.train.sample_steps, dataset.shape)
    config["dataset_shape"] = list(dataset.shape)
    keep = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in ("resume", "hydra.run.dir")]
    resume_command = " ".join(["diffuse train", f"resume={Path(out_dir).resolve()}", *keep])
    model_node = OmegaConf.to_container(cfg.model, resolve=True)
    if model_node.get("conditional"):
        if dataset.num_classes < 1:
            raise DiffuseError(f"model.conditional=true needs class labels, and data set {dataset.name} has none "
                               f"(a folder gives labels through class subfolders)")
        model_node["num_classes"] = dataset.num_classes  # the class count comes from the data set
        config["model"] = model_node
    return Run(model=build(model_node, MODELS, nn.Module), schedule=schedule,
               parameterization=check_parameterization(cfg.parameterization), sampler=sampler, shape=dataset.shape,
               device=device, out_dir=Path(out_dir), seed=cfg.seed, config=config, dataset=dataset, optimizer=optimizer,
               resume=resume, resume_command=resume_command,
               reference=dataset_builder(OmegaConf.to_container(cfg.dataset, resolve=True),
                                         {"train" if cfg.dataset.get("train", True) else "test": dataset}),
               cache_dir=Path(str(cfg.get("cache_dir") or "~/.cache/diffuse")).expanduser())


def load_model(path: str | Path, weights: str = "ema") -> tuple[nn.Module, Schedule, str, tuple[int, int, int], int, Path]:
    """Everything a checkpoint describes, from the file alone: (model, schedule, parameterization, (C,H,W), step,
    resolved path). Any malformed or hostile file is a DiffuseError; nothing outside the allow-list runs, and
    the network is first built on the meta device so a config that disagrees with the tensors allocates nothing."""
    if weights not in ("ema", "raw"):
        raise DiffuseError(f"weights must be ema or raw, got {weights!r}")
    resolved = resolve_checkpoint(path)
    prefix = "ema." if weights == "ema" else "model."
    tensors, metadata = load_checkpoint(resolved, (prefix,))  # sampling reads one copy of the weights only
    trained = metadata_config(metadata)
    try:
        model_node, schedule_node, shape = trained["model"], trained["schedule"], tuple(trained["dataset_shape"])
    except (KeyError, TypeError):
        raise DiffuseError(f"ckpt={path}: its config lacks model, schedule or dataset_shape") from None
    if not (len(shape) == 3 and all(isinstance(v, int) and not isinstance(v, bool) for v in shape)
            and shape[0] in (1, 3) and all(8 <= v <= 1024 for v in shape[1:])):
        raise DiffuseError(f"ckpt={path}: dataset_shape {list(shape)} is not (C in 1|3, H, W in 8..1024)")
    parameterization = check_parameterization(metadata.get("parameterization"))
    schedule = build(schedule_node, SCHEDULES, Schedule)
    with torch.device("meta"):
        model = build(model_node, MODELS, nn.Module)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = {k[len(prefix):]: tuple(v.shape) for k, v in tensors.items() if k.startswith(prefix)}
    if expected != found:
        bad = sorted(set(expected.items()) ^ set(found.items()))[:2]
        raise DiffuseError(f"ckpt={path}: its '{prefix}*' weights do not fit the model its config describes "
                           f"(first differences: {bad})")
    try:  # the network must take the images the file says it was trained on (meta tensors: no memory)
        with torch.device("meta"), torch.no_grad():
            out = model(torch.zeros(1, *shape), torch.zeros(1))
        if tuple(out.shape) != (1, *shape):
            raise ValueError(f"output shape {tuple(out.shape)}")
    except Exception as e:
        raise DiffuseError(f"ckpt={path}: its model does not map images of shape {list(shape)} to themselves "
                           f"({type(e).__name__}: {str(e)[:200]})") from None
    model = model.to_empty(device="cpu")
    load_weights(model, tensors, prefix, str(path))
    return model.eval(), schedule, parameterization, shape, int(metadata["step"]), resolved


def resolve_labels(labels: Any, label: Any, model: nn.Module, what: str = "ckpt") -> list[int] | None:
    """`labels=[3,7]`, `labels=all` or `label=3` -> the class list; None for an unconditional request. Checked
    against the model: an unconditional model takes no labels, a label must be one of its classes."""
    if labels is not None and label is not None:
        raise DiffuseError("give labels=[...] or label=K, not both")
    if label is not None:
        labels = [label]
    conditional = bool(getattr(model, "conditional", False))
    if labels is None:
        return list(range(model.num_classes)) if conditional else None
    if not conditional:
        raise DiffuseError(f"labels/label need a conditional model, and the {what} is unconditional (train one with "
                           f"model.conditional=true)")
    k = model.num_classes
    if labels == "all":
        return list(range(k))
    if isinstance(labels, int) and not isinstance(labels, bool):
        labels = [labels]
    if not (isinstance(labels, (list, tuple)) and labels
            and all(isinstance(v, int) and not isinstance(v, bool) for v in labels)):
        raise DiffuseError(f"labels must be a list of class indices, `all`, or one index; got {labels!r}")
    bad = [v for v in labels if not 0 <= v < k]
    if bad:
        raise DiffuseError(f"label {bad[0]} is out of range: the model knows classes 0..{k - 1}")
    return list(labels)


def build_sample(cfg: DictConfig, out_dir: str) -> Run:
    if OmegaConf.is_missing(cfg, "ckpt") or cfg.ckpt is None:
        raise DiffuseError("ckpt is required: ckpt=PATH to a .safetensors checkpoint or a training run directory")
    model, schedule, parameterization, shape, step, path = load_model(cfg.ckpt, cfg.weights)
    check_schedule(parameterization, schedule.terminal_snr)
    sampler = build(cfg.sampler, SAMPLERS)
    check_sampler(sampler, schedule, cfg.steps, shape)
    device = resolve_device(cfg.device)
    check_seed(cfg.seed)
    config = OmegaConf.to_container(cfg, resolve=True)
    labels = resolve_labels(config.get("labels"), config.get("label"), model)
    return Run(model=model.to(device), schedule=schedule, parameterization=parameterization, sampler=sampler,
               shape=shape, device=device, out_dir=Path(out_dir), seed=cfg.seed, config=config,
               checkpoint=path, step=step, labels=labels)


@dataclass(eq=False)
class EvalJob:
    """What `diffuse eval` scores (a checkpoint's samples, or image files) and against which real data."""

    reference: Callable[[str], ImageData]  # split ("train" | "test") -> the real data set
    dataset_name: str
    shape: tuple[int, int, int]  # (C,H,W) of the reference images
    num_classes: int
    device: torch.device
    out_dir: Path
    config: dict
    cache_dir: Path
    generator: Run | None = None  # with ckpt=: the model that draws the images
    samples: Path | None = None  # with samples=: the images to score


def dataset_builder(node: dict, built: dict[str, ImageData] | None = None) -> Callable[[str], ImageData]:
    """split -> the data set `node` describes, on that split (each split built once; `built` seeds that cache)."""
    built = dict(built or {})

    def reference(split: str) -> ImageData:
        if split not in built:
            built[split] = build({**node, "train": split == "train"}, DATASETS, ImageData)
        return built[split]

    return reference


def build_eval(cfg: DictConfig, out_dir: str) -> EvalJob:
    has_ckpt, has_samples = cfg.get("ckpt") is not None, cfg.get("samples") is not None
    if has_samples and (cfg.get("labels") is not None or cfg.get("guidance", 1.0) != 1.0):
        raise DiffuseError("labels and guidance apply to generating (ckpt=); samples= scores the images as they are")
    if has_ckpt == has_samples:
        raise DiffuseError("give exactly one of ckpt=PATH (generate from a checkpoint) or samples=PATH (score an "
                           ".npz or a folder of images)")
    device = resolve_device(cfg.device)
    check_seed(cfg.seed)
    config = OmegaConf.to_container(cfg, resolve=True)
    generator = None
    node = config.get("dataset")
    if has_ckpt:
        model, schedule, parameterization, shape, step, path = load_model(cfg.ckpt, cfg.weights)
        check_schedule(parameterization, schedule.terminal_snr)
        sampler = build(cfg.sampler, SAMPLERS)
        check_sampler(sampler, schedule, cfg.steps, shape)
        trained = metadata_config(read_metadata(path))
        generator = Run(model=model.to(device), schedule=schedule, parameterization=parameterization,
                        sampler=sampler, shape=shape, device=device, out_dir=Path(out_dir), seed=cfg.seed,
                        config=trained, checkpoint=path, step=step,
                        labels=resolve_labels(config.get("labels"), None, model))
        if node is None:  # the data set the checkpoint was trained on, read from this machine's data root
            node = dict(trained.get("dataset") or {})
            if not node:
                raise DiffuseError(f"ckpt={cfg.ckpt}: its config names no data set; pass dataset=NAME")
            if "root" in node:
                node["root"] = cfg.data_root
    elif node is None:
        raise DiffuseError("samples= needs the data set to score against: pass dataset=NAME (e.g. dataset=mnist)")
    if not isinstance(node, dict) or "_target_" not in node:
        raise DiffuseError(f"dataset {node!r} is not a data set config")
    reference = dataset_builder(node)
    data = reference(cfg.reference_split)
    if generator is not None and data.shape != generator.shape:
        raise DiffuseError(f"the data set {data.name} has images {list(data.shape)} (C,H,W), but ckpt={cfg.ckpt} "
                           f"generates {list(generator.shape)}: evaluate against the data set it was trained on")
    return EvalJob(reference=reference, dataset_name=data.name, shape=data.shape, num_classes=data.num_classes,
                   device=device, out_dir=Path(out_dir), config=config,
                   cache_dir=Path(str(cfg.cache_dir)).expanduser(), generator=generator,
                   samples=Path(str(cfg.samples)).expanduser() if has_samples else None)
