"""The replicas of one training step, and what they share: sums of buffers across them.

A training step can run as several replicas, each on its own slice of the batch: lanes
(threads in this process, cnnc/lanes.py) and, with the distributed extra, processes on other
machines. Batchnorm needs the statistics of the whole batch, so the generated
`loss_and_grads` hands its per-channel sums to `replicas.sum(buffer)`, which every replica
calls in the same order and which leaves the same total in every replica's buffer. Replicas
is that interface: `count`, `first` (the one replica that updates shared state such as the
running statistics) and `sum`.

Processes (cnnc/distributed.py) and lanes compose: a LaneGroup given `across`, the Replicas of
the other processes, adds its lanes' buffers up and has that total summed across the processes
by one lane while the others wait. `first` stays per process: every process sees the same
totals, so every process's running statistics stay the same.
"""
from __future__ import annotations

import threading
from typing import Protocol

import numpy as np


class Replicas(Protocol):
    """What the generated `loss_and_grads` is handed (None for a step of one replica)."""

    count: int  # how many replicas the step has
    first: bool  # this replica updates the running statistics of its process

    def sum(self, buffer: np.ndarray) -> None:
        """Every replica calls it, in the same order; afterwards every replica's buffer holds
        the sum over all of them, the same bits in each."""


class LaneGroup:
    """The lanes of one call: threads that meet at a barrier to add up their buffers.

    Lane 0 adds the lanes' buffers in lane order and, with `across` (the Replicas of the other
    processes), has the total summed over them too; every lane then copies that one total, so
    all of them end with bit-identical sums. Should one lane fail, `abort` breaks the barrier so
    that the others stop waiting (threading.BrokenBarrierError) instead of hanging."""

    def __init__(self, count: int, across=None):
        self.count, self.across = count, across
        self.barrier = threading.Barrier(count)
        self.buffers: list = [None] * count
        self.total = None

    def lanes(self) -> list["Lane"]:
        return [Lane(self, k) for k in range(self.count)]

    def abort(self) -> None:
        self.barrier.abort()


class Lane:
    """One lane's handle on its group: the Replicas the generated code calls."""

    def __init__(self, group: LaneGroup, index: int):
        self.group, self.index = group, index
        self.count = group.count * (group.across.count if group.across is not None else 1)
        self.first = index == 0

    def sum(self, buffer: np.ndarray) -> None:
        group = self.group
        group.buffers[self.index] = buffer
        group.barrier.wait()  # every lane's buffer is in place
        if self.first:
            total = group.buffers[0].copy()
            for other in group.buffers[1:]:
                total += other
            if group.across is not None:
                group.across.sum(total)
            group.total = total
        # Lane 0 replaces the total only after the next sum's first wait, which every lane
        # reaches after it has copied this one.
        group.barrier.wait()
        buffer[...] = group.total
