"""Winograd convolutions: 3x3 filters at stride 1 (CNHW activations, OIHW weights), forward with
bias, residual and ReLU fused, and backward. lower/conv.py sends such layers here from 16 input
channels on (kernels/conv.py's im2col is faster below).

Two tile sizes. F(2x2, 3x3) makes 2x2 outputs from 4x4 input tiles with 16 products; F(4x4,
3x3) 4x4 outputs from 6x6 tiles with 36: 2.25 multiplications per output and channel pair
instead of 4, and 2.25 transformed values per output through memory instead of 4 (on layers of
16 channels the transforms, not the products, take most of the time). F(4x4) is 1.1-1.5x faster
wherever a call has enough tiles (docs/performance.md) but rounds about ten times coarser: the
largest error is about 3e-5 of a layer's output spread, against 1.4e-6. So:
- training's forward (conv3x3_forward with allow_f4 false) is F(2x2): its outputs decide the
  ReLU masks and max-pool choices that the gradient follows, and a coarser forward flips more
  of them than float32 gradient checks against PyTorch can tolerate (resnet_tiny's conv1
  gradient moved by 7e-4 at one test point);
- the backward and inference's forward (allow_f4 true) are F(4x4) when the call has
  F4_MIN_TILES tiles or more (the backward's rounding stays in the gradient: 5e-6 on that same
  test point), F(2x2) below; an inference forward given a memo of its transformed filters
  (winograd_memo) from F4_MEMO_MIN_TILES. _forward and _backward serve both tile sizes.

The kernels are serial, as the others: the runtime runs slices of the batch side by side.
"""
import math

import numpy as np
from numba import njit

from .conv import _factor

# F(4x4) from this many 4x4 tiles a call: a 32x32 image has 64 (1.25x faster at batch 1); one of
# 16x16 has 16, where F(4x4)'s 36 small products and weight transform made it 1.2x slower, and
# 8x8 at batch 1 1.8x slower.
F4_MIN_TILES = 64
# ...and from this many when a memo keeps the transformed filters (winograd_memo): with the
# transform gone, vgg_small's batch-1 forward (its 16x16 layers) took 260-265 us with F(4x4)
# against 272-286 with F(2x2); resnet20's (its 16x16 layers too; 8x8 has 4 tiles) was the same.
F4_MEMO_MIN_TILES = 16


# ---- 3x3, stride 1: Winograd F(2x2, 3x3) ----------------------------------------------------
#
# Each 2x2 block of outputs comes from a 4x4 input tile d: Y = A' [(G g G') * (B' d B)] A,
# with the products for all channels done as 16 matrix products V[k] (tiles x C) @ U[k] (C x F),
# k = one of the 4x4 positions. That is 16 multiplications per 2x2 outputs and channel pair
# instead of 36. In this orientation OpenBLAS runs the products at 60-63 GFLOP/s on one core for
# vgg_small's layers (43-52 as U @ V: their inner dimension is only C), which is the work of a
# direct convolution at 135-140; im2col reaches 37-46.
# B' = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1], G = [1 0 0; .5 .5 .5; .5 -.5 .5; 0 0 1],
# A' = [1 1 1 0; 0 1 -1 -1].

# Tiles per chunk (one 32x32 image has 256 2x2 tiles). Alone on one core, 256-1024 ran within 10%
# of each other; with both cores running lanes, which share the L3 and memory, 64-128 ran whole
# steps 5-10% faster than 512 (vgg_small's training step 37.0 -> 33.4 ms, resnet20's batch-256
# inference 130 -> 119 ms, one process alternating).
WINOGRAD_TILES = 128


@njit(cache=True, fastmath=True)
def _winograd_weights(w, scale, u):
    """u[4i+j, c, f] = (G w[f, c] G')[i, j] * scale[f] (no scale when empty: _factor), filters
    innermost, as u is laid out."""
    F, C = w.shape[0], w.shape[1]
    gg = np.empty((4, 3), w.dtype)  # G g, one filter tap column at a time
    for c in range(C):
        for f in range(F):
            g, s = w[f, c], _factor(scale, f)
            for j in range(3):
                g0, g1, g2 = g[0, j] * s, g[1, j] * s, g[2, j] * s
                gg[0, j] = g0
                gg[1, j] = 0.5 * (g0 + g1 + g2)
                gg[2, j] = 0.5 * (g0 - g1 + g2)
                gg[3, j] = g2
            for i in range(4):
                u[4 * i + 0, c, f] = gg[i, 0]
                u[4 * i + 1, c, f] = 0.5 * (gg[i, 0] + gg[i, 1] + gg[i, 2])
                u[4 * i + 2, c, f] = 0.5 * (gg[i, 0] - gg[i, 1] + gg[i, 2])
                u[4 * i + 3, c, f] = gg[i, 2]


