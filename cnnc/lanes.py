"""Data parallelism: the generated functions run on slices of a batch, one thread ("lane") each.

The kernels are serial and release the GIL, so lanes run side by side, each with a one-thread
BLAS; a batch too small to split runs whole on the calling thread, also with a one-thread BLAS:
a batch that small makes small products, which OpenBLAS ran no faster on two threads (batch-1
forward: resnet20 1.42 ms on one, 1.50 on two; vgg_small 0.49 and 0.53), and far slower when
another process wanted a core (resnet20: a median of 5-18 ms).
Splitting the whole network, not each kernel, costs one hand-over per call instead of one per
layer, and keeps a lane's activations in its own core's caches.

The lane count is $CNNC_THREADS, else the CPUs this process may run on (`usable_cpus`). A
training step's lanes are replicas (cnnc/replicas.py): each call gets its lane's handle, whose
sum() adds the batchnorm statistics up across the lanes. On Linux the lanes of a training step and of a
forward of up to EVAL_BATCH images are processes instead (cnnc/forked_lanes.py, 5-10% faster);
these threads then run larger forwards, everything under MPI, and calls of more lanes than
CPUs.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor, wait
from functools import cache

import numpy as np

from .kernels import set_blas_threads
from .replicas import LaneGroup

# A lane gets at least this many images: below it, handing work to another thread costs more
# than it saves (lenet5's forward: 2 images 158 us whole, 324 us split in two; 8 images 725 us
# whole, 532 us split; vgg_small, 8 images: 10.4 ms whole, 5.5 ms split).
MIN_IMAGES_PER_LANE = 4


def lane_count() -> int:
    configured = os.environ.get("CNNC_THREADS", "").strip()
    if configured.isdigit() and int(configured) > 0:
        return int(configured)
    return usable_cpus()


def usable_cpus() -> int:
    """The CPUs this process may run on, and no more than its cgroup's CPU quota (a container's
    `--cpus`, systemd's CPUQuota) lets it keep busy."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = cgroup_cpu_quota()
    return cpus if quota is None else max(1, min(cpus, int(quota)))


@cache
def cgroup_cpu_quota(root: str = "/sys/fs/cgroup", membership: str = "/proc/self/cgroup") -> float | None:
    """The smallest CPU quota (cgroup v2 `cpu.max`) of this process's cgroup and its ancestors, in
    CPUs; None without one. Read once: reading it at every call would cost batch-1 latency."""
    try:
        with open(membership) as f:
            path = next(line.split(":", 2)[2].strip() for line in f if line.startswith("0::"))
    except (OSError, StopIteration):
        return None
    quotas = []
    while True:
        try:
            with open(os.path.join(root, path.lstrip("/"), "cpu.max")) as f:
                limit, period = f.read().split()
            quotas.append(int(limit) / int(period))
        except (OSError, ValueError):  # no such file, or "max": no quota at this level
            pass
        if path in ("/", ""):
            return min(quotas, default=None)
        path = os.path.dirname(path)


# One call's lanes at a time: two steps started together from two threads could each get one of
# the pool's threads and wait at their barriers for a lane that never gets one.
_one_call = threading.Lock()


@cache
def _pool(workers: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cnnc-lane")


def slices(n: int, lanes: int) -> list[slice]:
    """The batch's images cut into at most `lanes` contiguous, near-equal slices."""
    parts = max(1, min(lanes, n // MIN_IMAGES_PER_LANE))
    return [slice(k * n // parts, (k + 1) * n // parts) for k in range(parts)]


def in_groups(forward, x, P, group: int) -> np.ndarray:
    """forward(x, P) on x in equal groups of at most `group` images (0: all at once), concatenated:
    a group's activations stay in the caches (memory.forward_group)."""
    groups = -(-len(x) // group) if group else 1
    if groups <= 1:
        return forward(x, P)
    n = len(x)
    return np.concatenate([forward(x[k * n // groups:(k + 1) * n // groups], P) for k in range(groups)])


def run(fn, calls: list[tuple], lanes: int, replicas: bool = False, across=None) -> list:
    """[fn(*args) for args in calls], the calls side by side on the lane threads; `lanes` is the
    lane count the calls were cut for. With `replicas`, each call gets one more argument, its
    lane's Replicas handle; `across` is the Replicas of the other processes of the step (a call
    that runs alone, on this thread, gets it; None when the step has one process).

    This thread only hands out and waits: a Ctrl-C (KeyboardInterrupt) raised inside a barrier's
    wait left the barrier half-drained and the lanes waiting forever, when this thread was a
    lane. Now the interrupt reaches this thread; it breaks the lanes' barrier (a lane not yet
    handed its call would be waited for forever), waits until every lane has stopped (nothing
    may still write into the buffers once the caller goes on), and is raised."""
    set_blas_threads(1)  # a lane's, and one core's for a batch too small to cut (see the docstring)
    if len(calls) == 1:
        return [fn(*calls[0], *([across] if replicas else []))]
    group = LaneGroup(len(calls), across) if replicas else None
    handles = group.lanes() if group else [None] * len(calls)

    def lane(k):
        try:
            return fn(*calls[k], *([handles[k]] if replicas else []))
        except BaseException:
            if group:
                group.abort()  # the other lanes stop waiting for this one at their next sum
            raise

    assert len(calls) <= lanes, (len(calls), lanes)  # every lane needs a thread of the pool
    futures = []
    with _one_call:
        try:
            for k in range(len(calls)):
                futures.append(_pool(lanes).submit(lane, k))
            wait(futures)
        except BaseException:  # Ctrl-C, perhaps before every lane was handed its call
            if group:
                group.abort()  # the lanes stop at their next sum instead of waiting for a missing one
            wait(futures)
            raise
    failed = [e for e in (f.exception() for f in futures) if e is not None]
    if failed:  # a lane's own error, rather than the broken barrier it left the others
        raise next((e for e in failed if not isinstance(e, threading.BrokenBarrierError)), failed[0])
    return [f.result() for f in futures]
