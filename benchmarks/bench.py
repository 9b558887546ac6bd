"""cnnc beside PyTorch (CPU, eager) and ONNX Runtime on the examples, in one run, with the goals of issues 10 and 12.

    python benchmarks/bench.py [--models lenet5 vgg_small resnet_tiny resnet20 mobilenet_v1] [--quick] [--write]

For each model, with the same thread count (2) on every side, cnnc in this process, PyTorch in
a worker process of its own (benchmarks/torch_worker.py) and, for inference, ONNX Runtime in
another (benchmarks/onnx_worker.py, running the model `cnnc export` writes), each as its users
run it:

- batch-1 latency: `net.forward(x)` vs the eval-mode module under `torch.inference_mode()`;
- batch-256 inference throughput, the same calls on 256 images;
- batch-64 training step: `net.loss_and_grads` + cnnc's `SGD.step` on the trainable part of
  `net.vector`, vs `zero_grad(set_to_none=True)`, forward, `loss.backward()`, `opt.step()`;
- batch-64 `loss_and_grads` alone vs PyTorch's forward + backward.

Each figure is the median time of one call; calls run in alternating blocks (cnnc for ~250 ms,
then PyTorch for ~250 ms, ...; the first call of each block is not counted; one process waits
while the others run) after a warm-up,
until the measurement's time budget is spent, so that load from other processes on a shared
machine hits both sides alike. The PyTorch
model is built from cnnc's parsed graph (benchmarks/torch_model.py) with cnnc's initial
parameters, batchnorm folded into the conv for inference, and runs every case twice, with
its weights in NCHW and in channels_last layout; the faster of the two is the one compared.
The machine's float32 matmul rate (numpy, 2048 x 2048, 2 threads) is measured in the same run,
and each model's training step is reported as a fraction of it. Then, in subprocesses: the cold compile time of `cnnc compile MODEL` (fresh, empty
CNNC_CACHE_DIR and NUMBA_CACHE_DIR), the cached one (the same command again), and the peak RSS
of 20 training steps at batch 64 for each framework (benchmarks/peak_memory.py; cnnc's lanes'
processes included).

Prints Markdown tables; `--write` replaces the results section of docs/performance.md (the
text between the bench markers) with them, the machine, the date and the command.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

THREADS = 2
os.environ.setdefault("CNNC_THREADS", str(THREADS))  # cnnc's lanes (cnnc/lanes.py)

import numba  # noqa: E402
import numpy as np  # noqa: E402
import scipy.linalg  # noqa: E402,F401  (loads the OpenBLAS that Numba's np.dot calls, so it can be limited)
import threadpoolctl  # noqa: E402

import cnnc  # noqa: E402
from cnnc import forked_lanes  # noqa: E402
from cnnc.lanes import lane_count  # noqa: E402
from cnnc.summary import summary_rows  # noqa: E402
from cnnc.train.optim import SGD  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
import onnx_worker  # noqa: E402
import torch_worker  # noqa: E402
from timing import BLOCK_SECONDS, run_block  # noqa: E402
from torch_worker import TORCH_FORMATS  # noqa: E402
from worker import Worker  # noqa: E402

from cnnc.export.onnx import to_onnx  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "performance.md"
BEGIN = "<!-- bench:begin: rewritten by `python benchmarks/bench.py --write`; edit outside the markers -->"
END = "<!-- bench:end -->"
MODELS = ("lenet5", "vgg_small", "resnet_tiny", "resnet20", "mobilenet_v1")
LR, MOMENTUM = 0.001, 0.9  # small, so that random data cannot drive the weights to inf/NaN
MEMORY_STEPS, MEMORY_BATCH = 20, 64


@dataclass(frozen=True)
class Case:
    key: str
    title: str
    batch: int
    flops_factor: int  # FLOPs of a call = factor x forward FLOPs per image x batch


CASES = (
    Case("latency", "batch-1 latency", 1, 1),
    Case("inference", "batch-256 inference", 256, 1),
    Case("train_step", "batch-64 training step", 64, 3),
    Case("loss_and_grads", "batch-64 loss_and_grads / fwd+bwd", 64, 3),
)
CASE_TITLES = {case.key: case.title for case in CASES}


@dataclass(frozen=True)
class Timing:
    model: str
    case: Case
    cnnc_s: float  # median seconds per call
    torch_by_format: dict  # PyTorch memory format -> median seconds per call
    flops_per_image: int
    onnx_s: float | None = None  # ONNX Runtime's median seconds per call (inference cases only)

    @property
    def torch_format(self) -> str:
        """The faster of PyTorch's memory formats for this case: the one the comparison uses."""
        return min(self.torch_by_format, key=self.torch_by_format.get)

    @property
    def torch_s(self) -> float:
        return self.torch_by_format[self.torch_format]

    def images_per_s(self, seconds: float) -> float:
        return self.case.batch / seconds

    def gflops(self, seconds: float) -> float:
        return self.case.flops_factor * self.flops_per_image * self.images_per_s(seconds) / 1e9

    @property
    def ratio(self) -> float:
        """cnnc speed / PyTorch speed: above 1 means cnnc is faster."""
        return self.torch_s / self.cnnc_s

    @property
    def onnx_ratio(self) -> float | None:
        """cnnc speed / ONNX Runtime speed, where it ran."""
        return None if self.onnx_s is None else self.onnx_s / self.cnnc_s


