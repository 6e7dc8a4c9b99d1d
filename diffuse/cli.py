"""`diffuse <subcommand> [hydra overrides]`: pops the subcommand and hands the rest to hydra.main."""

from __future__ import annotations

import datetime
import os
import sys

from omegaconf import OmegaConf

from diffuse.allocator import keep_freed_memory

SUBCOMMANDS = {"train": "train a model (conf/train.yaml)", "sample": "draw images from a checkpoint (conf/sample.yaml)",
               "eval": "score a checkpoint's samples or image files: FID, KID, precision/recall (conf/eval.yaml)",
               "tune-steps": "search a checkpoint's few-step timesteps; writes walk.json (conf/tune-steps.yaml)",
               "distill": "distil a checkpoint into a student of 1-N steps (conf/distill.yaml)",
               "interpolate": "walk between noises, or real images through DDIM inversion (conf/interpolate.yaml)",
               "report": "tables and a plot from a folder of eval runs (e.g. an eval multirun)"}
USAGE = ("usage: diffuse {train,sample,eval,tune-steps,distill,interpolate} [KEY=VALUE ...] [-m] [--help] [--cfg job]\n"
         "       diffuse report DIR [--metric fid] [--x nfe|strength|start_rmse] [--out DIR]\n\n"
         + "\n".join(f"  {k:<8} {v}" for k, v in SUBCOMMANDS.items())
         + "\n\nExamples:\n  diffuse train dataset=mnist\n  diffuse sample ckpt=outputs/train/<date>/<time> steps=50\n"
         "  diffuse train -m schedule=linear,cosine train.steps=20\n"
         "  diffuse eval ckpt=outputs/train/<date>/<time> n=10000\n"
         "  diffuse tune-steps ckpt=<run> nfe=10 && diffuse sample ckpt=<run> schedule_file=<its walk.json> steps=<k>\n"
         "  diffuse distill ckpt=<run> && diffuse sample ckpt=<its folder>/consistency steps=2\n"
         "  diffuse interpolate ckpt=<run> images=<two or more images>.npz steps=50\n"
         "  diffuse eval -m ckpt=<run> sampler=ddim,dpmpp_2m steps=5,10,20,50 && diffuse report outputs/eval-multirun/<...>\n\n"
         "`diffuse SUBCOMMAND --help` lists the config groups and their options.")


RENAMED = {"parameterization": "objective"}  # options of earlier versions, and what they are now
SHARED_TIME: list[datetime.datetime] = []  # under torchrun: rank 0's start time, which every rank's run dir uses


def run_time(pattern: str) -> str:
    """${run_time:%H-%M-%S} in a run directory: now, or under torchrun the time rank 0 started (one folder)."""
    return (SHARED_TIME[0] if SHARED_TIME else datetime.datetime.now()).strftime(pattern)


OmegaConf.register_new_resolver("run_time", run_time, use_cache=True, replace=True)


def join_run(argv: list[str]):
    """Under torchrun: join the process group, agree on rank 0's start time for the run directory, and keep the
    other ranks from writing Hydra's files and logs (rank 0 writes them). One process: World(), argv as is."""
    from diffuse import distributed

    world = distributed.start()
    if world.active:
        micros = world.broadcast(int(datetime.datetime.now().timestamp() * 1e6))
        SHARED_TIME[:] = [datetime.datetime.fromtimestamp(micros / 1e6)]
        if world.rank:
            argv = [*argv, "hydra.output_subdir=null", "hydra/job_logging=disabled"]
    return world, argv


def refuse_renamed(subcommand: str, overrides: list[str]) -> None:
    for arg in overrides:
        key, _, value = arg.lstrip("+~").partition("=")
        if key in RENAMED:
            fail(subcommand, f"{key}= is now {RENAMED[key]}=: use {RENAMED[key]}={value or 'NAME'}")


def flat(message: str) -> str:
    """Any message as one line (details are for HYDRA_FULL_ERROR=1)."""
    return "; ".join(line.strip() for line in str(message).splitlines() if line.strip())


def fail(subcommand: str, message: str) -> None:
    print(f"diffuse {subcommand}: error: {flat(message)}", file=sys.stderr)
    sys.exit(2)


def task(subcommand: str, full_error: bool, malloc: str):
    """The function hydra.main calls with the composed config; `malloc` (keep_freed_memory's words) opens its log."""

    def run_task(cfg) -> None:
        import logging

        from diffuse import DiffuseError

        logging.getLogger("diffuse.allocator").info(malloc)
        try:
            run_subcommand(subcommand, cfg)
        except DiffuseError as e:  # exit here: Hydra would log a second line for an exception
            if full_error:
                raise
            from diffuse.stop import TrainingInterrupted

            print(f"diffuse {subcommand}: {'' if isinstance(e, TrainingInterrupted) else 'error: '}{flat(e)}",
                  file=sys.stderr)
            sys.exit(130 if isinstance(e, TrainingInterrupted) else 2)

    return run_task


