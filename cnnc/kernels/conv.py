"""2-d convolution kernels (CNHW activations, OIHW weights): forward with fused bias+ReLU, and backward."""
import numpy as np
from numba import njit

# Batch chunk size is picked so one chunk's column matrix stays about this many elements
# (4 MB of float32): big enough for an efficient BLAS product, small enough for the caches.
COLS_ELEMS = 1 << 20


@njit(cache=True)
def _first_valid(offset, stride):
    """Smallest q >= 0 with q*stride >= offset."""
    return 0 if offset <= 0 else (offset + stride - 1) // stride


@njit(cache=True)
def _valid_range(k, pad, stride, size, n_out):
    """Output positions q in [lo, hi) whose input index q*stride + k - pad lies inside [0, size)."""
    lo = _first_valid(pad - k, stride)
    last = size - 1 + pad - k
    hi = min(n_out, last // stride + 1) if last >= 0 else 0
    return lo, max(lo, hi)


@njit(cache=True)
def batch_chunk(rows, n, per_image):
    """Images per chunk so that the (rows, chunk*per_image) column matrix stays near COLS_ELEMS."""
    return max(1, min(n, COLS_ELEMS // max(1, rows * per_image)))


@njit(cache=True, fastmath=True)
def _im2col(x, n0, n1, kh, kw, sh, sw, pt, pl, oh, ow, cols):
    """cols[(c,i,j), (n-n0,p,q)] = x[c, n, p*sh+i-pt, q*sw+j-pl], zero where that is padding."""
    C, _, H, W = x.shape
    for c in range(C):
        for i in range(kh):
            p0, p1 = _valid_range(i, pt, sh, H, oh)
            for j in range(kw):
                q0, q1 = _valid_range(j, pl, sw, W, ow)
                row = cols[(c * kh + i) * kw + j]
                for n in range(n0, n1):
                    for p in range(oh):
                        dst = row[((n - n0) * oh + p) * ow:((n - n0) * oh + p + 1) * ow]
                        if p < p0 or p >= p1:
                            dst[:] = 0
                            continue
                        src = x[c, n, p * sh + i - pt]
                        dst[:q0] = 0
                        if sw == 1:  # a plain block copy, which LLVM turns into memcpy
                            dst[q0:q1] = src[q0 + j - pl:q1 + j - pl]
                        else:
                            for q in range(q0, q1):
                                dst[q] = src[q * sw + j - pl]
                        dst[q1:] = 0


@njit(cache=True, fastmath=True)
def _col2im_add(cols, n0, n1, kh, kw, sh, sw, pt, pl, oh, ow, dx):
    """The adjoint of _im2col: dx[c, n, p*sh+i-pt, q*sw+j-pl] += cols[(c,i,j), (n-n0,p,q)]."""
    C, _, H, W = dx.shape
    for c in range(C):
        for i in range(kh):
            p0, p1 = _valid_range(i, pt, sh, H, oh)
            for j in range(kw):
                q0, q1 = _valid_range(j, pl, sw, W, ow)
                row = cols[(c * kh + i) * kw + j]
                for n in range(n0, n1):
                    for p in range(p0, p1):
                        src = row[((n - n0) * oh + p) * ow:((n - n0) * oh + p + 1) * ow]
                        dst = dx[c, n, p * sh + i - pt]
                        if sw == 1:
                            dst[q0 + j - pl:q1 + j - pl] += src[q0:q1]
                        else:
                            for q in range(q0, q1):
                                dst[q * sw + j - pl] += src[q]


@njit(cache=True, fastmath=True)
def _bias_relu_store(prod, b, relu, dst):
    """dst = prod + b[:, None], then max(0, .) if relu; dst may alias prod."""
    for f in range(prod.shape[0]):
        bf = b[f]
        src = prod[f]
        d = dst[f]
        if relu:
            for k in range(src.shape[0]):
                d[k] = max(src[k] + bf, 0)
        else:
            for k in range(src.shape[0]):
                d[k] = src[k] + bf


@njit(cache=True, fastmath=True)
def conv2d_forward(x, w, b, out, stride_h, stride_w, pad_top, pad_left, relu):
    F, C, KH, KW = w.shape
    nb = batch_chunk(C * KH * KW, x.shape[1], out.shape[2] * out.shape[3])
    conv2d_forward_chunked(x, w, b, out, stride_h, stride_w, pad_top, pad_left, relu, nb)


@njit(cache=True, fastmath=True)
def conv2d_forward_chunked(x, w, b, out, stride_h, stride_w, pad_top, pad_left, relu, nb):
    """conv2d_forward with nb images per chunk (exposed so tests and benchmarks can pick nb)."""
    F, C, KH, KW = w.shape
    N = x.shape[1]
    OH, OW = out.shape[2], out.shape[3]
    rows, per_image = C * KH * KW, OH * OW
    wmat = w.reshape(F, rows)
    out2 = out.reshape(F, N * per_image)
    cols_buf = np.empty(rows * nb * per_image, x.dtype)
    prod_buf = np.empty(F * nb * per_image, x.dtype) if nb < N else cols_buf[:0]
    for n0 in range(0, N, nb):
        n1 = min(N, n0 + nb)
        m = (n1 - n0) * per_image
        cols = cols_buf[:rows * m].reshape(rows, m)
        _im2col(x, n0, n1, KH, KW, stride_h, stride_w, pad_top, pad_left, OH, OW, cols)
        if nb == N:  # one chunk: the product lands in out itself
            np.dot(wmat, cols, out2)
            _bias_relu_store(out2, b, relu, out2)
        else:  # out's chunk columns are strided: product into scratch, epilogue copies
            prod = prod_buf[:F * m].reshape(F, m)
            np.dot(wmat, cols, prod)
            _bias_relu_store(prod, b, relu, out2[:, n0 * per_image:n1 * per_image])


@njit(cache=True, fastmath=True)
def _masked_grad(out, dout, relu, g, db):
    """g = dout masked by out > 0 when relu (a copy: dout may be shared); db += row sums of g."""
    for f in range(g.shape[0]):
        s = 0.0
        gf, df, of = g[f], dout[f], out[f]
        for k in range(gf.shape[0]):
            v = df[k]
            if relu and of[k] <= 0:
                v = 0
            gf[k] = v
            s += v
        db[f] += s


@njit(cache=True, fastmath=True)
def conv2d_backward(x, w, out, dout, dx, dw, db, stride_h, stride_w, pad_top, pad_left, relu, need_dx):
    F, C, KH, KW = w.shape
    nb = batch_chunk(C * KH * KW, x.shape[1], out.shape[2] * out.shape[3])
    conv2d_backward_chunked(x, w, out, dout, dx, dw, db, stride_h, stride_w, pad_top, pad_left,
                            relu, need_dx, nb)


@njit(cache=True, fastmath=True)
def conv2d_backward_chunked(x, w, out, dout, dx, dw, db, stride_h, stride_w, pad_top, pad_left,
                            relu, need_dx, nb):
    """conv2d_backward with nb images per chunk."""
    F, C, KH, KW = w.shape
    N = x.shape[1]
    OH, OW = out.shape[2], out.shape[3]
    rows, per_image = C * KH * KW, OH * OW
    wmat = w.reshape(F, rows)
    out2 = out.reshape(F, N * per_image)
    dout2 = dout.reshape(F, N * per_image)
    dw2 = dw.reshape(F, rows)
    dw_part = np.empty((F, rows), x.dtype)
    cols_buf = np.empty(rows * nb * per_image, x.dtype)
    g_buf = np.empty(F * nb * per_image, x.dtype)
    db[:] = 0
    for n0 in range(0, N, nb):
        n1 = min(N, n0 + nb)
        m = (n1 - n0) * per_image
        span = slice(n0 * per_image, n1 * per_image)
        g = g_buf[:F * m].reshape(F, m)
        _masked_grad(out2[:, span], dout2[:, span], relu, g, db)
        cols = cols_buf[:rows * m].reshape(rows, m)
        _im2col(x, n0, n1, KH, KW, stride_h, stride_w, pad_top, pad_left, OH, OW, cols)
        if n0 == 0:
            np.dot(g, cols.T, dw2)
        else:
            np.dot(g, cols.T, dw_part)
            dw2 += dw_part
        if need_dx:  # the columns are used up: reuse their buffer for the column gradient
            np.dot(wmat.T, g, cols)
            _col2im_add(cols, n0, n1, KH, KW, stride_h, stride_w, pad_top, pad_left, OH, OW, dx)
