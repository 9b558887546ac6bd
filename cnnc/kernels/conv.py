"""2-d convolution kernels (CNHW activations, OIHW weights): forward with bias, residual and ReLU
fused, and backward; and the transposed convolution's, made of them (at the end).

The kernels are serial: each works through its batch in chunks of nb images, with one BLAS
product per chunk. The runtime runs the whole network on slices of the batch in parallel
(cnnc/lanes.py), with a one-thread BLAS.

Per chunk the input is copied into a zero-padded buffer xp, cut into the stride's phases:
xp[c, n, a*sw + b, h, w] = the padded input at row h*sh + a, column w*sw + b (one phase at
stride 1), each phase HPh x WPh with one zero row more, so that building the column matrix
needs no bounds logic. The forward is one product W (F, C*Kh*Kw) @ cols (C*Kh*Kw, columns) and
an epilogue (bias, ReLU, residual) that copies the result into out; the backward is cols @ g.T
(dw, transposed) and W.T @ g scattered back into the padded buffer (dx). 3x3 layers at stride
1 have Winograd kernels of their own (conv3x3_forward and conv3x3_backward, at the end).

Column layout: output (n, p, q) of a chunk sits at column (n*OH + p)*ld + q with ld = WPh
("wide"): the columns of one kernel tap (c, i, j) and one image are then a single contiguous
run of one phase, the phase (i % sh, j % sw) from row i // sh, column j // sw on, so im2col is
long block copies at every stride (10x faster than gathering rows of 16 at stride 1, 3x at
stride 2). The price is WPh - OW discarded columns per output row, e.g. 2 for 16 at stride 1
and 1 for 16 at stride 2 with 3x3 filters: 6-12% more product work.

Dilation: tap (i, j) starts at offset (i*dh, j*dw) instead of (i, j), and the padded area is the
dilated kernel's extent; the runs stay contiguous. Groups: the column matrix holds every channel's
rows, group by group, and each group's filters are one product against their rows.
(Depthwise layers, one group per channel, run in kernels/depthwise.py instead.)
"""
import numpy as np
from numba import njit

# Images per chunk are picked so one chunk's column matrix stays near this many elements
# (1 MB of float32; a core has 512 KB of L2): measured on the vgg_small and lenet5 layers with
# two threads, 0.3-1.3 MB chunks ran 10-50% faster than 5-20 MB ones.
COLS_ELEMS = 1 << 18
# ...but with at least this many columns: OpenBLAS ran these products at 28-34 GFLOP/s with
# 288 columns and 46-50 with 864 (vgg_small's 64->64 layer has 288 columns per image).
MIN_COLUMNS = 512


