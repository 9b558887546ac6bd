"""The compiled network: parameters in one flat vector, and forward / loss_and_grads calling the kernels.

The generated module is plain Python, written to a cache folder named by the hash of its
source and imported from there; the kernels it calls keep their machine code in Numba's cache.
Calls run on slices of the batch in parallel threads (cnnc/lanes.py).
"""
from __future__ import annotations

import builtins
import ctypes
import ctypes.util
import hashlib
import math
import os
import sys
import tempfile
import threading
import time
import types
from collections.abc import MutableMapping
from functools import cache, partial
from pathlib import Path

import networkx as nx
import numpy as np

from .diagnostics import InputError, ModelError, warn
from .distributed import launched_size
from .frontend import check_source, optimized, read_model
from . import forked_lanes, lanes, memory
from .lower.context import ParamLayout
from .lower.program import Lowered, lower
from .precompile import compile_all, kernel_calls, load_all
from .ops import BUFFER_KINDS


def cache_dir() -> Path:
    """Where generated modules live: $CNNC_CACHE_DIR, else the user's cache folder ($XDG_CACHE_HOME
    when it is an absolute path, as the XDG spec asks, else ~/.cache)."""
    if os.environ.get("CNNC_CACHE_DIR"):
        return Path(os.environ["CNNC_CACHE_DIR"])
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    return (Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache") / "cnnc"


@cache
def keep_freed_memory() -> None:
    """Has glibc's malloc serve big arrays from its heap and keep them when freed, instead of
    mapping fresh pages for every call: each call allocates the same activations again, and a
    fresh page costs a fault and a zeroing (measured: 15% of vgg_small's batch-256 forward, 30%
    of lenet5's training step). Peak memory is unchanged; freed memory stays with the process,
    as with PyTorch's CPU allocator. Does nothing without glibc."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(-3, 1 << 30)  # M_MMAP_THRESHOLD: only blocks over 1 GiB get their own mapping
        libc.mallopt(-1, 1 << 31)  # M_TRIM_THRESHOLD: keep up to 2 GiB of freed heap
        # M_ARENA_MAX: one arena. A thread's own arena grows in mapped heaps of at most 64 MiB,
        # where big blocks got fresh pages on every call: resnet20's batch-128 step on two lanes
        # took 238-257 ms with glibc's default arenas, 178-180 ms with one (batch 64: 123 -> 86-93).
        libc.mallopt(-8, 1)
    except (OSError, AttributeError):
        pass


def load_module(source: str):
    """Imports generated source, written first to the cache folder (so that tracebacks and
    debuggers show its lines). The code is compiled from `source` itself, never from a .pyc or the
    file, so a damaged cache cannot change what runs."""
    digest = hashlib.sha256(source.encode()).hexdigest()[:20]
    name = f"cnnc_model_{digest}"
    if name in sys.modules:
        return sys.modules[name]
    path = write_module(f"{name}.py", source)
    module = types.ModuleType(name)
    module.__file__ = str(path) if path else None
    exec(builtins.compile(source, str(path) if path else f"<{name}>", "exec"), module.__dict__)
    sys.modules[name] = module
    return module


def write_module(filename: str, source: str) -> Path | None:
    """The generated file in the cache folder, else in a temporary folder (with a warning), else
    None: a cache that is a file, read-only, full or unreadable costs the file, not the run."""
    for folder in (cache_dir(), Path(tempfile.gettempdir()) / f"cnnc-{os.getuid() if hasattr(os, 'getuid') else 0}"):
        path = folder / filename
        try:
            folder.mkdir(parents=True, exist_ok=True)
            if not path.is_file() or path.read_text() != source:
                tmp = path.with_suffix(f".{os.getpid()}.tmp")
                try:
                    tmp.write_text(source)
                    os.replace(tmp, path)
                finally:
                    tmp.unlink(missing_ok=True)
            return path
        except (OSError, UnicodeDecodeError) as e:
            cache_warning(folder, str(getattr(e, "strerror", None) or e))
    return None


@cache  # once per folder and reason in a process
def cache_warning(folder: Path, reason: str) -> None:
    warn(f"cannot use the cache folder {folder} ({reason}); set CNNC_CACHE_DIR to a writable folder")


class Params(MutableMapping):
    """name -> float32 view into the flat vector; assigning copies into the view, so kernels see it."""

    def __init__(self, vector: np.ndarray, layout: ParamLayout):
        self._views = {name: vector[o:o + math.prod(s)].reshape(s) for name, (o, s) in layout.slots.items()}

    def __getitem__(self, name):
        return self._views[name]

    def __setitem__(self, name, value):
        view = self._views[name]
        value = np.asarray(value)
        if value.shape != view.shape:
            raise ValueError(f"{name} is {view.shape}, not {value.shape}")
        view[...] = value

    def __delitem__(self, name):
        raise TypeError("parameters cannot be removed")

    def __iter__(self):
        return iter(self._views)

    def __len__(self):
        return len(self._views)


def initialize(vector: np.ndarray, layout: ParamLayout, seed: int) -> None:
    """PyTorch's default: weights and biases uniform in +-1/sqrt(fan_in) (He-uniform with a = sqrt(5)),
    batchnorm as the identity. Matching it lets a recipe tuned in PyTorch train the same here."""
    rng = np.random.default_rng(seed)
    fan_in = {}
    for name, (offset, shape) in layout.slots.items():
        layer, kind = name.rsplit(".", 1)
        view = vector[offset:offset + math.prod(shape)]
        if kind == "weight":
            fan_in[layer] = math.prod(shape[1:])
        if kind in ("weight", "bias"):
            bound = 1.0 / math.sqrt(fan_in[layer])
            view[:] = rng.uniform(-bound, bound, view.size).astype(np.float32)
        elif kind in ("gamma", "running_var"):
            view[:] = 1.0
        else:
            view[:] = 0.0


class Network:
    """A compiled model: `graph`, `params`, `forward(x)` and `loss_and_grads(x, y)`."""

    def __init__(self, parsed: nx.DiGraph, seed: int = 0, optimize: bool = True,
                 budget: memory.Budget | None = None):
        """`budget`: the batch and the memory limit the caller will run at, checked before
        anything is allocated (a ModelError naming the largest tensors when it does not fit)."""
        self.parsed = parsed
        if optimize:
            self.graph, self.passes = optimized(parsed, "inference")
            self.training_graph, self.training_passes = optimized(parsed, "training")
        else:
            self.graph, self.passes = parsed, []
            self.training_graph, self.training_passes = parsed, []
        self.layout = ParamLayout.of(parsed)
        self.lowered: Lowered = lower(self.graph, self.training_graph, self.layout)
        self.memory_limit = memory.default_limit() if budget is None else budget.limit
        if budget is not None:
            memory.check(self.memory(budget.mode, budget.optimizer), budget)
        self.vector = allocate_parameters(self.layout, parsed, self.memory_limit)
        self.params = Params(self.vector, self.layout)
        initialize(self.vector, self.layout, seed)
        self.grad_vector = np.zeros(self.layout.trainable, np.float32)
        self.grads = Params(self.grad_vector, _trainable_only(self.layout))
        self.dropout_rng = np.random.default_rng(seed + 1)
        self.inference_batch = memory.EVAL_BATCH  # the batch whole data sets are run through forward at
        self.forward_group = memory.forward_group(self.memory(), self.graph)  # images a lane's forward call takes at a time (None: all)
        # Per-channel (mean, std) float32 arrays subtracted from and dividing every input image, in
        # training and inference alike; set by the trainer or loaded with the weights (train/augment.py).
        self.normalization: tuple[np.ndarray, np.ndarray] | None = None
        self.lane_grads: list[np.ndarray] = []  # gradient buffers of lanes 1, 2, ... (threads)
        self.forked: forked_lanes.ForkedLanes | None = None  # the lanes' processes, when they are processes
        self.fork_failed = False  # forking them failed once: the lanes stay threads
        # What a forward that runs whole on one lane keeps from call to call (the generated forward's
        # `memo`: Winograd's transformed filters, checked against P at every call): one per thread,
        # so that calls from several threads run side by side and give the same bits.
        self.memos = threading.local()
        keep_freed_memory()
        started = time.perf_counter()
        self.module = load_module(self.lowered.source)
        self.load_seconds = time.perf_counter() - started
        self.compile_seconds = None
        self.mode_calls: dict[str, list] = {}  # compile()'s kernel calls by mode, for the lanes' processes
        self.model_text: str | None = None  # the model file's text, when compiled from one (checkpoints hash it)

    def memory(self, mode: str = "inference", optimizer: str = "sgd") -> memory.Estimate:
        """What one call of forward ("inference") or loss_and_grads ("training") allocates."""
        g = self.graph if mode == "inference" else self.training_graph
        return memory.estimate(g, self.layout, mode, optimizer)

    @property
    def name(self) -> str:
        return self.parsed.graph["name"]

    @property
    def input_shape(self) -> tuple:
        return self.lowered.input_shape

    @property
    def label_shape(self) -> tuple:
        """The shape of one image's label: () for a class per image, (H, W) for a class per pixel
        (a loss on a C x H x W output, whose channels are the classes)."""
        return tuple(self.lowered.output_shape[1:])

    @property
    def source(self) -> str:
        return self.lowered.source

    def compile(self, training: bool = True) -> int:
        """Compiles every kernel that `forward` calls and, with `training` and a loss,
        `loss_and_grads`, unless Numba's cache holds it; returns how many were compiled (the
        seconds it took are in `compile_seconds`). Without this, the first call compiles what
        it needs, one kernel after the other."""
        started = time.perf_counter()
        training = training and bool(self.parsed.graph["loss"])
        mode = "training" if training else "inference"
        # The dry run allocates (without touching) the arrays of one image.
        memory.check(self.memory(mode), memory.Budget(self.memory_limit or memory.ADDRESSABLE, 1, mode))
        x = np.ones((1,) + self.input_shape, np.float32)
        probes = [("forward", (x, self.vector))]
        if training:
            y = np.zeros((1,) + self.label_shape, np.int64)
            probes.append(("loss_and_grads", (x, y, self.vector, self.grad_vector, 0)))
        try:
            self.kernel_calls = kernel_calls(self.module, probes)
        except MemoryError:
            raise ModelError(f"{self.name}: the arrays of one image do not fit in memory",
                             hint="make the largest layers smaller") from None
        compiled = compile_all(self.kernel_calls)
        self.compile_seconds = time.perf_counter() - started
        self.mode_calls[mode] = self.kernel_calls
        return compiled

    def check_input(self, x) -> np.ndarray:
        x = np.asarray(x)
        expected = "N x " + "x".join(map(str, self.input_shape))
        if x.ndim != 4 or x.shape[1:] != self.input_shape:
            raise InputError(f"{self.name} takes float32 images of shape {expected}, not {'x'.join(map(str, x.shape))}")
        if x.dtype != np.float32:
            if not np.issubdtype(x.dtype, np.number):
                raise InputError(f"{self.name} takes float32 images, not {x.dtype}")
            x = x.astype(np.float32)
        if x.shape[0] == 0:
            raise InputError(f"{self.name} needs at least one image")
        return self.normalized(np.ascontiguousarray(x))

    def normalized(self, x: np.ndarray) -> np.ndarray:
        """x itself without a normalization, else (x - mean) / std per channel in a new array."""
        if self.normalization is None:
            return x
        mean, std = self.normalization
        out = x - mean[None, :, None, None]
        out /= std[None, :, None, None]
        return out

    def forward(self, x) -> np.ndarray:
        """Inference: batchnorm uses running statistics, dropout passes values through. Up to
        EVAL_BATCH images run on the lanes' processes when a training step's would, more on threads;
        a forward that runs whole on one lane (a batch too small to cut, batch 1 say, or a single
        lane) runs here, with this thread's memo (see __init__)."""
        x = self.check_input(x)
        threads = lanes.lane_count()
        parts = lanes.slices(len(x), threads)
        group = self.forward_group or 0
        if len(x) <= memory.EVAL_BATCH and self._on_processes(parts):  # larger: no copy of x into the lanes' memory
            with forked_lanes.one_step:
                pool = self._lanes_pool(len(parts), len(x), steps=False)
                if pool is not None:
                    return pool.forward(x, parts, self.vector, group)
        # one lane: this thread's memo; several: none (their calls would share it)
        forward = partial(self.module.forward, memo=self.memo) if len(parts) == 1 else self.module.forward
        outputs = lanes.run(lanes.in_groups, [(forward, x[part], self.vector, group) for part in parts], threads)
        return outputs[0] if len(outputs) == 1 else np.concatenate(outputs)

    @property
    def memo(self) -> dict:
        """This thread's memo of the generated forward (see __init__), made on first use."""
        if not hasattr(self.memos, "memo"):
            self.memos.memo = {}
        return self.memos.memo

    def _lanes_pool(self, lanes_needed: int, images: int, steps: bool) -> forked_lanes.ForkedLanes | None:
        """The lanes' processes (cnnc/forked_lanes.py) for this many lanes and images, and for
        training steps if `steps` (else forwards only); None when they cannot be forked here (the
        work then runs on threads). Called holding `one_step`. They are forked when there are
        none yet for this work, for at least EVAL_BATCH images (the pages a call does not touch
        cost nothing), once every kernel they call is loaded (the children inherit it); a
        smaller call leaves some of them idle."""
        pool = self.forked
        if (pool is None or pool.broken or pool.count < lanes_needed or pool.capacity < images
                or (steps and not pool.steps) or not pool.alive()):
            count, capacity = lanes_needed, max(images, memory.EVAL_BATCH)
            if pool is not None:  # the next pool serves all the work of either
                count, capacity, steps = max(count, pool.count), max(capacity, pool.capacity), steps or pool.steps
                pool.close()
            self.forked = pool = None  # collected before the next is forked: its memory is freed
            load_all(self._calls("training" if steps and self.parsed.graph["loss"] else "inference"))
            lanes.set_blas_threads(1)  # before the fork: the children's too
            shapes = (d["shape"] for _, d in self.training_graph.nodes(data=True) if d.get("shape"))
            widest = max((shape[0] for shape in shapes), default=1)
            try:
                self.forked = pool = forked_lanes.ForkedLanes(
                    self.module, count, capacity, self.input_shape, self.label_shape, self.lowered.output_shape,
                    self.vector.size, self.grad_vector.size if steps else None, 2 * widest)  # batchnorm: 2 x channels
            except OSError as error:  # no more processes or memory for them: threads it is
                warn(f"running on threads: the lanes' processes could not be started ({error.strerror})")
                self.fork_failed = True
                return None
        lanes.set_blas_threads(1)
        return pool

    def _calls(self, mode: str) -> list:
        """The kernel calls of `mode` ("inference": forward's; "training": loss_and_grads' too),
        compiled first when compile() has not listed them yet."""
        if mode not in self.mode_calls and "training" not in self.mode_calls:
            self.compile(training=mode == "training")
        return self.mode_calls.get(mode) or self.mode_calls["training"]

    def _on_processes(self, parts: list[slice]) -> bool:
        """The lanes run as processes: not under MPI (some transports object to a fork), nor after
        a fork failed here."""
        return (len(parts) > 1 and not self.fork_failed and forked_lanes.available(len(parts))
                and launched_size() <= 1)  # in this order: a batch-1 forward pays for one comparison

    def loss_and_grads(self, x, y) -> tuple[float, dict]:
        """Training-mode loss averaged over the batch, and the gradient of every trainable parameter.

        Updates batchnorm running statistics, as a training step's forward pass does. The
        gradients are views into `grad_vector`, overwritten by the next call.
        """
        loss, _ = self.loss_grads_correct(x, y)
        return loss, self.grads

    def loss_grads_correct(self, x, y, total: int | None = None, start: int = 0,
                           across=None, smoothing: float = 0.0) -> tuple[float, int]:
        """loss_and_grads for the training loop: the loss and how many images it got right.

        For a step shared by several processes, x is this process's slice of it: `total` is the
        images of the whole step, `start` the index of x's first image in it, and `across` the
        Replicas of the processes (cnnc/distributed.py), over which batchnorm statistics, the
        gradient vector, the loss and the count are summed; every process ends with the step's.
        A process's slice may then be empty. `smoothing` is the loss's label smoothing, in [0, 1)."""
        if not self.parsed.graph["loss"]:
            raise InputError(f"{self.name} has no `loss` statement; add `loss cross_entropy` to train it")
        x = self.check_input(x) if across is None or len(x) else self.normalized(np.ascontiguousarray(x, np.float32))
        y = np.ascontiguousarray(np.asarray(y), dtype=np.int64)
        classes = self.lowered.output_shape[0]
        if y.shape != (x.shape[0],) + self.label_shape:
            if self.label_shape:
                masks = "x".join(map(str, (x.shape[0],) + self.label_shape))
                raise InputError(f"labels must be {masks} masks (a class per pixel of the output), not shape {y.shape}")
            raise InputError(f"labels must be a vector of {x.shape[0]} integers, not shape {y.shape}")
        if y.size and (y.min() < 0 or y.max() >= classes):
            raise InputError(f"labels must lie in 0..{classes - 1}; got {y.min()}..{y.max()}")
        n, threads = len(x), lanes.lane_count()
        total = n if total is None else total
        parts = lanes.slices(n, threads)
        # One seed for the whole step: each image's dropout mask is keyed by its index in the step,
        # so the masks do not depend on how many lanes or processes share the step.
        seed = int(self.dropout_rng.integers(0, 2**31 - 1))
        forked = None
        if across is None and self._on_processes(parts):
            with forked_lanes.one_step:
                pool = self._lanes_pool(len(parts), n, steps=True)
                if pool is not None:
                    forked = pool.step(x, y, parts, self.vector, self.grad_vector, seed, total, start, float(smoothing))
        if forked is not None:
            results, grads = forked
        else:
            while len(self.lane_grads) < len(parts) - 1:
                self.lane_grads.append(np.empty_like(self.grad_vector))
            grads = [self.grad_vector] + self.lane_grads[:len(parts) - 1]
            calls = [(x[part], y[part], self.vector, g, seed, total, start + part.start, float(smoothing))
                     for part, g in zip(parts, grads)]
            results = lanes.run(self.module.loss_and_grads, calls, threads, replicas=True, across=across)
        for g in grads[1:]:  # each lane's loss and gradients are its share of the step's
            self.grad_vector += g
        loss, correct = float(sum(loss for loss, _ in results)), sum(int(c) for _, c in results)
        if across is not None:
            across.sum(self.grad_vector)
            both = np.array([loss, correct], np.float64)
            across.sum(both)
            loss, correct = float(both[0]), int(round(both[1]))
        return loss, correct


    # Training and inference as Keras has them; the logic is in cnnc/train/fit.py, above this module.

    def fit(self, x, y, epochs: int | None = None, batch: int | None = None, lr: float | None = None,
            validation_data=None, validation_split: float | None = None, verbose: bool = True,
            out=None, **recipe_keys):
        """Train on images x and labels y as `cnnc train` does; returns the History (rows per epoch).
        Every key of the `train` line is a keyword (momentum=0.9, schedule="cosine", ...)."""
        from .train.fit import fit

        return fit(self, x, y, epochs=epochs, batch=batch, lr=lr, validation_data=validation_data,
                   validation_split=validation_split, verbose=verbose, out=out, **recipe_keys)

    def evaluate(self, x, y, batch: int | None = None):
        """Inference's (loss, accuracy) on images x with labels y."""
        from .train.fit import evaluate

        return evaluate(self, x, y, batch)

    def predict(self, x, batch: int | None = None) -> np.ndarray:
        """Class probabilities of images x, computed `batch` images at a time."""
        from .train.fit import predict

        return predict(self, x, batch)

    def save(self, path) -> None:
        """The weights as an .npz keyed by parameter name (what `cnnc train --out` writes)."""
        from .train.fit import save

        save(self, path)

    def load(self, path) -> None:
        """Weights from `save` or `cnnc train`; a DataError when names or shapes are not the model's."""
        from .train.fit import load

        load(self, path)


