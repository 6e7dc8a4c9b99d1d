"""Sampler x NFE sweep: exact-denoiser error on a Gaussian mixture, and wall time on a trained checkpoint.

    python benchmarks/samplers.py [--ckpt outputs/demo/train] [--nfe 5,10,20,50,100] [--images 64]

Quality: the 1-D Wasserstein distance between 20,000 samples drawn with the exact posterior mean of a
two-component Gaussian mixture and 200,000 draws from the mixture itself (0 for a perfect sampler; the
sampling noise floor is about 0.003). Speed: seconds per image for `--images` MNIST images through the real
network on this machine (only with --ckpt). Writes benchmarks/results/samplers.{json,md}.

    python benchmarks/samplers.py --spacings [--nfe 5,10,20,50] [--schedules linear,cosine]

sweeps every deterministic sampler x every spacing x NFE on the mixture (exact eps on each schedule), marking
each sampler's default spacing and the best per NFE; the error is free of sampling noise (tests/exact.py ode_w1:
N(0, 1)'s quantiles walked, against the mixture's). Writes benchmarks/results/spacings_exact.{json,md}.

    python benchmarks/samplers.py --auto --nfe 5-50 --schedules linear,scaled_linear,cosine,sigmoid,edm,flow

the same sweep at every NFE from 5 to 50 (n=1000 quantiles), and for each sampler and schedule how far its default
spacing lands from the best spacing at its worst NFE, beside the fewest-piece rule the sweep supports (an
`auto_spacing` table). The shipped tables come from benchmarks/defaults.py (digits, not this 1-D mixture, whose
choices lose on MNIST: benchmarks/RESULTS.md). Writes benchmarks/results/auto_spacing.{json,md}.

    python benchmarks/samplers.py --objectives [--nfe 5,10,20]

does the same for every objective in conf/objective: the mixture's exact network under that objective's own
process (tests/exact.py), read back through the objective at each sampler's timesteps, on the schedule the
objective's presets sample on (flow: schedule=flow, edm: schedule=edm, the others: linear); a sampler that
refuses that schedule is listed as refused. Writes benchmarks/results/objectives_exact.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from exact import GaussianMixture, objective_denoiser, ode_w1, steps_for_nfe  # noqa: E402

from diffuse import DiffuseError  # noqa: E402
from diffuse.schedules.linear import linear  # noqa: E402

OUT = Path(__file__).resolve().parent / "results"
CONF = Path(__file__).resolve().parents[1] / "conf" / "sampler"
MIXTURE = GaussianMixture(weights=[0.3, 0.7], means=[-0.6, 0.5], stds=[0.15, 0.25])


def build_sampler(name: str):
    from hydra import compose, initialize_config_module

    from diffuse.config import sampler

    with initialize_config_module(config_module="diffuse.conf", version_base="1.3"):
        return sampler(compose(config_name="sample", overrides=[f"sampler={name}"]).sampler)


def wasserstein_1d(a: torch.Tensor, b: torch.Tensor) -> float:
    """W1 between two 1-D samples via quantiles."""
    q = torch.linspace(0.0005, 0.9995, 2000, dtype=torch.float64)
    return (torch.quantile(a.double(), q) - torch.quantile(b.double(), q)).abs().mean().item()


def mixture_draws(n: int, g: torch.Generator) -> torch.Tensor:
    k = torch.multinomial(MIXTURE.w, n, replacement=True, generator=g)
    return MIXTURE.mu[k] + MIXTURE.s[k] * torch.randn(n, generator=g, dtype=torch.float64)


def objectives(nfes: list[int]) -> list[dict]:
    from hydra import compose, initialize_config_module

    from diffuse.config import OBJECTIVES, build
    from diffuse.objectives import Objective
    from diffuse.objectives.edm import EDM
    from diffuse.objectives.flow import Flow
    from diffuse.schedules.edm import edm
    from diffuse.schedules.flow import flow

    names = sorted(p.stem for p in (CONF.parent / "objective").glob("*.yaml"))
    truth = mixture_draws(200_000, torch.Generator().manual_seed(0))
    x_T = torch.randn(20_000, 1, 1, 1, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    rows = []
    for name in names:
        with initialize_config_module(config_module="diffuse.conf", version_base="1.3"):
            objective = build(compose(config_name="train", overrides=[f"objective={name}"]).objective, OBJECTIVES,
                              Objective)
        schedule = flow() if isinstance(objective, Flow) else edm() if isinstance(objective, EDM) else linear()
        denoise = objective_denoiser(objective, schedule, MIXTURE)
        for sampler_name in sorted(p.stem for p in CONF.glob("*.yaml")):
            sampler = build_sampler(sampler_name)
            for nfe in nfes:
                steps = steps_for_nfe(sampler, schedule, nfe)
                row = {"objective": name, "schedule": schedule.name, "sampler": sampler_name, "nfe": nfe, "steps": steps}
                try:
                    ts = sampler.check(schedule, steps)
                    x = sampler(denoise, schedule, x_T, ts, generator=torch.Generator().manual_seed(2)).flatten()
                    row["mixture_w1"] = round(wasserstein_1d(x, truth), 4)
                except DiffuseError:
                    row["mixture_w1"] = "refused"
                rows.append(row)
                print(row, flush=True)
    return rows


def spacings(nfes: list[int], schedule_names: list[str], n: int = 2000) -> list[dict]:
    """Every sampler x every spacing x NFE on each schedule (eps read back exactly): the sweep behind the samplers'
    default spacings."""
    import dataclasses

    from hydra import compose, initialize_config_module

    from diffuse.config import SCHEDULES, build
    from diffuse.schedule import SPACINGS, Schedule
    rows = []
    for schedule_name in schedule_names:
        with initialize_config_module(config_module="diffuse.conf", version_base="1.3"):
            schedule = build(compose(config_name="train", overrides=[f"schedule={schedule_name}"]).schedule, SCHEDULES,
                             Schedule)
        for name in sorted(p.stem for p in CONF.glob("*.yaml")):
            base = build_sampler(name)
            if base.facts.order is None:
                continue  # stochastic: its error is not the walk's
            for spacing in SPACINGS:
                sampler = dataclasses.replace(base, spacing=spacing)
                for nfe in nfes:
                    steps = steps_for_nfe(sampler, schedule, nfe)
                    row = {"schedule": schedule_name, "sampler": name, "spacing": spacing, "nfe": nfe, "steps": steps,
                           "default": spacing == base.spacing_for(schedule, steps)}
                    try:
                        row["mixture_w1"] = float(f"{ode_w1(sampler, schedule, steps, MIXTURE, n=n):.3g}")
                    except DiffuseError:
                        row["mixture_w1"] = "refused"
                    rows.append(row)
                    print(row, flush=True)
    return rows


TOLERANCE, SLACK = 1.1, 2e-4  # a spacing within 10% (or 2e-4) of the best counts as the best
PREFERRED = ("trailing", "time_quadratic", "logsnr", "leading", "linspace", "karras")  # among equals, the first


def fitted_rule(rows: list[dict], key: str = "mixture_w1", slack: float = SLACK, preferred: tuple = PREFERRED) -> list:
    """The rule with the fewest pieces whose spacing is within TOLERANCE of the best at every NFE of `rows` (one
    sampler on one schedule): greedy over increasing steps, each piece as long as one spacing serves all of it."""
    good: dict[int, set] = {}
    for nfe in {r["nfe"] for r in rows}:
        at = {r["spacing"]: r[key] for r in rows if r["nfe"] == nfe and r[key] != "refused"}
        steps = next(r["steps"] for r in rows if r["nfe"] == nfe)
        good[steps] = good.get(steps, set(preferred)) & {s for s, w in at.items() if w <= TOLERANCE * min(at.values()) + slack}
    rule, serving = [], None
    for steps in sorted(good):
        if serving is not None and serving & good[steps]:
            serving &= good[steps]
            continue
        if serving is not None:
            rule += [min(serving, key=preferred.index), steps]
        serving = set(good[steps])
    return rule + [min(serving, key=preferred.index)]


def auto_report(rows: list[dict], key: str = "mixture_w1", slack: float = SLACK, preferred: tuple = PREFERRED) -> list[str]:
    """Per schedule x sampler: how far the default spacing is from the best spacing at its worst NFE, and the
    fewest-piece rule the sweep supports (an auto_spacing entry)."""
    lines = ["| schedule | sampler | the default's worst ratio to the best (NFE) | fitted rule |", "|---|---|---|---|"]
    for schedule, sampler in dict.fromkeys((r["schedule"], r["sampler"]) for r in rows):
        mine = [r for r in rows if r["schedule"] == schedule and r["sampler"] == sampler]
        worst = (0.0, None)
        for nfe in sorted({r["nfe"] for r in mine}):
            at = {r["spacing"]: r for r in mine if r["nfe"] == nfe and r[key] != "refused"}
            best = min(r[key] for r in at.values())
            default = next((r[key] for r in at.values() if r["default"]), float("inf"))  # inf: refused
            worst = max(worst, (default / best, nfe), key=lambda v: v[0])
        lines.append(f"| {schedule} | {sampler} | {worst[0]:.3f} ({worst[1]}) | {fitted_rule(mine, key, slack, preferred)} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", help="a trained checkpoint or run directory, for wall times")
    ap.add_argument("--nfe", default="5,10,20,50,100")
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--objectives", action="store_true", help="every objective x sampler (see above)")
    ap.add_argument("--spacings", action="store_true", help="every ODE sampler x spacing x NFE (see above)")
    ap.add_argument("--schedules", default="linear,cosine", help="--spacings: schedules in conf/schedule")
    ap.add_argument("--auto", action="store_true", help="--spacings at every NFE of --nfe A-B, n=1000 (the test's), "
                    "checking each sampler's auto_spacing table: results/auto_spacing.md")
    args = ap.parse_args()
    lo, _, hi = args.nfe.partition("-")
    nfes = list(range(int(lo), int(hi) + 1)) if hi else [int(v) for v in args.nfe.split(",")]
    if args.auto:
        rows = spacings(nfes, args.schedules.split(","), n=1000)
        meta = {"date": time.strftime("%Y-%m-%d %H:%M"), "command": " ".join(["python"] + sys.argv)}
        OUT.mkdir(exist_ok=True)
        (OUT / "auto_spacing.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
        lines = [f"Default spacings against the best spacing at each NFE ({meta['date']}; `{meta['command']}`); the "
                 f"ratio of the default's mixture W1 to the best one's at its worst NFE, and the fewest-piece rule "
                 f"within {TOLERANCE}x (or {SLACK}) of the best at every NFE", "", *auto_report(rows)]
        (OUT / "auto_spacing.md").write_text("\n".join(lines) + "\n")
        print("\n".join(lines))
        return
    if args.spacings:
        rows = spacings(nfes, args.schedules.split(","))
        meta = {"date": time.strftime("%Y-%m-%d %H:%M"), "command": " ".join(["python"] + sys.argv)}
        OUT.mkdir(exist_ok=True)
        (OUT / "spacings_exact.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
        lines = [f"Mixture W1 per sampler x spacing x NFE ({meta['date']}; `{meta['command']}`); * = the sampler's "
                 "default spacing, bold = the best spacing of that sampler at that NFE", ""]
        for schedule_name in dict.fromkeys(r["schedule"] for r in rows):
            lines += [f"schedule={schedule_name}", "", "| sampler | spacing | " + " | ".join(f"NFE {n}" for n in nfes) + " |",
                      "|---|---|" + "---|" * len(nfes)]
            mine = [r for r in rows if r["schedule"] == schedule_name]
            best = {(r["sampler"], r["nfe"]): min((o["mixture_w1"] for o in mine if o["sampler"] == r["sampler"]
                                                   and o["nfe"] == r["nfe"] and o["mixture_w1"] != "refused"),
                                                  default=None) for r in mine}
            for sampler, spacing in dict.fromkeys((r["sampler"], r["spacing"]) for r in mine):
                cells = [r for r in mine if r["sampler"] == sampler and r["spacing"] == spacing]
                shown = [f"**{c['mixture_w1']}**" if c["mixture_w1"] == best[(sampler, c["nfe"])] else str(c["mixture_w1"])
                         for c in cells]
                lines.append(f"| {sampler} | {spacing}{' *' if cells[0]['default'] else ''} | " + " | ".join(shown) + " |")
            lines.append("")
        (OUT / "spacings_exact.md").write_text("\n".join(lines))
        print("\n".join(lines))
        return
    if args.objectives:
        rows = objectives(nfes)
        meta = {"date": time.strftime("%Y-%m-%d %H:%M"), "command": " ".join(["python"] + sys.argv)}
        OUT.mkdir(exist_ok=True)
        (OUT / "objectives_exact.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
        samplers = sorted({r["sampler"] for r in rows})
        lines = [f"Mixture W1 per objective x sampler ({meta['date']}; `{meta['command']}`)", "",
                 "| objective (schedule) | NFE | " + " | ".join(samplers) + " |", "|---|---|" + "---|" * len(samplers)]
        for (objective, schedule), nfe in [(k, n) for k in dict.fromkeys((r["objective"], r["schedule"]) for r in rows)
                                           for n in nfes]:
            cells = {r["sampler"]: r["mixture_w1"] for r in rows
                     if r["objective"] == objective and r["nfe"] == nfe}
            lines.append(f"| {objective} ({schedule}) | {nfe} | " + " | ".join(str(cells[s]) for s in samplers) + " |")
        (OUT / "objectives_exact.md").write_text("\n".join(lines) + "\n")
        print("\n".join(lines))
        return
    names = sorted(p.stem for p in CONF.glob("*.yaml"))
    schedule = linear()
    truth = mixture_draws(200_000, torch.Generator().manual_seed(0))
    x_T = torch.randn(20_000, 1, 1, 1, generator=torch.Generator().manual_seed(1))

    model = None
    if args.ckpt:
        from diffuse.checkpoint import load_model
        from diffuse.denoiser import ModelDenoiser

        loaded = load_model(args.ckpt).model
        model = ModelDenoiser(loaded)
        mnist_noise = torch.randn(args.images, *loaded.shape, generator=torch.Generator().manual_seed(0))

    rows = []
    for name in names:
        sampler = build_sampler(name)
        for nfe in nfes + ([1000] if name == "ddpm" else []):
            steps = steps_for_nfe(sampler, schedule, nfe)
            if steps is None:
                continue
            g = torch.Generator().manual_seed(2)
            ts = sampler.timesteps(schedule, steps)
            x = sampler(MIXTURE.denoiser(schedule), schedule, x_T, ts, generator=g).flatten()
            row = {"sampler": name, "steps": steps, "nfe": nfe, "mixture_w1": round(wasserstein_1d(x, truth), 4)}
            if model is not None:
                t0 = time.perf_counter()
                sampler(model, loaded.schedule, mnist_noise, sampler.timesteps(loaded.schedule, steps),
                        generator=torch.Generator().manual_seed(0))
                row["mnist_s_per_image"] = round((time.perf_counter() - t0) / args.images, 4)
            rows.append(row)
            print(row, flush=True)

    meta = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
            "command": " ".join(["python"] + sys.argv)}
    OUT.mkdir(exist_ok=True)
    (OUT / "samplers.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    cols = ["sampler", "steps", "nfe", "mixture_w1"] + (["mnist_s_per_image"] if model is not None else [])
    lines = [f"Samplers ({meta['date']}, {meta['machine']}; `{meta['command']}`)", "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
    (OUT / "samplers.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
