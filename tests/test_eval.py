"""`diffuse eval`, `diffuse report`, trajectories and train.eval_every, end to end through the real CLI."""

import csv
import hashlib
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from conftest import TINY_TRAIN, cached, cli_in_process, run_cli, sampler_from_yaml
from diffuse import DiffuseError
from diffuse.checkpoint import load_model
from diffuse.features.inception import FIDInception
from diffuse.features.inception_weights import InceptionOptions, inception_extractor
from diffuse.image_files import read_images
from diffuse.report import collect, plot_lines

METRICS = ("fid", "kid", "kid_std", "precision", "recall", "classifier_score", "class_coverage", "class_tv")


@pytest.fixture
def trained(tiny_run) -> Path:
    return tiny_run / "run"


def test_the_mnist_classifier_reaches_99_percent_and_is_cached(eval_cache):
    files = list(eval_cache.glob("classifier-mnist-1x28x28-*.safetensors"))
    assert len(files) == 1
    with safe_open(str(files[0]), "pt") as f:
        meta = f.metadata()
    assert float(meta["test_accuracy"]) >= 0.99, meta
    assert list(eval_cache.glob("reference-mnist-test-1x28x28-*-all-classifier-*.safetensors"))


def test_the_classifiers_features_do_not_depend_on_the_layout_of_its_input(tmp_path):
    """The classifier runs channels_last (faster convolutions on a CPU, benchmarks/classifier.py) whatever layout a
    batch arrives in, so the same images give bitwise the same features from a contiguous batch, a channels_last
    one and a strided view; and the copy `diffuse eval` loads from the cache gives the features the trained one
    gave (the cache file holds contiguous tensors, as safetensors needs)."""
    from diffuse.data import ImageData
    from diffuse.features.classifier import classifier_extractor, train_classifier

    images = torch.randint(0, 256, (24, 1, 28, 28), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    data = ImageData(images, torch.arange(24) % 10, 10, "toy")
    model = train_classifier(data.images, data.labels, 10, steps=3, seed=0)
    with torch.no_grad():
        outputs = [model(x) for x in (images, images.contiguous(memory_format=torch.channels_last),
                                      images.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2))]
    for features, logits in outputs[1:]:
        assert torch.equal(features, outputs[0][0]) and torch.equal(logits, outputs[0][1])
    cached_copy = classifier_extractor(data, data, tmp_path, torch.device("cpu"), steps=3, seed=0)  # trained, read back
    features, logits = cached_copy(images.permute(0, 2, 3, 1).numpy())  # (N,H,W,C) uint8, as eval hands it over
    assert torch.equal(features, outputs[0][0]) and torch.equal(logits, outputs[0][1])


def test_eval_of_a_checkpoint_writes_every_metric_and_the_protocol(trained, eval_cache, tmp_path):
    proc = cli_in_process("eval", f"ckpt={trained}", "n=40", "steps=3", "seed=5", "kid_subset_size=20",
                          "hydra.run.dir=ev", cwd=tmp_path, env=cached(eval_cache))
    record = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    for key in METRICS:
        assert math.isfinite(record["metrics"][key]) and math.isfinite(record["floor"][key]), key
    assert record["n"] == 40 and record["seed"] == 5 and record["steps"] == 3 and record["nfe"] == 3
    assert record["sampler"] == "ddim" and record["checkpoint_step"] == 6
    assert record["reference"] == {"split": "test", "dataset": "mnist"}
    features = record["features"]
    assert features["name"] == "classifier" and features["test_accuracy"] >= 0.99
    assert features["weights_sha256"] == hashlib.sha256(Path(features["path"]).read_bytes()).hexdigest()
    assert record["wall_seconds"] > 0 and record["generate_seconds"] > 0
    # a tiny model trained 6 steps is far from the data; real train images are close to the test split
    assert record["metrics"]["fid"] > 10 * record["floor"]["fid"]
    assert record["floor"]["precision"] > 0.5 and record["floor"]["class_coverage"] > 0.5
    assert "FID" in proc.stdout and "floor (real)" in proc.stdout


