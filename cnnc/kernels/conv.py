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
1 have Winograd kernels of their own (kernels/winograd.py).

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
# 1x1 layers' products take this many columns at a time (see _pointwise_forward): 256 was as fast
# as 1024 and 4096 or faster (1.25x on mobilenet_v1's first 1x1 layer, 32 -> 64 filters).
POINTWISE_COLUMNS = 256


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
def _phase_rows(H, pt, kh, sh, sw, HP1):
    """For each input row hs, the row of xp[c, n].reshape(phases * HP1, WP) that holds it in phase
    (a, 0), a = (hs + pt) % sh (phase (a, b) is b * HP1 rows further), or -1 for a row no window
    reads (a >= kh, or past the phase's last row)."""
    rows = np.empty(H, np.int64)
    for hs in range(H):
        a, h = (hs + pt) % sh, (hs + pt) // sh
        rows[hs] = -1 if a >= kh or h >= HP1 - 1 else a * sw * HP1 + h
    return rows


@njit(cache=True, fastmath=True)
def _phase_runs(pl, W, kw, sw, WP):
    """For each column phase b that a tap reads: its first column w0, how many columns see the
    input, and the input column of w0 (w0*sw + b - pl)."""
    phases = min(sw, kw)
    w0s, counts, starts = np.empty(phases, np.int64), np.empty(phases, np.int64), np.empty(phases, np.int64)
    for b in range(phases):
        w0, w1 = _phase_columns(pl, W, sw, b, WP)
        w0s[b], counts[b], starts[b] = w0, w1 - w0, w0 * sw + b - pl
    return w0s, counts, starts


@njit(cache=True, fastmath=True)
def _pad_chunk(x, n0, pt, pl, kh, kw, sh, sw, xp):
    """xp[c, n, a*sw + b, h, w] = x[c, n0+n, h*sh + a - pt, w*sw + b - pl], zero where that is
    padding (every element written, the extra last row too). Phases no tap reads (a >= kh or
    b >= kw: a 1x1 stride-2 layer reads one of four) are left zero.

    All of xp is zeroed first, then each input row is dealt out to its phases: one pass over x,
    no zeroing per row (1.5-2x faster than writing each phase row whole, padding and all). Where
    each row and column goes is worked out once (_phase_rows, _phase_runs), not per row: rows of
    16 (resnet20's stride-2 layers) copied 1.5x faster."""
    C, _, H, W = x.shape
    m, HP1, WP = xp.shape[1], xp.shape[3], xp.shape[4]
    _zero(xp.reshape(-1), xp.size)
    rows = _phase_rows(H, pt, kh, sh, sw, HP1)
    w0s, counts, starts = _phase_runs(pl, W, kw, sw, WP)
    for c in range(C):
        for n in range(m):
            src, dst = x[c, n0 + n], xp[c, n].reshape(-1, WP)
            for hs in range(H):
                if rows[hs] < 0:
                    continue
                for b in range(w0s.size):
                    row, srow = dst[rows[hs] + b * HP1, w0s[b]:], src[hs, starts[b]:]
                    for k in range(counts[b]):
                        row[k] = srow[k * sw]


@njit(cache=True, fastmath=True)
def _unpad_add(dxp, n0, pt, pl, kh, kw, sh, sw, dx):
    """dx[c, n0+n, h*sh + a - pt, w*sw + b - pl] += dxp[c, n, a*sw + b, h, w]: the adjoint of _pad_chunk."""
    C, _, H, W = dx.shape
    m, HP1, WP = dxp.shape[1], dxp.shape[3], dxp.shape[4]
    rows = _phase_rows(H, pt, kh, sh, sw, HP1)
    w0s, counts, starts = _phase_runs(pl, W, kw, sw, WP)
    for c in range(C):
        for n in range(m):
            src, dst = dxp[c, n].reshape(-1, WP), dx[c, n0 + n]
            for hs in range(H):
                if rows[hs] < 0:
                    continue
                for b in range(w0s.size):
                    row, drow = src[rows[hs] + b * HP1, w0s[b]:], dst[hs, starts[b]:]
                    for k in range(counts[b]):
                        drow[k * sw] += row[k]


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


@njit(cache=True, fastmath=True, inline="always")
def _factor(scale, f):
    """Filter f's scale: scale[f], or 1 when there is none (scale empty)."""
    return scale[f] if scale.size != 0 else scale.dtype.type(1)


