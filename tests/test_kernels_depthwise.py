"""cnnc.kernels.depthwise against PyTorch (groups = channels): every padding mode, strides 1 and 2,
dilation, depth multiplier 2, fused bias + residual + ReLU, gradients, and finite differences."""
import numpy as np
import pytest
from checks import numeric_gradient, rel_err
from test_kernels_conv import RTOL, Layer, randn

from cnnc.kernels.depthwise import depthwise_backward, depthwise_forward

EMPTY4 = np.empty((0, 0, 0, 0), np.float32)


def forward(layer, scaled=False):
    out = np.full((layer.w.shape[0], layer.x.shape[1], layer.OH, layer.OW), np.nan, np.float32)  # all written
    w, scale = layer.weights(scaled)
    depthwise_forward(layer.x, w, layer.b, scale, layer.residual, out, layer.sh, layer.sw, layer.pt, layer.pl,
                      layer.dh, layer.dw, layer.relu)
    return out


def backward(layer, out, dx, need_dx=True):
    dw, db = np.full_like(layer.w, np.nan), np.full_like(layer.b, np.nan)  # overwritten, never read
    depthwise_backward(layer.x, layer.w, out, layer.dout, dx, dw, db, layer.sh, layer.sw, layer.pt, layer.pl,
                       layer.dh, layer.dw, layer.relu, need_dx)
    return dw, db


# (C, multiplier, N, H, W, K, stride, padding mode, dilation): small batches, plane by plane. At stride 1, outputs 8 or more wide
# run as whole-plane runs (_forward_stride1), narrower ones row by row: both are here.
GEOMETRIES = [
    (3, 1, 2, 9, 7, 3, (1, 1), "same", (1, 1)),
    (4, 1, 3, 8, 8, 3, (1, 1), "valid", (1, 1)),
    (3, 1, 2, 11, 9, 3, (2, 2), "same", (1, 1)),     # odd sizes at stride 2: the odd zero after
    (5, 1, 2, 10, 10, 3, (2, 2), "same", (1, 1)),
    (3, 1, 2, 6, 7, 3, (1, 1), "full", (1, 1)),
    (2, 1, 2, 9, 8, 3, (2, 2), 1, (1, 1)),
    (3, 2, 2, 9, 7, 3, (1, 1), "same", (1, 1)),      # depth multiplier 2
    (2, 2, 2, 11, 10, 3, (2, 2), "same", (1, 1)),
    (3, 1, 2, 8, 9, 4, (1, 1), "same", (1, 1)),      # even kernel
    (2, 1, 2, 10, 8, 5, (2, 1), "same", (1, 1)),
    (3, 1, 2, 11, 12, 3, (1, 1), "same", (2, 2)),    # dilated
    (2, 2, 2, 13, 9, 3, (2, 1), "same", (2, 3)),
    (2, 1, 1, 7, 7, 3, (3, 3), 2, (1, 1)),           # padding larger than the stride covers
    (3, 1, 1, 3, 3, 3, (1, 1), "valid", (1, 1)),     # one output
    (3, 2, 2, 12, 11, 3, (1, 1), "same", (1, 1)),    # 132 outputs a plane
    (2, 1, 3, 19, 17, 3, (2, 2), "same", (1, 1)),    # 90
    (2, 1, 2, 14, 13, 5, (2, 1), 1, (1, 1)),         # 6 x 11
]


@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("C, mult, N, H, W, K, stride, mode, dilation", GEOMETRIES)
def test_matches_torch(C, mult, N, H, W, K, stride, mode, dilation, bias, relu, residual):
    layer = Layer(C, C * mult, N, H, W, K, K, stride, mode, mode, bias=bias, relu=relu, seed=H * W + C,
                  residual=residual, dilation=dilation, groups=C)
    out = forward(layer)
    assert rel_err(out, layer.ref_out) < RTOL
    dout = layer.dout.copy()
    prefill = randn(np.random.default_rng(1), *layer.x.shape)
    dx = prefill.copy()
    dw, db = backward(layer, out, dx)
    assert np.array_equal(layer.dout, dout), "dout must not be modified"
    assert rel_err(dw, layer.ref_dw) < RTOL
    assert rel_err(db, layer.ref_db) < RTOL
    assert rel_err(dx - prefill, layer.ref_dx) < RTOL  # added into, not overwritten


