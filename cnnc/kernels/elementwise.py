"""Elementwise kernels (relu, sigmoid, tanh, dropout, add) over C-contiguous arrays of any ndim."""
import numpy as np
from numba import njit

# fastmath without nnan/ninf: inf and NaN keep their meaning (relu passes NaN through).
FAST = {"nsz", "arcp", "contract", "reassoc"}


@njit(cache=True, nogil=True, fastmath=FAST)
def relu_forward(x, out):
    """out = max(x, 0); out may be x (in place)."""
    xf, of = x.reshape(-1), out.reshape(-1)
    zero = xf.dtype.type(0)
    for i in range(xf.size):
        v = xf[i]
        of[i] = zero if v < zero else v


@njit(cache=True, nogil=True, fastmath=FAST)
def relu_backward(out, dout, dx):
    """dx += dout where out > 0."""
    of, gf, dxf = out.reshape(-1), dout.reshape(-1), dx.reshape(-1)
    zero = of.dtype.type(0)
    for i in range(of.size):
        dxf[i] += gf[i] if of[i] > zero else zero  # a select, not a branch: it vectorizes


@njit(cache=True, nogil=True, fastmath=FAST)
def sigmoid_forward(x, out):
    """out = 1 / (1 + exp(-x)), computed from exp(-|x|) so nothing overflows; out may be x."""
    xf, of = x.reshape(-1), out.reshape(-1)
    one = xf.dtype.type(1)
    for i in range(xf.size):
        v = xf[i]
        e = np.exp(-abs(v))
        r = one / (one + e)
        of[i] = r if v >= 0 else e * r


@njit(cache=True, nogil=True, fastmath=FAST)
def sigmoid_backward(out, dout, dx):
    """dx += dout * out * (1 - out)."""
    of, gf, dxf = out.reshape(-1), dout.reshape(-1), dx.reshape(-1)
    for i in range(of.size):
        y = of[i]
        dxf[i] += gf[i] * y * (1 - y)


@njit(cache=True, nogil=True, fastmath=FAST)
def tanh_forward(x, out):
    """out = tanh(x); out may be x."""
    xf, of = x.reshape(-1), out.reshape(-1)
    for i in range(xf.size):
        of[i] = np.tanh(xf[i])


@njit(cache=True, nogil=True, fastmath=FAST)
def tanh_backward(out, dout, dx):
    """dx += dout * (1 - out**2)."""
    of, gf, dxf = out.reshape(-1), dout.reshape(-1), dx.reshape(-1)
    for i in range(of.size):
        y = of[i]
        dxf[i] += gf[i] * (1 - y * y)


_M32 = np.uint64(0xFFFFFFFF)


@njit(cache=True, nogil=True)
def _hash32(x):
    """A 32-bit integer hash (Wellons' lowbias32) of x < 2**32, held in a uint64. 32-bit
    products keep the loop vectorizable on AVX2, which lacks a 64-bit multiply."""
    x = x ^ (x >> np.uint64(16))
    x = (x * np.uint64(0x7FEB352D)) & _M32
    x = x ^ (x >> np.uint64(15))
    x = (x * np.uint64(0x846CA68B)) & _M32
    return x ^ (x >> np.uint64(16))


@njit(cache=True, nogil=True, fastmath=FAST)
def dropout_forward(x, out, mask, rate, seed, start):
    """Inverted dropout: mask = 1/(1-rate) with probability 1-rate else 0; out = x * mask.

    x, out and mask are (C, n, P): a CNHW activation seen as C x n x H*W, or an n x D one as
    1 x n x D. Element (c, i, p) keeps iff 24 bits of hash((c*P + p) * golden ^ hash(image key))
    >= rate * 2**24, where the image key mixes the seed with the image's index in the whole step,
    `start + i`: an image's mask does not depend on how the step's batch is cut into slices,
    lanes or processes. Deterministic for a seed; pass a new seed every training step.
    """
    channels, n, plane = x.shape
    scale = mask.dtype.type(1.0 / (1.0 - rate)) if rate < 1.0 else mask.dtype.type(0)
    zero = mask.dtype.type(0)
    threshold = np.uint64(min(max(rate, 0.0), 1.0) * 16777216.0)
    base = _hash32(np.uint64(seed) & _M32)
    for i in range(n):
        image = _hash32(((np.uint64(start + i) * np.uint64(0x85EBCA6B)) ^ base) & _M32)
        for c in range(channels):
            offset = c * plane
            for p in range(plane):
                h = _hash32(((np.uint64(offset + p) * np.uint64(0x9E3779B9)) ^ image) & _M32)
                m = scale if (h >> np.uint64(8)) >= threshold else zero
                mask[c, i, p] = m
                out[c, i, p] = x[c, i, p] * m


@njit(cache=True, nogil=True, fastmath=FAST)
def dropout_backward(mask, dout, dx):
    """dx += dout * mask."""
    mf, gf, dxf = mask.reshape(-1), dout.reshape(-1), dx.reshape(-1)
    for i in range(mf.size):
        dxf[i] += gf[i] * mf[i]


@njit(cache=True, nogil=True, fastmath=FAST)
def add_into(dst, src):
    """dst += src (same shape): add's forward after a copy, and each of add's input gradients."""
    df, sf = dst.reshape(-1), src.reshape(-1)
    for i in range(df.size):
        df[i] += sf[i]


@njit(cache=True, nogil=True, fastmath=FAST)
def add_forward(a, b, out):
    """out = a + b (same shape), in one pass."""
    af, bf, of = a.reshape(-1), b.reshape(-1), out.reshape(-1)
    for i in range(of.size):
        of[i] = af[i] + bf[i]