@njit(cache=True, fastmath=True)
def _channels_innermost(x, n, pt, pl, xt):
    """xt[h + pt, (w + pl)*C + c] = x[c, n, h, w] where that falls inside xt (HP rows of WP*C):
    image n, padded, with its channels innermost, the one strided pass of both input transforms.
    The padding is left as it was (zero: the callers zero xt once)."""
    C, _, H, W = x.shape
    HP, WP = xt.shape[0], xt.shape[1] // C
    h1, w1 = min(H, HP - pt), min(W, WP - pl)  # the rows and columns of x inside the padded tiles
    for c in range(C):
        for h in range(h1):
            src, dst = x[c, n, h], xt[h + pt, pl * C + c:]
            for w in range(w1):
                dst[w * C] = src[w]


@njit(cache=True, fastmath=True)
def _winograd_inputs(x, n0, m, pt, pl, th, tw, v):
    """v[4i+j, t, c] = (B' d B)[i, j] for the 4x4 tile d of tile t = (n*th + ty)*tw + tx of
    images n0 ... n0+m-1: rows and columns outside x are the padding. As _winograd4_inputs: a
    channels-innermost padded copy of each image, then the row transform in one run (one thread,
    32 images: 1.2-1.8x faster than reading x in the row transform, on 32 and 64 channels)."""
    C = x.shape[0]
    WP = 2 * tw + 2
    xt = np.zeros((2 * th + 2, WP * C), x.dtype)
    e = np.empty((4, WP, C), x.dtype)
    ef = e.reshape(4, WP * C)
    e0, e1, e2, e3 = ef[0], ef[1], ef[2], ef[3]
    for n in range(m):
        _channels_innermost(x, n0 + n, pt, pl, xt)
        for ty in range(th):
            r = 2 * ty
            s0, s1, s2, s3 = xt[r], xt[r + 1], xt[r + 2], xt[r + 3]
            for k in range(WP * C):
                d0, d1, d2, d3 = s0[k], s1[k], s2[k], s3[k]
                e0[k], e1[k], e2[k], e3[k] = d0 - d2, d1 + d2, d2 - d1, d1 - d3
            t0 = (n * th + ty) * tw
            for tx in range(tw):
                t = t0 + tx
                for i in range(4):
                    a, b_, c_, d = e[i, 2 * tx], e[i, 2 * tx + 1], e[i, 2 * tx + 2], e[i, 2 * tx + 3]
                    v0, v1, v2, v3 = v[4 * i, t], v[4 * i + 1, t], v[4 * i + 2, t], v[4 * i + 3, t]
                    for c in range(C):
                        v0[c] = a[c] - c_[c]
                        v1[c] = b_[c] + c_[c]
                        v2[c] = c_[c] - b_[c]
                        v3[c] = b_[c] - d[c]


