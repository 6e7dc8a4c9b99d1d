"""Uses beyond sampling from noise: image-to-image (SDEdit, `init=` and `strength=`) and inpainting (RePaint,
`inpaint=` and `mask=`), on exact answers and through the real CLI."""

import json

import numpy as np
import pytest
import torch

from conftest import cli_in_process, group_options, sampler_from_yaml
from diffuse.generate import edit_walk
from diffuse.repaint import inpaint, repaint_path
from diffuse.samplers.noise import randn_like
from diffuse.schedules.linear import linear
ONE_STEP = [name for name in group_options("sampler") if not sampler_from_yaml(name).facts.multistep]


@pytest.fixture
def run(tiny_run):
    return tiny_run


def test_edit_walk_keeps_the_last_strength_share_of_the_walk():
    ts = linear().timesteps(10, "trailing")
    assert edit_walk(ts, 0.0) == [-1] and edit_walk(ts, 1.0) == ts
    assert edit_walk(ts, 0.3) == ts[7:] and edit_walk(ts, 0.7) == ts[3:] and edit_walk(ts, 0.55) == ts[5:]


def drawn(folder):
    return np.load(folder / "samples.npz")["images"], json.loads((folder / "sampling.json").read_text())


def test_strength_0_returns_the_input_1_is_plain_sampling_and_between_walks_the_end_of_the_walk(run, tmp_path):
    init = np.load(run / "init.npz")["images"]
    common = (f"ckpt={run / 'run'}", f"init={run / 'init.npz'}", "n=5", "steps=10", "seed=3", "batch_size=2")
    cli_in_process("sample", *common, "strength=0", "hydra.run.dir=s0", cwd=tmp_path)
    images, record = drawn(tmp_path / "s0")
    assert np.array_equal(images, init[np.arange(5) % 3]) and record["nfe_per_image"] == 0
    assert record["start"] == {"mode": "image-to-image", "source": str(run / "init.npz"), "images": 3, "strength": 0.0,
                               "steps_walked": 0}
    cli_in_process("sample", *common, "strength=1", "hydra.run.dir=s1", cwd=tmp_path)
    cli_in_process("sample", *common[:1], *common[2:], "hydra.run.dir=plain", cwd=tmp_path)
    assert np.array_equal(drawn(tmp_path / "s1")[0], drawn(tmp_path / "plain")[0])
    cli_in_process("sample", *common, "strength=0.5", "hydra.run.dir=half", cwd=tmp_path)
    images, record = drawn(tmp_path / "half")
    full = drawn(tmp_path / "plain")[1]["timesteps"]
    assert record["timesteps"] == full[5:] and record["nfe_per_image"] == 5 and record["start"]["steps_walked"] == 5
    assert not np.array_equal(images, init[np.arange(5) % 3]) and not np.array_equal(images, drawn(tmp_path / "plain")[0])


@pytest.mark.parametrize("command,args,expected", [
    ("sample", ("init=small.npz",), "init=small.npz has images of 14x14 with 1 channel(s), and the model makes 28x28 "
                                    "with 1"),
    ("sample", ("init=rgb.npz",), "init=rgb.npz has images of 28x28 with 3 channel(s)"),
    ("sample", ("init=init.npz", "strength=1.5"), "strength must be in [0, 1] (0: the init image itself, 1: plain "
                                                  "sampling), got 1.5"),
    ("sample", ("strength=0.5",), "strength=0.5 applies to image-to-image sampling: give init=NPZ_OR_FOLDER"),
    ("sample", ("init=missing.npz",), "init=missing.npz: expected an .npz file or a folder of images"),
    ("eval", ("samples=init.npz", "init=init.npz"), "labels, guidance, init=, strength, inpaint=, mask= and resample "
                                                    "apply to generating (ckpt=)"),
    ("eval", ("samples=init.npz", "strength=0.5"), "samples= scores the images as they are"),
    ("eval", ("init=init.npz", "strength=-0.1"), "strength must be in [0, 1]"),
    ("sample", ("resample=3",), "resample=3 applies to inpainting: give inpaint=NPZ_OR_FOLDER and mask="),
    ("eval", ("samples=init.npz", "resample=3"), "samples= scores the images as they are"),
    ("tune-steps", ("strength=0.5",), "Could not override 'strength'"),
])
def test_image_to_image_refuses_bad_input_in_one_line(run, command, args, expected):
    np.savez(run / "small.npz", images=np.zeros((2, 14, 14, 1), np.uint8))
    np.savez(run / "rgb.npz", images=np.zeros((2, 28, 28, 3), np.uint8))
    proc = cli_in_process(command, "ckpt=run", *args, "hydra.run.dir=refused", cwd=run, check=False)
    assert proc.returncode == 2 and expected in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (run / "refused" / "samples.npz").exists() and not (run / "refused" / "metrics.json").exists()


