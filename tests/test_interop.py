"""The formats other tools write: ADM-style and channels-first .npz files in, ADM's layout out, reference
statistics as files; and errors that stay one line (downloads with several mirrors, a missing subcommand)."""

import json

import numpy as np
import pytest

from conftest import TINY_TRAIN, cached, cli_in_process, run_cli
from diffuse import DiffuseError
from diffuse.image_files import read_images

COMMON = ("floor=false", "kid_subset_size=20", "seed=3")


@pytest.fixture(scope="module")
def real(data_root):
    """40 real MNIST test digits and their labels, as (N,H,W,C) uint8: 'samples' whose scores are known."""
    from diffuse.datasets.mnist import mnist

    data = mnist(str(data_root), train=False, download=False)
    return data.images[:40].permute(0, 2, 3, 1).numpy().copy(), data.labels[:40].numpy().copy()


def metrics_of(tmp_path, name: str, *args: str, cache) -> dict:
    cli_in_process("eval", *args, *COMMON, f"hydra.run.dir={name}", cwd=tmp_path, env=cached(cache))
    return json.loads((tmp_path / name / "metrics.json").read_text())


def test_every_layout_other_tools_write_scores_as_ours(real, eval_cache, tmp_path):
    images, labels = real
    layouts = {
        "ours": dict(images=images, labels=labels),
        "adm": dict(arr_0=images, arr_1=labels),  # openai/guided-diffusion's and DiT's samplers
        "first": dict(arr_0=images.transpose(0, 3, 1, 2).copy(), arr_1=labels),  # channels-first, as torch saves
        "unit": dict(x=(images / 255.0).astype(np.float32)),  # the only array; float in [0, 1]
        "signed": dict(images=(images / 127.5 - 1).astype(np.float32), labels=labels),  # float in [-1, 1]
    }
    ranges = {"unit": ["samples_range=[0,1]"], "signed": ["samples_range=[-1,1]"]}
    scores = {}
    for name, arrays in layouts.items():
        np.savez(tmp_path / f"{name}.npz", **arrays)
        record = metrics_of(tmp_path, name, f"samples={tmp_path / name}.npz", "dataset=mnist", *ranges.get(name, []),
                            cache=eval_cache)
        scores[name] = record["metrics"]
        assert record["labels_from_file"] is (name != "unit")
    base = {k: v for k, v in scores["ours"].items() if not k.startswith("conditional")}
    for name, m in scores.items():
        assert {k: v for k, v in m.items() if not k.startswith("conditional")} == base, name
    # real digits asked for as their own labels: the classifier reads nearly all of them so
    assert scores["adm"]["conditional_accuracy"] == scores["ours"]["conditional_accuracy"] >= 0.95
    assert "conditional_accuracy" not in scores["unit"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_root):
    cwd = tmp_path_factory.mktemp("train")
    cli_in_process("train", *TINY_TRAIN, "model.conditional=true", "hydra.run.dir=run", cwd=cwd)
    return cwd / "run"


def test_sample_writes_adm_layout_that_adm_reads_and_that_scores_the_same(trained, eval_cache, tmp_path):
    for fmt in ("npz", "adm"):
        cli_in_process("sample", f"ckpt={trained}", "n=20", "steps=3", f"format={fmt}", f"hydra.run.dir={fmt}",
                       cwd=tmp_path)
    ours, adm = np.load(tmp_path / "npz" / "samples.npz"), np.load(tmp_path / "adm" / "samples.npz")
    assert sorted(adm.files) == ["arr_0", "arr_1"] and sorted(ours.files) == ["images", "labels"]
    assert np.array_equal(adm["arr_0"], ours["images"]) and np.array_equal(adm["arr_1"], ours["labels"])  # as ADM reads
    a = metrics_of(tmp_path, "ea", f"samples={tmp_path / 'npz' / 'samples.npz'}", "dataset=mnist", cache=eval_cache)
    b = metrics_of(tmp_path, "eb", f"samples={tmp_path / 'adm' / 'samples.npz'}", "dataset=mnist", cache=eval_cache)
    assert a["metrics"] == b["metrics"] and "conditional_accuracy" in a["metrics"]


