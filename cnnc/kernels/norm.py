"""Batch normalization kernels: per channel of CNHW (C,N,H,W) input, or per column of (N,D) input."""
import numpy as np
from numba import njit

# fastmath without nnan/ninf: reductions may be reordered, but inf and NaN keep their meaning.
FAST = {"nsz", "arcp", "contract", "reassoc"}

# Each public kernel views its input as a 2-d array x2 = x.reshape(x.shape[0], -1):
# for CNHW input the rows of x2 are the channels (contiguous blocks of N*H*W values),
# for (N,D) input the columns of x2 are the channels. `x.ndim` is a compile-time constant,
# so every public kernel compiles to one of the two loops below.


@njit(cache=True, nogil=True, fastmath=FAST)
def _stats_update(c, s, q, m, running_mean, running_var, momentum):
    """Mean and biased variance from the float64 sums s, q of m values; update running stats."""
    mean = s / m
    var = max(q / m - mean * mean, 0.0)
    unbiased = var * m / (m - 1) if m > 1 else var
    running_mean[c] = (1.0 - momentum) * running_mean[c] + momentum * mean
    running_var[c] = (1.0 - momentum) * running_var[c] + momentum * unbiased
    return mean, var


@njit(cache=True, nogil=True, fastmath=FAST)
def _train_rows(x, gamma, beta, running_mean, running_var, out, xhat, invstd, eps, momentum):
    C, M = x.shape
    T = x.dtype.type
    for c in range(C):
        xc = x[c]
        s = 0.0
        q = 0.0
        for i in range(M):
            v = np.float64(xc[i])
            s += v
            q += v * v
        mean, var = _stats_update(c, s, q, M, running_mean, running_var, momentum)
        istd = 1.0 / np.sqrt(var + eps)
        invstd[c] = istd
        mu, k, g, b = T(mean), T(istd), gamma[c], beta[c]
        hc, oc = xhat[c], out[c]
        for i in range(M):
            h = (xc[i] - mu) * k
            hc[i] = h
            oc[i] = g * h + b


@njit(cache=True, nogil=True, fastmath=FAST)
def _train_cols(x, gamma, beta, running_mean, running_var, out, xhat, invstd, eps, momentum):
    N, D = x.shape
    T = x.dtype.type
    s = np.zeros(D)
    q = np.zeros(D)
    for n in range(N):
        for d in range(D):
            v = np.float64(x[n, d])
            s[d] += v
            q[d] += v * v
    mu = np.empty(D, x.dtype)
    k = np.empty(D, x.dtype)
    for d in range(D):
        mean, var = _stats_update(d, s[d], q[d], N, running_mean, running_var, momentum)
        istd = 1.0 / np.sqrt(var + eps)
        invstd[d] = istd
        mu[d] = T(mean)
        k[d] = T(istd)
    for n in range(N):
        for d in range(D):
            h = (x[n, d] - mu[d]) * k[d]
            xhat[n, d] = h
            out[n, d] = gamma[d] * h + beta[d]


@njit(cache=True, nogil=True, fastmath=FAST)
def batchnorm_train_forward(x, gamma, beta, running_mean, running_var, out, xhat, invstd, eps, momentum):
    """Normalize with batch statistics (biased variance); write out, xhat (same shape as x) and
    invstd (C,); running = (1-momentum)*running + momentum*batch (unbiased variance), as PyTorch."""
    x2 = x.reshape(x.shape[0], -1)
    out2 = out.reshape(out.shape[0], -1)
    xhat2 = xhat.reshape(xhat.shape[0], -1)
    if x.ndim == 2:
        _train_cols(x2, gamma, beta, running_mean, running_var, out2, xhat2, invstd, eps, momentum)
    else:
        _train_rows(x2, gamma, beta, running_mean, running_var, out2, xhat2, invstd, eps, momentum)


@njit(cache=True, nogil=True, fastmath=FAST)
def _backward_rows(dout, xhat, gamma, invstd, dx, dgamma, dbeta):
    C, M = dout.shape
    T = dout.dtype.type
    for c in range(C):
        gc, hc, dxc = dout[c], xhat[c], dx[c]
        sg = 0.0
        sgh = 0.0
        for i in range(M):
            g = np.float64(gc[i])
            sg += g
            sgh += g * hc[i]
        dbeta[c] = sg
        dgamma[c] = sgh
        k = gamma[c] * invstd[c]
        a, b1, b2 = T(k), T(k * sg / M), T(k * sgh / M)
        for i in range(M):
            dxc[i] += a * gc[i] - b1 - b2 * hc[i]


