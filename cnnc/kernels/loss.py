"""Softmax over the last axis, its backward, and the fused softmax + cross-entropy loss; the same
over the channels of each pixel of a C x N x H x W image, for a loss per pixel (segmentation)."""
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


# Per pixel: the classes are the channels of a C x N x H x W activation, seen as (C, M) with
# M = N*H*W pixels; labels are (N, H, W), seen as (M,). The loops run over contiguous pixels.


@njit(cache=True, nogil=True, fastmath=FAST)
def _softmax_channels(x2, o2):
    """o2[:, m] = softmax(x2[:, m]) for every pixel m of (C, M); returns the pixels' maxima and
    float64 sums of exp (M,)."""
    C, M = x2.shape
    top = np.empty(M, x2.dtype)
    sums = np.zeros(M)
    for m in range(M):
        top[m] = x2[0, m]
    for c in range(1, C):
        for m in range(M):
            top[m] = max(top[m], x2[c, m])
    for c in range(C):
        for m in range(M):
            e = np.exp(x2[c, m] - top[m])
            o2[c, m] = e
            sums[m] += e
    for c in range(C):
        for m in range(M):
            o2[c, m] *= o2.dtype.type(1.0 / sums[m])
    return top, sums


@njit(cache=True, nogil=True, fastmath=FAST)
def softmax_channels_forward(x, out):
    """out = softmax(x) over the channels of each pixel, x and out C x N x H x W."""
    C = x.shape[0]
    _softmax_channels(x.reshape(C, -1), out.reshape(C, -1))


@njit(cache=True, nogil=True, fastmath=FAST)
def softmax_channels_backward(out, dout, dx):
    """dx += out * (dout - sum over channels of dout * out), per pixel."""
    C = out.shape[0]
    o2, g2, dx2 = out.reshape(C, -1), dout.reshape(C, -1), dx.reshape(C, -1)
    M = o2.shape[1]
    s = np.zeros(M)
    for c in range(C):
        for m in range(M):
            s[m] += g2[c, m] * o2[c, m]
    for c in range(C):
        for m in range(M):
            dx2[c, m] += o2[c, m] * (g2[c, m] - o2.dtype.type(s[m]))


@njit(cache=True, nogil=True, fastmath=FAST)
def pixel_softmax_cross_entropy(logits, labels, probs, dlogits, total, smoothing=0.0):
    """Cross-entropy of the softmax over channels of logits (C,N,H,W) against int labels (N,H,W),
    summed over the pixels in float64 and divided by `total`, the pixels of the whole step
    (N*H*W for a step of one replica): PyTorch's F.cross_entropy on (N,C,H,W), reduction 'mean'.
    With label smoothing s each pixel's target is q = (1 - s) onehot(label) + s / C, as
    F.cross_entropy(label_smoothing=s).

    Writes probs and dlogits = (probs - q) / total (overwritten)."""
    C = logits.shape[0]
    x2, p2, d2 = logits.reshape(C, -1), probs.reshape(C, -1), dlogits.reshape(C, -1)
    y = labels.reshape(-1)
    M = x2.shape[1]
    top, sums = _softmax_channels(x2, p2)
    inv_n = probs.dtype.type(1.0 / total)
    spread = smoothing / C  # the target's share of every class
    mixed = np.zeros(M)  # sum_c q_c logits_c of each pixel, but for the label's (1 - s) share
    for c in range(C):
        for m in range(M):
            d2[c, m] = (p2[c, m] - spread) * inv_n
            mixed[m] += spread * x2[c, m]
    loss = 0.0
    for m in range(M):
        k = y[m]
        if k < 0 or k >= C:
            raise ValueError("pixel_softmax_cross_entropy: label out of range")
        d2[k, m] -= (1.0 - smoothing) * inv_n
        loss += np.log(sums[m]) + top[m] - mixed[m] - (1.0 - smoothing) * x2[k, m]
    return loss / total


@njit(cache=True, nogil=True, fastmath=FAST)
def pixel_cross_entropy_of_probabilities(probs, labels, dprobs, total, smoothing=0.0):
    """cross_entropy_of_probabilities per pixel: probs (C,N,H,W) from a softmax over channels that
    was not fused with its loss, labels (N,H,W), `total` the pixels of the whole step, q as in
    pixel_softmax_cross_entropy.

    Writes dprobs = -q / (total * probs) (overwritten); probabilities clamped at 1e-30."""
    C = probs.shape[0]
    p2, d2 = probs.reshape(C, -1), dprobs.reshape(C, -1)
    y = labels.reshape(-1)
    spread = smoothing / C
    loss = 0.0
    for c in range(C):
        for m in range(p2.shape[1]):
            if spread == 0.0:
                d2[c, m] = 0.0
            else:
                p = max(p2[c, m], 1e-30)
                d2[c, m] = -spread / (total * p)
                loss -= spread * np.log(p)
    for m in range(p2.shape[1]):
        k = y[m]
        if k < 0 or k >= C:
            raise ValueError("pixel_cross_entropy_of_probabilities: label out of range")
        p = max(p2[k, m], 1e-30)
        loss -= (1.0 - smoothing) * np.log(p)
        d2[k, m] -= (1.0 - smoothing) / (total * p)
    return loss / total
