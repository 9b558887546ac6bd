"""`cnnc train` as a person sees it: the progress bar, a line per epoch, Ctrl-C and resume."""
from __future__ import annotations

import io
import os
import shlex
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from ..runtime import Network
from .checkpoint import checkpoint_path
from .data import Dataset
from .loop import EpochReport, Recipe, Terminated, Trainer, sigterm_stops_gracefully
from .metrics import metrics_path
from .plot import curves_path, plot_run


def describe_run(net: Network, data: Dataset, r: Recipe, ranks: int = 1, validation: int = 0) -> str:
    test = f", {len(data.x_test):,} test" if data.x_test is not None else ", no test split"
    val = f" ({validation:,} of them held out for validation)" if validation else ""
    extra = f" momentum={r.momentum:g}" if r.optimizer == "sgd" and r.momentum else ""
    shared = f" on {ranks} processes (each batch shared out among them)" if ranks > 1 else ""
    return (f"training {net.name} on {len(data.x_train):,} images{val}{test} ({data.num_classes} classes) from "
            f"{data.source}{shared}\n{r.optimizer} lr={r.lr:g}{extra} batch={r.batch} epochs={r.epochs} seed={r.seed}"
            f"{' schedule=' + r.schedule if r.schedule != 'constant' else ''}{recipe_extras(r)}")


def recipe_extras(r: Recipe) -> str:
    """The recipe pieces that are on (` warmup=1 crop=4 flip=true ...`), for the run's first lines."""
    defaults = Recipe()
    names = ("weight_decay", "warmup", "label_smoothing", "decay_norm_bias", "crop", "flip", "normalize",
             "mean", "std", "val", "keep", "patience")
    shown = [f"{k}={_show(getattr(r, k))}" for k in names if getattr(r, k) != getattr(defaults, k)]
    return (" " + " ".join(shown)) if shown else ""


def _show(value) -> str:
    return str(value).lower() if isinstance(value, bool) else f"{value:g}" if isinstance(value, float) else str(value)


def epoch_line(report: EpochReport, epochs: int) -> str:
    test = f"  test acc {report.test_accuracy:.4f}" if report.test_accuracy is not None else ""
    test += f"  test loss {report.test_loss:.4f}" if report.test_loss is not None else ""
    val = ""
    if report.val_accuracy is not None:
        val = f"  val loss {report.val_loss:.4f} acc {report.val_accuracy:.4f}{' (best)' if report.best else ''}"
    return (f"epoch {report.epoch}/{epochs}  loss {report.loss:.4f}  train acc {report.train_accuracy:.4f}"
            f"{val}{test}  {report.seconds:.1f} s  {report.images_per_second:,.0f} img/s")


def train(trainer: Trainer, quiet: bool, command: list[str] | None = None, plot: bool = False) -> int:
    """Train, saving weights, metrics log and checkpoint after every epoch (and, with `plot`, the
    curves of the log); 0 when done, 130 on Ctrl-C.

    The trainer has been resumed already when the run continues a checkpoint. `command` is the
    command line that started the run without its --resume (the interrupted message shows it with
    the --resume that continues the run). Of several ranks, rank 0 alone prints."""
    with sigterm_stops_gracefully():
        return _train(trainer, quiet, command, plot)


def _train(trainer: Trainer, quiet: bool, command, plot: bool) -> int:
    net, data, r, out = trainer.net, trainer.data, trainer.recipe, trainer.out
    speaks = trainer.world.rank == 0
    console = Console(file=Output(sys.stderr), highlight=False, markup=False, soft_wrap=True, quiet=not speaks)
    stdout = Output(sys.stdout)
    if trainer.resumed_from is not None:
        resume = trainer.resumed_from
        console.print(f"resuming from {resume} after epoch {trainer.epoch}")
        for line in recipe_changes(trainer.resumed_recipe, r):
            console.print(line)
        if trainer.epoch >= r.epochs:
            console.print(f"{resume} is after epoch {trainer.epoch} and the run has {r.epochs}: "
                          "nothing to do (raise --epochs to train on)")
            return 0
        if trainer.stopped_early:
            console.print(f"{resume} stopped early: {r.patience} epochs without a better validation accuracy "
                          "(raise --patience to train on)")
            return 0
    console.print(describe_run(net, data, r, trainer.world.size, len(trainer.val_rows)))
    for line in data_warnings(data):
        console.print(f"warning: {line}")
    try:
        while trainer.epoch < r.epochs and not trainer.stopped_early:
            report = run_epoch(trainer, console, quiet or not speaks)
            try:
                trainer.save()
            finally:  # a Ctrl-C held back during the save comes after it: report the saved epoch first
                if trainer.saved_epoch == report.epoch and speaks:
                    stdout.write(epoch_line(report, r.epochs) + "\n")
                    stdout.flush()
            if plot and speaks:
                plot_run(metrics_path(out), title=net.name)
    except KeyboardInterrupt as stop:
        terminated = isinstance(stop, Terminated)
        console.print(interrupted_message(trainer, out, command, "terminated" if terminated else "interrupted"))
        return 143 if terminated else 130
    if trainer.stopped_early:
        console.print(f"stopped early after epoch {trainer.epoch}: {r.patience} epochs without a better "
                      f"validation accuracy than {trainer.best_accuracy:.4f} (epoch {trainer.best_epoch})")
    best = ""
    if r.keep == "best" and trainer.best_epoch is not None:
        best = f" of epoch {trainer.best_epoch}, the best validation accuracy ({trainer.best_accuracy:.4f})"
    console.print(f"weights{best}: {out}  (checkpoint: {checkpoint_path(out)}, metrics: {metrics_path(out)}"
                  f"{', curves: ' + str(curves_path(metrics_path(out))) if plot else ''})")
    return 0


