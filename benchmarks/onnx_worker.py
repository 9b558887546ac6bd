"""The ONNX Runtime side of bench.py: a worker process (benchmarks/worker.py) that runs the
model `cnnc export` writes, on the CPU with `threads` intra-op threads, and times inference in
blocks on request: ONNX Runtime's default session (every graph optimization on, its own thread
pool and allocator)."""
from __future__ import annotations

from timing import run_block


def serve(conn, threads: int) -> None:
    """("model", onnx bytes, {"x": batch size -> images}) -> None; ("block", case, variant,
    seconds) -> call times; ("info",) -> versions; ("stop",)."""
    import onnxruntime as ort

    calls = {}
    while True:
        message = conn.recv()
        if message[0] == "model":
            _, model, data = message
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
            calls = {"latency": lambda x=data["x"][1]: session.run(None, {"input": x}),
                     "inference": lambda x=data["x"][256]: session.run(None, {"input": x})}
            conn.send(None)
        elif message[0] == "block":
            _, case, _, seconds = message
            times = []
            run_block(calls[case], times, seconds)
            conn.send(times)
        elif message[0] == "info":
            conn.send({"onnxruntime": ort.__version__, "threads": threads})
        else:
            return
