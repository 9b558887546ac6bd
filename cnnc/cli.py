"""The `cnnc` command: argument parsing, the call into the library, and exit codes only.

Exit status: 0 on success, 1 for a user's mistake (a diagnostic, never a traceback), 2 for
a usage error (argparse's own).
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from .diagnostics import CnncError

EMITS = ("summary", "python", "dot", "json")


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.run(args) or 0
    except CnncError as err:
        return report(err)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


def report(err: CnncError) -> int:
    """Prints a user's mistake; exit status 1. Of several MPI ranks, an error every rank raised
    alike (a failed start, a diverged run) is printed by rank 0 alone, and one that only this
    rank met stops all of them, which would otherwise wait for it."""
    from .distributed import DistributedError, Single, world

    try:
        ranks = world()
    except DistributedError:  # launched by mpiexec without mpi4py: this error is about that
        ranks = Single()
    if ranks.size > 1:
        from .train.loop import TrainingError

        if not isinstance(err, (DistributedError, TrainingError)):
            ranks.fail(err.render())
    if ranks.rank == 0:
        print(err.render(), file=sys.stderr)
    return 1


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cnnc", description="Compile, train and run CNNs described in .cnn files.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    c = sub.add_parser("compile", help="check, optimize and compile a model; print its summary")
    c.add_argument("model", type=Path)
    c.add_argument("--emit", choices=EMITS, default="summary")
    c.add_argument("-o", "--output", type=Path, help="write to this file instead of standard output")
    c.set_defaults(run=run_compile)

    d = sub.add_parser("dot", help="the graph as Graphviz DOT")
    d.add_argument("model", type=Path)
    d.add_argument("--stage", choices=("parsed", "optimized"), default="optimized")
    d.add_argument("--mode", choices=("inference", "training"), default="inference",
                   help="which pipeline `optimized` means (default: inference)")
    d.add_argument("-o", "--output", type=Path)
    d.set_defaults(run=run_dot)

    t = sub.add_parser("train", help="train a model on a data set")
    t.add_argument("model", type=Path)
    t.add_argument("data", type=Path, help="image folders, an .npz, or a folder of MNIST IDX files")
    t.add_argument("--epochs", type=positive(int))
    t.add_argument("--batch", type=positive(int))
    t.add_argument("--lr", type=positive(float))
    t.add_argument("--seed", type=nonnegative_int)
    t.add_argument("--optimizer", choices=("sgd", "adam"))
    t.add_argument("--momentum", type=fraction, help="SGD momentum, in [0, 1)")
    t.add_argument("--weight-decay", type=nonnegative(float))
    t.add_argument("--schedule", choices=("constant", "step", "cosine"))
    t.add_argument("--limit", type=positive(int), help="train on the first N training images only")
    t.add_argument("--out", type=Path, help="weights file (default: MODEL.npz in the current folder)")
    t.add_argument("--resume", type=Path, help="a checkpoint (WEIGHTS.ckpt.npz) to continue from")
    t.add_argument("-q", "--quiet", action="store_true", help="no progress bar; one line per epoch")
    t.set_defaults(run=run_train)

    e = sub.add_parser("eval", help="accuracy, per-class accuracy and confusion matrix on the test split")
    e.add_argument("model", type=Path)
    e.add_argument("data", type=Path)
    e.add_argument("--weights", type=Path, required=True)
    e.set_defaults(run=run_eval)

    r = sub.add_parser("predict", help="the class of each image")
    r.add_argument("model", type=Path)
    r.add_argument("images", type=Path, nargs="+")
    r.add_argument("--weights", type=Path, required=True)
    r.add_argument("--classes", help="comma-separated class names (default: from the weights' checkpoint)")
    r.set_defaults(run=run_predict)

    x = sub.add_parser("export", help="write the model and its weights as ONNX")
    x.add_argument("model", type=Path)
    x.add_argument("--weights", type=Path, required=True)
    x.add_argument("-o", "--output", type=Path, required=True)
    x.set_defaults(run=run_export)
    return p


def positive(kind):
    def convert(text: str):
        value = kind(text)
        if not (value > 0 and math.isfinite(value)):  # also rejects nan and inf
            raise argparse.ArgumentTypeError(f"must be a finite number > 0, not {text}")
        return value

    convert.__name__ = kind.__name__
    return convert


def nonnegative(kind):
    def convert(text: str):
        value = kind(text)
        if not (value >= 0 and math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"must be a finite number >= 0, not {text}")
        return value

    convert.__name__ = kind.__name__
    return convert


def fraction(text: str) -> float:
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must lie in [0, 1), not {text}")
    return value


def nonnegative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, not {text}")
    return value


def write(text: str, output: Path | None) -> None:
    if output is None:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
        return
    try:
        output.write_text(text if text.endswith("\n") else text + "\n")
    except OSError as err:
        raise CnncError(f"{output}: cannot write: {err.strerror or err}") from None


def run_compile(args) -> int:
    from .frontend import check_file

    parsed = check_file(args.model)
    if args.emit in ("json", "dot"):
        from .export.dot import to_dot
        from .export.json import to_json
        from .frontend import optimized

        graph, _ = optimized(parsed)
        write(to_json(graph) if args.emit == "json" else to_dot(graph), args.output)
        return 0
    from .runtime import Network

    net = Network(parsed)
    if args.emit == "python":
        from .lower.standalone import standalone

        write(standalone(net.source), args.output)
        return 0
    from .summary import render_summary

    compiled = net.compile()
    count = len(net.kernel_calls)
    kernels = (f"kernels: {count} ({compiled} compiled, {count - compiled} from Numba's cache) in "
               f"{net.compile_seconds:.2f} s; model code: {net.module.__file__}")
    write(render_summary(parsed, net.graph, net.passes, [kernels]), args.output)
    return 0


def run_dot(args) -> int:
    from .export.dot import to_dot
    from .frontend import check_file, optimized

    graph = check_file(args.model)
    if args.stage == "optimized":
        graph, _ = optimized(graph, args.mode)
    write(to_dot(graph), args.output)
    return 0


def load_network(path: Path, weights: Path | None = None, seed: int = 0):
    """The model compiled, with weights loaded when given; also its source text."""
    from .frontend import check_file
    from .runtime import Network
    from .train.checkpoint import load_weights

    graph = check_file(path)
    net = Network(graph, seed=seed)
    if weights is not None:
        for name, value in load_weights(weights, {n: v.shape for n, v in net.params.items()}).items():
            net.params[name] = value
    return net


TRAIN_FLAGS = ("epochs", "batch", "lr", "seed", "optimizer", "momentum", "weight_decay", "schedule", "limit")


def run_train(args) -> int:
    from .diagnostics import DataError, ModelError
    from .distributed import starting, world
    from .frontend import check_file
    from .runtime import Network
    from .train.data import load_dataset
    from .train.loop import Trainer, optimizer_for, recipe
    from .train.run import train

    ranks = world()
    with starting(ranks) as start:  # any rank's mistake stops every rank, before the first step
        graph = check_file(args.model)
        if not graph.graph["loss"]:
            raise ModelError(f"{args.model}: the model has no `loss` statement, so it cannot be trained",
                             hint="add `loss cross_entropy` after the last layer")
        r = recipe(graph.graph["train"], epochs=args.epochs, batch=args.batch, lr=args.lr, seed=args.seed,
                   optimizer=args.optimizer, momentum=args.momentum, weight_decay=args.weight_decay,
                   schedule=args.schedule)
        optimizer_for(r)  # an impossible recipe fails now, before the data is read
        out = args.out or Path(args.model.stem + ".npz")
        if ranks.rank == 0 and not out.parent.is_dir():  # rather than after the first epoch
            raise DataError(out, f"cannot write: the folder {out.parent} does not exist")
        if args.resume is not None and not args.resume.is_file():
            raise DataError(args.resume, "no such checkpoint file")
        net = Network(graph, seed=r.seed)
        data = load_dataset(args.data, net.input_shape, net.lowered.output_shape[0])
        if args.limit:
            data.x_train, data.y_train = data.x_train[: args.limit], data.y_train[: args.limit]
        if data.x_test is not None and len(data.x_test) == 0:
            data.x_test = data.y_test = None  # an empty test split is no test split
        net.compile()  # on two cores when the cache is cold; the data's mistakes are reported first
        trainer = Trainer(net, data, r, out, args.model.read_bytes().decode("utf-8", "replace"), ranks)
        if args.resume is not None:
            trainer.resume(args.resume)
        start.identity = trainer.identity()
    command = ["cnnc", "train", str(args.model), str(args.data)]
    if ranks.size > 1:  # the command that continues the run: any number of ranks may (mpiexec -n ...)
        command = ["mpiexec", "-n", str(ranks.size)] + command
    for flag in TRAIN_FLAGS:
        value = getattr(args, flag)
        if value is not None:
            command += [f"--{flag.replace('_', '-')}", str(value)]
    command += ["--out", str(out)] + (["--quiet"] if args.quiet else [])
    return train(trainer, args.quiet, command)


def run_eval(args) -> int:
    from .distributed import starting, world
    from .train.data import load_dataset
    from .train.evaluate import evaluate, render_evaluation

    ranks = world()
    with starting(ranks) as start:
        net = load_network(args.model, args.weights)
        data = load_dataset(args.data, net.input_shape, net.lowered.output_shape[0], split=("test",))
        net.compile(training=False)
        start.identity = evaluation_identity(net, data)
    evaluation = evaluate(net, data, ranks)
    if ranks.rank == 0:
        write(render_evaluation(evaluation), None)
    return 0


def evaluation_identity(net, data) -> dict:
    """What every rank of a distributed `cnnc eval` must share."""
    import hashlib

    from . import __version__

    return {"cnnc": __version__, "model": hashlib.sha256(net.source.encode()).hexdigest()[:16],
            "weights": hashlib.sha256(net.vector.tobytes()).hexdigest()[:16],
            "test images": 0 if data.x_test is None else len(data.x_test)}


def run_predict(args) -> int:
    from .train.data import load_images
    from .train.evaluate import class_names, probabilities, render_predictions

    net = load_network(args.model, args.weights)
    x = load_images(args.images, net.input_shape)
    net.compile(training=False)
    names = args.classes.split(",") if args.classes else class_names(args.weights, net.lowered.output_shape[0])
    write(render_predictions(args.images, probabilities(net, x), names), None)
    return 0


def run_export(args) -> int:
    from .export.onnx import export_onnx

    net = load_network(args.model, args.weights)
    export_onnx(net, args.output)
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
