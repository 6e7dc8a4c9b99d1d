"""Super-resolution (SR3): the degradation and the upsampled condition, SSIM, the network and the denoiser fed the
condition, and the CLI: `diffuse train dataset.lowres=7`, `diffuse sample lowres=`, `diffuse eval` beside bicubic."""

import json

import numpy as np
import pytest
import torch

from conftest import TINY_TRAIN, cli_in_process, group_options, sampler_from_yaml
from diffuse import DiffuseError
from diffuse.denoiser import DiffusionModel, ModelDenoiser
from diffuse.generate import GenerationOptions, generate
from diffuse.images import from_uint8, ssim, to_uint8
from diffuse.loss import diffusion_loss
from diffuse.models.unet import UNet
from diffuse.objectives.ddpm import DDPM
from diffuse.schedules.linear import linear
from diffuse.start_images import StartImages
from diffuse.superres import check_lowres, degrade, superres_scores, upsample


def uint8_images(n, side, channels=1, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, side, side, channels), dtype=np.uint8)


def test_degrade_averages_each_square_and_lands_on_uint8_levels():
    x = from_uint8(uint8_images(3, 28, 3))  # (3,3,28,28)
    low = degrade(x, 7)
    assert low.shape == (3, 3, 7, 7)
    levels = (x + 1) * 127.5
    mean = levels[..., 8:12, 4:8].mean(dim=(-1, -2))  # the square of low-res pixel (2, 1)
    assert torch.equal((low[..., 2, 1] + 1) * 127.5, mean.round())
    assert torch.allclose(((low + 1) * 127.5), ((low + 1) * 127.5).round(), atol=1e-4)


def test_upsampling_keeps_a_constant_image_and_nearest_upsampling_degrades_back_exactly():
    low = degrade(from_uint8(uint8_images(4, 7)), 7)
    assert torch.allclose(upsample(torch.full((1, 1, 7, 7), 0.3), 28), torch.full((1, 1, 28, 28), 0.3), atol=1e-6)
    nearest = to_uint8(low.repeat_interleave(4, -1).repeat_interleave(4, -2))  # (4,28,28,1)
    scores = superres_scores(nearest, low, None)["consistency"]
    assert scores == {"mean_abs_uint8": 0.0, "max_abs_uint8": 0, "within_1_share": 1.0}
    bicubic = to_uint8(upsample(low, 28))
    assert superres_scores(bicubic, low, None)["consistency"]["mean_abs_uint8"] > 1  # bicubic is not consistent


def test_ssim_of_constant_images_is_the_luminance_term_and_falls_with_noise():
    a, b = np.full((1, 16, 16, 1), 100, np.uint8), np.full((1, 16, 16, 1), 160, np.uint8)
    c1 = (0.01 * 255) ** 2
    assert ssim(a, b) == pytest.approx((2 * 100 * 160 + c1) / (100 ** 2 + 160 ** 2 + c1), rel=1e-12)
    x = uint8_images(2, 28, 3)
    noisy = np.clip(x.astype(int) + np.random.default_rng(1).integers(-40, 41, x.shape), 0, 255).astype(np.uint8)
    noisier = np.clip(x.astype(int) + np.random.default_rng(1).integers(-90, 91, x.shape), 0, 255).astype(np.uint8)
    assert ssim(x, x) == pytest.approx(1.0) and ssim(x, noisy) == pytest.approx(ssim(noisy, x))
    assert 1 > ssim(x, noisy) > ssim(x, noisier)


@pytest.mark.parametrize("lowres,ok", [(0, 0), (None, 0), (7, 7), (14, 14), (4, 4), (1, 1), (5, None), (28, None),
                                       (-7, None), ("7", None), (7.0, None)])
def test_check_lowres_takes_sides_that_divide_the_image_side_at_factor_2_or_more(lowres, ok):
    if ok is None:
        with pytest.raises(DiffuseError, match="allowed: 0 for off, 1, 2, 4, 7, 14"):
            check_lowres(lowres, (1, 28, 28))
    else:
        assert check_lowres(lowres, (1, 28, 28)) == ok


class Spy(torch.nn.Module):
    """A network that records the condition it is given and answers zeros."""

    conditional, num_classes, cond_channels = True, 10, 1

    def __init__(self):
        super().__init__()
        self.conds, self.labels = [], []

    def forward(self, x, t, labels=None, cond=None):
        self.conds.append(cond.clone())
        self.labels.append(None if labels is None else labels.clone())
        return torch.zeros_like(x)


def test_the_loss_conditions_on_the_degraded_batch_of_its_own_part():
    x0 = from_uint8(uint8_images(6, 28))
    spy = Spy()
    diffusion_loss(spy, DDPM("eps"), linear(), x0, torch.Generator().manual_seed(0), labels=torch.arange(6),
                   part=slice(2, 5), lowres=7)
    assert torch.equal(spy.conds[0], upsample(degrade(x0[2:5], 7), 28))
    unet = UNet(in_channels=1, channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(),
                cond_channels=1)
    with torch.no_grad():  # the zero-initialised head passes no gradient back: give it weights
        unet.head[-1].weight.normal_(std=0.05)
    loss = diffusion_loss(unet, DDPM("eps"), linear(), x0, torch.Generator().manual_seed(0), lowres=7)
    loss.backward()
    assert unet.stem.weight.grad[:, 1].abs().sum() > 0  # the condition channel reaches the loss
    with pytest.raises(ValueError, match="takes 1 condition channels, and was given none"):
        unet(x0, torch.zeros(6))


