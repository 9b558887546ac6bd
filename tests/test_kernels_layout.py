"""Layout kernels: NCHW <-> CNHW, flatten (PyTorch order) and channel concat."""
import numpy as np
import torch

from cnnc.kernels.layout import (
    cnhw_to_nchw, concat_backward, concat_forward, flatten_backward, flatten_forward, nchw_to_cnhw,
)


def test_nchw_cnhw_round_trip():
    x = np.random.default_rng(0).standard_normal((3, 4, 5, 6)).astype(np.float32)
    cnhw = np.empty((4, 3, 5, 6), np.float32)
    nchw_to_cnhw(x, cnhw)
    np.testing.assert_array_equal(cnhw, x.transpose(1, 0, 2, 3))
    back = np.empty_like(x)
    cnhw_to_nchw(cnhw, back)
    np.testing.assert_array_equal(back, x)


def test_flatten_matches_torch_flatten_of_nchw():
    rng = np.random.default_rng(1)
    c, n, h, w = 4, 3, 2, 5
    x = rng.standard_normal((c, n, h, w)).astype(np.float32)
    out = np.empty((n, c * h * w), np.float32)
    flatten_forward(x, out)
    ref = torch.flatten(torch.tensor(x.transpose(1, 0, 2, 3).copy()), 1).numpy()
    np.testing.assert_array_equal(out, ref)

    dout = rng.standard_normal(out.shape).astype(np.float32)
    dx0 = rng.standard_normal(x.shape).astype(np.float32)
    dx = dx0.copy()
    flatten_backward(dout, dx)
    expect = dout.reshape(n, c, h, w).transpose(1, 0, 2, 3)
    np.testing.assert_allclose(dx, dx0 + expect, rtol=1e-6)


def test_concat_cnhw():
    rng = np.random.default_rng(2)
    a = rng.standard_normal((2, 3, 4, 4)).astype(np.float32)
    b = rng.standard_normal((5, 3, 4, 4)).astype(np.float32)
    out = np.empty((7, 3, 4, 4), np.float32)
    concat_forward(a, out, 0)
    concat_forward(b, out, 2)
    np.testing.assert_array_equal(out, np.concatenate([a, b]))

    dout = rng.standard_normal(out.shape).astype(np.float32)
    db0 = rng.standard_normal(b.shape).astype(np.float32)
    db = db0.copy()
    concat_backward(dout, db, 2)
    np.testing.assert_allclose(db, db0 + dout[2:], rtol=1e-6)


def test_concat_vectors():
    rng = np.random.default_rng(3)
    a = rng.standard_normal((3, 4)).astype(np.float32)
    b = rng.standard_normal((3, 6)).astype(np.float32)
    out = np.empty((3, 10), np.float32)
    concat_forward(a, out, 0)
    concat_forward(b, out, 4)
    np.testing.assert_array_equal(out, np.concatenate([a, b], axis=1))
    dout = rng.standard_normal(out.shape).astype(np.float32)
    db = np.ones_like(b)
    concat_backward(dout, db, 4)
    np.testing.assert_allclose(db, 1 + dout[:, 4:], rtol=1e-6)
