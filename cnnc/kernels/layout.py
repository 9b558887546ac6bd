"""Layout kernels: NCHW <-> CNHW, flatten of CNHW to (N, C*H*W), and channel concat."""
from numba import njit


@njit(cache=True, nogil=True)
def nchw_to_cnhw(x, out):
    """x (N,C,H,W) -> out (C,N,H,W)."""
    N, C = x.shape[0], x.shape[1]
    x3 = x.reshape(N, C, -1)
    o3 = out.reshape(C, N, -1)
    for c in range(C):
        for n in range(N):
            xs, ys = x3[n, c], o3[c, n]
            for i in range(xs.size):
                ys[i] = xs[i]


@njit(cache=True, nogil=True)
def cnhw_to_nchw(x, out):
    """x (C,N,H,W) -> out (N,C,H,W)."""
    C, N = x.shape[0], x.shape[1]
    x3 = x.reshape(C, N, -1)
    o3 = out.reshape(N, C, -1)
    for n in range(N):
        for c in range(C):
            xs, ys = x3[c, n], o3[n, c]
            for i in range(xs.size):
                ys[i] = xs[i]


@njit(cache=True, nogil=True)
def flatten_forward(x, out):
    """x (C,N,H,W) -> out (N, C*H*W) in C, H, W order (PyTorch's flatten of the NCHW tensor)."""
    C, N = x.shape[0], x.shape[1]
    x3 = x.reshape(C, N, -1)
    HW = x3.shape[2]
    for n in range(N):
        on = out[n]
        for c in range(C):
            xs = x3[c, n]
            base = c * HW
            for i in range(HW):
                on[base + i] = xs[i]


@njit(cache=True, nogil=True)
def flatten_backward(dout, dx):
    """dx (C,N,H,W) += dout (N, C*H*W) laid back out as CNHW."""
    C, N = dx.shape[0], dx.shape[1]
    dx3 = dx.reshape(C, N, -1)
    HW = dx3.shape[2]
    for n in range(N):
        gn = dout[n]
        for c in range(C):
            ds = dx3[c, n]
            base = c * HW
            for i in range(HW):
                ds[i] += gn[base + i]


@njit(cache=True, nogil=True)
def concat_forward(x, out, c0):
    """out[c0:c0+C] = x for CNHW x (C,N,H,W); for (N,D) vectors, out[:, c0:c0+D] = x."""
    x2 = x.reshape(x.shape[0], -1)
    o2 = out.reshape(out.shape[0], -1)
    R, M = x2.shape
    if x.ndim == 2:
        for n in range(R):
            for d in range(M):
                o2[n, c0 + d] = x2[n, d]
    else:
        for c in range(R):
            for i in range(M):
                o2[c0 + c, i] = x2[c, i]


@njit(cache=True, nogil=True)
def concat_backward(dout, dx, c0):
    """dx += dout[c0:c0+C] for CNHW dx (C,N,H,W); for (N,D) vectors, dx += dout[:, c0:c0+D]."""
    dx2 = dx.reshape(dx.shape[0], -1)
    g2 = dout.reshape(dout.shape[0], -1)
    R, M = dx2.shape
    if dx.ndim == 2:
        for n in range(R):
            for d in range(M):
                dx2[n, d] += g2[n, c0 + d]
    else:
        for c in range(R):
            for i in range(M):
                dx2[c, i] += g2[c0 + c, i]
