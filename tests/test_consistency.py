"""Consistency distillation: its loss on exact answers (the student that maps every point of the teacher's walk to
that walk's end has zero loss and samples, in 1, 2 or 4 DDIM steps, the teacher's N-step images), and `diffuse
distill method=consistency` through the real CLI: one student that walks each recorded step count, refuses others."""

import json
import shutil

import pytest
import torch

from conftest import TINY_TRAIN, cached, cli_in_process, sampler_from_yaml
from diffuse.checkpoint import load_checkpoint, load_model, metadata_config, save_checkpoint
from diffuse.consistency import ConsistencyLoss, Curriculum, pseudo_huber
from diffuse.denoiser import DiffusionModel, ModelDenoiser
from diffuse.objectives.ddpm import DDPM
from diffuse.schedules.linear import linear
from diffuse.progressive import TEACHER_STEPS
from exact import fitted_order, objective_denoiser, ode_answer
from test_distill import DISTILL, MIXTURE, Wrapped, teacher_as_module


def oracle_consistency(objective, schedule, walk: list[float]) -> torch.nn.Module:
    """The x0-predicting network that maps x at each timestep of `walk` to the end of the teacher's DDIM walk from
    there (the consistency function of the teacher's discrete walk)."""
    ddim, teacher = sampler_from_yaml("ddim"), objective_denoiser(objective, schedule, MIXTURE)
    rest = {t: walk[i:] for i, t in enumerate(walk[:-1])}

    def network(x, time):  # DDPM's x0 objective: the time input is the timestep, the output is x0
        out = torch.zeros_like(x, dtype=torch.float64)
        for t in time.unique().tolist():
            m = time == t
            out[m] = ddim(teacher, schedule, x[m].double(), rest[t])
        return out

    return Wrapped(network)


def w1_to(data, images) -> float:
    """W1 between 1-D images (n,1,1,1) and `data` (sorted images against data's quantiles at (i + 1/2)/n)."""
    n = images.numel()
    p = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    return (images.flatten().double().sort().values - data.quantile(p)).abs().mean().item()