# subcommand -> (its options class, the config node that holds them, its job builder, its task)
TASKS = {"train": ("diffuse.train:TrainOptions", "train", "diffuse.run:build_train", "diffuse.train:train"),
         "sample": ("diffuse.sample:SampleOptions", None, "diffuse.run:build_sample", "diffuse.sample:sample"),
         "eval": ("diffuse.evaluate:EvalOptions", None, "diffuse.eval_job:build_eval", "diffuse.evaluate:evaluate"),
         "tune-steps": ("diffuse.tune_steps:TuneOptions", None, "diffuse.run:build_tune", "diffuse.tune_steps:tune_steps"),
         "distill": ("diffuse.distill_options:DistillOptions", None, "diffuse.distill:build_distill", "diffuse.distill:distill"),
         "interpolate": ("diffuse.interpolate:InterpolateOptions", None, "diffuse.interpolate:build_interpolate",
                         "diffuse.interpolate:interpolate")}


def attribute(spec: str):
    """The object a "module:name" spec names (a task is imported only when its subcommand runs)."""
    import importlib

    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def run_subcommand(subcommand: str, cfg) -> None:
    """Options first (they are checked on construction), then the job (every other input), then the task."""
    from pathlib import Path

    from hydra.core.hydra_config import HydraConfig

    from diffuse import config, distributed, run

    options_cls, section, builder, task_fn = TASKS[subcommand]
    hydra_cfg = HydraConfig.get()
    node = cfg if section is None else cfg[section]
    opts = config.options(attribute(options_cls), node, "" if section is None else f"{section}.", strict=section is not None)
    ctx = run.Context(Path(hydra_cfg.runtime.output_dir), hydra_cfg.runtime.choices.get("experiment"),
                      tuple(hydra_cfg.overrides.task), distributed.from_environment())
    attribute(task_fn)(attribute(builder)(cfg, ctx, opts), opts)


LAUNCHER_EXTRAS = {"joblib": "joblib", "submitit_slurm": "slurm", "submitit_local": "slurm"}  # plugin -> extra


def one_line(error: BaseException) -> str:
    """Hydra's and OmegaConf's multi-line messages, condensed to the lines that say what is wrong."""
    import re

    from hydra.errors import MissingConfigException

    missing = re.search(r"In 'hydra/launcher/(\w+)': Could not load 'hydra/launcher/(\w+)'", str(error))
    if missing and missing.group(2) in LAUNCHER_EXTRAS:
        extra = LAUNCHER_EXTRAS[missing.group(2)]
        return (f"hydra/launcher={missing.group(1)} needs Hydra's {missing.group(2)} launcher, which is not installed: "
                f"pip install 'diffuse[{extra}]'")

    if isinstance(error, MissingConfigException) and error.options is not None and error.missing_cfg_file:
        group, _, name = error.missing_cfg_file.rpartition("/")
        return f"unknown {group} {name!r}; available: {', '.join(error.options)}"
    if not str(error).strip() and error.__cause__ is not None:  # e.g. a composition error wrapping a parse error
        error = error.__cause__
    lines = []
    for line in str(error).splitlines():
        line = line.strip()
        if line.startswith(("Config search path", "provider=", "Set the environment variable")):
            break
        if line and not line.startswith(("full_key:", "object_type=", "reference_type=")):
            lines.append(line.rstrip("."))
    return "; ".join(lines) or type(error).__name__


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return
    if not argv:  # a command line without a subcommand is a mistake: usage on stderr, exit 2 (as argparse does)
        print(USAGE, file=sys.stderr)
        sys.exit(2)
    sub = argv[0]
    if sub == "report":
        from diffuse.report import main as report_main

        report_main(argv[1:])
        return
    if sub not in SUBCOMMANDS:
        print(f"diffuse: error: unknown subcommand {sub!r}; allowed: {', '.join(SUBCOMMANDS)} (diffuse --help)",
              file=sys.stderr)
        sys.exit(2)

    refuse_renamed(sub, argv[1:])
    import hydra
    from omegaconf.errors import OmegaConfBaseException

    from diffuse import DiffuseError, distributed

    full_error = os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"  # let errors reach us, to print them as one line
    try:
        _, malloc = keep_freed_memory()  # before the job's tensors (diffuse/allocator.py)
        world, overrides = join_run(argv[1:])
    except DiffuseError as e:
        fail(sub, str(e))
    sys.argv = [f"diffuse {sub}", *overrides]
    entry = hydra.main(version_base="1.3", config_path="pkg://diffuse.conf",
                       config_name=sub)(task(sub, full_error, malloc))
    try:
        entry()
        world.barrier()  # every rank done before any tears the group down (against a rare SIGABRT at exit; unproven)
    except DiffuseError as e:
        if full_error:
            raise
        fail(sub, str(e))
    except Exception as e:
        from hydra.errors import HydraException

        if full_error:
            raise
        if isinstance(e, OSError) and e.filename:  # e.g. a run directory that cannot be created
            fail(sub, f"cannot write {e.filename}: {e.strerror}; choose another hydra.run.dir")
        if isinstance(e, (HydraException, OmegaConfBaseException)):
            fail(sub, one_line(e))
        fail(sub, f"{type(e).__name__}: {e} (HYDRA_FULL_ERROR=1 shows where)")  # anything else, one line too
    except KeyboardInterrupt:
        print(f"diffuse {sub}: interrupted", file=sys.stderr)
        sys.exit(130)
    finally:
        distributed.stop(world)