def test_eval_of_saved_samples_gives_the_same_numbers(trained, eval_cache, tmp_path):
    cli_in_process("sample", f"ckpt={trained}", "n=30", "steps=3", "seed=2", "png=true", "hydra.run.dir=s",
                   cwd=tmp_path)
    common = ("kid_subset_size=20", "seed=2", "floor=false")
    cli_in_process("eval", f"ckpt={trained}", "n=30", "steps=3", *common, "hydra.run.dir=a", cwd=tmp_path,
                   env=cached(eval_cache))
    cli_in_process("eval", f"samples={tmp_path / 's' / 'samples.npz'}", "dataset=mnist", *common, "hydra.run.dir=b",
                   cwd=tmp_path, env=cached(eval_cache))
    cli_in_process("eval", f"samples={tmp_path / 's' / 'images'}", "dataset=mnist", *common, "hydra.run.dir=c",
                   cwd=tmp_path, env=cached(eval_cache))
    a, b, c = (json.loads((tmp_path / d / "metrics.json").read_text())["metrics"] for d in "abc")
    assert a == b == c
    assert json.loads((tmp_path / "b" / "metrics.json").read_text())["n"] == 30


def test_report_over_an_eval_multirun(trained, eval_cache, tmp_path):
    run_cli("eval", "-m", f"ckpt={trained}", "sampler=ddim,euler", "steps=2,4", "n=20", "kid_subset_size=10",
            "floor=false", "hydra.sweep.dir=sweep", cwd=tmp_path, env=cached(eval_cache))
    proc = run_cli("report", str(tmp_path / "sweep"), cwd=tmp_path)
    rows = list(csv.DictReader(open(tmp_path / "sweep" / "report.csv")))
    assert sorted((r["sampler"], int(r["nfe"])) for r in rows) == [("ddim", 2), ("ddim", 4), ("euler", 2), ("euler", 4)]
    schedule = load_model(trained).model.schedule  # each records the spacing its `auto` table walks there
    walked = {(name, sampler_from_yaml(name).spacing_for(schedule, k)) for name in ("ddim", "euler") for k in (2, 4)}
    assert {(r["sampler"], r["spacing"]) for r in rows} == {(name, f"auto ({spacing})") for name, spacing in walked}
    assert all(float(r["fid"]) > 0 for r in rows)
    collected, _ = collect(tmp_path / "sweep")  # the default is one line per sampler, whichever spacing it chose
    assert {key: len(points) for key, points in plot_lines(collected, "fid", "nfe").items()} == {
        ("ddim", "(auto)"): 2, ("euler", "(auto)"): 2}
    md = (tmp_path / "sweep" / "report.md").read_text()
    assert md.count("\n| ddim") == 2 and "Best fid" in md
    with Image.open(tmp_path / "sweep" / "report_fid.png") as im:
        assert im.size[0] > 400 and im.size[1] > 300
    assert "report.md" in proc.stdout
    bad = run_cli("report", str(tmp_path / "nothing"), cwd=tmp_path, check=False)
    assert bad.returncode == 2 and "not a folder" in bad.stderr


def test_sample_draws_a_trajectory_strip(trained, tmp_path):
    cli_in_process("sample", f"ckpt={trained}", "n=3", "steps=12", "trajectory=true", "hydra.run.dir=t", cwd=tmp_path)
    shown = json.loads((tmp_path / "t" / "trajectory.json").read_text())["timesteps"]
    first = sampler_from_yaml("ddim").timesteps(load_model(trained).model.schedule, 12)[0]  # its default walk's
    assert len(shown) == 10 and shown[0] == first and shown == sorted(shown, reverse=True)
    with Image.open(tmp_path / "t" / "trajectory.png") as im:
        w, h = im.size
    assert (w, h) == (2 + 10 * 30, 2 + 6 * 30)  # 10 columns; x_t and x0 rows for 3 images (28 px + 2 padding)
    assert json.loads((tmp_path / "t" / "sampling.json").read_text())["nfe_per_image"] == 12


def test_train_eval_every_logs_metrics_without_changing_training(eval_cache, tmp_path, data_root):
    base = (*TINY_TRAIN, "train.precision=fp32", "train.sample_every=0", "model.dropout=0.1")
    run_cli("train", *base, "hydra.run.dir=plain", cwd=tmp_path, env=cached(eval_cache))
    run_cli("train", *base, "train.eval_every=3", "train.eval_n=12", "train.eval_steps=2", "hydra.run.dir=evald",
            cwd=tmp_path, env=cached(eval_cache))
    rows = list(csv.DictReader(open(tmp_path / "evald" / "metrics.csv")))
    evals = [r for r in rows if r["fid"]]
    assert [int(r["step"]) for r in evals][-1] == 6 and all(float(r["fid"]) > 0 for r in evals)
    assert all(0 <= float(r["precision"]) <= 1 for r in evals)
    a = safe_open(str(tmp_path / "plain" / "checkpoints" / "last.safetensors"), "pt")
    b = safe_open(str(tmp_path / "evald" / "checkpoints" / "last.safetensors"), "pt")
    for key in a.keys():  # the evaluation thread draws nothing from the training RNGs
        assert torch.equal(a.get_tensor(key), b.get_tensor(key)), key


