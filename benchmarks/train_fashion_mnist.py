"""Trains a model (examples/lenet5.cnn) on Fashion-MNIST with cnnc and with PyTorch, side by side.

    python benchmarks/train_fashion_mnist.py [--epochs N] [--model M.cnn] [--data DIR] [--limit N]
    python benchmarks/train_fashion_mnist.py --model examples/fashion_resnet.cnn --epochs 1 --limit 2000

Both runs start from the same parameters (cnnc's initialization, copied into the PyTorch
module built from the same parsed graph by benchmarks/torch_model.py), follow the model's own
`train` line (optimizer, lr, momentum, batch, epochs, seed, schedule, warmup, weight decay and
decay_norm_bias, label smoothing, crop, flip, normalization, validation split), and see the same
batches in the same order, augmented alike: both draw each epoch's crops, flips and permutation
with `cnnc.train.loop.epoch_batches` from `numpy.random.default_rng(seed)`, as `cnnc train` does,
and normalize with the statistics cnnc's Trainer measured. cnnc trains with its own
`cnnc.train.loop.Trainer`; PyTorch with torch.optim (SGD, Adam, AdamW; a second parameter group
without decay for the 1-d parameters with decay_norm_bias=false), the learning rate of every step
from `cnnc.train.loop.step_lr`, and `F.cross_entropy(label_smoothing=)` on the logits. After each
epoch both report test accuracy; the end prints both final accuracies and both training times.
Both use 2 threads. `--limit N` trains on the first N training images and tests on the first N
test images (a quick check that the script runs).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cnnc.frontend import check_file
from cnnc.runtime import Network
from cnnc.train.data import load_dataset
from cnnc.train.run import recipe_extras
from cnnc.train.loop import Recipe, Trainer, epoch_batches, recipe, step_lr

sys.path.insert(0, str(Path(__file__).parent))
import torch_model  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
THREADS = 2


@dataclass
class Epoch:
    loss: float
    test_accuracy: float
    seconds: float  # training only, without the test pass


class TorchRun:
    """The PyTorch side: the recipe applied to a module, epoch by epoch, like cnnc's Trainer."""

    def __init__(self, model: torch_model.GraphNet, trainer: Trainer):
        self.model, self.data, self.recipe = model, trainer.data, trainer.recipe
        self.x_train, self.y_train = trainer.x_train, trainer.y_train  # after the validation split
        self.normalization = trainer.net.normalization  # measured by the Trainer
        self.optimizer = torch_optimizer(model, self.recipe)
        self.rng = np.random.default_rng(self.recipe.seed)  # the same stream as Trainer.rng
        self.epoch = 0

    def inputs(self, x: np.ndarray) -> torch.Tensor:
        if self.normalization is not None:
            mean, std = self.normalization
            x = (x - mean[None, :, None, None]) / std[None, :, None, None]
        return torch.from_numpy(np.ascontiguousarray(x, np.float32))

    def run_epoch(self) -> Epoch:
        r, model = self.recipe, self.model
        model.train()
        total, seen = 0.0, 0
        started = time.perf_counter()
        steps = epoch_batches(self.x_train, self.y_train, r, self.rng)  # cnnc's crops, flips and order
        for i, (xb, yb) in enumerate(steps):
            for group in self.optimizer.param_groups:
                group["lr"] = step_lr(r, self.epoch, i, len(steps))
            self.optimizer.zero_grad(set_to_none=True)
            loss = torch_model.loss(model, self.inputs(xb), torch.from_numpy(yb), r.label_smoothing)
            loss.backward()
            self.optimizer.step()
            total += float(loss.detach()) * len(yb)
            seen += len(yb)
        seconds = time.perf_counter() - started
        self.epoch += 1
        return Epoch(total / seen, self.test_accuracy(), seconds)

    @torch.inference_mode()
    def test_accuracy(self, batch: int = 256) -> float:
        self.model.eval()
        x, y = self.data.x_test, self.data.y_test
        right = sum(int((self.model(self.inputs(x[i:i + batch])).argmax(1).numpy() == y[i:i + batch]).sum())
                    for i in range(0, len(x), batch))
        return right / len(x)


