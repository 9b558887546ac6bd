"""Where a model's time goes: every kernel call of `forward` or `loss_and_grads`, timed.

    python benchmarks/profile_calls.py MODEL.cnn [--batch 64] [--mode train|infer] [--repeat 5] [--lanes 1]

Replaces each kernel in the generated module's namespace with a timing wrapper, runs the
function `--repeat` times on random data (after one untimed call) and prints the time per
kernel and per call site (the layer), medians over the repeats. With more than one lane each
lane's calls are timed on its own thread, so the sums add the lanes' times up. `--cpu` times
the kernels in their thread's CPU time.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
import traceback
from collections import defaultdict
from pathlib import Path

import numpy as np


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", type=Path)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--mode", choices=("train", "infer"), default="train")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--lanes", type=int, default=1)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--cpu", action="store_true", help="time kernels in CPU time of their thread (less "
                   "disturbed by other processes on a busy machine; a multi-threaded BLAS is undercounted)")
    args = p.parse_args(argv)
    clock = time.thread_time if args.cpu else time.perf_counter
    os.environ["CNNC_THREADS"] = str(args.lanes)
    import cnnc

    net = cnnc.compile(args.model, seed=0)
    net.compile(training=args.mode == "train")
    module = net.module
    records: list[dict] = []
    current: dict = {}
    lock = threading.Lock()

    def wrap(name, fn):
        def timed(*a):
            site = traceback.extract_stack(limit=2)[0].lineno
            start = clock()
            result = fn(*a)
            seconds = clock() - start
            with lock:  # lanes time their calls on threads of their own
                current[(name, site)] = current.get((name, site), 0.0) + seconds
            return result
        return timed

    for name, value in list(vars(module).items()):
        if hasattr(value, "py_func"):
            setattr(module, name, wrap(name, value))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch, *net.input_shape), dtype=np.float32)
    y = rng.integers(0, net.lowered.output_shape[0], args.batch)
    call = (lambda: net.loss_and_grads(x, y)) if args.mode == "train" else (lambda: net.forward(x))
    call()
    walls = []
    for _ in range(args.repeat):
        current.clear()
        start = time.perf_counter()
        call()
        walls.append(time.perf_counter() - start)
        records.append(dict(current))
    lines = net.source.splitlines()
    by_kernel, by_site = defaultdict(list), defaultdict(list)
    for record in records:
        kernels = defaultdict(float)
        for (name, site), seconds in record.items():
            kernels[name] += seconds
            by_site[(name, site)].append(seconds)
        for name, seconds in kernels.items():
            by_kernel[name].append(seconds)
    wall = statistics.median(walls)
    print(f"{args.model.stem} {args.mode} batch {args.batch}, {args.lanes} lane(s): {wall * 1e3:.2f} ms a call (median of {args.repeat})")
    print("\nper kernel (ms, share of the call):")
    for name, times in sorted(by_kernel.items(), key=lambda kv: -statistics.median(kv[1])):
        t = statistics.median(times)
        print(f"  {name:28s} {t * 1e3:8.2f}  {100 * t / wall:5.1f} %")
    print(f"\nslowest {args.top} call sites:")
    for (name, site), times in sorted(by_site.items(), key=lambda kv: -statistics.median(kv[1]))[:args.top]:
        t = statistics.median(times)
        layer = next((lines[i].strip() for i in range(site - 1, 0, -1) if lines[i].strip().startswith("#")), "?")
        print(f"  {t * 1e3:8.2f} ms  {name:22s} {layer[:90]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
