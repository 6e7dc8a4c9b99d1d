"""Freed memory kept for the next tensors (diffuse/allocator.py) against glibc's own malloc settings, side by side.

    python benchmarks/allocator.py --ckpt CKPT --out DIR [--batch-sizes 64,250,1000] [--n 3000] [--steps 2]
                                   [--train-steps 200] [--repeats 2]

Each row runs one command twice per repeat, with DIFFUSE_KEEP_FREED_MEMORY=0 (glibc's settings) and =1 (the
default), alternating which goes first: `diffuse eval ckpt=CKPT steps=STEPS n=N batch_size=B precision=auto
floor=false save_reference=false` per batch size (its metrics.json's generate_seconds: the sampler alone), and
`diffuse train experiment=mnist_cpu train.max_minutes=0 train.steps=TRAIN_STEPS` (0: none). Records wall time, CPU
time in user space and in the kernel, and peak RSS of each process. Writes DIR/allocator.{json,md}. Set
DIFFUSE_DATA_ROOT and DIFFUSE_CACHE as for the CLI; run it alone on the machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import machine  # noqa: E402
from time_to_quality import DIFFUSE, sh  # noqa: E402

from diffuse.allocator import SWITCH  # noqa: E402


def measured(cmd: list[str], run_dir: Path, keep: str) -> dict:
    """One run of `cmd` in run_dir with the switch at `keep`: sh's record, and the sampler's seconds for eval."""
    run_dir.mkdir(parents=True, exist_ok=True)
    log = run_dir / "command.log"
    sh([*cmd, f"hydra.run.dir={run_dir}"], log, env={SWITCH: keep})
    record = json.loads(log.with_suffix(".json").read_text())
    metrics = run_dir / "metrics.json"
    if metrics.is_file():
        record["generate_s"] = json.loads(metrics.read_text())["generate_seconds"]
    return record


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--batch-sizes", default="64,250,1000")
    p.add_argument("--n", type=int, default=3000)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--train-steps", type=int, default=200)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = {f"eval, batch {b}": [*DIFFUSE, "eval", f"ckpt={args.ckpt}", f"steps={args.steps}", f"n={args.n}",
                                 f"batch_size={b}", "precision=auto", "floor=false", "save_reference=false"]
            for b in map(int, args.batch_sizes.split(","))}
    if args.train_steps:
        rows["train, batch 32"] = [*DIFFUSE, "train", "experiment=mnist_cpu", "train.max_minutes=0",
                                   f"train.steps={args.train_steps}"]
    runs: dict[str, dict[str, list[dict]]] = {}
    for i, (name, cmd) in enumerate(rows.items()):
        runs[name] = {"0": [], "1": []}
        for r in range(args.repeats):
            order = ("0", "1") if (i + r) % 2 == 0 else ("1", "0")
            for keep in order:
                runs[name][keep].append(measured(cmd, args.out / f"row{i}_keep{keep}_r{r}", keep))
    mean = lambda records, key: statistics.mean(x[key] for x in records) if all(key in x for x in records) else None
    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine(), "command": " ".join(sys.argv),
              "runs": runs}
    (args.out / "allocator.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [f"{result['date']}, {result['machine']}; `{result['command']}`; mean of {args.repeats} runs each", "",
             f"| command | {SWITCH} | wall s | sampler s | user s | kernel s | peak RSS MB | wall ratio (0 / 1) |",
             "|---|---|---|---|---|---|---|---|"]
    for name, by in runs.items():
        for keep in ("0", "1"):
            gen = mean(by[keep], "generate_s")
            ratio = mean(by["0"], "wall_s") / mean(by["1"], "wall_s")
            lines.append(f"| {name} | {keep} | {mean(by[keep], 'wall_s'):.1f} | {'' if gen is None else f'{gen:.1f}'} | "
                         f"{mean(by[keep], 'user_s'):.1f} | {mean(by[keep], 'sys_s'):.1f} | "
                         f"{mean(by[keep], 'peak_rss_MB'):.0f} | {f'{ratio:.2f}' if keep == '1' else ''} |")
    (args.out / "allocator.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