@njit(cache=True, nogil=True, fastmath=FAST)
def _backward_cols(dout, xhat, gamma, invstd, dx, dgamma, dbeta):
    N, D = dout.shape
    sg = np.zeros(D)
    sgh = np.zeros(D)
    for n in range(N):
        for d in range(D):
            g = np.float64(dout[n, d])
            sg[d] += g
            sgh[d] += g * xhat[n, d]
    a = np.empty(D, dout.dtype)
    b1 = np.empty(D, dout.dtype)
    b2 = np.empty(D, dout.dtype)
    for d in range(D):
        dbeta[d] = sg[d]
        dgamma[d] = sgh[d]
        k = gamma[d] * invstd[d]
        a[d] = k
        b1[d] = k * sg[d] / N
        b2[d] = k * sgh[d] / N
    for n in range(N):
        for d in range(D):
            dx[n, d] += a[d] * dout[n, d] - b1[d] - b2[d] * xhat[n, d]


@njit(cache=True, nogil=True, fastmath=FAST)
def batchnorm_backward(dout, xhat, gamma, invstd, dx, dgamma, dbeta):
    """dbeta = sum dout, dgamma = sum dout*xhat (overwritten);
    dx += gamma*invstd * (dout - mean(dout) - xhat*mean(dout*xhat))."""
    dout2 = dout.reshape(dout.shape[0], -1)
    xhat2 = xhat.reshape(xhat.shape[0], -1)
    dx2 = dx.reshape(dx.shape[0], -1)
    if dout.ndim == 2:
        _backward_cols(dout2, xhat2, gamma, invstd, dx2, dgamma, dbeta)
    else:
        _backward_rows(dout2, xhat2, gamma, invstd, dx2, dgamma, dbeta)


@njit(cache=True, nogil=True, fastmath=FAST)
def _scale_shift(gamma, beta, running_mean, running_var, eps, dtype):
    """Per channel: scale = gamma/sqrt(var+eps), shift = beta - mean*scale."""
    C = gamma.shape[0]
    scale = np.empty(C, dtype)
    shift = np.empty(C, dtype)
    for c in range(C):
        s = gamma[c] / np.sqrt(np.float64(running_var[c]) + eps)
        scale[c] = s
        shift[c] = beta[c] - running_mean[c] * s
    return scale, shift


@njit(cache=True, nogil=True, fastmath=FAST)
def batchnorm_infer_forward(x, gamma, beta, running_mean, running_var, out, eps):
    """out = (x - running_mean) * gamma / sqrt(running_var + eps) + beta, per channel."""
    scale, shift = _scale_shift(gamma, beta, running_mean, running_var, eps, x.dtype)
    x2 = x.reshape(x.shape[0], -1)
    out2 = out.reshape(out.shape[0], -1)
    R, M = x2.shape
    if x.ndim == 2:
        for n in range(R):
            for d in range(M):
                out2[n, d] = x2[n, d] * scale[d] + shift[d]
    else:
        for c in range(R):
            s, t = scale[c], shift[c]
            for i in range(M):
                out2[c, i] = x2[c, i] * s + t


@njit(cache=True, nogil=True, fastmath=FAST)
def fold_batchnorm(w, b, gamma, beta, running_mean, running_var, eps, w_out, b_out):
    """Fold an inference batchnorm into the preceding conv (F,C,Kh,Kw) or dense (U,D) layer:
    w_out = w * s[:, None...], b_out = (b - mean) * s + beta, s = gamma / sqrt(var + eps)."""
    w2 = w.reshape(w.shape[0], -1)
    wo2 = w_out.reshape(w_out.shape[0], -1)
    F, K = w2.shape
    for f in range(F):
        s = gamma[f] / np.sqrt(np.float64(running_var[f]) + eps)
        b_out[f] = (np.float64(b[f]) - running_mean[f]) * s + beta[f]
        sf = w2.dtype.type(s)
        for k in range(K):
            wo2[f, k] = w2[f, k] * sf
