"""`cnnc train` as a person sees it: the progress bar, a line per epoch, Ctrl-C and resume."""
from __future__ import annotations

import sys
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from ..runtime import Network
from .checkpoint import checkpoint_path
from .data import Dataset
from .loop import EpochReport, Recipe, Trainer


def describe_run(net: Network, data: Dataset, r: Recipe) -> str:
    test = f", {len(data.x_test):,} test" if data.x_test is not None else ", no test split"
    extra = f" momentum={r.momentum:g}" if r.optimizer == "sgd" and r.momentum else ""
    return (f"training {net.name} on {len(data.x_train):,} images{test} ({data.num_classes} classes) from "
            f"{data.source}\n{r.optimizer} lr={r.lr:g}{extra} batch={r.batch} epochs={r.epochs} seed={r.seed}"
            f"{' schedule=' + r.schedule if r.schedule != 'constant' else ''}")


def epoch_line(report: EpochReport, epochs: int) -> str:
    test = f"  test acc {report.test_accuracy:.4f}" if report.test_accuracy is not None else ""
    return (f"epoch {report.epoch}/{epochs}  loss {report.loss:.4f}  train acc {report.train_accuracy:.4f}"
            f"{test}  {report.seconds:.1f} s  {report.images_per_second:,.0f} img/s")


def train(net: Network, data: Dataset, r: Recipe, out: Path, resume, quiet: bool, model_text: str) -> int:
    console = Console(stderr=True, highlight=False)
    trainer = Trainer(net, data, r, out, model_text)
    if resume is not None:
        trainer.resume(resume)
        console.print(f"resuming from {resume} after epoch {trainer.epoch}")
    console.print(describe_run(net, data, r))
    try:
        while trainer.epoch < r.epochs:
            report = run_epoch(trainer, console, quiet)
            trainer.save()
            print(epoch_line(report, r.epochs), flush=True)
    except KeyboardInterrupt:
        console.print(interrupted_message(trainer, out))
        return 130
    console.print(f"weights: {out}  (checkpoint: {checkpoint_path(out)})")
    return 0


def run_epoch(trainer: Trainer, console: Console, quiet: bool) -> EpochReport:
    if quiet or not sys.stderr.isatty():
        return trainer.run_epoch()
    total = len(trainer.data.x_train)
    columns = [TextColumn(f"epoch {trainer.epoch + 1}/{trainer.recipe.epochs}"), BarColumn(),
               MofNCompleteColumn(), TextColumn("loss {task.fields[loss]:.4f}  {task.fields[speed]:,.0f} img/s"),
               TimeRemainingColumn()]
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("train", total=total, loss=float("nan"), speed=0.0)

        def update(seen, loss, speed):
            progress.update(task, completed=seen, loss=loss, speed=speed)

        return trainer.run_epoch(update)


def interrupted_message(trainer: Trainer, out: Path) -> str:
    if trainer.epoch == 0 or not checkpoint_path(out).exists():
        return "interrupted before the first epoch ended; nothing was saved"
    return (f"interrupted; the checkpoint after epoch {trainer.epoch} is kept at {checkpoint_path(out)}\n"
            f"continue with: cnnc train ... --out {out} --resume {checkpoint_path(out)}")
