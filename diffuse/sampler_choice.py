"""Which sampler a command walks with: the node it names or the checkpoint records, built and checked against the
schedule before any work; a refusal at zero terminal SNR names the samplers that can walk it."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from omegaconf import OmegaConf

from diffuse import DiffuseError, conf, config as nodes
from diffuse.samplers import InfiniteStart, Sampler
from diffuse.schedule import Schedule


def chosen_node(command_node: dict, checkpoint_config: dict, overrides: tuple[str, ...]) -> dict:
    """The command's sampler node when it names one (sampler=NAME or sampler.KEY=VALUE), else the one the
    checkpoint's run drew its grids with (a checkpoint that records none: the command's default)."""
    recorded = checkpoint_config.get("sampler")
    return recorded if not names_sampler(overrides) and isinstance(recorded, dict) else command_node


def names_sampler(overrides: tuple[str, ...]) -> bool:
    """Whether the command line names a sampler (sampler=NAME or sampler.KEY=VALUE)."""
    return any(o.lstrip("+~").split("=", 1)[0].split(".", 1)[0] == "sampler" for o in overrides)


def checked_sampler(node, schedule: Schedule, steps: int, walk: tuple[float, ...] | None = None,
                    walk_kind: str = "tuned") -> Sampler:
    """The sampler a node describes (walking `walk`, tuned or distilled timesteps, when given), its settings and
    steps checked against the schedule."""
    sampler = replace(nodes.sampler(node), walk=walk, walk_kind=walk_kind)
    try:
        sampler.check(schedule, steps)
    except InfiniteStart as e:
        folder = Path(conf.__file__).parent / "sampler"
        able = [way for way in (serves(p, schedule, steps, sampler.name) for p in sorted(folder.glob("*.yaml"))) if way]
        raise DiffuseError(f"{e}; use {', '.join(able)}") from None
    return sampler


def serves(path: Path, schedule: Schedule, steps: int, refused: str = "") -> str | None:
    """How the sampler YAML at `path` can walk `schedule`: its name (with its defaults; for the `refused` sampler
    itself, its default spacing named), its name with spacing=trailing (when only its default spacing refuses), or
    None."""
    sampler = nodes.sampler(OmegaConf.load(path))
    own = f"{path.stem} (spacing={sampler.spacing})" if path.stem == refused else path.stem
    for spacing, name in ((sampler.spacing, own), ("trailing", f"{path.stem} (spacing=trailing)")):
        try:
            replace(sampler, spacing=spacing).check(schedule, steps)
            return name
        except DiffuseError:
            pass
    return None
