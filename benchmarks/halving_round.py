"""The halving round alone, side by side: on each `diffuse distill` folder whose consistency student is trained, the
round that halves its K-step walk (by default 2) into a K/2-step student, run again with each halve_adversarial
weight, and the classifier FID of each K/2-step student.

    python benchmarks/halving_round.py --teacher CKPT --out DIR --runs RUN[,RUN...] [--weights 0,0.5]
        [--walk 2] [--n 10000] [--minutes 10] [--share 0.15]

For each RUN and weight W, DIR/<RUN's name>_k<K>_w<W>/ gets a copy of RUN's consistency/ and distill.json (its
halve_walks, halve_share and halve_adversarial set to [K], SHARE and W), and `diffuse distill ckpt=CKPT
resume=THAT train.max_minutes=MINUTES` with every option that copy of distill.json records (RUN's seed, adversarial
weight, teacher walk, ...: a resume refuses other settings) trains the round alone (the consistency student and its
walk search are done): SHARE x MINUTES minutes. Then `diffuse eval steps=K/2` scores its steps_{K/2}/. The weights'
order alternates from run to run. Writes DIR/halving_round.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from dataclasses import fields
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from distill import evaluate  # noqa: E402
from time_to_quality import DIFFUSE, sh  # noqa: E402

from diffuse.distill import IMPLIED  # noqa: E402
from diffuse.distill_options import DistillOptions  # noqa: E402

# the settings of distill.json that the command line gives (the rest name the teacher, its hash and walk)
OPTIONS = {f.name for f in fields(DistillOptions) if f.name != "train"} | {"seed"}


def override(value) -> str:
    """A distill.json value as a Hydra override's value: null, true/false, [2,4], or the value itself."""
    if isinstance(value, list):
        return "[" + ",".join(override(v) for v in value) + "]"
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def round_again(args, run: Path, weight: float) -> dict:
    """The round halving `run`'s consistency student's args.walk-step walk at `weight`, trained (unless done) and
    scored."""
    half = args.walk // 2
    folder = args.out / f"{run.name}_k{args.walk}_w{weight:g}"
    log_path = Path(f"{folder}.log")  # the name holds a dot (the weight): no with_suffix
    if not (folder / f"steps_{half}" / "student.json").exists():
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(run / "consistency", folder / "consistency")
        manifest = json.loads((run / "distill.json").read_text())
        manifest.update(halve_walks=[args.walk], halve_share=args.share, halve_adversarial=weight)
        (folder / "distill.json").write_text(json.dumps(manifest, indent=2) + "\n")
        own = [f"{k}={override(v)}" for k, v in {**IMPLIED, **manifest}.items() if k in OPTIONS]  # as resume reads
        sh([*DIFFUSE, "distill", f"ckpt={args.teacher}", f"resume={folder}", *own,
            f"train.max_minutes={args.minutes}", f"hydra.run.dir={folder}.run"], log_path)
    student = json.loads((folder / f"steps_{half}" / "student.json").read_text())
    log = log_path.read_text()  # the round's output: "done: steps 1..N in S s"
    steps = next((line.split("done: steps 1..")[1].split(" ")[0] for line in log.splitlines() if "done: steps" in line),
                 None)
    return {"run": run.name, "walk": args.walk, "weight": weight, "round_s": student["seconds"], "round_steps": steps,
            **evaluate(args, f"eval_{folder.name}", folder / f"steps_{half}", half,
                       ["floor=false", "save_reference=false"])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", required=True, help="the teacher's checkpoint the runs were distilled from")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--runs", required=True, help="diffuse distill folders with a trained consistency/ student")
    ap.add_argument("--weights", default="0,0.5")
    ap.add_argument("--walk", type=int, default=2, help="the consistency student's walk the round halves (even)")
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--minutes", type=float, default=10.0, help="train.max_minutes (the round trains SHARE of it)")
    ap.add_argument("--share", type=float, default=0.15)
    ap.add_argument("--precision", default="auto", help="the network's precision when sampling")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    weights = [float(w) for w in args.weights.split(",")]
    rows = []
    for i, run in enumerate(Path(r) for r in args.runs.split(",")):
        for weight in weights if i % 2 == 0 else weights[::-1]:
            rows.append(round_again(args, run, weight))
            print(rows[-1], flush=True)
    meta = {"date": time.strftime("%Y-%m-%d %H:%M"), "command": " ".join(["python"] + sys.argv),
            "machine": f"{platform.processor() or platform.machine()}; {platform.platform()}"}
    (args.out / "halving_round.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    lines = [f"The halving round of the {args.walk}-step walk again, classifier FID at n={args.n} of the "
             f"{args.walk // 2}-step student ({meta['date']}; "
             f"`{meta['command']}`; {meta['machine']})", "",
             "| consistency run | walk halved | halve_adversarial | round steps in s | FID | precision | recall |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['run']} | {r['walk']} | {r['weight']:g} | {r['round_steps']} in {r['round_s']} | {r['fid']} | "
              f"{r['precision']} | {r['recall']} |" for r in sorted(rows, key=lambda r: (r["run"], r["weight"]))]
    (args.out / "halving_round.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
