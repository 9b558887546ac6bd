"""cnnc.kernels.direct against PyTorch and finite differences: every padding mode, odd sizes (wide
planes that end inside a run of sums), even kernels, dilation, fused bias + residual + ReLU, filter
counts of 3 to 9 and 16 (the forward's passes of eight filters, the last with filters repeated; the
weight gradients' fours), kernel rows of 3, 4, 5 and 6 taps (the weight gradients' three a pass,
the rest one at a time), at stride 1 and at strides 2 and 3, square or not (on the input's phases,
with the input gradient scattered back)."""
import numpy as np
import pytest
from checks import numeric_gradient, rel_err
from test_kernels_conv import RTOL, Layer, randn

from cnnc.kernels.direct import direct_backward, direct_forward

# (C, F, N, H, W, KH, KW, stride, mode_h, mode_w, dilation)
CASES = [
    (1, 6, 3, 12, 11, 5, 5, (1, 1), "same", "same", (1, 1)),    # lenet5's first layer, smaller: 4 + 2 filters
    (3, 5, 2, 9, 7, 3, 3, (1, 1), "valid", "valid", (1, 1)),    # 4 + 1
    (2, 7, 2, 6, 8, 3, 3, (1, 1), "full", "full", (1, 1)),      # 4 + 3 (a four with one filter repeated)
    (4, 8, 1, 10, 9, 2, 4, (1, 1), "same", "same", (1, 1)),     # even kernels: the extra zero after
    (3, 4, 2, 8, 9, 3, 3, (1, 1), 2, 0, (1, 1)),                # explicit, unequal padding
    (2, 3, 2, 7, 9, 3, 3, (1, 1), 3, 4, (1, 1)),                # padding larger than the kernel
    (3, 6, 2, 11, 10, 3, 3, (1, 1), "same", "same", (2, 3)),    # dilation
    (2, 5, 2, 9, 12, 3, 2, (1, 1), "full", 1, (3, 2)),
    (8, 9, 2, 16, 16, 3, 3, (1, 1), "same", "same", (1, 1)),
    (16, 16, 2, 12, 10, 3, 3, (1, 1), "same", "same", (1, 1)),  # resnet20's first stage, smaller
    (3, 6, 2, 9, 13, 5, 6, (1, 1), "valid", "same", (1, 1)),    # two passes of three taps a row, and 2 over from 5
    (16, 9, 2, 12, 11, 3, 3, (2, 2), "same", "same", (1, 1)),   # resnet20's 16 -> 32 layer, smaller: dx 8 + 1 filters a pass
    (3, 6, 2, 13, 10, 7, 7, (2, 2), 3, 3, (1, 1)),              # a 7x7 stem: 49 taps, sixteen threes and one
    (2, 5, 2, 11, 9, 3, 5, (3, 2), "valid", "valid", (1, 1)),   # strides that leave input unused
    (4, 7, 2, 10, 8, 5, 3, (2, 1), 2, 0, (1, 1)),               # a stride of 1 across, explicit unequal padding
    (3, 4, 2, 12, 12, 3, 3, (2, 2), "same", "same", (2, 2)),    # dilation at a stride
    (2, 3, 2, 9, 10, 4, 4, (2, 2), "same", "same", (1, 1)),     # even kernels at a stride
    (3, 6, 1, 8, 9, 3, 3, (2, 2), "full", "full", (1, 1)),
]


def layer(case, relu=True, residual=False, bias=True):
    C, F, N, H, W, KH, KW, stride, mode_h, mode_w, dilation = case
    return Layer(C, F, N, H, W, KH, KW, stride, mode_h, mode_w, bias=bias, relu=relu, seed=H * W + F,
                 residual=residual, dilation=dilation)


@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("case", CASES)
def test_forward_matches_torch(case, relu, residual):
    lay = layer(case, relu, residual)
    out = np.full((lay.w.shape[0], lay.x.shape[1], lay.OH, lay.OW), np.nan, np.float32)  # every element written
    direct_forward(lay.x, lay.w, lay.b, np.empty(0, np.float32), lay.residual, out, lay.sh, lay.sw, lay.pt, lay.pl, lay.dh, lay.dw, relu)
    assert rel_err(out, lay.ref_out) < RTOL


