"""`diffuse distill ckpt=TEACHER`: progressive distillation (diffuse.progressive) in rounds, each an ordinary training
run of `diffuse.train` (so resume, signals and kill-safety are train's) whose student takes in one step what its
teacher took in two; or consistency distillation (diffuse.consistency) in one such run. Every student is a checkpoint
of its own (steps_N/, or consistency/) that `diffuse sample` and `diffuse eval` walk at the step counts it was
distilled for; its metadata names its teacher, the method and its timesteps."""

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
from diffuse.adversarial import AdversarialLoss
from diffuse.consistency import ConsistencyLoss, Curriculum
from diffuse.data import ImageData
from diffuse.denoiser import DiffusionModel
from diffuse.features.cache import sha256
from diffuse.distill_options import DistillOptions
from diffuse.halving import halving_round
from diffuse.progressive import ProgressiveLoss, halve
from diffuse.run import Context, TrainJob, dataset_builder
from diffuse.sampler_choice import checked_sampler
from diffuse.student_walks import search_walks, searchable, training_minutes
from diffuse.train import TrainOptions, train
from diffuse.train_state import read_resume
from diffuse.validate import seed as check_seed
from diffuse.walk_file import every

log = logging.getLogger(__name__)

MANIFEST, STUDENT, FORMAT = "distill.json", "student.json", "diffuse-distill/1"
# settings distill.json gained later: what a folder written before them meant
IMPLIED = {"teacher_solver": "ddim", "teacher_steps_start": None, "halve_walks": [], "halve_share": 0.3,
           "halve_adversarial": 0.0, "adversarial": 0.0}
FREE = ("search_walks", "search_n")  # settings a resumed distillation may change: they choose walks after training


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
    search_walks: list[int]  # the step counts whose walk the search chooses (opts.search_walks resolved)


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
    student_sampler = ddim_node()
    for k in opts.walks:
        checked_sampler(student_sampler, schedule, k, tuple(every(teacher_ts, k)), "distilled")
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
    reference = dataset_builder(node, {"train": data})
    search = searchable(opts, data, reference)
    manifest = {"format": FORMAT, **{k: v for k, v in asdict(opts).items() if k != "train"}, "search_walks": search,
                "seed": seed, "teacher_sha256": sha256(teacher.path), "teacher_weights": teacher.weights,
                "teacher": str(teacher.path), "teacher_timesteps": teacher_ts}
    if given is not None and (out_dir / MANIFEST).is_file():  # the same distillation, or none
        before = {**IMPLIED, **json.loads((out_dir / MANIFEST).read_text())}
        changed = [k for k in manifest if k not in ("teacher", *FREE) and before.get(k) != manifest[k]
                   and not (k in ("halve_share", "halve_adversarial") and not manifest["halve_walks"])]  # unused
        if changed:
            key = changed[0]
            raise DiffuseError(f"resume={given}: that distillation was made with {key}={before.get(key)!r}, and this "
                               f"command gives {manifest[key]!r}; resume it with its own settings")
    keep = [o for o in ctx.overrides if o.split("=", 1)[0].lstrip("+~") not in ("resume", "hydra.run.dir")]
    record = {**teacher.config, "seed": seed, "train": config["train"], "sampler": student_sampler}
    device = distributed.device(world, nodes.device(config["device"]))
    return DistillJob(world, teacher, teacher_ts, data, reference, optimizer, device,
                      out_dir, seed, record, manifest, Path(str(config["cache_dir"])).expanduser(),
                      " ".join(["diffuse distill", f"resume={out_dir.resolve()}", *keep]), search)


def train_student(job: DistillJob, opts: DistillOptions, k: int, folder: Path, record: dict, loss,
                  train_opts: TrainOptions, search: list[int]) -> Path:
    """One student: a training run in `folder` started from the teacher's weights (round k's seed), with `loss`;
    a trained one (student.json) is kept, an unfinished one continues from its checkpoint exactly. Then the walks
    of `search` (step counts) that student.json does not hold yet are chosen by FID, into its checkpoint
    (diffuse.student_walks), and added to student.json."""
    world, last, written = job.world, folder / "checkpoints" / LAST, folder / STUDENT
    if written.is_file():
        done = json.loads(written.read_text())
        missing = [n for n in search if str(n) not in done.get("search_walks", {})]
        if not missing:
            log.info("%s: the student is done (%s)", folder.name, last)
            return last
        log.info("%s: the student is trained; choosing its %s-step walk", folder.name, ", ".join(map(str, missing)))
    else:
        resume = read_resume(last, str(last))[0] if last.is_file() else None
        torch.manual_seed(job.seed + k)  # dropout of this run
        student = copy.deepcopy(loss.teacher).requires_grad_(True)
        model, n = job.teacher.model, min(record["walks"])
        round_job = TrainJob(
            world=world, model=DiffusionModel(student, model.objective, model.schedule, model.shape),
            sampler=checked_sampler(job.config["sampler"], model.schedule, n, tuple(every(record["timesteps"], n)),
                                    "distilled"),
            data=job.data, optimizer=job.optimizer, device=job.device, out_dir=folder, seed=job.seed + k,
            config={**job.config, "distill": record}, reference=job.reference, cache_dir=job.cache_dir, resume=resume,
            resume_command=job.resume_command, loss=loss)
        folder.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        last = train(round_job, replace(train_opts, sample_steps=n, eval_steps=n))
        del round_job, student  # the device's memory, for the search
        done = {**record, "checkpoint": str(last), "seconds": round(time.perf_counter() - started, 1)}
        if world.main:  # written before the search: a distillation stopped in it resumes to the search alone
            write_atomic(written, (json.dumps(done, indent=2) + "\n").encode())
        world.barrier()
        missing = search
    if missing:
        chosen = search_walks(job, train_opts, missing, opts.search_n, last)
        if world.main:
            done["search_walks"] = {**done.get("search_walks", {}), **chosen}
            write_atomic(written, (json.dumps(done, indent=2) + "\n").encode())
        world.barrier()
    return last


