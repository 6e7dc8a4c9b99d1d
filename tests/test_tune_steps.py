"""Tuned timesteps: the search on exact answers (a tuned walk is closer to the data, not only to its reference), and
`diffuse tune-steps` -> walk.json -> `diffuse sample schedule_file=` through the real CLI, with its refusals."""

import json
import math
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from conftest import TINY_TRAIN, cli_in_process, sampler_from_yaml
from diffuse import DiffuseError
from diffuse.schedule import SPACINGS
from diffuse.schedules.linear import linear
from diffuse.step_search import round_walks, search_subwalk, search_timesteps
from exact import GaussianMixture, ode_w1

MIXTURE = GaussianMixture(weights=[0.3, 0.7], means=[-0.6, 0.5], stds=[0.15, 0.25])


def test_the_search_lowers_its_loss_and_keeps_the_walk_valid():
    target = [999.0, 700.0, 300.0, 40.0, -1]

    def loss(ts):
        assert ts[0] == 999 and ts[-1] == -1 and all(a > b for a, b in zip(ts, ts[1:])) and ts[-2] >= 0
        return sum((a - b) ** 2 for a, b in zip(ts, target))

    found = search_timesteps(loss, [999.0, 749.0, 499.0, 249.0, -1], rounds=8)
    assert found.loss < 0.05 * found.start_loss and found.timesteps[0] == 999 and found.timesteps[-1] == -1
    assert found.evaluations <= 1 + 8 * 2 * 3


@pytest.mark.parametrize("ts,rounds", [([999.0, -1], 4), ([999.0, 500.0, 600.0, -1], 4), ([999.0, 5.0, 0.0], 4),
                                       ([999.0, 500.0, -1], 0)])
def test_the_search_refuses_walks_it_cannot_tune(ts, rounds):
    with pytest.raises(DiffuseError):
        search_timesteps(lambda t: 0.0, ts, rounds=rounds)


def test_the_subwalk_search_finds_the_best_walk_through_given_timesteps_and_scores_each_once():
    """The 2-step walk through an 8-step walk whose loss prefers the turn at 749 (not every 4th timestep, 499): found
    among its 7 candidates, each scored once; a 3-step walk through a 6-step walk whose loss prefers turns at 874
    and 374 (both away from every 2nd timestep): found, from the walk's first timestep to -1, each walk scored
    once. k = 1 and k = N have no timestep to choose."""
    ts = [999.0, 874.0, 749.0, 624.0, 499.0, 374.0, 249.0, 124.0, -1]
    calls = []

    def loss(walk):
        calls.append(tuple(walk))
        assert walk[0] == 999 and walk[-1] == -1 and all(a > b for a, b in zip(walk, walk[1:])) and set(walk) <= set(ts)
        return sum((a - b) ** 2 for a, b in zip(walk[1:-1], [874.0, 374.0] if len(walk) == 4 else [749.0]))

    two, scores = search_subwalk(loss, ts, 2)
    assert two.timesteps == [999.0, 749.0, -1] and two.loss == 0 and two.start_loss == 250.0 ** 2
    assert two.evaluations == len(scores) == len(calls) == 7 and len(set(calls)) == len(calls)
    calls.clear()
    three, scores = search_subwalk(loss, [999.0, 874.0, 749.0, 624.0, 499.0, 374.0, -1], 3)
    assert three.timesteps == [999.0, 874.0, 374.0, -1] and three.loss == 0 and len(set(calls)) == len(calls)
    for k in (1, 6):
        with pytest.raises(DiffuseError, match="has no timestep to choose"):
            search_subwalk(loss, [999.0, 874.0, 749.0, 624.0, 499.0, 374.0, -1], k)


@pytest.mark.parametrize("n,k", [(4, 2), (8, 2), (8, 4), (16, 4), (12, 3), (16, 8)])
def test_round_walks_is_the_most_walks_the_subwalk_search_scores_in_its_first_round(n, k):
    """A loss that prefers every later timestep it is offered moves each inner timestep of the walk as low as it can:
    the first round then scores round_walks(n, k) walks; no loss makes it score more (random losses, seeded)."""
    import random

    ts = [999.0 - i * 999.0 / n for i in range(n)] + [-1]
    lowest = search_subwalk(lambda walk: -sum(walk), ts, k, rounds=1)[0]
    assert lowest.evaluations == round_walks(n, k)
    for seed in range(50):
        draw, memo = random.Random(seed), {}
        scored = search_subwalk(lambda walk: memo.setdefault(tuple(walk), draw.random()), ts, k, rounds=1)[0]
        assert scored.evaluations <= round_walks(n, k), seed
    assert (round_walks(8, 2), round_walks(8, 4)) == (7, 10)  # the default 8-step walk's 2- and 4-step searches


def test_a_tuned_five_step_walk_is_closer_to_the_data_than_every_spacing():
    """DPM-Solver++(2M), 5 steps on DDPM's linear schedule, tuned (from trailing) against a 500-step walk of 256
    noises: the mixture's W1, free of sampling noise and measured on other noises (the quantiles), falls by more
    than half, below every named spacing's."""
    schedule, sampler = linear(), sampler_from_yaml("dpmpp_2m", spacing="trailing")
    denoise = MIXTURE.denoiser(schedule)
    x_T = torch.randn(256, 1, 1, 1, generator=torch.Generator().manual_seed(0))
    reference = sampler(denoise, schedule, x_T, sampler.timesteps(schedule, 500))
    found = search_timesteps(lambda ts: (sampler(denoise, schedule, x_T, ts) - reference).pow(2).mean().item(),
                             sampler.timesteps(schedule, 5))
    tuned = ode_w1(replace(sampler, walk=tuple(found.timesteps)), schedule, 5, MIXTURE)
    named = {s: ode_w1(replace(sampler, spacing=s), schedule, 5, MIXTURE) for s in SPACINGS}
    assert tuned < 0.5 * named["trailing"] and tuned < min(named.values()), (tuned, named)


