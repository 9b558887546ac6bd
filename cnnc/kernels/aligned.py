"""Scratch arrays whose rows start on 64-byte boundaries, for the kernels' vector accumulators.

Numba aligns the arrays it allocates to 32 bytes; an AVX-512 vector is 64. A row that starts
32 bytes into a cache line makes every vector load and store of it touch two lines: the direct
kernel's forward, 16 -> 16 channels of 32x32, 32 images, one thread, ran at 1.32 ms with its
accumulators there and 0.82 ms with them aligned (the same sums, bit for bit)."""
import numpy as np
from numba import njit

ALIGN = 64  # bytes: a cache line, and an AVX-512 vector


@njit(cache=True)
def aligned_rows(rows, cols, dtype):
    """An uninitialized array of `rows` rows, each starting on a 64-byte boundary: its shape is
    (rows, cols rounded up to a whole number of 64 bytes); a row's first cols elements are
    `a[r, :cols]` (a contiguous slice, which Numba vectorizes like a whole row)."""
    raw = np.empty(1, dtype)
    per_line = ALIGN // raw.itemsize
    stride = (cols + per_line - 1) // per_line * per_line
    raw = np.empty(rows * stride + per_line, dtype)
    start = (-raw.ctypes.data % ALIGN) // raw.itemsize
    return raw[start:start + rows * stride].reshape((rows, stride))