def test_reference_statistics_go_to_a_file_and_score_the_same(real, eval_cache, tmp_path):
    images, _ = real
    np.savez(tmp_path / "s.npz", images=images)
    first = metrics_of(tmp_path, "a", f"samples={tmp_path / 's.npz'}", "dataset=mnist", cache=eval_cache)
    stats = tmp_path / "a" / "reference_stats.npz"
    with np.load(stats) as z:
        assert z["mu"].shape == (128,) and z["sigma"].shape == (128, 128) and z["mu"].dtype == np.float64
        assert str(z["extractor"]) == f"classifier-{first['features']['weights_sha256'][:12]}"
        assert list(z["image_shape"]) == [1, 28, 28] and int(z["n"]) == 10000
    second = metrics_of(tmp_path, "b", f"samples={tmp_path / 's.npz'}", "dataset=mnist", f"reference={stats}",
                        "save_reference=false", cache=eval_cache)
    assert second["metrics"]["fid"] == first["metrics"]["fid"]
    assert second["metrics"]["classifier_score"] == first["metrics"]["classifier_score"]
    assert "kid" not in second["metrics"] and second["reference"]["file"] == str(stats)
    assert not (tmp_path / "b" / "reference_stats.npz").exists()


def bad(tmp_path, *args, cache=None) -> str:
    proc = cli_in_process(*args, cwd=tmp_path, env=cached(cache) if cache else None, check=False)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


def test_bad_files_give_one_clear_line(real, eval_cache, tmp_path):
    images, labels = real
    np.savez(tmp_path / "several.npz", a=images, b=images)
    np.savez(tmp_path / "short.npz", arr_0=images, arr_1=labels[:10])
    np.savez(tmp_path / "ambiguous.npz", images=np.zeros((4, 3, 28, 3), np.uint8))
    np.savez(tmp_path / "float.npz", images=images.astype(np.float32) / 255)
    np.savez(tmp_path / "wide.npz", images=images.astype(np.float32) / 127.5 - 1)
    np.savez(tmp_path / "big_labels.npz", images=images, labels=labels + 10)
    np.savez(tmp_path / "s.npz", images=images)
    cases = {"several.npz": "2 image-like arrays (a, b) and none is named images or arr_0",
             "short.npz": "10 labels for 40 images",
             "ambiguous.npz": "could be (N,H,W,C) or (N,C,H,W); save them as (N,H,W,C)",
             "float.npz": "give their range with samples_range=[0,1] or samples_range=[-1,1]",
             "big_labels.npz": "labels run up to 19, and mnist has classes 0..9"}
    for name, expected in cases.items():
        assert expected in bad(tmp_path, "eval", f"samples={tmp_path / name}", "dataset=mnist", cache=eval_cache), name
    assert "outside samples_range [0, 1]" in bad(tmp_path, "eval", f"samples={tmp_path / 'wide.npz'}", "dataset=mnist",
                                                 "samples_range=[0,1]", cache=eval_cache)
    assert "samples_range is for float images" in bad(tmp_path, "eval", f"samples={tmp_path / 's.npz'}",
                                                      "dataset=mnist", "samples_range=[0,1]", cache=eval_cache)
    assert "samples_range must be [LOW,HIGH]" in bad(tmp_path, "eval", f"samples={tmp_path / 's.npz'}",
                                                     "dataset=mnist", "samples_range=[1,0]", cache=eval_cache)


