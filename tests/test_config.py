"""Every option of every config group composes and builds: the folders are the registry, so a new option (one
.py, one YAML) is tested here without touching this file."""

from pathlib import Path

import pytest
import torch

from conftest import composed, group_options
from diffuse import DiffuseError
from diffuse.config import MODELS, OBJECTIVES, SCHEDULES, build, dataset, locate, options, sampler
from diffuse.data import ImageData
from diffuse.objectives import Objective
from diffuse.schedule import Schedule
from fake_data import write_cifar_bin, write_idx, write_image_folder

GROUPS = ("model", "schedule", "objective", "dataset", "sampler", "experiment")


def test_groups_are_not_empty():
    for group in GROUPS:
        assert group_options(group), group


# Stand-in files for the data sets that read files in a known layout (nothing is downloaded in tests); a data set
# not named here is built as its YAML says (one that makes its own images needs nothing).
STAND_INS = {"fashion_mnist": lambda tmp: write_idx(tmp, "FashionMNIST"), "cifar10": write_cifar_bin}


def local_data(name: str, tmp_path: Path) -> list[str]:
    """Overrides that point a data set at files on this machine: the real MNIST, stand-ins for the rest."""
    if name == "folder":
        return [f"dataset.path={write_image_folder(tmp_path / 'images')}"]
    if name in STAND_INS:
        STAND_INS[name](tmp_path)
        return [f"dataset.root={tmp_path}", "dataset.download=false"]
    return []


@pytest.mark.parametrize("name", group_options("dataset"))
def test_every_dataset_builds(name, data_root, tmp_path):
    cfg = composed("train", f"dataset={name}", *local_data(name, tmp_path))
    assert cfg.dataset.lowres == 0  # train.yaml's default: every data set takes dataset.lowres=K (super-resolution)
    for train in (True, False):
        if name == "folder" and not train:
            continue  # a folder has a test split only when given one
        data = dataset(cfg.dataset, train)
        assert isinstance(data, ImageData) and data.images.dtype == torch.uint8
        assert data.shape == (cfg.dataset.channels, cfg.dataset.image_size, cfg.dataset.image_size)
        assert len(data) == len(data.labels) > 0 and data.labels.dtype == torch.long


@pytest.mark.parametrize("name", group_options("model"))
def test_every_model_builds_and_keeps_the_image_shape(name):
    cfg = composed("train", f"model={name}")
    model = build(cfg.model, MODELS)
    shape = (2, cfg.dataset.channels, cfg.dataset.image_size, cfg.dataset.image_size)
    with torch.no_grad():
        out = model(torch.randn(shape), torch.tensor([0.0, 999.0]))
    assert out.shape == shape


