"""Depthwise convolution kernels (groups = input channels; CNHW activations, (F, 1, Kh, Kw) weights):
forward with bias, residual and ReLU fused, and backward.

Filter f reads input channel f // M alone, M = F / C the depth multiplier. There is little
arithmetic per byte (9 multiply-adds per output for 3x3), so these kernels are about memory:
plane by plane, each input and output element passes through memory once, with no im2col and
no BLAS. A plane is copied into a small zero-padded buffer that stays in L1, cut into its
stride's phases as im2col's input is (kernels/conv.py): phase (a, b) holds the padded plane's
rows a, a + Sh, ... and columns b, b + Sw, ..., so that at any stride each tap reads one phase
at one offset, and is one long vectorized run over it (_forward_planes, _backward_planes).

The kernels are serial, as the other kernels: the runtime runs slices of the batch side by side.
"""
import numpy as np
from numba import njit

from .aligned import aligned_rows
from .conv import _factor

# Output planes of at most this many elements run with the images innermost instead
# (_forward_across_images, _backward_across_images): a plane of 2x2 outputs has too little work
# to pay for its own set-up (padding it, nine short runs, storing it). One thread, 32 images,
# mobilenet_v1's layers, forward / backward against plane by plane (first version, one run of N
# images per output position and tap): 2x2 outputs 1.8-2.4x / 1.4-2.5x faster; 4x4 from 8x8 at
# stride 2 1.3x / 1.2x, at stride 1 0.9x / 1.05x. Runs over the whole wide plane and batch made
# that path 3-4x faster forward and 1.2-1.5x backward again (512 channels of 4x4: 1.11 -> 0.35 /
# 2.61 -> 1.68 ms). 8x8 outputs stay plane by plane: 0.73 / 1.71 ms there, 0.51 / 2.84 this way.
# And only with a batch of at least SMALL_PLANE_IMAGES (a vector's worth): at batch 1
# mobilenet_v1's forward took 3.6 ms this way, 2.0 plane by plane.
SMALL_PLANE = 16
SMALL_PLANE_IMAGES = 16


@njit(cache=True, fastmath=True)
def _scaled_filters(w, scale):
    """A copy of w with filter f times scale[f] (a folded batchnorm's scale; a plain copy when
    scale is empty): a depthwise layer has nine weights a channel, so the copy costs next to
    nothing."""
    F, C, KH, KW = w.shape
    out = np.empty((F, C, KH, KW), w.dtype)
    for f in range(F):  # loops: as an array expression (w[f] * s) this took 3 s longer to compile
        s = _factor(scale, f)
        for c in range(C):
            for i in range(KH):
                for j in range(KW):
                    out[f, c, i, j] = w[f, c, i, j] * s
    return out


@njit(cache=True, fastmath=True)
def _phase_geometry(OH, OW, KH, KW, stride_h, stride_w, dil_h, dil_w):
    """(HPh, WPh): the rows and columns of a phase that the windows reach. Output (p, q) at tap
    (i, j) reads phase (u % Sh, v % Sw) at (p + u // Sh, q + v // Sw), (u, v) = (i Dh, j Dw)."""
    return OH + (KH - 1) * dil_h // stride_h, OW + (KW - 1) * dil_w // stride_w


