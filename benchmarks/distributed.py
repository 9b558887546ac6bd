"""Training steps on one process with 2 lanes against 2 MPI processes with 1 lane each.

    python benchmarks/distributed.py [--models lenet5 vgg_small resnet20] [--steps 20] [--seconds 20]

For each model, at its `train` line's batch, runs timed training steps (loss_and_grads, the
all-reduces and the optimizer's update, after 2 untimed ones) in two launches: `CNNC_THREADS=2`
alone, and `mpiexec -n 2` with `CNNC_THREADS=1`. Prints images per second, the step's compute
time, and the share of the step spent in the gradient vector's all-reduce (which includes the
time a rank waits for the other to arrive). Writes nothing; the figures in docs/distributed.md
come from it. A worker is this file run with --worker MODEL.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["lenet5", "vgg_small", "resnet20"])
    p.add_argument("--steps", type=int, default=20, help="at most this many timed steps")
    p.add_argument("--seconds", type=float, default=20, help="... or as many as fit in this time")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker(args.worker, args.steps, args.seconds)
    mpiexec = str(Path(sys.executable).parent / "mpiexec")
    mpiexec = mpiexec if Path(mpiexec).exists() else shutil.which("mpiexec")
    me = [sys.executable, str(Path(__file__).resolve()), "--steps", str(args.steps), "--seconds", str(args.seconds)]
    alone = []
    print("| model | batch | launch | images/s | step ms | all-reduce ms (share) | gradient MB |")
    print("|---|---|---|---|---|---|---|")
    for model in args.models:
        for label, command, lanes in (("1 process x 2 lanes", me, 2), ("2 processes x 1 lane", [mpiexec, "-n", "2"] + me, 1)):
            env = dict(os.environ, CNNC_THREADS=str(lanes), PYTHONPATH=str(ROOT))
            out = subprocess.run(command + ["--worker", model], capture_output=True, text=True, env=env)
            if out.returncode:
                print(out.stderr, file=sys.stderr)
                return 1
            r = json.loads(out.stdout.strip().splitlines()[-1])
            share = f"{r['allreduce_ms']:.2f} ({r['allreduce_ms'] / r['step_ms']:.1%})" if r["ranks"] > 1 else "-"
            print(f"| {model} | {r['batch']} | {label} | {r['batch'] / r['step_ms'] * 1000:,.0f} | {r['step_ms']:.1f} | "
                  f"{share} | {r['gradient_bytes'] / 1e6:.2f} |", flush=True)
            if r["ranks"] == 1:
                alone.append(r)
    print("\n| model | link | nodes | compute ms | ring all-reduce ms | compute share | images/s |")
    print("|---|---|---|---|---|---|---|")
    for r in alone:
        print("\n".join(projection(r)))
    return 0


# The links of the projection: bandwidth in bit/s, and the per-message latency a ring step pays
# (TCP over 10 Gb Ethernet; RDMA over 100 Gb/s InfiniBand or RoCE).
LINKS = {"10 Gb/s": (10e9, 20e-6), "100 Gb/s": (100e9, 2e-6)}
NODES = (8, 64, 256)


def ring_allreduce_seconds(nbytes: int, nodes: int, bandwidth: float, latency: float) -> float:
    """A ring all-reduce: 2(N-1) steps, each moving 1/N of the vector: 2(N-1)/N x bytes / bandwidth,
    plus the 2(N-1) messages' latency."""
    return 2 * (nodes - 1) / nodes * nbytes * 8 / bandwidth + 2 * (nodes - 1) * latency


def projection(measured: dict) -> list[str]:
    """Markdown rows: the step on N nodes like this machine (1 process x 2 lanes each), with the
    model's batch per node (the global batch grows with N), from the measured compute per image."""
    per_image = measured["step_ms"] / 1000 / measured["batch"]
    compute = per_image * measured["batch"]
    rows = []
    for link, (bandwidth, latency) in LINKS.items():
        for n in NODES:
            ring = ring_allreduce_seconds(measured["gradient_bytes"], n, bandwidth, latency)
            step = compute + ring
            rows.append(f"| {measured['model']} | {link} | {n} | {compute * 1000:.1f} | {ring * 1000:.2f} | "
                        f"{compute / step:.0%} | {n * measured['batch'] / step:,.0f} |")
    return rows


class TimedRanks:
    """The Replicas of the processes, timing the gradient vector's all-reduce apart from the rest."""

    first = True

    def __init__(self, world, gradient_size: int):
        self.world, self.count, self.gradient_size, self.seconds = world, world.size, gradient_size, 0.0

    def sum(self, buffer):
        started = time.perf_counter()
        self.world.sum(buffer)
        if buffer.size == self.gradient_size:
            self.seconds += time.perf_counter() - started


def worker(model: str, steps: int, seconds: float) -> int:
    import cnnc
    from cnnc.distributed import world
    from cnnc.train.data import rank_share
    from cnnc.train.loop import optimizer_for, recipe

    ranks = world()
    net = cnnc.compile(ROOT / "examples" / f"{model}.cnn", seed=0)
    net.compile()
    r = recipe(net.parsed.graph["train"])
    optimizer = optimizer_for(r)
    rng = np.random.default_rng(0)
    x = rng.random((r.batch,) + net.input_shape, dtype=np.float32)
    y = rng.integers(0, net.lowered.output_shape[0], r.batch)
    part = rank_share(r.batch, ranks.rank, ranks.size)
    across = TimedRanks(ranks, net.grad_vector.size) if ranks.size > 1 else None
    trainable = net.vector[: net.layout.trainable]

    def step():
        net.loss_grads_correct(x[part], y[part], r.batch, part.start, across)
        optimizer.step(trainable, net.grad_vector, 1e-4)

    for _ in range(2):
        step()
    times, reduce = [], []
    budget = time.perf_counter() + seconds
    while len(times) < steps and (len(times) < 3 or time.perf_counter() < budget):
        if across:
            across.seconds = 0.0
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
        reduce.append(across.seconds if across else 0.0)
    result = {"model": model, "batch": r.batch, "ranks": ranks.size, "steps": len(times),
              "step_ms": statistics.median(times) * 1000, "allreduce_ms": statistics.median(reduce) * 1000,
              "gradient_bytes": net.grad_vector.nbytes}
    if ranks.rank == 0:
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
