"""torchrun on the CPU (gloo): two ranks train what one process trains, resume exactly, share sampling and
evaluation by image index, and stop instead of hanging when a rank dies. Sweeps through Hydra's joblib launcher,
TensorBoard events, resume=auto and the requeue hook of a cluster."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import DATA_ROOT, TINY_TRAIN, cli_in_process, run_cli
from diffuse.checkpoint import metadata_config, read_metadata
from test_distill import DISTILL

EXACT = (*TINY_TRAIN, "train.precision=fp32", "train.sample_every=0", "train.batch_size=8")


def environment(**extra) -> dict:
    env = {**os.environ, "DIFFUSE_DATA_ROOT": str(DATA_ROOT), "DIFFUSE_DIST_TIMEOUT": "120", **extra}
    env.pop("HYDRA_FULL_ERROR", None)
    return env


def torchrun(*args: str, cwd: Path, ranks: int = 2, check: bool = True, env: dict | None = None):
    """`torchrun --standalone --nproc_per_node=RANKS -m diffuse ARGS` (as python -m torch.distributed.run)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}", "-m", "diffuse",
           *args]
    proc = subprocess.run(cmd, cwd=cwd, env=environment(**(env or {})), capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr}")
    return proc


def weights(run: Path) -> dict:
    return load_file(run / "checkpoints" / "last.safetensors")


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory, data_root) -> Path:
    """A 4-step run of 2 ranks (batch 8: 4 each), in the folder torchrun's ranks agree on."""
    cwd = tmp_path_factory.mktemp("ddp")
    torchrun("train", *EXACT, "train.steps=4", cwd=cwd)
    return cwd


def the_run(cwd: Path) -> Path:
    runs = [p.parent.parent for p in (cwd / "outputs" / "train").glob("*/*/checkpoints/last.safetensors")]
    assert len(runs) == 1, runs  # both ranks wrote into one run folder
    return runs[0]


def test_two_ranks_train_the_weights_of_one_process(two_ranks, tmp_path):
    run = the_run(two_ranks)
    run_cli("train", *EXACT, "train.steps=4", "hydra.run.dir=one", cwd=tmp_path)
    a, b = weights(run), weights(tmp_path / "one")
    assert sorted(k for k in a if not k.startswith("rng.")) == sorted(k for k in b if not k.startswith("rng."))
    diffs = [(a[k] - b[k]).abs().max().item() for k in a if k.startswith(("model.", "ema."))]
    assert max(diffs) < 1e-5, max(diffs)  # the same batches, timesteps and noise; only float sums differ
    assert any(k.startswith("rng.torch.rank1") for k in a)  # every rank's own RNG state is kept
    log = (run / "train.log").read_text()
    assert "8 images (2 ranks of 4)" in log and "EMA weights agree (largest difference 0)" in log
    assert len(list(run.glob("*.log"))) == 1 and (run / ".hydra" / "config.yaml").is_file()


def test_a_two_rank_checkpoint_resumes_in_one_with_a_warning_and_samples_in_one(two_ranks, tmp_path):
    """(Resuming in two ranks, bitwise: the SIGTERM test below.)"""
    run = the_run(two_ranks)
    other = run_cli("train", *EXACT, "train.steps=6", f"resume={run}", "hydra.run.dir=one", cwd=tmp_path)
    assert "was written by 2 rank(s) and this run has 1" in other.stdout + other.stderr  # allowed, not bitwise
    cli_in_process("sample", f"ckpt={run}", "n=5", "steps=3", "hydra.run.dir=s1", cwd=tmp_path)
    torchrun("sample", f"ckpt={run}", "n=5", "steps=3", "batch_size=2", "hydra.run.dir=s2", cwd=tmp_path)
    one, two = (np.load(tmp_path / d / "samples.npz")["images"] for d in ("s1", "s2"))
    assert np.array_equal(one, two) and one.shape == (5, 28, 28, 1)  # image i seeded from (seed, i)
    assert json.loads((tmp_path / "s2" / "sampling.json").read_text())["nfe_per_image"] == 3