def test_the_walks_consistency_function_has_zero_loss_and_samples_as_well_as_its_teacher_in_fewer_steps():
    """With an exact teacher (a Gaussian mixture's x0 network) walking 8 DDIM steps: the network that maps each point
    to its walk's end has zero loss, and the teacher as its own consistency function a clearly positive one. Walked
    with DDIM in 1 step it gives the teacher's 8-step images exactly; in 2 and 4 steps (every 4th, 2nd timestep) its
    re-noised points leave the teacher's trajectories, and the images are no farther from the data than the teacher's
    8-step images and less than half as far as the teacher's own 2- and 4-step walks."""
    schedule, objective = linear(), DDPM(prediction="x0")
    walk = schedule.timesteps(8, "trailing")
    teacher, student = teacher_as_module(objective, schedule), oracle_consistency(objective, schedule, walk)
    loss = ConsistencyLoss(teacher, walk, clip_x0=False)
    x0 = MIXTURE.quantile(torch.rand(512, generator=torch.Generator().manual_seed(0))).view(-1, 1, 1, 1).float()
    at_zero = loss(student, objective, schedule, x0, torch.Generator().manual_seed(1))
    as_own_student = loss(teacher, objective, schedule, x0, torch.Generator().manual_seed(1))
    assert as_own_student > 1e-2 and at_zero < 1e-4 * as_own_student, (at_zero, as_own_student)
    ddim, exact = sampler_from_yaml("ddim"), objective_denoiser(objective, schedule, MIXTURE)
    x_T = torch.randn(2000, 1, 1, 1, generator=torch.Generator().manual_seed(2))
    teacher_images = ddim(exact, schedule, x_T.double(), walk)
    model = DiffusionModel(student, objective, schedule, (1, 1, 1))
    one_step = ddim(ModelDenoiser(model), schedule, x_T, walk[::8])
    torch.testing.assert_close(one_step.double(), teacher_images, atol=2e-5, rtol=1e-5)
    for k in (2, 4):
        images = ddim(ModelDenoiser(model), schedule, x_T, walk[::8 // k])
        own_walk = ddim(exact, schedule, x_T.double(), walk[::8 // k])
        assert w1_to(MIXTURE, images) <= w1_to(MIXTURE, teacher_images) < 0.5 * w1_to(MIXTURE, own_walk), k


def test_the_heun_walks_consistency_function_has_zero_loss_only_when_the_teacher_steps_with_heun():
    """The network that maps each point of an 8-step walk to the end of the exact teacher's Heun walk from there: zero
    loss when the loss steps the teacher with Heun, a clearly positive one when it steps with DDIM."""
    schedule, objective = linear(), DDPM(prediction="x0")
    walk = schedule.timesteps(8, "trailing")
    teacher, heun = teacher_as_module(objective, schedule), TEACHER_STEPS["heun"]
    rest = {t: walk[i:] for i, t in enumerate(walk[:-1])}

    def network(x, time):  # DDPM's x0 objective: the time input is the timestep, the output is x0
        out = torch.zeros_like(x)
        for t in time.unique().tolist():
            m, x_m = time == t, x[time == t]
            for a, b in zip(rest[t], rest[t][1:]):
                full = torch.full((len(x_m),), 1.0, dtype=torch.float64)
                x_m = heun(teacher, objective, schedule, x_m, a * full, b * full, None, False)
            out[m] = x_m
        return out

    student = Wrapped(network)
    x0 = MIXTURE.quantile(torch.rand(512, generator=torch.Generator().manual_seed(0))).view(-1, 1, 1, 1).float()
    losses = {solver: ConsistencyLoss(teacher, walk, False, solver)(student, objective, schedule, x0,
                                                                    torch.Generator().manual_seed(1))
              for solver in ("heun", "ddim")}
    assert losses["ddim"] > 1e-3 and losses["heun"] < 1e-3 * losses["ddim"], losses


@pytest.mark.parametrize("solver, order", [("ddim", 1.0), ("heun", 2.0)])
def test_the_teachers_step_converges_at_its_order(solver, order):
    """The teacher's walk taken with the step the loss uses, on the mixture's exact x0 network (linear schedule,
    logSNR-uniform walks of 8 to 64 steps): its RMS distance to the ODE's answer falls as steps^-order, first order
    for DDIM and second for Heun in rho (within 0.25), and Heun's 16 steps (31 evaluations) beat DDIM's 32. (On
    trailing walks Heun's measured order is lower, 1.2-1.5 up to 128 steps: their last step to the data is long.)"""
    schedule, objective = linear(), DDPM(prediction="x0")
    teacher = teacher_as_module(objective, schedule)
    x_T = torch.randn(2000, 1, 1, 1, generator=torch.Generator().manual_seed(3))
    answer = ode_answer(schedule, objective_denoiser(objective, schedule, MIXTURE), x_T.double())

    def walk(step, n):
        x, ts = x_T, torch.tensor(schedule.timesteps(n, "logsnr"), dtype=torch.float64)
        for t, t_next in zip(ts, ts[1:]):
            x = step(teacher, objective, schedule, x, t.expand(2000), t_next.expand(2000), None, False)
        return (x.double() - answer).pow(2).mean().sqrt().item()

    steps = [8, 16, 32, 64]
    errors = [walk(TEACHER_STEPS[solver], n) for n in steps]
    assert abs(fitted_order(steps, errors) - order) < 0.25, errors
    if solver == "heun":
        assert errors[1] < walk(TEACHER_STEPS["ddim"], 32), errors


def test_pseudo_huber_is_zero_at_equal_images_and_near_the_l2_norm_far_from_them():
    a = torch.zeros(3, 1, 28, 28)
    b = a.clone()
    b[1] += 0.5  # ||a - b|| = 14
    d = pseudo_huber(a, b)
    assert d[0].abs() < 1e-6 and d[2].abs() < 1e-6 and abs(d[1].item() - (14.0 - 0.00054 * 28)) < 1e-3


def test_a_curriculum_trains_each_walk_for_an_equal_share_of_the_run_by_the_step_alone():
    """Three walks over a 9-step run: steps 1-3, 4-6, 7-9 (and any later step: the last walk); a 10-step run splits
    at 4 and 7. The step and the run's end alone pick the loss, so a resumed run takes the same ones."""
    schedule, objective = linear(), DDPM(prediction="x0")
    teacher = teacher_as_module(objective, schedule)
    losses = [ConsistencyLoss(teacher, schedule.timesteps(n, "trailing"), clip_x0=False) for n in (2, 4, 8)]
    curriculum = Curriculum(losses)
    assert [curriculum.stage(step, 9) for step in range(1, 12)] == [0, 0, 0, 1, 1, 1, 2, 2, 2, 2, 2]
    assert [curriculum.stage(step, 10) for step in range(1, 11)] == [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert curriculum.at(1, 9) is losses[0] and curriculum.at(9, 9) is losses[2] and curriculum.teacher is teacher


@pytest.fixture(scope="module")
def consistency_run(tmp_path_factory, data_root):
    cwd = tmp_path_factory.mktemp("consistency")
    cli_in_process("train", *TINY_TRAIN, "hydra.run.dir=teacher", cwd=cwd)
    cli_in_process("distill", "ckpt=teacher", *DISTILL[:-1], "hydra.run.dir=c", cwd=cwd)  # the default method
    return cwd


def test_one_consistency_student_walks_every_step_count_it_records(consistency_run, tmp_path):
    walk = linear().timesteps(4, "trailing")
    folder = consistency_run / "c" / "consistency"
    record = metadata_config(load_checkpoint(folder)[1])["distill"]
    assert (record["method"], record["steps"], record["timesteps"], record["walks"]) == \
        ("consistency", 4, walk, [1, 2, 4])
    assert json.loads((folder / "student.json").read_text())["seconds"] > 0
    # one student for every step count, and the default's halving round (halve_walks=auto: [2]): a 1-step student
    assert [p.name for p in (consistency_run / "c").glob("steps_*")] == ["steps_1"]
    halved = metadata_config(load_checkpoint(consistency_run / "c" / "steps_1")[1])["distill"]
    assert (halved["method"], halved["teacher_steps"], halved["steps"], halved["timesteps"]) == \
        ("progressive", 2, 1, walk[::4])
    assert halved["teacher"] == str(folder / "checkpoints" / "last.safetensors")
    manifest = json.loads((consistency_run / "c" / "distill.json").read_text())
    assert (manifest["halve_walks"], manifest["halve_share"]) == ([2], 0.15)
    for k in (1, 2, 4):
        cli_in_process("sample", f"ckpt={folder}", f"steps={k}", "n=3", f"hydra.run.dir=s{k}", cwd=tmp_path)
        sampled = json.loads((tmp_path / f"s{k}" / "sampling.json").read_text())
        assert (sampled["sampler"], sampled["spacing"], sampled["timesteps"], sampled["nfe_per_image"]) == \
            ("ddim", "distilled", walk[::4 // k], k)
    proc = cli_in_process("sample", f"ckpt={folder}", "steps=3", "n=2", "hydra.run.dir=s3", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "is a student distilled for 1, 2, 4 steps (consistency distillation)" in \
        proc.stderr and "pass steps=1 or steps=2 or steps=4" in proc.stderr
    assert not (tmp_path / "s3" / "samples.npz").exists()


HALVE_4 = (*DISTILL[:-1], "halve_walks=[4]")  # the consistency student's whole 4-step walk halved into steps_2/


@pytest.fixture(scope="module")
def halved_run(consistency_run):
    """`diffuse distill HALVE_4` of the teacher into consistency_run/hv: (its output)."""
    return cli_in_process("distill", "ckpt=teacher", *HALVE_4, "hydra.run.dir=hv", cwd=consistency_run)


def test_halve_walks_trains_a_progressive_student_from_the_consistency_students_walk(consistency_run, halved_run,
                                                                                    tmp_path):
    """halve_walks=[4] over a 4-step walk (no search here: the 4-step walk is the whole walk): after the consistency
    student, a progressive round halves its walk into a 2-step student in steps_2/, started from that student, whose
    record names it as teacher; `diffuse sample steps=2` walks every other timestep of the halved walk, and the
    consistency student still walks 1, 2 and 4 steps."""
    proc = halved_run
    walk = linear().timesteps(4, "trailing")
    consistency = consistency_run / "hv" / "consistency" / "checkpoints" / "last.safetensors"
    assert "halving the consistency student's 4-step walk [999" in proc.stdout, proc.stdout
    assert "with an adversarial term of weight 0.5" in proc.stdout, proc.stdout  # the default halve_adversarial
    assert "the student for each step count: 1: consistency/, 2: steps_2/, 4: consistency/" in proc.stdout, proc.stdout
    halved, meta = load_checkpoint(consistency_run / "hv" / "steps_2")
    record = metadata_config(meta)["distill"]
    assert (record["method"], record["steps"], record["teacher_steps"], record["timesteps"], record["walks"]) == \
        ("progressive", 2, 4, walk[::2], [2])
    assert record["teacher"] == str(consistency) and (record["round"], record["rounds"]) == (2, 2)
    assert record["adversarial"] == 0.5
    assert int(meta["step"]) == 3 and json.loads((consistency_run / "hv" / "steps_2" / "student.json").read_text())
    teacher = {k: v for k, v in load_checkpoint(consistency)[0].items() if not k.startswith("disc.")}  # its own
    critic = {k for k in halved if k.startswith("disc.")}  # the round's critic and its Adam moments: a resume's
    assert {k.split(".")[1] for k in critic} == {"weights", "optim"}
    assert sorted(set(halved) - critic) == sorted(teacher)
    assert any(not torch.equal(halved[k], teacher[k]) for k in teacher)
    assert json.loads((consistency_run / "hv" / "distill.json").read_text())["halve_walks"] == [4]
    cli_in_process("sample", f"ckpt={consistency_run / 'hv' / 'steps_2'}", "steps=2", "n=3", "hydra.run.dir=s",
                   cwd=tmp_path)
    sampled = json.loads((tmp_path / "s" / "sampling.json").read_text())
    assert (sampled["spacing"], sampled["timesteps"], sampled["nfe_per_image"]) == ("distilled", walk[::2], 2)
    cli_in_process("sample", f"ckpt={consistency_run / 'hv' / 'consistency'}", "steps=4", "n=2", "hydra.run.dir=c4",
                   cwd=tmp_path)


def test_a_halving_round_resumes_with_its_critic_exactly(consistency_run, halved_run, tmp_path):
    """A halving round stopped after its first step (its step_0000001 checkpoint as last, no student.json) resumes
    from it, critic and critic's Adam moments included, to the student, critic and moments of the unbroken round,
    bitwise. A resume with another halve_adversarial is refused (the manifest records the weight)."""
    args = ("ckpt=" + str(consistency_run / "teacher"), *HALVE_4)
    shutil.copytree(consistency_run / "hv", tmp_path / "cut")
    round_dir = tmp_path / "cut" / "steps_2"
    (round_dir / "student.json").unlink()
    (round_dir / "checkpoints" / "step_0000001.safetensors").replace(round_dir / "checkpoints" / "last.safetensors")
    proc = cli_in_process("distill", *args, "halve_adversarial=0.25", f"resume={tmp_path / 'cut'}",
                          "hydra.run.dir=again", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "that distillation was made with halve_adversarial=0.5" in proc.stderr
    cli_in_process("distill", *args, f"resume={tmp_path / 'cut'}", "hydra.run.dir=again", cwd=tmp_path)
    straight, resumed = (load_checkpoint(d / "steps_2")[0] for d in (consistency_run / "hv", tmp_path / "cut"))
    assert sorted(straight) == sorted(resumed) and any(k.startswith("disc.optim.") for k in straight)
    different = [k for k in straight if not torch.equal(straight[k], resumed[k])]
    assert not different, different[:5]


def test_distill_refuses_an_unknown_method(consistency_run):
    proc = cli_in_process("distill", "ckpt=teacher", "method=magic", "hydra.run.dir=refused", cwd=consistency_run,
                          check=False)
    assert proc.returncode == 2 and "method='magic' is not a distillation method; allowed: progressive, consistency" \
        in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_a_curriculum_distillation_trains_its_short_walks_first_and_records_them(consistency_run, tmp_path):
    """teacher_steps_start=2 with teacher_steps=4: the run's first half walks 2 teacher steps, its second 4. The
    student walks 1, 2 and 4 steps as without the curriculum, records the curriculum, and its weights differ from the
    same distillation's without it (same seed, data and steps): the training loop took the short walk's loss."""
    proc = cli_in_process("distill", "ckpt=teacher", *DISTILL[:-1], "teacher_steps_start=2", "hydra.run.dir=cur",
                          cwd=consistency_run)
    assert "over its 2 -> 4-step walk, each for an equal share of the run" in proc.stdout, proc.stdout
    assert "a student of 1, 2, 4 steps, with an adversarial term of weight 2" in proc.stdout  # one critic, both walks
    folder = consistency_run / "cur" / "consistency"
    record = metadata_config(load_checkpoint(folder)[1])["distill"]
    assert (record["teacher_steps_start"], record["walks"], record["timesteps"]) == \
        (2, [1, 2, 4], linear().timesteps(4, "trailing"))
    assert json.loads((consistency_run / "cur" / "distill.json").read_text())["teacher_steps_start"] == 2
    with_, without = load_checkpoint(folder)[0], load_checkpoint(consistency_run / "c" / "consistency")[0]
    assert sorted(with_) == sorted(without) and any(not torch.equal(with_[k], without[k]) for k in with_)
    assert any(k.startswith("disc.optim.") for k in with_)
    cli_in_process("sample", f"ckpt={folder}", "steps=2", "n=2", "hydra.run.dir=s2", cwd=tmp_path)


def test_the_consistency_run_trains_a_critic_beside_its_student_unless_adversarial_is_0(consistency_run):
    """By default (adversarial: null, consistency's own 2) the consistency run's loss has the critic's term: its record
    and distill.json say so, and its checkpoint keeps the critic (and its Adam moments) beside the student. With
    adversarial=0 (and no halving round) the student has no critic, and its weights differ from the default's (same
    seed, data and steps)."""
    default = consistency_run / "c" / "consistency"
    tensors, meta = load_checkpoint(default)
    assert metadata_config(meta)["distill"]["adversarial"] == 2.0
    assert json.loads((consistency_run / "c" / "distill.json").read_text())["adversarial"] == 2.0
    critic = {k for k in tensors if k.startswith("disc.")}
    assert {k.split(".")[1] for k in critic} == {"weights", "optim"}
    proc = cli_in_process("distill", "ckpt=teacher", *DISTILL[:-1], "halve_walks=[]", "adversarial=0",
                          "hydra.run.dir=plain", cwd=consistency_run)
    assert "adversarial term" not in proc.stdout, proc.stdout
    plain, meta = load_checkpoint(consistency_run / "plain" / "consistency")
    assert "adversarial" not in metadata_config(meta)["distill"]
    assert sorted(plain) == sorted(set(tensors) - critic)
    assert any(not torch.equal(tensors[k], plain[k]) for k in plain)


def test_a_searched_walk_is_chosen_by_fid_recorded_in_the_checkpoint_and_walked_by_sample(consistency_run, eval_cache,
                                                                                        tmp_path):
    """search_walks=auto (MNIST has labels: [2]) over a 4-step walk: after training, the 3 possible 2-step walks
    (turning at each inner timestep) are scored by FID against the training split; the lowest is written into the
    student's checkpoint, which `diffuse sample steps=2` then walks (as any valid walk_at it holds), while steps=1
    and 4 walk as before; train.max_minutes covers the search (3 walks expected: it times one first), and one the
    search would use up is refused. A damaged walk_at is refused. A distillation stopped in the search resumes to the
    search alone (no training step), and may change search_n to do so."""
    args = [a for a in DISTILL[:-1] if not a.startswith(("search_walks", "train.max_minutes"))]
    proc = cli_in_process("distill", "ckpt=teacher", *args, "search_walks=auto", "search_n=8", "hydra.run.dir=no",
                          "train.max_minutes=0.0001", cwd=consistency_run, env=cached(eval_cache), check=False)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert ("train.max_minutes=0.0001 covers the walk search, and leaves the consistency run no time: of its share, "
            "0.0051 s, the search of 3 walks of search_n=8 images is expected to take") in proc.stderr  # timed first
    assert not (consistency_run / "no" / "consistency").exists()
    proc = cli_in_process("distill", "ckpt=teacher", *args, "search_walks=auto", "search_n=8", "hydra.run.dir=sw",
                          "train.max_minutes=5", cwd=consistency_run, env=cached(eval_cache))
    assert "search_walks: the 2-step walk goes through" in proc.stdout + proc.stderr
    assert "train.max_minutes=5 covers the walk search: 3 walks of 8 images, expected" in proc.stdout + proc.stderr
    folder, walk = consistency_run / "sw" / "consistency", linear().timesteps(4, "trailing")
    student = json.loads((folder / "student.json").read_text())
    searched = student["search_walks"]["2"]
    assert list(student["search_walks"]) == ["2"] and (searched["n"], searched["seed"]) == (8, 1)
    fids = {tuple(c["timesteps"]): c["fid"] for c in searched["fid_of"]}
    assert sorted(fids) == sorted((walk[0], t, -1) for t in walk[1:-1])  # every turn, each scored once
    best = min(fids, key=fids.get)
    assert tuple(searched["timesteps"]) == best and searched["fid"] == fids[best] == min(fids.values())
    assert searched["start_fid"] == fids[(walk[0], walk[2], -1)]
    tensors, metadata = load_checkpoint(folder)
    record = metadata_config(metadata)["distill"]
    assert record["walk_at"] == {"2": list(best)} and record["walks"] == [1, 2, 4]
    for k, expected in ((2, list(best)), (1, walk[::4]), (4, walk)):
        cli_in_process("sample", f"ckpt={folder}", f"steps={k}", "n=2", f"hydra.run.dir=s{k}", cwd=tmp_path)
        assert json.loads((tmp_path / f"s{k}" / "sampling.json").read_text())["timesteps"] == expected, k
    config = metadata_config(metadata)
    for turn in walk[1:-1]:  # whichever turn the search found, sample walks the one walk_at holds
        config["distill"]["walk_at"] = {"2": [walk[0], turn, -1]}
        save_checkpoint([tmp_path / "turn.safetensors"], tensors, {**metadata, "config": json.dumps(config)})
        cli_in_process("sample", f"ckpt={tmp_path / 'turn.safetensors'}", "steps=2", "n=2", "hydra.run.dir=turn",
                       cwd=tmp_path)
        assert json.loads((tmp_path / "turn" / "sampling.json").read_text())["timesteps"] == [walk[0], turn, -1]
    for damaged, expected in (([walk[0], 123.0, -1], "walk_at[2] must be 2 of its distilled timesteps from the first"),
                              ([walk[0], -1], "walk_at[2]): its timesteps must be 2 strictly decreasing values")):
        config["distill"]["walk_at"] = {"2": damaged}  # not a timestep it was distilled on; one step
        save_checkpoint([tmp_path / "damaged.safetensors"], tensors, {**metadata, "config": json.dumps(config)})
        proc = cli_in_process("sample", f"ckpt={tmp_path / 'damaged.safetensors'}", "steps=2", "n=2",
                              "hydra.run.dir=bad", cwd=tmp_path, check=False)
        assert proc.returncode == 2 and "damaged distill record in its metadata (" in proc.stderr, proc.stderr
        assert expected in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    del student["search_walks"]  # as if stopped in the search, after the student's last step
    (folder / "student.json").write_text(json.dumps(student))
    proc = cli_in_process("distill", "ckpt=teacher", *args, "search_walks=[2]", "search_n=6",
                          f"resume={consistency_run / 'sw'}", cwd=consistency_run, env=cached(eval_cache))
    assert "consistency: the student is trained; choosing its 2-step walk" in proc.stdout + proc.stderr
    assert "  loss " not in proc.stdout + proc.stderr  # no training step
    again = json.loads((folder / "student.json").read_text())["search_walks"]["2"]
    assert again["n"] == 6 and len(again["fid_of"]) == 3
    assert load_checkpoint(folder)[1]["step"] == metadata["step"] == "3"
    assert json.loads((consistency_run / "sw" / "distill.json").read_text())["search_n"] == 6


def test_a_stop_signal_ends_the_walk_search_after_the_walk_being_scored(consistency_run):
    """A signal received during the search (the StopRequest's flag set): the walk being scored finishes, then the
    search stops with the resume command, scoring no other walk."""
    import signal
    import types

    from diffuse.distill import ddim_node
    from diffuse.distributed import World
    from diffuse.generate import GenerationOptions
    from diffuse.metrics import gaussian_stats
    from diffuse.stop import StopRequest, TrainingInterrupted
    from diffuse.student_walks import scorer, search_walk

    loaded = load_model(consistency_run / "c" / "consistency", "ema")
    job = types.SimpleNamespace(world=World(), config={"sampler": ddim_node()}, device=torch.device("cpu"),
                                resume_command="diffuse distill resume=THERE")
    scored = []

    def extractor(images):  # (n,H,W,C) uint8 -> (n,D): the images' own pixels stand in for the classifier's features
        scored.append(len(images))
        return torch.from_numpy(images).reshape(len(images), -1)[:, :16].double(), None

    noise = torch.randn(64, 16, generator=torch.Generator().manual_seed(0))
    reference = types.SimpleNamespace(stats=gaussian_stats(noise))
    generation = GenerationOptions(n=6, batch_size=6, steps=2, seed=1, precision="fp32", clip_x0=True,
                                   dynamic_threshold=0.0, guidance=1.0, guidance_rescale=0.0)
    ts = loaded.config["distill"]["timesteps"]
    fid = scorer(job, loaded.model, lambda k: generation, extractor, reference, StopRequest())
    found = search_walk(fid, ts, 2, generation)
    assert len(found["fid_of"]) == 3 and scored == [6, 6, 6]  # no signal: every turn scored
    stop, scored[:] = StopRequest(), []
    stop.signal = signal.SIGTERM
    with pytest.raises(TrainingInterrupted, match=r"stopped by SIGTERM in the walk search \(the student is trained\)\. "
                                                  r"Resume with: diffuse distill resume=THERE"):
        search_walk(scorer(job, loaded.model, lambda k: generation, extractor, reference, stop), ts, 2, generation)
    assert scored == [6]

