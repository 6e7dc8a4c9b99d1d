"""Training images/s of the default MNIST model with 1 process and with N torchrun ranks (gloo on the CPU, NCCL on
GPUs), side by side, through the real CLI; and how far the N-rank weights are from the 1-process weights.

    python benchmarks/ranks.py [--ranks 2] [--steps 60] [--batch-size 128] [--precision auto]

Each run trains `--steps` steps from the same seed in its own process(es); images/s is the median of its
metrics.csv rows after the first (rows every 10 steps). On a CPU, torchrun gives each rank one thread
(OMP_NUM_THREADS=1) and the single process gets all cores: the ranks share the cores the single process uses.
Writes benchmarks/results/ranks.{json,md}.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench import machine  # noqa: E402

OUT = HERE / "results"


def train(out: Path, ranks: int, args) -> dict:
    common = ["train", f"train.steps={args.steps}", f"train.batch_size={args.batch_size}", "train.log_every=10",
              "train.sample_every=0", "train.ckpt_every=0", f"train.precision={args.precision}", "model.dropout=0",
              f"hydra.run.dir={out}"]
    launcher = ([sys.executable, "-m", "diffuse"] if ranks == 1 else
                [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}", "-m",
                 "diffuse"])
    t0 = time.perf_counter()
    subprocess.run([*launcher, *common], check=True, capture_output=True, env={**os.environ})
    wall = time.perf_counter() - t0
    rows = [r for r in csv.DictReader(open(out / "metrics.csv")) if r["images_per_s"]]
    return {"ranks": ranks, "images_per_s": statistics.median(float(r["images_per_s"]) for r in rows[1:]),
            "wall_s": round(wall, 1), "final_loss": float(rows[-1]["loss"])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--precision", default="auto")
    args = ap.parse_args()
    from safetensors.torch import load_file

    with tempfile.TemporaryDirectory() as tmp:
        one, many = train(Path(tmp) / "one", 1, args), train(Path(tmp) / "many", args.ranks, args)
        a, b = (load_file(Path(tmp) / d / "checkpoints" / "last.safetensors") for d in ("one", "many"))
        diff = max((a[k].float() - b[k].float()).abs().max().item() for k in a if k.startswith(("model.", "ema.")))
    rows = [one, many]
    meta = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine(), "torch": torch.__version__,
            "command": " ".join(["python"] + sys.argv), "max_weight_difference": diff}
    OUT.mkdir(exist_ok=True)
    (OUT / "ranks.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    lines = [f"Ranks ({meta['date']}, {meta['machine']}; `{meta['command']}`)", "",
             "| ranks | images/s | wall s | final loss |", "|---|---|---|---|"]
    lines += [f"| {r['ranks']} | {r['images_per_s']:.1f} | {r['wall_s']} | {r['final_loss']:.4f} |" for r in rows]
    lines += ["", f"Largest difference between the {args.ranks}-rank and 1-process weights after {args.steps} steps: "
              f"{diff:.3g}"]
    (OUT / "ranks.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
