"""Training and inference from Python, as Keras users expect them: fit, evaluate, predict, save, load.

`Network.fit`, `.evaluate`, `.predict`, `.save` and `.load` (cnnc/runtime.py) delegate here. `fit`
runs the loop of `cnnc train` (Trainer) on arrays: the model's `train` line under the keyword
arguments, every Recipe field a keyword (`net.fit(x, y, epochs=3, momentum=0.9)`).
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import NamedTuple

import numpy as np
from rich.console import Console

from .. import ops
from ..diagnostics import InputError, Loc, ModelError, did_you_mean
from ..files import check_writable
from ..graph import check_value
from ..runtime import Network
from ..syntax import Arg, Value
from .checkpoint import checkpoint_path, load_network_weights, network_weights, save_weights
from .data import Dataset
from .evaluate import probabilities
from .loop import Recipe, Trainer, loss_and_predictions, recipe
from .metrics import metrics_path
from .run import epoch_line, epoch_with_bar

SOURCE = "fit()"  # what names the arrays in messages, where a data set names its file


@dataclass
class History:
    """What `fit` returns: the metrics log's rows (one dict per epoch) and, as Keras's History,
    `history` (column -> one value per epoch; None where an epoch has none)."""

    rows: list[dict]

    @property
    def history(self) -> dict[str, list]:
        columns = dict.fromkeys(name for row in self.rows for name in row)
        return {name: [row.get(name) for row in self.rows] for name in columns}

    def __getitem__(self, column: str) -> list:
        return self.history[column]

    def __len__(self) -> int:
        return len(self.rows)


class Score(NamedTuple):
    """What `evaluate` returns: inference's mean cross-entropy and the fraction classified right."""

    loss: float
    accuracy: float


def fit(net: Network, x, y, epochs: int | None = None, batch: int | None = None, lr: float | None = None,
        validation_data=None, validation_split: float | None = None, verbose: bool = True,
        out=None, **recipe_keys) -> History:
    """Train `net` on images x (N x C x H x W) and integer labels y; returns the History.

    The recipe is the model's `train` line with the keywords on top (None: the line's value).
    `validation_data=(xv, yv)`, or `validation_split=f` (the last fraction f of x and y, as
    Keras takes it), is evaluated after every epoch as `cnnc train` evaluates the test split:
    its columns are `test_loss` and `test_accuracy`. `verbose` shows a progress bar (in a
    terminal or a Jupyter notebook) and a line per epoch. With `out`, the weights, checkpoint
    and metrics log are saved after every epoch as `cnnc train --out` saves them.
    """
    if not net.parsed.graph["loss"]:
        raise InputError(f"{net.name} has no `loss` statement; add `loss cross_entropy` to train it")
    r = fit_recipe(net, epochs=epochs, batch=batch, lr=lr, **recipe_keys)
    data = fit_data(net, x, y, validation_data, validation_split)
    if out is not None:
        for path in (Path(out), checkpoint_path(out), metrics_path(out)):
            check_writable(path)
    net.compile()
    trainer = Trainer(net, data, r, out, net.model_text or "")
    console = Console(highlight=False, markup=False, soft_wrap=True, quiet=not verbose)
    bar = verbose and (console.is_terminal or console.is_jupyter)
    while trainer.epoch < r.epochs:
        report = epoch_with_bar(trainer, console) if bar else trainer.run_epoch()
        if out is not None:
            trainer.save()
        console.print(epoch_line(report, r.epochs))
    return History([dict(row) for row in trainer.history])


def fit_recipe(net: Network, **given) -> Recipe:
    """The model's `train` line with the given keywords on top; a TypeError naming the valid ones
    for an unknown keyword, an InputError for a value the `train` line would refuse."""
    valid = [f.name for f in fields(Recipe)]
    for key, value in given.items():
        if key not in valid:
            guess = did_you_mean(key, valid)
            raise TypeError(f"fit() got an unexpected keyword argument '{key}'"
                            + (f"; did you mean '{guess}'?" if guess else "")
                            + f" (the recipe's keys: {', '.join(valid)})")
        if value is not None:
            check_recipe_value(key, value)
    return recipe(net.parsed.graph["train"], **given)