def test_eval_under_torchrun_scores_the_images_of_one_process(two_ranks, eval_cache, tmp_path):
    run = the_run(two_ranks)
    args = ("eval", f"ckpt={run}", "n=12", "steps=2", "floor=false", "kid_subset_size=6")
    # torchrun gives each rank one thread (OMP_NUM_THREADS=1): so does the one process here, for the same float sums
    run_cli(*args, "hydra.run.dir=e1", cwd=tmp_path, env={"DIFFUSE_CACHE": str(eval_cache), "OMP_NUM_THREADS": "1"})
    torchrun(*args, "hydra.run.dir=e2", cwd=tmp_path, env={"DIFFUSE_CACHE": str(eval_cache)})
    one, two = (json.loads((tmp_path / d / "metrics.json").read_text())["metrics"] for d in ("e1", "e2"))
    assert one == two


def distill_args(two_ranks: Path) -> tuple[str, ...]:
    """The default distillation (consistency with its critic, then the 1-step halving round with its own) of the
    two-rank run."""
    return ("distill", f"ckpt={the_run(two_ranks)}", *DISTILL[:-2], "train.sample_every=0")


@pytest.fixture(scope="module")
def distilled_once(two_ranks, tmp_path_factory) -> Path:
    """The default distillation of the two-rank run in one process (one thread, as each torchrun rank has), without
    the walk search: DIR/one."""
    cwd = tmp_path_factory.mktemp("distilled_once")
    run_cli(*distill_args(two_ranks), "search_walks=[]", "hydra.run.dir=one", cwd=cwd, env={"OMP_NUM_THREADS": "1"})
    return cwd / "one"


def test_a_students_walk_search_under_torchrun_is_that_of_one_process(two_ranks, distilled_once, eval_cache, tmp_path):
    """A trained consistency student (search_walks=[]) resumed with search_walks=[2], in one process and under
    torchrun (each rank draws its share of every walk's images, rank 0 scores them, and all follow its scores):
    the same FID for every candidate walk, the same walk chosen and written into the checkpoint."""
    args = distill_args(two_ranks)
    cache = {"DIFFUSE_CACHE": str(eval_cache)}
    shutil.copytree(distilled_once, tmp_path / "one")
    shutil.copytree(distilled_once, tmp_path / "two")
    search = ("search_walks=[2]", "search_n=10")
    run_cli(*args, *search, f"resume={tmp_path / 'one'}", cwd=tmp_path, env={**cache, "OMP_NUM_THREADS": "1"})
    torchrun(*args, *search, f"resume={tmp_path / 'two'}", cwd=tmp_path, env=cache)
    one, two = (json.loads((tmp_path / d / "consistency" / "student.json").read_text())["search_walks"]["2"]
                for d in ("one", "two"))
    assert len(one["fid_of"]) == 3 and one["fid_of"] == two["fid_of"] and one["timesteps"] == two["timesteps"]
    walks = [metadata_config(read_metadata(tmp_path / d / "consistency" / "checkpoints" / "last.safetensors"))
             ["distill"]["walk_at"] for d in ("one", "two")]
    assert walks[0] == walks[1] == {"2": one["timesteps"]}


def test_a_halving_rounds_critic_trains_under_torchrun_as_in_one_process(two_ranks, distilled_once, tmp_path):
    """The default distillation's halving round has a critic (halve_adversarial) whose gradients the ranks average,
    as DDP averages the student's: the round rerun under 2 ranks from the same consistency student gives the one
    process's student and critic, up to float sums."""
    shutil.copytree(distilled_once, tmp_path / "two")
    shutil.rmtree(tmp_path / "two" / "steps_1")  # the round alone runs again
    torchrun(*distill_args(two_ranks), "search_walks=[]", f"resume={tmp_path / 'two'}", cwd=tmp_path)
    one, two = (load_file(d / "steps_1" / "checkpoints" / "last.safetensors")
                for d in (distilled_once, tmp_path / "two"))
    keys = [k for k in one if k.startswith(("model.", "ema.", "disc.weights."))]
    assert sorted(keys) == sorted(k for k in two if k.startswith(("model.", "ema.", "disc.weights.")))
    assert any(k.startswith("disc.weights.") for k in keys)
    diffs = {k: (one[k] - two[k]).abs().max().item() for k in keys}
    assert max(diffs.values()) < 1e-5, max(diffs.items(), key=lambda kv: kv[1])


