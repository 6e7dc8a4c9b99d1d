"""The terminal: rich progress bars when attached to a terminal. The only module that imports rich."""

from __future__ import annotations

import logging
import sys
from contextlib import contextmanager
from typing import Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True)


def interactive(rank: int = 0) -> bool:
    return rank == 0 and sys.stderr.isatty()


class Bar:
    """A progress bar, or nothing when not interactive; `update(done, **fields)` shows fields as text, and
    `update(done, total=n)` moves the end (a time budget's plan)."""

    def __init__(self, progress: Progress | None, task: int | None):
        self._progress, self._task = progress, task

    def update(self, done: int, total: int | None = None, **fields: str) -> None:
        if self._progress is not None:
            info = "  ".join(f"{k} {v}" for k, v in fields.items())
            self._progress.update(self._task, completed=done, **({"total": total} if total else {}),
                                  **({"info": info} if fields else {}))


@contextmanager
def progress_bar(description: str, total: int, enabled: bool) -> Iterator[Bar]:
    if not enabled:
        yield Bar(None, None)
        return
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[info]}"),
               TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False) as p:
        # log handlers hold the real stdout/stderr; point them at rich's proxies so lines print above the bar
        handlers = [h for h in logging.getLogger().handlers
                    if type(h) is logging.StreamHandler and h.stream in (sys.__stdout__, sys.__stderr__)]
        saved = [h.setStream(sys.stdout if h.stream is sys.__stdout__ else sys.stderr) for h in handlers]
        try:
            yield Bar(p, p.add_task(description, total=total, info=""))
        finally:
            for h, stream in zip(handlers, saved):
                h.setStream(stream)



METRIC_ROWS = (("fid", "FID", "lower"), ("kid", "KID", "lower"), ("precision", "precision", "higher"),
               ("recall", "recall", "higher"), ("classifier_score", "classifier score", "higher"),
               ("class_coverage", "class coverage", "higher"), ("class_tv", "class TV distance", "lower"),
               ("conditional_accuracy", "conditional accuracy", "higher"),
               ("cas", "classification accuracy score", "higher"), ("start_rmse", "RMSE to the init image", "lower"),
               ("psnr_db", "PSNR to the originals, dB", "higher"), ("ssim", "SSIM to the originals", "higher"),
               ("consistency", "consistency, mean |error| /255", "lower"))


def _fmt(key: str, values: dict | None) -> str:
    if not values or values.get(key) is None:
        return "-"
    v = values[key]
    if key == "kid":
        return f"{v:.5f} ± {values.get('kid_std', 0):.5f}"
    if key == "classifier_score":
        return f"{v:.3f} ± {values.get('classifier_score_std', 0):.3f}"
    return f"{v:.4g}" if key == "fid" else f"{v:.4f}"


def print_metrics(title: str, model: dict, floor: dict | None, baseline: tuple[str, dict] | None = None) -> None:
    """The metrics as a table: model beside floor (real images scored the same way) and, when given, a baseline
    (its name and metrics: bicubic upsampling beside a super-resolution model)."""
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for name in ("metric", "better", "model", "floor (real)", *(baseline[:1] if baseline else ())):
        table.add_column(name, justify="left" if name in ("metric", "better") else "right")
    for key, label, better in METRIC_ROWS:
        if key in model:
            table.add_row(label, better, _fmt(key, model), _fmt(key, floor), *([_fmt(key, baseline[1])] if baseline else []))
    Console(file=sys.stdout, width=max(100, console.width)).print(table)
