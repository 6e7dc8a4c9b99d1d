"""Checkpoints as safetensors (no pickle): weights plus str -> str metadata, written atomically; and the one
way back from a checkpoint file to a model (`load_model`)."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_bytes
from torch import Tensor, nn

from diffuse import DiffuseError, __version__
from diffuse.config import MODELS, OBJECTIVES, SCHEDULES, build
from diffuse.denoiser import DiffusionModel
from diffuse.models import check_network
from diffuse.objectives import Objective, from_parameterization
from diffuse.schedule import Schedule
from diffuse.superres import check_lowres
from diffuse.validate import is_int

FORMAT = "diffuse.checkpoint/1"
LAST = "last.safetensors"


def state_tensors(module: nn.Module, prefix: str) -> dict[str, Tensor]:
    """A module's state as contiguous CPU tensors under `prefix` (unwrapping torch.compile's wrapper)."""
    module = getattr(module, "_orig_mod", module)
    return {f"{prefix}{k}": v.detach().cpu().contiguous() for k, v in module.state_dict().items()}


def checkpoint_metadata(step: int, config: dict) -> dict[str, str]:
    """The metadata of a checkpoint: its format, step, the run's resolved config (model, schedule, objective,
    data set and its image shape: enough to sample with nothing else) and the diffuse version."""
    return {"format": FORMAT, "step": str(step), "config": json.dumps(config, sort_keys=True),
            "diffuse_version": __version__}


def write_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary file beside `path`, fsync, then rename: a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def save_checkpoint(paths: list[Path], tensors: dict[str, Tensor], metadata: dict[str, str]) -> None:
    """Serialize once, write atomically to every path (e.g. step_0001000 and last)."""
    data = safetensors_bytes(tensors, metadata=metadata)
    for path in paths:
        try:
            write_atomic(path, data)
        except OSError as e:
            before = "the previous one there is intact" if path.exists() else "there was no previous one"
            raise DiffuseError(f"could not write checkpoint {path} ({e.strerror or e}); {before}") from None


def prune_checkpoints(folder: Path, keep_last: int, milestone_every: int) -> list[Path]:
    """Delete all but the newest `keep_last` step_N checkpoints, keeping milestones (N % milestone_every == 0)."""
    if keep_last <= 0:
        return []
    numbered = [(int(p.stem[5:]), p) for p in folder.glob("step_*.safetensors") if p.stem[5:].isdigit()]
    numbered.sort()  # by step number: names sort wrongly past 9,999,999
    doomed = [p for step, p in numbered[:-keep_last] if not (milestone_every and step % milestone_every == 0)]
    for p in doomed:
        p.unlink(missing_ok=True)
    return doomed


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint file, or a training run directory (its checkpoints/last.safetensors)."""
    if not isinstance(path, (str, os.PathLike)):
        raise DiffuseError(f"ckpt={path!r}: expected a path to a .safetensors file or a training run directory")
    p = Path(path).expanduser().resolve()
    if p.is_dir():
        for candidate in (p / "checkpoints" / LAST, p / LAST):
            if candidate.is_file():
                return candidate
        raise DiffuseError(f"ckpt={path}: a directory without checkpoints/{LAST}; pass a .safetensors file or a training run directory")
    if not p.exists():
        raise DiffuseError(f"ckpt={path}: no such file or directory")
    return p


def load_checkpoint(path: str | os.PathLike, prefixes: tuple[str, ...] = ("",)) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Read (tensors whose names start with one of `prefixes`, metadata) from a diffuse checkpoint; any
    malformed file is a DiffuseError."""
    p = resolve_checkpoint(path)
    try:
        with safe_open(os.fspath(p), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            if metadata.get("format") != FORMAT:
                raise DiffuseError(f"ckpt={path}: not a diffuse checkpoint (metadata format is "
                                   f"{metadata.get('format')!r}, expected {FORMAT!r})")
            tensors = {k: f.get_tensor(k) for k in f.keys() if k.startswith(prefixes)}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        if isinstance(e, DiffuseError):
            raise
        raise DiffuseError(f"ckpt={path}: not a readable safetensors file ({e})") from None
    try:
        metadata_config(metadata)
        int(metadata["step"])
    except (KeyError, ValueError, RecursionError) as e:
        raise DiffuseError(f"ckpt={path}: damaged metadata ({e})") from None
    return tensors, metadata


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """A checkpoint's metadata alone (the tensors are not read)."""
    p = resolve_checkpoint(path)
    try:
        with safe_open(os.fspath(p), framework="pt", device="cpu") as f:
            return f.metadata() or {}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise DiffuseError(f"ckpt={path}: not a readable safetensors file ({e})") from None


def metadata_config(metadata: dict[str, str]) -> dict:
    try:
        config = json.loads(metadata["config"])
    except RecursionError:
        raise ValueError("config JSON nests too deeply") from None
    if not isinstance(config, dict):
        raise ValueError("config is not a JSON object")
    return config