def torch_optimizer(model: torch.nn.Module, r: Recipe) -> torch.optim.Optimizer:
    params = list(model.parameters())
    groups = [{"params": params}]
    if not r.decay_norm_bias:  # cnnc's bias, gamma and beta are the 1-d parameters
        groups = [{"params": [p for p in params if p.ndim > 1]},
                  {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]
    if r.optimizer in ("adam", "adamw"):
        cls = torch.optim.Adam if r.optimizer == "adam" else torch.optim.AdamW
        return cls(groups, lr=r.lr, weight_decay=r.weight_decay)
    return torch.optim.SGD(groups, lr=r.lr, momentum=r.momentum, nesterov=r.nesterov, weight_decay=r.weight_decay)


def cnnc_epoch(trainer: Trainer) -> Epoch:
    report = trainer.run_epoch()
    return Epoch(report.loss, report.test_accuracy, report.seconds)


def describe(r: Recipe, data, model: Path) -> str:
    return (f"{model.name}: {r.optimizer} lr={r.lr:g} momentum={r.momentum:g} batch={r.batch} "
            f"epochs={r.epochs} seed={r.seed} schedule={r.schedule}{recipe_extras(r)}; {len(data.x_train):,} "
            f"training and {len(data.x_test):,} test images from {data.source}")


def epoch_line(epoch: int, epochs: int, ours: Epoch, theirs: Epoch) -> str:
    return (f"epoch {epoch}/{epochs}  cnnc: loss {ours.loss:.4f} test acc {ours.test_accuracy:.4f} "
            f"({ours.seconds:.1f} s)   PyTorch: loss {theirs.loss:.4f} test acc {theirs.test_accuracy:.4f} "
            f"({theirs.seconds:.1f} s)   difference {ours.test_accuracy - theirs.test_accuracy:+.4f}")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, default=ROOT / "examples" / "lenet5.cnn")
    p.add_argument("--data", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    p.add_argument("--epochs", type=int, help="fewer epochs than the model's train line (a quick check)")
    p.add_argument("--limit", type=int, help="the first N training and N test images only (a quick check)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(THREADS)
    graph = check_file(args.model)
    r = recipe(graph.graph["train"], epochs=args.epochs)
    net = Network(graph, seed=r.seed)
    net.compile()
    model = torch_model.build(net.parsed, net.params)  # the same initial parameters
    data = load_dataset(args.data, net.input_shape, net.lowered.output_shape[0])
    if args.limit:
        data.x_train, data.y_train = data.x_train[:args.limit], data.y_train[:args.limit]
        data.x_test, data.y_test = data.x_test[:args.limit], data.y_test[:args.limit]
    print(describe(r, data, args.model), flush=True)
    started = time.perf_counter()
    ours_seconds = theirs_seconds = 0.0
    with tempfile.TemporaryDirectory() as tmp:  # Trainer wants a weights path; nothing is saved
        trainer = Trainer(net, data, r, Path(tmp) / "weights.npz", args.model.read_text())
        torch_run = TorchRun(model, trainer)
        for epoch in range(1, r.epochs + 1):
            ours, theirs = cnnc_epoch(trainer), torch_run.run_epoch()
            ours_seconds, theirs_seconds = ours_seconds + ours.seconds, theirs_seconds + theirs.seconds
            print(epoch_line(epoch, r.epochs, ours, theirs), flush=True)
    print(f"final test accuracy after {r.epochs} epoch{'s' if r.epochs != 1 else ''}: cnnc {ours.test_accuracy:.4f}, "
          f"PyTorch {theirs.test_accuracy:.4f}, difference (cnnc - PyTorch) "
          f"{ours.test_accuracy - theirs.test_accuracy:+.4f}; training took cnnc {ours_seconds:.0f} s, "
          f"PyTorch {theirs_seconds:.0f} s; {time.perf_counter() - started:.0f} s in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
