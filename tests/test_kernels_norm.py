"""Batchnorm kernels (CNHW and (N,D)) against PyTorch, finite differences, and conv folding."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cnnc.kernels.conv import conv2d_forward
from cnnc.kernels.norm import (
    batchnorm_backward_apply, batchnorm_grad_sums, batchnorm_infer_forward, batchnorm_scale_shift, batchnorm_sums,
    batchnorm_train_apply,
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


def empty_like_nothing(shape, dtype):
    return np.empty((0,) * len(shape), dtype)


def train_forward(x, gamma, beta, rm, rv, eps, momentum, residual=None, relu=False):
    """The three-step training forward of one replica: sums, (no other replica), apply."""
    c = gamma.shape[0]
    sums = np.empty((2, c))
    batchnorm_sums(x, sums)
    count = x.size // c
    out, stats = np.empty_like(x), np.empty((2, c), x.dtype)
    residual = empty_like_nothing(x.shape, x.dtype) if residual is None else residual
    batchnorm_train_apply(x, sums, count, gamma, beta, rm, rv, True, eps, momentum, residual, relu, out, stats)
    return out, stats


def train_backward(x, out, dout, stats, gamma, relu, dx, dresidual, dgamma, dbeta, add_dx=True, add_dresidual=True):
    sums = np.empty((2, gamma.shape[0]))
    batchnorm_grad_sums(x, out, dout, stats, relu, sums, dgamma, dbeta)
    batchnorm_backward_apply(x, out, dout, stats, gamma, sums, x.size // gamma.shape[0], relu, dx, dresidual,
                             add_dx, add_dresidual)


FUSED = [(False, False), (False, True), (True, False), (True, True)]  # (residual, relu) fused into the batchnorm


@pytest.mark.parametrize("add", [True, False], ids=["added into", "written"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("residual, relu", FUSED)
def test_batchnorm_train_against_torch(shape, residual, relu, add):
    """dx and dresidual added into random values, or written over NaN (the first gradient there)."""
    rng = np.random.default_rng(len(shape))
    c = channels(shape)
    x = (2 + 3 * rng.standard_normal(shape)).astype(np.float32)
    r = rng.standard_normal(shape).astype(np.float32) if residual else None
    gamma, beta, rmean, rvar = params(rng, c)
    eps, momentum = 1e-5, 0.1
    rm, rv = rmean.copy(), rvar.copy()
    out, stats = train_forward(x, gamma, beta, rm, rv, eps, momentum, r, relu)

    xt = torch.tensor(to_torch_layout(x).copy(), requires_grad=True)
    rt = torch.tensor(to_torch_layout(r).copy(), requires_grad=True) if residual else None
    gt = torch.tensor(gamma, requires_grad=True)
    bt = torch.tensor(beta, requires_grad=True)
    rmt, rvt = torch.tensor(rmean), torch.tensor(rvar)
    yt = F.batch_norm(xt, rmt, rvt, gt, bt, training=True, momentum=momentum, eps=eps)
    yt = yt + rt if residual else yt
    yt = torch.relu(yt) if relu else yt
    assert rel_err(to_torch_layout(out), yt.detach().numpy()) < 1e-4
    assert rel_err(rm, rmt.numpy()) < 1e-4
    assert rel_err(rv, rvt.numpy()) < 1e-4

    dout = rng.standard_normal(shape).astype(np.float32)
    dout_before = dout.copy()
    yt.backward(torch.tensor(to_torch_layout(dout).copy()))
    dx0, dr0 = rng.standard_normal(shape).astype(np.float32), rng.standard_normal(shape).astype(np.float32)
    if not add:
        dx0[:], dr0[:] = np.nan, np.nan
    dx, dr = dx0.copy(), (dr0.copy() if residual else empty_like_nothing(shape, np.float32))
    dgamma, dbeta = rng.standard_normal(c).astype(np.float32), rng.standard_normal(c).astype(np.float32)
    train_backward(x, out, dout, stats, gamma, relu, dx, dr, dgamma, dbeta, add, add)
    if not add:
        dx0[:], dr0[:] = 0, 0
    assert np.array_equal(dout, dout_before)
    assert rel_err(to_torch_layout(dx - dx0), xt.grad.numpy()) < 1e-4
    if residual:
        assert rel_err(to_torch_layout(dr - dr0), rt.grad.numpy()) < 1e-4
    assert rel_err(dgamma, gt.grad.numpy()) < 1e-4
    assert rel_err(dbeta, bt.grad.numpy()) < 1e-4


def test_batchnorm_sums_of_slices_add_up_to_the_whole():
    """What replicas rely on: the sums of two slices of a batch add up to the whole batch's, and
    applying them normalizes each slice with the whole batch's statistics."""
    rng = np.random.default_rng(7)
    x = (1 + 2 * rng.standard_normal((3, 10, 4, 5))).astype(np.float32)
    gamma, beta, rmean, rvar = params(rng, 3)
    whole, _ = train_forward(x, gamma, beta, rmean.copy(), rvar.copy(), 1e-5, 0.1)
    halves = [np.ascontiguousarray(x[:, :4]), np.ascontiguousarray(x[:, 4:])]
    sums = [np.empty((2, 3)) for _ in halves]
    for part, s in zip(halves, sums):
        batchnorm_sums(part, s)
    total = sums[0] + sums[1]
    for part, n0 in zip(halves, (0, 4)):
        out, stats = np.empty_like(part), np.empty((2, 3), np.float32)
        batchnorm_train_apply(part, total, x.size // 3, gamma, beta, rmean.copy(), rvar.copy(), False, 1e-5, 0.1,
                              np.empty((0, 0, 0, 0), np.float32), False, out, stats)
        assert rel_err(out, whole[:, n0:n0 + part.shape[1]]) < 1e-6


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
@pytest.mark.parametrize("residual, relu", FUSED)
def test_batchnorm_finite_differences(shape, residual, relu):
    rng = np.random.default_rng(5)
    c = channels(shape)
    x = rng.standard_normal(shape)
    res = rng.standard_normal(shape) if residual else None
    gamma, beta, rmean, rvar = params(rng, c, np.float64)
    r = rng.standard_normal(shape)
    eps = 1e-5

    def loss():
        out, _ = train_forward(x, gamma, beta, rmean.copy(), rvar.copy(), eps, 0.1, res, relu)
        return (out * r).sum()

    out, stats = train_forward(x, gamma, beta, rmean.copy(), rvar.copy(), eps, 0.1, res, relu)
    dx, dgamma, dbeta = np.zeros_like(x), np.empty(c), np.empty(c)
    dres = np.zeros_like(x) if residual else empty_like_nothing(shape, x.dtype)
    train_backward(x, out, r, stats, gamma, relu, dx, dres, dgamma, dbeta)
    checked = ((x, dx), (gamma, dgamma), (beta, dbeta)) + (((res, dres),) if residual else ())
    for arr, grad in checked:
        assert rel_err(grad, numeric_gradient(loss, arr)) < 1e-5


