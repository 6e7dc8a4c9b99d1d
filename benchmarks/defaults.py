"""Default spacings against every spacing, on an exact answer with the structure of images.

    python benchmarks/defaults.py [--nfe 5-50] [--schedules linear,flow] [--samplers ddim,unipc] [--images 256]
                                  [--std 0.2] [--noises 32]

The data is a Gaussian mixture of real MNIST training digits (tests/exact.py `ImageMixture`: `--images` digits
from ../shared/data or DIFFUSE_DATA_ROOT, each a Gaussian of `--std` per pixel), whose posterior mean is closed
form, so every sampler walks the probability-flow ODE with the exact denoiser. The error of a walk is the RMS
pixel distance between its end and the ODE's answer for the same start (DPM-Solver++(2M), 500 trailing steps),
averaged over `--noises` starts. For every deterministic sampler (conf/sampler), schedule (conf/schedule),
spacing and NFE: the error, whether it is the sampler's default there, how far the default is from the best
spacing at its worst NFE, and the fewest-piece rule within 10% of the best at every NFE (an `auto_spacing` entry).
tests/test_default_spacings.py checks the shipped defaults with the same problem at a few NFE.
Writes benchmarks/results/defaults_exact.{json,md}. No timing: the figures do not depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))
from exact import IMAGES, NOISES, SLACK, STD, mnist_mixture, ode_answer, spacing_errors  # noqa: E402
from samplers import auto_report, build_sampler, fitted_rule  # noqa: E402

OUT = ROOT / "benchmarks" / "results"
DATA = Path(os.environ.get("DIFFUSE_DATA_ROOT", ROOT.parent / "shared" / "data"))


def build_schedule(name: str):
    from hydra import compose, initialize_config_module

    from diffuse.config import SCHEDULES, build
    from diffuse.schedule import Schedule

    with initialize_config_module(config_module="diffuse.conf", version_base="1.3"):
        return build(compose(config_name="train", overrides=[f"schedule={name}"]).schedule, SCHEDULES, Schedule)


def sweep(schedules: list[str], samplers: list[str], nfes: list[int], mixture, noises: int) -> list[dict]:
    x_T = torch.randn(noises, *mixture.shape, generator=torch.Generator().manual_seed(1), dtype=mixture.mu.dtype)
    rows = []
    for schedule_name in schedules:
        schedule = build_schedule(schedule_name)
        denoise = mixture.denoiser(schedule)
        reference = ode_answer(schedule, denoise, x_T)
        for name in samplers:
            sampler = build_sampler(name)
            for nfe in nfes:
                steps, errors = spacing_errors(sampler, schedule, nfe, denoise, x_T, reference)
                default = sampler.spacing_for(schedule, steps)
                for spacing, error in errors.items():
                    rows.append({"schedule": schedule_name, "sampler": name, "spacing": spacing, "nfe": nfe,
                                 "steps": steps, "default": spacing == default, "error": float(f"{error:.4g}")})
                best = min(errors, key=errors.get)
                print(f"{schedule_name:14s} {name:10s} NFE {nfe:3d}  default {default:14s} "
                      f"{errors.get(default, float('inf')) / errors[best]:.3f}x the best ({best})", flush=True)
    return rows


# Among spacings within tolerance of the best, the first of these: time_quadratic last, as the one trained MNIST
# models measured worst at few steps where the mixture ranked it first (benchmarks/RESULTS.md).
PREFERRED = ("trailing", "leading", "logsnr", "linspace", "karras", "time_quadratic")


def yaml_tables(rows: list[dict]) -> list[str]:
    """Each sampler's fitted rules as the `auto_spacing` block of its YAML (`other`: trailing, which every schedule
    takes)."""
    lines = []
    for sampler in dict.fromkeys(r["sampler"] for r in rows):
        lines += [f"# conf/sampler/{sampler}.yaml", "spacing: auto", "auto_spacing:"]
        for schedule in dict.fromkeys(r["schedule"] for r in rows):
            rule = fitted_rule([r for r in rows if r["sampler"] == sampler and r["schedule"] == schedule], "error", SLACK,
                               PREFERRED)
            lines.append(f"  {schedule}: " + (str(rule[0]) if len(rule) == 1 else "[" + ", ".join(map(str, rule)) + "]"))
        lines += ["  other: trailing", ""]
    return lines


def main() -> None:
    conf = ROOT / "conf"
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nfe", default="5-50", help="A-B (every NFE) or a comma list")
    ap.add_argument("--schedules", default=",".join(sorted(p.stem for p in (conf / "schedule").glob("*.yaml"))))
    ap.add_argument("--samplers", default=None, help="default: every deterministic sampler in conf/sampler")
    ap.add_argument("--images", type=int, default=IMAGES, help="MNIST digits in the mixture")
    ap.add_argument("--std", type=float, default=STD, help="each digit's Gaussian, per pixel (images in [-1, 1])")
    ap.add_argument("--noises", type=int, default=NOISES, help="starts walked")
    args = ap.parse_args()
    lo, _, hi = args.nfe.partition("-")
    nfes = list(range(int(lo), int(hi) + 1)) if hi else [int(v) for v in args.nfe.split(",")]
    samplers = args.samplers.split(",") if args.samplers else [
        p.stem for p in sorted((conf / "sampler").glob("*.yaml")) if build_sampler(p.stem).facts.order is not None]
    torch.set_num_threads(min(2, torch.get_num_threads()))
    rows = sweep(args.schedules.split(","), samplers, nfes, mnist_mixture(DATA, args.images, args.std, dtype=torch.float32), args.noises)
    meta = {"date": time.strftime("%Y-%m-%d %H:%M"), "command": " ".join(["python"] + sys.argv),
            "images": args.images, "std": args.std, "noises": args.noises}
    OUT.mkdir(exist_ok=True)
    (OUT / "defaults_exact.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    lines = [f"Default spacings on the MNIST image mixture ({meta['date']}; `{meta['command']}`): the ratio of the "
             "default's error (RMS distance to the ODE's answer) to the best spacing's at its worst NFE, and the "
             "fewest-piece rule within 1.1x of the best at every NFE", "", *auto_report(rows, "error", SLACK, PREFERRED)]
    lines += ["", "As `auto_spacing` tables (steps, not NFE, in the rules):", "", "```yaml", *yaml_tables(rows), "```"]
    (OUT / "defaults_exact.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
