"""What the kernel and model tests share: relative error, central finite differences, the
padding of one axis, and moving arrays between PyTorch's NCHW and cnnc's CNHW."""
from __future__ import annotations

import math

import numpy as np


def split_scale(w: np.ndarray, seed: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """(w / s, s) for a random per-filter scale s of either sign (a folded batchnorm's): a conv
    kernel given both must give the conv with w, which is the reference to check it against."""
    rng = np.random.default_rng(seed)
    s = (rng.uniform(0.5, 2.0, w.shape[0]) * rng.choice([-1.0, 1.0], w.shape[0])).astype(w.dtype)
    return (w / s.reshape((-1,) + (1,) * (w.ndim - 1))).astype(w.dtype), s


def rel_err(a, b) -> float:
    """Largest absolute difference relative to the reference's largest magnitude."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def central_difference(loss, arr: np.ndarray, index, h: float) -> float:
    """d loss() / d arr[index] by a central difference; arr[index] is restored."""
    old = arr[index]
    arr[index] = old + h
    up = loss()
    arr[index] = old - h
    down = loss()
    arr[index] = old
    return (up - down) / (2 * h)


def numeric_gradient(loss, arr: np.ndarray, h: float = 1e-6) -> np.ndarray:
    """d loss() / d arr by central differences, one element at a time; arr is restored."""
    grad = np.empty_like(arr)
    for i in np.ndindex(arr.shape):
        grad[i] = central_difference(loss, arr, i, h)
    return grad


def check_backward_adds(backward, out, torch_out, torch_in, rng) -> None:
    """backward(out, dout, dx) against PyTorch's autograd: dout is left alone and the gradient
    is ADDED into a dx that already holds random values (how fan-out gradients sum)."""
    import torch

    dout = rng.standard_normal(out.shape).astype(out.dtype)
    dout_before = dout.copy()
    torch_out.backward(torch.tensor(dout))
    dx0 = rng.standard_normal(out.shape).astype(out.dtype)
    dx = dx0.copy()
    backward(out, dout, dx)
    assert np.array_equal(dout, dout_before)
    assert rel_err(dx - dx0, torch_in.grad.numpy()) < 1e-4


def pads_1d(mode, size, k, s):
    """(pad_before, out_size) along one axis; `mode` is 'valid', 'same', 'full' or an int."""
    if mode == "valid":
        return 0, (size - k) // s + 1
    if mode == "same":
        out = math.ceil(size / s)
        return max((out - 1) * s + k - size, 0) // 2, out  # the extra padding goes after
    p = k - 1 if mode == "full" else mode
    return p, (size + 2 * p - k) // s + 1


def cnhw(t):
    """NCHW torch tensor -> CNHW numpy array."""
    return np.ascontiguousarray(t.detach().numpy().transpose(1, 0, 2, 3))


def nchw(a):
    """CNHW numpy array -> NCHW torch tensor."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(a.transpose(1, 0, 2, 3)))
