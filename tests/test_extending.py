"""Adding a sampler, a model, a data set or an objective is one .py plus one YAML: this test drops the four
plug-ins of tests/plugins/ into a copy of the package (diffuse/<kind>/ and diffuse/conf/<group>/, nothing else
edited) and runs the generic tests, which find them by globbing the config groups: compose and build, exact
answers and the declared convergence order, the model contract through a checkpoint, the objective contract, the
CLI's listing, training and sampling."""

import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from conftest import REPO, TINY_TRAIN

PLUGINS = Path(__file__).resolve().parent / "plugins"
KINDS = {"mine_midpoint": ("samplers", "sampler"), "mine_net": ("models", "model"),
         "mine_blobs": ("datasets", "dataset"), "mine_score": ("objectives", "objective")}
# generic tests that must pick each plug-in up: (file, test function, plug-in)
EXPECTED = [
    ("test_config", "test_every_dataset_builds", "mine_blobs"),
    ("test_config", "test_every_model_builds_and_keeps_the_image_shape", "mine_net"),
    ("test_config", "test_every_objective_builds", "mine_score"),
    ("test_config", "test_every_sampler_builds_and_checks", "mine_midpoint"),
    ("test_samplers", "test_point_mass_is_recovered_exactly", "mine_midpoint"),
    ("test_samplers", "test_model_evaluations_are_what_the_sampler_declares", "mine_midpoint"),
    ("test_samplers", "test_gaussian_mixture_statistics_and_weights", "mine_midpoint"),
    ("test_samplers", "test_convergence_order_on_the_ode_path_is_the_declared_one", "mine_midpoint"),
    ("test_samplers", "test_zero_terminal_snr_schedules_sample_correctly_or_are_refused", "mine_midpoint"),
    ("test_conditional", "test_guidance_works_with_every_sampler", "mine_midpoint"),
    ("test_contracts", "test_every_model_keeps_the_contract_through_a_checkpoint", "mine_net"),
    ("test_objectives", "test_every_objective_reads_outputs_consistently_with_the_process", "mine_score"),
    ("test_objectives", "test_every_objective_draws_examples_from_its_generator_alone", "mine_score"),
    ("test_objectives", "test_every_objective_trains_on_the_process_it_declares", "mine_score"),
    ("test_objectives", "test_every_objective_read_through_its_exact_network_converges_at_the_samplers_order",
     "mine_score"),
    ("test_cli", "test_every_sampler_from_the_cli_records_what_it_ran", "mine_midpoint"),
    ("test_cli", "test_every_objective_trains_and_samples_from_the_cli", "mine_score"),
    ("test_cli", "test_help_lists_every_group_and_its_options", None),
]


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """A copy of the package as a wheel lays it out (configs in diffuse/conf), plus the four plug-ins."""
    root = tmp_path_factory.mktemp("tree")
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(REPO / "diffuse", root / "diffuse", ignore=ignore)
    shutil.copytree(REPO / "conf", root / "diffuse" / "conf", ignore=ignore)
    for name, (package, group) in KINDS.items():
        shutil.copy(PLUGINS / f"{name}.py", root / "diffuse" / package / f"{name}.py")
        shutil.copy(PLUGINS / f"{name}.yaml", root / "diffuse" / "conf" / group / f"{name}.yaml")
    return root


def run_in(tree: Path, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(tree)}  # the copy comes before the installed package
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=1500)


def test_the_generic_tests_pick_up_one_of_each_kind(tree, tmp_path, data_root):
    files = sorted({f for f, _, _ in EXPECTED})
    report = tmp_path / "report.xml"
    proc = run_in(tree, ["-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}",
                         "-k", "mine or help_lists", *[str(REPO / "tests" / f"{f}.py") for f in files]], cwd=tree)
    cases = ET.parse(report).getroot().iter("testcase")
    outcome = {f"{c.get('classname').split('.')[-1]}::{c.get('name')}":
               "failed" if c.find("failure") is not None or c.find("error") is not None
               else "skipped" if c.find("skipped") is not None else "passed" for c in cases}
    assert outcome and all(v == "passed" for v in outcome.values()), (
        {k: v for k, v in outcome.items() if v != "passed"}, proc.stdout[-3000:])
    for file, test, plugin in EXPECTED:
        found = [k for k in outcome if k.startswith(f"{file}::{test}") and (plugin is None or plugin in k)]
        assert found, f"{file}::{test} did not pick up {plugin}"


def test_a_run_made_only_of_plug_ins_trains_samples_and_evaluates(tree, tmp_path):
    train = [a for a in TINY_TRAIN if not a.startswith("model=")]
    for args in (["train", "model=mine_net", "dataset=mine_blobs", "objective=mine_score", "sampler=mine_midpoint",
                  "model.conditional=true", *train, "hydra.run.dir=run"],
                 ["sample", "ckpt=run", "sampler=mine_midpoint", "steps=4", "n=6", "guidance=2", "hydra.run.dir=s"],
                 ["eval", "ckpt=run", "n=8", "steps=3", "floor=false", "kid_subset_size=4", "classifier_steps=20",
                  "hydra.run.dir=e"]):
        proc = run_in(tree, ["-m", "diffuse", *args], cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
    import json

    import numpy as np

    with np.load(tmp_path / "s" / "samples.npz") as z:
        assert z["images"].shape == (6, 8, 8, 1) and z["labels"].tolist() == [0, 1, 0, 1, 0, 1]
    record = json.loads((tmp_path / "s" / "sampling.json").read_text())
    assert record["sampler"] == "mine_midpoint" and record["nfe_per_image"] == 2 * (2 * 4 - 1)  # guided: two each
    assert json.loads((tmp_path / "e" / "metrics.json").read_text())["features"]["name"] == "classifier"
