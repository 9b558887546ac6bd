"""The `cnnc` command: argument parsing, the call into the library, and exit codes only.

Exit status: 0 on success, 1 for a user's mistake (a diagnostic, never a traceback), 2 for
a usage error (argparse's own).
"""
from __future__ import annotations

import argparse
import math
import os
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
    except MemoryError:  # what the memory checks did not foresee: a message, not a traceback
        return say("error: out of memory; try a smaller --batch, a smaller model or data set, or free some memory")
    except BrokenPipeError:  # the reader of standard output has gone (`cnnc predict ... | head -1`)
        try:  # so that the interpreter's last flush does not fail again
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 0


def report(err: CnncError) -> int:
    """Prints a user's mistake; exit status 1. Of several MPI ranks, an error every rank raised
    alike (a failed start, a diverged run: its `every_rank` is true) is printed by rank 0 alone."""
    return say(err.render(), every_rank=getattr(err, "every_rank", False))


def say(text: str, every_rank: bool = False) -> int:
    """Prints an error; exit status 1. Of several MPI ranks, one that only this rank met stops all
    of them, which would otherwise wait for it; one that every rank met is printed by rank 0."""
    from .distributed import DistributedError, Single, world

    try:
        ranks = world()
    except DistributedError:  # launched by mpiexec without mpi4py: the error is about that
        ranks = Single()
    if ranks.size > 1 and not every_rank:
        ranks.fail(text)
    if ranks.rank == 0:
        print(text, file=sys.stderr)
    return 1


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cnnc", description="Compile, train and run CNNs described in .cnn files.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    c = sub.add_parser("compile", help="check, optimize and compile a model; print its summary")
    c.add_argument("model", type=Path)
    c.add_argument("--emit", choices=EMITS, default="summary")
    c.add_argument("-o", "--output", type=Path, help="write to this file instead of standard output")
    c.add_argument("--max-memory", type=memory_size, metavar="SIZE",
                   help="memory the run may use, e.g. 8G or 512M (default: 90%% of what is available)")
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
    t.add_argument("--optimizer", choices=("sgd", "adam", "adamw"))
    t.add_argument("--momentum", type=fraction, help="SGD momentum, in [0, 1)")
    t.add_argument("--weight-decay", type=nonnegative(float))
    t.add_argument("--schedule", choices=("constant", "step", "cosine", "onecycle"))
    t.add_argument("--warmup", type=nonnegative_int, help="epochs of linear learning-rate warmup")
    t.add_argument("--label-smoothing", type=fraction, help="label smoothing of the loss, in [0, 1)")
    t.add_argument("--val", type=fraction, help="fraction of the training images held out for validation")
    t.add_argument("--keep", choices=("last", "best"), help="weights to keep: the last epoch's or the best "
                   "validation accuracy's")
    t.add_argument("--patience", type=nonnegative_int, help="stop after N epochs without validation improvement")
    t.add_argument("--limit", type=positive(int), help="train on the first N training images only")
    t.add_argument("--out", type=Path, help="weights file (default: MODEL.npz in the current folder)")
    t.add_argument("--resume", type=Path, help="a checkpoint (WEIGHTS.ckpt.npz) to continue from")
    t.add_argument("-q", "--quiet", action="store_true", help="no progress bar; one line per epoch")
    t.add_argument("--plot", action="store_true",
                   help="after every epoch, draw the metrics log's curves into WEIGHTS.curves.png")
    t.add_argument("--max-memory", type=memory_size, metavar="SIZE",
                   help="memory the run may use, e.g. 8G or 512M (default: 90%% of what is available)")
    t.set_defaults(run=run_train)

    e = sub.add_parser("eval", help="accuracy, per-class accuracy and confusion matrix on the test split")
    e.add_argument("model", type=Path)
    e.add_argument("data", type=Path)
    e.add_argument("--weights", type=Path, required=True)
    e.add_argument("--max-memory", type=memory_size, metavar="SIZE",
                   help="memory the run may use, e.g. 8G or 512M (default: 90%% of what is available)")
    e.set_defaults(run=run_eval)

    r = sub.add_parser("predict", help="the class of each image")
    r.add_argument("model", type=Path)
    r.add_argument("images", type=Path, nargs="+")
    r.add_argument("--weights", type=Path, required=True)
    r.add_argument("--classes", help="comma-separated class names (default: from the weights' checkpoint)")
    r.add_argument("--masks", type=Path, default=Path("."), metavar="DIR",
                   help="a model with a class per pixel writes DIR/<image>.mask.png (default: the current folder)")
    r.add_argument("--max-memory", type=memory_size, metavar="SIZE",
                   help="memory the run may use, e.g. 8G or 512M (default: 90%% of what is available)")
    r.set_defaults(run=run_predict)

    g = sub.add_parser("plot", help="draw a run's loss and accuracy curves as a PNG")
    g.add_argument("run_path", metavar="RUN", type=Path, help="the run's weights file (WEIGHTS.npz) or its WEIGHTS.metrics.csv")
    g.add_argument("-o", "--output", type=Path, help="the PNG (default: WEIGHTS.curves.png beside the log)")
    g.set_defaults(run=run_plot)

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


