"""Training state for exact resume, as safetensors tensors plus JSON: optimizer, RNG states (every rank's),
data order, and the world size that wrote it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from diffuse import DiffuseError
from diffuse.checkpoint import LAST, find_latest, load_checkpoint, metadata_config, objective_node, resolve_checkpoint
from diffuse.distributed import World

STATE_KEY = "train_state"  # the metadata entry that holds the JSON part


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, Tensor], list[dict]]:
    """Flatten optimizer.state_dict(): tensors as `optim.<param>.<name>`, param_groups (and scalars) as JSON."""
    state = optimizer.state_dict()
    tensors, groups = {}, []
    for index, values in state["state"].items():
        for name, value in values.items():
            if not torch.is_tensor(value):
                raise DiffuseError(f"optimizer state {name!r} is not a tensor; cannot save it without pickle")
            tensors[f"optim.{index}.{name}"] = value.detach().cpu().contiguous()
    for group in state["param_groups"]:
        groups.append({k: list(v) if isinstance(v, tuple) else v for k, v in group.items()})
    return tensors, groups


def restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, Tensor], groups: list[dict]) -> None:
    try:
        state: dict[int, dict[str, Tensor]] = {}
        for key, value in tensors.items():
            if key.startswith("optim."):
                _, index, name = key.split(".", 2)
                state.setdefault(int(index), {})[name] = value
        groups = [{k: tuple(v) if k == "betas" else v for k, v in g.items()} for g in groups]
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    except (ValueError, KeyError, RuntimeError, TypeError, AttributeError, IndexError) as e:
        raise DiffuseError(f"the checkpoint's optimizer state does not fit this optimizer ({e})") from None


def rank_key(name: str, rank: int) -> str:
    """Where rank r's own RNG state lives in a checkpoint: rank 0's where a single process keeps it."""
    return f"rng.{name}" if rank == 0 else f"rng.{name}.rank{rank}"


def own_rng_states() -> dict[str, Tensor]:
    """This process's global RNG (dropout) and, when in use, its CUDA generator, as uint8 tensors."""
    states = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state()
    return states


def rng_tensors(generator: torch.Generator, world: World = World()) -> dict[str, Tensor]:
    """The training generator (timesteps, noise; the same on every rank) and every rank's own RNG states (rank 0
    collects them; the other ranks get an empty dict)."""
    tensors = {"rng.train": generator.get_state()}
    for name, state in own_rng_states().items():
        gathered = world.gather(state.unsqueeze(0), world.size)  # (world size, L) on rank 0
        if world.main:
            tensors.update({rank_key(name, r): gathered[r] for r in range(world.size)})
    return tensors if world.main else {}


def restore_rng(generator: torch.Generator, tensors: dict[str, Tensor], world: World = World()) -> bool:
    """Restore the training generator and this rank's own RNG states; False when the checkpoint holds none for
    this rank (it was written by fewer ranks): then they keep their fresh seeds."""
    try:
        generator.set_state(tensors["rng.train"])
        own = rank_key("torch", world.rank)
        if own not in tensors:
            return False
        torch.set_rng_state(tensors[own])
        cuda = rank_key("cuda", world.rank)
        if cuda in tensors and torch.cuda.is_available():
            torch.cuda.set_rng_state(tensors[cuda])
    except (KeyError, RuntimeError, TypeError, ValueError) as e:
        raise DiffuseError(f"the checkpoint's RNG state is missing, damaged, or from a run on another kind of device "
                           f"than {generator.device} ({e})") from None
    return True


def encode(step: int, epoch: int, position: int, groups: list[dict], skipped: int, world_size: int = 1,
           end: int | None = None) -> str:
    """`end`: the run's last step as planned (train.steps, or fewer under a time budget)."""
    return json.dumps({"step": step, "epoch": epoch, "position": position, "param_groups": groups,
                       "nonfinite_skipped": skipped, "world_size": world_size, "end": end})


def decode(metadata: dict[str, str], source: str) -> dict:
    if STATE_KEY not in metadata:
        raise DiffuseError(f"resume={source}: the checkpoint holds no training state (it was written for sampling only)")
    try:
        state = json.loads(metadata[STATE_KEY])
        for key, kind in (("step", int), ("epoch", int), ("position", int), ("param_groups", list)):
            if not isinstance(state[key], kind):
                raise TypeError(f"{key} is not {kind.__name__}")
        if state.get("end") is not None and not (isinstance(state["end"], int) and state["end"] >= state["step"]):
            raise TypeError("end is not an int >= step")
    except (ValueError, KeyError, TypeError, RecursionError) as e:
        raise DiffuseError(f"resume={source}: damaged training state ({e})") from None
    return state


@dataclass(eq=False)
class Resume:
    tensors: dict  # the checkpoint's tensors: weights, EMA, optimizer moments, RNG states
    state: dict  # its training state: step, data position, optimizer groups
    source: str  # the checkpoint file


def read_resume(source: Path, given: str) -> tuple[Resume, dict[str, str]]:
    """A checkpoint's training state, to continue from (`given`: how resume= named it), and its metadata."""
    tensors, metadata = load_checkpoint(source)
    return Resume(tensors, decode(metadata, given), str(source)), metadata


def resumed(config: dict, out_dir: Path, experiment: str | None) -> Resume | None:
    """With `resume=`, the checkpoint's training state; its model, schedule, objective, data set, optimizer and
    seed replace this command's (so that it continues exactly), while the `train.*` options stay this command's.
    `resume=auto` continues this run's own folder when it holds a checkpoint (a rerun of the same command, a
    requeued cluster job) and starts afresh when it does not."""
    given = config.get("resume")
    own = out_dir / "checkpoints" / LAST
    if not given or (given == "auto" and not own.is_file()):
        return None
    source = (own if given == "auto" else find_latest(Path("outputs"), experiment) if given == "latest"
              else resolve_checkpoint(given))
    state, metadata = read_resume(source, str(given))
    trained = metadata_config(metadata)
    trained["objective"] = objective_node(trained, metadata)
    config.pop("parameterization", None)
    for key in ("model", "schedule", "dataset", "optimizer", "objective", "seed", "experiment"):
        if key in trained:
            config[key] = trained[key]
    return state
