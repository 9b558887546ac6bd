"""The lanes of a training step or a forward as processes: lane 0 runs in this process, lanes 1,
2, ... in children forked from it, which read a copy of the parameters and write their gradients
or outputs in shared memory.

Why processes and not threads (cnnc/lanes.py): the same two lanes of resnet20's batch-64 step
took 58-66 ms as threads of one process, 55-59 ms as processes, and a lane alone 52 ms; two
threads that did not even meet were 5-11% slower per kernel than one (docs/performance.md,
2026-12-01). Threads share the GIL, which every kernel call takes twice, and their meetings at
the batchnorm sums woke a sleeping thread each time. A forward gains less (resnet20's batch-256
inference 70-71 -> 68 ms; vgg_small and mobilenet_v1 alike either way) but no longer varies with
the GIL's hand-overs (lenet5's median 3.0 -> 2.3 ms at the same best).

A pool is the children and what they share, allocated before the fork in anonymous shared
mappings: a copy of the parameter vector (the network's own stays private, so that a process
the user forks never shares it), one gradient vector per child, the step's images and labels,
each lane's slice, result and status, a forward's outputs, the step's scalars, the meeting arrays
of kernels/meet.py and a pickled error per lane. Per call the parent copies the parameters and
the children's slices in, zeroes the meeting counts, and writes the job (STEP or FORWARD) to the
pipe of each child the call needs (a smaller last batch leaves some idle); a child runs the
generated `loss_and_grads` on its slice with a `SharedLane` as its replicas, or `forward` in
groups, sets its status, and writes a byte to the common `done` pipe. A child sleeps in `read`
between calls, ignores Ctrl-C (the parent handles it and ends the children) and ends when its
pipe reaches its end: when the parent closes the pool or dies.

The children are forked once every kernel of a training step is loaded (they inherit the machine
code) and while this process holds Numba's compiler lock (so no other thread holds it in the
child's copy). They are ended when the pool is closed or collected, at exit, after a Ctrl-C or a
failure (the next step forks new ones), and when a step needs more lanes or images than they
were made for. A process forked from this one (multiprocessing's workers) disowns the pools it
inherits: it closes their pipes and never touches their children or buffers.
"""
from __future__ import annotations

import mmap
import os
import pickle
import select
import signal
import sys
import threading
import time
import weakref

import numpy as np
from numba.core.compiler_lock import global_compiler_lock

from .diagnostics import CnncError
from .kernels.meet import LINE, sum_across_lanes
from .lanes import in_groups, usable_cpus

# A lane that waits at a meeting spins SPINS turns (about 50 us), then gives its core away
# (sched_yield) between spins YIELDS times, then sleeps SLEEP between them. resnet20's batch-64
# step, two lanes beside a busy process: 117-118 ms so, 126-130 spinning a millisecond at a time
# (threads: 114-120); on an idle machine both 57-61 ms (docs/performance.md, 2026-12-01).
SPINS = 10_000
YIELDS = 100
SLEEP = 50e-6
DONE_TIMEOUT = 1000  # milliseconds between checks that the children still live, while waiting for them
ERROR_BYTES = 2048
RUNNING, FINISHED, FAILED, STOPPED = 0, 1, 2, 3  # a lane's status in a step; STOPPED: by another lane's failure
STEP, FORWARD = b"s", b"f"  # the jobs a child is handed: a training step's slice, a forward's


def available(lanes: int) -> bool:
    """A step's `lanes` run as processes: on Linux (fork), when each lane has a CPU of its own (a
    lane spins while it waits for the others), or whenever $CNNC_LANES says `processes`; never
    when it says `threads`."""
    choice = os.environ.get("CNNC_LANES", "")
    if not sys.platform.startswith("linux") or choice == "threads" or lanes < 2:
        return False
    return choice == "processes" or lanes <= usable_cpus()


# One step at a time in this process: two threads stepping the same network would write the same
# shared buffers (as cnnc/lanes.py, which serializes its calls the same way).
one_step = threading.Lock()


class LaneFailed(CnncError, RuntimeError):
    """A child lane raised, or died, during a training step or forward."""

    def render(self) -> str:
        return f"error: {self}\nhint: CNNC_LANES=threads runs the lanes as threads of this process"