def test_eval_from_init_images_scores_their_distance_to_the_images_and_report_plots_the_trade_off(run, eval_cache,
                                                                                                 tmp_path):
    """`diffuse eval ckpt=... init=... strength=s` draws what `diffuse sample` draws from them and records how far
    each image moved (0 at strength 0); `diffuse report --x start_rmse` plots FID against that distance."""
    from conftest import cached

    common = (f"ckpt={run / 'run'}", f"init={run / 'init.npz'}", "n=6", "steps=4", "kid_subset_size=6", "floor=false")
    for strength in (0, 0.5, 1):
        cli_in_process("eval", *common, f"strength={strength}", f"hydra.run.dir=sweep/s{strength}", cwd=tmp_path,
                       env=cached(eval_cache))
    cli_in_process("sample", *common[:4], "strength=0.5", "hydra.run.dir=drawn", cwd=tmp_path)
    records = {s: json.loads((tmp_path / "sweep" / f"s{s}" / "metrics.json").read_text()) for s in (0, 0.5, 1)}
    assert records[0]["faithfulness"]["rmse"] == 0 and records[0]["metrics"]["start_rmse"] == 0
    assert records[0]["faithfulness"]["exact_share"] == 1 and records[0]["faithfulness"]["psnr_db"] is None
    images = drawn(tmp_path / "drawn")[0]
    init = np.load(run / "init.npz")["images"][np.arange(6) % 3].astype(float)
    rmse = np.sqrt(((images - init) ** 2).reshape(6, -1).mean(1)) / 255
    assert records[0.5]["faithfulness"]["rmse"] == pytest.approx(rmse.mean()) and rmse.mean() > 0
    assert records[0.5]["start"]["strength"] == 0.5 and records[0.5]["start"]["steps_walked"] == 2
    assert records[1]["faithfulness"]["rmse"] > 0 and records[1]["nfe"] == 4
    proc = cli_in_process("report", str(tmp_path / "sweep"), "--x", "start_rmse", cwd=tmp_path)
    assert (tmp_path / "sweep" / "report_fid_vs_start_rmse.png").is_file(), proc.stdout
    table = (tmp_path / "sweep" / "report.md").read_text()
    assert "| strength |" in table and "| start_rmse |" in table
    bad = cli_in_process("report", str(tmp_path / "sweep"), "--x", "fid", cwd=tmp_path, check=False)
    assert bad.returncode == 2 and "--x 'fid' is not an axis for --metric fid; allowed: nfe, strength" in bad.stderr


def test_repaint_walks_back_at_each_jump_point_resample_minus_one_times():
    assert repaint_path(4, 2, 1) == [0, 1, 2, 3, 4]
    assert repaint_path(4, 2, 2) == [0, 1, 2, 3, 4, 2, 3, 4]
    assert repaint_path(6, 2, 3) == [0, 1, 2, 3, 4, 2, 3, 4, 2, 3, 4, 5, 6, 4, 5, 6, 4, 5, 6]


class ImageMixture:
    """Images whose pixels share one component: component k (weight w_k) draws every pixel from N(mu_k, s_k^2)
    independently. Its exact denoiser couples the pixels through the posterior on k, so the known pixels of an
    image tell the filled ones which component they belong to."""

    def __init__(self, weights, means, stds):
        self.w, self.mu, self.s = (torch.tensor(v, dtype=torch.float64) for v in (weights, means, stds))

    def denoiser(self, schedule):
        def denoise(x_t, t: float):
            alpha, sigma = schedule.alpha(t).item(), schedule.sigma(t).item()
            x = x_t.double().flatten(1).unsqueeze(-1)  # (B, D, 1) against (K,)
            var = alpha**2 * self.s**2 + sigma**2  # (K,)
            log_r = self.w.log() - 0.5 * ((x - alpha * self.mu) ** 2 / var + var.log()).sum(1)  # (B, K)
            r = torch.softmax(log_r, dim=-1).unsqueeze(1)  # (B, 1, K)
            x0 = (r * (self.mu + alpha * self.s**2 / var * (x - alpha * self.mu))).sum(-1).view_as(x_t)
            return (x_t - alpha * x0) / sigma, x0

        return denoise


