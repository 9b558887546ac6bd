"""Direct convolution for layers with few channels (CNHW activations, OIHW weights, stride 1):
forward with bias, residual and ReLU fused, and backward.

im2col + BLAS is weakest where there is least to multiply: lenet5's first layer (1 -> 6 filters,
5x5) makes a 25-row column matrix that costs more to write and read than the product that uses
it, and a product with 6 rows runs far below the machine's rate; on 16 channels at 32x32
(ResNet-20's first stage) Winograd's transforms cost more than its products save. Here there is
no column matrix and no BLAS: each image's channels are copied once into zero-padded planes, and
every (filter, channel, tap) is one multiply-add over a whole plane, one long vectorized run:
four filters and three taps of a kernel row in each pass over a plane.

"Wide" planes: a padded plane is HP rows of L = OW + (Kw - 1) * Dw columns, and an output plane
is kept as OH rows of the same L (its last L - OW columns are garbage, never stored), so tap
(i, j) of output k = p*L + q reads padded element k + i*Dh*L + j*Dw: the same offset for every
output, one flat loop over OH * L elements. The padded buffer has one row of slack at the end
for the garbage columns of the last rows.

The backward runs on the same planes: the output gradient (ReLU-masked, garbage columns zero) is
a wide plane g; dw[f, c, i, j] is the dot product of g[f] with the padded plane of c at the tap's
offset, and dx is the forward's loop run on g, padded for the purpose, with the filters flipped
and their channel axes swapped.

The kernels are serial, as the others: the runtime runs slices of the batch side by side.
"""
import numpy as np
from numba import njit

from .aligned import aligned_rows


@njit(cache=True, fastmath=True)
def _fill_padded(x, n, pad_top, pad_left, L, xp):
    """xp[c, (h + pad_top)*L + w + pad_left] = x[c, n, h, w] where that falls inside the padded
    plane; everything else in xp is left as it was (zero: the callers zero xp once). The copy
    loop indexes views from 0: from a computed start, Numba's negative-index check kept it
    scalar (7x slower, a quarter of a 16 -> 16 layer's forward)."""
    C, _, H, W = x.shape
    HP = xp.shape[1] // L - 1
    h0, h1 = max(0, -pad_top), min(H, HP - pad_top)
    w0, w1 = max(0, -pad_left), min(W, L - pad_left)
    for c in range(C):
        for h in range(h0, h1):
            src, dst = x[c, n, h, w0:], xp[c, (h + pad_top) * L + pad_left + w0:]
            for k in range(w1 - w0):
                dst[k] = src[k]


@njit(cache=True, fastmath=True)
def _four_filters(xp, w, f0, f1, f2, f3, L, dil_h, dil_w, a0, a1, a2, a3):
    """a_r += the taps of filter f_r over every channel's padded plane in xp (a_r: wide planes).
    Four filters a pass, each input element loaded once for all four (one filter a pass ran
    1.5-2x slower). Without dilation the taps of a kernel row go three a pass: three loads feed
    twelve multiply-adds, and each accumulator is loaded and stored once for three taps. On
    16 -> 16 filters at 32x32 that ran at 180-190 GFLOP/s, 1.6x faster than one tap a pass; the
    loop is written out here, as a called function per row it was 15% slower."""
    C, KH, KW = w.shape[1], w.shape[2], w.shape[3]
    threes = KW - KW % 3 if dil_w == 1 else 0  # adjacent taps only: a run-time offset kept the loop scalar
    for c in range(C):
        plane = xp[c]
        for i in range(KH):
            row = plane[i * dil_h * L:]
            for j in range(0, threes, 3):
                s = row[j:]
                p0, p1, p2 = w[f0, c, i, j], w[f0, c, i, j + 1], w[f0, c, i, j + 2]
                q0, q1, q2 = w[f1, c, i, j], w[f1, c, i, j + 1], w[f1, c, i, j + 2]
                u0, u1, u2 = w[f2, c, i, j], w[f2, c, i, j + 1], w[f2, c, i, j + 2]
                v0, v1, v2 = w[f3, c, i, j], w[f3, c, i, j + 1], w[f3, c, i, j + 2]
                for k in range(a0.size):
                    x0, x1, x2 = s[k], s[k + 1], s[k + 2]
                    a0[k] += p0 * x0 + p1 * x1 + p2 * x2
                    a1[k] += q0 * x0 + q1 * x1 + q2 * x2
                    a2[k] += u0 * x0 + u1 * x1 + u2 * x2
                    a3[k] += v0 * x0 + v1 * x1 + v2 * x2
            for j in range(threes, KW):
                _one_tap(row[j * dil_w:], w[f0, c, i, j], w[f1, c, i, j], w[f2, c, i, j], w[f3, c, i, j],
                         a0, a1, a2, a3)


@njit(cache=True, fastmath=True)
def _one_tap(src, w0, w1, w2, w3, a0, a1, a2, a3):
    """a_r += w_r * src: one tap of four filters."""
    for k in range(a0.size):
        v = src[k]
        a0[k] += w0 * v
        a1[k] += w1 * v
        a2[k] += w2 * v
        a3[k] += w3 * v


