"""Progressive distillation: its loss on exact answers (a student at zero loss walks where its teacher walks in twice
the steps), and `diffuse distill` through the real CLI: students that sample and evaluate as ordinary checkpoints,
a signal and an exact resume, and its refusals."""

import json
import math
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from conftest import DATA_ROOT, TINY_TRAIN, cached, cli_in_process, run_cli, sampler_from_yaml
from diffuse import DiffuseError
from diffuse.checkpoint import load_checkpoint, metadata_config
from diffuse.denoiser import DiffusionModel, ModelDenoiser
from diffuse.features.cache import sha256
from diffuse.objectives.ddpm import DDPM
from diffuse.progressive import ProgressiveLoss, halve
from diffuse.report import collect
from diffuse.schedules.linear import linear
from exact import GaussianMixture, exact_network, objective_denoiser

MIXTURE = GaussianMixture(weights=[0.3, 0.7], means=[-0.6, 0.5], stds=[0.15, 0.25])


class Wrapped(nn.Module):
    """A function (x, time, labels) -> output as a network module."""

    def __init__(self, fn):
        super().__init__()
        self.fn, self.conditional, self.num_classes = fn, False, 0

    def forward(self, x, time, labels=None):
        return self.fn(x, time).float()


def oracle_student(objective, schedule, teacher_walk: list[float]) -> nn.Module:
    """The x0-predicting network whose one DDIM step from each student timestep lands where the teacher's two DDIM
    steps land (found by walking the teacher with the DDIM sampler itself, then inverting one DDIM step)."""
    ddim, teacher = sampler_from_yaml("ddim"), objective_denoiser(objective, schedule, MIXTURE)
    student_walk = halve(teacher_walk)
    nxt, mid = dict(zip(student_walk, student_walk[1:])), dict(zip(teacher_walk[::2], teacher_walk[1::2]))

    def network(x, time):  # DDPM's x0 objective: the time input is the timestep, the output is x0
        out = torch.zeros_like(x, dtype=torch.float64)
        for t in time.unique().tolist():
            m = time == t
            x_next = ddim(teacher, schedule, x[m].double(), [t, mid[t], nxt[t]])
            alpha, sigma = schedule.alpha(t).item(), schedule.sigma(t).item()
            alpha_n, sigma_n = schedule.alpha(nxt[t]).item(), schedule.sigma(nxt[t]).item()
            # x_next = alpha_n x0 + sigma_n (x - alpha x0) / sigma, solved for x0
            out[m] = (x_next - sigma_n / sigma * x[m].double()) / (alpha_n - sigma_n / sigma * alpha)
        return out

    return Wrapped(network)


def teacher_as_module(objective, schedule) -> nn.Module:
    """The mixture's exact x0 network (a DDPM x0 objective: the output is x0) for per-example times."""
    network = exact_network(objective, schedule, MIXTURE)
    return Wrapped(lambda x, time: network(x, time.double()))