@njit(cache=True, fastmath=True)
def _columns(stride, pad, width, WPh):
    """cols[b] = [s0, s1): the columns s of phase column b whose input column s*stride + b - pad
    is inside [0, width). Computed once per call, as the taps' offsets: the divisions cost more
    than the work of a 4x4 or 2x2 plane (mobilenet_v1's last layers) when done per plane."""
    cols = np.empty((stride, 2), np.int64)
    for b in range(stride):
        s0 = max(0, (pad - b + stride - 1) // stride)
        s1 = min(WPh, (width - 1 - b + pad) // stride + 1) if width - 1 - b + pad >= 0 else 0
        cols[b, 0], cols[b, 1] = s0, max(s0, s1)
    return cols


@njit(cache=True, fastmath=True)
def _pad_phases(src, pad_top, pad_left, stride_h, stride_w, HPh, WPh, cols, xp):
    """Copies the plane src into the phases of its zero-padded self in xp, phase (a, b) a
    (HPh + 1) x WPh block at (a*Sw + b) * (HPh + 1) * WPh; only the places that see src are
    written: the rest of xp stays as the caller made it (zero, at the same places every plane)."""
    H, W = src.shape
    for a in range(stride_h):
        for b in range(stride_w):
            base = (a * stride_w + b) * (HPh + 1) * WPh
            s0, s1 = cols[b, 0], cols[b, 1]
            for r in range(HPh):
                h = r * stride_h + a - pad_top
                if h < 0 or h >= H:
                    continue
                dst, row = xp[base + r * WPh + s0:], src[h, s0 * stride_w + b - pad_left:]
                if stride_w == 1:
                    for k in range(s1 - s0):
                        dst[k] = row[k]
                else:
                    for k in range(s1 - s0):
                        dst[k] = row[k * stride_w]


@njit(cache=True, fastmath=True)
def _unpad_phases_add(xp, pad_top, pad_left, stride_h, stride_w, HPh, WPh, cols, dst):
    """dst += the places of the phases in xp that _pad_phases fills from a plane of dst's shape."""
    H, W = dst.shape
    for a in range(stride_h):
        for b in range(stride_w):
            base = (a * stride_w + b) * (HPh + 1) * WPh
            s0, s1 = cols[b, 0], cols[b, 1]
            for r in range(HPh):
                h = r * stride_h + a - pad_top
                if h < 0 or h >= H:
                    continue
                src, row = xp[base + r * WPh + s0:], dst[h, s0 * stride_w + b - pad_left:]
                for k in range(s1 - s0):
                    row[k * stride_w] += src[k]


@njit(cache=True, fastmath=True)
def _tap_offsets(KH, KW, stride_h, stride_w, dil_h, dil_w, HPh, WPh):
    """Where each tap (i, j)'s run starts in the phases (at i*KW + j): its phase's block, then
    its row and column."""
    offsets = np.empty(KH * KW, np.int64)
    for i in range(KH):
        for j in range(KW):
            u, v = i * dil_h, j * dil_w
            offsets[i * KW + j] = (((u % stride_h) * stride_w + v % stride_w) * (HPh + 1) * WPh
                                   + (u // stride_h) * WPh + v // stride_w)
    return offsets


# ---- small planes: the images innermost ---------------------------------------------------
#
# A channel's planes of all images are transposed into the phases of depthwise_forward, with the
# batch innermost: element (phase, r, s) of the padded plane is the N-vector at
# ((phase block + r) * WPh + s) * N of xt. The wide output acc[(p*WPh + q)*N + n] then takes each
# tap as one contiguous run over the whole plane and batch, acc[k] += w * xt[tap*N + k], as the
# plane-by-plane path takes it over one plane. The transposes cost a scalar move per element;
# the per-plane set-up is gone. (Runs over one output position's N images, 2 vectors each, cost
# more in loop set-up than in work: 512 channels of 4x4 at 32 images took 1.0 ms forward.)


@njit(cache=True, fastmath=True)
def _phases_images_inner(planes, pad_top, pad_left, stride_h, stride_w, HPh, WPh, cols, xt):
    """_pad_phases for a channel's planes (N, H, W) of all images, the image innermost in xt:
    only the places that see the planes are written, the rest stays zero."""
    N, H, W = planes.shape
    for a in range(stride_h):
        for b in range(stride_w):
            base = (a * stride_w + b) * (HPh + 1) * WPh
            s0, s1 = cols[b, 0], cols[b, 1]
            for r in range(HPh):
                h = r * stride_h + a - pad_top
                if h < 0 or h >= H:
                    continue
                for s in range(s0, s1):
                    dst, col = xt[(base + r * WPh + s) * N:], s * stride_w + b - pad_left
                    for n in range(N):
                        dst[n] = planes[n, h, col]


@njit(cache=True, fastmath=True)
def _unpad_images_inner_add(dxt, pad_top, pad_left, stride_h, stride_w, HPh, WPh, cols, dx_planes):
    """dx_planes (N, H, W) += the places of dxt that _phases_images_inner fills."""
    N, H, W = dx_planes.shape
    for a in range(stride_h):
        for b in range(stride_w):
            base = (a * stride_w + b) * (HPh + 1) * WPh
            s0, s1 = cols[b, 0], cols[b, 1]
            for r in range(HPh):
                h = r * stride_h + a - pad_top
                if h < 0 or h >= H:
                    continue
                for s in range(s0, s1):
                    src, col = dxt[(base + r * WPh + s) * N:], s * stride_w + b - pad_left
                    for n in range(N):
                        dx_planes[n, h, col] += src[n]


@njit(cache=True, fastmath=True)
def _forward_across_images(x, w, b, residual, out, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w, relu):
    """depthwise_forward for small planes, the images innermost (see above)."""
    C, N = x.shape[0], x.shape[1]
    F, KH, KW = w.shape[0], w.shape[2], w.shape[3]
    OH, OW = out.shape[2], out.shape[3]
    mult, add = F // C, residual.size != 0
    HPh, WPh = _phase_geometry(OH, OW, KH, KW, stride_h, stride_w, dil_h, dil_w)
    run = OH * WPh * N
    cols = _columns(stride_w, pad_left, x.shape[3], WPh)
    offsets = _tap_offsets(KH, KW, stride_h, stride_w, dil_h, dil_w, HPh, WPh)
    xt = np.zeros(stride_h * stride_w * (HPh + 1) * WPh * N, x.dtype)
    acc = aligned_rows(1, run, x.dtype)[0, :run]  # on a 64-byte boundary: see kernels/aligned.py
    for c in range(C):
        _phases_images_inner(x[c], pad_top, pad_left, stride_h, stride_w, HPh, WPh, cols, xt)
        for f in range(c * mult, (c + 1) * mult):
            bf = b[f]
            for k in range(run):
                acc[k] = bf
            for t in range(KH * KW):
                wt, tap = w[f, 0, t // KW, t % KW], xt[offsets[t] * N:]
                for k in range(run):
                    acc[k] += wt * tap[k]
            dst = out[f].reshape(-1)  # (N, OH, OW), contiguous: one run of N per output position
            res = residual[f].reshape(-1) if add else dst
            for p in range(OH):
                for q in range(OW):
                    src, d, r = acc[(p * WPh + q) * N:], dst[p * OW + q:], res[p * OW + q:]
                    for n in range(N):
                        v = src[n]
                        if add:
                            v += r[n * OH * OW]
                        d[n * OH * OW] = max(v, 0) if relu else v


@njit(cache=True, fastmath=True)
def _masked_plane(out, dout, relu, g):
    """g = dout where out > 0 (all of it without ReLU), one contiguous run; returns its sum. The
    flag is tested outside the loops: tested per element, in the transposing loop this replaced,
    the mask's unpredictable branch made a fused ReLU's backward 2.4x slower (512 channels of
    4x4, 32 images: 1.48 against 0.62 ms)."""
    total = g.dtype.type(0)
    if relu:
        for k in range(g.size):
            v = dout[k] if out[k] > 0 else 0
            g[k] = v
            total += v
    else:
        for k in range(g.size):
            g[k] = dout[k]
            total += dout[k]
    return total


@njit(cache=True, fastmath=True)
def _images_inner(planes, N, OH, OW, WPh, gt):
    """gt[(p*WPh + q)*N + n] = planes[(n*OH + p)*OW + q]: N planes of OH x OW as one wide plane,
    the image innermost (the columns q >= OW are left as they are)."""
    for p in range(OH):
        for q in range(OW):
            dst, src = gt[(p * WPh + q) * N:], planes[p * OW + q:]
            for n in range(N):
                dst[n] = src[n * OH * OW]


@njit(cache=True, fastmath=True)
def _backward_across_images(x, w, out, dout, dx, dw, db, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w,
                            relu, need_dx):
    """depthwise_backward for small planes, the images innermost: the masked gradient as a wide
    plane gt (zero in the discarded columns), then per tap dw = gt . xt[tap:] and
    dxt[tap:] += w * gt, each one contiguous run."""
    C, N = x.shape[0], x.shape[1]
    F, KH, KW = w.shape[0], w.shape[2], w.shape[3]
    OH, OW = out.shape[2], out.shape[3]
    mult = F // C
    HPh, WPh = _phase_geometry(OH, OW, KH, KW, stride_h, stride_w, dil_h, dil_w)
    run = OH * WPh * N
    cols = _columns(stride_w, pad_left, x.shape[3], WPh)
    offsets = _tap_offsets(KH, KW, stride_h, stride_w, dil_h, dil_w, HPh, WPh)
    xt = np.zeros(stride_h * stride_w * (HPh + 1) * WPh * N, x.dtype)
    dxt = np.empty(xt.size, x.dtype)
    gt = np.zeros(run, x.dtype)  # the discarded columns stay zero
    masked = np.empty(N * OH * OW, x.dtype)
    zero = x.dtype.type(0)  # sums in float32: they vectorize
    for c in range(C):
        _phases_images_inner(x[c], pad_top, pad_left, stride_h, stride_w, HPh, WPh, cols, xt)
        if need_dx:
            for k in range(dxt.size):
                dxt[k] = 0
        for f in range(c * mult, (c + 1) * mult):
            db[f] = _masked_plane(out[f].reshape(-1), dout[f].reshape(-1), relu, masked)
            _images_inner(masked, N, OH, OW, WPh, gt)
            for t in range(KH * KW):
                tap, s = xt[offsets[t] * N:], zero
                for k in range(run):
                    s += gt[k] * tap[k]
                dw[f, 0, t // KW, t % KW] = s
                if need_dx:
                    wt, dtap = w[f, 0, t // KW, t % KW], dxt[offsets[t] * N:]
                    for k in range(run):
                        dtap[k] += wt * gt[k]
        if need_dx:
            _unpad_images_inner_add(dxt, pad_top, pad_left, stride_h, stride_w, HPh, WPh, cols, dx[c])


@njit(cache=True, nogil=True, fastmath=True)
def depthwise_forward(x, filters, b, scale, residual, out, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w,
                      relu):
    """out = relu?(depthwise conv(x, filters) * scale + b + residual), the scale (a folded
    batchnorm's, per filter) and the residual (a fused add's other input) unless empty. Padding
    is zeros.

    Plane by plane over the phases xp of the zero-padded input plane: output (p, q) is computed
    at p*WPh + q of a "wide" plane, so each tap is one contiguous run over the whole plane,
    wide[o] += w * xp[o + tap offset], vectorized and long (per row, the loop set-up of 9 short
    runs cost more than their work on 32-wide planes); columns q >= OW are discarded. Its loops
    index views from 0, so that Numba drops its negative-index checks and vectorizes them
    (indexed as xp[o + offset], they compiled to scalar code): at batch 64, mobilenet_v1's
    stride-1 layers took 1.1-4.6 ms this way, 7-27 ms row by row."""
    w = _scaled_filters(filters, scale)
    C, N = x.shape[0], x.shape[1]
    F, KH, KW = w.shape[0], w.shape[2], w.shape[3]
    OH, OW = out.shape[2], out.shape[3]
    if OH * OW <= SMALL_PLANE and N >= SMALL_PLANE_IMAGES:
        _forward_across_images(x, w, b, residual, out, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w, relu)
        return
    mult, add = F // C, residual.size != 0
    HPh, WPh = _phase_geometry(OH, OW, KH, KW, stride_h, stride_w, dil_h, dil_w)
    run = OH * WPh
    cols = _columns(stride_w, pad_left, x.shape[3], WPh)
    offsets = _tap_offsets(KH, KW, stride_h, stride_w, dil_h, dil_w, HPh, WPh)
    xp = np.zeros(stride_h * stride_w * (HPh + 1) * WPh, x.dtype)  # + 1 row: the last taps' runs reach into it
    wide = aligned_rows(1, run, x.dtype)[0, :run]  # on a 64-byte boundary: see kernels/aligned.py
    for c in range(C):
        for n in range(N):
            _pad_phases(x[c, n], pad_top, pad_left, stride_h, stride_w, HPh, WPh, cols, xp)
            for f in range(c * mult, (c + 1) * mult):
                for o in range(run):
                    wide[o] = 0
                for i in range(KH):
                    for j in range(KW):
                        wij = w[f, 0, i, j]
                        tap = xp[offsets[i * KW + j]:]
                        for o in range(run):
                            wide[o] += wij * tap[o]
                bf = b[f]
                for p in range(OH):
                    dst, src = out[f, n, p], wide[p * WPh:]
                    res = residual[f, n, p] if add else dst
                    for q in range(OW):
                        v = src[q] + bf
                        if add:
                            v += res[q]
                        dst[q] = max(v, 0) if relu else v


@njit(cache=True, nogil=True, fastmath=True)
def depthwise_backward(x, w, out, dout, dx, dw, db, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w,
                       relu, need_dx):
    """dw and db are overwritten; dx (when need_dx) is added into. With relu, the gradient is
    dout where out > 0 (out is the fused ReLU's output).

    On the phases and wide planes of depthwise_forward: the masked gradient gw (OH x WPh, zero
    in the discarded columns), then per tap dw += gw . xp[tap:] and dxp[tap:] += w * gw, each one
    contiguous run; dxp goes back into dx without its padding."""
    C, N = x.shape[0], x.shape[1]
    F, KH, KW = w.shape[0], w.shape[2], w.shape[3]
    OH, OW = out.shape[2], out.shape[3]
    if OH * OW <= SMALL_PLANE and N >= SMALL_PLANE_IMAGES:
        _backward_across_images(x, w, out, dout, dx, dw, db, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w,
                                relu, need_dx)
        return
    mult = F // C
    HPh, WPh = _phase_geometry(OH, OW, KH, KW, stride_h, stride_w, dil_h, dil_w)
    run = OH * WPh
    cols = _columns(stride_w, pad_left, x.shape[3], WPh)
    offsets = _tap_offsets(KH, KW, stride_h, stride_w, dil_h, dil_w, HPh, WPh)
    xp = np.zeros(stride_h * stride_w * (HPh + 1) * WPh, x.dtype)
    dxp = np.empty(xp.size, x.dtype)
    gw = np.zeros(run, x.dtype)  # columns OW.. stay zero
    acc = np.zeros((F, KH * KW), np.float64)
    sums = np.zeros(F, np.float64)
    zero = x.dtype.type(0)  # a plane's sums in float32 (they vectorize), the sums of planes in float64
    for c in range(C):
        for n in range(N):
            _pad_phases(x[c, n], pad_top, pad_left, stride_h, stride_w, HPh, WPh, cols, xp)
            if need_dx:
                for o in range(dxp.size):
                    dxp[o] = 0
            for f in range(c * mult, (c + 1) * mult):
                s = zero
                for p in range(OH):
                    src, o_, dst = dout[f, n, p], out[f, n, p], gw[p * WPh:]
                    for q in range(OW):
                        v = src[q] if not relu or o_[q] > 0 else 0
                        dst[q] = v
                        s += v
                sums[f] += s
                for i in range(KH):
                    for j in range(KW):
                        offset = offsets[i * KW + j]
                        tap, t = xp[offset:], zero
                        for o in range(run):
                            t += gw[o] * tap[o]
                        acc[f, i * KW + j] += t
                        if need_dx:
                            wij, dtap = w[f, 0, i, j], dxp[offset:]
                            for o in range(run):
                                dtap[o] += wij * gw[o]
            if need_dx:
                _unpad_phases_add(dxp, pad_top, pad_left, stride_h, stride_w, HPh, WPh, cols, dx[c, n])
    for f in range(F):
        db[f] = sums[f]
        for i in range(KH):
            for j in range(KW):
                dw[f, 0, i, j] = acc[f, i * KW + j]