@njit(cache=True, fastmath=True, inline="always")
def _epilogue(src, sf, bf, res, add, relu, dst, count):
    """dst[q] = src[q] * sf + bf (+ res[q] when add), then max(0, .) if relu, for q < count: the
    convolutions' epilogue along a row (dst may be src). sf is a folded batchnorm's scale, else
    1, which leaves src[q] + bf exactly as it was. The loop-invariant branches are hoisted out
    of the loop."""
    for q in range(count):
        v = src[q] * sf + bf
        if add:
            v += res[q]
        dst[q] = max(v, 0) if relu else v


@njit(cache=True, fastmath=True)
def _bias_relu_store(prod, b, scale, residual, relu, n0, ld, out):
    """out[f, n0+n, p, q] = prod[f, (n*OH + p)*ld + q] * scale[f] (unless scale is empty) + b[f]
    (+ residual[f, n0+n, p, q] unless it is empty), then max(0, .) if relu."""
    OH, OW = out.shape[2], out.shape[3]
    m = prod.shape[1] // (OH * ld)
    add = residual.size != 0
    for f in range(prod.shape[0]):
        bf, sf = b[f], _factor(scale, f)
        for n in range(m):
            for p in range(OH):
                dst = out[f, n0 + n, p]
                res = residual[f, n0 + n, p] if add else dst
                _epilogue(prod[f, (n * OH + p) * ld:], sf, bf, res, add, relu, dst, OW)


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
def _columns_of(src, row0, rows, l0, n, dst):
    """dst (rows, n), contiguous = src[row0:row0+rows, l0:l0+n]."""
    for r in range(rows):
        a, d = src[row0 + r, l0:], dst[r]
        for k in range(n):
            d[k] = a[k]


@njit(cache=True, fastmath=True)
def _pointwise_forward(x, w, b, scale, residual, out, groups, relu):
    """A 1x1, stride-1, unpadded conv: in CNHW, x is already the column matrix (C, N*H*W) and out
    the product's (F, N*H*W). Taken POINTWISE_COLUMNS columns at a time: the columns are copied
    into a small contiguous block, multiplied, and the product goes into out with bias, residual
    and ReLU while it is still in L2. One product over the whole batch, then the epilogue over
    out, ran 1.6-2.3x slower with both cores busy (mobilenet_v1's layers, 128 images a lane): the
    product's operands and output streamed through L3 and memory, and the epilogue again."""
    F, Cg = w.shape[0], w.shape[1]
    C, L, group_filters = x.shape[0], x.shape[1] * x.shape[2] * x.shape[3], F // groups
    xf, of, wflat = x.reshape(C, L), out.reshape(F, L), w.reshape(-1)
    add = residual.size != 0
    rf = residual.reshape(F, L) if add else of
    x_buf = np.empty(Cg * POINTWISE_COLUMNS, x.dtype)
    prod_buf = np.empty(group_filters * POINTWISE_COLUMNS, x.dtype)
    for k in range(groups):
        wk = _block(wflat, k, group_filters, Cg)
        for l0 in range(0, L, POINTWISE_COLUMNS):
            n = min(POINTWISE_COLUMNS, L - l0)
            xc, prod = x_buf[:Cg * n].reshape(Cg, n), prod_buf[:group_filters * n].reshape(group_filters, n)
            _columns_of(xf, k * Cg, Cg, l0, n, xc)
            np.dot(wk, xc, prod)
            for f in range(group_filters):
                fo = k * group_filters + f
                _epilogue(prod[f], _factor(scale, fo), b[fo], rf[fo, l0:], add, relu, of[fo, l0:], n)


@njit(cache=True, fastmath=True)
def _subsampled(x, sh, sw, OH, OW):
    """x[:, :, ::sh, ::sw] as a contiguous array: a 1x1 unpadded layer's input at stride (sh, sw),
    which the pointwise path then takes as its column matrix."""
    C, N = x.shape[0], x.shape[1]
    xs = np.empty((C, N, OH, OW), x.dtype)
    for c in range(C):
        for n in range(N):
            for p in range(OH):
                src, dst = x[c, n, p * sh], xs[c, n, p]
                for q in range(OW):
                    dst[q] = src[q * sw]
    return xs


@njit(cache=True, fastmath=True)
def _subsampled_add(dxs, sh, sw, dx):
    """dx[:, :, ::sh, ::sw] += dxs: the adjoint of _subsampled."""
    C, N, OH, OW = dxs.shape
    for c in range(C):
        for n in range(N):
            for p in range(OH):
                src, dst = dxs[c, n, p], dx[c, n, p * sh]
                for q in range(OW):
                    dst[q * sw] += src[q]