@pytest.mark.parametrize("case", CASES)
def test_scaled_outputs_match_torch(case):
    """A folded batchnorm's per-filter scale, applied to the filters, with bias, residual and ReLU."""
    lay = layer(case, relu=True, residual=True)
    out = np.full((lay.w.shape[0], lay.x.shape[1], lay.OH, lay.OW), np.nan, np.float32)
    w, scale = lay.weights(scaled=True)
    direct_forward(lay.x, w, lay.b, scale, lay.residual, out, lay.sh, lay.sw, lay.pt, lay.pl, lay.dh, lay.dw, True)
    assert rel_err(out, lay.ref_out) < RTOL


@pytest.mark.parametrize("add_dx", [True, False], ids=["dx added into", "dx written"])
@pytest.mark.parametrize("need_dx", [True, False])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("case", CASES)
def test_backward_matches_torch(case, relu, need_dx, add_dx):
    """dw and db overwritten (NaN-filled before), dx added into random values or written over
    NaN (every element), dout left alone."""
    lay = layer(case, relu)
    out, dout = lay.ref_out.copy(), lay.dout.copy()
    prefill = randn(np.random.default_rng(4), *lay.x.shape) if add_dx else np.full_like(lay.x, np.nan)
    dx = prefill.copy()
    dw, db = np.full_like(lay.w, np.nan), np.full_like(lay.b, np.nan)
    direct_backward(lay.x, lay.w, out, lay.dout, dx, dw, db, lay.sh, lay.sw, lay.pt, lay.pl, lay.dh, lay.dw, relu,
                    need_dx, add_dx)
    assert np.array_equal(lay.dout, dout)
    assert rel_err(dw, lay.ref_dw) < RTOL
    assert rel_err(db, lay.ref_db) < RTOL
    if need_dx:
        assert rel_err(dx - (prefill if add_dx else 0), lay.ref_dx) < RTOL
    else:
        assert np.array_equal(dx, prefill, equal_nan=True)


# (H, W, stride, pad_top, pad_left, OH, OW) of a 3x2 kernel dilated (2, 1): 5 x 2 taps' extent
ADJOINT_CASES = [
    (6, 5, (1, 1), 2, 1, 6, 5),  # rows 6 + 2 + 2 - 5 + 1; columns 5 + 1 + 0 - 2 + 1
    (9, 8, (2, 3), 2, 1, 5, 3),  # rows (9 + 2 + 2 - 5) // 2 + 1; columns (8 + 1 + 1 - 2) // 3 + 1
]


@pytest.mark.parametrize("H, W, stride, pt, pl, OH, OW", ADJOINT_CASES)
def test_backward_is_the_adjoint_of_the_forward_float64(H, W, stride, pt, pl, OH, OW):
    """Finite differences of L = sum(forward * dout) in float64, with padding on every side and
    dilation, at stride 1 and at a stride."""
    rng = np.random.default_rng(7)
    x, w, b = randn(rng, 2, 2, H, W, dtype=np.float64), randn(rng, 5, 2, 3, 2, dtype=np.float64), randn(rng, 5, dtype=np.float64)
    (sh, sw), dil_h, dil_w = stride, 2, 1
    dout = randn(rng, 5, 2, OH, OW, dtype=np.float64)

    def forward():
        out = np.empty((5, 2, OH, OW))
        direct_forward(x, w, b, np.empty(0), np.empty((0, 0, 0, 0)), out, sh, sw, pt, pl, dil_h, dil_w, False)
        return out

    def loss():
        return (forward() * dout).sum()

    dx, dw, db = np.zeros_like(x), np.empty_like(w), np.empty_like(b)
    direct_backward(x, w, forward(), dout, dx, dw, db, sh, sw, pt, pl, dil_h, dil_w, False, True, True)
    for param, grad in ((x, dx), (w, dw), (b, db)):
        np.testing.assert_allclose(grad, numeric_gradient(loss, param), rtol=1e-6, atol=1e-7)
