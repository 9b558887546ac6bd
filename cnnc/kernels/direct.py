"""Direct convolution for layers with few channels (CNHW activations, OIHW weights, any stride):
forward with bias, residual and ReLU fused, and backward.

im2col + BLAS is weakest where there is least to multiply: lenet5's first layer (1 -> 6 filters,
5x5) makes a 25-row column matrix that costs more to write and read than the product that uses
it, and a product with 6 rows runs far below the machine's rate; on 16 channels at 32x32
(ResNet-20's first stage) Winograd's transforms cost more than its products save. Here there is
no column matrix and no BLAS: each image's channels are copied once into zero-padded planes, and
the outputs are made a run of two vector registers (32 with AVX-512) at a time for eight
filters, their sums held in registers through every channel and tap (_eight_filters).

Phases and "wide" planes: each padded plane is cut into its stride's phases as the depthwise
kernel cuts it (kernels/depthwise.py: _pad_phases): phase (a, b) holds the padded rows a, a + Sh,
... and columns b, b + Sw, ..., HPh + 1 rows of WPh columns (one row of slack at the end). At
stride 1 there is one phase, the padded plane itself. An output plane is kept as OH rows of WPh
(its last WPh - OW columns are garbage, never stored), so tap (i, j) of output k = p*WPh + q
reads phase (i*Dh % Sh, j*Dw % Sw) at k + (i*Dh // Sh)*WPh + j*Dw // Sw: the same offset into
the phases for every output (_tap_offsets), one flat loop over OH * WPh elements.

The backward runs on the same planes: the output gradient (ReLU-masked, garbage columns zero) is
a wide plane g; dw[f, c, i, j] is the dot product of g[f] with c's phases at the tap's offset. At
stride 1, dx is the forward's loop run on g, padded for the purpose, with the filters flipped and
their channel axes swapped; above it, each tap's run of g, times the tap's weights, is added into
phases of the input's shape, which then go back into dx's planes.

The kernels are serial, as the others: the runtime runs slices of the batch side by side.
"""
import numpy as np
from numba import carray, njit

from .aligned import aligned_rows
from .conv import _factor
from .depthwise import _columns, _pad_phases, _phase_geometry, _tap_offsets, _unpad_phases_add
from .registers import LANES, stack_block

SUMS = 16 * LANES  # _eight_filters' sums: eight filters by two vector registers


@njit(cache=True, fastmath=True)
def _fill_phases(x, n, pad_top, pad_left, stride_h, stride_w, HPh, WPh, cols, xp):
    """xp[c] = the phases of image n's plane c (_pad_phases); the padding in xp stays as it was
    (zero: the callers zero xp once)."""
    for c in range(x.shape[0]):
        _pad_phases(x[c, n], pad_top, pad_left, stride_h, stride_w, HPh, WPh, cols, xp[c])


# Outputs a pass of _eight_filters makes per filter: two vector registers' worth.
RUN = 2 * LANES


@njit(cache=True, fastmath=True)
def _eight_filters(xp, wt, f, last, offsets, size, acc):
    """acc[r, :runs_up(size)] = the taps of filter min(f + r, last) over every channel's phases
    in xp (wt: F x C x taps), RUN outputs at a time: the run from output `start` reads tap t's
    inputs from offsets[t] + start on. Eight filters by two vector registers of outputs: sixteen
    sums that stay in registers (kernels/registers.py) while the loops run over every channel and
    tap, each input vector loaded once for eight filters and each weight once for two vectors.
    On 16 -> 16 filters at 32x32 this inner loop ran at 218-221 GFLOP/s (about the core's peak),
    the plane-long loops it replaced (four filters, three taps a pass, the sums loaded and stored
    at each pass) at 208."""
    C, T = wt.shape[1], offsets.size
    sums = carray(stack_block(SUMS, wt.dtype), (16, LANES))
    f0, f1, f2, f3 = f, min(f + 1, last), min(f + 2, last), min(f + 3, last)
    f4, f5, f6, f7 = min(f + 4, last), min(f + 5, last), min(f + 6, last), min(f + 7, last)
    for start in range(0, size, RUN):
        for r in range(16):
            for j in range(LANES):
                sums[r, j] = 0
        for c in range(C):
            plane = xp[c]
            for t in range(T):
                lo, hi = plane[offsets[t] + start:], plane[offsets[t] + start + LANES:]
                w0, w1, w2, w3 = wt[f0, c, t], wt[f1, c, t], wt[f2, c, t], wt[f3, c, t]
                w4, w5, w6, w7 = wt[f4, c, t], wt[f5, c, t], wt[f6, c, t], wt[f7, c, t]
                # the two registers written out: as a loop over both (unrolled by LLVM) the weights
                # were broadcast by separate instructions and the forward ran 6% slower
                for j in range(LANES):
                    v = lo[j]
                    sums[0, j] += w0 * v
                    sums[1, j] += w1 * v
                    sums[2, j] += w2 * v
                    sums[3, j] += w3 * v
                    sums[4, j] += w4 * v
                    sums[5, j] += w5 * v
                    sums[6, j] += w6 * v
                    sums[7, j] += w7 * v
                for j in range(LANES):
                    v = hi[j]
                    sums[8, j] += w0 * v
                    sums[9, j] += w1 * v
                    sums[10, j] += w2 * v
                    sums[11, j] += w3 * v
                    sums[12, j] += w4 * v
                    sums[13, j] += w5 * v
                    sums[14, j] += w6 * v
                    sums[15, j] += w7 * v
        for r in range(8):
            for j in range(LANES):
                acc[r, start + j] = sums[r, j]
                acc[r, start + LANES + j] = sums[8 + r, j]


