"""Peak memory of a training run: one framework, one model, N steps, in this process alone.

    python benchmarks/peak_memory.py {cnnc,torch} MODEL.cnn [--steps 20] [--batch 64]

Prints one JSON line: the resident set size after setup (imports, model, compiled or cached
kernels, data) and its high-water mark at the end (`VmHWM` in /proc/self/status), in MiB.
When cnnc's lanes are processes (cnnc/forked_lanes.py) the peak is the larger of that mark and
the most that this process and the lanes' processes held together after a step (the sum of
their proportional set sizes: a page they share counts once); the freed memory of a step is
kept for the next, so that is about the peak within a step too.
benchmarks/bench.py runs it in a subprocess per framework so neither sees the other's memory.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def proc_status_mib(field: str) -> float:
    """A kB field of /proc/self/status (VmRSS, VmHWM) in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def pss_mib(pid: int | str) -> float:
    """A process's proportional set size (/proc/PID/smaps_rollup) in MiB."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1024
    raise KeyError("Pss")


def batch(input_shape, classes: int, size: int):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((size, *input_shape), dtype=np.float32)
    return x, rng.integers(0, classes, size)


def cnnc_steps(model: str, steps: int, size: int) -> float:
    import cnnc
    from cnnc.train.optim import SGD

    net = cnnc.compile(model, seed=0)
    net.compile()
    x, y = batch(net.input_shape, net.lowered.output_shape[0], size)
    opt = SGD(lr=0.001, momentum=0.9)
    trainable = net.vector[: net.layout.trainable]
    setup = proc_status_mib("VmRSS")
    together = 0.0
    for _ in range(steps):
        net.loss_and_grads(x, y)
        opt.step(trainable, net.grad_vector)
        lanes = [pid for pid, _ in net.forked.children] if net.forked is not None else []
        together = max(together, sum(pss_mib(pid) for pid in ["self"] + lanes) if lanes else 0.0)
    return setup, together


def torch_steps(model: str, steps: int, size: int) -> float:
    import torch

    from cnnc.frontend import check_file
    sys.path.insert(0, str(Path(__file__).parent))
    import torch_model

    torch.set_num_threads(2)
    g = check_file(model)
    net = torch_model.build(g)
    x, y = batch(g.nodes[g.graph["input"]]["shape"], g.nodes[g.graph["output"]]["shape"][0], size)
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.SGD(net.parameters(), lr=0.001, momentum=0.9)
    setup = proc_status_mib("VmRSS")
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        torch_model.loss(net, x, y).backward()
        opt.step()
    return setup, 0.0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("framework", choices=("cnnc", "torch"))
    p.add_argument("model")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=64)
    args = p.parse_args()
    run = cnnc_steps if args.framework == "cnnc" else torch_steps
    setup, together = run(args.model, args.steps, args.batch)
    peak = max(proc_status_mib("VmHWM"), together)
    print(json.dumps({"setup_mib": round(setup, 1), "peak_mib": round(peak, 1)}))


if __name__ == "__main__":
    main()