@dataclass(frozen=True)
class CompileTime:
    model: str
    cold_s: float  # wall clock of the whole command
    cached_s: float
    cold_kernels_s: float | None  # what the command reports for compiling the kernels
    cached_kernels_s: float | None
    front_end_s: float  # wall clock of `cnnc compile MODEL --emit json`: start-up and front end, no kernels


@dataclass(frozen=True)
class Memory:
    model: str
    cnnc: dict  # {"setup_mib", "peak_mib"}
    torch: dict


# ---------------------------------------------------------------------------------------------
# Timing


def race(blocks: list, budget: float, min_calls: int = 5) -> list[float]:
    """Median seconds per call of each contender, timed in alternating blocks after a warm-up;
    a contender is a function(seconds) -> the times of the calls of one block."""
    for block in blocks:
        block(min(0.5, budget / 4))
    times = [[] for _ in blocks]
    deadline = time.perf_counter() + budget
    while time.perf_counter() < deadline or min(map(len, times)) < min_calls:
        for block, t in zip(blocks, times):
            t += block(BLOCK_SECONDS)
    return [statistics.median(t) for t in times]


def local_block(fn):
    def block(seconds):
        times = []
        run_block(fn, times, seconds)
        return times
    return block


@dataclass
class Batches:
    """The same random images and labels for both frameworks (PyTorch gets `torch.from_numpy` views)."""

    x: dict  # batch size -> float32 N x C x H x W
    y: np.ndarray

    @classmethod
    def make(cls, input_shape, classes: int, sizes=(1, 64, 256)):
        rng = np.random.default_rng(0)
        x = {n: rng.standard_normal((n, *input_shape), dtype=np.float32) for n in sizes}
        return cls(x, rng.integers(0, classes, 64))


def cnnc_calls(net: cnnc.Network, data: Batches) -> dict:
    opt = SGD(lr=LR, momentum=MOMENTUM)
    trainable = net.vector[: net.layout.trainable]
    x64, y64 = data.x[64], data.y

    def train_step():
        net.loss_and_grads(x64, y64)
        opt.step(trainable, net.grad_vector)

    return {
        "latency": lambda: net.forward(data.x[1]),
        "inference": lambda: net.forward(data.x[256]),
        "train_step": train_step,
        "loss_and_grads": lambda: net.loss_and_grads(x64, y64),
    }


def forward_flops(net: cnnc.Network) -> int:
    return sum(row[4] for row in summary_rows(net.parsed, net.graph))


ONNX_CASES = ("latency", "inference")


