"""The metrics log of a training run: one CSV row per epoch, kept beside the weights.

``runs/lenet.npz`` -> ``runs/lenet.metrics.csv`` (``metrics_path``). The columns are the fields of
the loop's EpochReport that have a value (``epoch``, ``loss`` of training, ``train_accuracy``,
``test_loss``, ``test_accuracy``, ``seconds``, ``images_per_second``, ...) and the epoch's ``lr``;
a field added to EpochReport becomes a column without a change here. The whole file is
rewritten atomically after every epoch from the rows in memory, so a resumed run, which keeps the
rows up to its checkpoint's epoch, neither repeats nor loses one.
"""
from __future__ import annotations

import csv
import io
from dataclasses import asdict
from pathlib import Path

from ..diagnostics import DataError, warn
from ..files import atomic_write_bytes

METRICS_SUFFIX = ".metrics.csv"
MAX_LOG_BYTES = 64 << 20  # a log of a million epochs; reading /dev/zero stops here


def metrics_path(weights_path) -> Path:
    """The metrics log kept beside a weights file: WEIGHTS.npz -> WEIGHTS.metrics.csv."""
    p = Path(weights_path)
    stem = p.name[: -len(".npz")] if p.name.lower().endswith(".npz") else p.name
    return p.with_name(stem + METRICS_SUFFIX)


def metrics_row(report, lr: float) -> dict:
    """An EpochReport as a row: its fields that have a value (true and false as 1 and 0), and the
    learning rate unless it has one."""
    row = {name: int(value) if isinstance(value, bool) else value
           for name, value in asdict(report).items() if value is not None}
    row.setdefault("lr", lr)
    return row


def write_metrics(path, rows: list[dict]) -> None:
    """The rows as CSV, atomically; the columns in the order they first appear, empty where a row has none."""
    columns = list(dict.fromkeys(name for row in rows for name in row))
    text = io.StringIO()
    writer = csv.DictWriter(text, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: _cell(v) for k, v in row.items()} for row in rows)
    atomic_write_bytes(path, text.getvalue().encode())


def _cell(value) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def read_metrics(path) -> list[dict]:
    """The rows of a metrics log, numbers as int (the epoch) or float; a DataError naming the line
    and column of anything that is not a log written by `write_metrics`."""
    path = Path(path)
    if path.is_dir():
        raise DataError(path, "is a folder, not a metrics log")
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_LOG_BYTES + 1)
    except OSError as e:
        raise DataError(path, f"cannot read the metrics log: {e.strerror or e}",
                        hint=f"`cnnc train --out WEIGHTS.npz` writes WEIGHTS{METRICS_SUFFIX} beside the weights") from None
    if len(data) > MAX_LOG_BYTES:
        raise DataError(path, f"is larger than {MAX_LOG_BYTES >> 20} MiB: not a metrics log")
    try:
        lines = data.decode("utf-8").splitlines()
    except UnicodeDecodeError:
        raise DataError(path, "is not a metrics log (not UTF-8 text)") from None
    return _parse(path, lines)


def _parse(path: Path, lines: list[str]) -> list[dict]:
    if not lines or not lines[0].strip():
        raise DataError(f"{path}:1", "the metrics log is empty: it has no header line")
    header = next(csv.reader(lines[:1]))
    missing = [name for name in ("epoch", "loss") if name not in header]
    if missing:
        raise DataError(f"{path}:1", f"the header has no {' or '.join(missing)} column: not a metrics log",
                        hint="the header of a metrics log starts `epoch,loss,...`")
    rows = []
    for number, fields in enumerate(csv.reader(lines[1:]), start=2):
        if not fields:
            continue
        if len(fields) != len(header):
            raise DataError(f"{path}:{number}", f"the row has {len(fields)} values but the header "
                            f"names {len(header)} columns")
        row = {name: _number(path, number, name, text) for name, text in zip(header, fields) if text != ""}
        if "epoch" not in row:
            raise DataError(f"{path}:{number}", "the row has no epoch")
        rows.append(row)
    return rows


def _number(path, line: int, column: str, text: str):
    try:
        value = int(text) if column == "epoch" else float(text)
    except ValueError:
        raise DataError(f"{path}:{line}", f"the {column} column holds '{text[:40]}', which is not a "
                        f"{'whole number' if column == 'epoch' else 'number'}") from None
    if column == "epoch" and value < 1:
        raise DataError(f"{path}:{line}", f"the epoch is {value}; epochs count from 1")
    return value


def resumed_rows(path, epoch: int) -> list[dict]:
    """The rows of the log at `path` up to `epoch`, the checkpoint's: those after it belong to an
    epoch the resumed run does again. A missing or unreadable log costs its rows, not the run."""
    path = Path(path)
    if not path.exists():
        return []
    try:
        rows = read_metrics(path)
    except DataError as e:
        warn(f"{e.path}: {e.message}; the metrics log starts again at epoch {epoch + 1}")
        return []
    return [row for row in rows if row["epoch"] <= epoch]
