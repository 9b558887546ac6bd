"""A peer framework in a process of its own, timed in blocks on request (used by bench.py).

Each framework runs as its users run it: in its own process, with its own thread pool and the
C library's default malloc (cnnc changes malloc's settings in its process: see runtime.py,
keep_freed_memory; the same settings made PyTorch's vgg_small batch-256 inference 1.5x faster
when both shared a process, which is not how PyTorch runs). bench.py still alternates: it asks
a worker for a block of calls, waits for the times, runs a block of cnnc, and so on.

A worker module defines `serve(conn, threads)`, the loop that answers ("model", ...) -> None,
("block", case, variant, seconds) -> call times, ("info",) -> versions, ("stop",).
"""
from __future__ import annotations

import multiprocessing
import sys
from pathlib import Path


class Worker:
    """The parent's handle on a worker process running `serve` (a module-level function)."""

    def __init__(self, serve, threads: int):
        context = multiprocessing.get_context("spawn")  # a fresh interpreter: nothing of cnnc's process
        self.conn, child = context.Pipe()
        sys.path.insert(0, str(Path(__file__).parent))
        self.process = context.Process(target=serve, args=(child, threads), daemon=True)
        self.process.start()

    def ask(self, *message):
        self.conn.send(message)
        return self.conn.recv()

    def load(self, *model) -> None:
        self.ask("model", *model)

    def block(self, case: str, variant: str, seconds: float) -> list[float]:
        return self.ask("block", case, variant, seconds)

    def info(self) -> dict:
        return self.ask("info")

    def close(self) -> None:
        try:
            self.conn.send(("stop",))
        except (BrokenPipeError, OSError):  # it died: whatever stopped it is the error to see
            pass
        self.process.join(timeout=10)
