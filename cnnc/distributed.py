"""Training on several processes over MPI: which process this is, and sums across the processes.

The only module that imports mpi4py, and only when an MPI launcher (mpiexec, srun) started
this process with others, so `import cnnc` and a plain `cnnc train` never need MPI. The
processes ("ranks") are replicas of each step (cnnc/replicas.py): `World.replicas` sums the
batchnorm statistics and the gradient vector over them, in place, with MPI's Allreduce.

No wait here lasts forever: every collective call is non-blocking and watched, and a rank that
has not heard from the others within `$CNNC_MPI_TIMEOUT` seconds (default 20; longer at start
and after a save) prints why and aborts the whole job, as does a rank whose own error would
otherwise leave the others waiting (`fail`).
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
import traceback
from functools import cache

import numpy as np

from .diagnostics import CnncError

# Environment variables by which launchers tell a process how many processes they started.
SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE", "SLURM_STEP_NUM_TASKS")
STEP_TIMEOUT = 20.0    # seconds a rank waits for the others inside a training step
START_TIMEOUT = 600.0  # ... before the first step (loading data and compiling kernels differ in speed)
SAVE_TIMEOUT = 600.0   # ... while rank 0 writes the weights and the checkpoint


class DistributedError(CnncError):
    """The ranks cannot train together (one failed, or they differ); every rank raises the same."""

    every_rank = True

    def __init__(self, message: str, hint: str | None = None, cause: str | None = None):
        super().__init__(message)
        self.message, self.hint, self.cause = message, hint, cause

    def render(self) -> str:
        return (f"error: {self.message}" + (f"\n{self.cause}" if self.cause else "")
                + (f"\nhint: {self.hint}" if self.hint else ""))

    def __str__(self) -> str:
        return self.render()


class Single:
    """The world of a process started alone: rank 0 of 1, nothing to sum."""

    rank, size, replicas = 0, 1, None

    def agree(self, identity: dict, error: CnncError | None = None) -> None:
        if error is not None:
            raise error

    def barrier(self, timeout: float | None = None, what: str = "") -> None:
        pass

    def sum(self, buffer: np.ndarray, what: str = "") -> None:
        pass

    def fail(self, message: str, code: int = 1) -> None:
        pass


def launched_size() -> int:
    """How many processes the launcher started, 1 when this one was started alone."""
    for name in SIZE_VARIABLES:
        value = os.environ.get(name, "").strip()
        if value.isdigit():
            return int(value)
    return 1


@cache
def world():
    """This process's place among the ones launched with it: Single, or an MPI World."""
    size = launched_size()
    if size <= 1:
        return Single()
    try:
        from mpi4py import MPI
    except ImportError:
        raise DistributedError(f"this process was launched as one of {size} MPI processes but mpi4py "
                               "is not installed", hint='pip install "cnnc[mpi]"') from None
    return World(MPI)


class Start:
    """What `starting` compares across the ranks: set `identity` before the block ends."""

    identity: dict = {}


@contextlib.contextmanager
def starting(world):
    """The setup before the first step, as one agreement: a CnncError in any rank's block (its data
    unreadable, its checkpoint damaged) and any difference in the `identity` the ranks set stop
    every rank with the same DistributedError. Alone, the block's own error passes through."""
    start, error = Start(), None
    try:
        yield start
    except CnncError as e:
        error = e
    world.agree(start.identity, error)


class Ranks:
    """The Replicas of a step's processes: sum() adds a buffer up over them, in place."""

    first = True  # running statistics are updated in every process (each sees the same sums)

    def __init__(self, world: "World"):
        self.world, self.count = world, world.size

    def sum(self, buffer: np.ndarray) -> None:
        self.world.sum(buffer, "a sum of the training step")