def memory_size(text: str) -> int:
    from .memory import parse_size

    try:
        return parse_size(text)
    except (ValueError, IndexError, OverflowError):
        raise argparse.ArgumentTypeError(f"must be a size such as 8G, 512M or 100000000, not {text}") from None


def memory_limit(args) -> int | None:
    """--max-memory, else most of the memory available now (None when that is unknown)."""
    from .memory import default_limit

    return args.max_memory if args.max_memory is not None else default_limit()


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
    """To standard output, or atomically to a file (an error leaves no empty or partial file)."""
    from .files import atomic_write_bytes

    text = text if text.endswith("\n") else text + "\n"
    if output is None:
        sys.stdout.write(text)
    else:
        atomic_write_bytes(output, text.encode())


def refuse_overwrite(output: Path | None, **inputs) -> None:
    """The output must not be one of the command's inputs (`model=args.model, data=...`)."""
    from .files import refuse_overwrite as refuse

    if output is not None:
        refuse(output, {what.replace("_", " "): path for what, path in inputs.items()})


def run_compile(args) -> int:
    from .frontend import check_file

    refuse_overwrite(args.output, model_file=args.model)
    parsed = check_file(args.model)
    if args.emit in ("json", "dot"):
        from .export.dot import to_dot
        from .export.json import to_json
        from .frontend import optimized

        graph, _ = optimized(parsed)
        write(to_json(graph) if args.emit == "json" else to_dot(graph), args.output)
        return 0
    from .memory import Budget
    from .runtime import Network

    limit = memory_limit(args)
    net = Network(parsed, budget=Budget(limit, 1, "training" if parsed.graph["loss"] else "inference",
                                        stated=args.max_memory is not None))
    if args.emit == "python":
        from .lower.standalone import standalone

        write(standalone(net.source), args.output)
        return 0
    from .summary import render_summary

    compiled = net.compile()
    count = len(net.kernel_calls)
    kernels = (f"kernels: {count} ({compiled} compiled, {count - compiled} from Numba's cache) in "
               f"{net.compile_seconds:.2f} s; model code: {net.module.__file__ or 'not written (no cache folder)'}")
    write(render_summary(parsed, net.graph, net.passes, [memory_line(net, limit), kernels]), args.output)
    return 0


def memory_line(net, limit: int | None) -> str:
    """`memory: 1.2 MiB inference at batch 1, 20.5 MiB training at batch 64 (the train line's)`"""
    from .memory import human
    from .train.loop import recipe

    line = f"memory: {human(net.memory('inference').bytes(1))} inference at batch 1"
    if net.parsed.graph["loss"]:
        r = recipe(net.parsed.graph["train"])
        needed = net.memory("training", r.optimizer).bytes(r.batch)
        line += f", {human(needed)} training at batch {r.batch}"
        if limit is not None and needed > limit:
            line += f" (more than the {human(limit)} available: train with a smaller --batch)"
    return line


def run_dot(args) -> int:
    from .export.dot import to_dot
    from .frontend import check_file, optimized

    refuse_overwrite(args.output, model_file=args.model)
    graph = check_file(args.model)
    if args.stage == "optimized":
        graph, _ = optimized(graph, args.mode)
    write(to_dot(graph), args.output)
    return 0


def load_network(path: Path, weights: Path | None = None, seed: int = 0, limit: int | None = None,
                 stated: bool = False):
    """The model for inference, with weights loaded when given, its batch fitted to `limit` (the
    user's --max-memory when `stated`)."""
    from .frontend import check_file
    from .memory import Budget, inference_batch
    from .runtime import Network
    from .train.checkpoint import load_network_weights

    graph = check_file(path)
    net = Network(graph, seed=seed, budget=Budget(limit, stated=stated))
    net.inference_batch = inference_batch(net.memory(), limit)
    if weights is not None:
        load_network_weights(net, weights)
    return net


TRAIN_FLAGS = ("epochs", "batch", "lr", "seed", "optimizer", "momentum", "weight_decay", "schedule", "limit",
               "max_memory", "warmup", "label_smoothing", "val", "keep", "patience")


