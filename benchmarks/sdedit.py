"""SDEdit's trade-off on MNIST: faithfulness to a guide image against realism, over strength.

    python benchmarks/sdedit.py --ckpt RUN --out DIR [--n 2000] [--strengths 0,0.2,0.4,0.6,0.8,1] [--steps 20]
        [--factor 4] [--precision auto]

The guides: the first n MNIST training images, each averaged over factor x factor blocks and blown back up
(nearest): blocky digits, the "stroke painting" of SDEdit's paper in miniature. Each point is `diffuse eval
ckpt=RUN init=DIR/guides.npz strength=S steps=STEPS n=N` (the checkpoint's own sampler; FID against the test
split, and each image's RMSE to its guide), then `diffuse report DIR/sweep --x start_rmse` draws FID against that
distance, and `--x strength` against strength. DIR/strip.png shows 8 guides (first column) and what each
strength makes of them (`diffuse sample`, same seed). Writes DIR/sdedit.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import machine  # noqa: E402
from time_to_quality import DIFFUSE, sh  # noqa: E402


def blocky(images: torch.Tensor, factor: int) -> torch.Tensor:
    """(N,C,H,W) uint8 -> the mean of each factor x factor block, repeated over the block: (N,C,H,W) uint8."""
    low = F.avg_pool2d(images.float(), factor)
    return F.interpolate(low, scale_factor=factor, mode="nearest").round().clamp(0, 255).to(torch.uint8)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--strengths", default="0,0.2,0.4,0.6,0.8,1")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--factor", type=int, default=4)
    ap.add_argument("--precision", default="auto")
    args = ap.parse_args()
    from diffuse.datasets.mnist import mnist
    from diffuse.images import grid, save_png

    for sub in ("sweep", "strip"):
        (args.out / sub).mkdir(parents=True, exist_ok=True)
    guides = args.out / "guides.npz"
    if not guides.exists():
        train = mnist(os.environ.get("DIFFUSE_DATA_ROOT", "./data"), True, False)
        np.savez(guides, images=blocky(train.images[:args.n], args.factor).permute(0, 2, 3, 1).numpy())
    strengths = [float(s) for s in args.strengths.split(",")]
    rows, tiles = [], []
    for s in strengths:
        run = args.out / "sweep" / f"strength_{s:g}"
        if not (run / "metrics.json").exists():
            sh([*DIFFUSE, "eval", f"ckpt={args.ckpt}", f"init={guides}", f"strength={s}", f"steps={args.steps}",
                f"n={args.n}", "batch_size=500", f"precision={args.precision}", f"hydra.run.dir={run}"],
               run.with_suffix(".log"))
        record = json.loads((run / "metrics.json").read_text())
        m = record["metrics"]
        rows.append({"strength": s, "steps_walked": record["start"]["steps_walked"], "nfe": record["nfe"],
                     "fid": m["fid"], "precision": m["precision"], "recall": m["recall"],
                     "rmse_to_guide": record["faithfulness"]["rmse"],
                     "psnr_to_guide_db": record["faithfulness"]["psnr_db"]})
        few = args.out / "strip" / f"strength_{s:g}"
        if not (few / "samples.npz").exists():
            sh([*DIFFUSE, "sample", f"ckpt={args.ckpt}", f"init={guides}", f"strength={s}", f"steps={args.steps}",
                "n=8", f"precision={args.precision}", f"hydra.run.dir={few}"], few.with_suffix(".log"))
        tiles.append(np.load(few / "samples.npz")["images"])
    with np.load(guides) as z:
        columns = [z["images"][:8], *tiles]
    save_png(grid(np.stack(columns, 1).reshape(-1, *columns[0].shape[1:]), nrow=len(columns)), args.out / "strip.png")
    for x in ("start_rmse", "strength"):
        sh([*DIFFUSE, "report", str(args.out / "sweep"), "--x", x], args.out / f"report_{x}.log")
    result = {"machine": machine(), "ckpt": args.ckpt, "n": args.n, "steps": args.steps, "factor": args.factor,
              "rows": rows, "command": " ".join(sys.argv)}
    (args.out / "sdedit.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"machine: {result['machine']}", "",
             "| strength | steps walked (NFE) | FID | precision | recall | RMSE to guide | PSNR to guide (dB) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        psnr = "exact" if r["psnr_to_guide_db"] is None else f"{r['psnr_to_guide_db']:.2f}"
        lines.append(f"| {r['strength']:g} | {r['steps_walked']} ({r['nfe']}) | {r['fid']:.2f} | "
                     f"{r['precision']:.3f} | {r['recall']:.3f} | {r['rmse_to_guide']:.4f} | {psnr} |")
    (args.out / "sdedit.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