def load_weights(module: nn.Module, tensors: dict[str, Tensor], prefix: str, source: str) -> None:
    """Load the `prefix`ed tensors into `module`, strictly: a missing, extra or misshapen tensor is an error."""
    state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    if not state:
        raise DiffuseError(f"ckpt={source}: holds no '{prefix}*' weights")
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        raise DiffuseError(f"ckpt={source}: weights do not fit the model its config describes ({' '.join(first[:2])[:300]})") from None


def objective_node(config: dict, metadata: dict[str, str]) -> dict:
    """The objective a checkpoint was trained with: its config's `objective` node, or, for a checkpoint written
    before objectives existed, the DDPM objective with the prediction its `parameterization` names."""
    node = config.get("objective")
    if node is None:
        node = from_parameterization(metadata.get("parameterization", config.get("parameterization")))
    return node


@dataclass(eq=False)
class LoadedModel:
    """A model rebuilt from a checkpoint file, and where it came from."""

    model: DiffusionModel
    step: int  # the training step it was saved at
    path: Path  # the resolved checkpoint file
    config: dict  # the resolved config it was trained with
    weights: str = "ema"  # which of its weights: ema | raw


def load_model(path: str | os.PathLike, weights: str = "ema") -> LoadedModel:
    """Everything a checkpoint describes, from the file alone. Any malformed or hostile file is a DiffuseError;
    nothing outside the allow-list runs, and the network is first built on the meta device so a config that
    disagrees with the tensors allocates nothing."""
    if weights not in ("ema", "raw"):
        raise DiffuseError(f"weights must be ema or raw, got {weights!r}")
    resolved = resolve_checkpoint(path)
    prefix = "ema." if weights == "ema" else "model."
    tensors, metadata = load_checkpoint(resolved, (prefix,))  # sampling reads one copy of the weights only
    config = metadata_config(metadata)
    try:
        model_node, schedule_node, shape = config["model"], config["schedule"], tuple(config["dataset_shape"])
    except (KeyError, TypeError):
        raise DiffuseError(f"ckpt={path}: its config lacks model, schedule or dataset_shape") from None
    if not (len(shape) == 3 and all(is_int(v) for v in shape) and shape[0] in (1, 3)
            and all(8 <= v <= 1024 for v in shape[1:])):
        raise DiffuseError(f"ckpt={path}: dataset_shape {list(shape)} is not (C in 1|3, H, W in 8..1024)")
    objective = build(objective_node(config, metadata), OBJECTIVES, Objective)
    schedule = build(schedule_node, SCHEDULES, Schedule)
    objective.check(schedule)
    with torch.device("meta"):
        network = check_network(build(model_node, MODELS, nn.Module), f"ckpt={path}: its model")
    expected = {k: tuple(v.shape) for k, v in network.state_dict().items()}
    found = {k[len(prefix):]: tuple(v.shape) for k, v in tensors.items() if k.startswith(prefix)}
    if expected != found:
        bad = sorted(set(expected.items()) ^ set(found.items()))[:2]
        raise DiffuseError(f"ckpt={path}: its '{prefix}*' weights do not fit the model its config describes "
                           f"(first differences: {bad})")
    lowres = check_lowres((config.get("dataset") or {}).get("lowres"), shape, f"ckpt={path}: its dataset.lowres")
    if lowres and getattr(network, "cond_channels", 0) != shape[0]:
        raise DiffuseError(f"ckpt={path}: a super-resolution model (dataset.lowres={lowres}) whose network does not "
                           f"take a {shape[0]}-channel image condition")
    try:  # the network must take the images the file says it was trained on (meta tensors: no memory)
        with torch.device("meta"), torch.no_grad():
            extra = {"cond": torch.zeros(1, *shape)} if lowres else {}
            out = network(torch.zeros(1, *shape), torch.zeros(1), **extra)
        if tuple(out.shape) != (1, *shape):
            raise ValueError(f"output shape {tuple(out.shape)}")
    except Exception as e:
        raise DiffuseError(f"ckpt={path}: its model does not map images of shape {list(shape)} to themselves "
                           f"({type(e).__name__}: {str(e)[:200]})") from None
    network = network.to_empty(device="cpu")
    load_weights(network, tensors, prefix, str(path))
    return LoadedModel(DiffusionModel(network.eval(), objective, schedule, shape, lowres), int(metadata["step"]), resolved,
                       config, weights)


def find_latest(runs_root: Path, experiment: str | None) -> Path:
    """The newest training run under `runs_root` (runs and sweeps) of the same experiment, with a last checkpoint."""
    same = []
    for run_dir in (p.parent.parent for p in runs_root.glob("train*/**/checkpoints/last.safetensors")):
        try:
            if metadata_config(read_metadata(run_dir)).get("experiment") == experiment:
                same.append(run_dir)
        except (DiffuseError, KeyError, ValueError):
            continue  # an unreadable run is not a candidate
    if not same:
        raise DiffuseError(f"resume=latest: no training run of experiment {experiment!r} with a checkpoint under "
                           f"{runs_root.resolve()}")
    return max(same, key=lambda d: (d / "checkpoints" / LAST).stat().st_mtime)
