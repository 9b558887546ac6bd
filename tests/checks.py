"""Measures the kernel and model tests share: relative error and central finite differences."""
from __future__ import annotations

import numpy as np


def rel_err(a, b) -> float:
    """Largest absolute difference relative to the reference's largest magnitude."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def numeric_gradient(loss, arr: np.ndarray, h: float = 1e-6) -> np.ndarray:
    """d loss() / d arr by central differences, one element at a time; arr is restored."""
    grad = np.empty_like(arr)
    for i in np.ndindex(arr.shape):
        old = arr[i]
        arr[i] = old + h
        up = loss()
        arr[i] = old - h
        down = loss()
        arr[i] = old
        grad[i] = (up - down) / (2 * h)
    return grad
