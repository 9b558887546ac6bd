"""`cnnc plot` and `cnnc train --plot`: the loss and accuracy curves of a metrics log, as a PNG.

Two panels: every loss column (``loss`` of training, ``test_loss``, any ``*_loss``) on the left,
every accuracy column (``train_accuracy``, ``test_accuracy``, any ``*_accuracy``) on the right,
against the epoch. RUN.metrics.csv -> RUN.curves.png beside it.
"""
from __future__ import annotations

import io
from pathlib import Path

from ..diagnostics import DataError
from ..files import atomic_write_bytes, refuse_overwrite
from .metrics import METRICS_SUFFIX, metrics_path, read_metrics

CURVES_SUFFIX = ".curves.png"
# Training in blue, the held-out splits in orange and green: matplotlib's first three colours.
COLOURS = {"train": "#1f77b4", "test": "#ff7f0e", "val": "#2ca02c"}
OTHER_COLOURS = ("#d62728", "#9467bd", "#8c564b")


def log_of(run) -> Path:
    """RUN is a metrics log itself, or the weights file (or checkpoint) whose log sits beside it."""
    run = Path(run)
    if run.name.lower().endswith(METRICS_SUFFIX):
        return run
    name = run.name[: -len(".ckpt.npz")] + ".npz" if run.name.lower().endswith(".ckpt.npz") else run.name
    return metrics_path(run.with_name(name))


def curves_path(log: Path) -> Path:
    """RUN.metrics.csv -> RUN.curves.png."""
    return log.with_name(log.name[: -len(METRICS_SUFFIX)] + CURVES_SUFFIX)


def plot_run(run, output=None, title: str | None = None) -> Path:
    """Reads the metrics log of RUN and writes its curves (to `output`, else beside the log)."""
    log = log_of(run)
    if not log.exists() and log != Path(run):
        raise DataError(run, f"has no metrics log beside it ({log} does not exist)",
                        hint="`cnnc train --out WEIGHTS.npz` writes WEIGHTS.metrics.csv beside the weights")
    rows = read_metrics(log)
    if not rows:
        raise DataError(log, "holds no epoch yet: nothing to plot")
    output = Path(output) if output is not None else curves_path(log)
    refuse_overwrite(output, {"metrics log": log})
    atomic_write_bytes(output, render_png(rows, title or log.name[: -len(METRICS_SUFFIX)]))
    return output


def render_png(rows: list[dict], title: str) -> bytes:
    """The two panels as PNG bytes (matplotlib's Agg backend: no display needed)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 4), dpi=100, layout="constrained")
    loss_axes, accuracy_axes = figure.subplots(1, 2)
    columns = list(dict.fromkeys(name for row in rows for name in row))
    draw(loss_axes, rows, [c for c in columns if c == "loss" or c.endswith("_loss")], "loss")
    draw(accuracy_axes, rows, [c for c in columns if c.endswith("accuracy")], "accuracy")
    figure.suptitle(title)
    png = io.BytesIO()
    figure.savefig(png, format="png")
    return png.getvalue()


def draw(axes, rows: list[dict], columns: list[str], what: str) -> None:
    from matplotlib.ticker import MaxNLocator

    for i, column in enumerate(columns):
        points = [(row["epoch"], row[column]) for row in rows if column in row]
        split = "train" if column in ("loss", "train_accuracy") else column.split("_")[0]
        colour = COLOURS.get(split, OTHER_COLOURS[i % len(OTHER_COLOURS)])
        axes.plot(*zip(*points), marker="o", markersize=3, linewidth=2, color=colour,
                  label="train" if split == "train" else split)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("epoch")
    axes.set_ylabel(what)
    axes.set_title(what)
    axes.grid(alpha=0.3)
    if columns:
        axes.legend()
