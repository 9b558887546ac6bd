"""A training step's lanes as processes: lane 0 runs in this process, lanes 1, 2, ... in children
forked from it, all of them reading the parameters and writing their gradients in shared memory.

Why processes and not threads (cnnc/lanes.py): the same two lanes of resnet20's batch-64 step
took 58-66 ms as threads of one process, 55-59 ms as processes, and a lane alone 52 ms; two
threads that did not even meet were 5-11% slower per kernel than one (docs/performance.md,
2026-12-01). Threads share the GIL, which every kernel call takes twice, and their meetings at
the batchnorm sums woke a sleeping thread each time.

What is shared, allocated before the fork (anonymous shared mappings): the parameter vector (the
network's own, cnnc/runtime.py allocates it with `shared_zeros`), one gradient vector per child,
the step's images and labels of the children's slices, their results, the step's scalars, the
meeting arrays of kernels/meet.py and a line of error text per lane. Per step the parent writes
the children's slices and the scalars, zeroes the meeting counts, and writes a byte to each
child's pipe; a child runs the generated `loss_and_grads` on its slice, with a `SharedLane` as its
replicas, and writes its lane number to the common `done` pipe, or the number + 128 after an
exception, whose text it leaves for the parent. A child sleeps in `read` between steps, ignores
Ctrl-C (the parent handles it and ends the children), and dies with the parent (Linux's parent
death signal).

The children are forked once the kernels are compiled, so they inherit them. They are ended
when the network is closed or collected, at exit, after a Ctrl-C or a failure (the next step
forks new ones), and when the step needs other lanes or more room than they were made for;
weakref.finalize ends them at exit too.
"""
from __future__ import annotations

import ctypes
import mmap
import os
import select
import signal
import sys
import threading
import time
import weakref

import numpy as np

from .kernels.meet import LINE, sum_across_lanes

SPINS = 200_000  # turns of a meeting's spin (about a millisecond) before a lane sleeps a moment
SLEEP = 50e-6
DONE_TIMEOUT = 1.0  # seconds between checks that the children still live, while waiting for them
ERROR_BYTES = 2048


def shared_zeros(shape, dtype) -> np.ndarray:
    """A zeroed array in an anonymous shared mapping: a forked child and its parent see one array."""
    dtype = np.dtype(dtype)
    count = int(np.prod(shape))
    buffer = mmap.mmap(-1, max(1, count * dtype.itemsize))
    return np.frombuffer(buffer, dtype, count).reshape(shape)


def available() -> bool:
    """Lanes can be processes: Linux (fork), unless $CNNC_LANES says threads."""
    return sys.platform.startswith("linux") and os.environ.get("CNNC_LANES", "processes") != "threads"


# One step at a time in this process: two threads stepping the same network would write the same
# shared buffers (as cnnc/lanes.py, which serializes its calls the same way).
one_step = threading.Lock()


class LaneFailed(RuntimeError):
    """A child lane raised, or died, during a step."""


class SharedLane:
    """One lane's Replicas (cnnc/replicas.py): its sums meet the other lanes' in shared memory."""

    def __init__(self, lanes: "ForkedLanes", index: int):
        self.lanes, self.index = lanes, index
        self.count = lanes.count
        self.first = index == 0
        self.meetings = 0

    def sum(self, buffer: np.ndarray) -> None:
        partials, arrived, abort = self.lanes.meeting
        if buffer.dtype != np.float64 or buffer.size > partials.shape[2] or not buffer.flags.c_contiguous:
            raise ValueError(f"the lanes add up contiguous float64 buffers of at most {partials.shape[2]} values")
        self.meetings += 1
        while True:
            done = sum_across_lanes(buffer, self.index, self.meetings, partials, arrived, abort, SPINS)
            if done == 1:
                return
            if done == -1:
                raise LaneFailed("another lane of the step failed")
            if self.first and not self.lanes.alive():  # a child that died would never arrive
                raise LaneFailed("a lane's process died during the training step")
            time.sleep(SLEEP)