def time_model(name: str, budget: float, torch: Worker, onnx: Worker) -> list[Timing]:
    """Every case of one model, cnnc (here), PyTorch and ONNX Runtime (worker processes) raced
    against each other."""
    net = cnnc.compile(ROOT / "examples" / f"{name}.cnn", seed=0)
    net.compile()
    data = Batches.make(net.input_shape, net.lowered.output_shape[0])
    params = {k: np.array(v) for k, v in net.params.items()}
    torch.load(net.parsed, params, {"x": data.x, "y": data.y}, LR, MOMENTUM)
    onnx.load(to_onnx(net.parsed, params).SerializeToString(), {"x": data.x})
    ours = cnnc_calls(net, data)
    flops = forward_flops(net)
    timings = []
    for case in CASES:
        theirs = [lambda s, fmt=fmt, key=case.key: torch.block(key, fmt, s) for fmt in TORCH_FORMATS]
        if case.key in ONNX_CASES:
            theirs.append(lambda s, key=case.key: onnx.block(key, "default", s))
        cnnc_s, *others = race([local_block(ours[case.key]), *theirs], budget)
        torch_s, onnx_s = others[:len(TORCH_FORMATS)], (others[len(TORCH_FORMATS):] or [None])[0]
        timings.append(Timing(name, case, cnnc_s, dict(zip(TORCH_FORMATS, torch_s)), flops, onnx_s))
        print(f"  {name:12s} {case.title:34s} cnnc {cnnc_s * 1e3:9.3f} ms  " + "  ".join(
              f"torch {fmt} {s * 1e3:9.3f} ms" for fmt, s in zip(TORCH_FORMATS, torch_s)) +
              (f"  onnxruntime {onnx_s * 1e3:9.3f} ms" if onnx_s else "") +
              f"  ratio {timings[-1].ratio:5.2f}", file=sys.stderr, flush=True)
    return timings


def matmul_rate(threads: int = THREADS, size: int = 2048) -> float:
    """GFLOP/s of numpy's float32 size x size product on `threads` threads: the best of 10."""
    a = np.random.default_rng(0).standard_normal((size, size), dtype=np.float32)
    with threadpoolctl.threadpool_limits(threads):
        best = min(timed(lambda: a @ a) for _ in range(10))
    return 2 * size ** 3 / best / 1e9


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# ---------------------------------------------------------------------------------------------
# Subprocesses: compile time and memory


def cnnc_command() -> list[str]:
    """The installed `cnnc` script of this Python (the shim on PATH adds its own start-up time)."""
    script = Path(sys.executable).parent / "cnnc"
    return [str(script)] if script.exists() else [sys.executable, "-c", "import sys, cnnc.cli; sys.exit(cnnc.cli.main())"]


def timed_compile(model: Path, env: dict, *options: str) -> tuple[float, float | None]:
    """Wall seconds of `cnnc compile MODEL [options]`, and the kernel seconds it reports."""
    start = time.perf_counter()
    done = subprocess.run([*cnnc_command(), "compile", str(model), *options], env=env, capture_output=True,
                          text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"cnnc compile {model} failed:\n{done.stderr}")
    reported = re.search(r"\) in ([\d.]+) s; model code", done.stdout)
    return seconds, float(reported.group(1)) if reported else None


COMPILE_RUNS = 3


