"""Few-step sampling of one trained checkpoint on MNIST, side by side: samplers x spacings x NFE, tuned walks,
distilled students, and the converged ODE's FID they are measured against.

    python benchmarks/few_step.py --ckpt RUN --out DIR [--samplers ddim,dpmpp_2m] [--spacings auto,trailing]
        [--nfe 5,10] [--tune dpmpp_2m:5,dpmpp_2m:10] [--walks WALK.json,...] [--students DISTILL_DIR,...]
        [--converged dpmpp_2m:50,ddim:50] [--n 2000] [--precision auto] [--batch-size 500] [--parallel 1]

Each cell is `diffuse eval ckpt=RUN sampler=S sampler.spacing=SP steps=K n=N` (K: the most steps whose network
evaluations fit the NFE). Each tuned cell is `diffuse tune-steps ckpt=RUN sampler=S nfe=NFE` (its defaults: 64 images
tuned on, 64 held out, a 200-step reference), then `diffuse eval ... schedule_file=<its walk.json>`; --walks scores
walk files tuned earlier (elsewhere) the same way. --students scores every student of each `diffuse distill` folder
at each step count it walks (up to 8). The cells that differ only in steps run as one `diffuse eval -m` (one process,
no start-up per cell); --parallel J runs J such processes at once (on a GPU: its Python and scoring overlap the
others' sampling). A spacing a sampler cannot take fails its own group only, and is listed. Runs already in DIR are
read, not redone. Writes DIR/few_step.{json,md}: classifier FID, precision and recall, each cell's wall time, and
`diffuse report DIR` draws FID against NFE for all of them in one plot.
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from time_to_quality import DIFFUSE, sh  # noqa: E402


@functools.lru_cache(maxsize=None)
def facts(sampler: str):
    """The sampler's declared facts, as its YAML builds it (composed once per sampler)."""
    from hydra import compose, initialize_config_module

    from diffuse.config import sampler as build

    with initialize_config_module(config_module="diffuse.conf", version_base="1.3"):
        return build(compose(config_name="sample", overrides=[f"sampler={sampler}"]).sampler).facts


def evaluations(sampler: str, steps: int) -> int:
    return facts(sampler).evaluations(steps)


def steps_for(sampler: str, nfe: int) -> int:
    return max(k for k in range(1, nfe + 1) if evaluations(sampler, k) <= nfe)


def scored(run_dir: Path) -> dict:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    m = metrics["metrics"]
    return {"fid": round(m["fid"], 2), "precision": m["precision"], "recall": m["recall"],
            "spacing": metrics.get("spacing"), "nfe": metrics.get("nfe"), "eval_wall_s": metrics["wall_seconds"],
            "floor_fid": (metrics.get("floor") or {}).get("fid")}


