"""cnnc.kernels.conv's transposed convolution against PyTorch's conv_transpose2d and finite differences."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from checks import cnhw, nchw, numeric_gradient, rel_err

from cnnc.kernels.conv import convtranspose_backward, convtranspose_forward

# (Cin, Cout, N, H, W, kernel, stride, padding, output_padding)
GEOMETRIES = [
    (3, 4, 2, 4, 5, (2, 2), (2, 2), (0, 0), (0, 0)),   # the U-Net's x2: size 2, stride 2
    (2, 3, 3, 5, 3, (4, 4), (2, 2), (1, 1), (0, 0)),   # x2 with overlap: size 4, stride 2, padding 1
    (3, 2, 2, 3, 4, (3, 3), (2, 2), (1, 1), (1, 1)),   # size 3, stride 2, padding 1, output_padding 1
    (2, 3, 2, 4, 3, (3, 3), (3, 3), (0, 0), (2, 2)),   # factor 3, the largest output_padding
    (4, 3, 2, 5, 4, (3, 2), (1, 1), (1, 0), (0, 0)),   # stride 1: a "full" convolution, nonsquare
    (3, 2, 5, 3, 5, (2, 3), (3, 2), (2, 1), (1, 0)),   # nonsquare everything, padding >= size on one axis
    (1, 1, 1, 1, 1, (3, 3), (2, 2), (0, 0), (1, 1)),   # a 1x1 input
    (5, 3, 2, 4, 3, (1, 1), (1, 1), (0, 0), (0, 0)),   # 1x1: the input gradient is a pointwise conv adding into dx
]


def output_size(size, k, s, p, op):
    return (size - 1) * s - 2 * p + k + op


class Problem:
    def __init__(self, Cin, Cout, N, H, W, kernel, stride, padding, output_padding, dtype=np.float32, seed=0):
        rng = np.random.default_rng(seed)
        self.stride, self.padding, self.output_padding = stride, padding, output_padding
        self.x = rng.standard_normal((Cin, N, H, W)).astype(dtype)
        self.w = rng.standard_normal((Cin, Cout, *kernel)).astype(dtype)
        self.b = rng.standard_normal(Cout).astype(dtype)
        OH, OW = (output_size(n, k, s, p, o) for n, k, s, p, o in zip((H, W), kernel, stride, padding, output_padding))
        self.out_shape = (Cout, N, OH, OW)
        self.dout = rng.standard_normal(self.out_shape).astype(dtype)
        self.prefill = rng.standard_normal(self.x.shape).astype(dtype)
        self.geometry = (*stride, *padding)

    def forward(self, relu):
        out = np.full(self.out_shape, np.nan, self.x.dtype)
        convtranspose_forward(self.x, self.w, self.b, out, *self.geometry, relu)
        return out

    def backward(self, out, relu, need_dx=True):
        dx = self.prefill.copy()
        dw = np.full(self.w.shape, np.nan, self.x.dtype)
        db = np.full(self.b.shape, np.nan, self.x.dtype)
        convtranspose_backward(self.x, self.w, out, self.dout, dx, dw, db, *self.geometry, relu, need_dx)
        return dx - self.prefill, dw, db

    def torch(self, relu):
        xt, wt, bt = (torch.tensor(a).requires_grad_() for a in (self.x.transpose(1, 0, 2, 3), self.w, self.b))
        y = F.conv_transpose2d(xt, wt, bt, self.stride, self.padding, self.output_padding)
        y = torch.relu(y) if relu else y
        y.backward(nchw(self.dout))
        return cnhw(y), cnhw(xt.grad), wt.grad.numpy(), bt.grad.numpy()


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=str)
def test_matches_torch(geometry, relu):
    problem = Problem(*geometry)
    out = problem.forward(relu)
    ref_out, ref_dx, ref_dw, ref_db = problem.torch(relu)
    assert out.shape == ref_out.shape
    assert rel_err(out, ref_out) < 1e-5
    dout_before = problem.dout.copy()
    dx, dw, db = problem.backward(out, relu)
    assert np.array_equal(problem.dout, dout_before)
    assert rel_err(dx, ref_dx) < 1e-4
    assert rel_err(dw, ref_dw) < 1e-4
    assert rel_err(db, ref_db) < 1e-4


def test_need_dx_false_leaves_dx_alone():
    problem = Problem(*GEOMETRIES[2])
    dx, dw, _ = problem.backward(problem.forward(False), False, need_dx=False)
    assert not dx.any()
    assert rel_err(dw, problem.torch(False)[2]) < 1e-4


def test_many_images_split_into_chunks():
    """Enough images that the kernels work through the batch in several chunks."""
    problem = Problem(8, 5, 70, 6, 7, (3, 3), (2, 2), (1, 1), (1, 0), seed=3)
    out = problem.forward(True)
    ref_out, ref_dx, ref_dw, ref_db = problem.torch(True)
    assert rel_err(out, ref_out) < 1e-5
    for ours, ref in zip(problem.backward(out, True), (ref_dx, ref_dw, ref_db)):
        assert rel_err(ours, ref) < 1e-4


@pytest.mark.parametrize("geometry", [GEOMETRIES[2], GEOMETRIES[5]], ids=str)
def test_finite_differences_float64(geometry):
    """Every gradient against central differences of sum(out * dout), with no PyTorch involved."""
    problem = Problem(*geometry, dtype=np.float64, seed=7)

    def loss():
        return float((problem.forward(False) * problem.dout).sum())

    dx, dw, db = problem.backward(problem.forward(False), False)
    assert rel_err(dx, numeric_gradient(loss, problem.x)) < 1e-7
    assert rel_err(dw, numeric_gradient(loss, problem.w)) < 1e-7
    assert rel_err(db, numeric_gradient(loss, problem.b)) < 1e-7
