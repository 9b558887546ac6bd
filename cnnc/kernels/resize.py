"""Upsampling kernels (CNHW activations) by integer factors: nearest and bilinear, forward and backward.

Bilinear is PyTorch's `interpolate(mode='bilinear', align_corners=False)` (ONNX Resize, linear,
half_pixel): output row p reads input rows i0 and i1 at weights 1 - t and t, from the source
coordinate (p + 0.5) / factor - 0.5 clamped at 0 (see `_linear_taps`).
"""
import numpy as np
from numba import njit


@njit(cache=True, nogil=True, fastmath=True)
def upsample_nearest_forward(x, out, fh, fw):
    """out[c, n, p, q] = x[c, n, p // fh, q // fw]."""
    C, N, H, W = x.shape
    for c in range(C):
        for n in range(N):
            for h in range(H):
                src = x[c, n, h]
                for a in range(fh):
                    dst = out[c, n, h * fh + a]
                    for w in range(W):
                        v = src[w]
                        for b in range(fw):
                            dst[w * fw + b] = v


@njit(cache=True, nogil=True, fastmath=True)
def upsample_nearest_backward(dout, dx, fh, fw):
    """dx[c, n, h, w] += the sum of dout over the fh x fw block that copied it."""
    C, N, H, W = dx.shape
    for c in range(C):
        for n in range(N):
            for h in range(H):
                dst = dx[c, n, h]
                for a in range(fh):
                    src = dout[c, n, h * fh + a]
                    for w in range(W):
                        s = 0.0
                        for b in range(fw):
                            s += src[w * fw + b]
                        dst[w] += s


@njit(cache=True, nogil=True)
def _linear_taps(size, factor):
    """Per output index on one axis: the two input indices it reads and the weight of the second.
    PyTorch's align_corners=False source index, max((p + 0.5) / factor - 0.5, 0), computed as it
    does in float32 with the scale 1 / factor."""
    n_out = size * factor
    lo = np.empty(n_out, np.int64)
    hi = np.empty(n_out, np.int64)
    t = np.empty(n_out, np.float32)
    scale = np.float32(1.0) / np.float32(factor)
    for p in range(n_out):
        src = max(scale * (np.float32(p) + np.float32(0.5)) - np.float32(0.5), np.float32(0.0))
        i0 = min(int(src), size - 1)
        lo[p], hi[p] = i0, min(i0 + 1, size - 1)
        t[p] = src - np.float32(i0)
    return lo, hi, t


@njit(cache=True, nogil=True, fastmath=True)
def upsample_bilinear_forward(x, out, fh, fw):
    C, N, H, W = x.shape
    OH, OW = out.shape[2], out.shape[3]
    h0, h1, th = _linear_taps(H, fh)
    w0, w1, tw = _linear_taps(W, fw)
    for c in range(C):
        for n in range(N):
            plane = x[c, n]
            for p in range(OH):
                top, bottom, dst = plane[h0[p]], plane[h1[p]], out[c, n, p]
                b = th[p]
                for q in range(OW):
                    a = tw[q]
                    upper = (1 - a) * top[w0[q]] + a * top[w1[q]]
                    lower = (1 - a) * bottom[w0[q]] + a * bottom[w1[q]]
                    dst[q] = (1 - b) * upper + b * lower


@njit(cache=True, nogil=True, fastmath=True)
def upsample_bilinear_backward(dout, dx, fh, fw):
    """dx += the adjoint of the forward: each output's gradient shared out to its four inputs."""
    C, N, H, W = dx.shape
    OH, OW = dout.shape[2], dout.shape[3]
    h0, h1, th = _linear_taps(H, fh)
    w0, w1, tw = _linear_taps(W, fw)
    for c in range(C):
        for n in range(N):
            plane = dx[c, n]
            for p in range(OH):
                top, bottom, src = plane[h0[p]], plane[h1[p]], dout[c, n, p]
                b = th[p]
                for q in range(OW):
                    a, g = tw[q], src[q]
                    upper, lower = (1 - b) * g, b * g
                    top[w0[q]] += (1 - a) * upper
                    top[w1[q]] += a * upper
                    bottom[w0[q]] += (1 - a) * lower
                    bottom[w1[q]] += a * lower
