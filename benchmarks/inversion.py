"""DDIM inversion's round trip on real MNIST test digits: each image inverted to a noise at `steps` steps and walked
back by the same deterministic sampler; how far it comes back, by steps and fixed-point rounds.

    python benchmarks/inversion.py --ckpt RUN --out DIR [--n 200] [--steps 20,50,100] [--refine 0,1,2]
        [--sampler NAME] [--precision fp32]

Each cell is `diffuse interpolate ckpt=RUN images=DIR/test.npz n=N/2 frames=2 steps=S refine=R` (frames=2: only
the two ends of each pair, which are the walked-back images); its interpolation.json holds the round trip. One
more run draws DIR/strip.png: 4 pairs, 9 frames, at the last steps and refine. Writes DIR/inversion.{json,md}.
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
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--steps", default="20,50,100")
    ap.add_argument("--refine", default="0,1,2")
    ap.add_argument("--sampler", default=None, help="another sampler than the checkpoint's (ddim, euler, flow_euler)")
    ap.add_argument("--precision", default="fp32")
    args = ap.parse_args()
    from diffuse.datasets.mnist import mnist
    from diffuse.images import image_distance

    args.out.mkdir(parents=True, exist_ok=True)
    images = args.out / "test.npz"
    if not images.exists():
        test = mnist(os.environ.get("DIFFUSE_DATA_ROOT", "./data"), False, False)
        np.savez(images, images=test.images[:args.n].permute(0, 2, 3, 1).numpy())
    common = [f"ckpt={args.ckpt}", f"images={images}", f"precision={args.precision}", "batch_size=200",
              *([f"sampler={args.sampler}"] if args.sampler else [])]
    rows = []
    for steps in [int(s) for s in args.steps.split(",")]:
        for refine in [int(r) for r in args.refine.split(",")]:
            run = args.out / f"steps{steps}_refine{refine}"
            if not (run / "interpolation.json").exists():
                sh([*DIFFUSE, "interpolate", *common, f"n={args.n // 2}", "frames=2", f"steps={steps}",
                    f"refine={refine}", f"hydra.run.dir={run}"], run.with_suffix(".log"))
            record = json.loads((run / "interpolation.json").read_text())
            wall = json.loads(run.with_suffix(".json").read_text())["wall_s"]
            with np.load(run / "frames.npz") as z, np.load(images) as real:  # recomputed: the current measure
                ends = z["images"].reshape(args.n // 2, 2, *z["images"].shape[1:])
                pairs = real["images"][:args.n // 2 * 2].reshape(args.n // 2, 2, *ends.shape[2:])
                trip = image_distance(np.concatenate([ends[:, 0], ends[:, 1]]),
                                      np.concatenate([pairs[:, 0], pairs[:, 1]]))
            rows.append({"steps": steps, "refine": refine, "sampler": record["sampler"],
                         "inversion_nfe": record["inversion"]["nfe_per_image"], **trip, "wall_s": wall})
    strip = args.out / "strip"
    if not (strip / "strip.png").exists():
        sh([*DIFFUSE, "interpolate", *common, "n=4", "frames=9", f"steps={rows[-1]['steps']}",
            f"refine={rows[-1]['refine']}", f"hydra.run.dir={strip}"], strip.with_suffix(".log"))
    result = {"machine": machine(), "ckpt": args.ckpt, "n": args.n, "rows": rows, "command": " ".join(sys.argv)}
    (args.out / "inversion.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"machine: {result['machine']}", "",
             "| sampler | steps | refine | inversion NFE | RMSE (mean) | RMSE (worst image) | PSNR dB | images exact "
             "| max pixel error /255 | wall s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        psnr = "exact" if r["psnr_db"] is None else f"{r['psnr_db']:.1f}"
        lines.append(f"| {r['sampler']} | {r['steps']} | {r['refine']} | {r['inversion_nfe']} | {r['rmse']:.4f} | "
                     f"{r['rmse_max']:.4f} | {psnr} | {r['exact_share']:.2f} | {r['max_abs_uint8']} | "
                     f"{r['wall_s']:.0f} |")
    (args.out / "inversion.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
