"""cnnc.kernels.pool against PyTorch: max, average (real elements only) and global average pooling."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from checks import cnhw, nchw, numeric_gradient, pads_1d, rel_err

from cnnc.shapes import ceil_windows
from cnnc.kernels.pool import (avgpool_backward, avgpool_forward, globalavgpool_backward,
                               globalavgpool_forward, maxpool_backward, maxpool_forward)

RTOL = 1e-4


class Pool:
    """One random pooling problem: geometry, kernel arguments and the padded torch input."""

    def __init__(self, H, W, kh, kw, stride, mode_h, mode_w, C=3, N=2, seed=0):
        rng = np.random.default_rng(seed)
        self.k, self.s = (kh, kw), stride
        self.pt, self.OH = pads_1d(mode_h, H, kh, stride[0])
        self.pl, self.OW = pads_1d(mode_w, W, kw, stride[1])
        self.x = rng.standard_normal((C, N, H, W)).astype(np.float32)
        self.dout = rng.standard_normal((C, N, self.OH, self.OW)).astype(np.float32)
        self.prefill = rng.standard_normal(self.x.shape).astype(np.float32)
        self.pads = (self.pl, max((self.OW - 1) * stride[1] + kw - W - self.pl, 0),
                     self.pt, max((self.OH - 1) * stride[0] + kh - H - self.pt, 0))
        self.args = (kh, kw, stride[0], stride[1], self.pt, self.pl)
        self.avg_args = self.args + (self.pads[3], self.pads[1], False)  # + bottom, right, count_pad

    def out(self):
        return np.empty((self.x.shape[0], self.x.shape[1], self.OH, self.OW), np.float32)

    def torch_ref(self, pool):
        """Output and input gradient of pool(padded x) for the upstream gradient dout."""
        xt = nchw(self.x).requires_grad_()
        y = pool(xt)
        y.backward(nchw(self.dout))
        return cnhw(y), cnhw(xt.grad)


GEOMETRIES = [
    (8, 8, 2, 2, (2, 2), "valid", "valid"),    # the common 2x2/2 (maxpool's unrolled path)
    (7, 9, 2, 2, (2, 2), "same", "same"),      # 2x2/2 whose last window hangs over the edge
    (9, 7, 3, 3, (2, 2), "valid", "valid"),    # overlapping windows, leftover input
    (8, 9, 2, 2, (1, 1), "same", "same"),      # even kernel: padding only bottom/right
    (7, 8, 3, 3, (2, 2), "same", "same"),
    (9, 9, 3, 3, (3, 3), "same", "same"),
    (6, 7, 3, 2, (1, 1), "full", "full"),
    (8, 8, 3, 3, (2, 2), 1, 1),                # explicit P
    (10, 7, 3, 2, (2, 1), 1, 0),               # explicit Ph x Pw, non-square kernel and stride
]


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_maxpool(geometry):
    pool = Pool(*geometry)
    (kh, kw), s = pool.k, pool.s
    ref_out, ref_dx = pool.torch_ref(
        lambda t: F.max_pool2d(F.pad(t, pool.pads, value=-math.inf), (kh, kw), s))
    out, argmax = pool.out(), np.empty(pool.dout.shape, np.int32)
    maxpool_forward(pool.x, out, argmax, *pool.args)
    assert np.array_equal(out, ref_out)
    H, W = pool.x.shape[2:]
    assert argmax.min() >= 0 and argmax.max() < H * W
    winners = np.take_along_axis(pool.x.reshape(*pool.x.shape[:2], H * W), argmax.reshape(*argmax.shape[:2], -1), 2)
    assert np.array_equal(winners.reshape(out.shape), out)
    dx = pool.prefill.copy()
    maxpool_backward(pool.dout, argmax, dx)
    assert rel_err(dx - pool.prefill, ref_dx) < RTOL


def test_maxpool_padding_never_wins():
    """All inputs negative: a zero from the padding must not be the maximum."""
    pool = Pool(5, 5, 3, 3, (1, 1), 1, 1)
    x = -np.abs(pool.x) - 1
    out, argmax = pool.out(), np.empty(pool.dout.shape, np.int32)
    maxpool_forward(x, out, argmax, *pool.args)
    assert (out < 0).all()


def sum_pool(t, k, s):
    return F.avg_pool2d(t, k, s, divisor_override=1)


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_avgpool(geometry):
    pool = Pool(*geometry)
    k, s = pool.k, pool.s
    # mean over the real elements: window sums of x over window sums of a mask of ones
    ones = torch.ones(1, 1, *pool.x.shape[2:])
    counts = sum_pool(F.pad(ones, pool.pads), k, s)
    ref_out, ref_dx = pool.torch_ref(lambda t: sum_pool(F.pad(t, pool.pads), k, s) / counts)
    out = pool.out()
    avgpool_forward(pool.x, out, *pool.avg_args)
    assert rel_err(out, ref_out) < RTOL
    dx = pool.prefill.copy()
    avgpool_backward(pool.dout, dx, *pool.avg_args)
    assert rel_err(dx - pool.prefill, ref_dx) < RTOL


def test_avgpool_matches_count_include_pad_false():
    """The same contract, checked against PyTorch's own flag where its symmetric padding allows."""
    pool = Pool(7, 8, 3, 3, (2, 2), 1, 1)
    ref_out, ref_dx = pool.torch_ref(
        lambda t: F.avg_pool2d(t, 3, 2, padding=1, count_include_pad=False))
    out = pool.out()
    avgpool_forward(pool.x, out, *pool.avg_args)
    assert rel_err(out, ref_out) < RTOL
    dx = pool.prefill.copy()
    avgpool_backward(pool.dout, dx, *pool.avg_args)
    assert rel_err(dx - pool.prefill, ref_dx) < RTOL