BROADCAST = """
from diffuse import distributed
from pathlib import Path
world = distributed.start()
got = f"{world.broadcast(0.25 + world.rank)!r} {world.broadcast(7 + world.rank)!r}"
Path(f"rank{world.rank}.txt").write_text(f"rank {world.rank} of {world.size}: {got}")
distributed.stop(world)
"""


def test_every_rank_takes_rank_0s_value_int_or_float(tmp_path):
    (tmp_path / "broadcast.py").write_text(BROADCAST)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "broadcast.py"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=environment(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # each rank writes its own file: torchrun interleaves the ranks' stdout, so two lines can run together there
    assert [(tmp_path / f"rank{r}.txt").read_text() for r in (0, 1)] == ["rank 0 of 2: 0.25 7", "rank 1 of 2: 0.25 7"]


def test_bad_input_under_torchrun_is_refused_on_every_rank(tmp_path, data_root):
    proc = torchrun("train", *EXACT, "train.batch_size=7", cwd=tmp_path, check=False)
    assert proc.returncode != 0
    assert proc.stderr.count("train.batch_size=7 is the batch of all ranks together and must split evenly over the 2 "
                             "ranks: use a multiple of 2") == 2
    proc = torchrun("train", *EXACT, "device=cuda:1", cwd=tmp_path, check=False)
    assert proc.returncode != 0 and "CUDA is not available" in proc.stderr


def test_a_rank_that_dies_stops_the_others_instead_of_hanging(tmp_path, data_root):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "diffuse",
           "train", *EXACT, "train.steps=100000", "train.ckpt_every=5", "hydra.run.dir=run"]
    launcher = subprocess.Popen(cmd, cwd=tmp_path, env=environment(DIFFUSE_DIST_TIMEOUT="30"), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 300
        while not (tmp_path / "run" / "checkpoints" / "last.safetensors").exists():
            assert launcher.poll() is None and time.monotonic() < deadline, launcher.communicate()
            time.sleep(0.2)
        children = subprocess.run(["pgrep", "-P", str(launcher.pid)], capture_output=True, text=True).stdout.split()
        workers[:] = sorted(int(p) for p in children)
        assert len(workers) == 2, children
        os.kill(workers[-1], signal.SIGKILL)  # one rank dies mid-run
        t0 = time.monotonic()
        _, err = launcher.communicate(timeout=240)
        assert launcher.returncode != 0 and time.monotonic() - t0 < 240
        assert "diffuse train: error: rank 0 lost the other ranks" in err and "resume=auto" in err, err[-3000:]
    finally:
        if launcher.poll() is None:
            launcher.kill()
        for pid in workers:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    tensors = weights(tmp_path / "run")  # the last checkpoint is whole
    assert any(k.startswith("ema.") for k in tensors)


def test_a_joblib_sweep_runs_its_points_side_by_side(tmp_path, data_root):
    run_cli("train", "-m", "hydra/launcher=parallel", "hydra.launcher.n_jobs=2", "schedule=linear,cosine", *TINY_TRAIN,
            "train.steps=2", "train.sample_every=0", "hydra.sweep.dir=sweep", cwd=tmp_path)
    for job in ("0", "1"):
        assert (tmp_path / "sweep" / job / "checkpoints" / "last.safetensors").is_file()
    schedules = {json.loads(read_metadata(tmp_path / "sweep" / j)["config"])["schedule"]["_target_"] for j in "01"}
    assert schedules == {"diffuse.schedules.linear.linear", "diffuse.schedules.cosine.cosine"}


def test_a_missing_launcher_extra_is_one_line(tmp_path):
    import importlib.util

    plugins = importlib.util.find_spec("hydra_plugins")  # (a dotted name whose parent is missing would raise)
    if plugins is not None and importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is not None:
        pytest.skip("the slurm extra is installed here")
    proc = run_cli("train", "-m", "hydra/launcher=slurm", "train.steps=1", cwd=tmp_path, check=False)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1
    assert "hydra/launcher=slurm needs Hydra's submitit_slurm launcher" in lines[0] and "diffuse[slurm]" in lines[0]


def test_tensorboard_events_hold_the_loss_the_evaluations_and_the_grids(tmp_path, data_root):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_cli("train", *TINY_TRAIN, "train.tensorboard=true", "hydra.run.dir=run", cwd=tmp_path)
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard")).Reload()
    assert {"train/loss", "train/lr", "train/images_per_s"} <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("train/loss")] == [2, 4, 6]
    assert [e.step for e in events.Images("samples")] == [3, 6]