@njit(cache=True, fastmath=True)
def _two_filters(xp, w, f0, f1, L, dil_h, dil_w, a0, a1):
    """_four_filters for the one or two filters left over (f1 may be f0)."""
    C, KH, KW = w.shape[1], w.shape[2], w.shape[3]
    for c in range(C):
        plane = xp[c]
        for i in range(KH):
            for j in range(KW):
                src, w0, w1 = plane[i * dil_h * L + j * dil_w:], w[f0, c, i, j], w[f1, c, i, j]
                for k in range(a0.size):
                    a0[k] += w0 * src[k]
                    a1[k] += w1 * src[k]


@njit(cache=True, fastmath=True)
def _store(acc, f, b, residual, relu, n, L, out):
    """out[f, n] = acc + b[f] (+ residual[f, n], then ReLU), the wide plane's garbage columns
    dropped. The flags are tested outside the loops over a row: tested inside, they kept the
    loop scalar (the forward of 16 -> 16 channels of 32x32 took 1.02 ms instead of 0.83)."""
    OH, OW = out.shape[2], out.shape[3]
    bias = b[f]
    for p in range(OH):
        dst, wide = out[f, n, p], acc[p * L:]
        if residual.size != 0:
            res = residual[f, n, p]
            for q in range(OW):
                dst[q] = wide[q] + bias + res[q]
        else:
            for q in range(OW):
                dst[q] = wide[q] + bias
        if relu:
            for q in range(OW):
                dst[q] = max(dst[q], 0)


@njit(cache=True, nogil=True, fastmath=True)
def direct_forward(x, w, b, residual, out, pad_top, pad_left, dil_h, dil_w, relu):
    """out = conv(x, w) + b (+ residual unless empty; then ReLU), stride 1."""
    F, C, KH, KW = w.shape
    N, OH, OW = x.shape[1], out.shape[2], out.shape[3]
    L = OW + (KW - 1) * dil_w
    HP = OH + (KH - 1) * dil_h
    xp = np.zeros((C, (HP + 1) * L), x.dtype)
    acc = aligned_rows(4, OH * L, x.dtype)
    for n in range(N):
        _fill_padded(x, n, pad_top, pad_left, L, xp)
        _convolve_into(xp, w, b, residual, out, relu, n, L, dil_h, dil_w, acc)


@njit(cache=True, fastmath=True)
def _convolve_into(xp, w, b, residual, out, relu, n, L, dil_h, dil_w, acc):
    """out[:, n] = the convolution of one image's padded planes xp with w, stored by _store
    (residual may be out itself: the result is then added into out). acc: four aligned rows
    (aligned_rows) of at least a wide output plane each."""
    F, size = w.shape[0], out.shape[2] * L
    fours, last = F - F % 4 if F % 4 < 3 else F, F - 1  # three left over: a pass of four with one repeated
    a0, a1, a2, a3 = acc[0, :size], acc[1, :size], acc[2, :size], acc[3, :size]
    for f in range(0, F, 4):
        acc[:] = 0
        if f < fours:
            _four_filters(xp, w, f, f + 1, f + 2, min(f + 3, last), L, dil_h, dil_w, a0, a1, a2, a3)
        else:
            _two_filters(xp, w, f, min(f + 1, last), L, dil_h, dil_w, a0, a1)
        for r in range(min(4, F - f)):
            _store(acc[r, :size], f + r, b, residual, relu, n, L, out)


@njit(cache=True, fastmath=True)
def _weight_grads(xp, g, f0, f1, f2, f3, L, dil_h, dil_w, dw):
    """dw[f_r, c, i, j] += the dot product of g[f_r] with the plane of c at the tap's offset, for
    four filters a pass (each input element loaded once for the four), adjacent taps three a
    pass as in _four_filters; a repeated filter (f3 = f2, ... at the end) is counted once."""
    C, KH, KW = dw.shape[1], dw.shape[2], dw.shape[3]
    g0, g1, g2, g3 = g[f0], g[f1], g[f2], g[f3]
    threes = KW - KW % 3 if dil_w == 1 else 0
    zero = g.dtype.type(0)  # sums in the arrays' precision: float32 sums vectorize
    for c in range(C):
        plane = xp[c]
        for i in range(KH):
            row = plane[i * dil_h * L:]
            for j in range(0, threes, 3):
                s = row[j:]
                p0, p1, p2, q0, q1, q2 = zero, zero, zero, zero, zero, zero
                u0, u1, u2, v0, v1, v2 = zero, zero, zero, zero, zero, zero
                for k in range(g0.size):
                    x0, x1, x2 = s[k], s[k + 1], s[k + 2]
                    p0, p1, p2 = p0 + g0[k] * x0, p1 + g0[k] * x1, p2 + g0[k] * x2
                    q0, q1, q2 = q0 + g1[k] * x0, q1 + g1[k] * x1, q2 + g1[k] * x2
                    u0, u1, u2 = u0 + g2[k] * x0, u1 + g2[k] * x1, u2 + g2[k] * x2
                    v0, v1, v2 = v0 + g3[k] * x0, v1 + g3[k] * x1, v2 + g3[k] * x2
                _add_tap_grads(dw, f0, f1, f2, f3, c, i, j, p0, q0, u0, v0)
                _add_tap_grads(dw, f0, f1, f2, f3, c, i, j + 1, p1, q1, u1, v1)
                _add_tap_grads(dw, f0, f1, f2, f3, c, i, j + 2, p2, q2, u2, v2)
            for j in range(threes, KW):
                src = row[j * dil_w:]
                s0, s1, s2, s3 = zero, zero, zero, zero
                for k in range(g0.size):
                    v = src[k]
                    s0 += g0[k] * v
                    s1 += g1[k] * v
                    s2 += g2[k] * v
                    s3 += g3[k] * v
                _add_tap_grads(dw, f0, f1, f2, f3, c, i, j, s0, s1, s2, s3)


