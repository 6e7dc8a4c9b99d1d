"""End to end through the real CLI: train a tiny model, sample from it, and refuse bad input cleanly."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file
from safetensors import safe_open

from conftest import TINY_TRAIN, cli_in_process, composed, group_options, run_cli, sampler_from_yaml
from diffuse.checkpoint import load_model


@pytest.fixture
def trained(tiny_run) -> Path:
    return tiny_run / "run"


def test_train_writes_a_complete_run_directory(trained):
    for name in (".hydra/config.yaml", ".hydra/overrides.yaml", "train.log", "metrics.csv",
                 "checkpoints/last.safetensors", "checkpoints/step_0000003.safetensors",
                 "checkpoints/step_0000006.safetensors", "samples/step_0000003.png", "samples/step_0000006.png"):
        assert (trained / name).is_file(), name
    rows = list(csv.DictReader(open(trained / "metrics.csv")))
    assert [int(r["step"]) for r in rows] == [2, 4, 6]
    assert set(rows[0]) == {"step", "loss", "lr", "images_per_s", "elapsed_s", "fid", "kid", "precision", "recall",
                            "classifier_score"}
    assert all(r["fid"] == "" for r in rows)  # train.eval_every is off by default
    assert all(float(r["loss"]) > 0 and float(r["images_per_s"]) > 0 for r in rows)
    assert "step 6/6" in (trained / "train.log").read_text()


def test_checkpoint_is_plain_safetensors_with_its_config(trained):
    path = trained / "checkpoints" / "last.safetensors"
    tensors = load_file(path)
    assert any(k.startswith("ema.") for k in tensors) and any(k.startswith("model.") for k in tensors)
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    assert meta["format"] == "diffuse.checkpoint/1" and meta["step"] == "6"
    config = json.loads(meta["config"])
    assert config["objective"] == {"_target_": "diffuse.objectives.ddpm.DDPM", "prediction": "eps", "loss_weight": "none",
                                   "snr_gamma": 5.0}
    assert config["model"]["_target_"] == "diffuse.models.unet.UNet" and config["model"]["channels"] == 16
    assert config["schedule"]["_target_"].startswith("diffuse.schedules.")
    assert config["dataset_shape"] == [1, 28, 28]


def test_sample_is_reproducible_and_batch_size_invariant(trained, tmp_path):
    cli_in_process("sample", f"ckpt={trained}", "steps=4", "n=6", "batch_size=4", "hydra.run.dir=a", cwd=tmp_path)
    cli_in_process("sample", f"ckpt={trained / 'checkpoints' / 'last.safetensors'}", "steps=4", "n=6", "batch_size=6",
                   "hydra.run.dir=b", cwd=tmp_path)
    cli_in_process("sample", f"ckpt={trained}", "steps=4", "n=6", "seed=1", "png=true", "hydra.run.dir=c", cwd=tmp_path)
    a, b, c = (np.load(tmp_path / d / "samples.npz")["images"] for d in "abc")
    assert a.shape == (6, 28, 28, 1) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert (tmp_path / "a" / "grid.png").is_file() and len(list((tmp_path / "c" / "images").glob("*.png"))) == 6
    record = json.loads((tmp_path / "a" / "sampling.json").read_text())
    assert record["sampler"] == "ddim" and record["nfe_per_image"] == 4 and record["checkpoint_step"] == 6
    walked = sampler_from_yaml("ddim").timesteps(load_model(trained).model.schedule, 4)  # its `auto` table's walk
    assert record["timesteps"] == walked and walked[-1] == -1 and len(walked) == 5


def test_sample_clamps_x0_by_default_and_can_hand_over_the_raw_prediction(trained, tmp_path):
    cli_in_process("sample", f"ckpt={trained}", "steps=4", "n=4", "hydra.run.dir=default", cwd=tmp_path)
    cli_in_process("sample", f"ckpt={trained}", "steps=4", "n=4", "clip_x0=true", "hydra.run.dir=on", cwd=tmp_path)
    cli_in_process("sample", f"ckpt={trained}", "steps=4", "n=4", "clip_x0=false", "hydra.run.dir=off", cwd=tmp_path)
    default, on, off = (np.load(tmp_path / d / "samples.npz")["images"] for d in ("default", "on", "off"))
    assert np.array_equal(default, on)
    assert not np.array_equal(on, off)  # a 6-step model's x0 predictions leave [-1, 1] at high noise
    assert json.loads((tmp_path / "default" / "sampling.json").read_text())["options"]["clip_x0"] is True


def test_ddpm_sampler_from_the_cli(trained, tmp_path):
    cli_in_process("sample", f"ckpt={trained}", "sampler=ddpm", "steps=5", "n=2", "hydra.run.dir=d", cwd=tmp_path)
    record = json.loads((tmp_path / "d" / "sampling.json").read_text())
    assert record["sampler"] == "ddpm" and record["settings"]["variance"] == "posterior"


@pytest.mark.parametrize("name", group_options("sampler"))
def test_every_sampler_from_the_cli_records_what_it_ran(trained, tmp_path, name):
    from conftest import sampler_from_yaml

    cli_in_process("sample", f"ckpt={trained}", f"sampler={name}", "steps=3", "n=2", "hydra.run.dir=s", cwd=tmp_path)
    record = json.loads((tmp_path / "s" / "sampling.json").read_text())
    assert record["sampler"] == name and record["steps"] == 3 and len(record["timesteps"]) == 4
    assert record["nfe_per_image"] == sampler_from_yaml(name).facts.evaluations(3)
    assert np.load(tmp_path / "s" / "samples.npz")["images"].shape == (2, 28, 28, 1)


def test_sample_uses_the_checkpoints_sampler_unless_the_command_names_one(tmp_path, data_root):
    cli_in_process("train", *TINY_TRAIN, "sampler=unipc", "sampler.order=3", "train.steps=2", "train.sample_every=0",
                   "hydra.run.dir=t", cwd=tmp_path)
    for args, expected in ((("hydra.run.dir=own",), ("unipc", 3)),
                           (("sampler=ddim", "hydra.run.dir=named"), ("ddim", None)),
                           (("sampler.eta=0.0", "hydra.run.dir=setting"), ("ddim", None))):  # a setting of the default
        cli_in_process("sample", "ckpt=t", "steps=3", "n=1", *args, cwd=tmp_path)
        record = json.loads((tmp_path / args[-1].split("=")[1] / "sampling.json").read_text())
        assert (record["sampler"], record["settings"].get("order")) == expected, args


@pytest.mark.parametrize("name", group_options("objective"))
def test_every_objective_trains_and_samples_from_the_cli(tmp_path, data_root, name):
    """A tiny model trained under each objective samples through every sampler, with no flag naming the objective:
    the checkpoint records it (and its schedule)."""
    cli_in_process("train", *TINY_TRAIN, f"objective={name}", "train.steps=2", "train.sample_every=0",
                   "hydra.run.dir=t", cwd=tmp_path)
    from diffuse.checkpoint import read_metadata

    config = json.loads(read_metadata(tmp_path / "t" / "checkpoints" / "last.safetensors")["config"])
    assert config["objective"] == {k: v for k, v in composed("train", f"objective={name}").objective.items()}
    for sampler in group_options("sampler"):
        cli_in_process("sample", "ckpt=t", "steps=2", "n=1", f"sampler={sampler}", f"hydra.run.dir=s_{sampler}",
                       cwd=tmp_path)
        images = np.load(tmp_path / f"s_{sampler}" / "samples.npz")["images"]
        assert images.shape == (1, 28, 28, 1) and images.std() > 0, sampler


def test_multirun_gives_one_directory_per_point(trained, tmp_path, data_root):
    run_cli("train", "-m", "schedule=linear,cosine", *TINY_TRAIN, "train.steps=2", "hydra.sweep.dir=tm", cwd=tmp_path)
    run_cli("sample", "-m", f"ckpt={trained}", "steps=2,3", "n=2", "hydra.sweep.dir=sm", cwd=tmp_path)
    assert sorted(p.name for p in (tmp_path / "tm").iterdir() if p.is_dir()) == ["0", "1"]
    assert all((tmp_path / "tm" / j / "checkpoints" / "last.safetensors").is_file() for j in "01")
    steps = sorted(json.loads((tmp_path / "sm" / j / "sampling.json").read_text())["steps"] for j in "01")
    assert steps == [2, 3]


def test_default_run_directories_do_not_collide(trained, tmp_path):
    for _ in range(2):
        run_cli("sample", f"ckpt={trained}", "steps=1", "n=1", cwd=tmp_path)
    assert len(list((tmp_path / "outputs" / "sample").glob("*/*/samples.npz"))) == 2


def test_help_lists_every_group_and_its_options(tmp_path):
    out = run_cli("train", "--help", cwd=tmp_path).stdout
    for group in ("model", "schedule", "objective", "dataset", "sampler", "experiment"):
        assert f"{group}: {', '.join(group_options(group))}" in out, group


def _bad(tmp_path, *args, env=None):
    proc = cli_in_process(*args, cwd=tmp_path, env=env, check=False)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert len(lines) == 1, proc.stderr
    return lines[0]


@pytest.mark.parametrize("args,expected", [
    (("train", "model=nope"), f"unknown model 'nope'; available: {', '.join(group_options('model'))}"),
    (("train", "sampler=plms"), f"unknown sampler 'plms'; available: {', '.join(group_options('sampler'))}"),
    (("train", "objective=score"), f"unknown objective 'score'; available: {', '.join(group_options('objective'))}"),
    (("train", "parameterization=v"), "parameterization= is now objective=: use objective=v"),
    (("train", "train.nope=1"), "train.nope"),
    (("train", "train.steps=abc"), "train.steps must be int, got 'abc'"),
    (("train", "train.precision=fp16"), "train.precision must be one of auto, fp32, bf16"),
    (("train", "train.lr=-1"), "train.lr must be > 0"),
    (("train", "device=cuda:7"), "CUDA is not available"),
    (("train", "sampler.eta=-1"), "eta must be >= 0"),
    (("train", "sampler.spacing=uniform"), "unknown timestep spacing 'uniform'"),
    (("train", "schedule.zero_terminal_snr=true"), "zero terminal SNR needs objective=v"),
    (("train", "sampler=heun", "sampler.spacing=trailing", "schedule.zero_terminal_snr=true", "objective=v"),
     "infinite at zero terminal SNR, where this walk starts; use ddim, ddpm, dpmpp_2m, dpmpp_3m, euler, euler_ancestral"),
    (("train", "sampler.eta=abc"), "sampler ddim: bad settings (eta must be float, got 'abc')"),
    (("train", "+sampler.foo=1"), "sampler ddim: bad settings (unknown setting 'foo'; allowed: eta)"),
    (("train", "optimizer._target_=torch.optim.SGD"), "optimizer torch.optim.SGD"),
    (("train", "optimizer.weight_decay=-1"), "Invalid weight_decay"),
    (("train", "model.head_dim=0"), "diffuse.models.unet.UNet"),
    (("train", "model.upsample=bilinear"), "upsample 'bilinear' is not one of nearest_conv, conv_nearest"),
    (("train", "seed=abc"), "seed must be an integer"),
    (("train", "device=null"), "is not a device"),
    (("train", "dataset.image_size=100000"), "image_size must be in 8..1024"),
    (("train", "schedule._target_=diffuse.datasets.mnist.mnist"), "not allowed here"),
    (("sample", "ckpt=5"), "expected a path"),
    (("sample",), "ckpt is required"),
    (("sample", "ckpt=/no/such/file.safetensors"), "no such file or directory"),
    (("frobnicate",), "unknown subcommand 'frobnicate'"),
    (("train", "objective=flow", "objective.loss_weight=min_snr"),
     "objective.loss_weight='min_snr' does not apply to objective flow (min_snr weighs DDPM's eps, x0 and v"),
    (("train", "objective=edm", "objective.loss_weight=min_snr"), "does not apply to objective edm"),
    (("train", "objective=flow", "objective.std=0"), "objective.std (the logit-normal's scale) must be > 0, got 0"),
    (("train", "objective=flow", "objective.time_density=beta"), "unknown objective.time_density 'beta'"),
    (("train", "objective=edm", "objective.sigma_data=-0.5"), "objective.sigma_data must be > 0, got -0.5"),
    (("train", "objective=edm", "schedule=flow"), "objective=edm preconditions with sigma = sigma_t / alpha_t"),
    (("train", "objective=v", "objective.loss_weight=p2"), "objective.loss_weight='p2' does not apply to objective v; "
                                                           "allowed: none, min_snr"),
    (("train", "objective=flow", "schedule=flow", "sampler=heun", "sampler.spacing=trailing"),
     "sampler heun integrates in sigma = sigma_t / alpha_t, which is infinite at zero terminal SNR, where this walk "
     "starts; use ddim, ddpm, dpmpp_2m, dpmpp_3m, euler, euler_ancestral, flow_euler, flow_heun, heun (spacing=auto), "
     "ipndm, unipc"),
    (("train", "train.lr_decay=exp"), "train.lr_decay must be one of none, cosine, linear, got 'exp'"),
    (("train", "train.compile_backend=fastest"), "train.compile_backend must be one of "),
])
def test_bad_input_gives_one_clear_line(tmp_path, data_root, args, expected):
    assert expected in _bad(tmp_path, *args)


def test_bad_checkpoints_and_step_counts(trained, tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00not a checkpoint at all" * 10)
    assert "not a readable safetensors file" in _bad(tmp_path, "sample", f"ckpt={junk}")
    assert "without checkpoints/last.safetensors" in _bad(tmp_path, "sample", f"ckpt={tmp_path}")
    assert "dynamic threshold percentile must be in" in _bad(tmp_path, "sample", f"ckpt={trained}",
                                                             "dynamic_threshold=1.5")
    for steps in ("0", "1001"):
        assert "steps must be an integer in 1..1000" in _bad(tmp_path, "sample", f"ckpt={trained}", f"steps={steps}")


def test_missing_data_names_the_path_and_the_variable(tmp_path):
    line = _bad(tmp_path, "train", "model=unet_tiny", "dataset.download=false",
                env={"DIFFUSE_DATA_ROOT": str(tmp_path / "empty")})
    assert str(tmp_path / "empty" / "MNIST" / "raw") in line and "DIFFUSE_DATA_ROOT" in line


def test_full_error_shows_the_traceback(tmp_path):
    proc = run_cli("sample", "ckpt=/no/such/file", cwd=tmp_path, env={"HYDRA_FULL_ERROR": "1"}, check=False)
    assert proc.returncode != 0 and "Traceback" in proc.stderr


@pytest.mark.parametrize("args,expected", [
    (("eval", "samples=missing.npz", "dataset=mnist"), "samples=missing.npz: expected an .npz file"),
    (("eval", "samples=missing.npz", "dataset=mnist", "n=1"), "n must be >= 2"),
    (("eval", "samples=x.npz", "dataset=mnist", "features=inception", "inception.download=false"),
     "the FID Inception weights are not at"),
    (("train", "sampler.eta=-1"), "eta must be >= 0"),
    (("train", "train.sample_steps=5000"), "steps must be an integer in 1..1000"),
    (("train", "objective=eps", "schedule.zero_terminal_snr=true"), "needs objective=v"),
    (("train", "optimizer.weight_decay=-1"), "Invalid weight_decay"),
    (("sample", "ckpt=nowhere", "n=0"), "n must be >= 1"),
])
def test_input_is_checked_before_any_long_work(tmp_path, args, expected):
    """With no data set on disk and an empty cache, a bad input is refused before data loading or classifier
    training would start (either would fail, or take minutes, first)."""
    if "samples=x.npz" in args:
        np.savez(tmp_path / "x.npz", images=np.zeros((4, 28, 28, 1), np.uint8))
    cache = tmp_path / "cache"
    line = _bad(tmp_path, *args, env={"DIFFUSE_DATA_ROOT": str(tmp_path / "no-data"), "DIFFUSE_CACHE": str(cache)})
    assert expected in line
    assert not cache.exists() or not any(cache.iterdir())  # no classifier was trained