class World:
    """MPI's COMM_WORLD: `rank`, `size`, `replicas`, and watched collective calls."""

    def __init__(self, MPI):
        self.MPI, self.comm = MPI, MPI.COMM_WORLD
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        self.replicas = Ranks(self)
        self.timeout = _timeout_from_environment()
        sys.excepthook = self._excepthook
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._terminated)

    def sum(self, buffer: np.ndarray, what: str = "a sum") -> None:
        """buffer = its sum over the ranks, in every rank (a contiguous numpy array)."""
        assert buffer.flags.c_contiguous
        self._wait(self.comm.Iallreduce(self.MPI.IN_PLACE, buffer, self.MPI.SUM), self.timeout, what)

    def barrier(self, timeout: float | None = None, what: str = "a barrier") -> None:
        self._wait(self.comm.Ibarrier(), timeout or self.timeout, what)

    def agree(self, identity: dict, error: CnncError | None = None) -> None:
        """Before the first step: every rank's setup error and identity (cnnc version, model hash)
        are compared, and every rank raises the same DistributedError unless all succeeded alike."""
        self.barrier(START_TIMEOUT, "the start (loading the data and compiling)")
        mine = {"identity": identity, "error": error.render() if error is not None else None}
        everyone = self.comm.allgather(mine)
        failed = [(rank, got["error"]) for rank, got in enumerate(everyone) if got["error"]]
        if failed:
            rank, rendered = failed[0]
            others = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
            raise DistributedError(f"rank {rank}{others} of {self.size} cannot start; every rank stops:",
                                   cause=rendered)
        differing = [rank for rank, got in enumerate(everyone) if got["identity"] != everyone[0]["identity"]]
        if differing:
            ours, theirs = everyone[0]["identity"], everyone[differing[0]]["identity"]
            keys = [k for k in ours if ours.get(k) != theirs.get(k)]
            show = lambda d: ", ".join(f"{k} {d.get(k)}" for k in keys)  # noqa: E731
            raise DistributedError(
                f"the ranks differ in {', '.join(keys)}: rank 0 has {show(ours)} but rank {differing[0]} has "
                f"{show(theirs)}", hint="every rank must run the same cnnc on the same model file, recipe and data")

    def fail(self, message: str, code: int = 1) -> None:
        """Stop every rank: this one cannot go on and the others would wait for it."""
        print(f"rank {self.rank} of {self.size}: {message}\nstopping all {self.size} ranks", file=sys.stderr,
              flush=True)
        # mpiexec forwards a rank's output through its proxy, which Abort tears down at once: give
        # the message time to get out (without this pause it was lost about one time in six).
        time.sleep(0.5)
        self.comm.Abort(code)

    def _wait(self, request, timeout: float, what: str) -> None:
        """Waits for a non-blocking call, polling without a pause for the first 50 ms (MPICH moves a
        large vector only while it is polled: with pauses from 2 ms on, a 4 MB all-reduce took 5.6 ms
        instead of 1.1), then sleeping between polls so that a rank that waits long leaves the cores
        to the ones it waits for."""
        started = time.monotonic()
        while not request.Test():
            waited = time.monotonic() - started
            if waited > 0.05:
                time.sleep(0.0002)
                if waited > timeout:
                    self.fail(f"no word from the other ranks for {timeout:g} s while waiting for {what}: "
                              "another rank died or hangs (set $CNNC_MPI_TIMEOUT to wait longer)")

    def _terminated(self, signum, frame) -> None:
        """mpiexec stops the job when a rank has failed or been interrupted: say so, rather than vanish."""
        print(f"rank {self.rank} of {self.size}: stopped by the MPI launcher (SIGTERM): another rank died, "
              "failed or was interrupted", file=sys.stderr, flush=True)
        os._exit(128 + signum)

    def _excepthook(self, kind, value, tb) -> None:
        traceback.print_exception(kind, value, tb)
        self.fail(f"stopped by the error above ({kind.__name__})")


def _timeout_from_environment() -> float:
    text = os.environ.get("CNNC_MPI_TIMEOUT", "").strip()
    try:
        value = float(text) if text else STEP_TIMEOUT
    except ValueError:
        value = STEP_TIMEOUT
    return value if value > 0 else STEP_TIMEOUT
