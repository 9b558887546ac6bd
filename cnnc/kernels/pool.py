"""Pooling kernels (CNHW activations): max, average and global average, forward and backward.

Padding is never read: windows are clipped to the input, so padding can never win a max nor
count in an average (unless the average counts it, count_pad: then only its divisor does). A
ceil-mode window hanging past the input's end is clipped the same way. Average pooling runs over one output row at a time: for each kernel tap
(h, j), all outputs q of the row whose tap is real are updated by one strided sweep that LLVM
vectorizes.
"""
import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def _span(p, k, stride, pad, size):
    """The input indices [lo, hi) of output p's window that lie inside the input (one axis)."""
    start = p * stride - pad
    return max(start, 0), max(min(start + k, size), 0)


@njit(cache=True, nogil=True)
def _taps(j, stride, pad, size, n_out):
    """Output columns [lo, hi) whose window tap j, at input column q*stride + j - pad, is real."""
    lo = 0 if pad - j <= 0 else (pad - j + stride - 1) // stride
    last = size - 1 + pad - j
    hi = min(n_out, last // stride + 1) if last >= 0 else 0
    return lo, max(lo, hi)


@njit(cache=True, nogil=True)
def _divisors(k, stride, pad, pad_end, size, n_out, count_pad):
    """counts[q]: how many elements output q's window (one axis) averages over: the real ones,
    or with count_pad those of the padded input [-pad, size + pad_end) (PyTorch's
    count_include_pad: a ceil-mode window hanging past the padding is clipped to it)."""
    lo, hi = (-pad, size + pad_end) if count_pad else (0, size)
    counts = np.empty(n_out, np.int64)
    for q in range(n_out):
        start = q * stride - pad
        counts[q] = max(min(start + k, hi) - max(start, lo), 0)
    return counts


@njit(cache=True, nogil=True, fastmath=True)
def maxpool_forward(x, out, argmax, kh, kw, stride_h, stride_w, pad_top, pad_left):
    C, N, H, W = x.shape
    OH, OW = out.shape[2], out.shape[3]
    if kh == kw == stride_h == stride_w == 2 and pad_top == pad_left == 0 and 2 * OH <= H and 2 * OW <= W:
        _maxpool_2x2(x, out, argmax)
        return
    for c in range(C):
        for n in range(N):
            plane = x[c, n].reshape(-1)
            for p in range(OH):
                h0, h1 = _span(p, kh, stride_h, pad_top, H)
                best_row, where_row = out[c, n, p], argmax[c, n, p]
                for q in range(OW):
                    w0, w1 = _span(q, kw, stride_w, pad_left, W)
                    best, where = -np.inf, -1
                    for h in range(h0, h1):  # row-major scan and a strict >: the first max wins
                        for w in range(w0, w1):
                            v = plane[h * W + w]
                            # selects, not branches: random data mispredicts a branch half the time
                            where = h * W + w if v > best else where
                            best = max(best, v)
                    if where < 0 and h1 > h0 and w1 > w0:  # the window is all -inf
                        where = h0 * W + w0
                    best_row[q] = best if where >= 0 else 0  # 0 for a window wholly in the padding
                    where_row[q] = where


@njit(cache=True, nogil=True, fastmath=True)
def _maxpool_2x2(x, out, argmax):
    """The common 2x2, stride 2, unpadded case, unrolled: 3-6x faster than the general loop."""
    C, N, H, W = x.shape
    OH, OW = out.shape[2], out.shape[3]
    for c in range(C):
        for n in range(N):
            for p in range(OH):
                top, bottom = x[c, n, 2 * p], x[c, n, 2 * p + 1]
                best_row, where_row = out[c, n, p], argmax[c, n, p]
                for q in range(OW):
                    best, where = top[2 * q], 2 * p * W + 2 * q
                    for v, at in ((top[2 * q + 1], where + 1), (bottom[2 * q], where + W),
                                  (bottom[2 * q + 1], where + W + 1)):
                        where = at if v > best else where
                        best = max(best, v)
                    best_row[q], where_row[q] = best, where


@njit(cache=True, nogil=True)
def maxpool_backward(dout, argmax, dx):
    C, N, OH, OW = dout.shape
    for c in range(C):
        for n in range(N):
            plane = dx[c, n].reshape(-1)
            for p in range(OH):
                g, where = dout[c, n, p], argmax[c, n, p]
                for q in range(OW):
                    if where[q] >= 0:
                        plane[where[q]] += g[q]


@njit(cache=True, nogil=True, fastmath=True)
def avgpool_forward(x, out, kh, kw, stride_h, stride_w, pad_top, pad_left, pad_bottom, pad_right, count_pad):
    C, N, H, W = x.shape
    OH, OW = out.shape[2], out.shape[3]
    rows = _divisors(kh, stride_h, pad_top, pad_bottom, H, OH, count_pad)
    counts = _divisors(kw, stride_w, pad_left, pad_right, W, OW, count_pad)
    for c in range(C):
        for n in range(N):
            for p in range(OH):
                acc = out[c, n, p]
                acc[:] = 0
                h0, h1 = _span(p, kh, stride_h, pad_top, H)
                for h in range(h0, h1):
                    for j in range(kw):
                        q0, q1 = _taps(j, stride_w, pad_left, W, OW)
                        src, a = x[c, n, h, q0 * stride_w + j - pad_left:], acc[q0:]
                        for k in range(q1 - q0):
                            a[k] += src[k * stride_w]
                for q in range(OW):
                    real = rows[p] * counts[q]
                    acc[q] = acc[q] / real if real > 0 else 0


@njit(cache=True, nogil=True, fastmath=True)
def avgpool_backward(dout, dx, kh, kw, stride_h, stride_w, pad_top, pad_left, pad_bottom, pad_right, count_pad):
    C, N, OH, OW = dout.shape
    H, W = dx.shape[2], dx.shape[3]
    rows = _divisors(kh, stride_h, pad_top, pad_bottom, H, OH, count_pad)
    counts = _divisors(kw, stride_w, pad_left, pad_right, W, OW, count_pad)
    share = np.empty(OW, dx.dtype)
    for c in range(C):
        for n in range(N):
            for p in range(OH):
                h0, h1 = _span(p, kh, stride_h, pad_top, H)
                for q in range(OW):
                    real = rows[p] * counts[q]
                    share[q] = dout[c, n, p, q] / real if real > 0 else 0
                for h in range(h0, h1):
                    for j in range(kw):
                        q0, q1 = _taps(j, stride_w, pad_left, W, OW)
                        dst, s = dx[c, n, h, q0 * stride_w + j - pad_left:], share[q0:]
                        for k in range(q1 - q0):
                            dst[k * stride_w] += s[k]


@njit(cache=True, nogil=True, fastmath=True)
def globalavgpool_forward(x, out):
    """Each plane's mean, summed element by element: `x[c, n].sum()` made a view per plane, 7x
    slower on mobilenet_v1's 1024 planes of 2x2 per image (1.66 against 0.22 ms at 128 images)."""
    C, N, H, W = x.shape
    zero = x.dtype.type(0)
    for c in range(C):
        for n in range(N):
            total = zero
            for h in range(H):
                for w in range(W):
                    total += x[c, n, h, w]
            out[c, n, 0, 0] = total / (H * W)


@njit(cache=True, nogil=True, fastmath=True)
def globalavgpool_backward(dout, dx):
    C, N, H, W = dx.shape
    for c in range(C):
        for n in range(N):
            share = dout[c, n, 0, 0] / (H * W)
            plane = dx[c, n]  # element by element: `plane += share` would cost seconds of compile
            for h in range(H):
                for w in range(W):
                    plane[h, w] += share
