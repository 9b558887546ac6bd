"""The metrics log beside the weights (cnnc/train/metrics.py) and its curves (cnnc/train/plot.py):
a row per epoch that agrees with the epoch lines, a resumed run that neither repeats nor loses a
row, `cnnc plot` and `cnnc train --plot`, and located errors for a log that is not one."""
from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnc.train import run
from cnnc.train.metrics import metrics_path, read_metrics, write_metrics
from cnnc.train.optim import SGD
from cnnc.train.plot import COLOURS, log_of
from test_train import STEPS_TINY, StepCounter, cnnc_cli, data, epoch_lines, workdir  # noqa: F401 (fixtures)

PER_RUN = ("seconds", "images_per_second")  # what differs between two runs of the same training


def same_training(rows_a: list[dict], rows_b: list[dict]) -> None:
    """Two logs of the same training agree exactly in every column but the timings."""
    assert [{k: v for k, v in r.items() if k not in PER_RUN} for r in rows_a] == \
           [{k: v for k, v in r.items() if k not in PER_RUN} for r in rows_b]


@pytest.mark.parametrize(("weights", "log"), [("runs/lenet.npz", "runs/lenet.metrics.csv"),
                                              ("w", "w.metrics.csv"), ("W.NPZ", "W.metrics.csv")])
def test_the_log_sits_beside_the_weights(weights, log):
    assert metrics_path(weights) == Path(log)
    assert log_of(weights) == Path(log) and log_of(log) == Path(log)
    assert log_of(Path(weights).with_name(Path(log).name.replace(".metrics.csv", ".ckpt.npz"))) == Path(log)


def test_the_log_has_a_row_per_epoch_as_the_epoch_lines_say(data):
    code, out, err = cnnc_cli("train", "tiny.cnn", data["npz"], "--out", "w.npz", "--schedule", "cosine", "-q")
    assert code == 0, err
    rows, lines = read_metrics("w.metrics.csv"), epoch_lines(out)
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert list(rows[0])[:5] == ["epoch", "loss", "train_accuracy", "test_loss", "test_accuracy"]
    for row, line in zip(rows, lines):
        for column, printed in (("loss", "loss"), ("train_accuracy", "train"), ("test_accuracy", "test")):
            assert f"{row[column]:.4f}" == f"{line[printed]:.4f}"
        assert 0 < row["test_loss"] < 2 and row["seconds"] > 0 and row["images_per_second"] > 0
    assert rows[-1]["loss"] < rows[0]["loss"] and rows[-1]["test_loss"] < rows[0]["test_loss"]
    # The tiny model's lr=0.1 under the cosine schedule, epoch by epoch.
    assert [r["lr"] for r in rows] == pytest.approx([0.1 * (1 + math.cos(math.pi * e / 3)) / 2 for e in range(3)])


def test_a_log_without_a_test_split_has_no_test_columns(tmp_path):
    x = np.random.default_rng(0).integers(0, 255, (40, 8, 8)).astype(np.uint8)
    np.savez("train_only.npz", x_train=x, y_train=np.arange(40) % 3)
    code, _, err = cnnc_cli("train", "tiny.cnn", "train_only.npz", "--out", "w.npz", "--epochs", 1, "-q")
    assert code == 0, err
    assert Path("w.metrics.csv").read_text().splitlines()[0] == \
        "epoch,loss,train_accuracy,seconds,images_per_second,lr"


def test_a_resumed_run_keeps_the_rows_up_to_its_checkpoint(data):
    assert cnnc_cli("train", "tiny.cnn", data["npz"], "--out", "straight.npz", "-q")[0] == 0
    assert cnnc_cli("train", "tiny.cnn", data["npz"], "--out", "w.npz", "--epochs", 1, "-q")[0] == 0
    shutil.copy("w.ckpt.npz", "after1.ckpt.npz")
    code, _, err = cnnc_cli("train", "tiny.cnn", data["npz"], "--out", "w.npz", "--resume", "w.ckpt.npz", "-q")
    assert code == 0, err
    assert [r["epoch"] for r in read_metrics("w.metrics.csv")] == [1, 2, 3]
    # Back to epoch 1's checkpoint: the log's rows of epochs 2 and 3 are done again, not repeated.
    code, out, err = cnnc_cli("train", "tiny.cnn", data["npz"], "--out", "w.npz", "--resume", "after1.ckpt.npz", "-q")
    assert code == 0, err
    assert [e["epoch"] for e in epoch_lines(out)] == [2, 3]
    same_training(read_metrics("w.metrics.csv"), read_metrics("straight.metrics.csv"))


