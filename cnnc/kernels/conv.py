"""2-d convolution kernels (CNHW activations, OIHW weights): forward with fused bias+ReLU, and backward.

Work split: the batch is cut into one contiguous range of images per Numba thread ("lane"),
and each lane works through its range in chunks of nb images with single-threaded BLAS
products (a batch smaller than the lane count is split by output rows instead, forward only).
The caller must keep BLAS single-threaded (threadpoolctl.threadpool_limits(1, "blas")): a
multi-threaded BLAS inside the lanes oversubscribes the cores.

Per chunk the input is copied into a zero-padded buffer xp (C, nb, HP+1, WP) -- HP x WP is the
input area the output windows cover, plus one zero row -- so that building the column matrix
needs no bounds logic. The forward is one product W (F, C*Kh*Kw) @ cols (C*Kh*Kw, columns) and
an epilogue (bias, ReLU) that copies the result into out; the backward is g @ cols.T (dw) and
W.T @ g scattered back into the padded buffer (dx).

Column layout: output (n, p, q) of a chunk sits at column (n*OH + p)*ld + q (rows counted
from the lane's first row when it has a band). For stride 1, ld = WP ("wide"): the columns of
one kernel tap (c, i, j) and one image are then a single contiguous run of xp, starting at
xp[c, n, i, j], so im2col is long block copies (10x faster than gathering rows of 16). The
price is WP - OW discarded columns per output row, e.g. 18 for 16: 12% more product work.
For other strides ld = OW and im2col gathers one output row at a time.

Do not call these kernels from inside another parallel region (the workqueue threading layer
does not nest).
"""
import numpy as np
import numba
from numba import njit, prange

# Images per chunk are picked so one chunk's column matrix stays near this many elements
# (1 MB of float32, the size of one core's L2): measured on the vgg_small and lenet5 layers,
# 0.3-1.3 MB chunks ran 10-45% faster than 5-20 MB ones; the product does not need more.
COLS_ELEMS = 1 << 18

# Parallel lanes, one per Numba thread (frozen in when compiled: reading the thread count at
# run time would stop Numba from caching the kernels).
LANES = numba.config.NUMBA_NUM_THREADS
# Below this much work a layer runs on one thread: waking the others costs more than it saves
# (e.g. lenet5's convs at batch 1).
PARALLEL_MIN_FLOP = 4_000_000


@njit(cache=True)
def _layout(KH, KW, OH, OW, sh, sw):
    """(HP, WP, wide, ld): the covered input area, whether the wide layout applies, the row stride."""
    HP, WP = (OH - 1) * sh + KH, (OW - 1) * sw + KW
    wide = sh == 1 and sw == 1
    return HP, WP, wide, WP if wide else OW


@njit(cache=True)
def _lane_count(lanes, flop, parts):
    """lanes if positive, else the lanes for work of this many FLOPs that can be cut into
    `parts` pieces: one for small work."""
    if lanes > 0:
        return min(lanes, parts)
    return 1 if flop < PARALLEL_MIN_FLOP else max(1, min(LANES, parts))


@njit(cache=True)
def _share(lane, lanes, n, oh):
    """A lane's work: images [n_lo, n_hi) and output rows [p0, p1). Lanes split the batch when
    there is an image for each, else (batch-1 latency) the output rows."""
    if n >= lanes:
        return lane * n // lanes, (lane + 1) * n // lanes, 0, oh
    return 0, n, lane * oh // lanes, (lane + 1) * oh // lanes


