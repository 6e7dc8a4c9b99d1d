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
    return Run(model=build(cfg.model, MODELS, nn.Module), schedule=schedule,
               parameterization=check_parameterization(cfg.parameterization), sampler=sampler, shape=dataset.shape,
               device=device, out_dir=Path(out_dir), seed=cfg.seed, config=config, dataset=dataset, optimizer=optimizer, resume=resume,
               resume_command=resume_command)


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
    return Run(model=model.to(device), schedule=schedule, parameterization=parameterization, sampler=sampler,
               shape=shape, device=device, out_dir=Path(out_dir), seed=cfg.seed, config=config,
               checkpoint=path, step=step)
