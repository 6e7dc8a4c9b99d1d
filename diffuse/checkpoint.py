"""Checkpoints as safetensors (no pickle): weights plus str -> str metadata, written atomically."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_bytes
from torch import Tensor, nn

from diffuse import DiffuseError, __version__

FORMAT = "diffuse.checkpoint/1"
LAST = "last.safetensors"


def state_tensors(module: nn.Module, prefix: str) -> dict[str, Tensor]:
    """A module's state as contiguous CPU tensors under `prefix` (unwrapping torch.compile's wrapper)."""
    module = getattr(module, "_orig_mod", module)
    return {f"{prefix}{k}": v.detach().cpu().contiguous() for k, v in module.state_dict().items()}


def checkpoint_metadata(step: int, parameterization: str, config: dict) -> dict[str, str]:
    return {"format": FORMAT, "step": str(step), "parameterization": parameterization,
            "config": json.dumps(config, sort_keys=True), "diffuse_version": __version__}


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

