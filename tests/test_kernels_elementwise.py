"""Elementwise kernels (relu, sigmoid, tanh, dropout, add) against PyTorch and their contracts."""
import numpy as np
import pytest
import torch

from cnnc.kernels.elementwise import (
    add_forward, add_into, dropout_backward, dropout_forward, relu_backward, relu_forward,
    sigmoid_backward, sigmoid_forward, tanh_backward, tanh_forward,
)
from checks import check_backward_adds, rel_err


OPS = {
    "relu": (relu_forward, relu_backward, torch.relu),
    "sigmoid": (sigmoid_forward, sigmoid_backward, torch.sigmoid),
    "tanh": (tanh_forward, tanh_backward, torch.tanh),
}
SHAPES = [(3, 2, 5, 4), (6, 7)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", sorted(OPS))
def test_activation_against_torch(name, shape):
    fwd, bwd, ref = OPS[name]
    rng = np.random.default_rng(len(shape))
    x = (3 * rng.standard_normal(shape)).astype(np.float32)
    out = np.empty_like(x)
    fwd(x, out)
    xt = torch.tensor(x, requires_grad=True)
    yt = ref(xt)
    assert rel_err(out, yt.detach().numpy()) < 1e-4

    check_backward_adds(bwd, out, yt, xt, rng)

    inplace = x.copy()
    fwd(inplace, inplace)
    assert np.array_equal(inplace, out)


def test_sigmoid_extremes_do_not_overflow():
    x = np.array([-1000.0, -100.0, -20.0, 0.0, 20.0, 100.0, 1000.0], np.float32)
    out = np.empty_like(x)
    sigmoid_forward(x, out)
    assert np.isfinite(out).all()
    assert rel_err(out, torch.sigmoid(torch.tensor(x)).numpy()) < 1e-6
    assert out[1] > 0  # sigmoid(-100) = 3.7e-44, a float32 subnormal, not 0 by cancellation


def run_dropout(x, rate, seed, start=0):
    """Dropout of a CNHW (C, n, H, W) or (n, D) array, seen as (C, n, P) as the generated code does."""
    planes = (x.shape[0], x.shape[1], -1) if x.ndim == 4 else (1,) + x.shape
    out, mask = np.empty_like(x), np.empty_like(x)
    dropout_forward(x.reshape(planes), out.reshape(planes), mask.reshape(planes), rate, seed, start)
    return out, mask


def test_dropout_deterministic_rate_and_scaling():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 8, 16, 16)).astype(np.float32)
    rate = 0.3
    out, mask = run_dropout(x, rate, 42)
    out2, mask2 = run_dropout(x, rate, 42)
    assert np.array_equal(mask, mask2) and np.array_equal(out, out2)
    _, mask3 = run_dropout(x, rate, 43)
    assert not np.array_equal(mask, mask3)

    scale = np.float32(1 / (1 - rate))
    assert set(np.unique(mask)) == {0, scale}
    kept = (mask != 0).mean()
    sd = np.sqrt(rate * (1 - rate) / x.size)
    assert abs(kept - (1 - rate)) < 5 * sd
    assert abs((mask3 != 0).mean() - (1 - rate)) < 5 * sd
    agree = ((mask != 0) == (mask3 != 0)).mean()  # independent draws agree w.p. p^2 + q^2
    p_agree = rate**2 + (1 - rate) ** 2
    assert abs(agree - p_agree) < 5 * np.sqrt(p_agree * (1 - p_agree) / x.size)
    assert np.array_equal(out, x * mask)
    # inverted dropout keeps the mean: E[mask] = 1
    assert abs(mask.mean() - 1) < 5 * sd * scale

    dout = rng.standard_normal(x.shape).astype(np.float32)
    dx0 = rng.standard_normal(x.shape).astype(np.float32)
    dx = dx0.copy()
    dropout_backward(mask, dout, dx)
    np.testing.assert_allclose(dx, dx0 + dout * mask, rtol=1e-6, atol=1e-6)  # FMA rounding


def test_dropout_vectors_and_edge_rates():
    x = np.random.default_rng(1).standard_normal((5, 300)).astype(np.float32)
    out, mask = run_dropout(x, 0.0, 3)
    assert np.array_equal(out, x) and (mask == 1).all()
    out, mask = run_dropout(x, 1.0, 3)
    assert (out == 0).all() and (mask == 0).all()
    out, mask = run_dropout(x, 0.5, 3)
    assert set(np.unique(mask)) == {0, 2}
    assert 0.45 < (mask != 0).mean() < 0.55


@pytest.mark.parametrize("shape", [(3, 10, 4, 4), (10, 7)])
def test_dropout_masks_follow_the_image_not_the_slice(shape):
    """A slice of a batch, told where it starts, draws exactly the masks the whole batch gives those
    images: the masks do not depend on how lanes or processes cut the batch."""
    x = np.random.default_rng(4).standard_normal(shape).astype(np.float32)
    axis = 1 if len(shape) == 4 else 0
    _, whole = run_dropout(x, 0.5, 9)
    for lo, hi in [(0, 3), (3, 4), (4, 10)]:
        part = np.ascontiguousarray(x[:, lo:hi] if axis else x[lo:hi])
        _, mask = run_dropout(part, 0.5, 9, start=lo)
        assert np.array_equal(mask, whole[:, lo:hi] if axis else whole[lo:hi])
    _, shifted = run_dropout(x, 0.5, 9, start=1)
    assert not np.array_equal(shifted, whole)


@pytest.mark.parametrize("shape", SHAPES)
def test_add(shape):
    rng = np.random.default_rng(2)
    a, b = (rng.standard_normal(shape).astype(np.float32) for _ in range(2))
    out = np.empty_like(a)
    add_forward(a, b, out)
    np.testing.assert_array_equal(out, a + b)
    dst = a.copy()
    add_into(dst, b)
    np.testing.assert_array_equal(dst, a + b)
    np.testing.assert_array_equal(b, b.copy())