def allocate_parameters(layout: ParamLayout, g: nx.DiGraph, limit: int | None) -> np.ndarray:
    """The flat parameter vector; a ModelError at the largest parameter's layer when it cannot be
    (more than `limit` bytes: zeros would be granted lazily, then initializing them would bring
    the machine to its knees)."""
    if limit is None or layout.size * 4 <= limit:
        try:
            return np.zeros(layout.size, np.float32)
        except (MemoryError, ValueError):  # ValueError: more elements than an array can have
            pass
    biggest = max(layout.slots, key=lambda n: math.prod(layout.slots[n][1]))
    loc = g.nodes[biggest.rsplit(".", 1)[0]]["loc"]
    raise ModelError(f"the model's {layout.size:,} parameters ({memory.human(layout.size * 4)}) do not fit "
                     f"in memory; the largest is {biggest}", loc, "make the layers smaller")


def _trainable_only(layout: ParamLayout) -> ParamLayout:
    shapes = {n: s for n, (o, s) in layout.slots.items() if n.rsplit(".", 1)[1] not in BUFFER_KINDS}
    return ParamLayout(shapes)


def compile(path, seed: int = 0, optimize: bool = True) -> Network:
    """Compiles a model file into a Network (parameters initialized from `seed`)."""
    return compile_source(read_model(path), seed, optimize, str(path))


def compile_source(text: str | bytes, seed: int = 0, optimize: bool = True, file: str = "<model>") -> Network:
    net = Network(check_source(text, file), seed, optimize)
    net.model_text = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
    return net