class SharedLane:
    """One lane's Replicas (cnnc/replicas.py): its sums meet the other lanes' in shared memory."""

    def __init__(self, pool: "ForkedLanes", index: int, count: int):
        self.pool, self.index, self.count = pool, index, count
        self.first = index == 0
        self.meetings = 0

    def sum(self, buffer: np.ndarray) -> None:
        partials, arrived, abort = self.pool.meeting
        if buffer.dtype != np.float64 or buffer.size > partials.shape[2] or not buffer.flags.c_contiguous:
            raise ValueError(f"the lanes add up contiguous float64 buffers of at most {partials.shape[2]} values")
        self.meetings += 1
        waits = 0
        while True:
            done = sum_across_lanes(buffer, self.index, self.count, self.meetings, partials, arrived, abort, SPINS)
            if done == 1:
                return
            if done == -1:
                raise LaneFailed("another lane of the step failed")
            if not self.pool.partners_live():  # a lane whose process died would never arrive
                raise LaneFailed("a lane's process died during a training step or forward")
            waits += 1
            if waits <= YIELDS:
                os.sched_yield()
            else:
                time.sleep(SLEEP)


class ForkedLanes:
    """Up to `count` lanes of training steps (with a `grad_size`) and forwards: this process and
    count - 1 forked children, for batches of up to `capacity` images; meetings of up to `width`
    float64s."""

    def __init__(self, module, count: int, capacity: int, input_shape: tuple, label_shape: tuple,
                 output_shape: tuple, param_size: int, grad_size: int | None, width: int):
        self.module, self.count, self.capacity = module, count, capacity
        self.owner = os.getpid()
        self.mappings: list[mmap.mmap] = []
        self.params = self._shared(param_size, np.float32)
        self.x = self._shared((capacity,) + tuple(input_shape), np.float32)
        self.y = self._shared((capacity,) + tuple(label_shape), np.int64)
        self.outputs = self._shared((capacity,) + tuple(output_shape), np.float32)  # a forward's
        self.steps = grad_size is not None  # it runs training steps; else forwards only
        self.grads = [self._shared(grad_size, np.float32) for _ in range(count - 1)] if self.steps else []
        self.slices = self._shared((count, 3), np.int64)  # a lane's images in x, its first image's index in the step
        self.scalars = self._shared(5, np.float64)  # seed, total, smoothing, lanes; a forward's group
        self.results = self._shared((count, 2), np.float64)  # loss, correct
        self.status = self._shared(count, np.int64)
        self.errors = self._shared((count, ERROR_BYTES), np.uint8)
        self.meeting = (self._shared((2, count, width), np.float64), self._shared(count * LINE, np.int64),
                        self._shared(1, np.int64))
        self.children: list[tuple[int, int]] = []  # (pid, the write end of its pipe)
        self.reaped: set[int] = set()  # children already waited for: their pids may be someone else's now
        self.broken = False
        if self.steps:  # compiled (or loaded from Numba's cache) here, once, rather than in every
            # child: a lone lane's meeting, which finds itself alone and is done at once
            sum_across_lanes(np.zeros((2, 1)), 0, 1, 1, *self.meeting, 1)  # each call zeroes the counts first
        self.done, done_write = os.pipe()  # the children's reports
        self._finalizer = weakref.finalize(self, _end, self.children, self.reaped, self.done, self.owner)
        _pools.add(self)
        self._fork(done_write)
        for mapping in self.mappings:  # processes forked later (other pools' children, a user's) do not map them
            mapping.madvise(mmap.MADV_DONTFORK)

    def _shared(self, shape, dtype) -> np.ndarray:
        """A zeroed array in an anonymous shared mapping (kept in `mappings`): the children and
        this process see one array."""
        dtype = np.dtype(dtype)
        count = int(np.prod(shape))
        mapping = mmap.mmap(-1, max(1, count * dtype.itemsize))
        self.mappings.append(mapping)
        return np.frombuffer(mapping, dtype, count).reshape(shape)

    # ---- forking -----------------------------------------------------------------------------

    def _fork(self, done_write: int) -> None:
        """Forks the children, holding Numba's compiler lock and then Ctrl-C back; on a failure
        ends the ones already forked, closes every pipe and raises."""
        try:
            with global_compiler_lock:
                held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
                try:
                    for index in range(1, self.count):
                        self._fork_child(index, done_write, held)
                finally:
                    signal.pthread_sigmask(signal.SIG_SETMASK, held)
        except BaseException:
            self.close()
            raise
        finally:
            os.close(done_write)

    def _fork_child(self, index: int, done_write: int, mask) -> None:
        go_read, go_write = os.pipe()
        pid = None
        try:
            pid = os.fork()
            if pid == 0:
                self._serve(index, go_read, done_write, mask)  # never returns
            self.children.append((pid, go_write))
        except BaseException:  # an interrupt delivered to another thread lands here even so
            if pid is not None and (pid, go_write) not in self.children:
                self.children.append((pid, go_write))  # close() kills and reaps it and closes the pipe
            elif pid is None:
                os.close(go_write)
            raise
        finally:
            os.close(go_read)

    # ---- the child's side ------------------------------------------------------------------

    def _serve(self, index: int, go: int, done: int, mask) -> None:
        """A child's life: one step per byte read from `go`, until the pipe ends."""
        status = 0
        try:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            _close_fds_but(0, 1, 2, go, done)
            while (job := os.read(go, 1)) in (STEP, FORWARD):
                self.status[index] = self._run_slice(index, job)
                os.write(done, b"d")
        except BaseException:
            status = 1
        finally:
            os._exit(status)

    def _run_slice(self, index: int, job: bytes) -> int:
        """Runs lane `index`'s slice of the step or forward; its status (its error left in `errors`)."""
        begin, end, first_image = (int(v) for v in self.slices[index])
        seed, total, smoothing, lanes, group = self.scalars
        try:
            if job == FORWARD:
                self.outputs[begin:end] = in_groups(self.module.forward, self.x[begin:end], self.params, int(group))
            else:
                self.results[index] = self.module.loss_and_grads(
                    self.x[begin:end], self.y[begin:end], self.params, self.grads[index - 1], int(seed), int(total),
                    first_image, float(smoothing), SharedLane(self, index, int(lanes)))
            return FINISHED
        except LaneFailed:
            return STOPPED
        except BaseException as error:
            self.meeting[2][0] = 1  # the other lanes stop waiting for this one
            self._leave_error(index, error)
            return FAILED

    def _leave_error(self, index: int, error: BaseException) -> None:
        """The error, pickled, in lane `index`'s line of `errors` (its length first), or its text
        as a LaneFailed when it does not pickle or fit."""
        try:
            data = pickle.dumps(error)
        except Exception:
            data = b""
        if not data or len(data) > ERROR_BYTES - 8:
            text = f"lane {index} failed: {type(error).__name__}: {error}"
            data = pickle.dumps(LaneFailed(text[:ERROR_BYTES // 2]))
        line = self.errors[index]
        line[:8] = np.frombuffer(len(data).to_bytes(8, "little"), np.uint8)
        line[8:8 + len(data)] = np.frombuffer(data, np.uint8)

    def partners_live(self) -> bool:
        """In the parent (the pool's owner): every child still runs; in a child: the owner does."""
        if os.getpid() == self.owner:
            return self.alive()
        return os.getppid() == self.owner

    # ---- the parent's side -----------------------------------------------------------------

    def step(self, x: np.ndarray, y: np.ndarray, parts: list[slice], vector: np.ndarray, grad0: np.ndarray,
             seed: int, total: int, start: int, smoothing: float) -> tuple[list, list]:
        """The step's lanes on `parts` of (x, y) with the parameters `vector`: lane 0 here (its
        gradients into grad0), the others in the children; their (loss, correct) and gradient
        vectors, in lane order. Any failure, a Ctrl-C included, ends the children (`broken`)
        before it is raised."""
        lanes = len(parts)
        self.y[parts[1].start:parts[-1].stop] = y[parts[1].start:parts[-1].stop]

        def own_lane():
            return self.module.loss_and_grads(x[parts[0]], y[parts[0]], vector, grad0, seed, total, start, smoothing,
                                              SharedLane(self, 0, lanes))

        own = self._run(STEP, x, parts, vector, (seed, total, smoothing, lanes, 0), start, own_lane)
        results = [own] + [(float(loss), int(correct)) for loss, correct in self.results[1:lanes]]
        return results, [grad0] + self.grads[:lanes - 1]

    def forward(self, x: np.ndarray, parts: list[slice], vector: np.ndarray, group: int) -> np.ndarray:
        """Inference on `parts` of x, each lane in groups of at most `group` images (0: at once)."""
        own = self._run(FORWARD, x, parts, vector, (0, 0, 0, len(parts), group), 0,
                        lambda: in_groups(self.module.forward, x[parts[0]], vector, group))
        return np.concatenate([own, self.outputs[parts[1].start:parts[-1].stop]])

    def _run(self, job: bytes, x: np.ndarray, parts: list[slice], vector: np.ndarray, scalars: tuple,
             start: int, own_lane):
        """Hands the children their slices of the job, runs lane 0's here (`own_lane()`, whose
        result it returns), and waits for the children."""
        lanes = len(parts)
        if self.broken or not self.alive():
            raise LaneFailed("the lanes' processes have ended")
        self.params[:] = vector
        self.x[parts[1].start:parts[-1].stop] = x[parts[1].start:parts[-1].stop]
        for index, part in enumerate(parts[1:], 1):
            self.slices[index] = part.start, part.stop, start + part.start
        self.scalars[:] = scalars
        self.status[:] = RUNNING
        self.meeting[1][:] = 0
        self.meeting[2][0] = 0
        try:
            try:
                for _, go in self.children[:lanes - 1]:
                    os.write(go, job)
            except OSError:  # a child's pipe has closed: it died
                raise LaneFailed("a lane's process died before its work began") from None
            try:
                own = own_lane()
            except BaseException:
                self.meeting[2][0] = 1
                if isinstance(sys.exc_info()[1], LaneFailed):  # stopped by a child: its error is the one to raise
                    self._wait(lanes - 1)
                raise
            self._wait(lanes - 1)
        except BaseException:
            self.close()
            raise
        return own

    def _wait(self, reports: int) -> None:
        """Until `reports` children have reported the step; raises a child's error (itself, or a
        LaneFailed with its text when it does not pickle), or LaneFailed when a child died."""
        poller = select.poll()
        poller.register(self.done, select.POLLIN)
        while reports:
            if not poller.poll(DONE_TIMEOUT):
                if not self.alive():
                    raise LaneFailed("a lane's process died during a training step or forward")
                continue
            reported = os.read(self.done, 4096)
            if not reported:  # every child's end of the pipe is closed: they have ended
                raise LaneFailed("a lane's process died during a training step or forward")
            reports -= len(reported)
        failed = np.flatnonzero(self.status == FAILED)
        if len(failed):  # the error the first failing lane raised, as the thread lanes would raise it
            line = bytes(self.errors[int(failed[0])])
            raise pickle.loads(line[8:8 + int.from_bytes(line[:8], "little")])

    def alive(self) -> bool:
        """Every child still runs (the ones that ended are reaped)."""
        live = True
        for pid, _ in self.children:
            if pid in self.reaped:
                live = False
                continue
            try:
                ended = os.waitpid(pid, os.WNOHANG)[0] == pid
            except ChildProcessError:  # reaped by someone else
                ended = True
            if ended:
                self.reaped.add(pid)
                live = False
        return live

    def close(self) -> None:
        """Ends the children (now, without waiting for a step they may be in)."""
        self.broken = True
        _pools.discard(self)  # its pipes are closed: a later fork must not close their numbers again
        held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})  # a second Ctrl-C waits till they are ended
        try:
            self._finalizer()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)

    def disown(self) -> None:
        """In a process forked from the pool's owner: closes the inherited pipes, and never ends
        the children, which are the owner's."""
        self.broken = True
        _pools.discard(self)
        if self._finalizer.detach() is None:  # closed already: its fd numbers may be another file's now
            return
        for fd in [self.done] + [go for _, go in self.children]:
            try:
                os.close(fd)
            except OSError:
                pass


def _end(children: list[tuple[int, int]], reaped: set[int], done: int, owner: int) -> None:
    """Kills and reaps the children and closes the pipes, in the process that forked them."""
    if os.getpid() != owner:
        return
    for pid, go in children:
        try:
            os.close(go)
        except OSError:
            pass
        if pid not in reaped:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
    for pid, _ in children:
        if pid not in reaped:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
            reaped.add(pid)
    try:
        os.close(done)
    except OSError:
        pass


def _close_fds_but(*kept: int) -> None:
    """Closes every file descriptor of this process but `kept` (a child needs only its pipes)."""
    previous = -1
    for fd in sorted(set(kept)) + [os.sysconf("SC_OPEN_MAX")]:
        if fd > previous + 1:  # closerange(k, k) would close everything from k on (Python 3.11)
            os.closerange(previous + 1, fd)
        previous = fd


_pools: weakref.WeakSet = weakref.WeakSet()  # this process's pools, for the fork hook below


def _disown_inherited() -> None:
    """In any forked child: the pools it inherited are not its own."""
    for pool in list(_pools):
        if pool.owner != os.getpid():
            pool.disown()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_disown_inherited)
