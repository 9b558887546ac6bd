"""The PyTorch side of bench.py, in a process of its own, timed in blocks on request.

Each framework runs as its users run it: in its own process, with its own thread pool and the
C library's default malloc (cnnc changes malloc's settings in its process: see runtime.py,
keep_freed_memory; the same settings made PyTorch's vgg_small batch-256 inference 1.5x faster
when both shared a process, which is not how PyTorch runs). bench.py still alternates the two:
it asks this process for a block of calls, waits for the times, runs a block of cnnc, and so on.
"""
from __future__ import annotations

import copy
import multiprocessing
import sys
from pathlib import Path

from timing import run_block

TORCH_FORMATS = ("NCHW", "channels_last")


def torch_calls(model, data, memory_format: str, lr: float, momentum: float) -> dict:
    """The cases for a copy of `model` whose weights are in `memory_format`; the input stays NCHW,
    as cnnc gets it (a channels_last conv converts it itself, inside the timed call)."""
    import torch
    import torch_model

    formats = {"NCHW": torch.contiguous_format, "channels_last": torch.channels_last}
    model = copy.deepcopy(model).to(memory_format=formats[memory_format])
    inference = torch_model.for_inference(model)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    x = {n: torch.from_numpy(v) for n, v in data["x"].items()}
    y64 = torch.from_numpy(data["y"])

    def infer(batch):
        with torch.inference_mode():
            return torch_model.probabilities(inference, batch)

    def forward_backward():
        opt.zero_grad(set_to_none=True)
        torch_model.loss(model, x[64], y64).backward()

    def train_step():
        forward_backward()
        opt.step()

    return {
        "latency": lambda: infer(x[1]),
        "inference": lambda: infer(x[256]),
        "train_step": train_step,
        "loss_and_grads": forward_backward,
    }


def serve(conn, threads: int) -> None:
    """The worker's loop: ("model", graph, params, data, lr, momentum) -> None;
    ("block", case, format, seconds) -> call times; ("info",) -> versions; ("stop",)."""
    import threadpoolctl
    import torch
    import torch_model

    torch.set_num_threads(threads)
    threadpoolctl.threadpool_limits(threads)
    calls = {}
    while True:
        message = conn.recv()
        if message[0] == "model":
            _, graph, params, data, lr, momentum = message
            model = torch_model.build(graph, params)
            calls = {fmt: torch_calls(model, data, fmt, lr, momentum) for fmt in TORCH_FORMATS}
            conn.send(None)
        elif message[0] == "block":
            _, case, fmt, seconds = message
            times = []
            run_block(calls[fmt][case], times, seconds)
            conn.send(times)
        elif message[0] == "info":
            conn.send({"torch": torch.__version__, "threads": torch.get_num_threads()})
        else:
            return


class TorchWorker:
    """The parent's handle on the worker process."""

    def __init__(self, threads: int):
        context = multiprocessing.get_context("spawn")  # a fresh interpreter: nothing of cnnc's process
        self.conn, child = context.Pipe()
        sys.path.insert(0, str(Path(__file__).parent))
        self.process = context.Process(target=serve, args=(child, threads), daemon=True)
        self.process.start()

    def ask(self, *message):
        self.conn.send(message)
        return self.conn.recv()

    def load(self, graph, params: dict, data: dict, lr: float, momentum: float) -> None:
        self.ask("model", graph, params, data, lr, momentum)

    def block(self, case: str, fmt: str, seconds: float) -> list[float]:
        return self.ask("block", case, fmt, seconds)

    def info(self) -> dict:
        return self.ask("info")

    def close(self) -> None:
        self.conn.send(("stop",))
        self.process.join(timeout=10)
