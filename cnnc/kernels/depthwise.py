"""Depthwise convolution kernels (groups = input channels; CNHW activations, (F, 1, Kh, Kw) weights):
forward with bias, residual and ReLU fused, and backward.

Filter f reads input channel f // M alone, M = F / C the depth multiplier. There is little
arithmetic per byte (9 multiply-adds per output for 3x3), so these kernels are about memory:
plane by plane, one output row at a time, the row stays in L1 while every tap adds its shifted
input row into it, and each input and output element passes through memory once. No im2col,
no BLAS. At stride 1 every tap's inner loop runs over contiguous rows and vectorizes.

The kernels are serial, as the other kernels: the runtime runs slices of the batch side by side.
"""
import numpy as np
from numba import njit


@njit(cache=True, fastmath=True)
def _tap_columns(offset, stride, width, out_width):
    """[q0, q1): the output columns q whose input column q*stride + offset is inside [0, width)."""
    q0 = (-offset + stride - 1) // stride if offset < 0 else 0
    last = width - 1 - offset
    q1 = last // stride + 1 if last >= 0 else 0
    return q0, max(q0, min(q1, out_width))


@njit(cache=True, nogil=True, fastmath=True)
def depthwise_forward(x, w, b, residual, out, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w, relu):
    """out = relu?(depthwise conv(x, w) + b + residual), the residual (a fused add's other input)
    unless it is empty. Padding is zeros: taps that fall on it are skipped."""
    C, N, H, W = x.shape
    F, KH, KW = w.shape[0], w.shape[2], w.shape[3]
    OH, OW = out.shape[2], out.shape[3]
    mult = F // C
    add = residual.size != 0
    for f in range(F):
        c, bf = f // mult, b[f]
        for n in range(N):
            src, dst = x[c, n], out[f, n]
            for p in range(OH):
                row = dst[p]
                for q in range(OW):
                    row[q] = bf
                for i in range(KH):
                    h = p * stride_h + i * dil_h - pad_top
                    if h < 0 or h >= H:
                        continue
                    srow = src[h]
                    for j in range(KW):
                        wij, offset = w[f, 0, i, j], j * dil_w - pad_left
                        q0, q1 = _tap_columns(offset, stride_w, W, OW)
                        for q in range(q0, q1):
                            row[q] += wij * srow[q * stride_w + offset]
                res = residual[f, n, p] if add else row
                for q in range(OW):  # the loop-invariant branches are hoisted out of the loop
                    v = row[q]
                    if add:
                        v += res[q]
                    row[q] = max(v, 0) if relu else v


@njit(cache=True, nogil=True, fastmath=True)
def depthwise_backward(x, w, out, dout, dx, dw, db, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w,
                       relu, need_dx):
    """dw and db are overwritten; dx (when need_dx) is added into. With relu, the gradient is
    dout where out > 0 (out is the fused ReLU's output)."""
    C, N, H, W = x.shape
    F, KH, KW = w.shape[0], w.shape[2], w.shape[3]
    OH, OW = out.shape[2], out.shape[3]
    mult = F // C
    g = np.empty(OW, x.dtype)  # one row of the output gradient, masked
    acc = np.empty((KH, KW), np.float64)
    for f in range(F):
        c = f // mult
        acc[:] = 0
        sb = 0.0
        for n in range(N):
            xs, gs, os = x[c, n], dout[f, n], out[f, n]
            for p in range(OH):
                grow, orow = gs[p], os[p]
                for q in range(OW):
                    v = grow[q] if not relu or orow[q] > 0 else 0
                    g[q] = v
                    sb += v
                for i in range(KH):
                    h = p * stride_h + i * dil_h - pad_top
                    if h < 0 or h >= H:
                        continue
                    xrow = xs[h]
                    for j in range(KW):
                        offset = j * dil_w - pad_left
                        q0, q1 = _tap_columns(offset, stride_w, W, OW)
                        s = 0.0
                        for q in range(q0, q1):
                            s += g[q] * xrow[q * stride_w + offset]
                        acc[i, j] += s
                        if need_dx:
                            wij, dxrow = w[f, 0, i, j], dx[c, n, h]
                            for q in range(q0, q1):
                                dxrow[q * stride_w + offset] += wij * g[q]
        db[f] = sb
        for i in range(KH):
            for j in range(KW):
                dw[f, 0, i, j] = acc[i, j]