def test_inception_weights_load_from_a_stand_in_file_and_are_hash_checked(tmp_path):
    torch.manual_seed(0)
    net = FIDInception().eval()
    for m in net.modules():  # non-trivial batch-norm statistics, so a mis-mapped tensor would show
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    path = tmp_path / "pt_inception-2015-12-05-6726825d.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    extractor = inception_extractor(InceptionOptions(str(path), None, digest[:12], False), tmp_path,
                                    torch.device("cpu"))
    images = np.random.default_rng(0).integers(0, 256, (2, 28, 28, 1), dtype=np.uint8)
    features, logits = extractor(images)
    assert features.shape == (2, 2048) and logits.shape == (2, 1008)
    with torch.no_grad():
        want, _ = net(torch.from_numpy(images).permute(0, 3, 1, 2))
    assert torch.allclose(features, want, atol=1e-5)
    assert extractor.weights_sha256 == digest
    with pytest.raises(DiffuseError, match="expected 00000000"):
        inception_extractor(InceptionOptions(str(path), None, "00000000", False), tmp_path, torch.device("cpu"))
    with pytest.raises(DiffuseError, match="at least 8 hex digits"):
        InceptionOptions(str(path), None, "0000", False)


BAD = [
    (("n=1",), "n must be >= 2"),
    (("features=inception", "inception.download=false"), "inception.download=false: convert pytorch-fid's"),
    (("features=inception",), "no inception.url is set: convert pytorch-fid's"),
    (("features=inception", "inception.url=http://127.0.0.1:9/none.safetensors"), "download"),
    (("dataset=mnist", "dataset.image_size=32"), r"generates \[1, 28, 28\]"),
]


@pytest.mark.parametrize("args,expected", BAD, ids=["n", "offline", "no-url", "download-fails", "dataset"])
def test_bad_eval_input_gives_one_clear_line(trained, eval_cache, tmp_path, args, expected):
    env = {**cached(eval_cache), "TORCH_HOME": str(tmp_path / "torch")}
    proc = cli_in_process("eval", f"ckpt={trained}", "n=4", *args, cwd=tmp_path, env=env, check=False)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert re.search(expected, lines[0]), lines[0]


def test_bad_samples_give_one_clear_line(eval_cache, tmp_path):
    np.savez(tmp_path / "rgb.npz", images=np.zeros((4, 32, 32, 3), np.uint8))
    np.savez(tmp_path / "float.npz", images=np.zeros((4, 28, 28, 1), np.float32))
    np.savez(tmp_path / "one.npz", images=np.zeros((1, 28, 28, 1), np.uint8))
    cases = [("samples=" + str(tmp_path / "rgb.npz"), "32x32 with 3 channel"),
             ("samples=" + str(tmp_path / "float.npz"), "give their range with samples_range"),
             ("samples=" + str(tmp_path / "one.npz"), "at least 2"),
             ("samples=" + str(tmp_path / "missing"), "neither")]
    for arg, expected in cases:
        proc = cli_in_process("eval", arg, "dataset=mnist", cwd=tmp_path, env=cached(eval_cache), check=False)
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert proc.returncode == 2 and len(lines) == 1 and expected in lines[0], (arg, proc.stderr)
    proc = cli_in_process("eval", "samples=" + str(tmp_path / "rgb.npz"), cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "dataset=NAME" in proc.stderr
    proc = cli_in_process("eval", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "exactly one of ckpt" in proc.stderr


def test_read_images_from_a_folder_of_pngs(tmp_path):
    for i in range(3):
        Image.fromarray(np.full((8, 8), i * 50, np.uint8)).save(tmp_path / f"{i}.png")
    read = read_images(tmp_path)
    assert read.images.shape == (3, 8, 8, 1) and read.images[2, 0, 0, 0] == 100 and read.labels is None
