"""Batch normalization kernels: per channel of CNHW (C,N,H,W) input, or per column of (N,D) input."""
import numpy as np
from numba import njit

# fastmath without nnan/ninf: reductions may be reordered, but inf and NaN keep their meaning.
FAST = {"nsz", "arcp", "contract", "reassoc"}

# Training runs in three steps per pass, so that replicas (lanes, processes) can add up their
# per-channel sums in between: batchnorm_sums -> replicas.sum -> batchnorm_train_apply forward,
# batchnorm_grad_sums -> replicas.sum -> batchnorm_backward_apply backward. The normalized
# values are not stored: the backward recomputes them from x and the (mean, invstd) in `stats`,
# which saves writing and reading one activation-sized array. A ReLU and a residual input
# (batchnorm -> add -> relu in a ResNet block) run in the same loops.


@njit(cache=True, nogil=True, fastmath=FAST)
def _by_channel(x):
    """x viewed as (A, C, B) with the channels on the middle axis: CNHW (C, N, H, W) as
    (1, C, N*H*W), one contiguous run per channel; (N, D) as (N, D, 1)."""
    if x.ndim == 2:
        return x.reshape(x.shape[0], x.shape[1], 1)
    return x.reshape(1, x.shape[0], x.size // x.shape[0])


@njit(cache=True, nogil=True, fastmath=FAST)
def batchnorm_sums(x, sums):
    """sums[0, c] = the sum of channel c of x, sums[1, c] = the sum of its squares (float64, overwritten)."""
    x3 = _by_channel(x)
    A, C, B = x3.shape
    for c in range(C):
        sums[0, c] = 0.0
        sums[1, c] = 0.0
    for a in range(A):
        for c in range(C):
            xc = x3[a, c]
            s = 0.0
            q = 0.0
            for b in range(B):
                v = np.float64(xc[b])
                s += v
                q += v * v
            sums[0, c] += s
            sums[1, c] += q


@njit(cache=True, nogil=True, fastmath=FAST)
def batchnorm_train_apply(x, sums, count, gamma, beta, running_mean, running_var, update_running, eps, momentum,
                          residual, relu, out, stats):
    """out = gamma * (x - mean) * invstd + beta, plus `residual` unless it is empty, then ReLU if
    `relu`; mean and biased variance from the step's `sums` (batchnorm_sums, added up over the
    replicas) of `count` values per channel. Writes stats[0] = mean, stats[1] = invstd for the
    backward; with `update_running`, running = (1-momentum)*running + momentum*batch (unbiased
    variance), as PyTorch."""
    x3, o3 = _by_channel(x), _by_channel(out)
    add = residual.size != 0
    r3 = _by_channel(residual) if add else x3
    A, C, B = x3.shape
    T = x.dtype.type
    for c in range(C):
        mean = sums[0, c] / count
        var = max(sums[1, c] / count - mean * mean, 0.0)
        if update_running:
            unbiased = var * count / (count - 1) if count > 1 else var
            running_mean[c] = (1.0 - momentum) * running_mean[c] + momentum * mean
            running_var[c] = (1.0 - momentum) * running_var[c] + momentum * unbiased
        istd = 1.0 / np.sqrt(var + eps)
        stats[0, c] = mean
        stats[1, c] = istd
        m, k, beta_c = T(mean), T(gamma[c] * istd), T(beta[c])
        zero = T(0)
        for a in range(A):
            xc, oc, rc = x3[a, c], o3[a, c], r3[a, c]
            if add and relu:
                for b in range(B):
                    oc[b] = max((xc[b] - m) * k + beta_c + rc[b], zero)
            elif add:
                for b in range(B):
                    oc[b] = (xc[b] - m) * k + beta_c + rc[b]
            elif relu:
                for b in range(B):
                    oc[b] = max((xc[b] - m) * k + beta_c, zero)
            else:
                for b in range(B):
                    oc[b] = (xc[b] - m) * k + beta_c


@njit(cache=True, nogil=True, fastmath=FAST)
def batchnorm_grad_sums(x, out, dout, stats, relu, sums, dgamma, dbeta):
    """This replica's sums[0, c] = sum of g, sums[1, c] = sum of g * xhat (float64), where g is
    dout (zero where a fused ReLU's out <= 0) and xhat = (x - mean) * invstd; dbeta and dgamma
    get the same sums (overwritten): the replicas' parameter gradients are added up later."""
    x3, o3, g3 = _by_channel(x), _by_channel(out), _by_channel(dout)
    A, C, B = x3.shape
    zero = x.dtype.type(0)
    for c in range(C):
        mean, istd = stats[0, c], stats[1, c]
        sg = 0.0
        sgh = 0.0
        for a in range(A):
            xc, oc, gc = x3[a, c], o3[a, c], g3[a, c]
            for b in range(B):
                g = gc[b] if not relu or oc[b] > zero else zero
                sg += g
                sgh += g * ((xc[b] - mean) * istd)
        sums[0, c] = sg
        sums[1, c] = sgh
        dbeta[c] = sg
        dgamma[c] = sgh


@njit(cache=True, nogil=True, fastmath=FAST)
def batchnorm_backward_apply(x, out, dout, stats, gamma, sums, count, relu, dx, dresidual, add_dx, add_dresidual):
    """dx += gamma * invstd * (g - sum(g)/count - xhat * sum(g*xhat)/count), with the step's
    `sums` (batchnorm_grad_sums, added up over the replicas); dresidual += g unless it is empty.
    An empty dx (nobody needs it) is skipped. Without add_dx (add_dresidual) dx (dresidual) is
    overwritten instead: the first gradient written there, into a buffer nobody zeroed."""
    x3, o3, g3 = _by_channel(x), _by_channel(out), _by_channel(dout)
    need_dx, need_dr = dx.size != 0, dresidual.size != 0
    dx3 = _by_channel(dx) if need_dx else x3
    dr3 = _by_channel(dresidual) if need_dr else x3
    A, C, B = x3.shape
    T = x.dtype.type
    zero = T(0)
    for c in range(C):
        mean, istd = stats[0, c], stats[1, c]
        k = gamma[c] * istd
        m, s, a1 = T(mean), T(istd), T(k)
        b1, b2 = T(k * sums[0, c] / count), T(k * sums[1, c] / count)
        for a in range(A):
            xc, oc, gc, dxc, drc = x3[a, c], o3[a, c], g3[a, c], dx3[a, c], dr3[a, c]
            # Each mode its own loop: a conditional store inside one loop kept it scalar (7x slower).
            if need_dr and add_dresidual:
                for b in range(B):
                    drc[b] += gc[b] if not relu or oc[b] > zero else zero
            elif need_dr:
                for b in range(B):
                    drc[b] = gc[b] if not relu or oc[b] > zero else zero
            if need_dx and add_dx:
                for b in range(B):
                    g = gc[b] if not relu or oc[b] > zero else zero
                    dxc[b] += a1 * g - b1 - b2 * ((xc[b] - m) * s)
            elif need_dx:
                for b in range(B):
                    g = gc[b] if not relu or oc[b] > zero else zero
                    dxc[b] = a1 * g - b1 - b2 * ((xc[b] - m) * s)


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
def batchnorm_scale_shift(b, gamma, beta, running_mean, running_var, eps, scale, shift):
    """An inference batchnorm folded into the conv before it (passes/fold_batchnorm.py), as the
    conv kernels take it: scale[f] = gamma / sqrt(var + eps) multiplies filter f's output before
    the bias shift[f] = (b - mean) * scale + beta is added. Scaling the outputs instead of the
    weights saves a pass over every weight at each call: mobilenet_v1's batch-1 forward spent
    0.5 of its 1.8 ms folding 3.2 million weights."""
    for f in range(gamma.shape[0]):
        s = gamma[f] / np.sqrt(np.float64(running_var[f]) + eps)
        scale[f] = s
        shift[f] = (np.float64(b[f]) - running_mean[f]) * s + beta[f]