def distill(job: DistillJob, opts: DistillOptions) -> Path:
    """Progressive: round k trains a student, started from its teacher's weights, to walk halve(teacher walk); the
    next round's teacher is its EMA. Consistency: one student over the teacher's walk, for every step count in
    opts.walks. A student whose student.json exists is done (a resumed distillation skips it); one with a
    checkpoint continues from it exactly. Returns the last student's checkpoint."""
    if job.world.main:
        write_atomic(job.out_dir / MANIFEST, (json.dumps(job.manifest, indent=2) + "\n").encode())
    teacher, ts = job.teacher.model.network.to(job.device), job.teacher_ts
    teacher_path, began = str(job.teacher.path), time.perf_counter()
    first = {"first_teacher": job.manifest["teacher"], "first_teacher_sha256": job.manifest["teacher_sha256"]}
    if opts.method == "consistency":
        record = {"method": "consistency", "teacher": teacher_path, "teacher_steps": opts.teacher_steps,
                  "steps": opts.teacher_steps, "timesteps": ts, "walks": opts.walks, "round": 1, "rounds": 1,
                  "teacher_solver": opts.teacher_solver, **first}
        if opts.teacher_steps_start is not None:
            record["teacher_steps_start"] = opts.teacher_steps_start
        log.info("consistency distillation of %s over its %s-step walk%s: a student of %s steps%s", teacher_path,
                 " -> ".join(map(str, opts.curriculum)), ", each for an equal share of the run" if
                 len(opts.curriculum) > 1 else "", ", ".join(map(str, opts.walks)),
                 f", with an adversarial term of weight {opts.adversarial:g}" if opts.adversarial else "")
        losses = [ConsistencyLoss(teacher, job.teacher.model.schedule.timesteps(n, opts.spacing), opts.clip_x0,
                                  opts.teacher_solver) for n in opts.curriculum]  # the last walks ts
        loss, minutes = Curriculum(losses) if len(losses) > 1 else losses[0], opts.train.max_minutes
        if opts.adversarial:
            record["adversarial"] = opts.adversarial
            loss = AdversarialLoss(loss, opts.adversarial, job.teacher.model.shape, job.seed + 1).to(job.device)
        rest = replace(opts.train, max_minutes=training_minutes(job, opts, job.out_dir / "consistency"))
        students = [train_student(job, opts, 1, job.out_dir / "consistency", record, loss, rest, job.search_walks)]
        halving = replace(opts.train, max_minutes=minutes * opts.halve_share)
        for j, k in enumerate(opts.halve_walks, start=2):  # diffuse.halving: progressive rounds from its walks
            record, loss = halving_round(students[0], k, j, opts, first, job.device, job.seed + j)
            students.append(train_student(job, opts, j, job.out_dir / f"steps_{k // 2}", record, loss, halving, []))
        where = ", ".join(f"{n}: steps_{n}/" if 2 * n in opts.halve_walks else f"{n}: consistency/" for n in opts.walks)
        log.info("distilled in %.1f s; the student for each step count: %s", time.perf_counter() - began, where)
        return students[-1]
    per_round = replace(opts.train, max_minutes=opts.train.max_minutes / opts.rounds)
    for k in range(1, opts.rounds + 1):
        student_ts = halve(ts)
        n = len(student_ts) - 1
        record = {"method": "progressive", "teacher": teacher_path, "teacher_steps": 2 * n, "steps": n,
                  "timesteps": student_ts, "walks": [n], "round": k, "rounds": opts.rounds,
                  "teacher_solver": opts.teacher_solver if k == 1 else "ddim", **first}
        log.info("round %d of %d: a %d-step student from %s's %d steps", k, opts.rounds, n, teacher_path, 2 * n)
        last = train_student(job, opts, k, job.out_dir / f"steps_{n}", record,
                             ProgressiveLoss(teacher, ts, opts.clip_x0, opts.teacher_solver if k == 1 else "ddim"),
                             per_round, [])
        teacher, ts, teacher_path = load_model(last, "ema").model.network.to(job.device), student_ts, str(last)
    log.info("distilled %d round(s) in %.1f s: students %s", opts.rounds, time.perf_counter() - began,
             ", ".join(f"steps_{opts.teacher_steps >> k}" for k in range(1, opts.rounds + 1)))
    return last
