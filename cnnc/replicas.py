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

    Alone (no `across`), each lane leaves a copy of its buffer in the group, meets the others
    once, and adds all the copies up in lane order itself: every lane gets the same bits, with
    one meeting a sum (a meeting costs 50-60 us of wall clock on this machine's VM; resnet20
    makes 38 sums a step). The copies of a sum sit in one of two generations, so that a lane
    already at the next sum cannot overwrite what a slower lane is still adding up: it cannot
    get past that next meeting before the slower lane arrives there too.
    With `across` (the Replicas of the other processes) lane 0 adds the lanes' buffers up and
    has the total summed over the processes, and every lane copies that one total after a
    second meeting.
    Should one lane fail, `abort` breaks the barrier so that the others stop waiting
    (threading.BrokenBarrierError) instead of hanging."""

    def __init__(self, count: int, across=None):
        self.count, self.across = count, across
        self.barrier = threading.Barrier(count)
        self.copies: list = [[None] * count, [None] * count]  # two generations of the lanes' buffers
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
        self.sums = 0  # how many sums this lane has made: its generation is the parity

    def sum(self, buffer: np.ndarray) -> None:
        group = self.group
        copies = group.copies[self.sums % 2]
        self.sums += 1
        copies[self.index] = buffer.copy() if group.across is None else buffer
        group.barrier.wait()  # every lane's buffer is in place
        if group.across is None:
            total = copies[0].copy()
            for other in copies[1:]:
                total += other
            buffer[...] = total
            return
        if self.first:
            total = copies[0].copy()
            for other in copies[1:]:
                total += other
            group.across.sum(total)
            group.total = total
        # Lane 0 replaces the total only after the next sum's first wait, which every lane
        # reaches after it has copied this one.
        group.barrier.wait()
        buffer[...] = group.total