def check_recipe_value(key: str, value) -> None:
    """The `train` line's check of one key (cnnc/graph.py, from ops.TRAIN_KEYS), for a Python value."""
    if isinstance(value, (bool, np.bool_)):
        kind, value = "bool", bool(value)
    elif isinstance(value, (int, np.integer)):
        kind, value = "int", int(value)
    elif isinstance(value, (float, np.floating)):
        kind, value = "float", float(value)
    elif isinstance(value, str):
        kind = "name"
    else:
        raise InputError(f"{key} must be a number, a bool or a name, not a {type(value).__name__}")
    loc = Loc(SOURCE, 1, 1)
    try:
        check_value(Arg(key, Value(kind, value, str(value), loc), loc), ops.TRAIN_KEYS[key])
    except ModelError as e:
        raise InputError(e.message) from None


def fit_data(net: Network, x, y, validation_data, validation_split) -> Dataset:
    """The arrays as a data set: x and y the training split, the validation data its test split."""
    x, y = net.check_input(x), labels(net, y, x)
    if validation_data is not None and validation_split is not None:
        raise InputError("give validation_data or validation_split, not both")
    x_test = y_test = None
    if validation_split is not None:
        if not isinstance(validation_split, (float, int)) or not 0 < validation_split < 1:
            raise InputError(f"validation_split must be a fraction between 0 and 1, not {validation_split!r}")
        keep = int(len(x) * (1 - validation_split))
        if keep < 1 or keep == len(x):
            raise InputError(f"validation_split={validation_split} of {len(x)} images leaves "
                             f"{keep} to train on and {len(x) - keep} to validate on; both need one at least")
        x, y, x_test, y_test = x[:keep], y[:keep], x[keep:], y[keep:]
    elif validation_data is not None:
        if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
            raise InputError("validation_data must be a pair (x, y) of images and labels")
        x_test = net.check_input(validation_data[0])
        y_test = labels(net, validation_data[1], x_test)
    classes = [str(i) for i in range(net.lowered.output_shape[0])]
    return Dataset(x, y, x_test, y_test, classes, SOURCE)


def labels(net: Network, y, x: np.ndarray) -> np.ndarray:
    """Integer class labels, one per image of x (or an H x W mask per image for a model with a
    class per pixel), each a class of the model's output."""
    y = np.asarray(y)
    if not net.label_shape and y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.shape != (len(x),) + net.label_shape:
        what = (f"{'x'.join(map(str, (len(x),) + net.label_shape))} masks (a class per pixel of the output)"
                if net.label_shape else f"a vector of {len(x)} integers (one per image)")
        raise InputError(f"labels must be {what}, not shape {'x'.join(map(str, y.shape)) or 'a scalar'}")
    if not np.issubdtype(y.dtype, np.integer):
        raise InputError(f"labels must be integers, not {y.dtype}")
    classes = net.lowered.output_shape[0]
    if y.size and (y.min() < 0 or y.max() >= classes):
        raise InputError(f"labels must lie in 0..{classes - 1} ({net.name} has {classes} outputs); "
                         f"got {y.min()}..{y.max()}")
    return y.astype(np.int64)


def evaluate(net: Network, x, y, batch: int | None = None) -> Score:
    """Inference's loss and accuracy on images x with labels y (per pixel for masks), `batch`
    images at a time."""
    x = net.check_input(x)
    y = labels(net, y, x)
    loss, predicted = loss_and_predictions(net, x, y, batch)
    return Score(loss / y.size, float(np.count_nonzero(predicted == y)) / y.size)


def predict(net: Network, x, batch: int | None = None) -> np.ndarray:
    """Class probabilities (N x classes) of inference, `batch` images at a time."""
    return probabilities(net, net.check_input(x), batch)


def save(net: Network, path) -> None:
    """The parameters (and the input normalization, when the network has one) as the weights file
    `cnnc train --out` writes (an .npz keyed by name), atomically."""
    save_weights(path, network_weights(net))


def load(net: Network, path) -> None:
    """Weights saved by `save` or `cnnc train` (a weights file or a checkpoint), with their input
    normalization; a DataError naming the file when its names or shapes are not the model's,
    before any parameter is changed."""
    load_network_weights(net, path)
