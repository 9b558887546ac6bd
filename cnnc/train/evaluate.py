"""`cnnc eval` and `cnnc predict`: accuracy, per-class accuracy, the confusion matrix, and predictions."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..diagnostics import DataError, warn
from ..runtime import Network
from ..distributed import Single
from .checkpoint import CHECKPOINT_SUFFIX, checkpoint_classes, checkpoint_path
from .data import Dataset, rank_share
from .loop import loss_and_predictions


@dataclass
class Evaluation:
    loss: float  # inference's cross-entropy, the mean over the images
    accuracy: float
    classes: list[str]
    confusion: np.ndarray  # confusion[true, predicted] counts


def evaluate(net: Network, data: Dataset, world=None) -> Evaluation:
    """The test split's evaluation; with several ranks (`world`), each predicts its share of the
    images and the confusion matrices are summed, so every rank gets the whole split's."""
    if data.x_test is None or len(data.x_test) == 0:
        raise DataError(data.source, "has no test images to evaluate on")
    world = world or Single()
    part = rank_share(len(data.x_test), world.rank, world.size)
    k = net.lowered.output_shape[0]
    confusion = np.zeros((k, k), np.int64)
    loss, predicted = loss_and_predictions(net, data.x_test[part], data.y_test[part])
    np.add.at(confusion, (data.y_test[part], predicted), 1)
    world.sum(confusion, "the evaluation's counts")
    total = np.array([loss])
    world.sum(total, "the evaluation's loss")
    acc = float(np.trace(confusion) / len(data.x_test))
    classes = list(data.classes) + [str(i) for i in range(len(data.classes), k)]
    return Evaluation(float(total[0]) / len(data.x_test), acc, classes[:k], confusion)


def render_evaluation(ev: Evaluation) -> str:
    total = ev.confusion.sum()
    lines = [f"accuracy {ev.accuracy:.4f} ({np.trace(ev.confusion):,} of {total:,})", f"loss {ev.loss:.4f}",
             "", "per class:"]
    width = max(len(c) for c in ev.classes)
    for i, name in enumerate(ev.classes):
        count = ev.confusion[i].sum()
        acc = f"{ev.confusion[i, i] / count:.4f}" if count else "  -   "
        lines.append(f"  {name:<{width}}  {acc}  ({count:,} images)")
    lines += ["", "confusion matrix (rows: true class, columns: predicted):"]
    cell = max(len(f"{ev.confusion.max():,}"), len(str(len(ev.classes) - 1)), 3)
    lines.append(" " * (width + 2) + "".join(f" {i:>{cell}}" for i in range(len(ev.classes))))
    for i, name in enumerate(ev.classes):
        lines.append(f"  {name:<{width}}" + "".join(f" {v:>{cell},}" for v in ev.confusion[i]))
    lines.append("  columns: " + ", ".join(f"{i}={c}" for i, c in enumerate(ev.classes)))
    return "\n".join(lines)


def class_names(weights: Path, k: int) -> list[str]:
    """The class names saved in the checkpoint beside the weights, or 0..k-1 without one. A model
    trained on fewer classes than it has outputs gets numbers for the outputs no class had."""
    weights = Path(weights)
    ckpt = weights if weights.name.lower().endswith(CHECKPOINT_SUFFIX) else checkpoint_path(weights)
    classes = []
    if ckpt.exists():
        try:
            classes = [str(c) for c in checkpoint_classes(ckpt)]
        except DataError as e:
            warn(f"{e.message} ({e.path}); the classes are shown as numbers")
    if len(classes) > k:
        classes = []
    return classes + [str(i) for i in range(len(classes), k)]


def probabilities(net: Network, x: np.ndarray, batch: int | None = None) -> np.ndarray:
    """Class probabilities of inference: the output itself when the model ends in softmax, else a
    softmax of its values, which the contract takes as logits."""
    batch = batch or net.inference_batch
    out = np.concatenate([net.forward(x[i:i + batch]) for i in range(0, len(x), batch)])
    if net.parsed.nodes[net.parsed.graph["output"]]["op"] == "softmax":
        return out
    shifted = out.astype(np.float64) - out.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def render_predictions(paths, probs: np.ndarray, names: list[str]) -> str:
    if len(names) != probs.shape[1]:
        raise DataError("--classes", f"gives {len(names)} names but the model has {probs.shape[1]} classes")
    best = probs.argmax(axis=1)
    return "\n".join(f"{path}\t{names[b]}\t{probs[i, b]:.4f}" for i, (path, b) in enumerate(zip(paths, best)))