@njit(cache=True)
def _chunk(nb, rows, images, columns_per_image):
    """nb if positive, else the images per chunk that keep the column matrix near COLS_ELEMS."""
    if nb > 0:
        return nb
    return max(1, min(images, COLS_ELEMS // max(1, rows * columns_per_image)))


# Copy loops index views from 0 so that Numba can drop its negative-index checks and vectorize.
@njit(cache=True, fastmath=True)
def _zero(dst, count):
    for k in range(count):
        dst[k] = 0


@njit(cache=True, fastmath=True)
def _gather(dst, src, count, step):
    if step == 1:
        for k in range(count):
            dst[k] = src[k]
    else:
        for k in range(count):
            dst[k] = src[k * step]


@njit(cache=True, fastmath=True)
def _scatter_add(dst, src, count, step):
    if step == 1:
        for k in range(count):
            dst[k] += src[k]
    else:
        for k in range(count):
            dst[k * step] += src[k]


@njit(cache=True)
def _inside(pad, size, padded):
    """[lo, hi): the padded-buffer indices that hold real input along one axis."""
    lo = min(pad, padded)
    return lo, max(lo, min(pad + size, padded))


@njit(cache=True, fastmath=True)
def _pad_chunk(x, n0, pt, pl, xp):
    """xp[c, n, h, w] = x[c, n0+n, h-pt, w-pl], zero where that is padding (every element written)."""
    C, _, H, W = x.shape
    m, HP1, WP = xp.shape[1], xp.shape[2], xp.shape[3]
    h0, h1 = _inside(pt, H, HP1 - 1)
    w0, w1 = _inside(pl, W, WP)
    for c in range(C):
        for n in range(m):
            plane = xp[c, n].reshape(-1)
            _zero(plane, h0 * WP)
            _zero(plane[h1 * WP:], (HP1 - h1) * WP)
            for h in range(h0, h1):
                row = plane[h * WP:]
                _zero(row, w0)
                _gather(row[w0:], x[c, n0 + n, h - pt], w1 - w0, 1)
                _zero(row[w1:], WP - w1)


@njit(cache=True, fastmath=True)
def _unpad_add(dxp, n0, pt, pl, dx):
    """dx[c, n0+n, h, w] += dxp[c, n, h+pt, w+pl]: the adjoint of _pad_chunk."""
    C, _, H, W = dx.shape
    m, HP1, WP = dxp.shape[1], dxp.shape[2], dxp.shape[3]
    h0, h1 = _inside(pt, H, HP1 - 1)
    w0, w1 = _inside(pl, W, WP)
    for c in range(C):
        for n in range(m):
            for h in range(h0, h1):
                _scatter_add(dx[c, n0 + n, h - pt], dxp[c, n, h, w0:], w1 - w0, 1)


@njit(cache=True, fastmath=True)
def _im2col(xp, kh, kw, sh, sw, p0, p1, ow, wide, cols):
    """cols[(c,i,j), (n*(p1-p0) + p-p0)*ld + q] = xp[c, n, p*sh+i, q*sw+j] for output rows [p0, p1)."""
    C, m, WP = xp.shape[0], xp.shape[1], xp.shape[3]
    band = p1 - p0
    for c in range(C):
        for i in range(kh):
            for j in range(kw):
                row = cols[(c * kh + i) * kw + j]
                for n in range(m):
                    if wide:  # the extra zero row keeps the run inside the plane
                        _gather(row[n * band * WP:], xp[c, n].reshape(-1)[(p0 + i) * WP + j:], band * WP, 1)
                    else:
                        for p in range(p0, p1):
                            _gather(row[(n * band + p - p0) * ow:], xp[c, n, p * sh + i, j:], ow, sw)


@njit(cache=True, fastmath=True)
def _col2im_add(cols, kh, kw, sh, sw, oh, ow, wide, dxp):
    """dxp[c, n, p*sh+i, q*sw+j] += cols[(c,i,j), (n*oh+p)*ld + q]: the adjoint of _im2col.

    In the wide layout the discarded columns are added too: they are exactly zero (W.T times
    zero columns of g), so where they land does not matter."""
    C, m, WP = dxp.shape[0], dxp.shape[1], dxp.shape[3]
    for c in range(C):
        for i in range(kh):
            for j in range(kw):
                row = cols[(c * kh + i) * kw + j]
                for n in range(m):
                    if wide:
                        _scatter_add(dxp[c, n].reshape(-1)[i * WP + j:], row[n * oh * WP:], oh * WP, 1)
                    else:
                        for p in range(oh):
                            _scatter_add(dxp[c, n, p * sh + i, j:], row[(n * oh + p) * ow:], ow, sw)


@njit(cache=True, fastmath=True)
def _bias_relu_store(prod, b, relu, n0, p0, p1, ld, out):
    """out[f, n0+n, p, q] = prod[f, (n*(p1-p0) + p-p0)*ld + q] + b[f], then max(0, .) if relu."""
    OW = out.shape[3]
    band = p1 - p0
    m = prod.shape[1] // (band * ld)
    for f in range(prod.shape[0]):
        bf = b[f]
        for n in range(m):
            for p in range(p0, p1):
                src = prod[f, (n * band + p - p0) * ld:]
                dst = out[f, n0 + n, p]
                if relu:
                    for q in range(OW):
                        dst[q] = max(src[q] + bf, 0)
                else:
                    for q in range(OW):
                        dst[q] = src[q] + bf


@njit(cache=True, fastmath=True)
def _masked_grad(out, dout, relu, n0, ld, g, db):
    """g[f, (n*OH+p)*ld + q] = dout[f, n0+n, p, q], zeroed where relu and out <= 0 and in the
    discarded columns (a copy: dout may be shared); db += the sums."""
    OH, OW = out.shape[2], out.shape[3]
    m = g.shape[1] // (OH * ld)
    for f in range(g.shape[0]):
        s = 0.0
        for n in range(m):
            for p in range(OH):
                dst = g[f, (n * OH + p) * ld:]
                src, o = dout[f, n0 + n, p], out[f, n0 + n, p]
                for q in range(OW):
                    v = src[q] if not relu or o[q] > 0 else 0
                    dst[q] = v
                    s += v
                _zero(dst[OW:], ld - OW)
        db[f] += s


@njit(cache=True, fastmath=True)
def _forward_lane(x, wmat, b, out, kh, kw, sh, sw, pt, pl, relu, share, nb, scratch):
    """One lane's forward: its images and output rows (share), nb images at a time."""
    C, F, OH, OW = x.shape[0], wmat.shape[0], out.shape[2], out.shape[3]
    HP, WP, wide, ld = _layout(kh, kw, OH, OW, sh, sw)
    rows = wmat.shape[1]
    n_lo, n_hi, p0, p1 = share
    xp_buf, cols_buf, prod_buf = scratch
    width = (p1 - p0) * ld  # columns per image
    for n0 in range(n_lo, n_hi, nb):
        m = min(nb, n_hi - n0)
        xp = xp_buf[:C * m * (HP + 1) * WP].reshape(C, m, HP + 1, WP)
        cols = cols_buf[:rows * m * width].reshape(rows, m * width)
        prod = prod_buf[:F * m * width].reshape(F, m * width)
        _pad_chunk(x, n0, pt, pl, xp)
        _im2col(xp, kh, kw, sh, sw, p0, p1, OW, wide, cols)
        np.dot(wmat, cols, prod)
        _bias_relu_store(prod, b, relu, n0, p0, p1, ld, out)


@njit(cache=True, fastmath=True)
def conv2d_forward(x, w, b, out, stride_h, stride_w, pad_top, pad_left, relu):
    conv2d_forward_chunked(x, w, b, out, stride_h, stride_w, pad_top, pad_left, relu, 0, 0)


@njit(cache=True, parallel=True, fastmath=True)
def conv2d_forward_chunked(x, w, b, out, stride_h, stride_w, pad_top, pad_left, relu, nb, lanes):
    """conv2d_forward with nb images per chunk and a lane count (0: automatic), for tests and
    benchmarks."""
    F, C, KH, KW = w.shape
    N, OH, OW = x.shape[1], out.shape[2], out.shape[3]
    HP, WP, _, ld = _layout(KH, KW, OH, OW, stride_h, stride_w)
    rows = C * KH * KW
    wmat = w.reshape(F, rows)
    lanes = _lane_count(lanes, 2 * F * rows * N * OH * ld, max(N, OH))
    nb = _chunk(nb, rows, (N + lanes - 1) // lanes, OH * ld)
    # one scratch row per lane, allocated out here: Numba hoists (so shares) an np.empty that
    # is written inside the prange body
    xp_bufs = np.empty((lanes, C * nb * (HP + 1) * WP), x.dtype)
    cols_bufs = np.empty((lanes, rows * nb * OH * ld), x.dtype)
    prod_bufs = np.empty((lanes, F * nb * OH * ld), x.dtype)
    args = (KH, KW, stride_h, stride_w, pad_top, pad_left, relu)
    if lanes == 1:  # no parallel launch: waking the threads costs more than small layers take
        _forward_lane(x, wmat, b, out, *args, (0, N, 0, OH), nb, (xp_bufs[0], cols_bufs[0], prod_bufs[0]))
    else:
        for lane in prange(lanes):
            _forward_lane(x, wmat, b, out, *args, _share(lane, lanes, N, OH), nb,
                          (xp_bufs[lane], cols_bufs[lane], prod_bufs[lane]))


@njit(cache=True, fastmath=True)
def _backward_lane(x, wmat, out, dout, dx, kh, kw, sh, sw, pt, pl, relu, need_dx, images, nb,
                   scratch, dw, db):
    """One lane's backward over its images [n_lo, n_hi): dw and db are overwritten with its sums."""
    C, F, OH, OW = x.shape[0], wmat.shape[0], out.shape[2], out.shape[3]
    HP, WP, wide, ld = _layout(kh, kw, OH, OW, sh, sw)
    rows = wmat.shape[1]
    n_lo, n_hi = images
    xp_buf, cols_buf, g_buf, dw_part = scratch
    dw[:] = 0
    db[:] = 0
    for n0 in range(n_lo, n_hi, nb):
        m = min(nb, n_hi - n0)
        xp = xp_buf[:C * m * (HP + 1) * WP].reshape(C, m, HP + 1, WP)
        cols = cols_buf[:rows * m * OH * ld].reshape(rows, m * OH * ld)
        g = g_buf[:F * m * OH * ld].reshape(F, m * OH * ld)
        _masked_grad(out, dout, relu, n0, ld, g, db)
        _pad_chunk(x, n0, pt, pl, xp)
        _im2col(xp, kh, kw, sh, sw, 0, OH, OW, wide, cols)
        np.dot(g, cols.T, dw_part)
        dw += dw_part
        if need_dx:  # cols and xp are used up: reuse them for the column and input gradients
            np.dot(wmat.T, g, cols)
            xp[:] = 0
            _col2im_add(cols, kh, kw, sh, sw, OH, OW, wide, xp)
            _unpad_add(xp, n0, pt, pl, dx)  # lanes own disjoint images of dx


@njit(cache=True, fastmath=True)
def _sum_lanes(parts, total):
    """total = parts.sum(axis=0), in a plain loop: in a parallel function that expression would
    be a parallel loop of its own, and waking the threads for it costs more than the sum."""
    total[:] = parts[0]
    for lane in range(1, parts.shape[0]):
        total += parts[lane]


@njit(cache=True, fastmath=True)
def conv2d_backward(x, w, out, dout, dx, dw, db, stride_h, stride_w, pad_top, pad_left, relu, need_dx):
    conv2d_backward_chunked(x, w, out, dout, dx, dw, db, stride_h, stride_w, pad_top, pad_left,
                            relu, need_dx, 0, 0)


@njit(cache=True, parallel=True, fastmath=True)
def conv2d_backward_chunked(x, w, out, dout, dx, dw, db, stride_h, stride_w, pad_top, pad_left,
                            relu, need_dx, nb, lanes):
    """conv2d_backward with nb images per chunk and a lane count (0: automatic)."""
    F, C, KH, KW = w.shape
    N, OH, OW = x.shape[1], out.shape[2], out.shape[3]
    HP, WP, _, ld = _layout(KH, KW, OH, OW, stride_h, stride_w)
    rows = C * KH * KW
    wmat = w.reshape(F, rows)
    lanes = _lane_count(lanes, 4 * F * rows * N * OH * ld, N)
    nb = _chunk(nb, rows, (N + lanes - 1) // lanes, OH * ld)
    xp_bufs = np.empty((lanes, C * nb * (HP + 1) * WP), x.dtype)
    cols_bufs = np.empty((lanes, rows * nb * OH * ld), x.dtype)
    g_bufs = np.empty((lanes, F * nb * OH * ld), x.dtype)
    dw_parts = np.empty((lanes, F, rows), x.dtype)
    dw_lanes = np.empty((lanes, F, rows), x.dtype)  # each lane sums its own images' dw and db
    db_lanes = np.empty((lanes, F), db.dtype)
    args = (KH, KW, stride_h, stride_w, pad_top, pad_left, relu, need_dx)
    if lanes == 1:
        _backward_lane(x, wmat, out, dout, dx, *args, (0, N), nb,
                       (xp_bufs[0], cols_bufs[0], g_bufs[0], dw_parts[0]), dw_lanes[0], db_lanes[0])
    else:
        for lane in prange(lanes):
            _backward_lane(x, wmat, out, dout, dx, *args, _share(lane, lanes, N, OH)[:2], nb,
                           (xp_bufs[lane], cols_bufs[lane], g_bufs[lane], dw_parts[lane]),
                           dw_lanes[lane], db_lanes[lane])
    _sum_lanes(dw_lanes.reshape(lanes, F * rows), dw.reshape(F * rows))
    _sum_lanes(db_lanes, db)