def test_generation_conditions_image_i_on_low_res_image_i_mod_m_in_any_batch_size_and_under_guidance():
    low = degrade(from_uint8(uint8_images(3, 28)), 7)  # (3,1,7,7)
    start = StartImages(low, "test", superres=True)
    spy = Spy()
    model = DiffusionModel(spy, DDPM("eps"), linear(), (1, 28, 28), lowres=7)
    opts = GenerationOptions(n=5, batch_size=2, steps=2, seed=0, precision="fp32", clip_x0=False,
                             dynamic_threshold=0.0, guidance=2.0, guidance_rescale=0.0)
    ddim = sampler_from_yaml("ddim")
    generate(model, ddim, opts, torch.device("cpu"), [4], images=start)
    first = spy.conds[0]  # (4,1,28,28): the guided 2B batch of images 0, 1
    assert torch.equal(first, torch.cat([upsample(low[:2], 28)] * 2)) and spy.labels[0].tolist() == [4, 4, 10, 10]
    last = spy.conds[-1]  # image 4 -> low-res image 1
    assert torch.equal(last, torch.cat([upsample(low[1:2], 28)] * 2))
    with pytest.raises(DiffuseError, match="needs low-res images"):
        generate(model, ddim, opts, torch.device("cpu"), [4])
    with pytest.raises(DiffuseError, match="generates from noise"):
        generate(DiffusionModel(spy, DDPM("eps"), linear(), (1, 28, 28)), ddim, opts, torch.device("cpu"), [4],
                 images=start)
    with pytest.raises(DiffuseError, match="needs its low-res images"):
        ModelDenoiser(model)


@pytest.mark.parametrize("name", group_options("sampler"))
def test_every_sampler_upsamples_and_the_condition_changes_the_images(name):
    torch.manual_seed(0)
    unet = UNet(in_channels=1, channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(), head_dim=16,
                groups=4, cond_channels=1)
    with torch.no_grad():  # the zero-initialised head would hide the condition: give it weights
        unet.head[-1].weight.normal_(std=0.05)
    model = DiffusionModel(unet, DDPM("eps"), linear(), (1, 28, 28), lowres=7)
    opts = GenerationOptions(n=2, batch_size=2, steps=4, seed=0, precision="fp32", clip_x0=False,
                             dynamic_threshold=0.0, guidance=1.0, guidance_rescale=0.0)
    low = degrade(from_uint8(uint8_images(2, 28)), 7)
    one, other = (generate(model, sampler_from_yaml(name), opts, torch.device("cpu"),
                           images=StartImages(x, "test", superres=True)).images for x in (low, -low))
    assert one.shape == (2, 28, 28, 1) and not np.array_equal(one, other)


@pytest.fixture(scope="module")
def sr_run(tmp_path_factory, data_root):
    """A tiny super-resolution run on MNIST (28 px from 7), and 7x7 inputs as a file."""
    cwd = tmp_path_factory.mktemp("sr_run")
    cli_in_process("train", *TINY_TRAIN, "dataset.lowres=7", "hydra.run.dir=run", cwd=cwd)
    np.savez(cwd / "low.npz", images=uint8_images(3, 7))
    return cwd


def drawn(folder):
    return np.load(folder / "samples.npz")["images"], json.loads((folder / "sampling.json").read_text())


def test_a_super_resolution_run_samples_from_the_test_split_or_a_file_and_evaluates_beside_bicubic(
        sr_run, eval_cache, data_root, tmp_path):
    assert (sr_run / "run" / "samples" / "step_0000006.png").is_file()
    common = ("ckpt=" + str(sr_run / "run"), "steps=3", "n=4", "batch_size=3")
    cli_in_process("sample", *common, "hydra.run.dir=test", cwd=tmp_path)
    images, record = drawn(tmp_path / "test")
    assert images.shape == (4, 28, 28, 1)
    assert record["start"] == {"mode": "super-resolution", "source": "mnist test split, degraded to 7x7",
                               "images": 10000, "lowres": [1, 7, 7]}
    cli_in_process("sample", *common[:3], "batch_size=1", "hydra.run.dir=one", cwd=tmp_path)
    assert np.array_equal(drawn(tmp_path / "one")[0], images)  # image i from (seed, i) and test image i
    cli_in_process("sample", *common, f"lowres={sr_run / 'low.npz'}", "hydra.run.dir=file", cwd=tmp_path)
    from_file, record = drawn(tmp_path / "file")
    assert record["start"]["images"] == 3 and not np.array_equal(from_file, images)
    cli_in_process("eval", *common[:2], "n=20", "hydra.run.dir=eval", cwd=tmp_path, env={"DIFFUSE_CACHE": str(eval_cache)})
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    sr = metrics["superres"]
    from diffuse.datasets.mnist import mnist

    test = mnist(str(data_root), False, False).images[:20]  # (20,1,28,28)
    low = degrade(test.float() / 127.5 - 1, 7)
    bicubic = to_uint8(upsample(low, 28))
    truth = test.permute(0, 2, 3, 1).numpy()
    assert sr["bicubic"]["ssim"] == pytest.approx(ssim(bicubic, truth))
    assert sr["bicubic"]["psnr_db"] == pytest.approx(superres_scores(bicubic, low, truth)["psnr_db"])
    assert sr["bicubic"]["fid"] > 0 and 0 < sr["model"]["ssim"] < 1 and metrics["metrics"]["ssim"] == sr["model"]["ssim"]
    assert metrics["start"]["mode"] == "super-resolution"