def test_a_student_at_zero_loss_walks_in_n_steps_where_its_teacher_walks_in_2n():
    """With an exact teacher (a Gaussian mixture's x0 network): the student that takes each pair of teacher steps
    in one has zero loss, and it samples (DDIM on the halved walk) the teacher's 2N-step images; the teacher as its
    own student (one step where it should take two) has a clearly positive loss."""
    schedule, objective = linear(), DDPM(prediction="x0")
    walk = schedule.timesteps(8, "trailing")
    teacher, student = teacher_as_module(objective, schedule), oracle_student(objective, schedule, walk)
    loss = ProgressiveLoss(teacher, walk, clip_x0=False)
    x0 = MIXTURE.quantile(torch.rand(512, generator=torch.Generator().manual_seed(0))).view(-1, 1, 1, 1).float()
    at_zero = loss(student, objective, schedule, x0, torch.Generator().manual_seed(1))
    as_own_student = loss(teacher, objective, schedule, x0, torch.Generator().manual_seed(1))
    assert as_own_student > 1e-3 and at_zero < 1e-6 * as_own_student, (at_zero, as_own_student)
    ddim = sampler_from_yaml("ddim")
    x_T = torch.randn(256, 1, 1, 1, generator=torch.Generator().manual_seed(2))
    teacher_images = ddim(objective_denoiser(objective, schedule, MIXTURE), schedule, x_T.double(), walk)
    model = DiffusionModel(student, objective, schedule, (1, 1, 1))
    student_images = ddim(ModelDenoiser(model), schedule, x_T, halve(walk))
    torch.testing.assert_close(student_images.double(), teacher_images, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("walk", [[999.0, -1], [999.0, 500.0, 200.0, -1], [999.0]])
def test_a_walk_that_cannot_be_halved_is_refused(walk):
    with pytest.raises(DiffuseError, match="cannot be halved"):
        halve(walk)


DISTILL = ("teacher_steps=4", "student_steps=1", "train.steps=3", "train.max_minutes=0", "train.batch_size=8",
           "train.precision=fp32", "train.lr_decay=none", "train.ckpt_every=1", "train.log_every=1", "search_walks=[]",
           "method=progressive")


@pytest.fixture(scope="module")
def distilled(tmp_path_factory, data_root):
    cwd = tmp_path_factory.mktemp("distill")
    cli_in_process("train", *TINY_TRAIN, "hydra.run.dir=teacher", cwd=cwd)
    cli_in_process("distill", "ckpt=teacher", *DISTILL, "hydra.run.dir=d", cwd=cwd)
    return cwd


def test_distill_writes_students_that_sample_and_evaluate_as_checkpoints(distilled, eval_cache, tmp_path):
    teacher = distilled / "teacher" / "checkpoints" / "last.safetensors"
    walk = linear().timesteps(4, "trailing")
    manifest = json.loads((distilled / "d" / "distill.json").read_text())
    assert manifest["teacher_sha256"] == sha256(teacher) and manifest["teacher_timesteps"] == walk
    for n, ts, taught_by in ((2, halve(walk), "teacher"), (1, halve(halve(walk)), "steps_2")):
        _, meta = load_checkpoint(distilled / "d" / f"steps_{n}")
        record = metadata_config(meta)["distill"]
        assert (record["method"], record["steps"], record["teacher_steps"], record["timesteps"]) == \
            ("progressive", n, 2 * n, ts)
        assert record["teacher"].endswith(f"{taught_by}/checkpoints/last.safetensors")
        assert record["first_teacher_sha256"] == sha256(teacher) and int(meta["step"]) == 3
        assert json.loads((distilled / "d" / f"steps_{n}" / "student.json").read_text())["seconds"] > 0
    cli_in_process("sample", f"ckpt={distilled / 'd' / 'steps_2'}", "steps=2", "n=3", "hydra.run.dir=s", cwd=tmp_path)
    record = json.loads((tmp_path / "s" / "sampling.json").read_text())
    assert (record["sampler"], record["spacing"], record["timesteps"], record["nfe_per_image"]) == \
        ("ddim", "distilled", halve(walk), 2)
    cli_in_process("eval", f"ckpt={distilled / 'd' / 'steps_1'}", "steps=1", "n=20", "kid_subset_size=10",
                   "hydra.run.dir=ev", cwd=tmp_path, env=cached(eval_cache))
    scores = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert scores["nfe"] == 1 and math.isfinite(scores["metrics"]["fid"])
    assert scores["timesteps"] == halve(halve(walk))  # the walk the student took
    rows, _ = collect(tmp_path / "ev")  # diffuse report: the students' line is apart from the teacher's DDIM
    assert [(r["sampler"], r["spacing"], r["nfe"]) for r in rows] == [("ddim", "distilled (progressive)", 1)]


@pytest.mark.parametrize("args,expected", [
    (("steps=3",), "is a student distilled for 2 steps (progressive distillation), trained for those timesteps only: "
                   "pass steps=2"),
    (("steps=2", "sampler=dpmpp_2m"), "is a distilled student: it walks DDIM at the timesteps it was distilled for; "
                                      "leave out sampler"),
])
def test_a_student_refuses_other_step_counts_and_samplers(distilled, tmp_path, args, expected):
    proc = cli_in_process("sample", f"ckpt={distilled / 'd' / 'steps_2'}", *args, "n=2", "hydra.run.dir=s", cwd=tmp_path,
                          check=False)
    assert proc.returncode == 2 and expected in proc.stderr and not (tmp_path / "s" / "samples.npz").exists()


@pytest.mark.parametrize("args,expected", [
    (("ckpt=teacher", "teacher_steps=6"), "teacher_steps must be student_steps times a power of 2"),
    (("ckpt=teacher", "student_steps=3"), "teacher_steps must be student_steps times a power of 2"),
    (("ckpt=teacher", "spacing=sideways"), "spacing='sideways' is not a spacing; allowed:"),
    (("ckpt=teacher", "teacher_solver=rk4"), "teacher_solver='rk4' is not a teacher's solver; allowed: ddim, heun"),
    (("ckpt=teacher", "teacher_steps=4", "teacher_steps_start=3"),
     "teacher_steps_start=3 must be teacher_steps=4 divided by a power of 2 (the walk doubles up to it), or null"),
    (("ckpt=teacher", "teacher_steps=4", "teacher_steps_start=4"), "teacher_steps_start=4 must be teacher_steps=4"),
    (("ckpt=teacher", "method=progressive", "teacher_steps_start=2"),
     "teacher_steps_start=2 is consistency distillation's curriculum; method=progressive halves its walk in rounds"),
    (("ckpt=teacher", "teacher_steps=4", "search_walks=[1]"),
     "search_walks=[1]: 1 is not a step count with a timestep to choose; allowed: 2"),
    (("ckpt=teacher", "teacher_steps=4", "search_walks=[4]"), "search_walks=[4]: 4 is not a step count with a"),
    (("ckpt=teacher", "teacher_steps=8", "search_walks=[2,3]"),
     "search_walks=[2, 3]: 3 is not a step count with a timestep to choose; allowed: 2, 4"),
    (("ckpt=teacher", "search_walks=abc"),
     "search_walks='abc' must be a list of step counts, e.g. [2] or [2,4], or auto"),
    (("ckpt=teacher", "teacher_steps=4", "method=progressive", "search_walks=[2]"),
     "search_walks=[2] chooses the walks of a consistency student; method=progressive's students walk"),
    (("ckpt=teacher", "teacher_steps=4", "search_walks=[2]", "search_n=1"),
     "search_n=1 must be an integer >= 2 (images per walk the search scores)"),
    (("ckpt=teacher", "method=progressive", "halve_walks=[2]"),
     "halve_walks=[2] halves a consistency student's walks; method=progressive halves its walk in every round"),
    (("ckpt=teacher", "teacher_steps=4", "halve_walks=[3]"),
     "halve_walks=[3]: 3 is not an even step count the consistency student walks; allowed: 2, 4"),
    (("ckpt=teacher", "teacher_steps=4", "halve_walks=[8]"), "halve_walks=[8]: 8 is not an even step count"),
    (("ckpt=teacher", "halve_walks=four"), "halve_walks='four' must be a list of step counts, e.g. [2] or [], or auto"),
    (("ckpt=teacher", "halve_walks=[2,4]", "halve_share=0.5"),
     "halve_share=0.5 must be a fraction of train.max_minutes above 0 and below 0.5 (each of the 2 halving "
     "round(s) trains that share; the consistency run, the rest)"),
    (("ckpt=teacher", "halve_share=0"), "halve_share=0.0 must be a fraction of train.max_minutes above 0 and below 1"),
    (("ckpt=teacher", "halve_adversarial=-0.1"),
     "halve_adversarial=-0.1 must be a finite weight >= 0 (the halving rounds' adversarial term; 0: none)"),
    (("ckpt=teacher", "halve_adversarial=inf"), "halve_adversarial=inf must be a finite weight >= 0"),
    (("ckpt=teacher", "adversarial=-1"),
     "adversarial=-1 must be a finite weight >= 0 (the consistency run's adversarial term; 0: none)"),
    (("ckpt=teacher", "method=progressive", "adversarial=0.5"),
     "adversarial=0.5 is a term of the consistency run's loss; method=progressive has none: leave it 0"),
    (("ckpt=d/steps_2",), "is itself a distilled student; distil its teacher"),
    (("ckpt=teacher", "teacher_steps=8", "method=progressive", "resume=d"),
     "resume=d: that distillation was made with teacher_steps=4"),
    (("ckpt=teacher", "resume=d"), "resume=d: that distillation was made with method='progressive'"),
    (("ckpt=teacher", "resume=teacher"), "resume=teacher: not a diffuse distill folder"),
    ((), "ckpt is required"),
])
def test_distill_refuses_bad_input_in_one_line(distilled, args, expected):
    proc = cli_in_process("distill", *args, "train.steps=1", "hydra.run.dir=refused", cwd=distilled, check=False)
    assert proc.returncode == 2 and expected in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (distilled / "refused" / "distill.json").exists()


def distill_options(*overrides: str):
    """DistillOptions as `diffuse distill OVERRIDES` builds them from conf/distill.yaml."""
    from hydra import compose, initialize_config_module

    from diffuse.config import options
    from diffuse.distill_options import DistillOptions

    with initialize_config_module(config_module="diffuse.conf", version_base="1.3"):
        return options(DistillOptions, compose(config_name="distill", overrides=list(overrides)), "", strict=False)


def test_each_method_takes_its_own_teacher_walk_and_critic_unless_one_is_given():
    """teacher_steps / teacher_solver / adversarial null: consistency walks the teacher 8 Heun steps with a critic of
    weight 2, progressive halves 16 DDIM steps without one (each method's measured best, distill_options.METHODS); a
    given value is kept (a weight as a float), and the walk and weight taken are recorded."""
    def walk(o):
        return o.teacher_steps, o.teacher_solver, o.walks

    assert walk(distill_options()) == (8, "heun", [1, 2, 4, 8])
    assert walk(distill_options("method=progressive")) == (16, "ddim", [1, 2, 4, 8])
    assert walk(distill_options("teacher_steps=16", "teacher_solver=ddim")) == (16, "ddim", [1, 2, 4, 8, 16])
    assert walk(distill_options("method=progressive", "teacher_solver=heun", "teacher_steps=4")) == (4, "heun", [1, 2])
    assert asdict(distill_options())["teacher_steps"] == 8  # what distill.json records, so a resume compares walks
    assert [distill_options(*o).adversarial for o in ((), ("method=progressive",), ("adversarial=1",),
                                                      ("adversarial=0",))] == [2.0, 0.0, 1.0, 0.0]
    assert asdict(distill_options())["adversarial"] == 2.0


def test_search_walks_auto_searches_two_and_four_steps_only_where_a_classifier_can_score_them():
    """auto: the 2- and 4-step walks a consistency student takes through a longer walk, on a data set with class
    labels; [] for a progressive one, or a data set without labels (where a list is refused); not 8 (not measured)."""
    labelled, unlabelled = SimpleNamespace(num_classes=10, name="mnist"), SimpleNamespace(num_classes=0, name="faces")
    assert distill_options().checked_search(labelled) == [2, 4] and distill_options().checked_search(unlabelled) == []
    assert distill_options("teacher_steps=16").checked_search(labelled) == [2, 4]  # not 8: not measured
    assert distill_options("teacher_steps=4").checked_search(labelled) == [2]  # 4 steps walk all 4: nothing to choose
    assert distill_options("student_steps=4").checked_search(labelled) == [4]  # no 2-step walk
    assert distill_options("teacher_steps=2").checked_search(labelled) == []
    for other in ("method=progressive", "search_walks=[]"):
        assert distill_options(other).checked_search(labelled) == [], other
    assert distill_options("search_walks=[4,2,4]").checked_search(labelled) == [2, 4]
    with pytest.raises(DiffuseError, match=r"search_walks=\[4, 2\] scores walks with the data set's domain "
                                           r"classifier, and 'faces' has no class labels: use search_walks=\[\]"):
        distill_options("search_walks=[4,2]").checked_search(unlabelled)


def test_halve_walks_auto_halves_the_two_step_walk_where_one_step_students_are_wanted():
    """auto: [2] where a consistency student walks 2 steps and 1 (student_steps=1: the halved walk is a student
    asked for), [] where the smallest student walks 2 or more, and for progressive distillation (every round
    halves already); a list is kept, and the resolved list is what distill.json records."""
    assert distill_options().halve_walks == [2] and distill_options().halve_share == 0.15
    assert distill_options("teacher_steps=2").halve_walks == [2]  # the teacher's walk itself, in 2 steps
    for other in ("student_steps=2", "student_steps=4", "method=progressive", "halve_walks=[]"):
        assert distill_options(other).halve_walks == [], other
    assert distill_options("halve_walks=[4,2]").halve_walks == [4, 2]
    assert asdict(distill_options())["halve_walks"] == [2]


def test_train_max_minutes_covers_the_walk_search(monkeypatch, tmp_path):
    """The consistency run trains what the halving rounds and the walk search leave of train.max_minutes: the search's
    expected seconds (search_seconds, which times a walk per step count) come off it, but not without a budget or a
    search, nor where the run has begun (a resumed run keeps its plan); a budget the search uses up is refused."""
    from diffuse import student_walks
    from diffuse.checkpoint import LAST
    from diffuse.distributed import World

    asked = []

    def timed(job, train_opts, walks, n):  # 17 walks expected to take 90 s
        asked.append((walks, n))
        return 90.0, 17

    monkeypatch.setattr(student_walks, "search_seconds", timed)
    job, folder = SimpleNamespace(search_walks=[2, 4], world=World()), tmp_path / "consistency"
    got = student_walks.training_minutes(job, distill_options(), folder)  # 10 minutes, a 0.15 halving round
    assert 10 * 0.85 - 1.5 - 0.01 < got <= 10 * 0.85 - 1.5 and asked == [([2, 4], 500)]
    assert 10 - 1.5 - 0.01 < student_walks.training_minutes(job, distill_options("halve_walks=[]"), folder) <= 8.5
    assert student_walks.training_minutes(job, distill_options("train.max_minutes=0"), folder) == 0
    nothing = SimpleNamespace(search_walks=[], world=World())
    assert student_walks.training_minutes(nothing, distill_options(), folder) == 10 * 0.85 and len(asked) == 2
    with pytest.raises(DiffuseError) as refused:
        student_walks.training_minutes(job, distill_options("train.max_minutes=1.5", "search_n=2000"), folder)
    message = str(refused.value)  # its share: 1.5 * 0.85 minutes; the timing's own seconds vary
    assert message.startswith("train.max_minutes=1.5 covers the walk search, and leaves the consistency run no time: "
                              "of its share, 76.5 s, the search of 17 walks of search_n=2000 images is expected to "
                              "take 90 s here and timing it took ")
    assert message.endswith(" s; raise train.max_minutes, lower search_n, or give search_walks=[]")
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "checkpoints" / LAST).write_bytes(b"")  # the run has begun: its plan stands
    assert student_walks.training_minutes(job, distill_options(), folder) == 10 * 0.85 and len(asked) == 3


