"""Dense kernels against PyTorch (forward, autograd) and a float64 finite-difference check."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cnnc.kernels.dense import dense_backward, dense_forward
from checks import numeric_gradient, rel_err


def make(rng, n, d, u, dtype=np.float32):
    x = rng.standard_normal((n, d)).astype(dtype)
    w = (rng.standard_normal((u, d)) / np.sqrt(d)).astype(dtype)
    b = rng.standard_normal(u).astype(dtype)
    return x, w, b


# 1 and 5 rows take the small-batch loop (with a remainder row), 32 rows take sgemm.
@pytest.mark.parametrize("n", [1, 5, 32])
@pytest.mark.parametrize("relu", [False, True])
def test_dense_against_torch(n, relu):
    rng = np.random.default_rng(n + 10 * relu)
    d, u = 37, 19
    x, w, b = make(rng, n, d, u)
    out = np.empty((n, u), np.float32)
    dense_forward(x, w, b, out, relu)

    xt, wt, bt = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    yt = F.linear(xt, wt, bt)
    if relu:
        yt = torch.relu(yt)
    assert rel_err(out, yt.detach().numpy()) < 1e-4

    dout = rng.standard_normal((n, u)).astype(np.float32)
    dout_before = dout.copy()
    yt.backward(torch.tensor(dout))
    dx0 = rng.standard_normal((n, d)).astype(np.float32)
    dx = dx0.copy()
    dw = rng.standard_normal((u, d)).astype(np.float32)  # overwritten, so garbage in is fine
    db = rng.standard_normal(u).astype(np.float32)
    dense_backward(x, w, out, dout, dx, dw, db, relu, True)
    assert np.array_equal(dout, dout_before)
    assert rel_err(dx - dx0, xt.grad.numpy()) < 1e-4
    assert rel_err(dw, wt.grad.numpy()) < 1e-4
    assert rel_err(db, bt.grad.numpy()) < 1e-4

    dx_untouched = dx0.copy()
    dense_backward(x, w, out, dout, dx_untouched, dw, db, relu, False)
    assert np.array_equal(dx_untouched, dx0)
    assert rel_err(dw, wt.grad.numpy()) < 1e-4


def test_dense_need_dx_false_accepts_empty_dx():
    rng = np.random.default_rng(1)
    x, w, b = make(rng, 3, 4, 2)
    out = np.empty((3, 2), np.float32)
    dense_forward(x, w, b, out, True)
    dw, db = np.empty_like(w), np.empty_like(b)
    dense_backward(x, w, out, np.ones_like(out), np.empty((0, 0), np.float32), dw, db, True, False)
    assert np.isfinite(dw).all()


@pytest.mark.parametrize("relu", [False, True])
def test_dense_finite_differences(relu):
    rng = np.random.default_rng(7)
    n, d, u = 3, 4, 5
    x, w, b = make(rng, n, d, u, np.float64)
    r = rng.standard_normal((n, u))

    def loss(x, w, b):
        out = np.empty((n, u))
        dense_forward(x, w, b, out, relu)
        return (out * r).sum()

    out = np.empty((n, u))
    dense_forward(x, w, b, out, relu)
    dx, dw, db = np.zeros_like(x), np.empty_like(w), np.empty_like(b)
    dense_backward(x, w, out, r, dx, dw, db, relu, True)
    for arr, grad in ((x, dx), (w, dw), (b, db)):
        assert rel_err(grad, numeric_gradient(lambda: loss(x, w, b), arr)) < 1e-6
