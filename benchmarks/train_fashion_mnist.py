"""Trains a model (examples/lenet5.cnn) on Fashion-MNIST with cnnc and with PyTorch, side by side.

    python benchmarks/train_fashion_mnist.py [--epochs N] [--model M.cnn] [--data DIR]

Both runs start from the same parameters (cnnc's initialization, copied into the PyTorch
module built from the same parsed graph by benchmarks/torch_model.py), follow the model's own
`train` line (optimizer, lr, momentum, batch, epochs, seed, schedule), and see the same batches
in the same order: both draw each epoch's permutation with `cnnc.train.data.batches` from
`numpy.random.default_rng(seed)`, as `cnnc train` does. cnnc trains with its own
`cnnc.train.loop.Trainer`; PyTorch with torch.optim and `F.cross_entropy` on the logits. After
each epoch both report test accuracy; the end prints the final difference. Both use 2 threads.
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
from cnnc.train.data import batches, load_dataset
from cnnc.train.loop import Recipe, Trainer, epoch_lr, recipe

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

    def __init__(self, model: torch_model.GraphNet, data, r: Recipe):
        self.model, self.data, self.recipe = model, data, r
        self.optimizer = torch_optimizer(model, r)
        self.rng = np.random.default_rng(r.seed)  # the same stream as Trainer.rng
        self.epoch = 0

    def run_epoch(self) -> Epoch:
        r, model = self.recipe, self.model
        for group in self.optimizer.param_groups:
            group["lr"] = epoch_lr(r, self.epoch)
        model.train()
        total, seen = 0.0, 0
        started = time.perf_counter()
        for xb, yb in batches(self.data.x_train, self.data.y_train, r.batch, self.rng):
            self.optimizer.zero_grad(set_to_none=True)
            loss = torch_model.loss(model, torch.from_numpy(xb), torch.from_numpy(yb))
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
        right = sum(int((self.model(torch.from_numpy(x[i:i + batch])).argmax(1).numpy() == y[i:i + batch]).sum())
                    for i in range(0, len(x), batch))
        return right / len(x)


def torch_optimizer(model: torch.nn.Module, r: Recipe) -> torch.optim.Optimizer:
    if r.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=r.lr, weight_decay=r.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=r.lr, momentum=r.momentum, nesterov=r.nesterov,
                           weight_decay=r.weight_decay)


def cnnc_epoch(trainer: Trainer) -> Epoch:
    report = trainer.run_epoch()
    return Epoch(report.loss, report.test_accuracy, report.seconds)


def describe(r: Recipe, data, model: Path) -> str:
    return (f"{model.name}: {r.optimizer} lr={r.lr:g} momentum={r.momentum:g} batch={r.batch} "
            f"epochs={r.epochs} seed={r.seed} schedule={r.schedule}; {len(data.x_train):,} training and "
            f"{len(data.x_test):,} test images from {data.source}")


def epoch_line(epoch: int, epochs: int, ours: Epoch, theirs: Epoch) -> str:
    return (f"epoch {epoch}/{epochs}  cnnc: loss {ours.loss:.4f} test acc {ours.test_accuracy:.4f} "
            f"({ours.seconds:.1f} s)   PyTorch: loss {theirs.loss:.4f} test acc {theirs.test_accuracy:.4f} "
            f"({theirs.seconds:.1f} s)   difference {ours.test_accuracy - theirs.test_accuracy:+.4f}")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, default=ROOT / "examples" / "lenet5.cnn")
    p.add_argument("--data", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    p.add_argument("--epochs", type=int, help="fewer epochs than the model's train line (a quick check)")
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
    print(describe(r, data, args.model), flush=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:  # Trainer wants a weights path; nothing is saved
        trainer = Trainer(net, data, r, Path(tmp) / "weights.npz", args.model.read_text())
        torch_run = TorchRun(model, data, r)
        for epoch in range(1, r.epochs + 1):
            ours, theirs = cnnc_epoch(trainer), torch_run.run_epoch()
            print(epoch_line(epoch, r.epochs, ours, theirs), flush=True)
    print(f"final test accuracy after {r.epochs} epoch{'s' if r.epochs != 1 else ''}: cnnc {ours.test_accuracy:.4f}, "
          f"PyTorch {theirs.test_accuracy:.4f}, difference (cnnc - PyTorch) "
          f"{ours.test_accuracy - theirs.test_accuracy:+.4f}; took {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