def test_a_folder_written_before_teacher_solver_resumes_as_ddim(distilled, tmp_path):
    """distill.json gained teacher_solver later: a folder without it was walked with DDIM, so resuming it with the
    default goes on (its students are done: nothing to run), and with teacher_solver=heun is refused. Its halve_share,
    the default of its day, differs from today's and is not compared: without a halving round it is unused."""
    shutil.copytree(distilled / "d", tmp_path / "old")
    manifest = json.loads((tmp_path / "old" / "distill.json").read_text())
    del manifest["teacher_solver"]
    manifest["halve_share"] = 0.3
    (tmp_path / "old" / "distill.json").write_text(json.dumps(manifest))
    args = (f"ckpt={distilled / 'teacher'}", *DISTILL, f"resume={tmp_path / 'old'}")
    proc = cli_in_process("distill", *args, "teacher_solver=heun", "hydra.run.dir=r", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "that distillation was made with teacher_solver='ddim'" in proc.stderr, proc.stderr
    before = {n: load_checkpoint(tmp_path / "old" / f"steps_{n}")[0] for n in (2, 1)}
    cli_in_process("distill", *args, "hydra.run.dir=r", cwd=tmp_path)
    for n in (2, 1):
        after = load_checkpoint(tmp_path / "old" / f"steps_{n}")[0]
        assert all(torch.equal(before[n][key], after[key]) for key in after)


def test_a_signal_stops_a_round_and_resume_continues_it_exactly(distilled, tmp_path):
    """SIGINT in round 1 saves and names the command; that command (with train.steps set) finishes round 1 and
    runs round 2, and the students are bitwise those of an unbroken distillation of the same steps."""
    env = {k: v for k, v in __import__("os").environ.items() if k != "HYDRA_FULL_ERROR"}
    env["DIFFUSE_DATA_ROOT"] = str(DATA_ROOT)
    teacher = distilled / "teacher"
    args = [f"ckpt={teacher}", *DISTILL[:2], *DISTILL[3:]]
    proc = subprocess.Popen([sys.executable, "-m", "diffuse", "distill", *args, "train.steps=100000",
                             "hydra.run.dir=cut"], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "cut" / "steps_2" / "checkpoints" / "last.safetensors").exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    message = err.strip().splitlines()[-1]
    assert proc.returncode == 130 and "stopped by SIGINT" in message, err
    assert "diffuse distill" in message and f"resume={tmp_path / 'cut'}" in message
    stopped_at = int(load_checkpoint(tmp_path / "cut" / "steps_2")[1]["step"])
    assert not (tmp_path / "cut" / "steps_2" / "student.json").exists()
    steps = f"train.steps={stopped_at + 2}"
    run_cli("distill", *args, steps, f"resume={tmp_path / 'cut'}", "hydra.run.dir=again", cwd=tmp_path)
    run_cli("distill", *args, steps, "hydra.run.dir=straight", cwd=tmp_path)
    for n in (2, 1):
        a = load_checkpoint(tmp_path / "cut" / f"steps_{n}")[0]
        b = load_checkpoint(tmp_path / "straight" / f"steps_{n}")[0]
        assert sorted(a) == sorted(b)
        for key in a:
            assert torch.equal(a[key], b[key]), (n, key)
