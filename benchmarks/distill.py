"""Distilled students against their teacher on MNIST: `diffuse distill` of one checkpoint, then classifier FID of
every student at its step counts (a consistency student: each it records, up to 8), of the teacher's own DDIM walk
at the same step counts, and of the converged ODE.

    python benchmarks/distill.py --ckpt RUN --out DIR [--n 10000] [--teacher-steps 1,2,4,8,16]
        [--converged flow_euler:50] [--precision auto] [-- KEY=VALUE ...]   # the rest: diffuse distill's options

Runs `diffuse distill ckpt=RUN hydra.run.dir=DIR/distill KEY=VALUE ...` unless DIR/distill holds a finished
distillation; each score is `diffuse eval` into DIR/eval_*/ (read, not redone, when present). Writes
DIR/distill.{json,md} (FID, KID, precision, recall, the ratio to the converged FID, the distillation's wall time
per round) and `diffuse report DIR` (report_fid.png: FID against NFE, the students beside the teacher's walks).
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


def scored(run_dir: Path, steps: int) -> dict:
    """A run's scores; `nfe` from its record (an eval of samples= files records none: then the walk's steps)."""
    m = json.loads((run_dir / "metrics.json").read_text())
    wall = Path(f"{run_dir}.json")  # the name may hold a dot (a weight): no with_suffix
    return {"nfe": m.get("nfe", steps), "fid": round(m["metrics"]["fid"], 2), "kid_x1e3": round(m["metrics"]["kid"], 2),
            "precision": round(m["metrics"]["precision"], 3), "recall": round(m["metrics"]["recall"], 3),
            "eval_wall_s": json.loads(wall.read_text())["wall_s"] if wall.exists() else None}


def evaluate(args, name: str, ckpt: Path | str, steps: int, extra: list[str]) -> dict:
    run_dir = args.out / name
    if not (run_dir / "metrics.json").exists():
        sh([*DIFFUSE, "eval", f"ckpt={ckpt}", f"steps={steps}", f"n={args.n}", "batch_size=500",
            f"precision={args.precision}", f"hydra.run.dir={run_dir}", *extra], Path(f"{run_dir}.log"))
    return scored(run_dir, steps)


def main() -> None:
    argv = sys.argv[1:]
    options = argv[argv.index("--") + 1:] if "--" in argv else []
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--teacher-steps", default="1,2,4,8,16", help="the teacher's own DDIM walks to score")
    ap.add_argument("--converged", default="flow_euler:50", help="SAMPLER:STEPS, the reference FID")
    ap.add_argument("--precision", default="auto", help="the network's precision when sampling")
    args = ap.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    args.out.mkdir(parents=True, exist_ok=True)
    folder = args.out / "distill"
    manifest = folder / "distill.json"
    runs = [p for p in folder.iterdir() if (p / "checkpoints").is_dir()] if folder.is_dir() else []
    if not manifest.exists() or not runs or not all((p / "student.json").exists() for p in runs):
        sh([*DIFFUSE, "distill", f"ckpt={args.ckpt}", f"hydra.run.dir={folder}", *options], args.out / "distill.log")
    setup = json.loads(manifest.read_text())
    students = sorted(({**json.loads((p / "student.json").read_text()), "folder": p} for p in folder.glob("*/student.json")
                       for p in [p.parent]), key=lambda s: s["steps"])
    sampler, steps = args.converged.split(":")
    rows = [{"model": "teacher", "walk": f"{sampler} (converged)", "steps": int(steps),
             **evaluate(args, f"eval_converged_{sampler}_{steps}", args.ckpt, int(steps), [f"sampler={sampler}"])}]
    for k in [int(v) for v in args.teacher_steps.split(",")]:
        rows.append({"model": "teacher", "walk": f"ddim ({setup['spacing']})", "steps": k,
                     **evaluate(args, f"eval_teacher_ddim_{k}", args.ckpt, k,
                                ["sampler=ddim", f"sampler.spacing={setup['spacing']}"])})
    for s in students:  # a progressive student walks its own steps; a consistency student each count it records
        for k in [k for k in s.get("walks", [s["steps"]]) if k <= 8]:
            searched = s.get("search_walks", {}).get(str(k))  # a walk chosen by FID (distill's search_walks)
            rows.append({"model": f"{s['method']} student (round {s['round']}, {s['seconds']} s)",
                         "walk": f"ddim (searched: {searched['timesteps'][:-1]})" if searched else "ddim (distilled)",
                         "steps": k,
                         **evaluate(args, f"eval_student_{s['folder'].name}_{k}", s["folder"], k, [])})
    converged = rows[0]["fid"]
    for r in rows:
        r["x_converged"] = round(r["fid"] / converged, 2)
    seconds = sum(s["seconds"] + sum(w["seconds"] for w in s.get("search_walks", {}).values()) for s in students)
    meta = {"date": time.strftime("%Y-%m-%d %H:%M"), "command": " ".join(["python"] + sys.argv),
            "machine": f"{platform.processor() or platform.machine()}; {platform.platform()}",
            "distill": {k: setup[k] for k in ("method", "teacher_steps", "student_steps", "spacing", "teacher")},
            "distill_seconds": round(seconds, 1)}
    (args.out / "distill.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    lines = [f"Distillation of {args.ckpt} ({meta['distill']['method']}, {setup['teacher_steps']} -> "
             f"{setup['student_steps']} steps, {seconds:.0f} s in its rounds and walk searches), classifier FID at n={args.n} "
             f"({meta['date']}; `{meta['command']}`)", "",
             "| model | walk | steps = NFE | FID | x converged | KID x1e3 | precision | recall |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['walk']} | {r['steps']} | {r['fid']} | {r['x_converged']} | {r['kid_x1e3']} | "
              f"{r['precision']} | {r['recall']} |" for r in rows]
    (args.out / "distill.md").write_text("\n".join(lines) + "\n")
    sh([*DIFFUSE, "report", str(args.out)], args.out / "report.log")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
