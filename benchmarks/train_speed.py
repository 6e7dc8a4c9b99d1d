"""Training throughput of a model config through the real training loop, fp32 vs bf16, side by side.

    python benchmarks/train_speed.py [--model unet_mnist] [--batch-size 128] [--steps 60]

Each precision runs in its own process (clean peak memory); images/s is the median of the loop's own
metrics.csv rows after the first (warm-up). Writes benchmarks/results/train_speed.{json,md}.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

OUT = Path(__file__).resolve().parent / "results"


def one(model: str, precision: str, batch_size: int, steps: int, chunk: int) -> dict:
    """Train `steps` steps in this process and report throughput and peak memory."""
    import torch
    from hydra import compose, initialize_config_module

    from diffuse.run import build_train, options
    from diffuse.train import TrainOptions, train

    overrides = [f"model={model}", f"train.precision={precision}", f"train.batch_size={batch_size}",
                 f"train.steps={steps}", f"train.log_every={chunk}", "train.sample_every=0", "train.sample_n=1",
                 "train.sample_steps=1", "train.ckpt_every=0"]
    with initialize_config_module(config_module="diffuse.conf", version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    with tempfile.TemporaryDirectory() as out:
        run = build_train(cfg, out)
        params = sum(p.numel() for p in run.model.parameters())
        train(run, options(TrainOptions, cfg.train, "train."))
        rows = list(csv.DictReader(open(Path(out) / "metrics.csv")))
    rates = [float(r["images_per_s"]) for r in rows[1:]]
    return {"model": model, "precision": precision, "batch_size": batch_size, "params_M": round(params / 1e6, 3),
            "images_per_s": round(statistics.median(rates), 1), "images_per_s_all": rates,
            "peak_rss_MB": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "threads": torch.get_num_threads(), "device": str(run.device)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="unet_mnist")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--chunk", type=int, default=10, help="steps per timing row")
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.model, args.one, args.batch_size, args.steps, args.chunk)))
        return
    results = []
    for precision in args.precisions.split(","):
        cmd = [sys.executable, __file__, "--one", precision, "--model", args.model, "--batch-size",
               str(args.batch_size), "--steps", str(args.steps), "--chunk", str(args.chunk)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    base = results[0]["images_per_s"]
    meta = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": f"{platform.processor() or platform.machine()}, "
            f"{results[0]['threads']} threads", "command": " ".join(["python"] + sys.argv)}
    OUT.mkdir(exist_ok=True)
    (OUT / "train_speed.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    lines = [f"Training throughput ({meta['date']}, {meta['machine']}; `{meta['command']}`)", "",
             "| model | params | precision | batch | images/s | vs first | peak RSS |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['model']} | {r['params_M']}M | {r['precision']} | {r['batch_size']} | "
                     f"{r['images_per_s']} | {r['images_per_s'] / base:.2f}x | {r['peak_rss_MB']} MB |")
    (OUT / "train_speed.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
