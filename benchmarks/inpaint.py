"""Inpainting MNIST test digits with a trained checkpoint (RePaint, no retraining), against filling with the mean
training image: how often the domain classifier reads the filled digit as its true label, and FID.

    python benchmarks/inpaint.py --ckpt RUN --out DIR [--n 1000] [--masks centre,half] [--steps 20]
        [--resample 1,5] [--jump 5] [--precision auto]

The first n test images (and labels) go to DIR/known.npz; each cell is `diffuse sample ckpt=RUN inpaint=known.npz
mask=M steps=S resample=R jump_length=J n=N` (the checkpoint's own sampler), then `diffuse eval samples=...
dataset=mnist` of the filled images with the true labels (its conditional_accuracy is the rate read as the true
label). The mean-fill baseline puts the mean training image where the mask is 0. Writes DIR/inpaint.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from time_to_quality import DIFFUSE, sh  # noqa: E402


def scores(args, name: str, images: np.ndarray, labels: np.ndarray) -> dict:
    run_dir = args.out / f"eval_{name}"
    if not (run_dir / "metrics.json").exists():
        np.savez(args.out / f"{name}.npz", images=images, labels=labels)
        sh([*DIFFUSE, "eval", f"samples={args.out / f'{name}.npz'}", "dataset=mnist", f"hydra.run.dir={run_dir}"],
           run_dir.with_suffix(".log"))
    m = json.loads((run_dir / "metrics.json").read_text())["metrics"]
    return {"accuracy": round(m["conditional_accuracy"], 4), "fid": round(m["fid"], 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--masks", default="centre,half")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--resample", default="1,5")
    ap.add_argument("--jump", type=int, default=5)
    ap.add_argument("--precision", default="auto")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    from diffuse.datasets.mnist import mnist
    from diffuse.start_images import preset_mask

    root = os.environ.get("DIFFUSE_DATA_ROOT", "./data")
    test, train = mnist(root, False, False), mnist(root, True, False)
    known = test.images[: args.n].permute(0, 2, 3, 1).numpy()  # (n,H,W,C) uint8
    labels = test.labels[: args.n].numpy()
    np.savez(args.out / "known.npz", images=known, labels=labels)
    mean = train.images.float().mean(0).permute(1, 2, 0).round().byte().numpy()  # (H,W,C)
    rows = [{"mask": "none", "fill": "the real test images", **scores(args, "real", known, labels)}]
    for mask_name in args.masks.split(","):
        mask = preset_mask(mask_name, 1, tuple(test.shape), 0)[0, 0].bool().numpy()  # (H,W) True = known
        filled = np.where(mask[None, :, :, None], known, mean[None])
        rows.append({"mask": mask_name, "fill": "mean training image", "known_share": round(float(mask.mean()), 3),
                     **scores(args, f"meanfill_{mask_name}", filled, labels)})
        for r in [int(v) for v in args.resample.split(",")]:
            run_dir = args.out / f"inpaint_{mask_name}_r{r}"
            if not (run_dir / "samples.npz").exists():
                sh([*DIFFUSE, "sample", f"ckpt={args.ckpt}", f"inpaint={args.out / 'known.npz'}", f"mask={mask_name}",
                    f"steps={args.steps}", f"resample={r}", f"jump_length={args.jump}", f"n={args.n}", "batch_size=250",
                    f"precision={args.precision}", f"hydra.run.dir={run_dir}"], run_dir.with_suffix(".log"))
            images = np.load(run_dir / "samples.npz")["images"]
            record = json.loads((run_dir / "sampling.json").read_text())
            exact = bool(np.array_equal(images[:, mask], known[:, mask]))
            wall = json.loads(run_dir.with_suffix(".json").read_text())["wall_s"]
            rows.append({"mask": mask_name, "fill": f"RePaint, {record['sampler']} {args.steps} steps, resample {r}",
                         "known_share": round(float(mask.mean()), 3), "nfe": record["nfe_per_image"],
                         "known_pixels_exact": exact, "sample_wall_s": wall,
                         **scores(args, f"inpaint_{mask_name}_r{r}", images, labels)})
    meta = {"date": time.strftime("%Y-%m-%d %H:%M"), "command": " ".join(["python"] + sys.argv),
            "machine": f"{platform.processor() or platform.machine()}; {platform.platform()}"}
    (args.out / "inpaint.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    lines = [f"Inpainting the first {args.n} MNIST test digits with {args.ckpt} ({meta['date']}; `{meta['command']}`)",
             "", "| mask | fill | known share | NFE | classifier reads the true label | FID | known pixels exact | "
             "sampling wall s |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['mask']} | {r['fill']} | {r.get('known_share', 1.0)} | {r.get('nfe', '')} | {r['accuracy']:.4f} | "
              f"{r['fid']} | {r.get('known_pixels_exact', '')} | {r.get('sample_wall_s', '')} |" for r in rows]
    (args.out / "inpaint.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