def test_upsample_orders_share_weights_and_differ_only_in_where_the_conv_runs():
    from torch.nn import functional as F

    from diffuse.models.layers import Upsample

    first, last = Upsample(4, "conv_nearest"), Upsample(4, "nearest_conv")
    last.load_state_dict(first.state_dict())  # same parameters, same names
    x = torch.randn(2, 4, 7, 7, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(first(x, (14, 14)), F.interpolate(first.conv(x), size=(14, 14), mode="nearest"))
        assert torch.equal(last(x, (14, 14)), first.conv(F.interpolate(x, size=(14, 14), mode="nearest")))
        assert first(x, (14, 14)).shape == last(x, (14, 14)).shape == (2, 4, 14, 14)
        assert not torch.allclose(first(x, (14, 14)), last(x, (14, 14)))  # the 3x3 window spans 3 or 1.5 input pixels
    with pytest.raises(ValueError, match="upsample 'bilinear' is not one of nearest_conv, conv_nearest"):
        Upsample(4, "bilinear")


@pytest.mark.parametrize("order", ["nearest_conv", "conv_nearest"])
def test_a_narrowing_upsample_hands_each_level_its_own_width(order):
    """upsample_narrows: the conv maps to the width of the level it enters (U-Net's up-convolution)."""
    from diffuse.models.layers import Upsample
    from diffuse.models.unet import UNet

    sizes = dict(in_channels=1, channels=8, channel_mult=(1, 2, 4), num_res_blocks=1, attention_levels=(),
                 head_dim=8, groups=4, upsample=order)
    wide, narrow = UNet(**sizes), UNet(**sizes, upsample_narrows=True)
    convs = lambda m: [(u.conv.in_channels, u.conv.out_channels) for u in m.modules() if isinstance(u, Upsample)]  # noqa: E731
    assert convs(wide) == [(32, 32), (16, 16)] and convs(narrow) == [(32, 16), (16, 8)]
    assert sum(p.numel() for p in narrow.parameters()) < sum(p.numel() for p in wide.parameters())
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert narrow(x, torch.tensor([3.0, 700.0])).shape == (2, 1, 28, 28)


@pytest.mark.parametrize("name", group_options("schedule"))
def test_every_schedule_builds(name):
    schedule = build(composed("train", f"schedule={name}").schedule, SCHEDULES, Schedule)
    assert schedule.T >= 2 and schedule.timesteps(10)[-1] == -1


@pytest.mark.parametrize("name", group_options("objective"))
def test_every_objective_builds(name):
    objective = build(composed("train", f"objective={name}").objective, OBJECTIVES, Objective)
    assert isinstance(objective, Objective)


@pytest.mark.parametrize("name", group_options("sampler"))
@pytest.mark.parametrize("config_name", ["train", "sample", "eval"])
def test_every_sampler_builds_and_checks(name, config_name):
    built = sampler(composed(config_name, f"sampler={name}").sampler)
    ts = built.check(build(composed("train").schedule, SCHEDULES, Schedule), 10)
    assert len(ts) == 11 and ts[-1] == -1 and built.name == name


# A preset's model at a size that trains in seconds (its layout otherwise as the preset has it), and a short run.
TINY_PRESET = ("model.channels=16", "model.channel_mult=[1,2]", "model.num_res_blocks=1", "model.groups=8",
               "model.head_dim=16", "model.attention_levels=[1]", "train.steps=2", "train.batch_size=4",
               "train.warmup=1", "train.sample_every=0", "train.sample_n=2", "train.sample_steps=2", "train.ckpt_every=0",
               "train.eval_every=0", "train.log_every=1", "train.precision=fp32", "train.max_minutes=0")


@pytest.mark.parametrize("name", group_options("experiment"))
def test_every_experiment_composes_builds_and_trains_a_few_steps_at_tiny_size(name, tmp_path, data_root):
    """Each preset runs as written but for its model's size and its length; the checkpoint records the objective
    and schedule the preset chose (a data set that needs files gets a stand-in)."""
    import json

    from conftest import run_cli
    from diffuse.checkpoint import read_metadata
    from diffuse.config import plain

    cfg = composed("train", f"experiment={name}")
    assert cfg.train.steps > 0
    dataset = cfg.dataset._target_.rsplit(".", 1)[1]
    run_cli("train", f"experiment={name}", *local_data(dataset, tmp_path), *TINY_PRESET, "hydra.run.dir=run",
            cwd=tmp_path)
    config = json.loads(read_metadata(tmp_path / "run" / "checkpoints" / "last.safetensors")["config"])
    assert config["objective"] == plain(cfg.objective) and config["schedule"] == plain(cfg.schedule)
    assert (tmp_path / "run" / "samples" / "step_0000002.png").is_file()  # the final grid, with the preset's sampler


@pytest.mark.parametrize("config_name,section", [("train", "train"), ("sample", None), ("eval", None),
                                                 ("tune-steps", None), ("distill", None)])
def test_every_option_default_is_in_the_yaml_once_and_builds(config_name, section):
    """The options dataclasses carry no defaults: the YAML holds each one, and composes into valid options."""
    import dataclasses

    from diffuse.cli import TASKS, attribute

    cls = attribute(TASKS[config_name][0])
    assert all(f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
               for f in dataclasses.fields(cls))
    cfg = composed(config_name, *(["ckpt=x"] if config_name != "train" else []))
    opts = options(cls, cfg if section is None else cfg[section], strict=section is not None)
    assert isinstance(opts, cls)


def test_options_name_what_is_wrong():
    from diffuse.train import TrainOptions

    node = dict(composed("train").train)
    with pytest.raises(DiffuseError, match="train.steps must be int, got 'abc'"):
        options(TrainOptions, {**node, "steps": "abc"}, "train.")
    with pytest.raises(DiffuseError, match="unknown option train.nope"):
        options(TrainOptions, {**node, "nope": 1}, "train.")
    with pytest.raises(DiffuseError, match="option train.lr is missing"):
        options(TrainOptions, {k: v for k, v in node.items() if k != "lr"}, "train.")
    with pytest.raises(DiffuseError, match="train.ema_warmup must be bool, got 1"):
        options(TrainOptions, {**node, "ema_warmup": 1}, "train.")


@pytest.mark.parametrize("target", ["os.system", "builtins.eval", "subprocess.run", "diffuse.cli.os.system",
                                    "diffuse.config.importlib.import_module", "diffuse.nope.thing"])
def test_targets_outside_the_allow_list_are_refused(target):
    with pytest.raises(DiffuseError, match="not allowed|does not exist"):
        build({"_target_": target, "command": "touch /tmp/diffuse-pwned"})
    assert not Path("/tmp/diffuse-pwned").exists()


def test_allowed_targets_resolve():
    assert locate("torch.optim.AdamW") is torch.optim.AdamW
    assert callable(locate("diffuse.samplers.ddim.ddim"))
