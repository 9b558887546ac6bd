"""The training loop: recipe, epochs of batches, progress, evaluation and a checkpoint after each epoch.

A run is reproducible: the seed fixes initialization, shuffling, augmentation, the validation
split and dropout, and a checkpoint holds all of that state (with the best validation accuracy
so far, for keep=best and patience), so a resumed run ends with the same weights as one never
interrupted. The learning rate changes every step (optim.step_rate).
"""
from __future__ import annotations

import contextlib
import hashlib
import math
import signal
import threading
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np

from .. import __version__, ops
from ..diagnostics import CnncError, DataError
from ..distributed import SAVE_TIMEOUT, Single
from ..runtime import Network
from . import augment, checkpoint
from .data import Dataset, batches, rank_share
from .metrics import metrics_path, metrics_row, resumed_rows, write_metrics
from .optim import decay_vector, make_optimizer, step_rate


@dataclass(frozen=True)
class Recipe:
    """How to train: the model file's `train` line, then the command line's flags, over these defaults."""

    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    batch: int = 32
    epochs: int = 1
    seed: int = 0
    schedule: str = "constant"
    step_size: int = 1
    gamma: float = 0.1
    warmup: int = 0
    label_smoothing: float = 0.0
    decay_norm_bias: bool = True
    crop: int = 0
    flip: bool = False
    normalize: str = "none"
    mean: float | None = None
    std: float | None = None
    val: float = 0.0
    keep: str = "last"
    patience: int = 0


assert {f.name for f in fields(Recipe)} == set(ops.TRAIN_KEYS), "Recipe and ops.TRAIN_KEYS must agree"


def recipe(train_line: dict, **overrides) -> Recipe:
    """The model's `train` values with the flags that were given (None means not given) on top."""
    given = {k: v for k, v in overrides.items() if v is not None}
    return replace(Recipe(), **{**train_line, **given})


class TrainingError(CnncError):
    """Training cannot go on (the loss diverged, the recipe is impossible); prints like a diagnostic."""

    every_rank = True  # of several MPI ranks, each meets it alike: the same loss, weights and recipe

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message, self.hint = message, hint

    def render(self) -> str:
        return f"error: {self.message}" + (f"\nhint: {self.hint}" if self.hint else "")

    def __str__(self) -> str:
        return self.render()


def optimizer_for(r: Recipe, net: Network | None = None):
    """The recipe's optimizer; a TrainingError (not a traceback) for impossible settings, such as
    a negative --momentum or nesterov=true with --momentum 0. With decay_norm_bias=false and the
    network, its batchnorm and bias parameters get no weight decay."""
    check_recipe(r)
    decay = r.weight_decay
    if net is not None and not r.decay_norm_bias and r.weight_decay:
        decay = decay_vector(r.weight_decay, net.layout.trainable, norm_and_bias(net))
    try:
        if r.optimizer in ("adam", "adamw"):
            return make_optimizer(r.optimizer, lr=r.lr, weight_decay=decay)
        return make_optimizer("sgd", lr=r.lr, momentum=r.momentum, nesterov=r.nesterov, weight_decay=decay)
    except ValueError as e:
        raise TrainingError(f"cannot train with {r.optimizer} lr={r.lr:g} momentum={r.momentum:g} "
                            f"weight_decay={r.weight_decay:g}: {e}") from None


def check_recipe(r: Recipe) -> None:
    """Settings that only work together, whichever of the model file and the command line gave them."""
    if r.keep == "best" and not r.val:
        raise TrainingError("keep=best needs a validation split to tell the best epoch",
                            hint="add val=0.1 to the train line (or --val 0.1)")
    if r.patience and not r.val:
        raise TrainingError(f"patience={r.patience} needs a validation split to see progress",
                            hint="add val=0.1 to the train line (or --val 0.1)")
    if r.warmup and r.warmup >= r.epochs and r.schedule == "onecycle":
        raise TrainingError(f"the onecycle schedule needs its warmup ({r.warmup} epochs) shorter than "
                            f"the run ({r.epochs} epochs)", hint="lower warmup, or raise epochs")


NORM_AND_BIAS = ("bias", "gamma", "beta")  # parameter kinds that decay_norm_bias=false leaves undecayed


