"""Pooling kernels (CNHW activations): max, average and global average, forward and backward."""
import numpy as np
from numba import njit


@njit(cache=True)
def _window(p, k, stride, pad, size):
    """The input indices [lo, hi) of output position p's window, clipped to the real input."""
    start = p * stride - pad
    return max(start, 0), min(start + k, size)


@njit(cache=True, fastmath=True)
def maxpool_forward(x, out, argmax, kh, kw, stride_h, stride_w, pad_top, pad_left):
    C, N, H, W = x.shape
    OH, OW = out.shape[2], out.shape[3]
    for c in range(C):
        for n in range(N):
            plane = x[c, n]
            for p in range(OH):
                h0, h1 = _window(p, kh, stride_h, pad_top, H)
                for q in range(OW):
                    w0, w1 = _window(q, kw, stride_w, pad_left, W)
                    best, where = -np.inf, -1  # padding never wins: only real elements compete
                    for h in range(h0, h1):
                        for w in range(w0, w1):
                            if plane[h, w] > best or where < 0:
                                best, where = plane[h, w], h * W + w
                    # a window lying wholly in the padding (only possible with extreme padding) gives 0
                    out[c, n, p, q] = best if where >= 0 else 0
                    argmax[c, n, p, q] = where


@njit(cache=True)
def maxpool_backward(dout, argmax, dx):
    C, N, OH, OW = dout.shape
    W = dx.shape[3]
    for c in range(C):
        for n in range(N):
            for p in range(OH):
                for q in range(OW):
                    where = argmax[c, n, p, q]
                    if where >= 0:
                        dx[c, n, where // W, where % W] += dout[c, n, p, q]


@njit(cache=True, fastmath=True)
def avgpool_forward(x, out, kh, kw, stride_h, stride_w, pad_top, pad_left):
    C, N, H, W = x.shape
    OH, OW = out.shape[2], out.shape[3]
    for c in range(C):
        for n in range(N):
            plane = x[c, n]
            for p in range(OH):
                h0, h1 = _window(p, kh, stride_h, pad_top, H)
                for q in range(OW):
                    w0, w1 = _window(q, kw, stride_w, pad_left, W)
                    s = 0.0
                    for h in range(h0, h1):
                        for w in range(w0, w1):
                            s += plane[h, w]
                    count = max(h1 - h0, 0) * max(w1 - w0, 0)  # real elements only
                    out[c, n, p, q] = s / count if count > 0 else 0


@njit(cache=True, fastmath=True)
def avgpool_backward(dout, dx, kh, kw, stride_h, stride_w, pad_top, pad_left):
    C, N, OH, OW = dout.shape
    H, W = dx.shape[2], dx.shape[3]
    for c in range(C):
        for n in range(N):
            plane = dx[c, n]
            for p in range(OH):
                h0, h1 = _window(p, kh, stride_h, pad_top, H)
                for q in range(OW):
                    w0, w1 = _window(q, kw, stride_w, pad_left, W)
                    count = max(h1 - h0, 0) * max(w1 - w0, 0)
                    if count == 0:
                        continue
                    g = dout[c, n, p, q] / count
                    for h in range(h0, h1):
                        for w in range(w0, w1):
                            plane[h, w] += g


@njit(cache=True, fastmath=True)
def globalavgpool_forward(x, out):
    C, N, H, W = x.shape
    for c in range(C):
        for n in range(N):
            out[c, n, 0, 0] = x[c, n].sum() / (H * W)


@njit(cache=True, fastmath=True)
def globalavgpool_backward(dout, dx):
    C, N, H, W = dx.shape
    for c in range(C):
        for n in range(N):
            dx[c, n] += dout[c, n, 0, 0] / (H * W)
