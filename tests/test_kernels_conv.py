"""cnnc.kernels.conv against PyTorch: every padding mode, strides, fused bias+ReLU, gradients."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from checks import cnhw, nchw, numeric_gradient, pads_1d, rel_err, split_scale

from cnnc.kernels.conv import conv2d_backward, conv2d_forward
from cnnc.kernels.winograd import _backward, _forward, conv3x3_backward, conv3x3_forward, winograd_memo

RTOL = 1e-4


def randn(rng, *shape, dtype=np.float32):
    return rng.standard_normal(shape).astype(dtype)


class Layer:
    """One random conv layer and its PyTorch reference; builds the kernels' arguments."""

    def __init__(self, C, Fo, N, H, W, KH, KW, stride, mode_h, mode_w, bias, relu, seed=0, residual=False,
                 dilation=(1, 1), groups=1):
        rng = np.random.default_rng(seed)
        self.sh, self.sw = stride
        self.dh, self.dw = dilation
        self.groups = groups
        KH, KW = (KH - 1) * self.dh + 1, (KW - 1) * self.dw + 1  # the dilated kernel's extent
        self.pt, self.OH = pads_1d(mode_h, H, KH, self.sh)
        self.pl, self.OW = pads_1d(mode_w, W, KW, self.sw)
        self.relu = relu
        self.x = randn(rng, C, N, H, W)
        self.w = randn(rng, Fo, C // groups, (KH - 1) // self.dh + 1, (KW - 1) // self.dw + 1)
        self.b = randn(rng, Fo) if bias else np.zeros(Fo, np.float32)
        self.dout = randn(rng, Fo, N, self.OH, self.OW)
        # a fused add's other input, added before the ReLU
        self.residual = randn(rng, Fo, N, self.OH, self.OW) if residual else np.empty((0, 0, 0, 0), np.float32)
        # PyTorch only pads symmetrically: pad explicitly (bottom/right get what the output needs)
        pb = max((self.OH - 1) * self.sh + KH - H - self.pt, 0)
        pr = max((self.OW - 1) * self.sw + KW - W - self.pl, 0)
        self.xt = nchw(self.x).requires_grad_()
        self.wt = torch.from_numpy(self.w.copy()).requires_grad_()
        self.bt = torch.from_numpy(self.b.copy()).requires_grad_()
        y = F.conv2d(F.pad(self.xt, (self.pl, pr, self.pt, pb)), self.wt, self.bt, stride=stride,
                     dilation=dilation, groups=groups)
        y = y + nchw(self.residual) if residual else y
        y = F.relu(y) if relu else y
        y.backward(nchw(self.dout))
        self.ref_out = cnhw(y)
        self.ref_dx, self.ref_dw, self.ref_db = cnhw(self.xt.grad), self.wt.grad.numpy(), self.bt.grad.numpy()

    def weights(self, scaled=False):
        """The kernels' filters and scale: w and no scale, or (with `scaled`) w / s and s."""
        return split_scale(self.w) if scaled else (self.w, np.empty(0, self.w.dtype))

    def forward(self, scaled=False):
        out = np.empty((self.w.shape[0], self.x.shape[1], self.OH, self.OW), self.x.dtype)
        w, scale = self.weights(scaled)
        conv2d_forward(self.x, w, self.b, scale, self.residual, out, self.sh, self.sw, self.pt, self.pl,
                       self.dh, self.dw, self.groups, self.relu)
        return out

    def backward(self, out, dx, need_dx=True):
        dw = np.full_like(self.w, np.nan)  # overwritten, never read
        db = np.full_like(self.b, np.nan)
        conv2d_backward(self.x, self.w, out, self.dout, dx, dw, db, self.sh, self.sw, self.pt,
                        self.pl, self.dh, self.dw, self.groups, self.relu, need_dx)
        return dw, db


# (H, W, KH, KW, (stride_h, stride_w), mode_h, mode_w)
GEOMETRIES = [
    (8, 8, 3, 3, (1, 1), "valid", "valid"),
    (9, 7, 3, 3, (1, 1), "same", "same"),
    (8, 8, 4, 4, (1, 1), "same", "same"),      # even kernel: extra zero bottom/right
    (9, 10, 2, 4, (2, 2), "same", "same"),
    (7, 8, 3, 3, (3, 3), "same", "same"),
    (6, 7, 3, 2, (1, 1), "full", "full"),
    (8, 9, 3, 3, (2, 2), 1, 1),                # explicit P
    (10, 8, 5, 3, (2, 1), 2, 0),               # explicit Ph x Pw, non-square stride
    (11, 9, 3, 5, (3, 2), "valid", "valid"),   # strides that leave input unused
    (5, 5, 5, 5, (1, 1), "valid", "valid"),    # the kernel covers the whole input
    (9, 9, 1, 1, (2, 2), "valid", "valid"),    # 1x1 downsampling (resnet shortcut): the pointwise path on
    (10, 9, 1, 1, (2, 3), "same", "valid"),    # ... the subsampled input, at any stride when unpadded
    (9, 9, 1, 1, (2, 2), 3, 3),                # kernel smaller than the stride, padding larger
    (10, 11, 2, 2, (3, 3), 2, 1),              # ... and unequal paddings
]


@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_matches_torch(geometry, bias, relu, residual):
    layer = Layer(3, 4, 3, *geometry, bias=bias, relu=relu, residual=residual)
    out = layer.forward()
    assert rel_err(out, layer.ref_out) < RTOL
    dout = layer.dout.copy()
    prefill = randn(np.random.default_rng(1), *layer.x.shape)
    dx = prefill.copy()
    dw, db = layer.backward(out, dx)
    assert np.array_equal(layer.dout, dout), "dout must not be modified"
    assert rel_err(dw, layer.ref_dw) < RTOL
    assert rel_err(db, layer.ref_db) < RTOL
    assert rel_err(dx - prefill, layer.ref_dx) < RTOL  # added into, not overwritten


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_scaled_outputs_match_torch(geometry):
    """A folded batchnorm's per-filter scale, applied to the products before bias, residual and
    ReLU (the pointwise path's epilogue and im2col's)."""
    layer = Layer(3, 4, 3, *geometry, bias=True, relu=True, residual=True)
    assert rel_err(layer.forward(scaled=True), layer.ref_out) < RTOL


def test_need_dx_false_leaves_dx_alone():
    layer = Layer(2, 5, 2, 9, 8, 3, 3, (1, 1), "same", "same", bias=True, relu=True)
    dx = randn(np.random.default_rng(2), *layer.x.shape)
    before = dx.copy()
    dw, db = layer.backward(layer.forward(), dx, need_dx=False)
    assert np.array_equal(dx, before)
    assert rel_err(dw, layer.ref_dw) < RTOL
    assert rel_err(db, layer.ref_db) < RTOL


# Layers big enough to be cut into chunks of images. (C, F, N, H, W, K, stride, padding mode)
WORK_SPLITS = [
    (1, 6, 30, 28, 28, 5, (1, 1), "same"),    # chunks of 11, 11 and 8 images
    (1, 6, 64, 28, 28, 5, (1, 1), "same"),    # lenet5's first layer
    (32, 64, 3, 16, 16, 3, (1, 1), "same"),   # one chunk of 3 images
    (16, 32, 8, 32, 31, 3, (2, 2), "same"),   # strided: im2col from the stride's phases
    (64, 64, 1, 15, 16, 3, (1, 1), "same"),   # batch 1
    (64, 64, 1, 31, 31, 3, (2, 2), "same"),   # batch 1, strided
]


@pytest.mark.parametrize("C, Fo, N, H, W, K, stride, mode", WORK_SPLITS)
def test_work_splits(C, Fo, N, H, W, K, stride, mode):
    layer = Layer(C, Fo, N, H, W, K, K, stride, mode, mode, bias=True, relu=True)
    out = layer.forward()
    assert rel_err(out, layer.ref_out) < RTOL
    prefill = randn(np.random.default_rng(1), *layer.x.shape)
    dx = prefill.copy()
    dw, db = layer.backward(out, dx)
    assert rel_err(dw, layer.ref_dw) < RTOL
    assert rel_err(db, layer.ref_db) < RTOL
    assert rel_err(dx - prefill, layer.ref_dx) < RTOL


@pytest.mark.parametrize("C, Fo, H, K, mode", [
    (1, 6, 28, 5, "same"),    # lenet5
    (6, 16, 14, 5, "valid"),
    (3, 32, 32, 3, "same"),   # vgg_small
    (32, 64, 16, 3, "same"),
])
def test_model_shapes(C, Fo, H, K, mode):
    layer = Layer(C, Fo, 2, H, H, K, K, (1, 1), mode, mode, bias=True, relu=True)
    out = layer.forward()
    assert rel_err(out, layer.ref_out) < RTOL
    dx = np.zeros_like(layer.x)
    dw, db = layer.backward(out, dx)
    assert rel_err(dw, layer.ref_dw) < RTOL
    assert rel_err(dx, layer.ref_dx) < RTOL


# Winograd, F(2x2) and F(4x4): odd and even sizes (partial last tiles), every padding, and
# batches cut into chunks (16x16 images: 64 2x2 tiles each, 2 images a chunk; 16 4x4 tiles, 4
# images a chunk). (C, F, N, H, W, mode)
WINOGRAD = [
    (3, 4, 2, 8, 8, "same"),
    (2, 3, 3, 7, 9, "same"),
    (4, 2, 2, 9, 6, "valid"),
    (3, 5, 1, 5, 6, "full"),
    (2, 2, 1, 3, 3, 1),
    (32, 64, 19, 16, 16, "same"),
    (16, 8, 3, 31, 33, "valid"),
    (3, 5, 9, 13, 11, "full"),   # enough 4x4 tiles for the dispatchers to take F(4x4): 144
    (2, 3, 8, 10, 9, 2),         # 72
]
# Each tile size by itself, and the kernels that choose between them by the call's tile count.
def no_memo(w):
    """The memo arguments that mean none, in w's precision (the float64 checks use the same kernels)."""
    return np.empty((0, 0, 0), w.dtype), np.empty(0, w.dtype)


def memo_forward(*args):
    """Inference's choice with a memo of the transformed filters: the second call reads them from it."""
    memo = winograd_memo({}, "layer", args[1].shape[1], args[1].shape[0])
    conv3x3_forward(*args, True, *memo)
    conv3x3_forward(*args, True, *memo)


FORWARDS = {"F(2x2)": lambda *args: _forward(*args, False, *no_memo(args[1])),
            "F(4x4)": lambda *args: _forward(*args, True, *no_memo(args[1])),
            "training's": lambda *args: conv3x3_forward(*args, False, *no_memo(args[1])),
            "inference's choice": lambda *args: conv3x3_forward(*args, True, *no_memo(args[1])),
            "inference's, memo": memo_forward}
BACKWARDS = {"F(2x2)": lambda *args: _backward(*args, False), "F(4x4)": lambda *args: _backward(*args, True),
             "the choice": conv3x3_backward}


@pytest.mark.parametrize("forward", FORWARDS.values(), ids=FORWARDS.keys())
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("C, Fo, N, H, W, mode", WINOGRAD)
def test_winograd_forward_matches_torch(C, Fo, N, H, W, mode, relu, residual, forward):
    layer = Layer(C, Fo, N, H, W, 3, 3, (1, 1), mode, mode, bias=True, relu=relu, seed=N + H, residual=residual)
    out = np.full((Fo, N, layer.OH, layer.OW), np.nan, np.float32)  # every element must be written
    forward(layer.x, layer.w, layer.b, np.empty(0, np.float32), layer.residual, out, layer.pt, layer.pl, relu)
    assert rel_err(out, layer.ref_out) < RTOL


@pytest.mark.parametrize("forward", FORWARDS.values(), ids=FORWARDS.keys())
@pytest.mark.parametrize("C, Fo, N, H, W, mode", WINOGRAD)
def test_winograd_scaled_outputs_match_torch(C, Fo, N, H, W, mode, forward):
    """A folded batchnorm's scale, which Winograd puts into its transformed filters."""
    layer = Layer(C, Fo, N, H, W, 3, 3, (1, 1), mode, mode, bias=True, relu=True, seed=N + H, residual=True)
    out = np.full((Fo, N, layer.OH, layer.OW), np.nan, np.float32)
    w, scale = layer.weights(scaled=True)
    forward(layer.x, w, layer.b, scale, layer.residual, out, layer.pt, layer.pl, True)
    assert rel_err(out, layer.ref_out) < RTOL


@pytest.mark.parametrize("backward", BACKWARDS.values(), ids=BACKWARDS.keys())
@pytest.mark.parametrize("add_dx", [True, False], ids=["dx added into", "dx written"])
@pytest.mark.parametrize("need_dx", [True, False])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("C, Fo, N, H, W, mode", WINOGRAD + [(2, 3, 2, 6, 5, 2), (32, 32, 9, 15, 16, "same")])
def test_winograd_backward_matches_torch(C, Fo, N, H, W, mode, relu, need_dx, add_dx, backward):
    """conv3x3_backward: dw and db overwritten (NaN-filled before), dx added into random values or
    written over NaN (every element), dout left alone; padding 0, 1 and 2, partial tiles of g
    and of dx, batches in chunks."""
    layer = Layer(C, Fo, N, H, W, 3, 3, (1, 1), mode, mode, bias=True, relu=relu, seed=N + W)
    out, dout = layer.ref_out.copy(), layer.dout.copy()
    prefill = randn(np.random.default_rng(4), *layer.x.shape) if add_dx else np.full_like(layer.x, np.nan)
    dx = prefill.copy()
    dw, db = np.full_like(layer.w, np.nan), np.full_like(layer.b, np.nan)
    backward(layer.x, layer.w, out, layer.dout, dx, dw, db, layer.pt, layer.pl, relu, need_dx, add_dx)
    assert np.array_equal(layer.dout, dout)
    assert rel_err(dw, layer.ref_dw) < RTOL
    assert rel_err(db, layer.ref_db) < RTOL
    if need_dx:
        assert rel_err(dx - (prefill if add_dx else 0), layer.ref_dx) < RTOL
    else:
        assert np.array_equal(dx, prefill, equal_nan=True)


@pytest.mark.parametrize("tiles", ["F(2x2)", "F(4x4)"])
@pytest.mark.parametrize("mode_h, mode_w", [(2, 0), (0, 1), (1, 2)])
def test_winograd_with_unequal_top_and_left_padding(mode_h, mode_w, tiles):
    layer = Layer(3, 4, 2, 7, 6, 3, 3, (1, 1), mode_h, mode_w, bias=True, relu=True, seed=5)
    out = np.full((4, 2, layer.OH, layer.OW), np.nan, np.float32)
    FORWARDS[tiles](layer.x, layer.w, layer.b, np.empty(0, np.float32), layer.residual, out, layer.pt, layer.pl, True)
    assert rel_err(out, layer.ref_out) < RTOL
    dx, dw, db = np.zeros_like(layer.x), np.empty_like(layer.w), np.empty_like(layer.b)
    BACKWARDS[tiles](layer.x, layer.w, out, layer.dout, dx, dw, db, layer.pt, layer.pl, True, True, True)
    assert rel_err(dx, layer.ref_dx) < RTOL and rel_err(dw, layer.ref_dw) < RTOL and rel_err(db, layer.ref_db) < RTOL


@pytest.mark.parametrize("tiles", ["F(2x2)", "F(4x4)"])
def test_winograd_backward_finite_differences_float64(tiles):
    """Each Winograd backward is the adjoint of its forward, in float64, partial tiles included."""
    rng = np.random.default_rng(6)
    x, w, b = randn(rng, 3, 2, 5, 6, dtype=np.float64), randn(rng, 4, 3, 3, 3, dtype=np.float64), randn(rng, 4, dtype=np.float64)
    dout = randn(rng, 4, 2, 5, 6, dtype=np.float64)
    forward, backward = FORWARDS[tiles], BACKWARDS[tiles]

    def loss():
        out = np.empty((4, 2, 5, 6))
        forward(x, w, b, np.empty(0), np.empty((0, 0, 0, 0)), out, 1, 1, False)
        return (out * dout).sum()

    out = np.empty((4, 2, 5, 6))
    forward(x, w, b, np.empty(0), np.empty((0, 0, 0, 0)), out, 1, 1, False)
    dx, dw, db = np.zeros_like(x), np.empty_like(w), np.empty_like(b)
    backward(x, w, out, dout, dx, dw, db, 1, 1, False, True, True)
    for param, grad in ((x, dx), (w, dw), (b, db)):
        np.testing.assert_allclose(grad, numeric_gradient(loss, param), rtol=1e-6, atol=1e-7)


def test_finite_differences_float64():
    """The backward is the adjoint of the forward: check dL/d(x, w, b) for L = sum(out * dout)."""
    rng = np.random.default_rng(3)
    sh, sw, pt, pl, OH, OW = 2, 1, 1, 0, 3, 3
    x, w, b = randn(rng, 2, 2, 5, 4, dtype=np.float64), randn(rng, 3, 2, 3, 2, dtype=np.float64), randn(rng, 3, dtype=np.float64)
    dout = randn(rng, 3, 2, OH, OW, dtype=np.float64)

    def loss():
        out = np.empty((3, 2, OH, OW))
        conv2d_forward(x, w, b, np.empty(0), np.empty((0, 0, 0, 0)), out, sh, sw, pt, pl, 1, 1, 1, False)
        return (out * dout).sum(), out

    _, out = loss()
    dx, dw, db = np.zeros_like(x), np.empty_like(w), np.empty_like(b)
    conv2d_backward(x, w, out, dout, dx, dw, db, sh, sw, pt, pl, 1, 1, 1, False, True)
    for param, grad in ((x, dx), (w, dw), (b, db)):
        numeric = np.empty_like(param)
        flat = param.reshape(-1)
        for k in range(flat.size):
            keep = flat[k]
            flat[k] = keep + 1e-6
            up = loss()[0]
            flat[k] = keep - 1e-6
            down = loss()[0]
            flat[k] = keep
            numeric.reshape(-1)[k] = (up - down) / 2e-6
        np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-7)