def norm_and_bias(net: Network) -> list[slice]:
    """Where the batchnorm and bias parameters lie in the trainable vector."""
    return [slice(offset, offset + int(np.prod(shape))) for name, (offset, shape) in net.layout.slots.items()
            if name.rsplit(".", 1)[1] in NORM_AND_BIAS]


def epoch_lr(r: Recipe, epoch: int) -> float:
    """The learning rate of an epoch counted as one step: the epoch's rate under constant, step
    and cosine without warmup (which change it once an epoch); see step_lr for the others."""
    return step_lr(r, epoch, 0, 1)


def step_lr(r: Recipe, epoch: int, step: int, steps: int) -> float:
    """The learning rate of step `step` of `steps` in 0-based `epoch` (optim.step_rate)."""
    extra = {"step_size": r.step_size, "gamma": r.gamma} if r.schedule == "step" else {}
    return step_rate(r.schedule, r.lr, epoch, r.epochs, step, steps, r.warmup, **extra)


def loss_and_predictions(net: Network, x: np.ndarray, y: np.ndarray,
                         batch: int | None = None) -> tuple[float, np.ndarray]:
    """Inference's cross-entropy summed over the labels, and the class it predicts for each label: one
    per image, or one per pixel (N x H x W) for a model with a class per pixel, whose classes run
    along axis 1 as well. A softmax output is taken as probabilities (one below 1e-12 counts as
    1e-12), any other output as logits."""
    batch = batch or net.inference_batch
    softmax = net.parsed.nodes[net.parsed.graph["output"]]["op"] == "softmax"
    total, predicted = 0.0, [np.zeros((0, *y.shape[1:]), np.int64)]
    for i in range(0, len(x), batch):
        out, labels = net.forward(x[i:i + batch]).astype(np.float64), y[i:i + batch]
        if softmax:
            log_p = np.log(np.maximum(out, 1e-12))
        else:
            shifted = out - out.max(axis=1, keepdims=True)
            log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        total -= float(np.take_along_axis(log_p, labels[:, None], axis=1).sum())
        predicted.append(out.argmax(axis=1))
    return total, np.concatenate(predicted)


def shared_evaluation(net: Network, x: np.ndarray, y: np.ndarray, world) -> tuple[float, float]:
    """Mean loss and accuracy over a split whose images the ranks share out, each running its own:
    per image, or per pixel for a model with a class per pixel."""
    part = rank_share(len(x), world.rank, world.size)
    loss, predicted = loss_and_predictions(net, x[part], y[part])
    both = np.array([loss, np.count_nonzero(predicted == y[part])], np.float64)
    world.sum(both, "the test loss and accuracy")
    return float(both[0]) / y.size, float(both[1]) / y.size


LARGE_PIXEL = 1e3  # pixel values beyond this are a data set's scaling mistake, not a learning rate's


@dataclass
class EpochReport:
    epoch: int
    loss: float
    train_accuracy: float
    test_loss: float | None
    test_accuracy: float | None
    seconds: float
    images_per_second: float
    val_loss: float | None = None
    val_accuracy: float | None = None
    lr: float | None = None  # the learning rate of the epoch's last step
    best: bool | None = None  # with validation: the best validation accuracy so far (keep=best saves these weights)


def epoch_batches(x: np.ndarray, y: np.ndarray, r: Recipe, rng: np.random.Generator):
    """An epoch's batches: every image's augmentation, then the shuffle, drawn from `rng` in
    that order (without augmentation, the shuffle alone)."""
    plan = augment.draw(len(x), r.crop, r.flip, rng)
    return batches(x, y, r.batch, rng, None if plan is None else plan.apply)


def validation_rows(n: int, fraction: float, seed: int) -> np.ndarray:
    """The training images a validation split of `fraction` holds out, drawn from the seed alone."""
    count = int(round(n * fraction))
    if fraction and not 0 < count < n:
        raise TrainingError(f"val={fraction:g} of {n:,} training images leaves "
                            f"{'no validation' if count == 0 else 'no training'} images",
                            hint="use a larger data set or another val fraction")
    return np.sort(np.random.default_rng([seed, 1]).permutation(n)[:count])