@pytest.fixture(scope="module")
def tuned(tmp_path_factory, data_root) -> tuple[Path, Path]:
    cwd = tmp_path_factory.mktemp("tune")
    cli_in_process("train", *TINY_TRAIN, "hydra.run.dir=run", cwd=cwd)
    cli_in_process("tune-steps", "ckpt=run", "sampler=dpmpp_2m", "nfe=4", "steps=12", "n=4", "held_out=2",
                   "batch_size=3", "rounds=2", "hydra.run.dir=tune", cwd=cwd)
    return cwd / "run", cwd / "tune" / "walk.json"


def test_tune_steps_writes_a_walk_that_sample_and_eval_walk(tuned, tmp_path):
    run, walk_path = tuned
    walk = json.loads(walk_path.read_text())
    ts, rmse = walk["timesteps"], walk["record"]["rmse_to_reference"]
    assert walk["steps"] == 4 and walk["nfe"] == 4 and len(ts) == 5 and ts[-1] == -1
    assert ts[0] == walk["record"]["start_timesteps"][0] and all(a > b for a, b in zip(ts, ts[1:]))
    assert walk["sampler"]["_target_"] == "diffuse.samplers.dpmpp_2m.dpmpp_2m" and walk["weights"] == "ema"
    assert rmse["tuned"]["tuned_on"] <= rmse["start"]["tuned_on"] and math.isfinite(rmse["tuned"]["held_out"])
    cli_in_process("sample", f"ckpt={run}", f"schedule_file={walk_path}", "steps=4", "n=2", "hydra.run.dir=s",
                   cwd=tmp_path)
    record = json.loads((tmp_path / "s" / "sampling.json").read_text())
    assert (record["sampler"], record["spacing"], record["timesteps"], record["nfe_per_image"]) == \
        ("dpmpp_2m", "tuned", ts, 4)


def test_schedule_files_are_held_to_their_checkpoint_steps_and_sampler(tuned, tmp_path):
    from test_cli import _bad

    run, walk_path = tuned
    walk = json.loads(walk_path.read_text())
    assert "has 4 steps, and steps=50: pass steps=4" in _bad(tmp_path, "sample", f"ckpt={run}",
                                                            f"schedule_file={walk_path}")
    assert "leave sampler out" in _bad(tmp_path, "sample", f"ckpt={run}", f"schedule_file={walk_path}", "steps=4",
                                       "sampler=ddim")
    assert "(raw weights): tune one with diffuse tune-steps" in _bad(tmp_path, "sample", f"ckpt={run}", "weights=raw",
                                                                     f"schedule_file={walk_path}", "steps=4")
    other = tmp_path / "other.safetensors"  # another checkpoint file: the same bytes but one
    data = bytearray((run / "checkpoints" / "last.safetensors").read_bytes())
    data[-1] ^= 1
    other.write_bytes(bytes(data))
    assert "was tuned for" in _bad(tmp_path, "sample", f"ckpt={other}", f"schedule_file={walk_path}", "steps=4")
    for name, change in (("format", {"format": "x"}), ("order", {"timesteps": [500, 700, 300, 100, -1]}),
                         ("range", {"timesteps": [5000, 700, 300, 100, -1]}), ("type", {"steps": "4"})):
        bad = tmp_path / f"{name}.json"
        bad.write_text(json.dumps({**walk, **change}))
        assert f"schedule_file={bad}" in _bad(tmp_path, "sample", f"ckpt={run}", f"schedule_file={bad}", "steps=4")
    assert "no such file" in _bad(tmp_path, "sample", f"ckpt={run}", "schedule_file=nope.json", "steps=4")
    shutil.copy(walk_path, tmp_path / "copy.json")  # where the file lies does not matter, only what it says
    cli_in_process("sample", f"ckpt={run}", f"schedule_file={tmp_path / 'copy.json'}", "steps=4", "n=1",
                   "hydra.run.dir=c", cwd=tmp_path)


@pytest.mark.parametrize("args,expected", [
    (("sampler=ddpm",), "sampler ddpm draws fresh noise along its walk; tune-steps needs a deterministic one"),
    (("nfe=1",), "nfe=1 leaves dpmpp_2m fewer than 2 steps"),
    (("sampler=heun", "nfe=2"), "nfe=2 leaves heun fewer than 2 steps"),
    (("rounds=0",), "rounds >= 1"),
    (("schedule_file=x.json",), "schedule_file= is what tune-steps writes"),
])
def test_tune_steps_refuses_what_it_cannot_tune(tuned, tmp_path, args, expected):
    from test_cli import _bad

    run, _ = tuned
    extra = () if any(a.startswith("sampler=") for a in args) else ("sampler=dpmpp_2m",)
    assert expected in _bad(tmp_path, "tune-steps", f"ckpt={run}", *extra, *args)