def run_train(args) -> int:
    from .diagnostics import DataError, ModelError
    from .distributed import starting, world
    from .frontend import check_source, read_model
    from .memory import Budget, check as memory_check, inference_batch
    from .runtime import Network
    from .train.data import load_dataset
    from .train.checkpoint import check_checkpoint
    from .train.loop import Trainer, optimizer_for, recipe
    from .train.run import train

    ranks = world()
    with starting(ranks) as start:  # any rank's mistake stops every rank, before the first step
        text = read_model(args.model)
        graph = check_source(text, str(args.model))
        if not graph.graph["loss"]:
            raise ModelError(f"{args.model}: the model has no `loss` statement, so it cannot be trained",
                             hint="add `loss cross_entropy` after the last layer")
        r = recipe(graph.graph["train"], epochs=args.epochs, batch=args.batch, lr=args.lr, seed=args.seed,
                   optimizer=args.optimizer, momentum=args.momentum, weight_decay=args.weight_decay,
                   schedule=args.schedule, warmup=args.warmup, label_smoothing=args.label_smoothing,
                   val=args.val, keep=args.keep, patience=args.patience)
        optimizer_for(r)  # an impossible recipe fails now, before the data is read
        out = args.out or Path(args.model.stem + ".npz")
        if args.resume is not None:
            if not args.resume.is_file():
                raise DataError(args.resume, "no such checkpoint file")
            check_checkpoint(args.resume)
        if ranks.rank == 0:  # rank 0 alone writes them
            check_outputs(args, out)
        share = -(-r.batch // ranks.size)  # the most images of a step a rank computes
        limit = memory_limit(args)
        net = Network(graph, seed=r.seed, budget=Budget(limit, share, "training", r.optimizer,
                                                        stated=args.max_memory is not None))
        net.inference_batch = inference_batch(net.memory(), limit)
        data = load_dataset(args.data, net.input_shape, net.lowered.output_shape[0], label_shape=net.label_shape)
        if args.limit:
            data.x_train, data.y_train = data.x_train[: args.limit], data.y_train[: args.limit]
        if data.x_test is not None and len(data.x_test) == 0:
            data.x_test = data.y_test = None  # an empty test split is no test split
        if args.max_memory is None:  # the data set has taken its share of what is available: again
            limit = limit_after_loading(net)
            net.memory_limit = limit
            memory_check(net.memory("training", r.optimizer), Budget(limit, share, "training", r.optimizer))
            net.inference_batch = inference_batch(net.memory(), limit)
        net.compile()  # on two cores when the cache is cold; the data's mistakes are reported first
        trainer = Trainer(net, data, r, out, text.decode("utf-8", "replace"), ranks)
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
    command += ["--out", str(out)] + (["--quiet"] if args.quiet else []) + (["--plot"] if args.plot else [])
    return train(trainer, args.quiet, command, args.plot)


def limit_after_loading(net) -> int | None:
    """The default limit measured now, plus what the network has allocated since the first
    measurement (the estimate counts the parameters, which the available memory no longer does)."""
    from .memory import default_limit

    limit = default_limit()
    return None if limit is None else limit + net.vector.nbytes + net.grad_vector.nbytes


def check_outputs(args, out: Path) -> None:
    """The weights and the checkpoint, metrics log and curves beside them replace none of the inputs
    and can be written: found now, rather than after the first epoch."""
    from .files import check_writable
    from .train.checkpoint import checkpoint_path
    from .train.metrics import metrics_path
    from .train.plot import curves_path

    refuse_overwrite(out, model_file=args.model, training_data=args.data, checkpoint_to_resume=args.resume)
    check_writable(out)
    beside = [checkpoint_path(out), metrics_path(out)] + ([curves_path(metrics_path(out))] if args.plot else [])
    for path in beside:
        refuse_overwrite(path, model_file=args.model, training_data=args.data)
        check_writable(path)


def run_eval(args) -> int:
    from .distributed import starting, world
    from .train.data import load_dataset
    from .train.evaluate import evaluate, render_evaluation

    ranks = world()
    with starting(ranks) as start:
        net = load_network(args.model, args.weights, limit=memory_limit(args), stated=args.max_memory is not None)
        data = load_dataset(args.data, net.input_shape, net.lowered.output_shape[0], split=("test",),
                            label_shape=net.label_shape)
        if args.max_memory is None:
            from .memory import inference_batch

            net.inference_batch = inference_batch(net.memory(), limit_after_loading(net))
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
    from .train.evaluate import class_names, mask_paths, render_predictions, write_masks

    net = load_network(args.model, args.weights, limit=memory_limit(args), stated=args.max_memory is not None)
    x = load_images(args.images, net.input_shape)
    if net.label_shape:  # a mask per image: none may replace an input
        for path in mask_paths(args.images, args.masks):
            refuse_overwrite(path, model_file=args.model, weights_file=args.weights,
                             **{f"image {image}": image for image in args.images})
    net.compile(training=False)
    names = args.classes.split(",") if args.classes else class_names(args.weights, net.lowered.output_shape[0])
    if net.label_shape:
        write(write_masks(args.images, net.predict(x), args.masks, names), None)
        return 0
    write(render_predictions(args.images, net.predict(x), names), None)
    return 0


def run_plot(args) -> int:
    from .train.plot import plot_run

    written = plot_run(args.run_path, args.output)
    print(f"wrote {written}", file=sys.stderr)
    return 0


def run_export(args) -> int:
    from .export.onnx import export_onnx

    from .train.checkpoint import checkpoint_path

    refuse_overwrite(args.output, model_file=args.model, weights_file=args.weights,
                     checkpoint_file=checkpoint_path(args.weights))
    net = load_network(args.model, args.weights)
    export_onnx(net, args.output)
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