class Trainer:
    """One training run of a network on a data set, resumable from its checkpoint."""

    def __init__(self, net: Network, data: Dataset, r: Recipe, out: Path | None, model_text: str, world=None):
        """`world` is the processes that share every step (cnnc/distributed.py), this one alone
        by default: each computes its share of every batch, and rank 0 alone writes files.
        `out` is the weights file, beside which the checkpoint and the metrics log are kept
        (None: a run that saves nothing, as `net.fit` without `out`)."""
        self.net, self.data, self.recipe = net, data, r
        self.out = None if out is None else Path(out)
        self.world = world or Single()
        if data.x_train is None or len(data.x_train) == 0:
            raise DataError(data.source, "holds no training images")
        self.model_hash = checkpoint.source_hash(model_text)
        self.optimizer = optimizer_for(r, net)
        self.rng = np.random.default_rng(r.seed)
        self.split(validation_rows(len(data.x_train), r.val, r.seed))
        norm = augment.normalization(r, self.x_train, net.input_shape[0])
        if norm is not None:
            net.normalization = norm
        self.best_accuracy: float | None = None  # the best validation accuracy so far
        self.best_epoch: int | None = None
        self.epoch = 0  # epochs completed
        self.saved_epoch: int | None = None  # the epoch whose weights and checkpoint this run wrote last
        self.resumed_from: Path | None = None
        self.resumed_recipe: dict | None = None
        self.history: list[dict] = []  # the metrics log's rows, one per epoch completed

    def split(self, val_rows: np.ndarray) -> None:
        """The images trained on, and those held out for validation (none without val=)."""
        x, y = self.data.x_train, self.data.y_train
        self.val_rows = val_rows
        if len(val_rows) == 0:
            self.x_train, self.y_train, self.x_val, self.y_val = x, y, None, None
            return
        keep = np.ones(len(x), bool)
        keep[val_rows] = False
        self.x_train, self.y_train = x[keep], y[keep]
        self.x_val, self.y_val = x[val_rows], y[val_rows]

    @property
    def stopped_early(self) -> bool:
        """`patience` epochs have gone by without a better validation accuracy."""
        p = self.recipe.patience
        return bool(p) and self.best_epoch is not None and self.epoch - self.best_epoch >= p

    def resume(self, path) -> None:
        """Continue from a checkpoint: weights, optimizer state, both RNGs and the epoch count.

        Every problem with the file is a DataError naming it; the network is changed only once
        the whole checkpoint has been read and checked."""
        state = checkpoint.load_checkpoint(path)
        checkpoint.check_resume(path, state, self.net.name, self.model_hash)
        classes = [str(c) for c in _entry(path, state, "classes", list)]
        epoch = _entry(path, state, "epoch", int)
        if epoch < 0:
            raise DataError(path, f"damaged checkpoint: its epoch is {epoch}")
        rng = _generator(path, state, "rng")
        dropout_rng = _generator(path, state, "dropout_rng")
        optimizer_state = dict(_entry(path, state, "optimizer", dict))
        params = checkpoint.load_weights(path, {n: v.shape for n, v in self.net.params.items()})
        if classes != [str(c) for c in self.data.classes]:
            raise DataError(path, f"the checkpoint's classes ({_short(classes)}) differ from the data's "
                            f"({_short(self.data.classes)})")
        saved_kind = str(optimizer_state.get("kind", ""))
        if saved_kind != self.optimizer.kind:
            raise DataError(path, f"the checkpoint was trained with {saved_kind or 'an unknown optimizer'}, "
                            f"not {self.optimizer.kind}", hint=f"resume with --optimizer {saved_kind}")
        try:
            self.optimizer.load_state_dict(optimizer_state)
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(path, f"damaged checkpoint: its optimizer state is unreadable ({e})") from None
        val_rows, best = self._resumed_split(path, state)
        normalization = checkpoint.load_normalization(path, self.net.input_shape[0])
        for name, value in params.items():
            self.net.params[name] = value
        self.rng, self.net.dropout_rng, self.epoch = rng, dropout_rng, epoch
        self.split(val_rows)
        self.best_accuracy, self.best_epoch = best
        if normalization is not None:
            self.net.normalization = normalization
        if self.out is not None and self.world.rank == 0:  # rank 0 alone writes the log
            self.history = resumed_rows(metrics_path(self.out), epoch)
        self.resumed_from = Path(path)
        self.resumed_recipe = state.get("recipe") if isinstance(state.get("recipe"), dict) else None

    def _resumed_split(self, path, state: dict) -> tuple[np.ndarray, tuple]:
        """The checkpoint's validation rows and (best accuracy, its epoch); the run's own without them."""
        rows = state.get("val_rows")
        if rows is None:
            return self.val_rows, (None, None)
        rows = np.asarray(rows)
        if rows.ndim != 1 or rows.dtype.kind not in "iu" or (len(rows) and not (
                0 <= rows.min() and rows.max() < len(self.data.x_train))):
            raise DataError(path, "damaged checkpoint: its validation rows do not fit the training images")
        best = state.get("best") if isinstance(state.get("best"), dict) else {}
        accuracy, epoch = best.get("accuracy"), best.get("epoch")
        return rows.astype(np.int64), (None if accuracy is None else float(accuracy),
                                       None if epoch is None else int(epoch))

    def identity(self) -> dict:
        """What every rank of a distributed run must share before the first step."""
        return {"cnnc": __version__, "model": hashlib.sha256(self.net.source.encode()).hexdigest()[:16],
                **asdict(self.recipe), "epoch": self.epoch,
                "weights": hashlib.sha256(self.net.vector.tobytes()).hexdigest()[:16],
                "training images": len(self.data.x_train),
                "training labels": hashlib.sha256(self.data.y_train.tobytes()).hexdigest()[:16]}

    def save(self) -> None:
        """Weights, then the checkpoint; each file is replaced atomically, never left half written.
        Rank 0 alone writes; the others wait until it has.

        Ctrl-C during the save waits until both files are written, so they always agree.
        """
        with deferred_interrupt():
            if self.world.rank == 0:
                self._save()
            # The others wait while rank 0 writes; rank 0, done, waits for them only as in a step.
            self.world.barrier(SAVE_TIMEOUT if self.world.rank else None, "rank 0 to save the weights")
            self.saved_epoch = self.epoch

    def _save(self) -> None:
        params = checkpoint.network_weights(self.net)
        if self.recipe.keep == "last" or self.best_epoch == self.epoch:
            checkpoint.save_weights(self.out, params)
        # Before the checkpoint: a log a row ahead of it loses that row to the resumed run, which
        # does the epoch again; a log behind it would stay a row short.
        write_metrics(metrics_path(self.out), self.history)
        try:
            self._save_checkpoint(params)
        except DataError as e:  # a full disk: the weights are newer than the checkpoint, and the user must know
            raise DataError(e.path, f"{e.message}; the weights of epoch {self.epoch} are saved in {self.out}, "
                            "but this checkpoint was not replaced and is older",
                            hint="free some space, then resume from the checkpoint") from None

    def _save_checkpoint(self, params: dict) -> None:
        checkpoint.save_checkpoint(checkpoint.checkpoint_path(self.out), {
            "params": params, "optimizer": self.optimizer.state_dict(), "epoch": self.epoch,
            "rng": checkpoint.rng_state(self.rng), "dropout_rng": checkpoint.rng_state(self.net.dropout_rng),
            "classes": list(self.data.classes), "model": self.net.name, "model_hash": self.model_hash,
            "recipe": asdict(self.recipe), "val_rows": self.val_rows.astype(np.int64),
            "best": {"accuracy": self.best_accuracy, "epoch": self.best_epoch}})

    def run_epoch(self, progress=None) -> EpochReport:
        net, r, world = self.net, self.recipe, self.world
        trainable = net.vector[: net.layout.trainable]
        total_loss, correct, seen = 0.0, 0, 0
        started = time.perf_counter()
        steps = epoch_batches(self.x_train, self.y_train, r, self.rng)
        lr = step_lr(r, self.epoch, 0, len(steps))
        with np.errstate(over="ignore", invalid="ignore"):  # a diverging step is caught below, not warned of
            for i, (xb, yb, total, start) in enumerate(steps.shares(world.rank, world.size)):
                lr = step_lr(r, self.epoch, i, len(steps))
                loss, right = net.loss_grads_correct(xb, yb, total, start, world.replicas, r.label_smoothing)
                if not np.isfinite(loss):  # the step's loss, the same in every rank: all stop together
                    self.diverged(f"the loss became {loss}", lr)
                self.optimizer.step(trainable, net.grad_vector, lr)
                total_loss += loss * total
                correct += right
                seen += total
                if progress:
                    progress(seen, total_loss / seen, seen / (time.perf_counter() - started))
        seconds = max(time.perf_counter() - started, 1e-9)
        # The epoch's last step is not followed by a loss that would show it went wrong: check
        # the weights themselves, so that non-finite weights are never saved over good ones.
        if not np.all(np.isfinite(net.vector)):
            self.diverged("the weights became infinite or NaN", lr)
        test_loss = test_accuracy = None
        if self.data.x_test is not None and len(self.data.x_test):
            test_loss, test_accuracy = shared_evaluation(net, self.data.x_test, self.data.y_test, world)
        self.epoch += 1
        labels = seen * math.prod(net.label_shape)  # images, or pixels for a class per pixel
        report = EpochReport(epoch=self.epoch, loss=total_loss / seen, train_accuracy=correct / labels,
                             test_loss=test_loss, test_accuracy=test_accuracy, seconds=seconds,
                             images_per_second=seen / seconds, lr=lr)
        if self.x_val is not None:
            report.val_loss, report.val_accuracy = shared_evaluation(net, self.x_val, self.y_val, world)
            report.best = self.best_accuracy is None or report.val_accuracy > self.best_accuracy
            if report.best:
                self.best_accuracy, self.best_epoch = report.val_accuracy, self.epoch
        self.history.append(metrics_row(report, lr))
        return report

    def diverged(self, what: str, lr: float):
        """Stop: training diverged in the current epoch. Nothing of this epoch is saved."""
        if self.saved_epoch is not None:
            best = self.recipe.keep == "best" and self.best_epoch is not None
            kept = f"; the weights of epoch {self.best_epoch if best else self.saved_epoch} are kept in {self.out}"
        elif self.resumed_from is not None:
            kept = f"; nothing was saved, {self.resumed_from} is unchanged"
        else:
            kept = "; nothing was saved"
        raise TrainingError(f"training diverged: {what} in epoch {self.epoch + 1}{kept}",
                            hint=self.divergence_hint(lr))

    def divergence_hint(self, lr: float) -> str:
        """Huge pixel values diverge at any learning rate: then the data is what to change."""
        x = self.data.x_train
        biggest = float(np.abs(x).max()) if x.size else 0.0
        if biggest > LARGE_PIXEL:
            return (f"the training images hold values up to {biggest:g}; scale them to [0, 1] "
                    "(uint8 images are scaled for you)")
        if self.recipe.weight_decay >= 1:
            return f"try a weight decay well below 1 (--weight-decay), not {self.recipe.weight_decay:g}"
        return f"try a smaller learning rate than {lr:g} (--lr)"


