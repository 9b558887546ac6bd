"""Depthwise convolution kernels (groups = input channels; CNHW activations, (F, 1, Kh, Kw) weights):
forward with bias, residual and ReLU fused, and backward.

Filter f reads input channel f // M alone, M = F / C the depth multiplier. There is little
arithmetic per byte (9 multiply-adds per output for 3x3), so these kernels are about memory:
plane by plane, each input and output element passes through memory once, with no im2col and
no BLAS. At stride 1 (most layers) a plane is copied into a small zero-padded buffer that stays
in L1, and each tap is one long vectorized run over it (_forward_stride1, _backward_stride1).
At other strides the kernels go one output row at a time, every tap adding its input row
(strided, so not vectorized) into the row.

The kernels are serial, as the other kernels: the runtime runs slices of the batch side by side.
"""
import numpy as np
from numba import njit


@njit(cache=True, fastmath=True)
def _tap_columns(KW, dil_w, pad_left, stride, width, out_width):
    """cols[j] = [q0, q1): the output columns q whose input column q*stride + j*dil_w - pad_left
    is inside [0, width), for each tap column j. Computed once per call: the divisions cost more
    than a short row's work when done per row (mobilenet's last planes are 2x2 and 4x4)."""
    cols = np.empty((KW, 2), np.int64)
    for j in range(KW):
        offset = j * dil_w - pad_left
        q0 = (-offset + stride - 1) // stride if offset < 0 else 0
        last = width - 1 - offset
        q1 = last // stride + 1 if last >= 0 else 0
        cols[j, 0], cols[j, 1] = q0, max(q0, min(q1, out_width))
    return cols


@njit(cache=True, fastmath=True)
def _pad_plane(src, pad_top, pad_left, xp, WP):
    """Copies the plane src into xp (flat, rows WP apart) at (pad_top, pad_left), what fits; the
    rest of xp is left as it is: zero, as the caller made it, at the same places for every plane."""
    HP = xp.size // WP - 1
    for h in range(min(src.shape[0], HP - pad_top)):
        row, dst = src[h], xp[(h + pad_top) * WP + pad_left:]
        for q in range(min(src.shape[1], WP - pad_left)):
            dst[q] = row[q]


@njit(cache=True, fastmath=True)
def _forward_stride1(x, w, b, residual, out, pad_top, pad_left, dil_h, dil_w, relu):
    """depthwise_forward at stride 1, plane by plane over a zero-padded copy xp of the input plane,
    HP x WP (what the windows cover, one zero row more). Output (p, q) is computed at p*WP + q of a
    "wide" plane, so each tap is one contiguous run over the whole plane: wide[o] += w * xp[o + tap
    offset], vectorized and long (per row, the loop set-up of 9 short runs cost more than their
    work on 32-wide planes); columns q >= OW are discarded. Its loops index views from 0, so
    that Numba drops its negative-index checks and vectorizes them (indexed as xp[o + offset],
    they compiled to scalar code): at batch 64, mobilenet_v1's stride-1 layers took 1.1-4.6 ms
    this way, 7-27 ms row by row."""
    C, N = x.shape[0], x.shape[1]
    F, KH, KW = w.shape[0], w.shape[2], w.shape[3]
    OH, OW = out.shape[2], out.shape[3]
    mult, add = F // C, residual.size != 0
    WP = OW + (KW - 1) * dil_w
    HP = OH + (KH - 1) * dil_h
    run = OH * WP
    xp = np.zeros((HP + 1) * WP, x.dtype)  # the last taps' runs reach into the extra row
    wide = np.empty(run, x.dtype)
    for c in range(C):
        for n in range(N):
            _pad_plane(x[c, n], pad_top, pad_left, xp, WP)
            for f in range(c * mult, (c + 1) * mult):
                for o in range(run):
                    wide[o] = 0
                for i in range(KH):
                    for j in range(KW):
                        wij, tap = w[f, 0, i, j], xp[i * dil_h * WP + j * dil_w:]
                        for o in range(run):
                            wide[o] += wij * tap[o]
                bf = b[f]
                for p in range(OH):
                    dst, src = out[f, n, p], wide[p * WP:]
                    res = residual[f, n, p] if add else dst
                    for q in range(OW):
                        v = src[q] + bf
                        if add:
                            v += res[q]
                        dst[q] = max(v, 0) if relu else v


@njit(cache=True, nogil=True, fastmath=True)
def depthwise_forward(x, w, b, residual, out, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w, relu):
    """out = relu?(depthwise conv(x, w) + b + residual), the residual (a fused add's other input)
    unless it is empty. Padding is zeros: taps that fall on it are skipped."""
    if stride_h == 1 and stride_w == 1:
        _forward_stride1(x, w, b, residual, out, pad_top, pad_left, dil_h, dil_w, relu)
        return
    C, N, H, W = x.shape
    F, KH, KW = w.shape[0], w.shape[2], w.shape[3]
    OH, OW = out.shape[2], out.shape[3]
    mult = F // C
    add = residual.size != 0
    cols = _tap_columns(KW, dil_w, pad_left, stride_w, W, OW)
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
                        for q in range(cols[j, 0], cols[j, 1]):
                            row[q] += wij * srow[q * stride_w + offset]
                res = residual[f, n, p] if add else row
                for q in range(OW):  # the loop-invariant branches are hoisted out of the loop
                    v = row[q]
                    if add:
                        v += res[q]
                    row[q] = max(v, 0) if relu else v


