"""`diffuse report DIR`: every metrics.json under DIR (e.g. an eval multirun) as a Markdown table, a CSV and a
PNG plot of one metric against NFE (or against SDEdit's strength, or the distance to the start images), one line
per sampler."""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path

from diffuse import DiffuseError

COLUMNS = ("sampler", "spacing", "steps", "nfe", "n", "guidance", "strength", "checkpoint_step", "fid", "kid",
           "precision", "recall", "classifier_score", "class_coverage", "conditional_accuracy", "cas", "start_rmse",
           "floor_fid", "generate_seconds", "run")
METRICS = ("fid", "kid", "precision", "recall", "classifier_score", "class_coverage", "conditional_accuracy", "cas",
           "start_rmse")
AXES = {"nfe": "network evaluations per image (NFE)", "strength": "strength (SDEdit: share of the walk)",
        "start_rmse": "RMSE to the start image (faithfulness: lower is closer)"}
LOWER_IS_BETTER = {"fid", "kid", "class_tv", "start_rmse"}


def collect(root: Path) -> tuple[list[dict], list[str]]:
    """One row per readable metrics.json under `root`; the unreadable ones are named, not dropped silently."""
    rows, skipped = [], []
    for path in sorted(root.rglob("metrics.json")):
        try:
            record = json.loads(path.read_text())
            m = record["metrics"]
            floor = record.get("floor") or {}
            settings = record.get("settings") or {}
            sampler = record.get("sampler", "samples")
            if settings.get("eta"):
                sampler += f" eta={settings['eta']}"
            walked = record.get("spacing")  # a tuned walk, a distilled student's, or the spacing it walked
            spacing = walked if walked in ("tuned", "distilled") else settings.get("spacing")
            if spacing == "auto" and walked:  # the default: named, with the spacing its table chose at these steps
                spacing = f"auto ({walked})"
            if walked == "distilled" and record.get("student"):
                spacing = f"distilled ({record['student']})"
            rows.append({"sampler": sampler, "spacing": spacing, "steps": record.get("steps"), "nfe": record.get("nfe"),
                         "n": record.get("n"), "guidance": (record.get("options") or {}).get("guidance"),
                         "strength": (record.get("start") or {}).get("strength"),
                         "checkpoint_step": record.get("checkpoint_step"), **{k: m.get(k) for k in COLUMNS if k in m},
                         "floor_fid": floor.get("fid"), "generate_seconds": record.get("generate_seconds"),
                         "run": str(path.parent.relative_to(root)) or ".", "features": record["features"]["name"]})
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            skipped.append(f"{path} ({type(e).__name__})")
    rows.sort(key=lambda r: (r["sampler"], r["nfe"] if r["nfe"] is not None else -1, str(r["run"])))
    return rows, skipped


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.3e}"
    return str(value)