def test_batchnorm_scale_shift_folds_into_the_conv():
    """A conv kernel given the scale and shift computes the conv, then the inference batchnorm."""
    rng = np.random.default_rng(9)
    f, c, k = 6, 3, 3
    x = rng.standard_normal((2, c, 7, 7)).astype(np.float32)
    w = rng.standard_normal((f, c, k, k)).astype(np.float32)
    b = rng.standard_normal(f).astype(np.float32)
    gamma, beta, rmean, rvar = params(rng, f)
    scale, shift = np.empty(f, np.float32), np.empty(f, np.float32)
    batchnorm_scale_shift(b, gamma, beta, rmean, rvar, 1e-5, scale, shift)
    out = np.empty((f, 2, 7, 7), np.float32)
    conv2d_forward(np.ascontiguousarray(x.transpose(1, 0, 2, 3)), w, shift, scale, np.empty((0, 0, 0, 0), np.float32),
                   out, 1, 1, 1, 1, 1, 1, 1, False)

    xt = torch.tensor(x)
    ref = F.batch_norm(F.conv2d(xt, torch.tensor(w), torch.tensor(b), padding=1), torch.tensor(rmean),
                       torch.tensor(rvar), torch.tensor(gamma), torch.tensor(beta), training=False, eps=1e-5)
    assert rel_err(out.transpose(1, 0, 2, 3), ref.numpy()) < 1e-5