def test_ctrl_c_leaves_the_rows_of_the_saved_epochs(data, monkeypatch):
    assert cnnc_cli("train", "tiny.cnn", data["npz"], "--out", "straight.npz", "-q")[0] == 0
    with monkeypatch.context() as patch:
        StepCounter(patch, SGD, interrupt_at=STEPS_TINY + 3)  # in epoch 2
        assert cnnc_cli("train", "tiny.cnn", data["npz"], "--out", "w.npz", "-q")[0] == 130
    assert [r["epoch"] for r in read_metrics("w.metrics.csv")] == [1]
    assert cnnc_cli("train", "tiny.cnn", data["npz"], "--out", "w.npz", "--resume", "w.ckpt.npz", "-q")[0] == 0
    same_training(read_metrics("w.metrics.csv"), read_metrics("straight.metrics.csv"))


def test_a_fresh_run_replaces_an_old_log(data):
    write_metrics("w.metrics.csv", [{"epoch": e, "loss": 9.0} for e in range(1, 6)])
    assert cnnc_cli("train", "tiny.cnn", data["npz"], "--out", "w.npz", "--epochs", 2, "-q")[0] == 0
    rows = read_metrics("w.metrics.csv")
    assert [r["epoch"] for r in rows] == [1, 2] and all(r["loss"] < 9 for r in rows)


def test_a_damaged_log_does_not_stop_a_resumed_run(data):
    assert cnnc_cli("train", "tiny.cnn", data["npz"], "--out", "w.npz", "--epochs", 1, "-q")[0] == 0
    Path("w.metrics.csv").write_text("garbage\n")
    code, _, err = cnnc_cli("train", "tiny.cnn", data["npz"], "--out", "w.npz", "--epochs", 2,
                            "--resume", "w.ckpt.npz", "-q")
    assert code == 0, err
    assert "warning: w.metrics.csv:1: the header has no epoch or loss column" in err
    assert [r["epoch"] for r in read_metrics("w.metrics.csv")] == [2]


# -- the curves -------------------------------------------------------------------------------


def colour_pixels(png: np.ndarray, colour: str) -> np.ndarray:
    """A mask of the pixels within a few levels of `colour` (#rrggbb)."""
    rgb = np.array([int(colour[i:i + 2], 16) for i in (1, 3, 5)])
    return np.abs(png[..., :3].astype(int) - rgb).max(axis=-1) <= 6


def assert_two_panels_of_curves(path) -> None:
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size == (1000, 400)
        png = np.asarray(im.convert("RGB"))
    assert len(np.unique(png.reshape(-1, 3), axis=0)) > 50  # not blank
    left, right = png[:, :500], png[:, 500:]
    for half in (left, right):  # each panel draws the training curve and the test curve
        assert colour_pixels(half, COLOURS["train"]).sum() > 200
        assert colour_pixels(half, COLOURS["test"]).sum() > 200


def test_plot_draws_loss_and_accuracy(data):
    assert cnnc_cli("train", "tiny.cnn", data["npz"], "--out", "w.npz", "-q")[0] == 0
    code, _, err = cnnc_cli("plot", "w.npz")
    assert code == 0 and "wrote w.curves.png" in err
    assert_two_panels_of_curves("w.curves.png")
    code, _, err = cnnc_cli("plot", "w.metrics.csv", "-o", "other.png")
    assert code == 0, err
    assert_two_panels_of_curves("other.png")