def write_markdown(rows: list[dict], path: Path, metric: str, skipped: list[str]) -> None:
    cols = [c for c in COLUMNS if any(r.get(c) is not None for r in rows)]
    lines = [f"# Evaluation report ({len(rows)} runs)", "",
             f"Features: {', '.join(sorted({r['features'] for r in rows}))}. `floor_fid` is n real training images "
             f"scored the same way: the best a model can reach at this n.", "",
             "| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(_cell(r.get(c)) for c in cols) + " |" for r in rows]
    scored = [r for r in rows if isinstance(r.get(metric), (int, float))]
    if scored:
        best = (min if metric in LOWER_IS_BETTER else max)(scored, key=lambda r: r[metric])
        lines += ["", f"Best {metric}: {_cell(best[metric])} ({best['sampler']}, {best['nfe']} NFE, run {best['run']})."]
    if skipped:
        lines += ["", "Not readable, left out: " + "; ".join(skipped)]
    path.write_text("\n".join(lines) + "\n")


def write_csv(rows: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[*COLUMNS, "features"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def plot_lines(rows: list[dict], metric: str, x: str) -> dict[tuple[str, str], list[tuple[float, float]]]:
    """(sampler, rest of the label) -> its (x, metric) points; the default spacing is one line whatever it chose."""
    lines: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for r in rows:
        if isinstance(r.get(x), (int, float)) and isinstance(r.get(metric), (int, float)) and math.isfinite(r[metric]):
            spacing = "auto" if str(r.get("spacing")).startswith("auto (") else r.get("spacing")
            rest = f"({spacing})" if spacing else ""
            rest += f", {r['steps']} steps" if x != "nfe" and r.get("steps") is not None else ""
            lines.setdefault((r["sampler"], rest), []).append((r[x], r[metric]))
    return lines


def plot(rows: list[dict], path: Path, metric: str, x: str = "nfe") -> bool:
    """`metric` against `x` (NFE on a log axis, strength, start_rmse), one line per sampler and spacing (and step
    count, off the NFE axis); the floor as a dashed line. False if nothing to plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = plot_lines(rows, metric, x)
    if not lines:
        return False
    many = len(lines) > 8  # then the legend goes beside the plot, and each sampler keeps one colour
    fig, ax = plt.subplots(figsize=(11 if many else 7, max(4.5, 0.22 * len(lines)) if many else 4.5), dpi=120)
    samplers = sorted({sampler for sampler, _ in lines})
    styles = ["-", "--", ":", "-.", (0, (5, 1)), (0, (3, 1, 1, 1)), (0, (1, 3))]
    rests: dict[str, list[str]] = {}
    for sampler, rest in sorted(lines):
        rests.setdefault(sampler, []).append(rest)
    for (sampler, rest), points in sorted(lines.items()):
        points.sort()
        k = rests[sampler].index(rest)
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="osD^vP*"[k % 7], markersize=4,
                color=f"C{samplers.index(sampler) % 10}", linestyle=styles[k % len(styles)] if many else "-",
                label=f"{sampler} {rest}".strip())
    floors = [r["floor_fid"] for r in rows if metric == "fid" and isinstance(r.get("floor_fid"), (int, float))]
    if floors:
        ax.axhline(min(floors), color="grey", linestyle="--", linewidth=1, label="floor (real data)")
    if x == "nfe":
        ax.set_xscale("log")
        ticks: list[float] = []
        for t in sorted({p[0] for pts in lines.values() for p in pts}):  # labels at least 12% apart: no overlap
            if not ticks or t >= 1.12 * ticks[-1]:
                ticks.append(t)
        ax.set_xticks(ticks, [str(int(t)) for t in ticks])
        ax.minorticks_off()
    values = [p[1] for pts in lines.values() for p in pts]
    label = metric + (" (lower is better)" if metric in LOWER_IS_BETTER else " (higher is better)")
    if metric in LOWER_IS_BETTER and all(v > 0 for v in values):
        ax.set_yscale("log")
        if max(values) > 30 * min(values):  # a few diverging walks would flatten the rest: cut the axis, say so
            ax.set_ylim(top=30 * min(values))
            label += f"; axis cut at {30 * min(values):.3g}"
    ax.set_xlabel(AXES[x])
    ax.set_ylabel(label)
    ax.grid(True, which="both", alpha=0.3)
    if many:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, ncol=1 + len(lines) // 40)
    else:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def report(root: str | Path, metric: str = "fid", out: str | Path | None = None, x: str = "nfe") -> list[Path]:
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DiffuseError(f"{root} is not a folder; give the folder of eval runs (e.g. outputs/eval-multirun/<date>/<time>)")
    rows, skipped = collect(root)
    if not rows:
        raise DiffuseError(f"no readable metrics.json under {root}" + (f" ({len(skipped)} unreadable)" if skipped else
                           "; run `diffuse eval` (or `diffuse eval -m ...`) into it first"))
    if metric not in METRICS:
        raise DiffuseError(f"--metric {metric!r} is not reported; allowed: {', '.join(METRICS)}")
    if x not in AXES or x == metric:
        raise DiffuseError(f"--x {x!r} is not an axis for --metric {metric}; allowed: "
                           f"{', '.join(a for a in AXES if a != metric)}")
    out_dir = Path(out).expanduser() if out else root
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / "report.md", out_dir / "report.csv"]
    write_markdown(rows, written[0], metric, skipped)
    write_csv(rows, written[1])
    picture = out_dir / (f"report_{metric}.png" if x == "nfe" else f"report_{metric}_vs_{x}.png")
    if plot(rows, picture, metric, x):
        written.append(picture)
    return written


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="diffuse report", description=__doc__)
    parser.add_argument("dir", help="a folder holding eval runs (searched recursively for metrics.json)")
    parser.add_argument("--metric", default="fid", help="the metric to plot (default fid)")
    parser.add_argument("--out", default=None, help="where to write report.md/.csv/.png (default: DIR)")
    parser.add_argument("--x", default="nfe", help=f"the plot's horizontal axis: {', '.join(AXES)} (default nfe)")
    args = parser.parse_args(argv)
    try:
        written = report(args.dir, args.metric, args.out, args.x)
    except DiffuseError as e:
        print(f"diffuse report: error: {e}", file=sys.stderr)
        sys.exit(2)
    except OSError as e:
        print(f"diffuse report: error: cannot write {e.filename}: {e.strerror}", file=sys.stderr)
        sys.exit(2)
    for path in written:
        print(path)
