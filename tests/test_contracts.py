"""The contract every network in conf/model/ keeps (diffuse.models): built on the meta device, saved, reloaded
through the checkpoint path, it computes exactly what it did; labels and the null class behave; a network that
would come back from a checkpoint with uninitialised tensors is refused. And checkpoints written before
objectives existed still load and sample."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from conftest import TINY_TRAIN, cli_in_process, composed, group_options, run_cli
from diffuse import DiffuseError
from diffuse.checkpoint import checkpoint_metadata, load_checkpoint, load_model, save_checkpoint, state_tensors
from diffuse.config import MODELS, build, plain
from diffuse.models import Network, check_network


def built(name: str, conditional: bool):
    """The network of conf/model/<name>.yaml, with its zero-initialised layers given weights (a network that
    outputs zeros would hide a wrong reload)."""
    cfg = composed("train", f"model={name}", f"model.conditional={str(conditional).lower()}")
    node = {**plain(cfg.model), **({"num_classes": 10} if conditional else {})}
    torch.manual_seed(0)
    network = build(node, MODELS)
    with torch.no_grad():
        for p in network.parameters():
            if not p.any():
                p.normal_(std=0.05)
    shape = [cfg.dataset.channels, cfg.dataset.image_size, cfg.dataset.image_size]
    return network.eval(), node, plain(cfg), shape


@pytest.mark.parametrize("name", group_options("model"))
@pytest.mark.parametrize("conditional", [False, True])
def test_every_model_keeps_the_contract_through_a_checkpoint(name, conditional, tmp_path):
    with torch.device("meta"):  # no data-dependent work in __init__
        meta = build(composed("train", f"model={name}").model, MODELS)
    assert all(p.is_meta for p in meta.parameters())
    network, node, cfg, shape = built(name, conditional)
    assert isinstance(network, Network) and check_network(network, name) is network
    assert network.conditional is conditional and network.num_classes >= 1
    config = {"model": node, "schedule": cfg["schedule"], "objective": cfg["objective"], "dataset_shape": shape}
    path = tmp_path / "last.safetensors"
    save_checkpoint([path], state_tensors(network, "ema."), checkpoint_metadata(0, config))
    reloaded = load_model(path).model.network
    assert dict(network.named_buffers()).keys() == dict(reloaded.named_buffers()).keys()
    for (key, a), (_, b) in zip(list(network.named_buffers()) + list(network.named_parameters()),
                                list(reloaded.named_buffers()) + list(reloaded.named_parameters())):
        assert torch.equal(a, b), key  # every tensor, persistent or not, came back
    g = torch.Generator().manual_seed(1)
    x, time = torch.randn(2, *shape, generator=g), torch.tensor([0.0, 731.5])
    with torch.no_grad():
        if conditional:
            labels = torch.tensor([3, network.num_classes])  # a class, and the null class
            assert torch.equal(network(x, time, labels), reloaded(x, time, labels))
            assert torch.equal(network(x, time, torch.full((2,), network.num_classes)), network(x, time))
            assert not torch.equal(network(x, time, torch.tensor([3, 3])), network(x, time, torch.tensor([4, 4])))
        else:
            assert torch.equal(network(x, time), reloaded(x, time))
            with pytest.raises(Exception):
                network(x, time, torch.tensor([3, 3]))  # an unconditional network takes no labels


class WithTable(nn.Module):
    """A network that keeps a fixed table outside its state dict: it would come back uninitialised."""

    def __init__(self, in_channels: int = 1, conditional: bool = False, num_classes: int = 10):
        super().__init__()
        self.conditional, self.num_classes = conditional, num_classes
        self.conv = nn.Conv2d(in_channels, in_channels, 3, padding=1)
        self.register_buffer("table", torch.arange(4.0), persistent=False)

    def forward(self, x, time, labels=None):
        return self.conv(x) + self.table.sum()


def test_a_network_with_a_non_persistent_buffer_is_refused():
    with pytest.raises(DiffuseError, match=r"non-persistent buffers \(table\)"):
        check_network(WithTable(), "WithTable")
    with pytest.raises(DiffuseError, match="not a diffuse network"):
        check_network(nn.Conv2d(1, 1, 3), "Conv2d")


def old_format(src, dst):
    """A checkpoint as diffuse wrote it before objectives: `parameterization` in the metadata, none in the config."""
    tensors, meta = load_checkpoint(src)
    config = json.loads(meta["config"])
    prediction = config.pop("objective")["prediction"]
    config["parameterization"] = prediction
    save_file(tensors, dst, {**meta, "config": json.dumps(config), "parameterization": prediction})
    return dst


def test_a_checkpoint_from_before_objectives_loads_samples_and_resumes_unchanged(tmp_path, data_root):
    import numpy as np

    run_cli("train", *TINY_TRAIN, "objective=v", "train.steps=4", "train.sample_every=0", "train.precision=fp32",
            "hydra.run.dir=new", cwd=tmp_path)
    old = old_format(tmp_path / "new" / "checkpoints" / "last.safetensors", tmp_path / "old.safetensors")
    assert load_model(old).model.objective == load_model(tmp_path / "new").model.objective
    for source, out in ((tmp_path / "new", "a"), (old, "b")):
        cli_in_process("sample", f"ckpt={source}", "steps=3", "n=4", f"hydra.run.dir={out}", cwd=tmp_path)
    a, b = (np.load(tmp_path / d / "samples.npz")["images"] for d in "ab")
    assert np.array_equal(a, b)
    for source, out in ((tmp_path / "new", "ra"), (old, "rb")):
        run_cli("train", *TINY_TRAIN, "train.steps=6", "train.sample_every=0", "train.precision=fp32",
                f"resume={source}", f"hydra.run.dir={out}", cwd=tmp_path)
    ra, rb = (load_file(tmp_path / d / "checkpoints" / "last.safetensors") for d in ("ra", "rb"))
    assert sorted(ra) == sorted(rb) and all(torch.equal(ra[k], rb[k]) for k in ra)