@pytest.mark.parametrize("resample,share,off", [(1, 0.75, 0.06), (3, 0.95, 0.03)])
@pytest.mark.parametrize("name", ONE_STEP)
def test_inpainting_keeps_the_known_pixels_and_fills_the_rest_from_the_posterior(name, resample, share, off):
    """Known: the top half of images of component A (pixels N(-0.6, 0.15^2)), prior weight 0.3. The known half
    comes back exactly; the filled half of most images comes from A too (an uninformed fill: 30%), more with
    RePaint's resampling (1 walk: 88-100% measured, 3: 100%), with the pixel mean (within `off`: one walk leaves
    some fills half way, measured up to 0.035 off) and spread that the same sampler's plain 50-step walk gives its
    own A images (its discretization shrinks the spread below 0.15 alike)."""
    schedule, sampler, data = linear(), sampler_from_yaml(name), ImageMixture([0.3, 0.7], [-0.6, 0.5], [0.15, 0.25])
    gens = [torch.Generator().manual_seed(i) for i in range(32)]
    known = -0.6 + 0.15 * torch.randn(32, 1, 8, 8, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    mask = torch.zeros(1, 1, 8, 8, dtype=torch.float64)
    mask[..., :4, :] = 1
    x_T = randn_like(torch.empty(32, 1, 8, 8, dtype=torch.float64), gens)
    ts = sampler.timesteps(schedule, 50)
    x = inpaint(sampler, data.denoiser(schedule), schedule, x_T, ts, known, mask, jump=10, resample=resample,
                generator=gens)
    assert torch.equal(x[..., :4, :], known[..., :4, :])
    filled = x[..., 4:, :].flatten(1)  # (32, 32)
    from_a = filled[filled.mean(1) < -0.05]
    assert len(from_a) >= share * len(filled), len(from_a)
    gens = [torch.Generator().manual_seed(100 + i) for i in range(128)]
    plain = sampler(data.denoiser(schedule), schedule, randn_like(torch.empty(128, 1, 8, 8, dtype=torch.float64), gens),
                    ts, generator=gens).flatten(1)
    plain_a = plain[plain.mean(1) < -0.05]
    assert abs(from_a.mean() - plain_a.mean()) < off and abs(from_a.std() - plain_a.std()) < 0.02, \
        (from_a.mean().item(), plain_a.mean().item(), from_a.std().item(), plain_a.std().item())


def test_inpaint_keeps_the_known_pixels_exactly_through_the_cli(run, tmp_path):
    init = np.load(run / "init.npz")["images"]
    cli_in_process("sample", f"ckpt={run / 'run'}", f"inpaint={run / 'init.npz'}", "mask=centre", "n=4", "steps=4",
                   "resample=2", "jump_length=2", "hydra.run.dir=fill", cwd=tmp_path)
    images, record = drawn(tmp_path / "fill")
    known = np.ones((28, 28), bool)
    known[7:21, 7:21] = False
    assert np.array_equal(images[:, known], init[np.arange(4) % 3][:, known])
    assert not np.array_equal(images[:, ~known], init[np.arange(4) % 3][:, ~known])
    assert record["nfe_per_image"] == 6 and record["start"]["mode"] == "inpainting"  # 4 steps + 2 walked again
    assert record["start"]["known_share"] == round(1 - 14 * 14 / 784, 4)


@pytest.mark.parametrize("args,expected", [
    (("inpaint=init.npz",), "inpainting needs inpaint=NPZ_OR_FOLDER (the images) and mask=centre|half|random|NPZ"),
    (("mask=centre",), "inpainting needs inpaint=NPZ_OR_FOLDER"),
    (("inpaint=init.npz", "mask=centre", "init=init.npz"), "give init= (image-to-image) or inpaint= (inpainting), not both"),
    (("inpaint=init.npz", "mask=centre", "sampler=dpmpp_2m"), "sampler dpmpp_2m reuses its earlier steps' predictions"),
    (("inpaint=init.npz", "mask=wrong.npz"), "mask=wrong.npz has shape [2, 14, 14]; expected 28x28 masks, one or one "
                                             "per image (3)"),
    (("inpaint=init.npz", "mask=gray.npz"), "mask=gray.npz is not binary"),
    (("inpaint=init.npz", "mask=centre", "resample=0"), "jump_length and resample must be >= 1"),
])
def test_inpainting_refuses_bad_input_in_one_line(run, args, expected):
    np.savez(run / "wrong.npz", mask=np.ones((2, 14, 14), np.uint8))
    np.savez(run / "gray.npz", mask=np.full((28, 28), 0.5))
    proc = cli_in_process("sample", "ckpt=run", *args, "hydra.run.dir=refused", cwd=run, check=False)
    assert proc.returncode == 2 and expected in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (run / "refused" / "samples.npz").exists() and not (run / "refused" / "metrics.json").exists()


def test_the_preset_masks_hide_the_centre_the_bottom_half_or_random_pixels():
    from diffuse.start_images import preset_mask

    centre, half = preset_mask("centre", 1, (1, 28, 28), 0), preset_mask("half", 1, (1, 28, 28), 0)
    assert centre[0, 0, 7:21, 7:21].sum() == 0 and centre.sum() == 784 - 196
    assert half[0, 0, 14:].sum() == 0 and half[0, 0, :14].all()
    random = preset_mask("random", 3, (1, 28, 28), 0)
    assert 0.4 < random.mean() < 0.6 and not torch.equal(random[0], random[1])
    assert torch.equal(random, preset_mask("random", 3, (1, 28, 28), 0)) and set(random.unique().tolist()) == {0.0, 1.0}