@njit(cache=True, fastmath=True)
def _add_tap_grads(dw, f0, f1, f2, f3, c, i, j, s0, s1, s2, s3):
    """dw[f_r, c, i, j] += s_r, a repeated filter once."""
    dw[f0, c, i, j] += s0
    if f1 != f0:
        dw[f1, c, i, j] += s1
    if f2 != f1:
        dw[f2, c, i, j] += s2
    if f3 != f2:
        dw[f3, c, i, j] += s3


@njit(cache=True, fastmath=True)
def _masked_grads(out, dout, n, relu, L, g, db):
    """g[f] = dout[f, n] where out > 0 (all of it without ReLU) as a wide plane, db[f] += its sum."""
    F, OH, OW = out.shape[0], out.shape[2], out.shape[3]
    for f in range(F):
        total = g.dtype.type(0)
        for p in range(OH):
            src, o, wide = dout[f, n, p], out[f, n, p], g[f, p * L:]
            if relu:  # outside the loop, as in _store
                for q in range(OW):
                    v = src[q] if o[q] > 0 else 0
                    wide[q] = v
                    total += v
            else:
                for q in range(OW):
                    wide[q] = src[q]
                    total += src[q]
        db[f] += total


@njit(cache=True, nogil=True, fastmath=True)
def direct_backward(x, w, out, dout, dx, dw, db, pad_top, pad_left, dil_h, dil_w, relu, need_dx, add_dx):
    """The gradients of direct_forward: dw and db overwritten, dx (when need_dx) added into if
    add_dx, else overwritten (the first gradient written there: no zeroed buffer to add to).

    dx is the forward's own loop run on the output gradient: a stride-1 convolution of g, padded
    by (KH - 1)*dil_h - pad_top rows above and (KW - 1)*dil_w - pad_left columns to the left,
    with the filters flipped and their two channel axes swapped."""
    F, C, KH, KW = w.shape
    N, H, W = x.shape[1], x.shape[2], x.shape[3]
    OH, OW = out.shape[2], out.shape[3]
    L = OW + (KW - 1) * dil_w
    HP = OH + (KH - 1) * dil_h
    xp = np.zeros((C, (HP + 1) * L), x.dtype)
    g = np.zeros((F, 1, OH, L), x.dtype)  # wide planes, as an activation of one image; the garbage columns stay zero
    wide = g.reshape(F, OH * L)
    Lg, HPg = W + (KW - 1) * dil_w, H + (KH - 1) * dil_h
    gp = np.zeros((F, (HPg + 1) * Lg) if need_dx else (0, 0), x.dtype)
    flipped = _flipped(w) if need_dx else w
    acc = aligned_rows(4, H * Lg, x.dtype)
    no_bias = np.zeros(C, x.dtype)
    into = dx if add_dx else np.empty((0, 0, 0, 0), x.dtype)  # _store adds `into` (dx itself) or nothing
    off = relu and not relu  # no ReLU on dx; False, typed bool: a literal False would compile _convolve_into once more
    dw[:] = 0
    db[:] = 0
    last = F - 1
    for n in range(N):
        _fill_padded(x, n, pad_top, pad_left, L, xp)
        _masked_grads(out, dout, n, relu, L, wide, db)
        for f in range(0, F, 4):
            _weight_grads(xp, wide, f, min(f + 1, last), min(f + 2, last), min(f + 3, last), L, dil_h, dil_w, dw)
        if need_dx:
            _fill_padded(g, 0, (KH - 1) * dil_h - pad_top, (KW - 1) * dil_w - pad_left, Lg, gp)
            _convolve_into(gp, flipped, no_bias, into, dx, off, n, Lg, dil_h, dil_w, acc)


@njit(cache=True, fastmath=True)
def _flipped(w):
    """w[f, c, i, j] as [c, f, KH-1-i, KW-1-j]: the filters of the input gradient's convolution."""
    F, C, KH, KW = w.shape
    out = np.empty((C, F, KH, KW), w.dtype)
    for f in range(F):
        for c in range(C):
            for i in range(KH):
                for j in range(KW):
                    out[c, f, KH - 1 - i, KW - 1 - j] = w[f, c, i, j]
    return out
