"""Transposed 2-d convolution kernels (CNHW activations, weights Cin x Cout x Kh x Kw as PyTorch's
ConvTranspose2d), forward with bias and ReLU fused, and backward.

A transposed convolution is the input gradient of the convolution with the same weights, stride
and padding that maps its output (Cout x OH x OW) back to its input (Cin x H x W). So the kernels
are conv.py's, roles swapped: the forward is conv2d_backward's input-gradient path (W.T @ x,
col2im, unpad), the input gradient is conv2d_forward of the output gradient, and the weight
gradient is conv2d_backward's weight gradient with the output gradient as the convolution's
input and x as its output gradient. output_padding needs nothing of its own: the convolution
reading an input one row larger drops that row, as `padding=valid` drops leftover rows.
"""
import numpy as np
from numba import njit

from .conv import _chunk, _col2im_add, _layout, _unpad_add, _zero, conv2d_backward, conv2d_forward


@njit(cache=True, fastmath=True)
def _wide_rows(x, n0, ld, g):
    """g[c, (n*H + h)*ld + w] = x[c, n0+n, h, w], zero in the ld - W columns past each row: the
    column layout of conv.py (its col2im adds those columns back, so they must be zero)."""
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
        _col2im_add(cols, KH, KW, stride_h, stride_w, H, xp)
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
    conv2d_backward(g, w, x, x, dx, dw, unused_db, stride_h, stride_w, pad_top, pad_left, False, False)
    if need_dx:  # dx += conv(g, w): the residual of conv2d_forward is dx itself
        conv2d_forward(g, w, np.zeros(x.shape[0], x.dtype), dx, dx, stride_h, stride_w, pad_top, pad_left, False)