def run_group(args, group: str, ckpt: str, extra: list[str], steps: list[int]) -> str | None:
    """`diffuse eval -m` over `steps` with `extra` overrides, into DIR/group/steps_K; None, or why it failed."""
    todo = [k for k in steps if not (args.out / group / f"steps_{k}" / "metrics.json").exists()]
    if not todo:
        return None
    log = args.out / f"{group}.log"
    cmd = [*DIFFUSE, "eval", "-m", f"ckpt={ckpt}", f"steps={','.join(map(str, todo))}", f"n={args.n}",
           f"batch_size={args.batch_size}", f"precision={args.precision}", "floor=false", "save_reference=false",
           f"hydra.sweep.dir={args.out / group}", "hydra.sweep.subdir=steps_${steps}", *extra]
    print("$", " ".join(cmd), flush=True)
    with open(log, "w") as f:
        rc = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT)
    if rc:
        lines = log.read_text().strip().splitlines()
        return f"{group}: exit {rc}: {lines[-1] if lines else ''}"
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--samplers", default="ddim,dpmpp_2m")
    ap.add_argument("--spacings", default="auto,trailing")
    ap.add_argument("--nfe", default="5,10")
    ap.add_argument("--tune", default="", help="SAMPLER:NFE,... walks to tune and score")
    ap.add_argument("--walks", default="", help="walk.json files tuned earlier, to score")
    ap.add_argument("--students", default="", help="diffuse distill folders whose students to score")
    ap.add_argument("--student-steps", default="1,2,4,8", help="the step counts to score each student at (those it walks)")
    ap.add_argument("--converged", default="dpmpp_2m:50", help="SAMPLER:STEPS,..., the reference FIDs")
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--batch-size", type=int, default=500)
    ap.add_argument("--parallel", type=int, default=1, help="eval processes at once")
    ap.add_argument("--precision", default="auto", help="the network's precision in every walk (auto: bf16 where fast)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    groups: dict[str, tuple[str, list[str], list[int], dict]] = {}  # name -> (ckpt, overrides, steps, row fields)
    for spec in filter(None, args.converged.split(",")):
        sampler, steps = spec.split(":")
        groups[f"converged_{sampler}_{steps}"] = (args.ckpt, [f"sampler={sampler}"], [int(steps)],
                                          {"sampler": sampler, "how": "converged"})
    for sampler in filter(None, args.samplers.split(",")):
        ks = sorted({steps_for(sampler, int(v)) for v in args.nfe.split(",")})
        for spacing in args.spacings.split(","):
            groups[f"{sampler}_{spacing}"] = (args.ckpt, [f"sampler={sampler}", f"sampler.spacing={spacing}"], ks,
                                              {"sampler": sampler, "how": spacing})
    walks = [Path(w) for w in filter(None, args.walks.split(","))]

    def tune(spec: str) -> Path:
        sampler, nfe = spec.split(":")
        tune_dir = args.out / f"tune_{sampler}_{nfe}"
        if not (tune_dir / "walk.json").exists():
            sh([*DIFFUSE, "tune-steps", f"ckpt={args.ckpt}", f"sampler={sampler}", f"nfe={nfe}",
                f"precision={args.precision}", f"hydra.run.dir={tune_dir}"], tune_dir.with_suffix(".log"))
        return tune_dir / "walk.json"

    with ThreadPoolExecutor(max(args.parallel, 1)) as pool:
        walks += list(pool.map(tune, filter(None, args.tune.split(","))))
    for path in walks:
        walk = json.loads(path.read_text())
        sampler = walk["sampler"]["_target_"].rsplit(".", 1)[-1]
        groups[f"tuned_{path.parent.name}"] = (
            args.ckpt, [f"schedule_file={path.resolve()}"], [walk["steps"]],
            {"sampler": sampler, "how": f"tuned from {walk['record']['start_spacing']}",
             "tune_wall_s": walk["record"].get("seconds"), "rmse_to_reference": walk["record"]["rmse_to_reference"]})
    wanted = [int(k) for k in args.student_steps.split(",")]
    for folder in [Path(d) for d in filter(None, args.students.split(","))]:
        for student in sorted(folder.glob("*/student.json")):
            record = json.loads(student.read_text())
            ks = [k for k in record.get("walks", [record["steps"]]) if k in wanted]
            groups[f"student_{folder.name}_{student.parent.name}"] = (
                str(student.parent), [], ks, {"sampler": "ddim", "how": f"{record['method']} student",
                                              "distill_wall_s": record.get("seconds")})
    with ThreadPoolExecutor(max(args.parallel, 1)) as pool:
        failed = [f for f in pool.map(lambda item: run_group(args, item[0], *item[1][:3]), groups.items()) if f]
    rows = []
    for name, (_, _, ks, fields) in groups.items():
        for k in ks:
            run_dir = args.out / name / f"steps_{k}"
            if (run_dir / "metrics.json").exists():
                rows.append({**fields, "steps": k, **scored(run_dir), "run": str(run_dir.relative_to(args.out))})
    meta = {"date": time.strftime("%Y-%m-%d %H:%M"), "command": " ".join(["python"] + sys.argv),
            "machine": f"{platform.processor() or platform.machine()}; {platform.platform()}",
            "wall_s": round(time.perf_counter() - started, 1), "failed": failed}
    try:
        import torch

        if torch.cuda.is_available():
            meta["gpu"] = torch.cuda.get_device_name(0)
        meta["torch"] = torch.__version__
    except ImportError:
        pass
    (args.out / "few_step.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    lines = [f"Few-step sampling of {args.ckpt}, classifier FID at n={args.n} ({meta['date']}; `{meta['command']}`; "
             f"{meta['machine']}{'; ' + meta['gpu'] if 'gpu' in meta else ''})", "",
             "| sampler | spacing | steps | NFE | FID | precision | recall | eval wall s |", "|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["how"] != "converged", r["sampler"], r["how"], r["nfe"] or 0)):
        how = r["how"] if r["how"] != "auto" else f"auto ({r['spacing']})"
        extra = "".join(f" + {key.split('_')[0]} {r[key]}" for key in ("tune_wall_s", "distill_wall_s") if r.get(key))
        lines.append(f"| {r['sampler']} | {how} | {r['steps']} | {r['nfe']} | {r['fid']} | {r['precision']:.3f} | "
                     f"{r['recall']:.3f} | {r['eval_wall_s']}{extra} |")
    lines += ["", *(f"failed: {f}" for f in failed)]
    (args.out / "few_step.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