class Output:
    """A text stream that drops what it is given once its reader has gone (`cnnc train ... | head -1`):
    the run goes on and saves its weights, only the printing stops."""

    def __init__(self, stream):
        self.stream, self.gone = stream, False

    def write(self, text: str) -> int:
        if not self.gone:
            try:
                self.stream.write(text)
            except BrokenPipeError:
                self._reader_gone()
        return len(text)

    def flush(self) -> None:
        if not self.gone:
            try:
                self.stream.flush()
            except BrokenPipeError:
                self._reader_gone()

    def isatty(self) -> bool:
        return not self.gone and self.stream.isatty()

    def _reader_gone(self) -> None:
        self.gone = True
        try:  # what is still buffered goes nowhere, instead of failing again at exit
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, self.stream.fileno())
            os.close(null)
        except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
            pass


def data_warnings(data: Dataset) -> list[str]:
    """What makes a run pointless without making it wrong: one class only. Training goes on (a
    first try of the pipeline is a fair use), but the user should know what the result will be."""
    labels = np.unique(data.y_train)
    if len(labels) == 1:
        name = data.classes[labels[0]] if labels[0] < len(data.classes) else str(labels[0])
        return [f"every training image is of class {name}: the network can only learn to answer "
                f"{name} (a classifier needs examples of two classes at least)"]
    return []


def recipe_changes(saved: dict | None, r: Recipe) -> list[str]:
    """Notes on how the resumed run's recipe differs from the checkpoint's (the epochs aside)."""
    if not saved:
        return []
    now = asdict(r)
    # The seed only sets the starting point, which the checkpoint replaces; epochs may grow.
    changed = [f"{k}={saved[k]} -> {now[k]}" for k in now
               if k not in ("epochs", "seed") and k in saved and saved[k] != now[k]]
    if not changed:
        return []
    return [f"note: the recipe differs from the checkpoint's: {', '.join(changed)}; "
            "the resumed run will not match an uninterrupted one"]


def run_epoch(trainer: Trainer, console: Console, quiet: bool) -> EpochReport:
    if quiet or not sys.stderr.isatty():
        return trainer.run_epoch()
    return epoch_with_bar(trainer, console)


def epoch_with_bar(trainer: Trainer, console: Console) -> EpochReport:
    """One epoch under a progress bar on `console` (a terminal's or a Jupyter notebook's), gone when it ends."""
    total = len(trainer.data.x_train)
    columns = [TextColumn(f"epoch {trainer.epoch + 1}/{trainer.recipe.epochs}"), BarColumn(),
               MofNCompleteColumn(), TextColumn("loss {task.fields[loss]:.4f}  {task.fields[speed]:,.0f} img/s"),
               TimeRemainingColumn()]
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("train", total=total, loss=float("nan"), speed=0.0)

        def update(seen, loss, speed):
            progress.update(task, completed=seen, loss=loss, speed=speed)

        return trainer.run_epoch(update)


def interrupted_message(trainer: Trainer, out: Path, command: list[str] | None = None,
                        how: str = "interrupted") -> str:
    """What Ctrl-C (or SIGTERM: `how` is "terminated") leaves behind, and the command that continues from it."""
    if trainer.saved_epoch is not None:
        ckpt = checkpoint_path(out)
        saved = f"{how}; the checkpoint after epoch {trainer.saved_epoch} is kept at {ckpt}"
    elif trainer.resumed_from is not None:
        ckpt = trainer.resumed_from
        saved = (f"{how} before epoch {trainer.epoch + 1} ended; nothing new was saved and "
                 f"{ckpt} (after epoch {trainer.epoch}) is unchanged")
    else:
        return f"{how} before the first epoch ended; nothing was saved"
    base = list(command) if command else ["cnnc", "train", "MODEL", "DATA", "--out", str(out)]
    return f"{saved}\ncontinue with: {shlex.join(base + ['--resume', str(ckpt)])}"
