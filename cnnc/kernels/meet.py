"""The lanes of a training step meeting to add up a buffer (batchnorm's sums), in shared memory.

The lanes are processes (cnnc/forked_lanes.py), so the arrays live in memory that every one of
them maps. A lane publishes its sums and a count of the meetings it has reached, with atomic
stores, and spins on the other lanes' counts, which it reads with atomic loads, without the GIL.
After `spins` turns of the loop it gives up and returns, so that its caller can sleep a moment
and come back: a lane whose partner lost its core does not burn its own.

The arrays: `arrived[k * LINE]`, the meetings lane k has reached this step (each lane's count on
a cache line of its own), `partials[g, k]`, lane k's sums in generation g = meeting % 2 (two
generations, so that a lane already at the next meeting cannot overwrite what a slower lane is
still adding up: it gets no further than that meeting's wait before the slower one has arrived
there too), and `abort[0]`, set when a lane failed.
"""
import numpy as np
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

LINE = 8  # int64 slots a cache line: each lane's count on a line of its own


@intrinsic
def _load_acquire(typingctx, array, index):
    """array[index], read with an atomic acquire load: never hoisted out of a loop, and every
    write the writer made before its release store is visible after it."""
    def codegen(context, builder, sig, args):
        view = context.make_array(sig.args[0])(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, sig.args[0], view, [args[1]])
        return builder.load_atomic(ptr, "acquire", 8)
    return types.int64(array, index), codegen


@intrinsic
def _store_release(typingctx, array, index, value):
    """array[index] = value, with an atomic release store: every write before it is visible to a
    thread that reads the value with an acquire load."""
    def codegen(context, builder, sig, args):
        view = context.make_array(sig.args[0])(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, sig.args[0], view, [args[1]])
        builder.store_atomic(args[2], ptr, "release", 8)
        return context.get_dummy_value()
    return types.void(array, index, value), codegen


@njit(cache=True, nogil=True)
def sum_across_lanes(buffer, lane, lanes, meeting, partials, arrived, abort, spins):
    """Lane `lane`'s part in meeting number `meeting` (counted from 1) of lanes 0 to `lanes` - 1:
    publishes its buffer (once: a call that comes back after giving up finds it published), waits
    for every lane, and leaves their sum, in lane order, in `buffer`. Returns 1 when done, 0 when
    it gave up after `spins` turns, -1 when a lane failed (abort[0] set)."""
    flat = buffer.ravel()
    rows = partials[meeting % 2]
    n = flat.size
    if _load_acquire(arrived, lane * LINE) < meeting:
        rows[lane, :n] = flat
        _store_release(arrived, lane * LINE, meeting)
    for _ in range(spins):
        if _load_acquire(abort, 0) != 0:
            return -1
        waiting = 0
        for k in range(lanes):
            if _load_acquire(arrived, k * LINE) < meeting:
                waiting += 1
        if waiting == 0:
            flat[:] = rows[0, :n]
            for k in range(1, lanes):
                flat += rows[k, :n]
            return 1
    return 0

