import os
import subprocess
import sys
from pathlib import Path

import pytest

import diffuse.conf

REPO = Path(__file__).resolve().parents[1]
CONF = Path(diffuse.conf.__file__).resolve().parent  # the configs of the diffuse being tested (a copy, in test_extending)
# Tests never download: they read the real MNIST from ../shared/data unless DIFFUSE_DATA_ROOT says otherwise.
DATA_ROOT = Path(os.environ.get("DIFFUSE_DATA_ROOT", REPO.parent / "shared" / "data")).resolve()
os.environ["DIFFUSE_DATA_ROOT"] = str(DATA_ROOT)


@pytest.fixture(scope="session")
def data_root() -> Path:
    if not (DATA_ROOT / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file():
        pytest.fail(f"MNIST is expected in {DATA_ROOT}/MNIST/raw; set DIFFUSE_DATA_ROOT to the folder holding MNIST/raw")
    return DATA_ROOT


def run_cli(*args: str, cwd: Path, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """Run `python -m diffuse ARGS` the way a user runs `diffuse ARGS`."""
    full_env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    full_env.update({"DIFFUSE_DATA_ROOT": str(DATA_ROOT), **(env or {})})
    proc = subprocess.run([sys.executable, "-m", "diffuse", *args], cwd=cwd, env=full_env, capture_output=True,
                          text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"diffuse {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def cli_in_process(*args: str, cwd: Path, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """`diffuse ARGS` through `diffuse.cli.main` in this process: the same code from argv to exit status and
    stderr, without the 2-3 s of a new interpreter importing torch. For inputs refused before any long work (the
    bad-input tests) and short jobs (a tiny model's few training steps, sampling or scoring a few images); what a
    process of its own must show (signals, kills, resume bitwise, torchrun, the installed entry point) uses run_cli.
    Whatever it changes (working directory, environment, argv, logging) is put back, and glibc's malloc settings are
    left as they are (DIFFUSE_KEEP_FREED_MEMORY=0 unless `env` says otherwise; tests/test_allocator.py runs the
    setting in processes of its own). A Python exception escaping main (a user would see a traceback) is raised
    here."""
    import contextlib
    import io
    import logging

    from diffuse import cli

    out, err = io.StringIO(), io.StringIO()
    saved_env, saved_argv, saved_cwd = dict(os.environ), list(sys.argv), os.getcwd()
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    code = 0
    try:
        os.environ.pop("HYDRA_FULL_ERROR", None)
        os.environ.update({"DIFFUSE_DATA_ROOT": str(DATA_ROOT), "DIFFUSE_KEEP_FREED_MEMORY": "0", **(env or {})})
        os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                cli.main(list(args))
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 0 if e.code is None else 1
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
        sys.argv[:] = saved_argv
        for handler in set(root.handlers) - set(saved_handlers):  # e.g. the run's log file
            handler.close()
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
    if check and code != 0:
        raise AssertionError(f"diffuse {' '.join(args)} exited {code}\n{out.getvalue()}\n{err.getvalue()}")
    return subprocess.CompletedProcess(["diffuse", *args], code, out.getvalue(), err.getvalue())


def cached(cache: Path) -> dict:
    """The environment that points `diffuse eval` at a cache folder (the eval_cache fixture's)."""
    return {"DIFFUSE_CACHE": str(cache)}


# A training run small enough for tests: a tiny UNet, a few steps, a small grid.
TINY_TRAIN = ("model=unet_tiny", "train.steps=6", "train.batch_size=8", "train.log_every=2", "train.sample_every=3",
              "train.sample_n=4", "train.sample_steps=3", "train.ckpt_every=3", "train.warmup=2")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, data_root) -> Path:
    """A folder holding `run` (a TINY_TRAIN run on MNIST) and `init.npz` (3 random 28x28 grey images), shared by
    the tests of what a checkpoint does beyond sampling from noise."""
    import numpy as np

    cwd = tmp_path_factory.mktemp("tiny_run")
    cli_in_process("train", *TINY_TRAIN, "hydra.run.dir=run", cwd=cwd)
    np.savez(cwd / "init.npz", images=np.random.default_rng(0).integers(0, 256, (3, 28, 28, 1), dtype=np.uint8))
    return cwd


@pytest.fixture(scope="session")
def eval_cache(tmp_path_factory, data_root) -> Path:
    """A cache folder holding the MNIST classifier (trained once per test session, ~2 min) and the reference
    features of the MNIST test split: what `diffuse eval` and `train.eval_every` build at their first use."""
    import torch

    from diffuse.datasets.mnist import mnist
    from diffuse.features.classifier import classifier_extractor
    from diffuse.features.reference import reference_features

    cache = tmp_path_factory.mktemp("eval_cache")
    train, test = mnist(str(data_root), True, False), mnist(str(data_root), False, False)
    extractor = classifier_extractor(train, test, cache, torch.device("cpu"))
    reference_features(test, "test", extractor, cache)
    return cache


def group_options(group: str) -> list[str]:
    """The options of a config group: the folder is the registry, so tests glob it."""
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def composed(config_name: str, *overrides: str):
    """A config as the CLI composes it."""
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="diffuse.conf", version_base="1.3"):
        return compose(config_name=config_name, overrides=list(overrides))


def sampler_from_yaml(name: str, **settings):
    """A sampler as its YAML builds it, with `settings` (spacing included) changed."""
    from dataclasses import replace

    from diffuse.config import sampler

    built = sampler(composed("sample", f"sampler={name}").sampler)
    spacing = settings.pop("spacing", built.spacing)
    return replace(built, settings={**built.settings, **settings}, spacing=spacing)


def walk(sampler, denoiser, schedule, x_T, steps: int, generator=None, on_step=None):
    """Run a sampler over its own timesteps for `steps` steps."""
    return sampler(denoiser, schedule, x_T, sampler.timesteps(schedule, steps), generator=generator, on_step=on_step)


def assert_declared_order(sampler, denoiser, schedule, x_T, reference_steps: int) -> None:
    """The walk's error against a `reference_steps` walk shrinks over 20, 40, 80, 160 steps, and from 80 to 160 at
    the order the sampler declares (within -0.3 / +1.0): the asymptotic order, which high-order multistep methods
    (iPNDM: 2.9, 3.5, 3.8 over these doublings) reach only with many steps."""
    from exact import fitted_order

    reference = walk(sampler, denoiser, schedule, x_T, reference_steps)
    steps = [20, 40, 80, 160]
    errors = [(walk(sampler, denoiser, schedule, x_T, n) - reference).abs().mean().item() for n in steps]
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    order = sampler.facts.order
    assert order - 0.3 <= fitted_order(steps[-2:], errors[-2:]) <= order + 1.0, errors