def test_globalavgpool():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((5, 3, 7, 6)).astype(np.float32)
    dout = rng.standard_normal((5, 3, 1, 1)).astype(np.float32)
    xt = nchw(x).requires_grad_()
    y = xt.mean((2, 3), keepdim=True)
    y.backward(nchw(dout))
    out = np.empty((5, 3, 1, 1), np.float32)
    globalavgpool_forward(x, out)
    assert rel_err(out, cnhw(y)) < RTOL
    prefill = rng.standard_normal(x.shape).astype(np.float32)
    dx = prefill.copy()
    globalavgpool_backward(dout, dx)
    assert rel_err(dx - prefill, cnhw(xt.grad)) < RTOL


# -- rounding=ceil and count_pad=true, against PyTorch's ceil_mode and count_include_pad ---------

# (H, W, kernel, stride, padding): odd sizes where ceil adds a window, where PyTorch's rule drops
# the one that would start in the bottom padding (7, k 2, s 2, p 1), and where it changes nothing.
CEIL_GEOMETRIES = [
    (7, 8, (2, 2), (2, 2), (0, 0)),
    (7, 7, (2, 2), (2, 2), (1, 1)),
    (8, 9, (3, 3), (2, 2), (1, 1)),
    (5, 9, (3, 2), (3, 2), (1, 0)),
    (9, 6, (3, 3), (2, 3), (0, 1)),
    (6, 5, (2, 3), (2, 2), (1, 1)),
    (10, 7, (3, 2), (3, 2), (0, 1)),
]


class CeilPool:
    """A random ceil-mode problem with symmetric padding, which PyTorch's own flags cover."""

    def __init__(self, H, W, kernel, stride, padding, seed=0):
        rng = np.random.default_rng(seed)
        self.kernel, self.stride, self.padding = kernel, stride, padding
        self.OH, self.OW = (ceil_windows(n, k, s, p, p) for n, k, s, p in zip((H, W), kernel, stride, padding))
        self.x = rng.standard_normal((3, 2, H, W)).astype(np.float32)
        self.dout = rng.standard_normal((3, 2, self.OH, self.OW)).astype(np.float32)
        self.prefill = rng.standard_normal(self.x.shape).astype(np.float32)
        self.args = (*kernel, *stride, padding[0], padding[1])

    def torch_ref(self, pool):
        xt = nchw(self.x).requires_grad_()
        y = pool(xt, self.kernel, self.stride, self.padding, ceil_mode=True)
        y.backward(nchw(self.dout))
        return cnhw(y), cnhw(xt.grad)

    def out(self):
        return np.full((3, 2, self.OH, self.OW), np.nan, np.float32)


@pytest.mark.parametrize("geometry", CEIL_GEOMETRIES, ids=str)
def test_ceil_windows_counts_as_pytorch(geometry):
    H, W, kernel, stride, padding = geometry
    expected = F.max_pool2d(torch.zeros(1, 1, H, W), kernel, stride, padding, ceil_mode=True).shape[2:]
    assert (ceil_windows(H, kernel[0], stride[0], padding[0], padding[0]),
            ceil_windows(W, kernel[1], stride[1], padding[1], padding[1])) == tuple(expected)