# Output planes of 16 or fewer with a batch of 16 or more: the images-innermost path.
SMALL_PLANES = [
    (3, 1, 17, 4, 4, 3, (1, 1), "same", (1, 1)),    # 4x4 outputs
    (2, 2, 17, 8, 8, 3, (2, 2), "same", (1, 1)),    # 4x4 at stride 2, depth multiplier 2
    (3, 1, 16, 2, 2, 3, (1, 1), "same", (1, 1)),    # 2x2
    (2, 1, 17, 3, 4, 3, (2, 2), "same", (1, 1)),    # 2x2 at stride 2, odd sizes
    (2, 1, 17, 7, 7, 3, (3, 3), 2, (1, 1)),         # padding larger than the stride covers
    (2, 1, 17, 6, 5, 3, (1, 1), "valid", (2, 1)),   # dilated: 2x3
]


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("C, mult, N, H, W, K, stride, mode, dilation", SMALL_PLANES)
def test_small_planes_of_a_large_batch(C, mult, N, H, W, K, stride, mode, dilation, relu):
    layer = Layer(C, C * mult, N, H, W, K, K, stride, mode, mode, bias=True, relu=relu, seed=H * W + C,
                  residual=True, dilation=dilation, groups=C)
    out = forward(layer)
    assert rel_err(out, layer.ref_out) < RTOL
    prefill = randn(np.random.default_rng(1), *layer.x.shape)
    dx = prefill.copy()
    dw, db = backward(layer, out, dx)
    assert rel_err(dw, layer.ref_dw) < RTOL and rel_err(db, layer.ref_db) < RTOL
    assert rel_err(dx - prefill, layer.ref_dx) < RTOL


def test_need_dx_false_leaves_dx_alone():
    layer = Layer(4, 8, 2, 9, 8, 3, 3, (2, 2), "same", "same", bias=True, relu=True, groups=4)
    dx = randn(np.random.default_rng(2), *layer.x.shape)
    before = dx.copy()
    dw, db = backward(layer, forward(layer), dx, need_dx=False)
    assert np.array_equal(dx, before)
    assert rel_err(dw, layer.ref_dw) < RTOL and rel_err(db, layer.ref_db) < RTOL


@pytest.mark.parametrize("N", [2, 16])  # plane by plane, and small planes with the images innermost
@pytest.mark.parametrize("C, mult, H, W, K, stride, mode, dilation", [g[:2] + g[3:] for g in GEOMETRIES])
def test_scaled_outputs_match_torch(C, mult, H, W, K, stride, mode, dilation, N):
    """A folded batchnorm's per-filter scale, applied to the filters, with bias, residual and ReLU."""
    layer = Layer(C, C * mult, N, H, W, K, K, stride, mode, mode, bias=True, relu=True, seed=H * W + C,
                  residual=True, dilation=dilation, groups=C)
    assert rel_err(forward(layer, scaled=True), layer.ref_out) < RTOL


def test_mobilenet_sized_layer():
    """A larger layer (64 channels, 16x16, 8 images), as mobilenet_v1's blocks run them."""
    layer = Layer(64, 64, 8, 16, 16, 3, 3, (1, 1), "same", "same", bias=True, relu=True, groups=64)
    out = forward(layer)
    assert rel_err(out, layer.ref_out) < RTOL
    dx = np.zeros_like(layer.x)
    dw, db = backward(layer, out, dx)
    assert rel_err(dw, layer.ref_dw) < RTOL and rel_err(dx, layer.ref_dx) < RTOL


# Small planes with a batch of 16 or more run with the images innermost; larger planes, or a
# smaller batch, plane by plane.
@pytest.mark.parametrize("N, H, W", [(2, 5, 4), (16, 5, 4), (17, 12, 10)])
@pytest.mark.parametrize("stride, dilation, mult", [((1, 1), (1, 1), 1), ((2, 2), (1, 1), 2), ((2, 1), (2, 2), 1)])
def test_finite_differences_float64(stride, dilation, mult, N, H, W):
    """The backward is the adjoint of the forward: dL/d(x, w, b) for L = sum(out * dout)."""
    rng = np.random.default_rng(8)
    C, K = 2, 3
    (sh, sw), (dh, dw_) = stride, dilation
    pt, pl = 1, 2
    OH, OW = (H + 2 * pt - (K - 1) * dh - 1) // sh + 1, (W + 2 * pl - (K - 1) * dw_ - 1) // sw + 1
    x, w, b = (randn(rng, C, N, H, W, dtype=np.float64), randn(rng, C * mult, 1, K, K, dtype=np.float64),
               randn(rng, C * mult, dtype=np.float64))
    dout = randn(rng, C * mult, N, OH, OW, dtype=np.float64)
    no_residual = np.empty((0, 0, 0, 0))

    def loss():
        out = np.empty((C * mult, N, OH, OW))
        depthwise_forward(x, w, b, np.empty(0), no_residual, out, sh, sw, pt, pl, dh, dw_, False)
        return (out * dout).sum()

    out = np.empty((C * mult, N, OH, OW))
    depthwise_forward(x, w, b, np.empty(0), no_residual, out, sh, sw, pt, pl, dh, dw_, False)
    dx, dw, db = np.zeros_like(x), np.empty_like(w), np.empty_like(b)
    depthwise_backward(x, w, out, dout, dx, dw, db, sh, sw, pt, pl, dh, dw_, False, True)
    for param, grad in ((x, dx), (w, dw), (b, db)):
        np.testing.assert_allclose(grad, numeric_gradient(loss, param), rtol=1e-6, atol=1e-7)
