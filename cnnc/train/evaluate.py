"""`cnnc eval` and `cnnc predict`: accuracy, per-class accuracy, the confusion matrix, and predictions.

For a model with a class per pixel, every count is of pixels: the accuracy is pixel accuracy, and
the evaluation adds each class's intersection over union and their mean (over the classes present
in the labels or the predictions)."""
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
    confusion: np.ndarray  # confusion[true, predicted] counts (of pixels, for a class per pixel)
    per_pixel: bool = False

    def iou(self) -> np.ndarray:
        """Each class's intersection over union, TP / (TP + FP + FN); NaN for a class found in
        neither the labels nor the predictions."""
        tp = np.diag(self.confusion).astype(np.float64)
        union = self.confusion.sum(axis=0) + self.confusion.sum(axis=1) - tp
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(union > 0, tp / union, np.nan)

    def mean_iou(self) -> float:
        """The mean IoU over the classes present in the labels or the predictions (as
        torchmetrics' JaccardIndex and VOC's mIoU leave out classes seen in neither)."""
        iou = self.iou()
        present = ~np.isnan(iou)
        return float(iou[present].mean()) if present.any() else float("nan")


def evaluate(net: Network, data: Dataset, world=None) -> Evaluation:
    """The test split's evaluation; with several ranks (`world`), each predicts its share of the
    images and the confusion matrices are summed, so every rank gets the whole split's."""
    if data.x_test is None or len(data.x_test) == 0:
        raise DataError(data.source, "has no test images to evaluate on")
    world = world or Single()
    part = rank_share(len(data.x_test), world.rank, world.size)
    k = net.lowered.output_shape[0]
    loss, predicted = loss_and_predictions(net, data.x_test[part], data.y_test[part])
    truth = data.y_test[part].ravel()
    confusion = np.bincount(truth * k + predicted.ravel(), minlength=k * k).reshape(k, k).astype(np.int64)
    world.sum(confusion, "the evaluation's counts")
    total = np.array([loss])
    world.sum(total, "the evaluation's loss")
    labels = confusion.sum()  # images, or pixels for a class per pixel
    classes = list(data.classes) + [str(i) for i in range(len(data.classes), k)]
    return Evaluation(loss=float(total[0]) / labels, accuracy=float(np.trace(confusion) / labels),
                      classes=classes[:k], confusion=confusion, per_pixel=bool(net.label_shape))


def render_evaluation(ev: Evaluation) -> str:
    total = ev.confusion.sum()
    unit = "pixels" if ev.per_pixel else "images"
    if ev.per_pixel:
        present = int(np.count_nonzero(~np.isnan(ev.iou())))
        lines = [f"pixel accuracy {ev.accuracy:.4f} ({np.trace(ev.confusion):,} of {total:,} pixels)",
                 f"mean IoU {ev.mean_iou():.4f} (over the {present} classes in the labels or predictions)",
                 f"loss {ev.loss:.4f}", "", "per class: accuracy, IoU"]
    else:
        lines = [f"accuracy {ev.accuracy:.4f} ({np.trace(ev.confusion):,} of {total:,})", f"loss {ev.loss:.4f}",
                 "", "per class:"]
    width = max(len(c) for c in ev.classes)
    iou = ev.iou()
    for i, name in enumerate(ev.classes):
        count = ev.confusion[i].sum()
        acc = f"{ev.confusion[i, i] / count:.4f}" if count else "  -   "
        if ev.per_pixel:
            acc += f"  {iou[i]:.4f}" if not np.isnan(iou[i]) else "    -   "
        lines.append(f"  {name:<{width}}  {acc}  ({count:,} {unit})")
    lines += ["", f"confusion matrix ({unit}; rows: true class, columns: predicted):" if ev.per_pixel
              else "confusion matrix (rows: true class, columns: predicted):"]
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


# Masks as PNG: mode P (palette), each pixel's value its class index, as VOC's masks are; the
# palette only colours them for a viewer: class 0 black, class 1 white, then distinct colours.
MASK_COLOURS = [(0, 0, 0), (255, 255, 255), (230, 25, 75), (60, 180, 75), (0, 130, 200), (255, 225, 25),
                (145, 30, 180), (70, 240, 240), (245, 130, 48), (240, 50, 230), (128, 128, 128)]


def mask_paths(images: list[Path], folder: Path) -> list[Path]:
    """`folder/<image name without suffix>.mask.png` for each image; a DataError when two would share one."""
    paths, seen = [], {}
    for image in images:
        path = Path(folder) / f"{Path(image).stem}.mask.png"
        if path in seen:
            raise DataError(image, f"would write the same mask file {path} as {seen[path]}",
                            hint="predict images with different names in separate runs")
        seen[path] = image
        paths.append(path)
    return paths


def mask_png(classes: np.ndarray) -> bytes:
    """An H x W array of class indices as PNG bytes (mode P: pixel value = class index)."""
    import io

    from PIL import Image

    if classes.max(initial=0) > 255:
        raise DataError("--masks", "a PNG mask holds at most 256 classes")
    im = Image.fromarray(classes.astype(np.uint8), mode="P")
    colours = MASK_COLOURS + [((37 * i) % 256, (91 * i) % 256, (151 * i) % 256) for i in range(len(MASK_COLOURS), 256)]
    im.putpalette([v for rgb in colours for v in rgb])
    buffer = io.BytesIO()
    im.save(buffer, format="PNG")
    return buffer.getvalue()


def write_masks(images: list[Path], probs: np.ndarray, folder: Path, names: list[str]) -> str:
    """Writes each image's predicted mask (the most likely class of each pixel) to its mask path;
    returns a line per image: the image, the mask file and the share of each class's pixels."""
    from ..files import atomic_write_bytes

    if len(names) != probs.shape[1]:
        raise DataError("--classes", f"gives {len(names)} names but the model has {probs.shape[1]} classes")
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(folder, f"cannot make the folder for the masks: {e.strerror}") from None
    lines = []
    for image, path, p in zip(images, mask_paths(images, folder), probs):
        classes = p.argmax(axis=0)
        atomic_write_bytes(path, mask_png(classes))
        counts = np.bincount(classes.ravel(), minlength=len(names)) / classes.size
        shares = " ".join(f"{name}={share:.3f}" for name, share in zip(names, counts) if share > 0)
        lines.append(f"{image}\t{path}\t{shares}")
    return "\n".join(lines)