REQUEUE = """
import signal, sys
from pathlib import Path

def requeue(signum, frame):  # what submitit installs for SIGUSR2: requeue the job, then exit
    Path("requeued").write_text(str(Path("run/checkpoints/last.safetensors").is_file()))
    sys.exit(0)

signal.signal(signal.SIGUSR2, requeue)
from diffuse.cli import main
main(sys.argv[1:])
"""


def signal_when_logging(cmd: list[str], cwd: Path, rows: int, sig: int) -> tuple[int, str]:
    """Start `cmd` in `cwd`, send `sig` once run/metrics.csv has `rows` rows, wait for it: (exit status, stderr)."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = cwd / "run" / "metrics.csv"
    try:
        deadline = time.monotonic() + 300
        while not metrics.exists() or len(metrics.read_text().splitlines()) <= rows:
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.1)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, err


def test_sigusr2_checkpoints_first_then_hands_over_to_the_requeue_handler(tmp_path, data_root):
    (tmp_path / "job.py").write_text(REQUEUE)
    code, _ = signal_when_logging([sys.executable, "job.py", "train", *TINY_TRAIN, "train.steps=100000",
                                   "train.ckpt_every=0", "train.log_every=1", "hydra.run.dir=run"], tmp_path, 2,
                                  signal.SIGUSR2)
    assert (tmp_path / "requeued").read_text() == "True"  # the checkpoint was on disk when the job was requeued
    assert code == 0


def test_sigterm_to_torchrun_checkpoints_and_the_same_command_resumes_exactly(tmp_path, data_root):
    """Stop a 2-rank run by signalling the launcher, rerun the same command (resume=auto: the first run starts
    afresh, the rerun continues its folder): bitwise the weights of an unbroken 2-rank run, one metrics.csv."""
    args = ("train", *EXACT, "train.steps=40", "train.ckpt_every=0", "train.log_every=1", "resume=auto",
            "hydra.run.dir=run")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "diffuse", *args]
    _, err = signal_when_logging(cmd, tmp_path, 3, signal.SIGTERM)
    assert "stopped by SIGTERM" in err and "resumed from" not in err, err[-3000:]
    stopped_at = json.loads(read_metadata(tmp_path / "run")["train_state"])["step"]
    assert 0 < stopped_at < 40 and stopped_at % 10 == 0  # the ranks agree on stopping every 10 steps
    again = torchrun(*args, cwd=tmp_path)  # the same command again
    assert f"at step {stopped_at}" in again.stdout + again.stderr
    torchrun(*args[:-2], "hydra.run.dir=straight", cwd=tmp_path)
    a, b = weights(tmp_path / "run"), weights(tmp_path / "straight")
    assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)
    rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == [str(step) for step in range(1, 41)]  # one metrics.csv, continued