@njit(cache=True, fastmath=True)
def _winograd_outputs(mm, b, residual, relu, n0, m, th, tw, out):
    """out[f, n0+n, 2ty+a, 2tx+b] = (A' M A)[a, b] + b[f] (+ the same element of residual unless
    it is empty; then ReLU), M[i, j] = mm[4i+j, t, f], for the images n0 ... n0+m-1. With an
    empty b the value alone is added into out instead (the input gradient of the backward). The
    mode comes from b, not from a flag: a literal True or False from the callers would make
    Numba compile this function once more for each.

    A row of tiles at a time: y[2a+b, tx, f] = (A' M A)[a, b] for the row's tiles along the
    filters (reading mm contiguously), then the row's 2x2 blocks go to their places in out from
    that small block, which stays in L1 (transposing straight from mm, along all tiles, was 3x
    slower for 64 filters: every read was a new cache line)."""
    F, OH, OW = out.shape[0], out.shape[2], out.shape[3]
    accumulate, add = b.size == 0, residual.size != 0
    y = np.empty((4, tw, F), mm.dtype)
    for n in range(m):
        for ty in range(th):
            t0 = (n * th + ty) * tw
            for tx in range(tw):  # s[a, j] = (A' M)[a, j]; y[a, 0] += s[a, 0..2], y[a, 1] += s[a, 1] - s[a, 2] - s[a, 3]
                y0, y1, y2, y3 = y[0, tx], y[1, tx], y[2, tx], y[3, tx]
                for j in range(4):
                    m0, m1, m2, m3 = mm[j, t0 + tx], mm[4 + j, t0 + tx], mm[8 + j, t0 + tx], mm[12 + j, t0 + tx]
                    for f in range(F):
                        s0 = m0[f] + m1[f] + m2[f]
                        s1 = m1[f] - m2[f] - m3[f]
                        if j == 0:
                            y0[f], y1[f], y2[f], y3[f] = s0, 0, s1, 0
                        elif j == 1:
                            y0[f] += s0
                            y1[f] += s0
                            y2[f] += s1
                            y3[f] += s1
                        elif j == 2:
                            y0[f] += s0
                            y1[f] -= s0
                            y2[f] += s1
                            y3[f] -= s1
                        else:
                            y1[f] -= s0
                            y3[f] -= s1
            for f in range(F):
                bf = 0 if accumulate else b[f]
                for a in range(2):
                    p = 2 * ty + a
                    if p >= OH:
                        break
                    dst = out[f, n0 + n, p]
                    res = residual[f, n0 + n, p] if add else dst
                    ya0, ya1 = y[2 * a], y[2 * a + 1]
                    for q in range(OW):
                        v = ya1[q // 2, f] if q % 2 else ya0[q // 2, f]
                        if accumulate:
                            dst[q] += v
                        else:
                            v += bf
                            if add:
                                v += res[q]
                            dst[q] = max(v, 0) if relu else v


# The backward of a 3x3 stride-1 layer, by Winograd too. The input gradient is a 3x3
# convolution of the output gradient g with the filters flipped and transposed (w'[c, f] =
# w[f, c] turned by 180 degrees), padded by 2 - pad: the forward's transforms and products as
# they are. The weight gradient is the adjoint of the forward's products: with V the input
# tiles as in the forward and dM = A dY A' the 2x2 blocks of g taken to 4x4 (F(4x4): 4x4 to 6x6),
# dU[k] = V[k]' @ dM[k] (C x tiles @ tiles x F, summed over the chunks), and dw = G' dU G.


@njit(cache=True, fastmath=True)
def _winograd_grads(g, n0, m, th, tw, gt, db):
    """gt[4i+j, t, f] = (A dY A')[i, j] for the 2x2 block dY of g[:, n0+n] at tile
    t = (n*th + ty)*tw + tx (zero past the edge of g), and db[f] += the sum of those images of g.
    A = [1 0; 1 1; 1 -1; 0 -1].

    A row of tiles at a time, as _winograd_inputs: e[i, q, f] = (A dY)[i] along the whole
    width first, then the row transform of each tile along the filters."""
    F, OH, OW = g.shape[0], g.shape[2], g.shape[3]
    e = np.zeros((4, 2 * tw, F), g.dtype)
    for n in range(m):
        for ty in range(th):
            p = 2 * ty
            for f in range(F):
                r0 = g[f, n0 + n, p]
                s = 0.0
                if p + 1 < OH:
                    r1 = g[f, n0 + n, p + 1]
                    for q in range(OW):
                        a, b_ = r0[q], r1[q]
                        e[0, q, f], e[1, q, f], e[2, q, f], e[3, q, f] = a, a + b_, a - b_, -b_
                        s += a + b_
                else:
                    for q in range(OW):
                        a = r0[q]
                        e[0, q, f], e[1, q, f], e[2, q, f], e[3, q, f] = a, a, a, 0
                        s += a
                db[f] += s
            t0 = (n * th + ty) * tw
            for tx in range(tw):
                t = t0 + tx
                for i in range(4):
                    a, b_ = e[i, 2 * tx], e[i, 2 * tx + 1]
                    v0, v1, v2, v3 = gt[4 * i, t], gt[4 * i + 1, t], gt[4 * i + 2, t], gt[4 * i + 3, t]
                    for f in range(F):
                        v0[f] = a[f]
                        v1[f] = a[f] + b_[f]
                        v2[f] = a[f] - b_[f]
                        v3[f] = -b_[f]


@njit(cache=True, fastmath=True)
def _winograd_weight_grads(du, dw):
    """dw[f, c] = G' dU G with dU[i, j] = du[4i+j, c, f]: the adjoint of _winograd_weights (dw overwritten)."""
    F, C = dw.shape[0], dw.shape[1]
    t = np.empty((3, 4), du.dtype)
    for c in range(C):
        for f in range(F):
            for j in range(4):
                m0, m1, m2, m3 = du[j, c, f], du[4 + j, c, f], du[8 + j, c, f], du[12 + j, c, f]
                t[0, j] = m0 + 0.5 * (m1 + m2)
                t[1, j] = 0.5 * (m1 - m2)
                t[2, j] = 0.5 * (m1 + m2) + m3
            for a in range(3):
                dw[f, c, a, 0] = t[a, 0] + 0.5 * (t[a, 1] + t[a, 2])
                dw[f, c, a, 1] = 0.5 * (t[a, 1] - t[a, 2])
                dw[f, c, a, 2] = 0.5 * (t[a, 1] + t[a, 2]) + t[a, 3]


@njit(cache=True, fastmath=True)
def _relu_masked(out, dout, n0, m, g):
    """g[f, n] = dout[f, n0+n] where out > 0, else 0, for n < m."""
    F = g.shape[0]
    for f in range(F):
        for n in range(m):
            src, o, dst = dout[f, n0 + n].reshape(-1), out[f, n0 + n].reshape(-1), g[f, n].reshape(-1)
            for k in range(dst.size):
                dst[k] = src[k] if o[k] > 0 else 0


# ---- 3x3, stride 1: Winograd F(4x4, 3x3) ----------------------------------------------------
#
# Each 4x4 block of outputs comes from a 6x6 input tile d: Y = A' [(G g G') * (B' d B)] A, with
# the products for all channels done as 36 matrix products V[k] (tiles x C) @ U[k] (C x F),
# k = one of the 6x6 positions: 2.25 multiplications per output and channel pair instead of 9.
# The matrices are Lavin and Gray's (points 0, 1, -1, 2, -2 and infinity):
# B' = [4 0 -5 0 1 0; 0 -4 -4 1 1 0; 0 4 -4 -1 1 0; 0 -2 -1 2 1 0; 0 2 -1 -2 1 0; 0 4 0 -5 0 1],
# G = [1/4 0 0; -1/6 -1/6 -1/6; -1/6 1/6 -1/6; 1/24 1/12 1/6; 1/24 -1/12 1/6; 0 0 1],
# A' = [1 1 1 1 1 0; 0 1 -1 2 -2 0; 0 1 1 4 4 0; 0 1 -1 8 -8 1].
# The transforms are F(2x2)'s, row of tiles at a time, with six-value columns.

# Tiles per chunk (a 32x32 image has 64 4x4 tiles). Alone on one core 256 was best; with both cores
# running lanes, 256 made vgg_small's training step 2% slower than F(2x2) and 32-64 11-14% faster.
WINOGRAD4_TILES = 64
TWO, FOUR, FIVE, EIGHT = np.float32(2), np.float32(4), np.float32(5), np.float32(8)  # not float64 constants


@njit(fastmath=True)
def _bt(d0, d1, d2, d3, d4, d5):
    """B' d: a column of six inputs to six transformed values."""
    return (FOUR * d0 - FIVE * d2 + d4, d3 + d4 - FOUR * (d1 + d2), FOUR * (d1 - d2) - d3 + d4,
            TWO * (d3 - d1) - d2 + d4, TWO * (d1 - d3) - d2 + d4, FOUR * d1 - FIVE * d3 + d5)


@njit(fastmath=True)
def _at(m0, m1, m2, m3, m4, m5):
    """A' m: six products to four outputs."""
    s, d, p, q = m1 + m2, m1 - m2, m3 + m4, m3 - m4
    return m0 + s + p, d + TWO * q, s + FOUR * p, d + EIGHT * q + m5


@njit(fastmath=True)
def _a(y0, y1, y2, y3):
    """A y, the adjoint of _at: four output gradients to six."""
    s, d = y0 + y2, y1 + y3
    p, q = y0 + FOUR * y2, TWO * y1 + EIGHT * y3
    return y0, s + d, s - d, p + q, p - q, y3


@njit(fastmath=True)
def _g(g0, g1, g2):
    """G g: three filter taps to six."""
    return (g0 / 4, -(g0 + g1 + g2) / 6, -(g0 - g1 + g2) / 6, g0 / 24 + g1 / 12 + g2 / 6,
            g0 / 24 - g1 / 12 + g2 / 6, g2)


@njit(fastmath=True)
def _gt(u0, u1, u2, u3, u4, u5):
    """G' u, the adjoint of _g: six to three."""
    return (u0 / 4 - (u1 + u2) / 6 + (u3 + u4) / 24, (u2 - u1) / 6 + (u3 - u4) / 12,
            (u3 + u4 - u1 - u2) / 6 + u5)


@njit(cache=True, fastmath=True)
def _winograd4_weights(w, scale, u):
    """u[6i+j, c, f] = (G w[f, c] G')[i, j] * scale[f] (as _winograd_weights), filters innermost,
    as u is laid out."""
    F, C = w.shape[0], w.shape[1]
    gg = np.empty((6, 3), w.dtype)  # G g, one filter tap column at a time
    for c in range(C):
        for f in range(F):
            g, s = w[f, c], _factor(scale, f)
            for j in range(3):
                gg[0, j], gg[1, j], gg[2, j], gg[3, j], gg[4, j], gg[5, j] = _g(g[0, j] * s, g[1, j] * s, g[2, j] * s)
            for i in range(6):
                r = 6 * i
                u[r, c, f], u[r + 1, c, f], u[r + 2, c, f], u[r + 3, c, f], u[r + 4, c, f], u[r + 5, c, f] = _g(
                    gg[i, 0], gg[i, 1], gg[i, 2])


@njit(cache=True, fastmath=True)
def _winograd4_inputs(x, n0, m, pt, pl, th, tw, v):
    """v[6i+j, t, c] = (B' d B)[i, j] for the 6x6 tile d of tile t = (n*th + ty)*tw + tx of
    images n0 ... n0+m-1: rows and columns outside x are the padding.

    An image at a time: first its zero-padded copy with the channels innermost, xt[h, w, c] (the
    one strided pass); then for each row of tiles e = B' d over six rows of xt at once, one long
    run over (width, channels), and the column transform of each tile along the channels. The
    row transform read x itself before, writing e[i, q, c] with the channels innermost: six
    strided stores per input element. One thread, 128 images: 32 channels of 32x32 9.1 -> 6.0 ms,
    64 of 16x16 5.0 -> 2.9 (vgg_small's batch-256 inference 8-10% faster, A/B); as fast as
    before on 32 images of 16x16 and 8x8."""
    C = x.shape[0]
    WP = 4 * tw + 2
    xt = np.zeros((4 * th + 2, WP * C), x.dtype)
    e = np.empty((6, WP, C), x.dtype)
    ef = e.reshape(6, WP * C)
    e0, e1, e2, e3, e4, e5 = ef[0], ef[1], ef[2], ef[3], ef[4], ef[5]
    for n in range(m):
        _channels_innermost(x, n0 + n, pt, pl, xt)
        for ty in range(th):
            r = 4 * ty
            s0, s1, s2, s3, s4, s5 = xt[r], xt[r + 1], xt[r + 2], xt[r + 3], xt[r + 4], xt[r + 5]
            for k in range(WP * C):
                e0[k], e1[k], e2[k], e3[k], e4[k], e5[k] = _bt(s0[k], s1[k], s2[k], s3[k], s4[k], s5[k])
            t0 = (n * th + ty) * tw
            for tx in range(tw):
                t, q = t0 + tx, 4 * tx
                for i in range(6):
                    a0, a1, a2, a3, a4, a5 = e[i, q], e[i, q + 1], e[i, q + 2], e[i, q + 3], e[i, q + 4], e[i, q + 5]
                    r6 = 6 * i
                    v0, v1, v2, v3, v4, v5 = v[r6, t], v[r6 + 1, t], v[r6 + 2, t], v[r6 + 3, t], v[r6 + 4, t], v[r6 + 5, t]
                    for c in range(C):
                        v0[c], v1[c], v2[c], v3[c], v4[c], v5[c] = _bt(a0[c], a1[c], a2[c], a3[c], a4[c], a5[c])


@njit(cache=True, fastmath=True)
def _winograd4_outputs(mm, b, residual, relu, n0, m, th, tw, out):
    """out[f, n0+n, 4ty+a, 4tx+b] = (A' M A)[a, b] + b[f] (+ the same element of residual unless
    it is empty; then ReLU), M[i, j] = mm[6i+j, t, f], for the images n0 ... n0+m-1. With an
    empty b the value alone is added into out instead (the input gradient of the backward). The
    mode comes from b, not from a flag: a literal True or False from the callers would make
    Numba compile this function once more for each.

    A row of tiles at a time: s[a, j] = (A' M)[a, j], then z[a, 4tx+b, f] = (A' M A)[a, b] for
    the row's tiles along the filters (reading mm contiguously), then the row's 4x4 blocks go to
    their places in out from that small block, which stays in L1."""
    F, OH, OW = out.shape[0], out.shape[2], out.shape[3]
    accumulate, add = b.size == 0, residual.size != 0
    s = np.empty((4, 6, F), mm.dtype)
    z = np.empty((4, 4 * tw, F), mm.dtype)
    for n in range(m):
        for ty in range(th):
            t0 = (n * th + ty) * tw
            for tx in range(tw):
                t, q = t0 + tx, 4 * tx
                for j in range(6):
                    m0, m1, m2, m3, m4, m5 = mm[j, t], mm[6 + j, t], mm[12 + j, t], mm[18 + j, t], mm[24 + j, t], mm[30 + j, t]
                    s0, s1, s2, s3 = s[0, j], s[1, j], s[2, j], s[3, j]
                    for f in range(F):
                        s0[f], s1[f], s2[f], s3[f] = _at(m0[f], m1[f], m2[f], m3[f], m4[f], m5[f])
                for a in range(4):
                    sa = s[a]
                    z0, z1, z2, z3 = z[a, q], z[a, q + 1], z[a, q + 2], z[a, q + 3]
                    for f in range(F):
                        z0[f], z1[f], z2[f], z3[f] = _at(sa[0, f], sa[1, f], sa[2, f], sa[3, f], sa[4, f], sa[5, f])
            for f in range(F):
                bf = 0 if accumulate else b[f]
                for a in range(4):
                    p = 4 * ty + a
                    if p >= OH:
                        break
                    dst = out[f, n0 + n, p]
                    res = residual[f, n0 + n, p] if add else dst
                    za = z[a]
                    for q in range(OW):
                        value = za[q, f]
                        if accumulate:
                            dst[q] += value
                        else:
                            value += bf
                            if add:
                                value += res[q]
                            dst[q] = max(value, 0) if relu else value


@njit(cache=True)  # not fastmath: its comparisons must see NaNs
def _transformed_filters(w, scale, four, memo_u, memo_seen):
    """The filters as _forward multiplies them: (planes, C + 1, F), transformed for the tile size
    (`four`) with the scale in. With a memo (memo_seen not empty: winograd_memo's arrays), they
    live in memo_u and are transformed again only when w, the scale or the tile size differ from
    what memo_seen holds (w, then the scale, and last the tile size) since the last transform: at
    batch 1 the transform took a fifth to three fifths of a call (64 -> 64 filters: 29 of 50 us at
    8x8), the comparison a tenth of that. They are compared as floats: filters with a NaN are
    transformed at every call, and -0 and +0 count as equal (which can change only the sign of a
    zero output). A bitwise comparison, through int32 views, cost 0.7 s more of cold compile time.

    One row more than C in each plane: the planes then do not start at the same offset modulo
    4 KB. 16 or 32 KB apart, they fell into the same L1 sets, and the transforms that read or write
    all of them at once ran 1.2-5x slower (64 x 64 filters: 126 us)."""
    F, C = w.shape[0], w.shape[1]
    shape, tile = (36 if four else 16, C + 1, F), 4 if four else 2
    flat, seen = w.reshape(w.size), memo_seen
    n = flat.size
    if seen.size == 0:
        u = np.empty(shape, w.dtype)
    else:
        u = memo_u[:shape[0]]
        same = seen[seen.size - 1] == tile
        for k in range(n):
            same &= seen[k] == flat[k]
        for k in range(scale.size):
            same &= seen[n + k] == scale[k]
        if same:
            return u
        # recorded first, and transformed from the record: a thread writing w meanwhile leaves u
        # as the record says, which the next call then finds changed
        for k in range(n):
            seen[k] = flat[k]
        for k in range(scale.size):
            seen[n + k] = scale[k]
        seen[seen.size - 1] = tile
        w, scale = seen[:n].reshape(w.shape), seen[n:n + scale.size]
    if four:
        _winograd4_weights(w, scale, u)
    else:
        _winograd_weights(w, scale, u)
    return u


def winograd_memo(memo: dict | None, layer: str, channels: int, filters: int) -> tuple[np.ndarray, np.ndarray]:
    """The memo arrays (memo_u, memo_seen) of conv3x3_forward for `layer`, kept in `memo` (made on
    first use, while all of memo's arrays stay within MEMO_BYTES); two empty arrays otherwise, as
    without a memo. The generated forward asks for them; a memo must serve one call at a time (the
    runtime keeps one per thread: runtime.Network.memo)."""
    if memo is None:
        return NO_MEMO
    key = (layer, channels, filters)  # a memo given to two models' forwards keeps their layers apart
    if key not in memo:
        u_shape = (36, channels + 1, filters)  # F(4x4)'s planes; F(2x2) takes the first 16
        seen_size = filters * channels * 9 + filters + 1  # the tile size last: 0, nothing recorded yet
        used = sum(a.nbytes + b.nbytes for a, b in memo.values())
        fits = used + 4 * (math.prod(u_shape) + seen_size) <= MEMO_BYTES
        memo[key] = (np.empty(u_shape, np.float32), np.zeros(seen_size, np.float32)) if fits else NO_MEMO
    return memo[key]


# A network's memo holds four times its Winograd layers' filters (F(4x4)'s 36 values for 9): up to
# this many bytes of them (resnet20 takes 4.5 MB, vgg_small 1.3; a VGG-16 would take about 300).
MEMO_BYTES = 32 << 20
NO_MEMO = (np.empty((0, 0, 0), np.float32), np.empty(0, np.float32))


@njit(cache=True, nogil=True, fastmath=True)
def _forward(x, w, b, scale, residual, out, pad_top, pad_left, relu, four, memo_u, memo_seen):
    """conv2d_forward for 3x3 filters at stride 1, by Winograd F(4x4, 3x3) if `four`, else F(2x2, 3x3);
    a folded batchnorm's scale goes into the transformed filters, which memo_u keeps from a call to
    the next (see _transformed_filters; both empty: no memo)."""
    F, C = w.shape[0], w.shape[1]
    N, OH, OW = x.shape[1], out.shape[2], out.shape[3]
    size, planes, chunk = (4, 36, WINOGRAD4_TILES) if four else (2, 16, WINOGRAD_TILES)
    th, tw = (OH + size - 1) // size, (OW + size - 1) // size
    nb = max(1, min(N, chunk // (th * tw)))
    u = _transformed_filters(w, scale, four, memo_u, memo_seen)
    v = np.empty((planes, nb * th * tw + 1, C), x.dtype)
    mm = np.empty((planes, nb * th * tw + 1, F), x.dtype)
    for n0 in range(0, N, nb):
        m = min(nb, N - n0)
        tiles = m * th * tw
        if four:
            _winograd4_inputs(x, n0, m, pad_top, pad_left, th, tw, v)
        else:
            _winograd_inputs(x, n0, m, pad_top, pad_left, th, tw, v)
        for k in range(planes):  # tiles x C @ C x F: the shape OpenBLAS runs fastest (see above)
            np.dot(v[k, :tiles], u[k, :C], mm[k, :tiles])
        if four:
            _winograd4_outputs(mm, b, residual, relu, n0, m, th, tw, out)
        else:
            _winograd_outputs(mm, b, residual, relu, n0, m, th, tw, out)


# F(4x4)'s backward transforms (the backward itself, _backward, serves both tile sizes): dM = A dY A'
# takes the 4x4 blocks of g to 6x6, dw = G' dU G takes 6x6 back to 3x3.


@njit(cache=True, fastmath=True)
def _winograd4_grads(g, n0, m, th, tw, gt, db):
    """gt[6i+j, t, f] = (A dY A')[i, j] for the 4x4 block dY of g[:, n0+n] at tile
    t = (n*th + ty)*tw + tx (zero past the edge of g), and db[f] += the sum of those images of g.

    As _winograd4_inputs: an image at a time, first a copy with the filters innermost, gc[h, w, f]
    (the one strided pass), zero past g's edge; then for each row of tiles e = A dY over four rows
    of gc at once, one long run over (width, filters), and the row transform of each tile along
    the filters."""
    F, OH, OW = g.shape[0], g.shape[2], g.shape[3]
    WP = 4 * tw
    gc = np.zeros((4 * th, WP * F), g.dtype)
    e = np.empty((6, WP, F), g.dtype)
    ef = e.reshape(6, WP * F)
    e0, e1, e2, e3, e4, e5 = ef[0], ef[1], ef[2], ef[3], ef[4], ef[5]
    for n in range(m):
        _channels_innermost(g, n0 + n, 0, 0, gc)
        for f in range(F):
            plane = g[f, n0 + n].reshape(-1)  # g is dout or the masked copy: contiguous planes
            total = g.dtype.type(0)  # a plane's sum in float32 (it vectorizes), as direct._masked_grads
            for k in range(OH * OW):
                total += plane[k]
            db[f] += total
        for ty in range(th):
            r = 4 * ty
            s0, s1, s2, s3 = gc[r], gc[r + 1], gc[r + 2], gc[r + 3]
            for k in range(WP * F):
                e0[k], e1[k], e2[k], e3[k], e4[k], e5[k] = _a(s0[k], s1[k], s2[k], s3[k])
            t0 = (n * th + ty) * tw
            for tx in range(tw):
                t, q = t0 + tx, 4 * tx
                for i in range(6):
                    a0, a1, a2, a3 = e[i, q], e[i, q + 1], e[i, q + 2], e[i, q + 3]
                    r6 = 6 * i
                    v0, v1, v2, v3, v4, v5 = gt[r6, t], gt[r6 + 1, t], gt[r6 + 2, t], gt[r6 + 3, t], gt[r6 + 4, t], gt[r6 + 5, t]
                    for f in range(F):
                        v0[f], v1[f], v2[f], v3[f], v4[f], v5[f] = _a(a0[f], a1[f], a2[f], a3[f])


@njit(cache=True, fastmath=True)
def _winograd4_weight_grads(du, dw):
    """dw[f, c] = G' dU G with dU[i, j] = du[6i+j, c, f]: the adjoint of _winograd4_weights (dw overwritten)."""
    F, C = dw.shape[0], dw.shape[1]
    t = np.empty((3, 6), du.dtype)
    for c in range(C):
        for f in range(F):
            for j in range(6):
                t[0, j], t[1, j], t[2, j] = _gt(du[j, c, f], du[6 + j, c, f], du[12 + j, c, f], du[18 + j, c, f],
                                                du[24 + j, c, f], du[30 + j, c, f])
            for a in range(3):
                dw[f, c, a, 0], dw[f, c, a, 1], dw[f, c, a, 2] = _gt(t[a, 0], t[a, 1], t[a, 2], t[a, 3], t[a, 4], t[a, 5])


@njit(cache=True, nogil=True, fastmath=True)
def _backward(x, w, out, dout, dx, dw, db, pad_top, pad_left, relu, need_dx, add_dx, four):
    """conv2d_backward for 3x3 filters at stride 1 and padding at most 2, by Winograd F(4x4, 3x3)
    if `four`, else F(2x2, 3x3): dw and db are overwritten; dx (when need_dx) is added into if
    add_dx, else overwritten."""
    F, C = w.shape[0], w.shape[1]
    N, H, W = x.shape[1], x.shape[2], x.shape[3]
    OH, OW = out.shape[2], out.shape[3]
    size, planes, chunk = (4, 36, WINOGRAD4_TILES) if four else (2, 16, WINOGRAD_TILES)
    th, tw = (OH + size - 1) // size, (OW + size - 1) // size  # tiles of g: the weight gradient
    xh, xw = (H + size - 1) // size, (W + size - 1) // size  # tiles of dx: the input gradient
    nb = max(1, min(N, chunk // max(th * tw, xh * xw)))
    flipped = np.empty((C, F, 3, 3), x.dtype)  # w', the filters of the input gradient
    for f in range(F):
        for c in range(C):
            for i in range(3):
                for j in range(3):
                    flipped[c, f, i, j] = w[f, c, 2 - i, 2 - j]
    u = np.empty((planes, F + 1, C), x.dtype)  # + 1: see _transformed_filters
    if four:
        _winograd4_weights(flipped, np.empty(0, w.dtype), u)
    else:
        _winograd_weights(flipped, np.empty(0, w.dtype), u)
    du = np.zeros((planes, C + 1, F), x.dtype)
    du_part = np.empty((C, F), x.dtype)
    v = np.empty((planes, nb * th * tw + 1, C), x.dtype)
    gt = np.empty((planes, nb * th * tw + 1, F), x.dtype)
    vg = np.empty((planes, nb * xh * xw + 1, F), x.dtype)
    mm = np.empty((planes, nb * xh * xw + 1, C), x.dtype)
    masked = np.empty((F, nb, OH, OW) if relu else (0, 0, 0, 0), x.dtype)
    # The outputs transform adds into dx given an empty bias, and writes it given a zero one.
    dx_bias, no_residual = np.empty(0 if add_dx else C, x.dtype), np.empty((0, 0, 0, 0), x.dtype)
    dx_bias[:] = 0
    off = relu and not relu  # no ReLU on dx; False, typed bool: a literal False would compile the transform once more
    db[:] = 0
    for n0 in range(0, N, nb):
        m = min(nb, N - n0)
        g, g0 = dout, n0  # this chunk's output gradient is g[:, g0:g0+m]
        if relu:
            _relu_masked(out, dout, n0, m, masked)
            g, g0 = masked, 0
        tiles = m * th * tw
        if four:
            _winograd4_grads(g, g0, m, th, tw, gt, db)
            _winograd4_inputs(x, n0, m, pad_top, pad_left, th, tw, v)
        else:
            _winograd_grads(g, g0, m, th, tw, gt, db)
            _winograd_inputs(x, n0, m, pad_top, pad_left, th, tw, v)
        for k in range(planes):  # C x tiles @ tiles x F
            np.dot(v[k, :tiles].T, gt[k, :tiles], du_part)
            duk = du[k]
            for c in range(C):
                for f in range(F):
                    duk[c, f] += du_part[c, f]
        if need_dx:
            xtiles = m * xh * xw
            if four:
                _winograd4_inputs(g, g0, m, 2 - pad_top, 2 - pad_left, xh, xw, vg)
            else:
                _winograd_inputs(g, g0, m, 2 - pad_top, 2 - pad_left, xh, xw, vg)
            for k in range(planes):
                np.dot(vg[k, :xtiles], u[k, :F], mm[k, :xtiles])
            if four:
                _winograd4_outputs(mm, dx_bias, no_residual, off, n0, m, xh, xw, dx)
            else:
                _winograd_outputs(mm, dx_bias, no_residual, off, n0, m, xh, xw, dx)
    if four:
        _winograd4_weight_grads(du, dw)
    else:
        _winograd_weight_grads(du, dw)


@njit(cache=True, nogil=True, fastmath=True)
def conv3x3_forward(x, w, b, scale, residual, out, pad_top, pad_left, relu, allow_f4, memo_u, memo_seen):
    """conv2d_forward for 3x3 filters at stride 1: F(4x4, 3x3) when allow_f4 (inference) and the
    call has enough tiles (fewer with a memo), else F(2x2, 3x3) (training's forward, always).
    memo_u and memo_seen (winograd_memo's, or empty) keep the transformed filters between calls."""
    tiles = x.shape[1] * ((out.shape[2] + 3) // 4) * ((out.shape[3] + 3) // 4)
    four = allow_f4 and tiles >= (F4_MEMO_MIN_TILES if memo_seen.size != 0 else F4_MIN_TILES)
    _forward(x, w, b, scale, residual, out, pad_top, pad_left, relu, four, memo_u, memo_seen)


@njit(cache=True, nogil=True, fastmath=True)
def conv3x3_backward(x, w, out, dout, dx, dw, db, pad_top, pad_left, relu, need_dx, add_dx):
    """conv2d_backward for 3x3 filters at stride 1 and padding at most 2: dw and db are
    overwritten; dx (when need_dx) is added into if add_dx, else overwritten. F(4x4, 3x3) when
    the call has enough tiles."""
    four = x.shape[1] * ((out.shape[2] + 3) // 4) * ((out.shape[3] + 3) // 4) >= F4_MIN_TILES
    _backward(x, w, out, dout, dx, dw, db, pad_top, pad_left, relu, need_dx, add_dx, four)