def compile_times(name: str) -> CompileTime:
    """Cold (empty caches) then cached compile of one example, each the median of COMPILE_RUNS
    runs (a fresh temporary cache folder for every cold one)."""
    model = ROOT / "examples" / f"{name}.cnn"
    colds, cacheds = [], []
    for _ in range(COMPILE_RUNS):
        with tempfile.TemporaryDirectory(prefix="cnnc-bench-") as tmp:
            env = {**os.environ, "CNNC_CACHE_DIR": f"{tmp}/cnnc", "NUMBA_CACHE_DIR": f"{tmp}/numba"}
            colds.append(timed_compile(model, env))
            cacheds.append(timed_compile(model, env))
            front_end, _ = timed_compile(model, env, "--emit", "json")
    (cold, cold_kernels), (cached, cached_kernels) = (sorted(runs)[len(runs) // 2] for runs in (colds, cacheds))
    print(f"  {name:12s} compile cold {cold:.1f} s, cached {cached:.2f} s, front end only {front_end:.2f} s "
          f"(cold runs: {', '.join(f'{c:.1f}' for c, _ in colds)})", file=sys.stderr, flush=True)
    return CompileTime(name, cold, cached, cold_kernels, cached_kernels, front_end)


def training_memory(framework: str, name: str) -> dict:
    script = Path(__file__).parent / "peak_memory.py"
    command = [sys.executable, str(script), framework, str(ROOT / "examples" / f"{name}.cnn"),
               "--steps", str(MEMORY_STEPS), "--batch", str(MEMORY_BATCH)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def memory(name: str) -> Memory:
    result = Memory(name, training_memory("cnnc", name), training_memory("torch", name))
    print(f"  {name:12s} peak RSS cnnc {result.cnnc['peak_mib']:.0f} MiB, torch {result.torch['peak_mib']:.0f} MiB",
          file=sys.stderr, flush=True)
    return result


# ---------------------------------------------------------------------------------------------
# The machine


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    except OSError:
        return platform.processor() or "unknown"
    found = re.search(r"^Model name:\s*(.+)$", out, re.M)
    return found.group(1).strip() if found else "unknown"


def forced_blas() -> str | None:
    """OPENBLAS_CORETYPE, when set: it makes OpenBLAS run older kernels than the CPU has (this
    sandbox sets Haswell, AVX2, on AVX-512 machines: a quarter of the matmul rate)."""
    return os.environ.get("OPENBLAS_CORETYPE")


def blas_info() -> list[str]:
    return [f"{lib['internal_api']} {lib['version']} ({lib.get('architecture', '?')}, {lib['num_threads']} threads, "
            f"{Path(lib['filepath']).name})" for lib in threadpoolctl.threadpool_info() if lib["user_api"] == "blas"]


def tree_state() -> str:
    """The commit and how many files differ from it, so a figure can be tied to the kernels it ran."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    head = git("rev-parse", "--short", "HEAD") or "unknown"
    changed = [line for line in git("status", "--porcelain").splitlines() if line]
    return f"{head}" + (f" with {len(changed)} uncommitted changed/new files" if changed else "")


def machine(torch_info: dict, onnx_info: dict, matmul_gflops: float) -> list[str]:
    return [
        f"CPU: {cpu_model()}, {os.cpu_count()} cores; threads: PyTorch {torch_info['threads']} and ONNX Runtime "
        f"{onnx_info['threads']} intra-op (each its own process), cnnc {lane_count()} lanes (CNNC_THREADS; "
        f"{'processes' if forked_lanes.available(lane_count()) else 'threads'}, cnnc/forked_lanes.py) with a "
        "one-thread BLAS each",
        f"float32 matmul rate (numpy, 2048 x 2048, {THREADS} threads, best of 10): {matmul_gflops:.0f} GFLOP/s; "
        "the percentages beside cnnc's GFLOP/s are of it",
        f"Python {platform.python_version()}, numpy {np.__version__}, numba {numba.__version__}, "
        f"torch {torch_info['torch']}, onnxruntime {onnx_info['onnxruntime']}, cnnc {cnnc.__version__} at {tree_state()}",
        "BLAS of cnnc's process (threadpoolctl): " + "; ".join(blas_info())
        + (f" -- OPENBLAS_CORETYPE={forced_blas()} forces these kernels: run with `env -u OPENBLAS_CORETYPE "
           "-u OPENBLAS_L2_SIZE` for the CPU's own" if forced_blas() else ""),
    ]


# ---------------------------------------------------------------------------------------------
# Tables and goals


def ms(seconds: float) -> str:
    value = seconds * 1e3
    return f"{value:.3f}" if value < 1 else f"{value:.2f}" if value < 100 else f"{value:.0f}"


def speed_table(timings: list[Timing], matmul_gflops: float) -> list[str]:
    lines = ["| model | measurement | cnnc ms | cnnc img/s | PyTorch ms | PyTorch layout | cnnc/PyTorch "
             "| ONNX Runtime ms | cnnc/ONNX Runtime | cnnc GFLOP/s (of matmul) | PyTorch GFLOP/s |",
             "|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|"]
    for t in timings:
        onnx = f"{ms(t.onnx_s)} | **{t.onnx_ratio:.2f}x**" if t.onnx_s else "- | -"
        lines.append(f"| {t.model} | {t.case.title} | {ms(t.cnnc_s)} | {t.images_per_s(t.cnnc_s):,.0f} "
                     f"| {ms(t.torch_s)} | {t.torch_format} | **{t.ratio:.2f}x** | {onnx} "
                     f"| {t.gflops(t.cnnc_s):.1f} ({100 * t.gflops(t.cnnc_s) / matmul_gflops:.0f} %) "
                     f"| {t.gflops(t.torch_s):.1f} |")
    return lines


def seconds_or_dash(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def compile_memory_table(compiles: list[CompileTime], memories: list[Memory]) -> list[str]:
    lines = ["| model | cold compile s (kernels) | cached compile s (kernels) | front end only s "
             "| peak RSS cnnc MiB (after setup) | peak RSS PyTorch MiB (after setup) |",
             "|---|---:|---:|---:|---:|---:|"]
    mem = {m.model: m for m in memories}
    for c in compiles:
        m = mem.get(c.model)
        rss = (f"{m.cnnc['peak_mib']:.0f} ({m.cnnc['setup_mib']:.0f}) | {m.torch['peak_mib']:.0f} "
               f"({m.torch['setup_mib']:.0f})") if m else "- | -"
        lines.append(f"| {c.model} | {c.cold_s:.1f} ({seconds_or_dash(c.cold_kernels_s)}) "
                     f"| {c.cached_s:.2f} ({seconds_or_dash(c.cached_kernels_s)}) | {c.front_end_s:.2f} | {rss} |")
    return lines


SPEED_GOALS = (  # (model, case key, minimum cnnc/PyTorch ratio)
    ("resnet20", "train_step", 1.0), ("resnet20", "inference", 1.2), ("resnet20", "latency", 1.0),
    ("vgg_small", "train_step", 1.0), ("vgg_small", "inference", 1.2), ("vgg_small", "latency", 1.0),
    ("resnet_tiny", "train_step", 1.0),
    ("lenet5", "latency", 3.0), ("lenet5", "train_step", 1.2),
    ("mobilenet_v1", "train_step", 1.0), ("mobilenet_v1", "inference", 1.5),  # issue 12: depthwise convolutions
)
ONNX_GOALS = (  # (model, case key, minimum cnnc/ONNX Runtime ratio)
    ("vgg_small", "inference", 0.8), ("resnet20", "inference", 0.8),
    ("vgg_small", "latency", 0.5), ("resnet20", "latency", 0.5),
)
COLD_LIMIT_S, CACHED_LIMIT_S = 20.0, 2.0


def goal_rows(timings: list[Timing], compiles: list[CompileTime]) -> list[tuple[str, str, bool | None]]:
    """(goal, measured, met) for every goal; met is None when its model was not measured."""
    by_key = {(t.model, t.case.key): t for t in timings}
    rows = []
    for peer, goals, ratio in (("PyTorch", SPEED_GOALS, "ratio"), ("ONNX Runtime", ONNX_GOALS, "onnx_ratio")):
        for model, key, minimum in goals:
            t = by_key.get((model, key))
            value = getattr(t, ratio) if t else None
            goal = f"{model} {CASE_TITLES[key]} >= {minimum:g}x {peer}"
            rows.append((goal, f"{value:.2f}x" if value else "not measured", value >= minimum if value else None))
    for c in compiles:
        rows.append((f"{c.model} cold compile < {COLD_LIMIT_S:.0f} s", f"{c.cold_s:.1f} s", c.cold_s < COLD_LIMIT_S))
        rows.append((f"{c.model} cached compile < {CACHED_LIMIT_S:.0f} s", f"{c.cached_s:.2f} s",
                     c.cached_s < CACHED_LIMIT_S))
    return rows


def goals_table(rows) -> list[str]:
    verdict = {True: "met", False: "**not met**", None: "not measured"}
    return ["| goal (issues 10, 12) | measured | |", "|---|---:|---|",
            *(f"| {goal} | {measured} | {verdict[met]} |" for goal, measured, met in rows)]


def report(timings, compiles, memories, context: dict) -> str:
    lines = [
        "## Results",
        "",
        f"From one run of `{context['command']}` on {context['date']} "
        f"({context['budget']:g} s per measurement; load average {context['load_before']} before, "
        f"{context['load_after']} after; the run took {context['elapsed']:.0f} s). "
        "Each time is the median of one call; cnnc, PyTorch and ONNX Runtime (each of these two in a process of its "
        "own) ran in alternating ~250 ms blocks (the first call of a block not counted), so compare figures within "
        "this run only. PyTorch ran every case with its weights "
        "in both NCHW and channels_last layout (inputs NCHW, as cnnc gets them) and is credited with "
        "the faster; ONNX Runtime ran the model `cnnc export` writes (inference only). cnnc/peer above 1 means "
        "cnnc is faster. "
        "GFLOP/s counts the forward FLOPs of `cnnc compile` (x3 for training).",
        "",
        *(f"- {line}" for line in context["machine"]),
        "",
        *speed_table(timings, context["matmul_gflops"]),
        "",
        "Compile: the median of 3 runs of `cnnc compile MODEL` (wall clock, a fresh process each), cold = empty `CNNC_CACHE_DIR` "
        "and `NUMBA_CACHE_DIR`, cached = the same command again; in brackets the kernel time the "
        "command reports; front end only = `cnnc compile MODEL --emit json` (Python start-up, imports, "
        "parsing, shapes and passes, no kernels). The goals are judged on the whole command's wall clock. "
        f"Memory: the RSS high-water mark of a process doing {MEMORY_STEPS} training "
        f"steps at batch {MEMORY_BATCH} (benchmarks/peak_memory.py; for cnnc, with its lanes' processes: "
        "the larger of that mark and their summed proportional set sizes after a step), in brackets its "
        "RSS after imports, model and kernels, before the first step.",
        "",
        *compile_memory_table(compiles, memories),
        "",
        *goals_table(goal_rows(timings, compiles)),
    ]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# The page


def rewrite_page(section: str, page: Path = PAGE) -> None:
    """Replaces the text between the bench markers (or appends the markers and the section)."""
    text = page.read_text() if page.exists() else "# Performance\n"
    block = f"{BEGIN}\n{section}{END}"
    start, end = text.find(BEGIN), text.find(END)
    if start >= 0 and end > start:
        text = text[:start] + block + text[end + len(END):]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    page.write_text(text)


# ---------------------------------------------------------------------------------------------


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    p.add_argument("--quick", action="store_true", help="a short time budget per measurement (a smoke run)")
    p.add_argument("--budget", type=float, help="seconds per measurement, cnnc and both PyTorch layouts together "
                   "(default 8, or 1.5 with --quick)")
    p.add_argument("--write", action="store_true", help=f"rewrite the results section of {PAGE.relative_to(ROOT)}")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    budget = args.budget or (1.5 if args.quick else 8.0)
    started, load_before = time.perf_counter(), load_average()
    matmul_gflops = matmul_rate()
    print(f"  float32 matmul rate {matmul_gflops:.0f} GFLOP/s", file=sys.stderr, flush=True)
    torch, onnx = Worker(torch_worker.serve, THREADS), Worker(onnx_worker.serve, THREADS)
    try:
        timings = [t for name in args.models for t in time_model(name, budget, torch, onnx)]
        torch_info, onnx_info = torch.info(), onnx.info()
    finally:
        for worker in (torch, onnx):
            worker.close()
    compiles = [compile_times(name) for name in args.models]
    memories = [memory(name) for name in args.models]
    context = {
        "command": shlex.join(["python", os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]]),
        "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "budget": budget, "load_before": load_before, "load_after": load_average(),
        "elapsed": time.perf_counter() - started, "machine": machine(torch_info, onnx_info, matmul_gflops),
        "matmul_gflops": matmul_gflops,
    }
    section = report(timings, compiles, memories, context)
    print(section)
    if args.write:
        rewrite_page(section)
        print(f"wrote the results section of {PAGE}", file=sys.stderr)
    return 0


def load_average() -> str:
    return " / ".join(f"{v:.1f}" for v in os.getloadavg())


if __name__ == "__main__":
    sys.exit(main())
