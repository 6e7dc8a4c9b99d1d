"""Few-step sampling of one trained checkpoint on MNIST, side by side: samplers x spacings x NFE, tuned walks, and
the converged ODE's FID they are measured against.

    python benchmarks/few_step.py --ckpt RUN --out DIR [--samplers ddim,dpmpp_2m] [--spacings auto,trailing]
        [--nfe 5,10] [--tune dpmpp_2m:5,dpmpp_2m:10] [--converged dpmpp_2m:50] [--n 2000] [--precision auto]

Each cell is `diffuse eval ckpt=RUN sampler=S sampler.spacing=SP steps=K n=N` (K: the most steps whose network
evaluations fit the NFE); each tuned cell is `diffuse
tune-steps ckpt=RUN sampler=S nfe=NFE` (its defaults: 64 images tuned on, 64 held out, a 200-step reference), then
`diffuse eval ... schedule_file=<its walk.json>`. Runs already in DIR are read, not redone. Writes
DIR/few_step.{json,md}: classifier FID, precision and recall, with each command's wall time.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from time_to_quality import DIFFUSE, sh  # noqa: E402


def evaluations(sampler: str, steps: int) -> int:
    from hydra import compose, initialize_config_module

    from diffuse.config import sampler as build

    with initialize_config_module(config_module="diffuse.conf", version_base="1.3"):
        return build(compose(config_name="sample", overrides=[f"sampler={sampler}"]).sampler).facts.evaluations(steps)


def steps_for(sampler: str, nfe: int) -> int:
    return max(k for k in range(1, nfe + 1) if evaluations(sampler, k) <= nfe)


def scored(run_dir: Path) -> dict:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    m = metrics["metrics"]
    wall = json.loads(run_dir.with_suffix(".json").read_text())["wall_s"]
    return {"fid": round(m["fid"], 2), "precision": m["precision"], "recall": m["recall"],
            "spacing": metrics.get("spacing"), "nfe": metrics.get("nfe"), "eval_wall_s": wall}


def evaluate(args, name: str, extra: list[str], steps: int) -> dict:
    run_dir = args.out / name
    if not (run_dir / "metrics.json").exists():
        sh([*DIFFUSE, "eval", f"ckpt={args.ckpt}", f"steps={steps}", f"n={args.n}", "batch_size=500",
            f"precision={args.precision}",
            f"hydra.run.dir={run_dir}", *extra], run_dir.with_suffix(".log"))
    return scored(run_dir)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--samplers", default="ddim,dpmpp_2m")
    ap.add_argument("--spacings", default="auto,trailing")
    ap.add_argument("--nfe", default="5,10")
    ap.add_argument("--tune", default="", help="SAMPLER:NFE,... walks to tune and score")
    ap.add_argument("--converged", default="dpmpp_2m:50", help="SAMPLER:STEPS, the reference FID")
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--precision", default="auto", help="the network's precision in every walk (auto: bf16 where fast)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    sampler, steps = args.converged.split(":")
    rows.append({"sampler": sampler, "how": "converged", "steps": int(steps),
                 **evaluate(args, f"eval_{sampler}_converged_{steps}", [f"sampler={sampler}"], int(steps))})
    for sampler in args.samplers.split(","):
        for spacing in args.spacings.split(","):
            for nfe in [int(v) for v in args.nfe.split(",")]:
                k = steps_for(sampler, nfe)
                extra = [f"sampler={sampler}", f"sampler.spacing={spacing}"]
                rows.append({"sampler": sampler, "how": spacing, "steps": k,
                             **evaluate(args, f"eval_{sampler}_{spacing}_{nfe}", extra, k)})
    for spec in filter(None, args.tune.split(",")):
        sampler, nfe = spec.split(":")
        tune_dir = args.out / f"tune_{sampler}_{nfe}"
        if not (tune_dir / "walk.json").exists():
            sh([*DIFFUSE, "tune-steps", f"ckpt={args.ckpt}", f"sampler={sampler}", f"nfe={nfe}", f"precision={args.precision}",
                f"hydra.run.dir={tune_dir}"], tune_dir.with_suffix(".log"))
        walk = json.loads((tune_dir / "walk.json").read_text())
        tune_wall = json.loads(tune_dir.with_suffix(".json").read_text())["wall_s"]
        row = evaluate(args, f"eval_{sampler}_tuned_{nfe}", [f"schedule_file={tune_dir / 'walk.json'}"], walk["steps"])
        rows.append({"sampler": sampler, "how": f"tuned from {walk['record']['start_spacing']}", "steps": walk["steps"],
                     **row, "tune_wall_s": tune_wall, "rmse_to_reference": walk["record"]["rmse_to_reference"]})
    meta = {"date": time.strftime("%Y-%m-%d %H:%M"), "command": " ".join(["python"] + sys.argv),
            "machine": f"{platform.processor() or platform.machine()}; {platform.platform()}"}
    (args.out / "few_step.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    lines = [f"Few-step sampling of {args.ckpt}, classifier FID at n={args.n} ({meta['date']}; `{meta['command']}`)",
             "", "| sampler | spacing | steps | NFE | FID | precision | recall | eval wall s |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        how = r["how"] if r["how"] != "auto" else f"auto ({r['spacing']})"
        lines.append(f"| {r['sampler']} | {how} | {r['steps']} | {r['nfe']} | {r['fid']} | {r['precision']:.3f} | "
                     f"{r['recall']:.3f} | {r['eval_wall_s']}{' + tune ' + str(r['tune_wall_s']) if 'tune_wall_s' in r else ''} |")
    (args.out / "few_step.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
