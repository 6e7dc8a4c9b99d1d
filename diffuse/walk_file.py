"""Walks read from files: the file `diffuse tune-steps` writes and `schedule_file=` reads (the timesteps of a walk
tuned for one checkpoint file, its SHA-256, its weights, one sampler node and one step count; read back with every
field checked), and the walk a student from `diffuse distill` records in its checkpoint."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from diffuse import DiffuseError
from diffuse.features.cache import sha256
from diffuse.validate import is_int

if TYPE_CHECKING:
    from diffuse.checkpoint import LoadedModel

FORMAT = "diffuse-walk/1"


@dataclass(frozen=True)
class WalkFile:
    checkpoint: str  # the checkpoint file it was tuned on
    checkpoint_sha256: str
    weights: str  # ema | raw
    sampler: dict  # the sampler node it walks with
    steps: int
    nfe: int  # network evaluations per image of the walk
    timesteps: list[float]  # steps strictly decreasing timesteps, then -1
    record: dict  # how it was found (start spacing, losses, reference steps, images), for people


def write_walk_file(walk: WalkFile, path: Path) -> None:
    path.write_text(json.dumps({"format": FORMAT, **asdict(walk)}, indent=2) + "\n")


def read_walk_file(path: Path, loaded: LoadedModel) -> WalkFile:
    """A walk file, checked: its format, fields and types, timesteps that the model's schedule can walk, and held
    to the checkpoint file (SHA-256) and weights it was tuned for."""
    T = loaded.model.schedule.T
    where = f"schedule_file={path}"
    try:
        raw = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise DiffuseError(f"{where}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DiffuseError(f"{where}: not a walk file from diffuse tune-steps ({type(e).__name__}: {e})") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise DiffuseError(f"{where}: not a walk file from diffuse tune-steps (format {FORMAT} expected)")
    fields = {k: raw.get(k) for k in WalkFile.__dataclass_fields__}
    kinds = {"checkpoint": str, "checkpoint_sha256": str, "weights": str, "sampler": dict, "steps": int, "nfe": int,
             "timesteps": list, "record": dict}
    for key, kind in kinds.items():
        value = fields[key]
        if not (is_int(value) if kind is int else isinstance(value, kind)):
            raise DiffuseError(f"{where}: field {key!r} must be a {kind.__name__}, got {value!r}")
    ts = checked_timesteps(fields["timesteps"], fields["steps"], T, where)
    if fields["checkpoint_sha256"] != sha256(loaded.path) or fields["weights"] != loaded.weights:
        raise DiffuseError(f"{where} was tuned for {fields['checkpoint']} ({fields['weights']} weights), not for "
                           f"{loaded.path} ({loaded.weights} weights): tune one with diffuse tune-steps "
                           f"ckpt={loaded.path}")
    return WalkFile(**{**fields, "timesteps": ts})


def checked_timesteps(ts: list, steps: int, T: int, where: str) -> list[float]:
    """A walk read from a file: `steps` strictly decreasing timesteps in 0..T-1, then -1."""
    numbers = all(isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t) for t in ts)
    if (not numbers or len(ts) != steps + 1 or len(ts) < 2 or ts[-1] != -1 or not 0 <= ts[-2] <= ts[0] <= T - 1
            or any(a <= b for a, b in zip(ts, ts[1:]))):
        raise DiffuseError(f"{where}: its timesteps must be {steps} strictly decreasing values in 0..{T - 1} "
                           f"followed by -1, got {ts}")
    return [float(t) for t in ts]


def every(ts: list[float], k: int) -> list[float]:
    """The k-step walk inside an N-step walk ts (N+1 timesteps, ending at -1): every (N/k)-th timestep."""
    return ts[::(len(ts) - 1) // k]


def student_walk(loaded: LoadedModel, steps: int, sampler_named: bool, schedule_file) -> tuple[float, ...] | None:
    """The walk of a student from `diffuse distill` (its checkpoint's `distill` record): DDIM at every (N/k)-th of
    the N timesteps it was distilled on, or through those its record chose for k (`walk_at`, by FID: distill's
    search_walks), for k = steps=, one of the step counts it records (`walks`; a progressive student: N alone);
    None for any other checkpoint."""
    record = loaded.config.get("distill")
    if record is None:
        return None
    where = f"ckpt={loaded.path}"
    if not isinstance(record, dict) or not is_int(record.get("steps")) or not isinstance(record.get("timesteps"), list):
        raise DiffuseError(f"{where}: damaged distill record in its metadata (steps and timesteps expected)")
    ts, n = checked_timesteps(record["timesteps"], record["steps"], loaded.model.schedule.T, where), record["steps"]
    walks = record.get("walks", [n])
    if not isinstance(walks, list) or not walks or not all(is_int(k) and 0 < k <= n and n % k == 0 for k in walks):
        raise DiffuseError(f"{where}: damaged distill record in its metadata (walks must divide its {n} steps)")
    if steps not in walks:
        counts = ", ".join(map(str, walks))
        raise DiffuseError(f"{where} is a student distilled for {counts} step{'s' * (walks != [1])} "
                           f"({record.get('method')} distillation), trained for those timesteps only: pass "
                           f"steps={' or steps='.join(map(str, walks))}")
    if sampler_named or schedule_file is not None:
        raise DiffuseError(f"{where} is a distilled student: it walks DDIM at the timesteps it was distilled for; "
                           f"leave out {'sampler' if sampler_named else 'schedule_file'}")
    chosen = record.get("walk_at", {})
    if not isinstance(chosen, dict):
        raise DiffuseError(f"{where}: damaged distill record in its metadata (walk_at must map step counts to walks, "
                           f"got {chosen!r})")
    if str(steps) not in chosen:
        return tuple(every(list(ts), steps))
    walk = chosen[str(steps)]
    key = f"{where}: damaged distill record in its metadata (walk_at[{steps}]"
    walk = checked_timesteps(walk if isinstance(walk, list) else [walk], steps, loaded.model.schedule.T, key + ")")
    if walk[0] != ts[0] or not set(walk) <= set(ts):
        raise DiffuseError(f"{key} must be {steps} of its distilled timesteps from the first, {ts[0]}, then -1; "
                           f"got {walk})")
    return tuple(walk)