# Dilated and grouped convolutions (im2col, one product per group). (C, F, N, H, W, K, stride,
# padding mode, dilation, groups)
DILATED_GROUPED = [
    (3, 4, 2, 9, 10, 3, (1, 1), "same", (2, 2), 1),
    (3, 4, 2, 11, 9, 3, (2, 2), "same", (2, 3), 1),     # odd sizes, stride 2, unequal dilation
    (2, 3, 2, 8, 9, 2, (1, 1), "same", (3, 2), 1),      # even kernel: the odd zero after
    (2, 3, 1, 9, 9, 3, (1, 2), "full", (2, 1), 1),
    (2, 2, 2, 10, 9, 3, (2, 1), 2, (2, 2), 1),
    (2, 3, 2, 12, 11, 3, (1, 1), "valid", (4, 3), 1),
    (4, 6, 2, 9, 7, 3, (1, 1), "same", (1, 1), 2),
    (6, 9, 2, 9, 8, 3, (2, 2), "same", (1, 1), 3),
    (4, 8, 3, 7, 9, 1, (1, 1), "valid", (1, 1), 4),     # pointwise in groups
    (6, 4, 2, 11, 10, 3, (2, 2), 1, (2, 2), 2),         # groups and dilation together
    (4, 4, 2, 8, 8, 5, (1, 1), "full", (1, 1), 2),
    (5, 7, 3, 6, 5, 1, (1, 1), "valid", (1, 1), 1),     # 1x1 at stride 1: one product over the batch
    (64, 48, 9, 8, 8, 1, (1, 1), "valid", (1, 1), 1),   # ... in blocks of columns, the last one short
    (4, 6, 6, 9, 9, 1, (1, 1), "valid", (1, 1), 2),     # ... in groups
    (4, 6, 3, 9, 8, 1, (2, 2), "valid", (1, 1), 2),     # ... subsampled at stride 2, in groups
    (3, 4, 2, 5, 6, 1, (1, 1), 1, (1, 1), 1),           # padded 1x1: im2col
]