def test_bad_reference_files_give_one_clear_line(real, eval_cache, tmp_path):
    images, _ = real
    np.savez(tmp_path / "s.npz", images=images)
    cli_in_process("eval", f"samples={tmp_path / 's.npz'}", "dataset=mnist", *COMMON, "hydra.run.dir=a", cwd=tmp_path,
                   env=cached(eval_cache))
    with np.load(tmp_path / "a" / "reference_stats.npz") as z:
        ours = dict(z)
    np.savez(tmp_path / "other_extractor.npz", **{**ours, "extractor": np.str_("classifier-0123456789ab")})
    np.savez(tmp_path / "other_size.npz", **{**ours, "image_shape": np.array([3, 32, 32])})
    np.savez(tmp_path / "foreign.npz", mu=ours["mu"], sigma=ours["sigma"])  # no extractor recorded, 128-d
    np.savez(tmp_path / "no_sigma.npz", mu=ours["mu"])
    args = (f"samples={tmp_path / 's.npz'}", "dataset=mnist", "floor=false")
    cases = {"other_extractor": "was computed with classifier-0123456789ab, and this evaluation's extractor is",
             "other_size": "describes images [3, 32, 32] (C,H,W), and these are [1, 28, 28]",
             "foreign": "records no extractor and holds 128-d statistics",
             "no_sigma": "the .npz has no 'sigma' array"}
    for name, expected in cases.items():
        assert expected in bad(tmp_path, "eval", *args, f"reference={tmp_path / name}.npz", cache=eval_cache), name
    assert "floor=true scores real images of a data set (floor=false scores against reference= alone)" in bad(
        tmp_path, "eval", f"samples={tmp_path / 's.npz'}", f"reference={tmp_path / 'a' / 'reference_stats.npz'}",
        cache=eval_cache)


def test_read_images_reads_labels_from_class_folders(tmp_path):
    from PIL import Image

    for k in (0, 1):
        (tmp_path / str(k)).mkdir()
        for i in range(2):
            Image.fromarray(np.full((8, 8), 100 * k + i, np.uint8)).save(tmp_path / str(k) / f"{i}.png")
    read = read_images(tmp_path)
    assert read.images.shape == (4, 8, 8, 1) and read.labels.tolist() == [0, 0, 1, 1]
    assert read.images[2, 0, 0, 0] == 100
    with pytest.raises(DiffuseError, match="expected images"):
        np.savez(tmp_path / "flat.npz", images=np.zeros((4, 784), np.uint8))
        read_images(tmp_path / "flat.npz")


def test_a_download_that_fails_on_every_mirror_is_one_line(tmp_path, monkeypatch):
    """torchvision names each mirror on lines of their own; the message keeps them on one."""
    from torchvision import datasets

    from diffuse.datasets.mnist import mnist

    message = ("Error downloading train-images-idx3-ubyte.gz:\nTried https://ossci-datasets.s3.amazonaws.com/mnist/, "
               "got:\n<urlopen error [Errno -2] Name or service not known>\nTried http://yann.lecun.com/exdb/mnist/, "
               "got:\n<urlopen error [Errno -2] Name or service not known>\n")

    def offline(*args, **kwargs):
        raise RuntimeError(message)

    monkeypatch.setattr(datasets, "MNIST", offline)
    with pytest.raises(DiffuseError) as caught:
        mnist(str(tmp_path), download=True)
    text = str(caught.value)
    assert "\n" not in text
    assert ("tried https://ossci-datasets.s3.amazonaws.com/mnist/ and http://yann.lecun.com/exdb/mnist/: [Errno -2] "
            "Name or service not known") in text


def test_no_or_an_unknown_subcommand_exits_2_and_help_exits_0(tmp_path):
    none = run_cli(cwd=tmp_path, check=False)
    assert none.returncode == 2 and "usage: diffuse" in none.stderr and not none.stdout
    unknown = run_cli("frobnicate", cwd=tmp_path, check=False)
    assert unknown.returncode == 2 and "unknown subcommand 'frobnicate'" in unknown.stderr
    assert run_cli("--help", cwd=tmp_path).stdout.startswith("usage: diffuse")