def written(folder):
    """What a command wrote besides Hydra's own files: nothing, when it refused its input."""
    return [p.name for p in folder.glob("*") if p.name not in (".hydra",) and not p.name.endswith(".log")]


@pytest.mark.parametrize("command,args,expected", [
    ("sample", ("lowres=big.npz",), "lowres=big.npz has images of 14x14 with 1 channel(s), and the model upsamples 4x "
                                    "from 7x7 with 1"),
    ("sample", ("lowres=rgb.npz",), "lowres=rgb.npz has images of 7x7 with 3 channel(s)"),
    ("sample", ("init=low.npz",), "init=, strength, inpaint= and resample do not apply to it"),
    ("eval", ("inpaint=low.npz", "mask=centre"), "init=, strength, inpaint= and resample do not apply to it"),
    ("eval", ("samples=low.npz", "lowres=low.npz"), "and lowres= to upsampling with one; samples= scores the images"),
    ("eval", ("dataset=folder", "dataset.path=."), "a super-resolution checkpoint needs low-res images: give "
                                                   "lowres=NPZ_OR_DIR"),
    ("interpolate", (), "is a super-resolution model (dataset.lowres=7): diffuse sample and diffuse eval upsample"),
    ("tune-steps", ("nfe=4",), "this command draws from noise"),
    ("distill", (), "is a super-resolution model (dataset.lowres=7); distillation takes models that generate"),
])
def test_super_resolution_refuses_bad_input_in_one_line(sr_run, command, args, expected):
    np.savez(sr_run / "big.npz", images=uint8_images(2, 14))
    np.savez(sr_run / "rgb.npz", images=uint8_images(2, 7, 3))
    proc = cli_in_process(command, "ckpt=run", *args, "hydra.run.dir=refused", cwd=sr_run, check=False)
    assert proc.returncode == 2 and expected in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not written(sr_run / "refused")


@pytest.mark.parametrize("args,expected", [
    (("dataset.lowres=5",), "dataset.lowres=5: the low-resolution side must divide the 28x28 images' side"),
    (("+model.cond_channels=1",), "model.cond_channels=1 is set from dataset.lowres"),
    (("dataset.lowres=7", "train.eval_every=3"), "train.eval_every scores images drawn from noise"),
])
def test_training_refuses_bad_super_resolution_settings_in_one_line(tmp_path, data_root, args, expected):
    proc = cli_in_process("train", *TINY_TRAIN, *args, "hydra.run.dir=refused", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and expected in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "refused" / "checkpoints").exists()


def test_lowres_on_a_model_that_generates_from_noise_is_refused(tiny_run):
    np.savez(tiny_run / "low7.npz", images=uint8_images(2, 7))
    proc = cli_in_process("sample", "ckpt=run", "lowres=low7.npz", "hydra.run.dir=refused", cwd=tiny_run, check=False)
    assert proc.returncode == 2 and "conditions a super-resolution checkpoint" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not written(tiny_run / "refused")


def test_colour_images_upsample_from_8_to_32_with_a_3_channel_condition(tmp_path):
    """CIFAR-10's case (32 px from 8) on a folder of RGB images the test writes: the network takes 3 condition
    channels, and `lowres=` 8x8 colour images come back 32x32 colour images."""
    from safetensors import safe_open

    from fake_data import write_image_folder

    folder = write_image_folder(tmp_path / "images", per_class=8)
    cli_in_process("train", *TINY_TRAIN, "dataset=folder", f"dataset.path={folder}", "dataset.lowres=8",
                   "hydra.run.dir=run", cwd=tmp_path)
    with safe_open(str(tmp_path / "run" / "checkpoints" / "last.safetensors"), "pt") as f:
        config = json.loads(f.metadata()["config"])
        assert f.get_slice("ema.stem.weight").get_shape()[1] == 3 + 3  # image and condition channels
    assert config["model"]["cond_channels"] == 3 and config["dataset"]["lowres"] == 8
    np.savez(tmp_path / "low.npz", images=uint8_images(3, 8, 3))
    cli_in_process("sample", "ckpt=run", "lowres=low.npz", "n=3", "steps=2", "hydra.run.dir=s", cwd=tmp_path)
    assert drawn(tmp_path / "s")[0].shape == (3, 32, 32, 3)
