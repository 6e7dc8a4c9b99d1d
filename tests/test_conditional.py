"""Class-conditional models and classifier-free guidance: in the network, the denoiser, every sampler, the CLI."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TINY_TRAIN, cli_in_process, group_options, sampler_from_yaml, walk
from diffuse import DiffuseError
from diffuse.denoiser import DiffusionModel, ModelDenoiser, guide
from diffuse.models.unet import UNet
from diffuse.objectives.ddpm import DDPM, to_eps_x0
from diffuse.schedules.linear import linear


def denoiser(net, schedule, **kwargs) -> ModelDenoiser:
    return ModelDenoiser(DiffusionModel(net, DDPM("eps"), schedule, (1, 8, 8)), **kwargs)


@pytest.fixture(scope="module")
def net() -> UNet:
    torch.manual_seed(0)
    model = UNet(in_channels=1, channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(),
                 head_dim=16, groups=4, conditional=True, num_classes=10)
    with torch.no_grad():  # zero-initialised output layers would hide the labels: give them weights
        for p in model.parameters():
            if p.ndim > 1 and not p.any():
                p.normal_(std=0.05)
    return model.eval()


def test_labels_change_the_output_and_none_is_the_null_class(net):
    x, t = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([500.0, 500.0])
    with torch.no_grad():
        three, seven = net(x, t, torch.tensor([3, 3])), net(x, t, torch.tensor([7, 7]))
        null, none = net(x, t, torch.tensor([10, 10])), net(x, t)
    assert (three - seven).abs().max() > 1e-3
    assert torch.equal(null, none)
    plain = UNet(in_channels=1, channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(), head_dim=16,
                 groups=4)
    with pytest.raises(ValueError, match="unconditional"):
        plain(x, t, torch.tensor([3, 3]))


def test_guidance_one_is_the_conditional_model_and_zero_the_unconditional(net):
    schedule = linear()
    x, t = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(1)), 400
    labels = torch.tensor([1, 4, 9])
    alpha, sigma = schedule.alpha(t).item(), schedule.sigma(t).item()
    tb = torch.full((3,), 400.0)
    with torch.no_grad():
        cond, uncond = net(x, tb, labels), net(x, tb)
    for w, want in ((1.0, cond), (0.0, uncond), (3.0, uncond + 3.0 * (cond - uncond))):
        d = denoiser(net, schedule, labels=labels, guidance=w)
        eps, x0 = d(x, t)
        want_eps, want_x0 = to_eps_x0(want, x, alpha, sigma, "eps")
        assert torch.allclose(eps, want_eps, atol=1e-5) and torch.allclose(x0, want_x0, atol=1e-4), w
        assert d.evaluations == (2 if w == 3.0 else 1)  # a guided step evaluates the network twice per image


def test_guidance_rescale_matches_the_conditional_std():
    g = torch.Generator().manual_seed(0)
    cond, uncond = torch.randn(4, 1, 8, 8, generator=g), torch.randn(4, 1, 8, 8, generator=g) * 0.5
    out = guide(cond, uncond, 5.0, rescale=1.0)
    assert torch.allclose(out.std(dim=(1, 2, 3)), cond.std(dim=(1, 2, 3)), rtol=1e-5)
    assert torch.allclose(guide(cond, uncond, 5.0, 0.5), 0.5 * out + 0.5 * guide(cond, uncond, 5.0), atol=1e-6)


@pytest.mark.parametrize("name", group_options("sampler"))
def test_guidance_works_with_every_sampler(net, name):
    sampler = sampler_from_yaml(name)
    schedule = linear()
    labels = torch.tensor([2, 5])

    def run(w):
        x_T = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
        d = denoiser(net, schedule, labels=labels, guidance=w)
        return walk(sampler, d, schedule, x_T, 4, generator=torch.Generator().manual_seed(1))

    guided, conditional = run(4.0), run(1.0)
    assert torch.isfinite(guided).all() and guided.shape == (2, 1, 8, 8)
    assert (guided - conditional).abs().max() > 1e-4


def test_unconditional_model_refuses_labels(net):
    plain = UNet(in_channels=1, channels=16, channel_mult=(1,), num_res_blocks=1, attention_levels=(), head_dim=16,
                 groups=4)
    with pytest.raises(DiffuseError, match="conditional model"):
        denoiser(plain, linear(), labels=torch.tensor([1]))


@pytest.fixture(scope="module")
def cond_run(tmp_path_factory, data_root) -> Path:
    cwd = tmp_path_factory.mktemp("cond")
    cli_in_process("train", *TINY_TRAIN, "model.conditional=true", "train.cond_drop_prob=0.2", "hydra.run.dir=run",
                   cwd=cwd)
    return cwd / "run"


def test_conditional_training_records_the_class_count(cond_run):
    from safetensors import safe_open

    with safe_open(str(cond_run / "checkpoints" / "last.safetensors"), "pt") as f:
        config = json.loads(f.metadata()["config"])
        assert f.get_slice("ema.label_emb.weight").get_shape() == [11, 64]  # 10 classes + null, 4 * 16 wide
    assert config["model"]["conditional"] is True and config["model"]["num_classes"] == 10


def test_sample_by_label_with_guidance(cond_run, tmp_path):
    cli_in_process("sample", f"ckpt={cond_run}", "labels=[3,7]", "guidance=3.0", "n=6", "steps=3", "hydra.run.dir=a",
                   cwd=tmp_path)
    cli_in_process("sample", f"ckpt={cond_run}", "label=3", "n=2", "steps=3", "hydra.run.dir=b", cwd=tmp_path)
    with np.load(tmp_path / "a" / "samples.npz") as z:
        assert z["labels"].tolist() == [3, 7, 3, 7, 3, 7] and z["images"].shape == (6, 28, 28, 1)
    record = json.loads((tmp_path / "a" / "sampling.json").read_text())
    assert record["labels"] == [3, 7] and record["guidance"] == 3.0 and record["nfe_per_image"] == 6
    from PIL import Image
    with Image.open(tmp_path / "a" / "grid.png") as im:  # one row per class, three images each
        assert im.size == (2 + 3 * 30, 2 + 2 * 30)
    with np.load(tmp_path / "b" / "samples.npz") as z:
        assert z["labels"].tolist() == [3, 3]


def test_sample_writes_a_labelled_folder_that_reads_back(cond_run, tmp_path):
    from torchvision.datasets import ImageFolder

    from diffuse.datasets.folder import folder

    cli_in_process("sample", f"ckpt={cond_run}", "labels=all", "n=20", "steps=2", "format=folder", "hydra.run.dir=f",
                   cwd=tmp_path)
    root = tmp_path / "f" / "images"
    assert sorted(p.name for p in root.iterdir()) == [str(k) for k in range(10)]
    tv = ImageFolder(str(root))
    assert len(tv) == 20 and tv.classes == [str(k) for k in range(10)]
    ours = folder(str(root), image_size=28, channels=1)
    assert ours.num_classes == 10 and sorted(ours.labels.tolist()) == sorted(k for k in range(10) for _ in range(2))
    with np.load(tmp_path / "f" / "samples.npz") as z:  # the same pixels as the folder
        first = z["images"][z["labels"] == 0][0, ..., 0]
    assert np.array_equal(ours.images[ours.labels == 0][0, 0].numpy(), first)


@pytest.mark.parametrize("args,expected", [
    (("labels=[12]",), "label 12 is out of range: the model knows classes 0..9"),
    (("label=-1",), "label -1 is out of range"),
    (("labels=[1]", "label=2"), "not both"),
    (("labels=cats",), "labels must be a list"),
])
def test_bad_labels_give_one_clear_line(cond_run, tmp_path, args, expected):
    proc = cli_in_process("sample", f"ckpt={cond_run}", "n=2", "steps=2", *args, cwd=tmp_path, check=False)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and expected in lines[0], proc.stderr


def test_labels_on_an_unconditional_checkpoint_are_refused(tmp_path, data_root):
    cli_in_process("train", *TINY_TRAIN, "train.steps=2", "train.sample_every=0", "hydra.run.dir=plain", cwd=tmp_path)
    proc = cli_in_process("sample", f"ckpt={tmp_path / 'plain'}", "label=3", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "unconditional" in proc.stderr


def test_eval_reports_conditional_accuracy(cond_run, eval_cache, tmp_path):
    cli_in_process("eval", f"ckpt={cond_run}", "n=20", "steps=2", "guidance=2.0", "floor=false", "kid_subset_size=10",
                   "hydra.run.dir=e", cwd=tmp_path, env={"DIFFUSE_CACHE": str(eval_cache)})
    record = json.loads((tmp_path / "e" / "metrics.json").read_text())
    m = record["metrics"]
    assert 0 <= m["conditional_accuracy"] <= 1 and len(m["conditional_accuracy_per_class"]) == 10
    assert record["guidance"] == 2.0 and record["labels"] == list(range(10)) and record["nfe"] == 4


def test_balanced_subset_takes_the_classes_in_turn_and_depends_only_on_its_seed():
    from diffuse.cas import balanced_subset
    from diffuse.data import ImageData

    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 5)  # unbalanced; class 2 runs out
    data = ImageData(torch.zeros(85, 1, 4, 4, dtype=torch.uint8), labels, 3, "toy")
    index = balanced_subset(data, 21, seed=4)
    assert sorted(labels[index].tolist()) == [0] * 8 + [1] * 8 + [2] * 5  # 5 of class 2, the rest shared
    assert len(set(index.tolist())) == 21 and torch.equal(index, balanced_subset(data, 21, seed=4))
    assert not torch.equal(index, balanced_subset(data, 21, seed=5))
    assert sorted(labels[balanced_subset(data, 9, seed=0)].tolist()) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    with pytest.raises(DiffuseError, match="a subset of 86 images of toy, which has 85"):
        balanced_subset(data, 86, seed=0)


def test_cas_of_real_images_is_the_real_baseline_and_wrong_labels_score_near_zero(data_root, eval_cache, tmp_path):
    """samples= holding the very images the real baseline trains on (same order, same labels) gets its accuracy
    exactly; the same images with every label moved to the next class get almost none: the score reads labels."""
    from conftest import cached
    from diffuse.cas import balanced_subset
    from diffuse.datasets.mnist import mnist

    from diffuse.cas import classification_accuracy_score

    train, test = mnist(str(data_root), True, False), mnist(str(data_root), False, False)
    index = balanced_subset(train, 300, seed=0)
    images, labels = train.images[index].permute(0, 2, 3, 1).numpy(), train.labels[index].numpy()
    np.savez(tmp_path / "real.npz", images=images, labels=labels)
    cli_in_process("eval", "samples=real.npz", "dataset=mnist", "cas=true", "cas_steps=60", "floor=false",
                   "kid_subset_size=100", "hydra.run.dir=real", cwd=tmp_path, env=cached(eval_cache))
    real = json.loads((tmp_path / "real" / "metrics.json").read_text())
    assert real["cas"]["accuracy"] == real["cas"]["real_accuracy"] > 0.8 and real["metrics"]["cas"] > 0.8
    assert real["cas"]["n"] == 300 and real["cas"]["steps"] == 60 and "10000 images" in real["cas"]["tested_on"]
    shifted = classification_accuracy_score(images, (labels + 1) % 10, train, test, steps=60, seed=0,
                                            device=torch.device("cpu"), cache_dir=eval_cache)
    assert shifted["accuracy"] < 0.05 and shifted["real_accuracy"] == real["cas"]["real_accuracy"]
    assert len(list(eval_cache.glob("cas-real-mnist-*-n300-s60-seed0-*.json"))) == 1  # trained once, then read


def test_eval_of_a_conditional_checkpoint_reports_cas_beside_the_real_recipe(cond_run, eval_cache, tmp_path):
    from conftest import cached

    cli_in_process("eval", f"ckpt={cond_run}", "n=20", "steps=2", "cas=true", "cas_steps=20", "kid_subset_size=10",
                   "hydra.run.dir=ev", cwd=tmp_path, env=cached(eval_cache))
    record = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    cas = record["cas"]
    assert 0 <= cas["accuracy"] <= 1 and cas["n"] == 20 and cas["ratio"] == pytest.approx(cas["accuracy"] /
                                                                                           cas["real_accuracy"])
    assert record["metrics"]["cas"] == cas["accuracy"] and record["floor"]["cas"] == cas["real_accuracy"]


@pytest.mark.parametrize("args,expected", [
    (("labels=[3,7]",), "cas=true trains a classifier of all 10 classes on the images, and ckpt="),
    (("n=5",), "gives none of class(es) [5, 6, 7, 8, 9]: draw every class (labels=all, n >= 10)"),
    (("samples=unlabelled.npz", "ckpt=null", "dataset=mnist"), "cas=true needs labelled images, and samples "),
    (("n=60001",), "and mnist's train split has 60000: use n <= 60000"),
])
def test_cas_refuses_images_it_cannot_score_in_one_line(cond_run, args, expected, tmp_path):
    np.savez(tmp_path / "unlabelled.npz", images=np.zeros((20, 28, 28, 1), np.uint8))
    proc = cli_in_process("eval", f"ckpt={cond_run}", "cas=true", "n=20", "steps=2", *args, "hydra.run.dir=no",
                          cwd=tmp_path, check=False)
    assert proc.returncode == 2 and expected in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "no" / "metrics.json").exists()


def test_interpolating_labelled_images_walks_each_pair_under_its_class(cond_run, tmp_path):
    """A conditional model inverts and walks labelled images= under their own class; a pair of two classes is
    refused (a row walks under one class), unless label=K says which; labels the model does not know are refused."""
    images = np.random.default_rng(1).integers(0, 256, (4, 28, 28, 1), dtype=np.uint8)
    np.savez(tmp_path / "same.npz", images=images, labels=np.array([3, 3, 7, 7]))
    np.savez(tmp_path / "mixed.npz", images=images, labels=np.array([3, 7, 7, 7]))
    np.savez(tmp_path / "unknown.npz", images=images, labels=np.array([12, 12, 3, 3]))
    common = (f"ckpt={cond_run}", "steps=3", "n=2", "frames=3")
    cli_in_process("interpolate", *common, "images=same.npz", "hydra.run.dir=same", cwd=tmp_path)
    record = json.loads((tmp_path / "same" / "interpolation.json").read_text())
    assert record["labels"] == [3, 7] and record["inversion"]["labels_from_file"] is True
    assert np.load(tmp_path / "same" / "frames.npz")["labels"].tolist() == [3, 3, 3, 7, 7, 7]
    for name, expected in (("mixed", "pair 0 runs from a 3 to a 7, and a conditional model walks each row under one "
                                     "class: pair images of one class, or pass label=K"),
                           ("unknown", "has labels 3..12, and the model knows classes 0..9")):
        proc = cli_in_process("interpolate", *common, f"images={name}.npz", "hydra.run.dir=no", cwd=tmp_path,
                              check=False)
        assert proc.returncode == 2 and expected in proc.stderr, proc.stderr
    cli_in_process("interpolate", *common, "images=mixed.npz", "label=5", "guidance=2", "hydra.run.dir=five",
                   cwd=tmp_path)
    record = json.loads((tmp_path / "five" / "interpolation.json").read_text())
    assert record["labels"] == [5, 5] and record["inversion"]["nfe_per_image"] == 3 * 2 * 2  # guided: 2 per call


def test_image_to_image_and_inpainting_run_under_guidance_with_their_guarantees(cond_run, tmp_path):
    """Under guidance 2 each walked step costs two evaluations; strength 0 still returns the init images and
    inpainting still keeps the known pixels exactly; the guided images differ from the unguided ones."""
    init = np.random.default_rng(1).integers(0, 256, (3, 28, 28, 1), dtype=np.uint8)
    np.savez(tmp_path / "init.npz", images=init)
    common = (f"ckpt={cond_run}", "n=4", "steps=6", "label=3", "seed=2")

    def drawn(name, *args):
        cli_in_process("sample", *common, *args, f"hydra.run.dir={name}", cwd=tmp_path)
        return (np.load(tmp_path / name / "samples.npz")["images"],
                json.loads((tmp_path / name / "sampling.json").read_text()))

    images, record = drawn("edit0", "init=init.npz", "strength=0", "guidance=2")
    assert np.array_equal(images, init[np.arange(4) % 3]) and record["nfe_per_image"] == 0
    guided, record = drawn("edit", "init=init.npz", "strength=0.5", "guidance=2")
    assert record["nfe_per_image"] == 2 * 3 and record["guidance"] == 2
    plain, record = drawn("edit1", "init=init.npz", "strength=0.5", "guidance=1")
    assert record["nfe_per_image"] == 3 and not np.array_equal(guided, plain)
    filled, record = drawn("fill", "inpaint=init.npz", "mask=centre", "guidance=2")
    known = np.ones((28, 28), bool)
    known[7:21, 7:21] = False
    assert np.array_equal(filled[:, known], init[np.arange(4) % 3][:, known]) and record["nfe_per_image"] == 2 * 6
    assert not np.array_equal(filled, drawn("fill1", "inpaint=init.npz", "mask=centre", "guidance=1")[0])
