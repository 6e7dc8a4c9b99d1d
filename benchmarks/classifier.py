"""The evaluation classifier (diffuse/features/classifier.py) in channels_last against the contiguous layout.

    python benchmarks/classifier.py [--steps 800] [--repeats 2] [--out DIR]

Per layout, alternating which goes first each repeat, in this one process: the classifier's training as
`diffuse eval` runs it at first use (train_classifier on the MNIST train split, `--steps` steps of 128 images; the
CAS recipe is the same function), its accuracy on the test split, and the features of the test split (10,000
images) through the Extractor `diffuse eval` uses. Prints the machine line and a table; writes DIR/classifier.json
when --out is given. Set DIFFUSE_DATA_ROOT to the folder holding MNIST/raw; run it alone on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import machine  # noqa: E402

import diffuse.features.classifier as classifier  # noqa: E402
from diffuse.datasets.mnist import mnist  # noqa: E402
from diffuse.features.extractors import Extractor  # noqa: E402

LAYOUTS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}


def one(layout: str, train, test, steps: int) -> dict:
    """Train, test and extract with the classifier's layout set to `layout`: seconds for each, and the accuracy."""
    classifier.MEMORY_FORMAT = LAYOUTS[layout]
    t0 = time.perf_counter()
    model = classifier.train_classifier(train.images, train.labels, train.num_classes, steps=steps, seed=0)
    t1 = time.perf_counter()
    acc = classifier.accuracy(model, test.images, test.labels)
    t2 = time.perf_counter()
    extractor = Extractor("classifier", model, "-", torch.device("cpu"))  # train_classifier set the layout
    extractor(test.images.permute(0, 2, 3, 1).numpy())  # (N,H,W,C) uint8, as eval hands it over
    t3 = time.perf_counter()
    return {"layout": layout, "train_s": t1 - t0, "accuracy": acc, "accuracy_s": t2 - t1, "features_s": t3 - t2}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=800, help="training steps (800: what eval trains)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    root = os.environ.get("DIFFUSE_DATA_ROOT", "data")
    train, test = mnist(root, True, False), mnist(root, False, False)
    print(machine(), flush=True)
    rows = []
    for r in range(args.repeats):
        order = list(LAYOUTS) if r % 2 == 0 else list(LAYOUTS)[::-1]
        for layout in order:
            rows.append(one(layout, train, test, args.steps))
            print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in rows[-1].items()}),
                  flush=True)
    mean = {layout: {k: statistics.mean(row[k] for row in rows if row["layout"] == layout)
                     for k in ("train_s", "accuracy", "accuracy_s", "features_s")} for layout in LAYOUTS}
    base = mean["contiguous"]
    print(f"\n| layout | train {args.steps} steps s | test accuracy | accuracy s | features of 10,000 s |")
    print("|---|---|---|---|---|")
    for layout, m in mean.items():
        print(f"| {layout} | {m['train_s']:.1f} ({base['train_s'] / m['train_s']:.2f}x) | {m['accuracy']:.4f} | "
              f"{m['accuracy_s']:.2f} ({base['accuracy_s'] / m['accuracy_s']:.2f}x) | "
              f"{m['features_s']:.2f} ({base['features_s'] / m['features_s']:.2f}x) |")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "classifier.json").write_text(json.dumps({"machine": machine(), "steps": args.steps,
                                                               "rows": rows, "mean": mean}, indent=1))


if __name__ == "__main__":
    main()