@njit(cache=True)
def runs_up(size):
    """size rounded up to whole runs of _eight_filters: the length of an accumulator row. The
    last run reads up to RUN - 1 elements past a plane's phases: the slack that follows them."""
    return -(-size // RUN) * RUN


@njit(cache=True, fastmath=True)
def _store(acc, f, b, scale, residual, relu, n, L, out):
    """out[f, n] = acc * scale[f] + b[f] (+ residual[f, n], then ReLU), the wide plane's garbage
    columns dropped; no scale when it is empty (times 1: the sums are then exactly acc + b[f]).
    The flags are tested outside the loops over a row: tested inside, they kept the loop scalar
    (the forward of 16 -> 16 channels of 32x32 took 1.02 ms instead of 0.83)."""
    OH, OW = out.shape[2], out.shape[3]
    bias, factor = b[f], _factor(scale, f)
    for p in range(OH):
        dst, wide = out[f, n, p], acc[p * L:]
        if residual.size != 0:
            res = residual[f, n, p]
            for q in range(OW):
                dst[q] = wide[q] * factor + bias + res[q]
        else:
            for q in range(OW):
                dst[q] = wide[q] * factor + bias
        if relu:
            for q in range(OW):
                dst[q] = max(dst[q], 0)


@njit(cache=True, fastmath=True)
def _convolve_into(xp, w, offsets, b, scale, residual, out, relu, n, L, acc):
    """out[:, n] = the convolution of one image's phases xp with w, stored by _store (residual
    may be out itself: the result is then added into out). xp: each plane followed by RUN
    elements of slack (zero), which the last run reads; acc: eight aligned rows (aligned_rows)
    of runs_up(OH * L) each; a filter count that is not a multiple of eight repeats the last
    filter in its last pass."""
    F, C, size = w.shape[0], w.shape[1], out.shape[2] * L
    wt = w.reshape(F, C, offsets.size)
    for f in range(0, F, 8):
        _eight_filters(xp, wt, f, F - 1, offsets, size, acc)
        for r in range(min(8, F - f)):
            _store(acc[r, :size], f + r, b, scale, residual, relu, n, L, out)


@njit(cache=True, nogil=True, fastmath=True)
def direct_forward(x, w, b, scale, residual, out, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w, relu):
    """out = conv(x, w) * scale + b (+ residual; then ReLU), the scale (a folded batchnorm's,
    per filter) and the residual unless empty."""
    F, C, KH, KW = w.shape
    N, OH, OW = x.shape[1], out.shape[2], out.shape[3]
    HPh, WPh = _phase_geometry(OH, OW, KH, KW, stride_h, stride_w, dil_h, dil_w)
    cols = _columns(stride_w, pad_left, x.shape[3], WPh)
    offsets = _tap_offsets(KH, KW, stride_h, stride_w, dil_h, dil_w, HPh, WPh)
    xp = np.zeros((C, stride_h * stride_w * (HPh + 1) * WPh + RUN), x.dtype)
    acc = aligned_rows(8, runs_up(OH * WPh), x.dtype)
    for n in range(N):
        _fill_phases(x, n, pad_top, pad_left, stride_h, stride_w, HPh, WPh, cols, xp)
        _convolve_into(xp, w, offsets, b, scale, residual, out, relu, n, WPh, acc)


@njit(cache=True, fastmath=True)
def _weight_grads(xp, g, f0, f1, f2, f3, offsets, size, dw):
    """dw[f_r, c, tap t] += the dot product of g[f_r, :size] with c's phases from offsets[t] on,
    for four filters a pass (each input element loaded once for the four) and three taps a pass
    (three loads feed twelve multiply-adds); a repeated filter (f3 = f2, ... at the end) is
    counted once."""
    C, T = dw.shape[1], offsets.size
    dwt = dw.reshape(dw.shape[0], C, T)
    g0, g1, g2, g3 = g[f0, :size], g[f1, :size], g[f2, :size], g[f3, :size]
    threes = T - T % 3
    zero = g.dtype.type(0)  # sums in the arrays' precision: float32 sums vectorize
    for c in range(C):
        plane = xp[c]
        for t in range(0, threes, 3):
            s0, s1, s2 = plane[offsets[t]:], plane[offsets[t + 1]:], plane[offsets[t + 2]:]
            p0, p1, p2, q0, q1, q2 = zero, zero, zero, zero, zero, zero
            u0, u1, u2, v0, v1, v2 = zero, zero, zero, zero, zero, zero
            for k in range(size):
                x0, x1, x2 = s0[k], s1[k], s2[k]
                p0, p1, p2 = p0 + g0[k] * x0, p1 + g0[k] * x1, p2 + g0[k] * x2
                q0, q1, q2 = q0 + g1[k] * x0, q1 + g1[k] * x1, q2 + g1[k] * x2
                u0, u1, u2 = u0 + g2[k] * x0, u1 + g2[k] * x1, u2 + g2[k] * x2
                v0, v1, v2 = v0 + g3[k] * x0, v1 + g3[k] * x1, v2 + g3[k] * x2
            _add_tap_grads(dwt, f0, f1, f2, f3, c, t, p0, q0, u0, v0)
            _add_tap_grads(dwt, f0, f1, f2, f3, c, t + 1, p1, q1, u1, v1)
            _add_tap_grads(dwt, f0, f1, f2, f3, c, t + 2, p2, q2, u2, v2)
        for t in range(threes, T):
            src = plane[offsets[t]:]
            s0, s1, s2, s3 = zero, zero, zero, zero
            for k in range(size):
                v = src[k]
                s0 += g0[k] * v
                s1 += g1[k] * v
                s2 += g2[k] * v
                s3 += g3[k] * v
            _add_tap_grads(dwt, f0, f1, f2, f3, c, t, s0, s1, s2, s3)


@njit(cache=True, fastmath=True)
def _add_tap_grads(dwt, f0, f1, f2, f3, c, t, s0, s1, s2, s3):
    """dwt[f_r, c, t] += s_r, a repeated filter once."""
    dwt[f0, c, t] += s0
    if f1 != f0:
        dwt[f1, c, t] += s1
    if f2 != f1:
        dwt[f2, c, t] += s2
    if f3 != f2:
        dwt[f3, c, t] += s3


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


@njit(cache=True, fastmath=True)
def _scatter_input_grads(g, w, offsets, size, dxp):
    """dxp[c, offsets[t] + k] += the sum over f of w[f, c, i, j] * g[f, k], k < size, t = i*KW + j: each tap's run
    of the output gradient, times the tap's weights, added into the input's phases; eight filters
    a pass (each pass loads and stores its run of dxp once; four ran 1.5x slower), the rest one at
    a time."""
    F, C, T = w.shape[0], w.shape[1], offsets.size
    wt = w.reshape(F, C, T)
    eights = F - F % 8
    for c in range(C):
        for t in range(T):
            d = dxp[c, offsets[t]:]
            for f in range(0, eights, 8):
                g0, g1, g2, g3 = g[f, :size], g[f + 1, :size], g[f + 2, :size], g[f + 3, :size]
                g4, g5, g6, g7 = g[f + 4, :size], g[f + 5, :size], g[f + 6, :size], g[f + 7, :size]
                w0, w1, w2, w3 = wt[f, c, t], wt[f + 1, c, t], wt[f + 2, c, t], wt[f + 3, c, t]
                w4, w5, w6, w7 = wt[f + 4, c, t], wt[f + 5, c, t], wt[f + 6, c, t], wt[f + 7, c, t]
                for k in range(size):
                    d[k] += (w0 * g0[k] + w1 * g1[k] + w2 * g2[k] + w3 * g3[k]
                             + w4 * g4[k] + w5 * g5[k] + w6 * g6[k] + w7 * g7[k])
            for f in range(eights, F):
                g0, w0 = g[f, :size], wt[f, c, t]
                for k in range(size):
                    d[k] += w0 * g0[k]


@njit(cache=True, nogil=True, fastmath=True)
def direct_backward(x, w, out, dout, dx, dw, db, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w,
                    relu, need_dx, add_dx):
    """The gradients of direct_forward: dw and db overwritten, dx (when need_dx) added into if
    add_dx, else overwritten (the first gradient written there: no zeroed buffer to add to).

    At stride 1, dx is the forward's own loop run on the output gradient: a convolution of g,
    padded by (KH - 1)*dil_h - pad_top rows above and (KW - 1)*dil_w - pad_left columns to the
    left, with the filters flipped and their two channel axes swapped. Above it, g's taps are
    added into phases of the input's shape (_scatter_input_grads), which then go back into dx's
    planes (_unpad_phases_add)."""
    F, C, KH, KW = w.shape
    N, H, W = x.shape[1], x.shape[2], x.shape[3]
    OH, OW = out.shape[2], out.shape[3]
    HPh, WPh = _phase_geometry(OH, OW, KH, KW, stride_h, stride_w, dil_h, dil_w)
    cols = _columns(stride_w, pad_left, W, WPh)
    offsets = _tap_offsets(KH, KW, stride_h, stride_w, dil_h, dil_w, HPh, WPh)
    phases, size = stride_h * stride_w * (HPh + 1) * WPh, OH * WPh
    # On 64-byte boundaries (kernels/aligned.py): with Numba's 32, the stride-2 backward took 1.6
    # or 2.0 ms (16 -> 32 channels at 32x32, 32 images) depending on where the arrays fell.
    xp = aligned_rows(C, phases, x.dtype)  # read by _weight_grads, which stays within the phases
    xp[:] = 0
    g = aligned_rows(F, size, x.dtype)  # wide planes g[f, :size]: the garbage columns stay zero
    g[:] = 0
    dw[:] = 0
    db[:] = 0
    last = F - 1
    stride_1 = stride_h == 1 and stride_w == 1
    convolve_dx, scatter_dx = need_dx and stride_1, need_dx and not stride_1
    # dx at stride 1: the flipped filters' convolution of g's padded planes gp (HPg + 1 rows of Lg)
    top_g, left_g = (KH - 1) * dil_h - pad_top, (KW - 1) * dil_w - pad_left
    HPg, Lg = _phase_geometry(H, W, KH, KW, 1, 1, dil_h, dil_w)
    gp = np.zeros((F, (HPg + 1) * Lg + RUN) if convolve_dx else (0, 0), x.dtype)
    g_cols = _columns(1, left_g, WPh, Lg)  # g's planes, garbage columns (zero) and all, as the padded image
    dx_offsets = _tap_offsets(KH, KW, 1, 1, dil_h, dil_w, HPg, Lg)
    flipped = _flipped(w) if convolve_dx else w
    acc = aligned_rows(8, runs_up(H * Lg) if convolve_dx else 0, x.dtype)
    no_bias, no_scale = np.zeros(C, x.dtype), np.empty(0, x.dtype)
    into = dx if add_dx else np.empty((0, 0, 0, 0), x.dtype)  # _store adds `into` (dx itself) or nothing
    off = relu and not relu  # no ReLU on dx; False, typed bool: a literal False would compile _convolve_into once more
    # dx above stride 1: the input's phases, as xp
    dxp = aligned_rows(C if scatter_dx else 0, phases, x.dtype)
    for n in range(N):
        _fill_phases(x, n, pad_top, pad_left, stride_h, stride_w, HPh, WPh, cols, xp)
        _masked_grads(out, dout, n, relu, WPh, g, db)
        for f in range(0, F, 4):
            _weight_grads(xp, g, f, min(f + 1, last), min(f + 2, last), min(f + 3, last), offsets, size, dw)
        if convolve_dx:
            for f in range(F):
                _pad_phases(g[f, :size].reshape(OH, WPh), top_g, left_g, 1, 1, HPg, Lg, g_cols, gp[f])
            _convolve_into(gp, flipped, dx_offsets, no_bias, no_scale, into, dx, off, n, Lg, acc)
        elif scatter_dx:
            dxp[:] = 0
            _scatter_input_grads(g, w, offsets, size, dxp)
            for c in range(C):
                if not add_dx:
                    dx[c, n] = 0
                _unpad_phases_add(dxp[c], pad_top, pad_left, stride_h, stride_w, HPh, WPh, cols, dx[c, n])


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
