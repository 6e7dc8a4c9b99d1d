"""Time to quality: what each trainer reaches in the same wall-clock budget on this machine.

    python benchmarks/time_to_quality.py --out DIR [--diffuse-minutes 10] [--diffusers-minutes 10,30]
                                         [--n 2000] [--steps 20] [--rate 50]

1. `diffuse train experiment=mnist_cpu train.max_minutes=M train.sample_every=0` (the MNIST CPU preset,
   stopped by its wall-clock budget, or at its 1800 steps if that comes first);
2. the diffusers baseline (benchmarks/diffusers_baseline.py: a matched UNet2DModel trained with the recipe of
   diffusers' train_unconditional.py at batch 128), with EMA snapshots at each budget; its cosine schedule is
   planned for the longest budget at --rate images/s (take it from `make bench`); both train and sample at
   precision auto (bf16 autocast where the CPU computes bf16 natively, else fp32), each at its best;
3. n images from each with DDIM at --steps steps (diffuse: `diffuse sample`; diffusers: DDIMPipeline);
4. `diffuse eval samples=... dataset=mnist` on each: FID etc. on the domain classifier's features against the
   10,000 test images, with the floor (n real training images) beside.
Each stage is skipped when its output exists, so a run can be continued. Writes DIR/time_to_quality.{json,md}.
Set DIFFUSE_DATA_ROOT (MNIST/raw) and DIFFUSE_CACHE (the classifier) as for the CLI.

    python benchmarks/time_to_quality.py --objectives --out DIR [--minutes 10] [--n 10000] [--nfe 20,50]
                                         [--precision fp32] [--arms eps,v_min_snr,flow,edm] [--heun]

compares the training objectives instead: each arm is the MNIST CPU preset (`experiment=mnist_cpu`, its budget
set to --minutes, training at --precision) with only the objective (and the schedule and first-order sampler it
is sampled with) changed; n images at each NFE with that sampler (sampled at precision auto), scored as above.
--heun adds EDM's Heun on its rho = 7 grid at the odd NFE nearest below each --nfe. Each
`--variant "NAME ARM KEY=VALUE ..."` adds an arm: ARM with those training overrides (the preset's other choices:
learning rate, batch, EMA, model), e.g. `--arms "" --variant "lr2e-3 flow train.lr=2e-3"`. Writes
DIR/objectives.{json,md}.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DIFFUSE = [sys.executable, "-m", "diffuse"]


def sh(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> None:
    """Run cmd (with `env` added to this environment) with its output in `log`; its wall time, CPU time in user
    space and in the kernel, and peak RSS go to `log`.json."""
    print("$", " ".join(f"{k}={v}" for k, v in (env or {}).items()), *cmd, flush=True)
    t = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own resource usage
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t
    log.with_suffix(".json").write_text(json.dumps({"cmd": cmd, "env": env or {}, "wall_s": round(wall, 1),
                                                    "user_s": round(usage.ru_utime, 1), "sys_s": round(usage.ru_stime, 1),
                                                    "peak_rss_MB": round(usage.ru_maxrss / 1024, 1)}) + "\n")
    if proc.returncode:
        raise SystemExit(f"failed ({proc.returncode}) after {wall:.0f} s; see {log}")
    print(f"  done in {wall:.0f} s, peak RSS {usage.ru_maxrss / 1024:.0f} MB", flush=True)


# arm -> (what it is, training overrides, (sampler, steps for an NFE) for its first-order walks)
ARMS = {
    "eps": ("DDPM eps (the preset's objective before this comparison)", ["objective=eps", "schedule=linear",
                                                                         "sampler=ddim"],
            ("ddim", lambda nfe: nfe)),
    "v_min_snr": ("v + Min-SNR-5", ["objective=v", "objective.loss_weight=min_snr", "schedule=linear", "sampler=ddim"],
                  ("ddim", lambda nfe: nfe)),
    "flow": ("flow matching, logit-normal(0, 1)", ["objective=flow", "schedule=flow", "sampler=flow_euler"],
             ("flow_euler", lambda nfe: nfe)),
    "edm": ("EDM (sigma_data 0.5, P_mean -1.2, P_std 1.2)", ["objective=edm", "schedule=edm", "sampler=euler"],
            ("euler", lambda nfe: nfe)),
}


def variant(spec: str) -> tuple[str, tuple]:
    """--variant "NAME ARM KEY=VALUE ...": arm ARM with training overrides added, as an arm of its own."""
    name, base, *extra = spec.split()
    if base not in ARMS or not extra or any("=" not in o for o in extra):
        raise SystemExit(f"--variant {spec!r}: give NAME, one of {', '.join(ARMS)}, and KEY=VALUE overrides")
    what, overrides, walk = ARMS[base]
    return name, (f"{what}; {' '.join(extra)}", [*overrides, *extra], walk)


def objectives(args) -> None:
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    nfes = [int(v) for v in args.nfe.split(",")]
    ARMS.update(variant(v) for v in args.variant)
    rows, arms = [], [a for a in args.arms.split(",") if a] + [v.split()[0] for v in args.variant]
    for arm in arms:  # every arm trains first, so that nothing else runs while any of them does
        run = out / f"train_{arm}"
        if not (run / "checkpoints" / "last.safetensors").exists():
            sh([*DIFFUSE, "train", "experiment=mnist_cpu", *ARMS[arm][1], f"train.max_minutes={args.minutes}",
                f"train.precision={args.precision}", f"seed={args.seed}", f"hydra.run.dir={run}"], out / f"train_{arm}.log")
    for arm in arms:
        what, _, (sampler, steps_for) = ARMS[arm]
        run = out / f"train_{arm}"
        walks = [(sampler, steps_for(nfe), nfe) for nfe in nfes]
        if args.heun and arm == "edm":
            walks += [("heun", (nfe + 1) // 2, 2 * ((nfe + 1) // 2) - 1) for nfe in nfes]
        for name, steps, nfe in walks:
            tag = f"{arm}_{name}_{steps}"
            samples = out / f"sample_{tag}"
            if not (samples / "samples.npz").exists():
                sh([*DIFFUSE, "sample", f"ckpt={run}", f"sampler={name}", f"steps={steps}", f"n={args.n}",
                    "batch_size=500", f"seed={args.seed}", "precision=auto", f"hydra.run.dir={samples}"],
                   out / f"sample_{tag}.log")
            ev = out / f"eval_{tag}"
            if not (ev / "metrics.json").exists():
                sh([*DIFFUSE, "eval", f"samples={samples / 'samples.npz'}", "dataset=mnist", f"hydra.run.dir={ev}"],
                   out / f"eval_{tag}.log")
            m = json.loads((ev / "metrics.json").read_text())
            rows.append({"arm": arm, "objective": what, "sampler": name, "steps": steps, "nfe": nfe,
                         "metrics": m["metrics"], "floor": m.get("floor", {}), "progress": progress(run, args.minutes),
                         "train_process": json.loads((out / f"train_{arm}.json").read_text()),
                         "sample_process": json.loads((out / f"sample_{tag}.json").read_text())})
    (out / "objectives.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2) + "\n")
    lines = [f"n={args.n} per row, seed {args.seed}, training at {args.precision} for {args.minutes:g} min (the mnist_cpu "
             f"preset), sampling at precision auto; classifier features, reference = the 10,000 MNIST test images", "",
             "| objective | sampler | NFE | steps (images seen) in loop time | FID | KID | precision | recall | training process |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        m, p = r["metrics"], r["progress"]
        lines.append(f"| {r['objective']} | {r['sampler']} | {r['nfe']} | {p} | {m['fid']:.2f} | {m['kid']:.3f} | "
                     f"{m['precision']:.3f} | {m['recall']:.3f} | {r['train_process']['wall_s']:.0f} s |")
    floor = rows[0]["floor"] if rows else {}
    if floor:
        lines.append(f"| real training images (the floor) | | | | {floor['fid']:.2f} | {floor['kid']:.3f} | "
                     f"{floor['precision']:.3f} | {floor['recall']:.3f} | |")
    (out / "objectives.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--objectives", action="store_true", help="compare the training objectives (see above)")
    ap.add_argument("--minutes", type=float, default=10.0, help="--objectives: each arm's training budget")
    ap.add_argument("--nfe", default="20,50", help="--objectives: network evaluations per image")
    ap.add_argument("--precision", default="fp32", help="--objectives: training precision (fp32 | bf16 | auto)")
    ap.add_argument("--arms", default=",".join(ARMS), help=f"--objectives: some of {', '.join(ARMS)}")
    ap.add_argument("--heun", action="store_true", help="--objectives: also EDM's Heun for the edm arm")
    ap.add_argument("--variant", action="append", default=[], metavar="'NAME ARM KEY=VALUE ...'",
                    help="--objectives: an arm with training overrides added (the preset's choices), repeatable")
    ap.add_argument("--diffuse-minutes", type=float, default=10.0)
    ap.add_argument("--diffusers-minutes", default="10,30")
    ap.add_argument("--n", type=int, default=2000)  # --objectives: pass --n 10000
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rate", type=float, default=50.0, help="the baseline's training images/s (from make bench)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.objectives:
        return objectives(args)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    budgets = sorted(float(m) for m in args.diffusers_minutes.split(","))
    runs = []  # (name, minutes, samples.npz)

    d_run = out / "diffuse_train"
    if not (d_run / "checkpoints" / "last.safetensors").exists():
        sh([*DIFFUSE, "train", "experiment=mnist_cpu", f"train.max_minutes={args.diffuse_minutes}",
            "train.sample_every=0", f"hydra.run.dir={d_run}"], out / "diffuse_train.log")
    d_samples = out / "diffuse_sample"
    if not (d_samples / "samples.npz").exists():
        sh([*DIFFUSE, "sample", f"ckpt={d_run}", "sampler=ddim", f"n={args.n}", f"steps={args.steps}", "batch_size=250",
            f"seed={args.seed}", "precision=auto", f"hydra.run.dir={d_samples}"], out / "diffuse_sample.log")
    runs.append(("diffuse mnist_cpu preset", args.diffuse_minutes, d_samples / "samples.npz", d_run, "diffuse_train"))

    b_run = out / "diffusers_train"
    if not all((b_run / f"ema_{m:g}min.safetensors").exists() for m in budgets):
        sh([sys.executable, str(HERE / "diffusers_baseline.py"), "train", "--out", str(b_run), "--minutes",
            str(max(budgets)), "--snapshots", ",".join(f"{m:g}" for m in budgets), "--rate", str(args.rate)],
           out / "diffusers_train.log")
    for m in budgets:
        npz = out / f"diffusers_{m:g}min.npz"
        if not npz.exists():
            sh([sys.executable, str(HERE / "diffusers_baseline.py"), "sample", "--ckpt",
                str(b_run / f"ema_{m:g}min.safetensors"), "--n", str(args.n), "--steps", str(args.steps),
                "--seed", str(args.seed), "--out", str(npz)], out / f"diffusers_sample_{m:g}.log")
        runs.append(("diffusers UNet2DModel, train_unconditional recipe", m, npz, b_run, "diffusers_train"))

    rows = []
    for name, minutes, npz, run, train_log in runs:
        ev = out / f"eval_{npz.parent.name if npz.name == 'samples.npz' else npz.stem}"
        if not (ev / "metrics.json").exists():
            sh([*DIFFUSE, "eval", f"samples={npz}", "dataset=mnist", f"hydra.run.dir={ev}"], out / f"{ev.name}.log")
        m = json.loads((ev / "metrics.json").read_text())
        rows.append({"trainer": name, "minutes": minutes, "samples": str(npz), "metrics": m["metrics"],
                     "floor": m.get("floor", {}), "progress": progress(run, minutes),
                     "train_process": json.loads((out / f"{train_log}.json").read_text())})
    (out / "time_to_quality.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2) + "\n")
    lines = [f"n={args.n} per row, DDIM-{args.steps}, seed {args.seed}; classifier features, reference = the 10,000 "
             f"MNIST test images", "",
             "| trainer | budget | steps (images seen) | FID | KID | precision | recall | classifier score | "
             "training peak RSS |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        m, p = r["metrics"], r["progress"]
        lines.append(f"| {r['trainer']} | {r['minutes']:g} min | {p} | {m['fid']:.2f} | {m['kid']:.3f} | "
                     f"{m['precision']:.3f} | {m['recall']:.3f} | {m['classifier_score']:.2f} | "
                     f"{r['train_process']['peak_rss_MB']:.0f} MB |")
    floor = rows[0]["floor"]
    if floor:
        lines.append(f"| real training images (the floor) | | | {floor['fid']:.2f} | {floor['kid']:.3f} | "
                     f"{floor['precision']:.3f} | {floor['recall']:.3f} | {floor['classifier_score']:.2f} | |")
    (out / "time_to_quality.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def progress(run: Path, minutes: float) -> str:
    """Optimizer steps and images seen at the end of a budget, from the run's own log."""
    from safetensors import safe_open

    try:
        if (run / "metrics.csv").exists():  # diffuse
            with safe_open(str(run / "checkpoints" / "last.safetensors"), "pt") as f:
                meta = f.metadata()
            step, batch = int(meta["step"]), json.loads(meta["config"])["train"]["batch_size"]
            loop = list(csv.DictReader(open(run / "metrics.csv")))[-1]["elapsed_s"]  # the loop's own seconds
            return f"{step} ({step * batch:,}) in {float(loop):.0f} s"
        with safe_open(str(run / f"ema_{minutes:g}min.safetensors"), "pt") as f:
            step = int(f.metadata()["step"])
        return f"{step} ({step * 128:,})"
    except Exception as e:  # the table still prints
        return f"? ({type(e).__name__})"


if __name__ == "__main__":
    main()
