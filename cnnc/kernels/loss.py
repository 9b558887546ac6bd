"""Softmax over the last axis, its backward, and the fused softmax + cross-entropy loss."""
import numpy as np
from numba import njit

# fastmath without nnan/ninf: reductions may be reordered, but inf and NaN keep their meaning.
FAST = {"nsz", "arcp", "contract", "reassoc"}


@njit(cache=True, nogil=True, fastmath=FAST)
def _softmax_rows(x, out):
    """out[r] = exp(x[r] - max) / sum, row by row; returns the float64 row sums of exp (N,)."""
    R, K = x.shape
    sums = np.empty(R)
    for r in range(R):
        xr, orow = x[r], out[r]
        m = xr[0]
        for k in range(1, K):
            m = max(m, xr[k])
        s = 0.0
        for k in range(K):
            e = np.exp(xr[k] - m)
            orow[k] = e
            s += e
        inv = orow.dtype.type(1.0 / s)
        for k in range(K):
            orow[k] *= inv
        sums[r] = s
    return sums


@njit(cache=True, nogil=True, fastmath=FAST)
def softmax_forward(x, out):
    """out = softmax(x) over the last axis (any ndim)."""
    K = x.shape[-1]
    _softmax_rows(x.reshape(-1, K), out.reshape(-1, K))


@njit(cache=True, nogil=True, fastmath=FAST)
def softmax_backward(out, dout, dx):
    """dx += out * (dout - sum(dout * out)) over the last axis."""
    K = out.shape[-1]
    o2, g2, dx2 = out.reshape(-1, K), dout.reshape(-1, K), dx.reshape(-1, K)
    for r in range(o2.shape[0]):
        s = 0.0
        for k in range(K):
            s += g2[r, k] * o2[r, k]
        t = o2.dtype.type(s)
        for k in range(K):
            dx2[r, k] += o2[r, k] * (g2[r, k] - t)


@njit(cache=True, nogil=True, fastmath=FAST)
def softmax_cross_entropy(logits, labels, probs, dlogits, total, smoothing=0.0):
    """Cross-entropy of softmax(logits) (N,K) against int labels (N,), summed in float64 and
    divided by `total`, the images of the whole step (N for a step of one replica).

    With label smoothing s the target is q = (1 - s) onehot(label) + s / K, as PyTorch's
    F.cross_entropy(label_smoothing=s): the loss of an image is logsumexp - sum_k q_k logits_k.
    Writes probs = softmax(logits) and dlogits = (probs - q) / total (overwritten).
    """
    N, K = logits.shape
    sums = _softmax_rows(logits, probs)
    inv_n = probs.dtype.type(1.0 / total)
    spread = smoothing / K  # the target's share of every class
    loss = 0.0
    for n in range(N):
        y = labels[n]
        if y < 0 or y >= K:
            raise ValueError("softmax_cross_entropy: label out of range")
        m = logits[n, 0]
        for k in range(1, K):
            m = max(m, logits[n, k])
        mixed = 0.0  # sum_k q_k logits_k
        for k in range(K):
            dlogits[n, k] = (probs[n, k] - spread) * inv_n
            mixed += spread * logits[n, k]
        dlogits[n, y] -= (1.0 - smoothing) * inv_n
        mixed += (1.0 - smoothing) * logits[n, y]
        loss += np.log(sums[n]) + m - mixed
    return loss / total


@njit(cache=True, nogil=True, fastmath=FAST)
def cross_entropy_of_probabilities(probs, labels, dprobs, total, smoothing=0.0):
    """The sum of -sum_k q_k log(probs[n, k]) over `total`, the images of the whole step, for a
    softmax output that was not fused with its loss; q = (1 - s) onehot(label) + s / K with the
    label smoothing s (q is the one-hot label without it).

    Writes dprobs = -q / (total * probs) (overwritten). Probabilities are clamped at 1e-30
    so that a probability rounded to zero gives a large, finite loss.
    """
    N, K = probs.shape
    spread = smoothing / K
    loss = 0.0
    for n in range(N):
        y = labels[n]
        if y < 0 or y >= K:
            raise ValueError("cross_entropy_of_probabilities: label out of range")
        for k in range(K):
            q = spread + (1.0 - smoothing if k == y else 0.0)
            if q == 0.0:
                dprobs[n, k] = 0.0
                continue
            p = max(probs[n, k], 1e-30)
            loss -= q * np.log(p)
            dprobs[n, k] = -q / (total * p)
    return loss / total