@njit(cache=True)
def _pointwise(KH, KW, pad_top, pad_left, H, W, OH, OW, sh, sw):
    """A 1x1 layer with no padding before its input (after it, 1x1 windows never reach it): the
    pointwise path, on the input itself at stride 1 and on a subsampled copy of it at a larger
    stride (ResNet shortcuts: 16 -> 32 filters at stride 2, forward and backward 0.27 / 0.60 ms
    through im2col, which pads all four phases to read one, 0.13 / 0.35 this way)."""
    return (KH * KW == 1 and pad_top == 0 and pad_left == 0
            and OH == (H - 1) // sh + 1 and OW == (W - 1) // sw + 1)


@njit(cache=True, nogil=True, fastmath=True)
def conv2d_forward(x, w, b, scale, residual, out, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w, groups,
                   relu):
    """out = relu?(conv(x, w) * scale + b + residual), the scale (a folded batchnorm's, one per
    filter: norm.batchnorm_scale_shift) and the residual (a fused add's other input) unless
    empty. Taps are dil_h x dil_w apart; with groups > 1 each group of F/groups filters sees
    its C/groups channels (w is (F, C/groups, KH, KW)): one product per group."""
    F, Cg, KH, KW = w.shape
    C, N, OH, OW = x.shape[0], x.shape[1], out.shape[2], out.shape[3]
    in_place = residual.size != 0 and residual.ctypes.data == out.ctypes.data  # out += conv(x, w), as a transposed conv's backward asks
    if _pointwise(KH, KW, pad_top, pad_left, x.shape[2], x.shape[3], OH, OW, stride_h, stride_w) and not in_place:
        columns = x if stride_h * stride_w == 1 else _subsampled(x, stride_h, stride_w, OH, OW)
        _pointwise_forward(columns, w, b, scale, residual, out, groups, relu)
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
        _bias_relu_store(prod, b, scale, residual, relu, n0, ld, out)


@njit(cache=True, fastmath=True)
def _pointwise_backward(x, w, out, dout, dx, dw, db, groups, relu, need_dx):
    """conv2d_backward of a 1x1, stride-1, unpadded conv on the column matrices themselves (see
    _pointwise_forward): g = the output gradient (F, N*H*W; a masked copy where relu), then per group
    dw = g x' and dx += w' g over the whole batch, with no im2col and no col2im (dw and db
    overwritten, dx added into). (dx in blocks of columns, as the forward's product, ran no faster
    in mobilenet_v1's training step.)"""
    F, Cg = w.shape[0], w.shape[1]
    L, group_filters = x.shape[1] * x.shape[2] * x.shape[3], F // groups
    db[:] = 0
    if relu:
        g = np.empty((F, L), x.dtype)
        _masked_grad(out, dout, relu, 0, out.shape[3], g, db)
    else:  # the output gradient as it is: no copy (dout is only read)
        g = dout.reshape(F, L)
        for f in range(F):
            row, total = g[f], 0.0
            for k in range(L):
                total += row[k]
            db[f] = total
    gflat, xflat, wflat, dwflat = g.reshape(-1), x.reshape(-1), w.reshape(-1), dw.reshape(-1)
    for k in range(groups):  # dw = g x' straight into dw: as fast as im2col's x g' + a transposed add,
        # or far faster (1024 -> 1024 filters over 128 columns: 1.2 ms against 5.0)
        np.dot(_block(gflat, k, group_filters, L), _block(xflat, k, Cg, L).T, _block(dwflat, k, group_filters, Cg))
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
    if _pointwise(KH, KW, pad_top, pad_left, x.shape[2], x.shape[3], OH, OW, stride_h, stride_w):
        if stride_h * stride_w == 1:
            _pointwise_backward(x, w, out, dout, dx, dw, db, groups, relu, need_dx)
            return
        xs = _subsampled(x, stride_h, stride_w, OH, OW)
        dxs = np.zeros(xs.shape if need_dx else (0, 0, 0, 0), x.dtype)
        _pointwise_backward(xs, w, out, dout, dxs, dw, db, groups, relu, need_dx)
        if need_dx:
            _subsampled_add(dxs, stride_h, stride_w, dx)
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
        _epilogue(plane, plane.dtype.type(1), b[f], plane, False, relu, plane, plane.size)


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
        no_scale = np.empty(0, x.dtype)
        conv2d_forward(g, w, np.zeros(x.shape[0], x.dtype), no_scale, dx, dx, stride_h, stride_w, pad_top, pad_left,
                       1, 1, 1, off)
