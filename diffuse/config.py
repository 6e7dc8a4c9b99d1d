"""Config nodes become objects here and nowhere else: `build` (a `_target_` through an allow-list), `sampler`,
`options` (a typed options dataclass) and `device`. Nothing outside this module and run.py reads a DictConfig."""

from __future__ import annotations

import dataclasses
import functools
import importlib
import typing
from typing import Any, Callable

import torch
from omegaconf import DictConfig, OmegaConf

from diffuse import DiffuseError
from diffuse.data import ImageData
from diffuse.samplers import AUTO, Sampler, auto_table
from diffuse.schedule import SPACINGS
from diffuse.validate import typed

ALLOWED_MODULES = ("diffuse.", "torch.optim.")  # where a `_target_` may point: configs come back out of files
# and, narrower, where each kind of node may point
MODELS, SCHEDULES, DATASETS, SAMPLERS, OBJECTIVES, OPTIMIZERS = (
    ("diffuse.models.",), ("diffuse.schedules.",), ("diffuse.datasets.",), ("diffuse.samplers.",),
    ("diffuse.objectives.",), ("torch.optim.",))


def plain(node: dict | DictConfig) -> Any:
    """A config node as plain Python values, interpolations resolved."""
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


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


def _arguments(node: Any) -> tuple[str, dict]:
    node = plain(node)
    if not isinstance(node, dict) or "_target_" not in node:
        raise DiffuseError(f"config node {node!r} has no _target_")
    kwargs = {k: v for k, v in node.items() if k not in ("_target_", "_partial_")}
    if any(isinstance(v, dict) and "_target_" in v for v in kwargs.values()):
        raise DiffuseError(f"nested _target_ nodes are not supported in {node['_target_']}")
    return node["_target_"], {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}


def build(node: dict | DictConfig, under: tuple[str, ...] = ALLOWED_MODULES, kind: type | None = None) -> Any:
    """Instantiate one config node: `_target_` through the allow-list `under`, `_partial_` gives a
    functools.partial; the result must be a `kind` when one is given. Any failure is a DiffuseError."""
    target, kwargs = _arguments(node)
    fn = locate(target, under)
    if plain(node).get("_partial_", False):
        return functools.partial(fn, **kwargs)
    try:
        obj = fn(**kwargs)
    except DiffuseError:
        raise
    except Exception as e:  # bad arguments, e.g. from a config read out of a file: never a traceback
        raise DiffuseError(f"{target}: {type(e).__name__}: {e}") from None
    if kind is not None and not isinstance(obj, kind):
        raise DiffuseError(f"{target} did not build a {kind.__name__}")
    return obj


def dataset(node: dict | DictConfig, train: bool | None = None) -> ImageData:
    """A data set node built, on the split `train` names (None: the node's own). Its `lowres` is a setting of the
    task (super-resolution trains on the images degraded to that side), not an argument of the data set."""
    kwargs = {k: v for k, v in plain(node).items() if k != "lowres"}
    return build(kwargs if train is None else {**kwargs, "train": train}, DATASETS, ImageData)


def sampler(node: dict | DictConfig) -> Sampler:
    """A sampler node: the algorithm (`_target_`), its default `spacing`, and its settings."""
    target, settings = _arguments(node)
    if "spacing" not in settings:
        raise DiffuseError(f"sampler {target} has no spacing; give one of {', '.join(SPACINGS)}")
    spacing = settings.pop("spacing")
    table = settings.pop("auto_spacing", None)
    if spacing not in (*SPACINGS, AUTO):
        raise DiffuseError(f"sampler {target}: unknown timestep spacing {spacing!r}; allowed: {AUTO}, {', '.join(SPACINGS)}")
    auto = {} if table is None else auto_table(table, f"sampler {target}")
    if spacing == AUTO and not auto:
        raise DiffuseError(f"sampler {target}: spacing auto needs an auto_spacing table; give a spacing: "
                           f"{', '.join(SPACINGS)}")
    return Sampler(locate(target, SAMPLERS), settings, spacing, auto)


def options(cls: type, node: dict | DictConfig, prefix: str = "", strict: bool = True) -> Any:
    """Build an options dataclass from the node that holds its fields: each value is type-checked against its
    field; a nested dataclass field reads a nested node. Every default lives in the YAML, so every field must be
    there; `strict`: the node holds nothing else (a top-level node also holds a command's other inputs)."""
    values, hints, out = plain(node), typing.get_type_hints(cls), {}
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(names)) if strict else []
    if unknown:
        raise DiffuseError(f"unknown option {prefix}{unknown[0]}; allowed: {', '.join(names)}")
    for f in dataclasses.fields(cls):
        if f.name not in values:
            raise DiffuseError(f"option {prefix}{f.name} is missing from the config")
        value, kind = values[f.name], hints[f.name]
        if isinstance(kind, type) and dataclasses.is_dataclass(kind):
            if not isinstance(value, dict):
                raise DiffuseError(f"{prefix}{f.name} must be a group of options, got {value!r}")
            out[f.name] = options(kind, value, f"{prefix}{f.name}.")
        else:
            out[f.name] = typed(value, kind, f"{prefix}{f.name}")
    return cls(**out)


def device(name: Any) -> torch.device:
    """`auto` picks CUDA when present, else the CPU; an explicit device that is absent is an error."""
    allowed = "allowed: auto, cpu, cuda, cuda:N"
    if not isinstance(name, str):
        raise DiffuseError(f"device={name!r} is not a device; {allowed}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(name)
    except RuntimeError:
        raise DiffuseError(f"device={name!r} is not a device; {allowed}") from None
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise DiffuseError(f"device={name} was asked for, but CUDA is not available here; use device=auto or device=cpu")
    if chosen.type not in ("cpu", "cuda"):
        raise DiffuseError(f"device={name!r} is not supported; {allowed}")
    return chosen