@njit(cache=True, fastmath=True)
def _unpad_plane_add(xp, WP, pad_top, pad_left, dst):
    """dst += the part of xp that _pad_plane filled from a plane of dst's shape."""
    HP = xp.size // WP - 1
    for h in range(min(dst.shape[0], HP - pad_top)):
        row, src = dst[h], xp[(h + pad_top) * WP + pad_left:]
        for q in range(min(dst.shape[1], WP - pad_left)):
            row[q] += src[q]


@njit(cache=True, fastmath=True)
def _backward_stride1(x, w, out, dout, dx, dw, db, pad_top, pad_left, dil_h, dil_w, relu, need_dx):
    """depthwise_backward at stride 1, on the wide planes of _forward_stride1: the masked gradient
    gw (OH x WP, zero in the discarded columns), then per tap dw += gw . xp[tap:] and
    dxp[tap:] += w * gw, each one contiguous run; dxp goes back into dx without its padding."""
    C, N = x.shape[0], x.shape[1]
    F, KH, KW = w.shape[0], w.shape[2], w.shape[3]
    OH, OW = out.shape[2], out.shape[3]
    mult = F // C
    WP = OW + (KW - 1) * dil_w
    HP = OH + (KH - 1) * dil_h
    run = OH * WP
    xp = np.zeros((HP + 1) * WP, x.dtype)
    dxp = np.empty((HP + 1) * WP, x.dtype)
    gw = np.zeros(run, x.dtype)  # columns OW.. stay zero
    acc = np.zeros((F, KH * KW), np.float64)
    sums = np.zeros(F, np.float64)
    for c in range(C):
        for n in range(N):
            _pad_plane(x[c, n], pad_top, pad_left, xp, WP)
            if need_dx:
                for o in range(dxp.size):
                    dxp[o] = 0
            for f in range(c * mult, (c + 1) * mult):
                s = 0.0
                for p in range(OH):
                    src, o_, dst = dout[f, n, p], out[f, n, p], gw[p * WP:]
                    for q in range(OW):
                        v = src[q] if not relu or o_[q] > 0 else 0
                        dst[q] = v
                        s += v
                sums[f] += s
                for i in range(KH):
                    for j in range(KW):
                        offset = i * dil_h * WP + j * dil_w
                        tap, t = xp[offset:], 0.0
                        for o in range(run):
                            t += gw[o] * tap[o]
                        acc[f, i * KW + j] += t
                        if need_dx:
                            wij, dtap = w[f, 0, i, j], dxp[offset:]
                            for o in range(run):
                                dtap[o] += wij * gw[o]
            if need_dx:
                _unpad_plane_add(dxp, WP, pad_top, pad_left, dx[c, n])
    for f in range(F):
        db[f] = sums[f]
        for i in range(KH):
            for j in range(KW):
                dw[f, 0, i, j] = acc[f, i * KW + j]


@njit(cache=True, nogil=True, fastmath=True)
def depthwise_backward(x, w, out, dout, dx, dw, db, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w,
                       relu, need_dx):
    """dw and db are overwritten; dx (when need_dx) is added into. With relu, the gradient is
    dout where out > 0 (out is the fused ReLU's output)."""
    if stride_h == 1 and stride_w == 1:
        _backward_stride1(x, w, out, dout, dx, dw, db, pad_top, pad_left, dil_h, dil_w, relu, need_dx)
        return
    C, N, H, W = x.shape
    F, KH, KW = w.shape[0], w.shape[2], w.shape[3]
    OH, OW = out.shape[2], out.shape[3]
    mult = F // C
    g = np.empty(OW, x.dtype)  # one row of the output gradient, masked
    cols = _tap_columns(KW, dil_w, pad_left, stride_w, W, OW)
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
                    xrow, dxrow = xs[h], dx[c, n, h] if need_dx else xs[h]
                    for j in range(KW):
                        offset, q0, q1 = j * dil_w - pad_left, cols[j, 0], cols[j, 1]
                        s = 0.0
                        for q in range(q0, q1):
                            s += g[q] * xrow[q * stride_w + offset]
                        acc[i, j] += s
                        if need_dx:
                            wij = w[f, 0, i, j]
                            for q in range(q0, q1):
                                dxrow[q * stride_w + offset] += wij * g[q]
        db[f] = sb
        for i in range(KH):
            for j in range(KW):
                dw[f, 0, i, j] = acc[i, j]