@njit(cache=True)
def _layout(KH, KW, OH, OW, sh, sw):
    """(HPh, WPh): the size of each stride phase of the input area the output windows cover;
    WPh is also the row stride ld of the column layout."""
    HP, WP = (OH - 1) * sh + KH, (OW - 1) * sw + KW
    return -(-HP // sh), -(-WP // sw)


@njit(cache=True)
def _chunk(rows, images, columns_per_image):
    """Images per chunk: the column matrix near COLS_ELEMS, and at least MIN_COLUMNS wide."""
    fit = COLS_ELEMS // max(1, rows * columns_per_image)
    enough = -(-MIN_COLUMNS // max(1, columns_per_image))
    return max(1, min(images, max(fit, enough)))


# Copy loops index views from 0 so that Numba can drop its negative-index checks and vectorize.
# (No helper is ever passed a literal number: Numba would compile it once more for that literal.)
@njit(cache=True, fastmath=True)
def _zero(dst, count):
    for k in range(count):
        dst[k] = 0


@njit(cache=True, fastmath=True)
def _copy(dst, src, count):
    for k in range(count):
        dst[k] = src[k]


@njit(cache=True, fastmath=True)
def _add(dst, src, count):
    for k in range(count):
        dst[k] += src[k]


@njit(cache=True, fastmath=True)
def _phase_columns(pad, size, step, phase, count):
    """[lo, hi): the columns w of a phase whose input column w*step + phase - pad is inside [0, size)."""
    lo = min(max(0, -(-(pad - phase) // step)), count)
    return lo, max(lo, min(-(-(size + pad - phase) // step), count))


@njit(cache=True, fastmath=True)
def _pad_chunk(x, n0, pt, pl, kh, kw, sh, sw, xp):
    """xp[c, n, a*sw + b, h, w] = x[c, n0+n, h*sh + a - pt, w*sw + b - pl], zero where that is
    padding (every element written, the extra last row too). Phases no tap reads (a >= kh or
    b >= kw: a 1x1 stride-2 layer reads one of four) are left zero.

    All of xp is zeroed first, then each input row is dealt out to its phases: one pass over x,
    no zeroing per row (1.5-2x faster than writing each phase row whole, padding and all)."""
    C, _, H, W = x.shape
    m, HP1, WP = xp.shape[1], xp.shape[3], xp.shape[4]
    _zero(xp.reshape(-1), xp.size)
    for c in range(C):
        for n in range(m):
            src = x[c, n0 + n]
            for hs in range(H):
                a, h = (hs + pt) % sh, (hs + pt) // sh
                if a >= kh or h >= HP1 - 1:  # a row no window reads
                    continue
                for b in range(min(sw, kw)):
                    row, srow = xp[c, n, a * sw + b, h], src[hs]
                    w0, w1 = _phase_columns(pl, W, sw, b, WP)
                    for w in range(w0, w1):
                        row[w] = srow[w * sw + b - pl]


@njit(cache=True, fastmath=True)
def _unpad_add(dxp, n0, pt, pl, kh, kw, sh, sw, dx):
    """dx[c, n0+n, h*sh + a - pt, w*sw + b - pl] += dxp[c, n, a*sw + b, h, w]: the adjoint of _pad_chunk."""
    C, _, H, W = dx.shape
    m, HP1, WP = dxp.shape[1], dxp.shape[3], dxp.shape[4]
    for c in range(C):
        for n in range(m):
            dst = dx[c, n0 + n]
            for hs in range(H):
                a, h = (hs + pt) % sh, (hs + pt) // sh
                if a >= kh or h >= HP1 - 1:
                    continue
                for b in range(min(sw, kw)):
                    row, drow = dxp[c, n, a * sw + b, h], dst[hs]
                    w0, w1 = _phase_columns(pl, W, sw, b, WP)
                    for w in range(w0, w1):
                        drow[w * sw + b - pl] += row[w]


@njit(cache=True, fastmath=True)
def _im2col(xp, kh, kw, sh, sw, dh, dw, oh, cols):
    """cols[(c,i,j), (n*oh + p)*ld + q] = xp[c, n, (u%sh)*sw + v%sw, p + u//sh, q + v//sw] with
    (u, v) = (i*dh, j*dw), the tap's offset: one contiguous run per tap and image (the extra
    zero row keeps the last run inside)."""
    C, m, WP = xp.shape[0], xp.shape[1], xp.shape[4]
    for c in range(C):
        for i in range(kh):
            for j in range(kw):
                row = cols[(c * kh + i) * kw + j]
                u, v = i * dh, j * dw
                start = (u // sh) * WP + v // sw
                for n in range(m):
                    _copy(row[n * oh * WP:], xp[c, n, (u % sh) * sw + v % sw].reshape(-1)[start:], oh * WP)


@njit(cache=True, fastmath=True)
def _col2im_add(cols, kh, kw, sh, sw, dh, dw, oh, dxp):
    """The adjoint of _im2col: each tap's run added back into its phase. The discarded columns
    are added too: they are exactly zero (W.T times zero columns of g), so where they land does
    not matter."""
    C, m, WP = dxp.shape[0], dxp.shape[1], dxp.shape[4]
    for c in range(C):
        for i in range(kh):
            for j in range(kw):
                row = cols[(c * kh + i) * kw + j]
                u, v = i * dh, j * dw
                start = (u // sh) * WP + v // sw
                for n in range(m):
                    _add(dxp[c, n, (u % sh) * sw + v % sw].reshape(-1)[start:], row[n * oh * WP:], oh * WP)


@njit(cache=True, fastmath=True)
def _bias_relu_store(prod, b, residual, relu, n0, ld, out):
    """out[f, n0+n, p, q] = prod[f, (n*OH + p)*ld + q] + b[f] (+ residual[f, n0+n, p, q] unless
    it is empty), then max(0, .) if relu."""
    OH, OW = out.shape[2], out.shape[3]
    m = prod.shape[1] // (OH * ld)
    add = residual.size != 0
    for f in range(prod.shape[0]):
        bf = b[f]
        for n in range(m):
            for p in range(OH):
                src = prod[f, (n * OH + p) * ld:]
                dst = out[f, n0 + n, p]
                res = residual[f, n0 + n, p] if add else dst
                for q in range(OW):  # the loop-invariant branches are hoisted out of the loop
                    v = src[q] + bf
                    if add:
                        v += res[q]
                    dst[q] = max(v, 0) if relu else v


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
def _add_transposed(dst, src):
    """dst += src.T. The backward computes dw.T = cols @ g.T (R x F) rather than dw = g @ cols.T
    (F x R): OpenBLAS ran the first at 63-69 GFLOP/s and the second at 40-46 on one core for
    vgg_small's 32-filter layer (70-73 and 59-62 for the 64-filter ones)."""
    for f in range(dst.shape[0]):
        for r in range(dst.shape[1]):
            dst[f, r] += src[r, f]


@njit(cache=True, fastmath=True)
def _block(buf, index, rows, columns):
    """The index-th (rows, columns) matrix of a flat buffer of them: one group's rows."""
    return buf[index * rows * columns:(index + 1) * rows * columns].reshape(rows, columns)


@njit(cache=True, fastmath=True)
def _pointwise_forward(x, w, b, residual, out, groups, relu):
    """A 1x1, stride-1, unpadded conv: in CNHW, x is already the column matrix (C, N*H*W) and out
    the product's (F, N*H*W), so it is one product per group straight into out over the whole
    batch (no copies: 1x1 layers are most of a MobileNet's work), then the epilogue in place."""
    F, Cg = w.shape[0], w.shape[1]
    cols, group_filters = x.shape[1] * x.shape[2] * x.shape[3], F // groups
    wflat, xflat, oflat = w.reshape(-1), x.reshape(-1), out.reshape(-1)
    for k in range(groups):
        np.dot(_block(wflat, k, group_filters, Cg), _block(xflat, k, Cg, cols), _block(oflat, k, group_filters, cols))
    _bias_relu_store(out.reshape(F, cols), b, residual, relu, 0, out.shape[3], out)


@njit(cache=True, nogil=True, fastmath=True)
def conv2d_forward(x, w, b, residual, out, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w, groups, relu):
    """out = relu?(conv(x, w) + b + residual), the residual (a fused add's other input) unless it
    is empty. Taps are dil_h x dil_w apart; with groups > 1 each group of F/groups filters sees
    its C/groups channels (w is (F, C/groups, KH, KW)): one product per group."""
    F, Cg, KH, KW = w.shape
    C, N, OH, OW = x.shape[0], x.shape[1], out.shape[2], out.shape[3]
    in_place = residual.size != 0 and residual.ctypes.data == out.ctypes.data  # out += conv(x, w), as a transposed conv's backward asks
    if KH * KW * stride_h * stride_w == 1 and (OH, OW) == (x.shape[2], x.shape[3]) and not in_place:
        _pointwise_forward(x, w, b, residual, out, groups, relu)
        return
    EKH, EKW = (KH - 1) * dil_h + 1, (KW - 1) * dil_w + 1  # the extent of the dilated kernel
    HPh, ld = _layout(EKH, EKW, OH, OW, stride_h, stride_w)
    phases = stride_h * stride_w
    rows, group_rows, group_filters = C * KH * KW, Cg * KH * KW, F // groups
    wflat = w.reshape(-1)
    nb = _chunk(rows, N, OH * ld)
    xp_buf = np.empty(C * nb * phases * (HPh + 1) * ld, x.dtype)
    cols_buf = np.empty(rows * nb * OH * ld, x.dtype)
    prod_buf = np.empty(F * nb * OH * ld, x.dtype)
    for n0 in range(0, N, nb):
        m = min(nb, N - n0)
        xp = xp_buf[:C * m * phases * (HPh + 1) * ld].reshape(C, m, phases, HPh + 1, ld)
        cols = cols_buf[:rows * m * OH * ld].reshape(rows, m * OH * ld)
        prod = prod_buf[:F * m * OH * ld].reshape(F, m * OH * ld)
        _pad_chunk(x, n0, pad_top, pad_left, EKH, EKW, stride_h, stride_w, xp)
        _im2col(xp, KH, KW, stride_h, stride_w, dil_h, dil_w, OH, cols)
        L = m * OH * ld
        for k in range(groups):
            np.dot(_block(wflat, k, group_filters, group_rows), _block(cols_buf, k, group_rows, L),
                   _block(prod_buf, k, group_filters, L))
        _bias_relu_store(prod, b, residual, relu, n0, ld, out)


@njit(cache=True, fastmath=True)
def _pointwise_backward(x, w, out, dout, dx, dw, db, groups, relu, need_dx):
    """conv2d_backward of a 1x1, stride-1, unpadded conv on the column matrices themselves (see
    _pointwise_forward): g = the output gradient (F, N*H*W, masked where relu), then per group
    dw = (x g')' and dx += w' g over the whole batch, with no im2col and no col2im (dw and db
    overwritten, dx added into)."""
    F, Cg = w.shape[0], w.shape[1]
    L, group_filters = x.shape[1] * x.shape[2] * x.shape[3], F // groups
    g = np.empty((F, L), x.dtype)
    db[:] = 0
    _masked_grad(out, dout, relu, 0, out.shape[3], g, db)
    gflat, xflat, wflat, dwflat = g.reshape(-1), x.reshape(-1), w.reshape(-1), dw.reshape(-1)
    dwflat[:] = 0
    dw_part = np.empty((Cg, group_filters), x.dtype)  # one group's dw transposed: see _add_transposed
    for k in range(groups):
        np.dot(_block(xflat, k, Cg, L), _block(gflat, k, group_filters, L).T, dw_part)
        _add_transposed(_block(dwflat, k, group_filters, Cg), dw_part)
    if need_dx:
        part, dxflat = np.empty((Cg, L), x.dtype), dx.reshape(-1)
        for k in range(groups):
            np.dot(_block(wflat, k, group_filters, Cg).T, _block(gflat, k, group_filters, L), part)
            _add(dxflat[k * Cg * L:], part.reshape(-1), Cg * L)


@njit(cache=True, nogil=True, fastmath=True)
def conv2d_backward(x, w, out, dout, dx, dw, db, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w, groups,
                    relu, need_dx):
    """dw and db are overwritten; dx (when need_dx) is added into. Dilation and groups as in conv2d_forward."""
    F, Cg, KH, KW = w.shape
    C, N, OH, OW = x.shape[0], x.shape[1], out.shape[2], out.shape[3]
    if KH * KW * stride_h * stride_w == 1 and (OH, OW) == (x.shape[2], x.shape[3]):
        _pointwise_backward(x, w, out, dout, dx, dw, db, groups, relu, need_dx)
        return
    EKH, EKW = (KH - 1) * dil_h + 1, (KW - 1) * dil_w + 1
    HPh, ld = _layout(EKH, EKW, OH, OW, stride_h, stride_w)
    phases = stride_h * stride_w
    rows, group_rows, group_filters = C * KH * KW, Cg * KH * KW, F // groups
    wflat, dwflat = w.reshape(-1), dw.reshape(-1)
    nb = _chunk(rows, N, OH * ld)
    xp_buf = np.empty(C * nb * phases * (HPh + 1) * ld, x.dtype)
    cols_buf = np.empty(rows * nb * OH * ld, x.dtype)
    g_buf = np.empty(F * nb * OH * ld, x.dtype)
    dw_part = np.empty((group_rows, group_filters), x.dtype)  # one group's dw transposed: see _add_transposed
    dwflat[:] = 0
    db[:] = 0
    for n0 in range(0, N, nb):
        m = min(nb, N - n0)
        xp = xp_buf[:C * m * phases * (HPh + 1) * ld].reshape(C, m, phases, HPh + 1, ld)
        cols = cols_buf[:rows * m * OH * ld].reshape(rows, m * OH * ld)
        g = g_buf[:F * m * OH * ld].reshape(F, m * OH * ld)
        _masked_grad(out, dout, relu, n0, ld, g, db)
        _pad_chunk(x, n0, pad_top, pad_left, EKH, EKW, stride_h, stride_w, xp)
        _im2col(xp, KH, KW, stride_h, stride_w, dil_h, dil_w, OH, cols)
        L = m * OH * ld
        for k in range(groups):
            np.dot(_block(cols_buf, k, group_rows, L), _block(g_buf, k, group_filters, L).T, dw_part)
            _add_transposed(_block(dwflat, k, group_filters, group_rows), dw_part)
        if need_dx:  # cols and xp are used up: reuse them for the column and input gradients
            for k in range(groups):
                np.dot(_block(wflat, k, group_filters, group_rows).T, _block(g_buf, k, group_filters, L),
                       _block(cols_buf, k, group_rows, L))
            xp[:] = 0
            _col2im_add(cols, KH, KW, stride_h, stride_w, dil_h, dil_w, OH, xp)
            _unpad_add(xp, n0, pad_top, pad_left, EKH, EKW, stride_h, stride_w, dx)


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

# Tiles per chunk: 16 products of this many columns ran fastest (256-1024 were within 10%).
WINOGRAD_TILES = 512


@njit(cache=True, fastmath=True)
def _winograd_weights(w, u):
    """u[4i+j, c, f] = (G w[f, c] G')[i, j], filters innermost, as u is laid out."""
    F, C = w.shape[0], w.shape[1]
    gg = np.empty((4, 3), w.dtype)  # G g, one filter tap column at a time
    for c in range(C):
        for f in range(F):
            g = w[f, c]
            for j in range(3):
                gg[0, j] = g[0, j]
                gg[1, j] = 0.5 * (g[0, j] + g[1, j] + g[2, j])
                gg[2, j] = 0.5 * (g[0, j] - g[1, j] + g[2, j])
                gg[3, j] = g[2, j]
            for i in range(4):
                u[4 * i + 0, c, f] = gg[i, 0]
                u[4 * i + 1, c, f] = 0.5 * (gg[i, 0] + gg[i, 1] + gg[i, 2])
                u[4 * i + 2, c, f] = 0.5 * (gg[i, 0] - gg[i, 1] + gg[i, 2])
                u[4 * i + 3, c, f] = gg[i, 2]


@njit(cache=True, fastmath=True)
def _winograd_inputs(x, n0, m, pt, pl, th, tw, v):
    """v[4i+j, t, c] = (B' d B)[i, j] for the 4x4 tile d of tile t = (n*th + ty)*tw + tx of
    images n0 ... n0+m-1, read straight from x: rows and columns outside it are the padding.

    A row of tiles at a time: e = B' d for every channel over the whole width first, kept as
    e[i, q, c] (zero where the four rows are padding), then the column transform of each tile
    of the row, along the channels (contiguous in e and in v)."""
    C, _, H, W = x.shape
    WP = 2 * tw + 2
    q0, q1 = min(pl, WP), min(pl + W, WP)  # the columns of e that see x
    e = np.zeros((4, WP, C), x.dtype)
    zero = np.zeros(W, x.dtype)
    for n in range(m):
        for ty in range(th):
            h = 2 * ty - pt
            for c in range(C):
                r0 = x[c, n0 + n, h] if 0 <= h < H else zero
                r1 = x[c, n0 + n, h + 1] if 0 <= h + 1 < H else zero
                r2 = x[c, n0 + n, h + 2] if 0 <= h + 2 < H else zero
                r3 = x[c, n0 + n, h + 3] if 0 <= h + 3 < H else zero
                for q in range(q0, q1):  # e's other columns stay zero
                    d0, d1, d2, d3 = r0[q - pl], r1[q - pl], r2[q - pl], r3[q - pl]
                    e[0, q, c], e[1, q, c], e[2, q, c], e[3, q, c] = d0 - d2, d1 + d2, d2 - d1, d1 - d3
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


@njit(cache=True, nogil=True, fastmath=True)
def conv3x3_forward(x, w, b, residual, out, pad_top, pad_left, relu):
    """conv2d_forward for 3x3 filters at stride 1, by Winograd F(2x2, 3x3)."""
    F, C = w.shape[0], w.shape[1]
    N, OH, OW = x.shape[1], out.shape[2], out.shape[3]
    th, tw = (OH + 1) // 2, (OW + 1) // 2
    nb = max(1, min(N, WINOGRAD_TILES // (th * tw)))
    # One row more than needed in each (16, rows, X) buffer: the 16 planes then do not start at
    # the same offset modulo 4 KB. 16 or 32 KB apart, they fell into the same L1 sets, and the
    # transforms that read or write all 16 at once ran 1.2-5x slower (64 x 64 filters: 126 us).
    u = np.empty((16, C + 1, F), x.dtype)
    _winograd_weights(w, u)
    v = np.empty((16, nb * th * tw + 1, C), x.dtype)
    mm = np.empty((16, nb * th * tw + 1, F), x.dtype)
    for n0 in range(0, N, nb):
        m = min(nb, N - n0)
        tiles = m * th * tw
        _winograd_inputs(x, n0, m, pad_top, pad_left, th, tw, v)
        for k in range(16):  # tiles x C @ C x F: the shape OpenBLAS runs fastest (see above)
            np.dot(v[k, :tiles], u[k, :C], mm[k, :tiles])
        _winograd_outputs(mm, b, residual, relu, n0, m, th, tw, out)


# The backward of a 3x3 stride-1 layer, by Winograd too. The input gradient is a 3x3
# convolution of the output gradient g with the filters flipped and transposed (w'[c, f] =
# w[f, c] turned by 180 degrees), padded by 2 - pad: the forward's transforms and products as
# they are. The weight gradient is the adjoint of the forward's products: with V the input
# tiles as in the forward and dM = A dY A' the 2x2 blocks of g taken to 4x4, dU[k] = V[k]' @
# dM[k] (C x tiles @ tiles x F, summed over the chunks), and dw = G' dU G.


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


@njit(cache=True, nogil=True, fastmath=True)
def conv3x3_backward(x, w, out, dout, dx, dw, db, pad_top, pad_left, relu, need_dx):
    """conv2d_backward for 3x3 filters at stride 1 and padding at most 2, by Winograd F(2x2, 3x3):
    dw and db are overwritten; dx (when need_dx) is added into."""
    F, C = w.shape[0], w.shape[1]
    N, H, W = x.shape[1], x.shape[2], x.shape[3]
    OH, OW = out.shape[2], out.shape[3]
    th, tw = (OH + 1) // 2, (OW + 1) // 2  # tiles of g: the weight gradient
    xh, xw = (H + 1) // 2, (W + 1) // 2  # tiles of dx: the input gradient
    nb = max(1, min(N, WINOGRAD_TILES // max(th * tw, xh * xw)))
    flipped = np.empty((C, F, 3, 3), x.dtype)  # w', the filters of the input gradient
    for f in range(F):
        for c in range(C):
            for i in range(3):
                for j in range(3):
                    flipped[c, f, i, j] = w[f, c, 2 - i, 2 - j]
    u = np.empty((16, F + 1, C), x.dtype)  # + 1: see conv3x3_forward
    _winograd_weights(flipped, u)
    du = np.zeros((16, C + 1, F), x.dtype)
    du_part = np.empty((C, F), x.dtype)
    v = np.empty((16, nb * th * tw + 1, C), x.dtype)
    gt = np.empty((16, nb * th * tw + 1, F), x.dtype)
    vg = np.empty((16, nb * xh * xw + 1, F), x.dtype)
    mm = np.empty((16, nb * xh * xw + 1, C), x.dtype)
    masked = np.empty((F, nb, OH, OW) if relu else (0, 0, 0, 0), x.dtype)
    add_into, no_residual = np.empty(0, x.dtype), np.empty((0, 0, 0, 0), x.dtype)  # dx += the transform
    db[:] = 0
    for n0 in range(0, N, nb):
        m = min(nb, N - n0)
        g, g0 = dout, n0  # this chunk's output gradient is g[:, g0:g0+m]
        if relu:
            _relu_masked(out, dout, n0, m, masked)
            g, g0 = masked, 0
        tiles = m * th * tw
        _winograd_grads(g, g0, m, th, tw, gt, db)
        _winograd_inputs(x, n0, m, pad_top, pad_left, th, tw, v)
        for k in range(16):  # C x tiles @ tiles x F
            np.dot(v[k, :tiles].T, gt[k, :tiles], du_part)
            duk = du[k]
            for c in range(C):
                for f in range(F):
                    duk[c, f] += du_part[c, f]
        if need_dx:
            xtiles = m * xh * xw
            _winograd_inputs(g, g0, m, 2 - pad_top, 2 - pad_left, xh, xw, vg)
            for k in range(16):
                np.dot(vg[k, :xtiles], u[k, :F], mm[k, :xtiles])
            _winograd_outputs(mm, add_into, no_residual, relu, n0, m, xh, xw, dx)
    _winograd_weight_grads(du, dw)


# ---- transposed convolution (PyTorch's ConvTranspose2d; weights Cin x Cout x Kh x Kw) --------
#
# A transposed convolution is the input gradient of the convolution with the same weights,
# stride and padding that maps its output (Cout x OH x OW) back to its input (Cin x H x W). So
# its kernels are the ones above with roles swapped: the forward is conv2d_backward's
# input-gradient path (W.T @ x, col2im, unpad), the input gradient is conv2d_forward of the
# output gradient, and the weight gradient is conv2d_backward's, with the output gradient as the
# convolution's input and x as its output gradient. output_padding needs nothing of its own: the
# convolution reading an input one row larger drops that row, as `padding=valid` drops leftover
# rows. They live in this file because Numba's cache of a caller is not invalidated when a
# callee in another file changes (docs/design.md).


@njit(cache=True, fastmath=True)
def _wide_rows(x, n0, ld, g):
    """g[c, (n*H + h)*ld + w] = x[c, n0+n, h, w], zero in the ld - W columns past each row: the
    column layout above (_col2im_add adds those columns back, so they must be zero)."""
    H, W = x.shape[2], x.shape[3]
    m = g.shape[1] // (H * ld)
    for c in range(g.shape[0]):
        for n in range(m):
            for h in range(H):
                dst, src = g[c, (n * H + h) * ld:], x[c, n0 + n, h]
                for w in range(W):
                    dst[w] = src[w]
                _zero(dst[W:], ld - W)


@njit(cache=True, fastmath=True)
def _add_bias_relu(out, b, relu):
    """out[f] += b[f], then max(0, .) if relu."""
    for f in range(out.shape[0]):
        plane = out[f].reshape(-1)
        bf = b[f]
        for k in range(plane.size):
            v = plane[k] + bf
            plane[k] = max(v, 0) if relu else v


@njit(cache=True, nogil=True, fastmath=True)
def convtranspose_forward(x, w, b, out, stride_h, stride_w, pad_top, pad_left, relu):
    """out = relu?(conv_transpose(x, w) + b)."""
    Cin, N, H, W = x.shape
    Cout, KH, KW = w.shape[1], w.shape[2], w.shape[3]
    HPh, ld = _layout(KH, KW, H, W, stride_h, stride_w)
    phases = stride_h * stride_w
    rows = Cout * KH * KW
    wmat = w.reshape(Cin, rows)
    nb = _chunk(rows, N, H * ld)
    g_buf = np.empty(Cin * nb * H * ld, x.dtype)
    cols_buf = np.empty(rows * nb * H * ld, x.dtype)
    xp_buf = np.empty(Cout * nb * phases * (HPh + 1) * ld, x.dtype)
    _zero(out.reshape(-1), out.size)
    for n0 in range(0, N, nb):
        m = min(nb, N - n0)
        g = g_buf[:Cin * m * H * ld].reshape(Cin, m * H * ld)
        cols = cols_buf[:rows * m * H * ld].reshape(rows, m * H * ld)
        xp = xp_buf[:Cout * m * phases * (HPh + 1) * ld].reshape(Cout, m, phases, HPh + 1, ld)
        _wide_rows(x, n0, ld, g)
        np.dot(wmat.T, g, cols)
        _zero(xp.reshape(-1), xp.size)
        _col2im_add(cols, KH, KW, stride_h, stride_w, 1, 1, H, xp)
        _unpad_add(xp, n0, pad_top, pad_left, KH, KW, stride_h, stride_w, out)
    _add_bias_relu(out, b, relu)


@njit(cache=True, fastmath=True)
def _output_grad(out, dout, relu, db):
    """dout, masked where relu and out <= 0 (a copy then: dout may be shared); db = its sums."""
    g = np.empty_like(dout) if relu else dout
    for f in range(dout.shape[0]):
        src, o, dst = dout[f].reshape(-1), out[f].reshape(-1), g[f].reshape(-1)
        s = 0.0
        for k in range(src.size):
            v = src[k] if not relu or o[k] > 0 else 0
            dst[k] = v
            s += v
        db[f] = s
    return g


@njit(cache=True, nogil=True, fastmath=True)
def convtranspose_backward(x, w, out, dout, dx, dw, db, stride_h, stride_w, pad_top, pad_left, relu, need_dx):
    """dw and db are overwritten; dx (when need_dx) is added into."""
    g = _output_grad(out, dout, relu, db)
    unused_db = np.empty(x.shape[0], x.dtype)
    off = relu and not relu  # False, typed bool: a literal False would compile the callees once more
    conv2d_backward(g, w, x, x, dx, dw, unused_db, stride_h, stride_w, pad_top, pad_left, 1, 1, 1, off, off)
    if need_dx:  # dx += conv(g, w): the residual of conv2d_forward is dx itself
        conv2d_forward(g, w, np.zeros(x.shape[0], x.dtype), dx, dx, stride_h, stride_w, pad_top, pad_left, 1, 1, 1, off)
