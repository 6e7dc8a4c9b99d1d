"""`diffuse distill ckpt=TEACHER`: progressive distillation (diffuse.progressive) in rounds, each an ordinary training
run of `diffuse.train` (so resume, signals and kill-safety are train's) whose student takes in one step what its
teacher took in two. Every round's student is a checkpoint of its own (steps_N/) that `diffuse sample` and
`diffuse eval` walk at its N steps; its metadata names its teacher, the method and its timesteps."""

from __future__ import annotations

import copy
import json
import logging
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from diffuse import DiffuseError, conf, config as nodes, distributed
from diffuse.checkpoint import LAST, LoadedModel, load_model, write_atomic
from diffuse.config import OPTIMIZERS, build
from diffuse.data import ImageData
from diffuse.denoiser import DiffusionModel
from diffuse.features.cache import sha256
from diffuse.progressive import ProgressiveLoss, halve
from diffuse.run import Context, TrainJob, dataset_builder
from diffuse.sampler_choice import checked_sampler
from diffuse.schedule import SPACINGS
from diffuse.train import TrainOptions, train
from diffuse.train_state import read_resume
from diffuse.validate import seed as check_seed

log = logging.getLogger(__name__)

MANIFEST, STUDENT, FORMAT = "distill.json", "student.json", "diffuse-distill/1"