class ForkedLanes:
    """`count` lanes of training steps: this process and count - 1 forked children, for batches
    of up to `capacity` images; meetings of up to `width` float64s."""

    def __init__(self, module, vector: np.ndarray, count: int, capacity: int, input_shape: tuple,
                 label_shape: tuple, grad_size: int, width: int):
        self.module, self.vector, self.count, self.capacity = module, vector, count, capacity
        self.x = shared_zeros((capacity,) + tuple(input_shape), np.float32)
        self.y = shared_zeros((capacity,) + tuple(label_shape), np.int64)
        self.grads = [shared_zeros(grad_size, np.float32) for _ in range(count - 1)]
        self.slices = shared_zeros((count, 3), np.int64)  # a lane's images in x, and its first image's index in the step
        self.scalars = shared_zeros(3, np.float64)  # seed, total, smoothing
        self.results = shared_zeros((count, 2), np.float64)  # loss, correct
        self.errors = shared_zeros((count, ERROR_BYTES), np.uint8)
        self.meeting = (shared_zeros((2, count, width), np.float64), shared_zeros(count * LINE, np.int64),
                        shared_zeros(1, np.int64))
        self.children: list[tuple[int, int]] = []  # (pid, the write end of its pipe)
        self.broken = False
        # Compiled (or loaded from Numba's cache) here, once, rather than in every child: a lone
        # lane's meeting that gives up at once (the counts are zeroed before each step).
        sum_across_lanes(np.zeros((2, 1)), 0, 1, *self.meeting, 1)
        parent = os.getpid()
        done_read, done_write = os.pipe()
        try:
            for index in range(1, count):
                go_read, go_write = os.pipe()
                pid = os.fork()
                if pid == 0:  # the child: never returns
                    os.close(go_write)
                    os.close(done_read)
                    for _, other in self.children:
                        os.close(other)
                    self._serve(index, go_read, done_write, parent)
                os.close(go_read)
                self.children.append((pid, go_write))
        except BaseException:
            self.close()
            raise
        finally:
            os.close(done_write)
        self.done = done_read
        self._finalizer = weakref.finalize(self, _end, list(self.children), done_read)

    # ---- the child's side ------------------------------------------------------------------

    def _serve(self, index: int, go: int, done: int, parent: int) -> None:
        """A child's life: one step per byte read from `go`, until it reads anything else."""
        status = 0
        try:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            _die_with_parent(parent)
            while os.read(go, 1) == b"s":
                os.write(done, bytes([index + 128 * (not self._run_slice(index))]))
        except BaseException:
            status = 1
        finally:
            os._exit(status)

    def _run_slice(self, index: int) -> bool:
        """Runs lane `index`'s slice of the step; False (the error's text left in `errors`) if it raised."""
        begin, end, first_image = (int(v) for v in self.slices[index])
        seed, total, smoothing = self.scalars
        try:
            self.results[index] = self.module.loss_and_grads(
                self.x[begin:end], self.y[begin:end], self.vector, self.grads[index - 1], int(seed), int(total),
                first_image, float(smoothing), SharedLane(self, index))
            return True
        except BaseException as error:
            self.meeting[2][0] = 1  # the other lanes stop waiting for this one
            text = f"{type(error).__name__}: {error}".encode("utf-8", "replace")[:ERROR_BYTES - 1]
            self.errors[index, :len(text)] = np.frombuffer(text, np.uint8)
            self.errors[index, len(text)] = 0
            return False

    # ---- the parent's side -----------------------------------------------------------------

    def step(self, x: np.ndarray, y: np.ndarray, parts: list[slice], seed: int, total: int, start: int,
             smoothing: float, grad0: np.ndarray) -> list:
        """The step's lanes on `parts` of (x, y), lane 0 here (its gradients into grad0), the others in
        the children (into `grads`); their (loss, correct) in lane order. Any failure, a Ctrl-C
        included, ends the children (`broken`) before it is raised."""
        if self.broken or not self.alive():
            raise LaneFailed("the lanes' processes have ended")
        for index, part in enumerate(parts[1:], 1):
            self.x[part] = x[part]
            self.y[part] = y[part]
            self.slices[index] = part.start, part.stop, start + part.start
        self.scalars[:] = seed, total, smoothing
        self.errors[:, 0] = 0
        self.meeting[1][:] = 0
        self.meeting[2][0] = 0
        try:
            for _, go in self.children:
                os.write(go, b"s")
            try:
                own = self.module.loss_and_grads(x[parts[0]], y[parts[0]], self.vector, grad0, seed, total, start,
                                                 smoothing, SharedLane(self, 0))
            except LaneFailed:  # stopped by a child's failure: the child's own error is the one to raise
                self._wait()
                raise
            self._wait()
        except BaseException:
            self.meeting[2][0] = 1
            self.close()
            raise
        return [own] + [(float(loss), int(correct)) for loss, correct in self.results[1:]]

    def _wait(self) -> None:
        """Until every child has reported the step; raises LaneFailed with a child's error, or
        when a child died."""
        pending, failed = set(range(1, self.count)), []
        while pending:
            ready, _, _ = select.select([self.done], [], [], DONE_TIMEOUT)
            if not ready:
                if not self.alive():
                    raise LaneFailed("a lane's process died during the training step")
                continue
            reported = os.read(self.done, 64)
            if not reported:  # every child's end of the pipe is closed: they have ended
                raise LaneFailed("a lane's process died during the training step")
            for byte in reported:
                pending.discard(byte % 128)
                if byte >= 128:
                    failed.append(byte % 128)
        if failed:
            text = bytes(self.errors[failed[0]]).split(b"\0", 1)[0].decode("utf-8", "replace")
            raise LaneFailed(f"lane {failed[0]} of the training step failed: {text}")

    def alive(self) -> bool:
        """Every child still runs."""
        for pid, _ in self.children:
            try:
                if os.waitpid(pid, os.WNOHANG) != (0, 0):
                    return False
            except ChildProcessError:
                return False
        return True

    def close(self) -> None:
        """Ends the children (now, without waiting for a step they may be in)."""
        self.broken = True
        finalizer = getattr(self, "_finalizer", None)
        if finalizer is not None:
            finalizer()
        else:
            _end(self.children, None)
        self.children = []


def _end(children: list[tuple[int, int]], done: int | None) -> None:
    """Kills and reaps the children and closes the pipes."""
    for pid, go in children:
        for action in (lambda: os.close(go), lambda: os.kill(pid, signal.SIGKILL)):
            try:
                action()
            except OSError:
                pass
    for pid, _ in children:
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass
    if done is not None:
        try:
            os.close(done)
        except OSError:
            pass


def _die_with_parent(parent: int) -> None:
    """Asks Linux to kill this process when its parent ends (prctl PR_SET_PDEATHSIG)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # the parent ended before the request was made
        os._exit(0)
