"""Every option of every config group composes and instantiates: the folders are the registry."""

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module

from diffuse import DiffuseError
from fake_data import write_cifar_bin, write_idx, write_image_folder
from diffuse.data import ImageData
from diffuse.run import build, check_sampler, locate
from diffuse.schedule import Schedule

CONF = Path(__file__).resolve().parents[1] / "conf"


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def composed(config_name: str, *overrides: str):
    with initialize_config_module(config_module="diffuse.conf", version_base="1.3"):
        return compose(config_name=config_name, overrides=list(overrides))


def test_groups_are_not_empty():
    for group in ("model", "schedule", "dataset", "sampler", "experiment"):
        assert options(group), group


def local_data(name: str, tmp_path: Path) -> list[str]:
    """Overrides that point a data set at files on this machine: the real MNIST, stand-ins for the rest."""
    if name == "mnist":
        return []
    if name == "fashion_mnist":
        write_idx(tmp_path, "FashionMNIST")
    elif name == "cifar10":
        write_cifar_bin(tmp_path)
    elif name == "folder":
        return [f"dataset.path={write_image_folder(tmp_path / 'images')}"]
    return [f"dataset.root={tmp_path}", "dataset.download=false"]


@pytest.mark.parametrize("name", options("dataset"))
def test_every_dataset_builds(name, data_root, tmp_path):
    cfg = composed("train", f"dataset={name}", *local_data(name, tmp_path))
    data = build(cfg.dataset)
    assert isinstance(data, ImageData) and data.images.dtype == torch.uint8
    assert data.shape == (cfg.dataset.channels, cfg.dataset.image_size, cfg.dataset.image_size)
    assert len(data) == len(data.labels) > 0


@pytest.mark.parametrize("name", options("model"))
def test_every_model_builds_and_keeps_the_image_shape(name):
    cfg = composed("train", f"model={name}")
    model = build(cfg.model)
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
    convs = lambda m: [(u.conv.in_channels, u.conv.out_channels) for u in m.modules() if isinstance(u, Upsample)]
    assert convs(wide) == [(32, 32), (16, 16)] and convs(narrow) == [(32, 16), (16, 8)]
    assert sum(p.numel() for p in narrow.parameters()) < sum(p.numel() for p in wide.parameters())
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert narrow(x, torch.tensor([3.0, 700.0])).shape == (2, 1, 28, 28)


@pytest.mark.parametrize("name", options("schedule"))
def test_every_schedule_builds(name):
    schedule = build(composed("train", f"schedule={name}").schedule)
    assert isinstance(schedule, Schedule) and schedule.T == 1000


@pytest.mark.parametrize("name", options("sampler"))
@pytest.mark.parametrize("config_name", ["train", "sample"])
def test_every_sampler_builds_and_runs(name, config_name):
    cfg = composed(config_name, f"sampler={name}")
    schedule = build(composed("train").schedule)
    check_sampler(build(cfg.sampler), schedule, 10, (1, 4, 4))


@pytest.mark.parametrize("name", options("experiment"))
def test_every_experiment_composes(name):
    cfg = composed("train", f"experiment={name}")
    assert cfg.train.steps > 0


@pytest.mark.parametrize("target", ["os.system", "builtins.eval", "subprocess.run", "diffuse.cli.os.system",
                                    "diffuse.run.importlib.import_module", "diffuse.nope.thing"])
def test_targets_outside_the_allow_list_are_refused(target):
    with pytest.raises(DiffuseError, match="not allowed|does not exist"):
        build({"_target_": target, "command": "touch /tmp/diffuse-pwned"})
    assert not Path("/tmp/diffuse-pwned").exists()


def test_allowed_targets_resolve():
    assert locate("torch.optim.AdamW") is torch.optim.AdamW
    assert callable(locate("diffuse.samplers.ddim.ddim"))
