"""Interpolation and DDIM inversion: the inversion undoes every sampler that declares DDIM's update, on exact
answers; `diffuse interpolate` between noises and between real images through the real CLI."""

import json

import numpy as np
import pytest
import torch

from conftest import cli_in_process, group_options, sampler_from_yaml
from diffuse import DiffuseError
from diffuse.inversion import invert, slerp
from diffuse.samplers.noise import randn_like
from diffuse.schedules.flow import flow
from diffuse.schedules.linear import linear
from test_applications import ImageMixture

INVERTIBLE = [name for name in group_options("sampler") if sampler_from_yaml(name).invertible]


def test_the_invertible_samplers_are_the_deterministic_first_order_ones():
    assert set(INVERTIBLE) >= {"ddim", "euler", "flow_euler"}
    assert not sampler_from_yaml("ddim", eta=1.0).invertible  # DDPM's posterior draws fresh noise
    for name in group_options("sampler"):
        sampler = sampler_from_yaml(name)
        assert not sampler.invertible or sampler.facts.order == 1, name


@pytest.mark.parametrize("schedule", [linear(), flow()], ids=["linear", "flow"])
@pytest.mark.parametrize("name", INVERTIBLE)
def test_inversion_undoes_each_invertible_walk_and_refining_brings_it_closer(name, schedule):
    """Images walked from noise x_T by the sampler (50 steps), inverted, walked again: each fixed-point round
    shrinks the round trip's error (measured on the linear schedule: 0.13, 0.016, 0.003 at 0, 1, 2 rounds; 1e-4 at
    4) and the noise found approaches x_T. A sampler that declares DDIM's update walks DDIM's images."""
    data = ImageMixture([0.3, 0.7], [-0.6, 0.5], [0.15, 0.25])
    sampler = sampler_from_yaml(name, spacing="trailing")
    ts = sampler.check(schedule, 50)
    gens = [torch.Generator().manual_seed(i) for i in range(16)]
    x_T = randn_like(torch.empty(16, 1, 8, 8, dtype=torch.float64), gens)
    denoiser = data.denoiser(schedule)
    x0 = sampler(denoiser, schedule, x_T, ts)
    assert torch.allclose(x0, sampler_from_yaml("ddim")(denoiser, schedule, x_T, ts), atol=1e-9)
    trips, found = [], []
    for refine in (0, 1, 2, 4):
        noise = invert(denoiser, schedule, x0, ts, refine=refine)
        trips.append((sampler(denoiser, schedule, noise, ts) - x0).abs().max().item())
        found.append((noise - x_T).abs().max().item())
    assert all(a > b for a, b in zip(trips, trips[1:])) and trips[-1] < 1e-3, trips
    assert all(a > b for a, b in zip(found, found[1:])) and found[-1] < 5e-3, found


def test_at_zero_terminal_snr_the_first_step_is_solved_through_x0_and_one_step_cannot_be_inverted():
    """On the flow schedule a trailing walk starts where alpha = 0, where eps(x_T) = x_T / sigma_T for every x_T:
    the step is solved through its x0 instead, so refining converges at 8 steps too (measured: 1.1, 0.09, 0.03,
    0.006, 3e-4 at 0, 1, 2, 4, 8 rounds; solving that step in the eps form, as the others, left 0.015 at 8)."""
    data, schedule, sampler = ImageMixture([0.3, 0.7], [-0.6, 0.5], [0.15, 0.25]), flow(), sampler_from_yaml("ddim")
    ts = sampler.check(schedule, 8)
    assert schedule.alpha(ts[0]).item() == 0
    gens = [torch.Generator().manual_seed(i) for i in range(16)]
    x_T = randn_like(torch.empty(16, 1, 8, 8, dtype=torch.float64), gens)
    denoiser = data.denoiser(schedule)
    x0 = sampler(denoiser, schedule, x_T, ts)
    trips = [(sampler(denoiser, schedule, invert(denoiser, schedule, x0, ts, refine=r), ts) - x0).abs().max().item()
             for r in (0, 1, 2, 4, 8)]
    assert all(a > b for a, b in zip(trips, trips[1:])) and trips[-1] < 1e-3, trips
    with pytest.raises(DiffuseError, match="a one-step walk from zero terminal SNR sends every noise to the same"):
        invert(denoiser, schedule, x0, sampler.check(schedule, 1))


def test_slerp_keeps_the_ends_and_the_norm_of_noise_between_them():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(4, 1, 16, 16, generator=g), torch.randn(4, 1, 16, 16, generator=g)
    assert torch.allclose(slerp(a, b, 0.0), a, atol=1e-6) and torch.allclose(slerp(a, b, 1.0), b, atol=1e-6)
    for w in (0.25, 0.5, 0.75):
        norm = slerp(a, b, w).flatten(1).norm(dim=1)
        assert torch.allclose(norm, a.flatten(1).norm(dim=1), rtol=0.1)  # near-orthogonal noises of one norm
        assert (norm > 1.1 * (a + (b - a) * w).flatten(1).norm(dim=1)).all()  # the chord's is smaller
    assert torch.allclose(slerp(a, a, 0.3), a, atol=1e-6)  # one direction: no division by sin(0)


@pytest.fixture
def run(tiny_run):
    return tiny_run