@pytest.mark.parametrize("bias", [False, True])  # 1x1 layers skip the epilogue with nothing to add or clip
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("C, Fo, N, H, W, K, stride, mode, dilation, groups", DILATED_GROUPED)
def test_dilated_and_grouped_match_torch(C, Fo, N, H, W, K, stride, mode, dilation, groups, relu, residual, bias):
    layer = Layer(C, Fo, N, H, W, K, K, stride, mode, mode, bias=bias, relu=relu, seed=H + W,
                  residual=residual, dilation=dilation, groups=groups)
    out = layer.forward()
    assert rel_err(out, layer.ref_out) < RTOL
    prefill = randn(np.random.default_rng(1), *layer.x.shape)
    dx = prefill.copy()
    dout = layer.dout.copy()
    dw, db = layer.backward(out, dx)
    assert np.array_equal(layer.dout, dout), "dout must not be modified (1x1 layers read it in place)"
    assert rel_err(dw, layer.ref_dw) < RTOL
    assert rel_err(db, layer.ref_db) < RTOL
    assert rel_err(dx - prefill, layer.ref_dx) < RTOL


def test_dilated_grouped_finite_differences_float64():
    """The backward of a dilated, grouped, strided conv is the adjoint of its forward."""
    rng = np.random.default_rng(7)
    sh, sw, pt, pl, dh, dw_, groups, OH, OW = 2, 1, 2, 1, 2, 2, 2, 3, 4
    x, w, b = (randn(rng, 4, 2, 6, 5, dtype=np.float64), randn(rng, 6, 2, 3, 2, dtype=np.float64),
               randn(rng, 6, dtype=np.float64))
    dout = randn(rng, 6, 2, OH, OW, dtype=np.float64)

    def loss():
        out = np.empty((6, 2, OH, OW))
        conv2d_forward(x, w, b, np.empty(0), np.empty((0, 0, 0, 0)), out, sh, sw, pt, pl, dh, dw_, groups, False)
        return (out * dout).sum()

    out = np.empty((6, 2, OH, OW))
    conv2d_forward(x, w, b, np.empty(0), np.empty((0, 0, 0, 0)), out, sh, sw, pt, pl, dh, dw_, groups, False)
    dx, dw, db = np.zeros_like(x), np.empty_like(w), np.empty_like(b)
    conv2d_backward(x, w, out, dout, dx, dw, db, sh, sw, pt, pl, dh, dw_, groups, False, True)
    for param, grad in ((x, dx), (w, dw), (b, db)):
        np.testing.assert_allclose(grad, numeric_gradient(loss, param), rtol=1e-6, atol=1e-7)