def test_ceil_windows_drops_a_window_starting_in_the_bottom_padding():
    assert ceil_windows(7, 2, 2, 1, 1) == 4  # not 5: the fifth window would be padding only
    assert ceil_windows(7, 2, 2, 0, 0) == 4 and (7 - 2) // 2 + 1 == 3


@pytest.mark.parametrize("geometry", CEIL_GEOMETRIES, ids=str)
def test_maxpool_ceil(geometry):
    pool = CeilPool(*geometry)
    ref_out, ref_dx = pool.torch_ref(F.max_pool2d)
    out, argmax = pool.out(), np.empty((3, 2, pool.OH, pool.OW), np.int32)
    maxpool_forward(pool.x, out, argmax, *pool.args)
    assert rel_err(out, ref_out) < RTOL
    dx = pool.prefill.copy()
    maxpool_backward(pool.dout, argmax, dx)
    assert rel_err(dx - pool.prefill, ref_dx) < RTOL


@pytest.mark.parametrize("count_pad", [False, True])
@pytest.mark.parametrize("geometry", CEIL_GEOMETRIES, ids=str)
def test_avgpool_ceil(geometry, count_pad):
    pool = CeilPool(*geometry)
    ref_out, ref_dx = pool.torch_ref(
        lambda t, k, s, p, ceil_mode: F.avg_pool2d(t, k, s, p, ceil_mode=ceil_mode, count_include_pad=count_pad))
    args = pool.args + (pool.padding[0], pool.padding[1], count_pad)
    out = pool.out()
    avgpool_forward(pool.x, out, *args)
    assert rel_err(out, ref_out) < RTOL
    dx = pool.prefill.copy()
    avgpool_backward(pool.dout, dx, *args)
    assert rel_err(dx - pool.prefill, ref_dx) < RTOL


@pytest.mark.parametrize("geometry", [g for g in GEOMETRIES if isinstance(g[5], int)], ids=str)
def test_avgpool_count_pad_floor(geometry):
    """count_pad with the default rounding, against count_include_pad=True (symmetric padding)."""
    pool = Pool(*geometry)
    pad = (pool.pt, pool.pl)
    ref_out, ref_dx = pool.torch_ref(lambda t: F.avg_pool2d(t, pool.k, pool.s, pad, count_include_pad=True))
    args = pool.args + (pool.pt, pool.pl, True)
    out = pool.out()
    avgpool_forward(pool.x, out, *args)
    assert rel_err(out, ref_out) < RTOL
    dx = pool.prefill.copy()
    avgpool_backward(pool.dout, dx, *args)
    assert rel_err(dx - pool.prefill, ref_dx) < RTOL


def test_avgpool_count_pad_with_unequal_padding():
    """`same` pads the extra row at the bottom only: count_pad counts it there, and not at the top."""
    x = np.arange(1, 1 + 4 * 4, dtype=np.float32).reshape(1, 1, 4, 4)
    out = np.empty((1, 1, 2, 2), np.float32)  # size 3, stride 2, same: padding 0 top/left, 1 bottom/right
    avgpool_forward(x, out, 3, 3, 2, 2, 0, 0, 1, 1, True)
    assert out[0, 0, 0, 0] == pytest.approx(x[0, 0, :3, :3].mean())
    assert out[0, 0, 1, 1] == pytest.approx(x[0, 0, 2:, 2:].sum() / 9)


@pytest.mark.parametrize("op", ["maxpool", "avgpool", "avgpool count_pad"])
def test_ceil_pooling_finite_differences_float64(op):
    """The backward of the ceil windows (clipped at the end) against central differences."""
    rng = np.random.default_rng(9)
    x = rng.standard_normal((2, 2, 7, 5))
    OH, OW = ceil_windows(7, 3, 2, 1, 1), ceil_windows(5, 2, 2, 1, 1)
    weights = rng.standard_normal((2, 2, OH, OW))
    args = (3, 2, 2, 2, 1, 1)

    def forward():
        out = np.empty_like(weights)
        if op == "maxpool":
            maxpool_forward(x, out, np.empty(out.shape, np.int32), *args)
        else:
            avgpool_forward(x, out, *args, 1, 1, op.endswith("count_pad"))
        return out

    dx = np.zeros_like(x)
    if op == "maxpool":
        argmax = np.empty(weights.shape, np.int32)
        maxpool_forward(x, np.empty_like(weights), argmax, *args)
        maxpool_backward(weights, argmax, dx)
    else:
        avgpool_backward(weights, dx, *args, 1, 1, op.endswith("count_pad"))
    assert rel_err(dx, numeric_gradient(lambda: float((forward() * weights).sum()), x)) < 1e-7