def test_a_curve_of_one_colour_is_where_its_values_are(tmp_path):
    """The training loss falls and the test loss stays high: the blue pixels of the left panel end
    low on its right, the orange ones stay high."""
    write_metrics("w.metrics.csv", [{"epoch": e, "loss": 2.0 / e, "train_accuracy": 0.5, "test_loss": 2.0,
                                     "test_accuracy": 0.4} for e in range(1, 6)])
    assert cnnc_cli("plot", "w.metrics.csv")[0] == 0
    with Image.open("w.curves.png") as im:
        left = np.asarray(im.convert("RGB"))[:, :500]
    train_rows = np.nonzero(colour_pixels(left[:, 350:450], COLOURS["train"]).any(axis=1))[0]
    test_rows = np.nonzero(colour_pixels(left[:, 350:450], COLOURS["test"]).any(axis=1))[0]
    assert train_rows.mean() > test_rows.mean() + 100  # image rows grow downwards


def test_train_plot_draws_after_every_epoch(data, monkeypatch):
    seen = []
    original = run.plot_run

    def plot_run(log, output=None, title=None):
        seen.append(len(read_metrics(log)))
        return original(log, output, title)

    monkeypatch.setattr(run, "plot_run", plot_run)
    code, _, err = cnnc_cli("train", "tiny.cnn", data["npz"], "--out", "w.npz", "--plot", "-q")
    assert code == 0, err
    assert seen == [1, 2, 3] and "curves: w.curves.png" in err
    assert_two_panels_of_curves("w.curves.png")


LOGS = {
    "empty": ("", "w.metrics.csv:1: error: the metrics log is empty"),
    "no epoch column": ("step,loss\n1,0.5\n", "w.metrics.csv:1: error: the header has no epoch column"),
    "not a number": ("epoch,loss,test_accuracy\n1,0.5,0.9\n2,0.4,high\n",
                     "w.metrics.csv:3: error: the test_accuracy column holds 'high', which is not a number"),
    "short row": ("epoch,loss,lr\n1,0.5,0.1\n2,0.4\n",
                  "w.metrics.csv:3: error: the row has 2 values but the header names 3 columns"),
    "epoch 0": ("epoch,loss\n0,0.5\n", "w.metrics.csv:2: error: the epoch is 0; epochs count from 1"),
    "no rows": ("epoch,loss\n", "w.metrics.csv: error: holds no epoch yet"),
    "binary": (b"\x89PNG\r\n\x1a\n\xff\xfe", "w.metrics.csv: error: is not a metrics log (not UTF-8 text)"),
}


@pytest.mark.parametrize("problem", LOGS)
def test_a_malformed_log_is_a_located_error(problem):
    text, expected = LOGS[problem]
    (Path("w.metrics.csv").write_bytes if isinstance(text, bytes) else Path("w.metrics.csv").write_text)(text)
    code, out, err = cnnc_cli("plot", "w.npz")
    assert code == 1 and expected in err, err
    assert "Traceback" not in err and not Path("w.curves.png").exists()


def test_a_missing_log_says_what_writes_one():
    Path("w.npz").write_bytes(b"")
    code, _, err = cnnc_cli("plot", "w.npz")
    assert code == 1
    assert "w.npz: error: has no metrics log beside it (w.metrics.csv does not exist)" in err
    assert "hint: `cnnc train --out WEIGHTS.npz` writes WEIGHTS.metrics.csv" in err
    code, _, err = cnnc_cli("plot", "nothing.metrics.csv")
    assert code == 1 and "nothing.metrics.csv: error: cannot read the metrics log" in err


def test_plot_never_writes_over_its_log():
    write_metrics("w.metrics.csv", [{"epoch": 1, "loss": 1.0}])
    before = Path("w.metrics.csv").read_bytes()
    code, _, err = cnnc_cli("plot", "w.metrics.csv", "-o", "w.metrics.csv")
    assert code == 1 and "Traceback" not in err
    assert Path("w.metrics.csv").read_bytes() == before