def test_noise_interpolation_ends_at_the_images_sample_draws(run, tmp_path):
    """Pair p runs between the noises of images 2p and 2p+1, so its ends are `diffuse sample`'s images."""
    common = (f"ckpt={run / 'run'}", "steps=4", "seed=5")
    cli_in_process("interpolate", *common, "n=2", "frames=5", "batch_size=3", "hydra.run.dir=lerp", cwd=tmp_path)
    cli_in_process("sample", *common, "n=4", "hydra.run.dir=plain", cwd=tmp_path)
    frames = np.load(tmp_path / "lerp" / "frames.npz")
    plain = np.load(tmp_path / "plain" / "samples.npz")["images"]
    images = frames["images"].reshape(2, 5, 28, 28, 1)
    assert np.array_equal(images[:, 0], plain[[0, 2]]) and np.array_equal(images[:, -1], plain[[1, 3]])
    assert not np.array_equal(images[:, 2], images[:, 0]) and list(frames["weights"]) == [0, 0.25, 0.5, 0.75, 1]
    record = json.loads((tmp_path / "lerp" / "interpolation.json").read_text())
    assert record["mode"] == "noise" and "round_trip" not in record and (tmp_path / "lerp" / "strip.png").is_file()


def test_image_interpolation_inverts_the_images_and_records_their_round_trip(run, tmp_path):
    cli_in_process("interpolate", f"ckpt={run / 'run'}", f"images={run / 'init.npz'}", "n=2", "frames=3", "steps=8",
                   "refine=2", "hydra.run.dir=inv", cwd=tmp_path)
    record = json.loads((tmp_path / "inv" / "interpolation.json").read_text())
    trip = record["round_trip"]
    assert record["mode"] == "images" and trip["images"] == 4 and record["inversion"]["nfe_per_image"] == 24
    frames = np.load(tmp_path / "inv" / "frames.npz")["images"].reshape(2, 3, 28, 28, 1)
    real = np.load(run / "init.npz")["images"][[0, 2, 1, 0]]  # pair 0 runs from image 0 to 1, pair 1 from 2 to 0
    ends = np.concatenate([frames[:, 0], frames[:, -1]]).astype(float)  # the pairs' first ends, then their last
    rmse = np.sqrt(((ends - real.astype(float)) ** 2).reshape(4, -1).mean(1)) / 255
    assert trip["rmse"] == pytest.approx(rmse.mean()) and trip["max_abs_uint8"] == np.abs(ends - real).max()
    assert record["labels"] is None and record["inversion"]["labels_from_file"] is False


@pytest.mark.parametrize("args,expected", [
    (("sampler=ddpm",), "sampler ddpm draws fresh noise along its walk"),
    (("sampler.eta=0.5",), "sampler ddim draws fresh noise along its walk"),
    (("images=init.npz", "sampler=dpmpp_2m"), "and sampler dpmpp_2m does not walk it back; use ddim (eta 0)"),
    (("images=one.npz",), "images=one.npz holds 1 image; interpolation needs two"),
    (("images=small.npz",), "images=small.npz has images of 14x14 with 1 channel(s), and the model makes 28x28"),
    (("frames=1",), "frames must be in 2..1000 (both ends included), got 1"),
    (("refine=-1",), "refine must be in 0..20"),
    (("label=3",), "labels/label need a conditional model"),
])
def test_interpolate_refuses_bad_input_in_one_line(run, args, expected):
    np.savez(run / "one.npz", images=np.zeros((1, 28, 28, 1), np.uint8))
    np.savez(run / "small.npz", images=np.zeros((2, 14, 14, 1), np.uint8))
    proc = cli_in_process("interpolate", "ckpt=run", "steps=4", *args, "hydra.run.dir=refused", cwd=run, check=False)
    assert proc.returncode == 2 and expected in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (run / "refused" / "frames.npz").exists()


def test_a_noise_of_the_wrong_shape_is_refused_before_sampling():
    from diffuse.generate import GenerationOptions, generate

    class Model:
        shape = (1, 8, 8)
        schedule = linear()

    opts = GenerationOptions(n=2, batch_size=2, steps=2, seed=0, precision="fp32", clip_x0=False,
                             dynamic_threshold=0.0, guidance=1.0, guidance_rescale=0.0)
    with pytest.raises(DiffuseError, match=r"noise of shape \[3, 1, 8, 8\] for 2 images"):
        generate(Model(), sampler_from_yaml("ddim"), opts, torch.device("cpu"), noise=torch.zeros(3, 1, 8, 8))


@pytest.mark.parametrize("name", group_options("sampler"))
def test_every_deterministic_sampler_interpolates_noises_and_the_invertible_ones_real_images(run, tmp_path, name):
    """Noise interpolation needs one image per noise, inversion DDIM's update: each sampler does what its facts
    say, and is refused in one line otherwise."""
    sampler = sampler_from_yaml(name)
    for mode, allowed in (((), sampler.deterministic), ((f"images={run / 'init.npz'}",), sampler.invertible)):
        proc = cli_in_process("interpolate", f"ckpt={run / 'run'}", f"sampler={name}", "sampler.spacing=trailing",
                              "steps=2", "n=1", "frames=2", *mode, "hydra.run.dir=out", cwd=tmp_path, check=False)
        assert (proc.returncode == 0) == allowed, (mode, proc.stderr)
        assert allowed or len(proc.stderr.strip().splitlines()) == 1