@dataclass(frozen=True)
class DistillOptions:
    """The options of `diffuse distill` (defaults: conf/distill.yaml; train.*: conf/train_options.yaml, with
    distillation's own defaults in conf/distill.yaml). train.max_minutes is the whole distillation's budget,
    shared evenly by the rounds; train.steps caps each round."""

    teacher_steps: int  # the teacher's DDIM walk that the first round halves
    student_steps: int  # the last round's student; each round halves the steps
    spacing: str  # the spacing of the teacher's walk
    clip_x0: bool  # clamp the teacher's x0 to [-1, 1] in its steps, as its sampling does
    train: TrainOptions

    def __post_init__(self) -> None:
        ratio = self.teacher_steps // max(self.student_steps, 1)
        if (self.student_steps < 1 or self.teacher_steps <= self.student_steps or ratio * self.student_steps
                != self.teacher_steps or ratio & (ratio - 1)):
            raise DiffuseError(f"teacher_steps must be student_steps times a power of 2 (each round halves the steps), "
                               f"got teacher_steps={self.teacher_steps} and student_steps={self.student_steps}")
        if self.spacing not in SPACINGS:
            raise DiffuseError(f"spacing={self.spacing!r} is not a spacing; allowed: {', '.join(SPACINGS)}")

    @property
    def rounds(self) -> int:
        return (self.teacher_steps // self.student_steps).bit_length() - 1


@dataclass(eq=False)
class DistillJob:
    world: distributed.World
    teacher: LoadedModel
    teacher_ts: list[float]  # the first teacher's walk: teacher_steps timesteps, then -1
    data: ImageData  # the teacher's data set, training split
    reference: object  # split -> the real data set, for train.eval_every
    optimizer: object  # (params, lr) -> torch.optim.Optimizer: the teacher run's optimizer node
    device: torch.device
    out_dir: Path  # the distillation's folder: distill.json, steps_N/ per round
    seed: int
    config: dict  # the teacher's config, with this distillation's options and the students' sampler (DDIM)
    manifest: dict  # what distill.json records: teacher, its SHA-256, walk, options
    cache_dir: Path
    resume_command: str


def ddim_node() -> dict:
    """The sampler a student walks with: DDIM (eta = 0) as conf/sampler/ddim.yaml defines it."""
    return nodes.plain(OmegaConf.load(Path(conf.__file__).parent / "sampler" / "ddim.yaml"))


def build_distill(cfg: DictConfig, ctx: Context, opts: DistillOptions) -> DistillJob:
    """The teacher (not itself a student), its data set and optimizer, the walk and the folder, checked in that
    order; `resume=DIR` (or `auto`: this run's folder) continues DIR's distillation in DIR when it is the same."""
    config = nodes.plain(cfg)
    if config.get("ckpt") is None:
        raise DiffuseError("ckpt is required: ckpt=PATH to the teacher's checkpoint or training run directory")
    world = ctx.world
    if opts.train.batch_size % world.size:
        raise DiffuseError(f"train.batch_size={opts.train.batch_size} must split evenly over the {world.size} ranks")
    out_dir = ctx.out_dir
    given = config.get("resume")
    if given not in (None, "auto"):
        out_dir = Path(str(given)).expanduser()
        if not (out_dir / MANIFEST).is_file():
            raise DiffuseError(f"resume={given}: not a diffuse distill folder (no {MANIFEST}); give the folder a "
                               f"distillation wrote, or resume=auto")
    teacher = load_model(config["ckpt"], config["weights"])
    if teacher.model.lowres:
        raise DiffuseError(f"ckpt={teacher.path} is a super-resolution model (dataset.lowres="
                           f"{teacher.model.lowres}); distillation takes models that generate from noise")
    if "distill" in teacher.config:
        raise DiffuseError(f"ckpt={teacher.path} is itself a distilled student; distil its teacher "
                           f"({teacher.config['distill'].get('teacher')}) with a smaller student_steps")
    schedule = teacher.model.schedule
    teacher_ts = schedule.timesteps(opts.teacher_steps, opts.spacing)
    student_sampler, walk = ddim_node(), teacher_ts
    for _ in range(opts.rounds):
        walk = halve(walk)
        checked_sampler(student_sampler, schedule, len(walk) - 1, tuple(walk), "distilled")
    if not isinstance(teacher.config.get("optimizer"), dict):
        raise DiffuseError(f"ckpt={teacher.path}: its config names no optimizer to distil with")
    optimizer = build(teacher.config["optimizer"], OPTIMIZERS)
    node = dict(teacher.config.get("dataset") or {})
    if not node:
        raise DiffuseError(f"ckpt={teacher.path}: its config names no data set to distil on")
    if "root" in node:
        node["root"] = config["data_root"]
    data = nodes.dataset(node, train=True)
    if data.shape != teacher.model.shape:
        raise DiffuseError(f"the data set {data.name} has images {list(data.shape)}, and ckpt={teacher.path} makes "
                           f"{list(teacher.model.shape)}")
    seed = check_seed(config["seed"])
    manifest = {"format": FORMAT, "method": "progressive", **{k: v for k, v in asdict(opts).items() if k != "train"},
                "seed": seed, "teacher_sha256": sha256(teacher.path), "teacher_weights": teacher.weights,
                "teacher": str(teacher.path), "teacher_timesteps": teacher_ts}
    if given is not None and (out_dir / MANIFEST).is_file():  # the same distillation, or none
        before = json.loads((out_dir / MANIFEST).read_text())
        changed = [k for k in manifest if k != "teacher" and before.get(k) != manifest[k]]
        if changed:
            key = changed[0]
            raise DiffuseError(f"resume={given}: that distillation was made with {key}={before.get(key)!r}, and this "
                               f"command gives {manifest[key]!r}; resume it with its own settings")
    keep = [o for o in ctx.overrides if o.split("=", 1)[0].lstrip("+~") not in ("resume", "hydra.run.dir")]
    record = {**teacher.config, "seed": seed, "train": config["train"], "sampler": student_sampler}
    device = distributed.device(world, nodes.device(config["device"]))
    return DistillJob(world, teacher, teacher_ts, data, dataset_builder(node, {"train": data}), optimizer, device,
                      out_dir, seed, record, manifest, Path(str(config["cache_dir"])).expanduser(),
                      " ".join(["diffuse distill", f"resume={out_dir.resolve()}", *keep]))


def distill(job: DistillJob, opts: DistillOptions) -> Path:
    """Round k trains a student, started from its teacher's weights, to walk halve(teacher walk); the next round's
    teacher is its EMA. A round whose steps_N/student.json exists is done (a resumed distillation skips it); one
    with a checkpoint continues from it exactly. Returns the last student's checkpoint."""
    world, device = job.world, job.device
    if world.main:
        write_atomic(job.out_dir / MANIFEST, (json.dumps(job.manifest, indent=2) + "\n").encode())
    teacher, ts = job.teacher.model.network.to(device), job.teacher_ts
    teacher_path, began = str(job.teacher.path), time.perf_counter()
    per_round = replace(opts.train, max_minutes=opts.train.max_minutes / opts.rounds)
    for k in range(1, opts.rounds + 1):
        student_ts = halve(ts)
        n = len(student_ts) - 1
        folder = job.out_dir / f"steps_{n}"
        last = folder / "checkpoints" / LAST
        if (folder / STUDENT).is_file():
            log.info("round %d of %d: the %d-step student is done (%s)", k, opts.rounds, n, last)
        else:
            resume = read_resume(last, str(last))[0] if last.is_file() else None
            record = {"method": "progressive", "teacher": teacher_path, "teacher_steps": 2 * n, "steps": n,
                      "timesteps": student_ts, "round": k, "rounds": opts.rounds,
                      "first_teacher": job.manifest["teacher"], "first_teacher_sha256": job.manifest["teacher_sha256"]}
            torch.manual_seed(job.seed + k)  # dropout of this round
            student = copy.deepcopy(teacher).requires_grad_(True)
            model = job.teacher.model
            round_job = TrainJob(
                world=world, model=DiffusionModel(student, model.objective, model.schedule, model.shape),
                sampler=checked_sampler(job.config["sampler"], model.schedule, n, tuple(student_ts), "distilled"),
                data=job.data,
                optimizer=job.optimizer, device=device, out_dir=folder, seed=job.seed + k,
                config={**job.config, "distill": record}, reference=job.reference,
                cache_dir=job.cache_dir, resume=resume, resume_command=job.resume_command,
                loss=ProgressiveLoss(teacher, ts, opts.clip_x0))
            log.info("round %d of %d: a %d-step student from %s's %d steps", k, opts.rounds, n, teacher_path, 2 * n)
            folder.mkdir(parents=True, exist_ok=True)
            started = time.perf_counter()
            last = train(round_job, replace(per_round, sample_steps=n, eval_steps=n))
            if world.main:
                write_atomic(folder / STUDENT, (json.dumps({**record, "checkpoint": str(last),
                                                            "seconds": round(time.perf_counter() - started, 1)},
                                                           indent=2) + "\n").encode())
            world.barrier()
        teacher, ts, teacher_path = load_model(last, "ema").model.network.to(device), student_ts, str(last)
    log.info("distilled %d round(s) in %.1f s: students %s", opts.rounds, time.perf_counter() - began,
             ", ".join(f"steps_{opts.teacher_steps >> k}" for k in range(1, opts.rounds + 1)))
    return last
