"""The PyTorch side of bench.py: a worker process (benchmarks/worker.py) that builds the model
from cnnc's parsed graph and times its cases in blocks on request."""
from __future__ import annotations

import copy

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