def _entry(path, state: dict, key: str, kind: type):
    """state[key] when it is a `kind` (an int that is not a bool); a DataError saying which entry
    of the checkpoint is wrong otherwise."""
    value = state.get(key)
    if isinstance(value, np.generic):
        value = value.item()
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        found = "missing" if value is None else f"a {type(value).__name__}, not a {kind.__name__}"
        raise DataError(path, f"damaged checkpoint: its entry '{key}' is {found}")
    return value


def _generator(path, state: dict, key: str) -> np.random.Generator:
    try:
        return checkpoint.generator_from_state(_entry(path, state, key, dict))
    except (KeyError, TypeError, ValueError, AttributeError):
        raise DataError(path, f"damaged checkpoint: its entry '{key}' is not a random generator's state") from None


def _short(names, limit: int = 6) -> str:
    names = [str(n) for n in names]
    return ", ".join(names[:limit]) + (", ..." if len(names) > limit else "")


class Terminated(KeyboardInterrupt):
    """SIGTERM (from `timeout`, a scheduler, `docker stop`): stops training as Ctrl-C does."""


def raise_terminated(*_):
    raise Terminated


@contextlib.contextmanager
def sigterm_stops_gracefully():
    """Within the block SIGTERM raises Terminated, so a run stops as Ctrl-C stops it (the last
    whole checkpoint kept) instead of dying wherever it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def deferred_interrupt():
    """Holds back Ctrl-C (SIGINT) and SIGTERM until the block has finished, then raises it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    # An ignored Ctrl-C (a background job, nohup) must not become an interrupt here.
    held = [s for s in (signal.SIGINT, signal.SIGTERM) if signal.getsignal(s) not in (signal.SIG_IGN, None)]
    caught = []
    previous = {s: signal.signal(s, lambda number, _: caught.append(number)) for s in held}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if signal.SIGTERM in caught:
        raise Terminated
    if caught:
        raise KeyboardInterrupt
