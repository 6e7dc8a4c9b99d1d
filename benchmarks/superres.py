"""Super-resolution (SR3) on MNIST against bicubic upsampling: 28 px from 7.

    python benchmarks/superres.py --ckpt RUN --out DIR [--n 2000] [--steps 5,10,20] [--precision auto]

RUN is a super-resolution checkpoint (`diffuse train experiment=mnist_cpu dataset.lowres=7`). Each row is
`diffuse eval ckpt=RUN steps=S n=N` (the checkpoint's own sampler): the inputs are the first n test digits degraded
to 7x7 (box filter, uint8), the outputs scored against those digits (PSNR, SSIM), against the test split (FID, with
the FID classifier) and against their own inputs (consistency: the output degraded again, in uint8 levels);
bicubic upsampling of the same inputs beside them. The FID reference is the split the inputs come from, so it is
the FID of images that share their coarse layout with the reference. DIR/strip.png: for 8 test digits, the
input (nearest, for display), bicubic, the model at each step count, and the original. Writes DIR/superres.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import machine  # noqa: E402
from time_to_quality import DIFFUSE, sh  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--steps", default="5,10,20")
    ap.add_argument("--precision", default="auto")
    args = ap.parse_args()
    import torch

    from diffuse.datasets.mnist import mnist
    from diffuse.images import grid, save_png, to_uint8
    from diffuse.superres import degrade, upsample

    args.out.mkdir(parents=True, exist_ok=True)
    rows, tiles, bicubic = [], [], None
    for steps in [int(s) for s in args.steps.split(",")]:
        run = args.out / f"steps_{steps}"
        if not (run / "metrics.json").exists():
            sh([*DIFFUSE, "eval", f"ckpt={args.ckpt}", f"steps={steps}", f"n={args.n}", "batch_size=500",
                f"precision={args.precision}", f"hydra.run.dir={run}"], run.with_suffix(".log"))
        record = json.loads((run / "metrics.json").read_text())
        sr, m = record["superres"], record["metrics"]
        bicubic = sr["bicubic"]
        rows.append({"steps": steps, "nfe": record["nfe"], "fid": m["fid"], "precision": m["precision"],
                     "recall": m["recall"], **{k: sr["model"][k] for k in ("psnr_db", "ssim", "rmse", "consistency")},
                     "seconds": record["generate_seconds"]})
        few = args.out / f"strip_{steps}"
        if not (few / "samples.npz").exists():
            sh([*DIFFUSE, "sample", f"ckpt={args.ckpt}", f"steps={steps}", "n=8", f"precision={args.precision}",
                f"hydra.run.dir={few}"], few.with_suffix(".log"))
        tiles.append(np.load(few / "samples.npz")["images"])
    test = mnist(os.environ.get("DIFFUSE_DATA_ROOT", "./data"), False, False).images[:8]  # (8,1,28,28)
    low = degrade(test.float() / 127.5 - 1, 7)
    columns = [to_uint8(low.repeat_interleave(4, -1).repeat_interleave(4, -2)), to_uint8(upsample(low, 28)), *tiles,
               test.permute(0, 2, 3, 1).numpy()]
    save_png(grid(np.stack(columns, 1).reshape(-1, *columns[0].shape[1:]), nrow=len(columns)), args.out / "strip.png")
    result = {"machine": machine(), "torch": torch.__version__, "ckpt": args.ckpt, "n": args.n, "rows": rows,
              "bicubic": bicubic, "command": " ".join(sys.argv)}
    (args.out / "superres.json").write_text(json.dumps(result, indent=2) + "\n")

    def line(name: str, s: dict, fid: float, pr: str) -> str:
        c = s["consistency"]
        return (f"| {name} | {fid:.2f} | {pr} | {s['psnr_db']:.2f} | {s['ssim']:.4f} | {c['mean_abs_uint8']:.3f} | "
                f"{c['max_abs_uint8']} | {c['within_1_share']:.4f} |")

    lines = [f"machine: {result['machine']}; n = {args.n} test digits, 28 px from 7", "",
             "| upsampler | FID | precision / recall | PSNR dB | SSIM | consistency: mean abs /255 | max /255 | "
             "share within 1 |", "|---|---|---|---|---|---|---|---|",
             line("bicubic", bicubic, bicubic["fid"], "-")]
    for r in rows:
        lines.append(line(f"SR3, {r['steps']} steps ({r['nfe']} NFE, {r['seconds']:.0f} s)", r, r["fid"],
                          f"{r['precision']:.3f} / {r['recall']:.3f}"))
    (args.out / "superres.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
