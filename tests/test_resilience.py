"""Nothing lost, nothing executed: exact resume, signals, kills mid-save, full disks, hostile checkpoints."""

import csv
import errno
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from conftest import DATA_ROOT, TINY_TRAIN, cli_in_process, run_cli
from diffuse import DiffuseError
from diffuse import checkpoint as ckpt
from diffuse.checkpoint import FORMAT, load_checkpoint, prune_checkpoints, save_checkpoint
from diffuse.checkpoint import load_model

EXACT = (*TINY_TRAIN, "train.precision=fp32", "train.sample_every=0", "model.dropout=0.1")


def weights(run_dir: Path) -> dict:
    return load_file(run_dir / "checkpoints" / "last.safetensors")


def test_resume_is_bitwise_identical_to_an_unbroken_run(tmp_path, data_root):
    run_cli("train", *EXACT, "train.steps=8", "hydra.run.dir=straight", cwd=tmp_path)
    run_cli("train", *EXACT, "train.steps=5", "hydra.run.dir=first", cwd=tmp_path)
    run_cli("train", *EXACT, "train.steps=8", f"resume={tmp_path / 'first'}", "hydra.run.dir=second", cwd=tmp_path)
    a, b = weights(tmp_path / "straight"), weights(tmp_path / "second")
    assert sorted(a) == sorted(b) and any(k.startswith("optim.") for k in a)
    for key in a:  # model, EMA, optimizer moments and step counts, RNG states
        assert torch.equal(a[key], b[key]), key
    rows = (tmp_path / "second" / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("step,") and rows[1].startswith("6,")


def test_a_time_budget_ends_the_run_as_its_last_step_and_resume_continues_exactly(tmp_path, data_root):
    run_cli("train", *EXACT, "train.steps=4", "hydra.run.dir=straight", cwd=tmp_path)
    # a budget of 6 ms runs out during the first step: that step becomes the last one
    proc = run_cli("train", *EXACT, "train.steps=4", "train.max_minutes=0.0001", "hydra.run.dir=short", cwd=tmp_path)
    assert "train.max_minutes=0.0001 reached after step 1" in proc.stdout + proc.stderr
    tensors, meta = load_checkpoint(tmp_path / "short")
    assert meta["step"] == "1"
    assert sorted(p.name for p in (tmp_path / "short" / "samples").iterdir()) == ["step_0000001.png"]  # the final grid
    rows = (tmp_path / "short" / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1"]
    run_cli("train", *EXACT, "train.steps=4", f"resume={tmp_path / 'short'}", "hydra.run.dir=rest", cwd=tmp_path)
    a, b = weights(tmp_path / "straight"), weights(tmp_path / "rest")
    for key in a:
        assert torch.equal(a[key], b[key]), key
    bad = cli_in_process("train", *EXACT, "train.max_minutes=-1", cwd=tmp_path, check=False)
    assert bad.returncode == 2 and "train.max_minutes must be >= 0, got -1.0" in bad.stderr


def test_the_learning_rate_warms_up_then_decays_to_zero_at_the_last_step():
    from dataclasses import replace

    from conftest import composed
    from diffuse.config import options
    from diffuse.train import TrainOptions, lr_at

    opts = replace(options(TrainOptions, composed("train").train, "train."), lr=1e-3, warmup=10)
    assert [lr_at(s, opts, 110) for s in (5, 10, 60, 110)] == [5e-4, 1e-3, 1e-3, 1e-3]  # none: constant
    cosine, linear = replace(opts, lr_decay="cosine"), replace(opts, lr_decay="linear")
    assert lr_at(5, cosine, 110) == 5e-4 and lr_at(10, cosine, 110) == 1e-3
    assert lr_at(60, cosine, 110) == pytest.approx(5e-4) and lr_at(60, linear, 110) == pytest.approx(5e-4)
    assert lr_at(35, cosine, 110) == pytest.approx(1e-3 * 0.5 * (1 + 2**-0.5)) and lr_at(35, linear, 110) == pytest.approx(7.5e-4)
    assert lr_at(110, cosine, 110) == lr_at(110, linear, 110) == 0.0
    steps = [lr_at(s, cosine, 110) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(steps, steps[1:]))


def _bad_resume(tmp_path, args) -> str:
    proc = cli_in_process("train", *args, f"resume={tmp_path / 'resumed'}", "hydra.run.dir=again", cwd=tmp_path,
                          check=False)
    assert proc.returncode != 0 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    return proc.stderr


def test_a_time_budget_plans_the_last_step_and_a_resume_keeps_the_plan(tmp_path, data_root):
    """With train.max_minutes the measured speed plans the last step (under train.steps) and the learning rate
    decays to 0 there; a checkpoint records the plan, so a resume without the budget ends at the same step with
    the same learning rates."""
    args = (*EXACT, "train.steps=100000", "train.lr_decay=linear", "train.ckpt_every=40", "train.keep_last=0",
            "train.log_every=10")
    proc = run_cli("train", *args, "train.max_minutes=0.25", "hydra.run.dir=budget", cwd=tmp_path)
    plans = [int(n) for n in re.findall(r"planned (\d+) steps", proc.stdout + proc.stderr)]
    _, meta = load_checkpoint(tmp_path / "budget")
    end, last = json.loads(meta["train_state"])["end"], int(meta["step"])
    assert plans and end == plans[-1] and 40 < last <= end < 100000, (plans, last)  # planned at 25, 50, ...
    at = [int(b) for b in re.findall(r"at the speed of steps \d+-(\d+)", proc.stdout + proc.stderr)]
    assert len(plans) >= 2 and (at[-1] == int(0.9 * plans[-2]) or at[-1] >= 0.9 * plans[-1]), (plans, at)  # late
    middle = tmp_path / "budget" / "checkpoints" / "step_0000040.safetensors"
    end_then = json.loads(load_checkpoint(middle)[1]["train_state"])["end"]
    assert end_then in plans
    run_cli("train", *args, f"resume={middle}", "hydra.run.dir=resumed", cwd=tmp_path)
    _, resumed = load_checkpoint(tmp_path / "resumed")
    assert int(resumed["step"]) == end_then  # the plan it was written with, not train.steps, ends it
    rows = list(csv.DictReader(open(tmp_path / "resumed" / "metrics.csv")))
    assert float(rows[-1]["lr"]) == 0.0 and rows[-1]["step"] == str(end_then)
    assert "planned the run to end" in _bad_resume(tmp_path, args)
    if last == end and set(plans) == {end_then}:  # every plan (before step 40 and after) agreed, and no slow
        a, b = weights(tmp_path / "budget"), weights(tmp_path / "resumed")  # moment made the deadline come first:
        # bitwise the same run (a plan that differed for a while gave those steps other learning rates)
        for key in a:
            assert torch.equal(a[key], b[key]), key


def test_resume_latest_finds_the_newest_run_of_the_same_experiment(tmp_path, data_root):
    run_cli("train", *TINY_TRAIN, "train.steps=3", cwd=tmp_path)
    proc = run_cli("train", *TINY_TRAIN, "train.steps=5", "resume=latest", cwd=tmp_path)
    assert "resumed from" in proc.stdout + proc.stderr
    line = cli_in_process("train", *TINY_TRAIN, "experiment=mnist_cpu", "resume=latest", cwd=tmp_path,
                          check=False).stderr
    assert "no training run of experiment 'mnist_cpu'" in line


def test_resume_refuses_a_finished_run_and_a_sampling_only_file(tmp_path, data_root):
    run_cli("train", *TINY_TRAIN, "train.steps=3", "hydra.run.dir=done", cwd=tmp_path)
    proc = cli_in_process("train", *TINY_TRAIN, "train.steps=3", f"resume={tmp_path / 'done'}", cwd=tmp_path,
                          check=False)
    assert proc.returncode == 2 and "raise train.steps" in proc.stderr
    tensors, meta = load_checkpoint(tmp_path / "done")
    del meta["train_state"]
    save_file({k: v for k, v in tensors.items() if k.startswith("ema.")}, tmp_path / "slim.safetensors", meta)
    proc = cli_in_process("train", *TINY_TRAIN, f"resume={tmp_path / 'slim.safetensors'}", cwd=tmp_path,
                          check=False)
    assert proc.returncode == 2 and "holds no training state" in proc.stderr


STARTED: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def no_training_outlives_its_test():
    """A test that fails while its training process runs (100000 steps) must not leave it running."""
    yield
    while STARTED:
        proc = STARTED.pop()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def start_training(cwd: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "DIFFUSE_DATA_ROOT": str(DATA_ROOT)}
    env.pop("HYDRA_FULL_ERROR", None)
    proc = subprocess.Popen([sys.executable, "-m", "diffuse", "train", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    STARTED.append(proc)
    return proc


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_finishes_the_step_saves_and_names_the_resume_command(tmp_path, data_root, sig):
    proc = start_training(tmp_path, *TINY_TRAIN, "train.steps=100000", "train.ckpt_every=0", "train.log_every=1",
                          "hydra.run.dir=run")
    wait_for(tmp_path / "run" / "metrics.csv", proc)
    time.sleep(0.5)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    message = err.strip().splitlines()[-1]
    assert f"stopped by {sig.name}" in message and f"resume={tmp_path / 'run'}" in message
    _, meta = load_checkpoint(tmp_path / "run")
    assert 0 < int(meta["step"]) < 100000
    resume = message.split("Resume with: ")[1].split()
    assert resume[0:2] == ["diffuse", "train"] and "train.steps=100000" in resume


def test_kills_at_random_moments_never_leave_a_bad_checkpoint(tmp_path, data_root):
    """SIGKILL a training process at least 10 times while it saves every step (a 14 MB checkpoint after each
    2-image step, so many kills land mid-write), until at least 3 kills have hit a save in progress; every
    run resumes from the one before, and every checkpoint left behind loads."""
    rng = random.Random(0)
    base = [a for a in TINY_TRAIN if not a.startswith(("model=", "train.batch_size="))]
    previous, kills, mid_save = None, 0, 0
    while kills < 10 or (mid_save < 3 and kills < 60):
        args = [*base, "model=unet_mnist", "train.batch_size=2", "train.steps=100000", "train.ckpt_every=1",
                "train.keep_last=2", "train.log_every=1000", f"hydra.run.dir=k{kills}"]
        proc = start_training(tmp_path, *args, *([f"resume={previous}"] if previous else []))
        folder = tmp_path / f"k{kills}" / "checkpoints"
        wait_for(folder / "last.safetensors", proc)
        time.sleep(rng.uniform(0.0, 0.4))
        proc.kill()
        proc.wait()
        mid_save += bool(list(folder.glob(".*.tmp")))  # the temporary file of an interrupted write
        files = sorted(folder.glob("*.safetensors"))
        assert files and all(load_checkpoint(f) for f in files)  # every checkpoint left loads
        previous, kills = tmp_path / f"k{kills}", kills + 1
    assert mid_save >= 3, f"only {mid_save} of {kills} kills landed during a save"
    _, meta = load_checkpoint(previous)
    assert int(meta["step"]) >= kills  # every run in the chain added at least one step


def test_a_signal_during_a_sample_grid_still_saves(tmp_path, data_root):
    """The stop flag is checked again after the grid: a signal there must not lose the steps since the last save."""
    proc = start_training(tmp_path, *TINY_TRAIN, "train.steps=100000", "train.ckpt_every=0", "train.sample_every=1",
                          "train.sample_steps=200", "train.sample_n=16", "hydra.run.dir=run")
    wait_for(tmp_path / "run" / "samples" / "step_0000001.png", proc)
    time.sleep(0.3)  # now inside a later, slow grid
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err, err
    _, meta = load_checkpoint(tmp_path / "run")
    assert int(meta["step"]) >= 2


def test_a_full_disk_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.safetensors"
    meta = {"format": FORMAT, "step": "1", "config": "{}"}
    save_checkpoint([path], {"w": torch.ones(3)}, meta)

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt.os, "fsync", no_space)
    with pytest.raises(DiffuseError, match="No space left on device.*previous one there is intact"):
        save_checkpoint([path], {"w": torch.zeros(3)}, {**meta, "step": "2"})
    monkeypatch.undo()
    assert torch.equal(load_file(path)["w"], torch.ones(3))
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_pruning_keeps_the_last_k_and_the_milestones(tmp_path):
    for step in [*range(1, 11), 10_000_000]:  # past 7 digits names no longer sort as numbers
        (tmp_path / f"step_{step:07d}.safetensors").write_bytes(b"x")
    (tmp_path / "step_final.safetensors").write_bytes(b"x")  # not ours: left alone
    prune_checkpoints(tmp_path, keep_last=3, milestone_every=4)
    assert sorted(p.stem[5:] for p in tmp_path.iterdir()) == ["0000004", "0000008", "0000009", "0000010",
                                                              "10000000", "final"]


def test_nonfinite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, data_root):
    proc = run_cli("train", *TINY_TRAIN, "train.steps=40", "train.lr=1e30", "train.grad_clip=0", "train.warmup=0",
                   "hydra.run.dir=nan", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "no checkpoint had been written yet" in proc.stderr  # it blows up at once
    # a healthy run first, then the blow-up on resume: the good checkpoint stays as it was
    run_cli("train", *TINY_TRAIN, "train.steps=3", "hydra.run.dir=good", cwd=tmp_path)
    before = (tmp_path / "good" / "checkpoints" / "last.safetensors").read_bytes()
    proc = run_cli("train", *TINY_TRAIN, "train.steps=40", "train.lr=1e30", "train.grad_clip=0", "train.warmup=0",
                   f"resume={tmp_path / 'good'}", f"hydra.run.dir={tmp_path / 'good'}", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "the last good checkpoint is" in proc.stderr or "non-finite weights" in proc.stderr
    assert (tmp_path / "good" / "checkpoints" / "last.safetensors").read_bytes() == before


def test_nonfinite_skip_mode_counts_and_continues(tmp_path, data_root):
    proc = run_cli("train", *TINY_TRAIN, "train.steps=4", "train.nonfinite=skip", "train.lr=1e30",
                   "train.grad_clip=0", "train.warmup=0", "hydra.run.dir=skip", cwd=tmp_path, check=False)
    # the first update blows the weights up to ~1e30; every later loss overflows and is skipped, counted
    assert "update skipped" in proc.stdout + proc.stderr, proc.stderr
    assert "updates were skipped for non-finite losses" in proc.stdout + proc.stderr


# ---------------------------------------------------------------- hostile and damaged files


@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory, data_root) -> Path:
    cwd = tmp_path_factory.mktemp("good")
    run_cli("train", *TINY_TRAIN, "train.steps=2", "hydra.run.dir=run", cwd=cwd)
    return cwd / "run" / "checkpoints" / "last.safetensors"


def rewrite(src: Path, dst: Path, edit) -> Path:
    tensors, meta = load_checkpoint(src)
    config = json.loads(meta["config"])
    tensors, meta, config = edit(tensors, meta, config) or (tensors, meta, config)
    save_file(tensors, dst, {**meta, **({"config": json.dumps(config)} if config is not None else {})})
    return dst


@pytest.mark.parametrize("target", ["os.system", "builtins.eval", "diffuse.cli.os.system", "subprocess.Popen"])
def test_a_crafted_target_is_refused_and_nothing_runs(good_checkpoint, tmp_path, target):
    marker = tmp_path / "pwned"

    def edit(tensors, meta, config):
        config["model"] = {"_target_": target, "command": f"touch {marker}", "args": ["touch", str(marker)]}
        return tensors, meta, config

    bad = rewrite(good_checkpoint, tmp_path / "bad.safetensors", edit)
    line = run_cli("sample", f"ckpt={bad}", "steps=2", cwd=tmp_path, check=False).stderr.strip()
    assert ("is not allowed" in line or "does not exist" in line) and len(line.splitlines()) == 1, line
    assert not marker.exists()


def _schedule_role(tensors, meta, config):  # a real diffuse function, in the wrong role
    config["schedule"] = {"_target_": "diffuse.datasets.mnist.mnist", "root": "/tmp/elsewhere", "download": True}
    return tensors, meta, config


def _deep_json(tensors, meta, config):
    meta["config"] = "[" * 50000 + "]" * 50000
    return tensors, meta, None


def _shape_mismatch(tensors, meta, config):
    config["dataset_shape"] = [3, 28, 28]  # the network takes one channel
    return tensors, meta, config


def _zero_division(tensors, meta, config):
    config["model"]["head_dim"] = 0
    return tensors, meta, config


def _other_model(tensors, meta, config):
    config["model"]["channels"] = 32
    return tensors, meta, config


def _wrong_shape(tensors, meta, config):
    key = next(k for k in tensors if k.startswith("ema."))
    tensors[key] = torch.zeros(3, 3)
    return tensors, meta, config


def _wrong_format(tensors, meta, config):
    meta["format"] = "someone-else/3"
    return tensors, meta, config


@pytest.mark.parametrize("case,expected", [
    ("empty", "not a readable safetensors file"),
    ("truncated", "not a readable safetensors file"),
    ("random", "not a readable safetensors file"),
    ("pickle", "not a readable safetensors file"),
    ("other_model", "do not fit the model"),
    ("wrong_shape", "do not fit the model"),
    ("wrong_format", "not a diffuse checkpoint"),
    ("schedule_role", "not allowed here"),
    ("deep_json", "damaged metadata"),
    ("shape_mismatch", "does not map images of shape [3, 28, 28]"),
    ("zero_division", "ZeroDivisionError"),
])
def test_damaged_checkpoints_give_one_clear_line(good_checkpoint, tmp_path, case, expected):
    path = tmp_path / f"{case}.safetensors"
    data = good_checkpoint.read_bytes()
    if case == "empty":
        path.write_bytes(b"")
    elif case == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif case == "random":
        path.write_bytes(random.Random(0).randbytes(4096))
    elif case == "pickle":
        path.write_bytes(b"\x80\x04\x95" + b"cos\nsystem\n(S'touch pwned'\ntR." * 3)
    else:
        rewrite(good_checkpoint, path, {"other_model": _other_model, "wrong_shape": _wrong_shape,
                                        "wrong_format": _wrong_format, "schedule_role": _schedule_role,
                                        "deep_json": _deep_json, "shape_mismatch": _shape_mismatch,
                                        "zero_division": _zero_division}[case])
    proc = cli_in_process("sample", f"ckpt={path}", "steps=2", cwd=tmp_path, check=False)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and expected in lines[0], proc.stderr


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_checkpoint_bytes_give_a_clean_error_or_a_model(good_checkpoint, tmp_path, data):
    raw = bytearray(good_checkpoint.read_bytes())
    header = int.from_bytes(raw[:8], "little") + 8  # mutate mostly the 8-byte length and the JSON header
    for _ in range(data.draw(st.integers(1, 8))):
        kind = data.draw(st.sampled_from(["flip", "byte", "cut", "insert"]))
        at = data.draw(st.integers(0, max(0, min(len(raw), header + 64) - 1)))
        if kind == "flip" and raw:
            raw[at] ^= 1 << data.draw(st.integers(0, 7))
        elif kind == "byte" and raw:
            raw[at] = data.draw(st.integers(0, 255))
        elif kind == "cut":
            del raw[at: at + data.draw(st.integers(1, 64))]
        else:
            raw[at:at] = data.draw(st.binary(min_size=1, max_size=16))
    path = tmp_path / "fuzzed.safetensors"
    path.write_bytes(bytes(raw))
    try:
        loaded = load_model(path)
    except DiffuseError:
        return
    assert isinstance(loaded.model.network, torch.nn.Module)


def test_no_pickle_in_the_package():
    root = Path(__file__).resolve().parents[1] / "diffuse"
    for f in root.rglob("*.py"):
        text = f.read_text()
        for banned in (r"torch\.load\(", r"torch\.save\(", r"\bimport pickle", r"\bpickle\.(loads?|dumps?|Unpickler)\b", r"\bUnpickler\("):
            assert not re.search(banned, text), f"{f}: {banned}"


def test_an_unwritable_output_folder_is_one_line(tmp_path, data_root):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    proc = run_cli("train", *TINY_TRAIN, f"hydra.run.dir={blocker}/run", cwd=tmp_path, check=False)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "cannot write" in lines[0], proc.stderr
