"""Batchnorm kernels (CNHW and (N,D)) against PyTorch, finite differences, and conv folding."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cnnc.kernels.norm import (
    batchnorm_backward, batchnorm_infer_forward, batchnorm_train_forward, fold_batchnorm,
)
from checks import numeric_gradient, rel_err


def to_torch_layout(a):
    """CNHW -> NCHW for 4-d; (N,D) stays."""
    return a.transpose(1, 0, 2, 3) if a.ndim == 4 else a


def params(rng, c, dtype=np.float32):
    gamma = (1 + 0.5 * rng.standard_normal(c)).astype(dtype)
    beta = rng.standard_normal(c).astype(dtype)
    rmean = rng.standard_normal(c).astype(dtype)
    rvar = (0.5 + rng.random(c)).astype(dtype)
    return gamma, beta, rmean, rvar


SHAPES = [(3, 4, 5, 6), (8, 5)]  # CNHW (C,N,H,W) and (N,D)


def channels(shape):
    return shape[0] if len(shape) == 4 else shape[1]


@pytest.mark.parametrize("shape", SHAPES)
def test_batchnorm_train_against_torch(shape):
    rng = np.random.default_rng(len(shape))
    c = channels(shape)
    x = (2 + 3 * rng.standard_normal(shape)).astype(np.float32)
    gamma, beta, rmean, rvar = params(rng, c)
    eps, momentum = 1e-5, 0.1
    out, xhat = np.empty_like(x), np.empty_like(x)
    invstd = np.empty(c, np.float32)
    rm, rv = rmean.copy(), rvar.copy()
    batchnorm_train_forward(x, gamma, beta, rm, rv, out, xhat, invstd, eps, momentum)

    xt = torch.tensor(to_torch_layout(x).copy(), requires_grad=True)
    gt = torch.tensor(gamma, requires_grad=True)
    bt = torch.tensor(beta, requires_grad=True)
    rmt, rvt = torch.tensor(rmean), torch.tensor(rvar)
    yt = F.batch_norm(xt, rmt, rvt, gt, bt, training=True, momentum=momentum, eps=eps)
    assert rel_err(to_torch_layout(out), yt.detach().numpy()) < 1e-4
    assert rel_err(rm, rmt.numpy()) < 1e-4
    assert rel_err(rv, rvt.numpy()) < 1e-4

    dout = rng.standard_normal(shape).astype(np.float32)
    dout_before = dout.copy()
    yt.backward(torch.tensor(to_torch_layout(dout).copy()))
    dx0 = rng.standard_normal(shape).astype(np.float32)
    dx = dx0.copy()
    dgamma, dbeta = rng.standard_normal(c).astype(np.float32), rng.standard_normal(c).astype(np.float32)
    batchnorm_backward(dout, xhat, gamma, invstd, dx, dgamma, dbeta)
    assert np.array_equal(dout, dout_before)
    assert rel_err(to_torch_layout(dx - dx0), xt.grad.numpy()) < 1e-4
    assert rel_err(dgamma, gt.grad.numpy()) < 1e-4
    assert rel_err(dbeta, bt.grad.numpy()) < 1e-4


@pytest.mark.parametrize("shape", SHAPES)
def test_batchnorm_infer_against_torch(shape):
    rng = np.random.default_rng(3)
    c = channels(shape)
    x = rng.standard_normal(shape).astype(np.float32)
    gamma, beta, rmean, rvar = params(rng, c)
    out = np.empty_like(x)
    batchnorm_infer_forward(x, gamma, beta, rmean, rvar, out, 1e-5)
    ref = F.batch_norm(torch.tensor(to_torch_layout(x).copy()), torch.tensor(rmean), torch.tensor(rvar),
                       torch.tensor(gamma), torch.tensor(beta), training=False, eps=1e-5)
    assert rel_err(to_torch_layout(out), ref.numpy()) < 1e-4


@pytest.mark.parametrize("shape", [(2, 3, 2, 2), (4, 3)])
def test_batchnorm_finite_differences(shape):
    rng = np.random.default_rng(5)
    c = channels(shape)
    x = rng.standard_normal(shape)
    gamma, beta, rmean, rvar = params(rng, c, np.float64)
    r = rng.standard_normal(shape)
    eps = 1e-5

    def forward(x, gamma, beta):
        out, xhat, invstd = np.empty_like(x), np.empty_like(x), np.empty(c)
        batchnorm_train_forward(x, gamma, beta, rmean.copy(), rvar.copy(), out, xhat, invstd, eps, 0.1)
        return out, xhat, invstd

    out, xhat, invstd = forward(x, gamma, beta)
    dx, dgamma, dbeta = np.zeros_like(x), np.empty(c), np.empty(c)
    batchnorm_backward(r, xhat, gamma, invstd, dx, dgamma, dbeta)
    for arr, grad in ((x, dx), (gamma, dgamma), (beta, dbeta)):
        numeric = numeric_gradient(lambda: (forward(x, gamma, beta)[0] * r).sum(), arr)
        assert rel_err(grad, numeric) < 1e-5


def test_fold_batchnorm_matches_conv_then_batchnorm():
    rng = np.random.default_rng(9)
    f, c, k = 6, 3, 3
    x = rng.standard_normal((2, c, 7, 7)).astype(np.float32)
    w = rng.standard_normal((f, c, k, k)).astype(np.float32)
    b = rng.standard_normal(f).astype(np.float32)
    gamma, beta, rmean, rvar = params(rng, f)
    w_out, b_out = np.empty_like(w), np.empty_like(b)
    fold_batchnorm(w, b, gamma, beta, rmean, rvar, 1e-5, w_out, b_out)

    xt = torch.tensor(x)
    ref = F.batch_norm(F.conv2d(xt, torch.tensor(w), torch.tensor(b), padding=1), torch.tensor(rmean),
                       torch.tensor(rvar), torch.tensor(gamma), torch.tensor(beta), training=False, eps=1e-5)
    folded = F.conv2d(xt, torch.tensor(w_out), torch.tensor(b_out), padding=1)
    assert rel_err(folded.numpy(), ref.numpy()) < 1e-4
