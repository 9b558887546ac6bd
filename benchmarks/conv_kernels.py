"""Times cnnc's conv and pool kernels beside PyTorch on the lenet5 and vgg_small layer shapes, and
its depthwise kernels on mobilenet_v1's (with their memory rate: bytes read and written / time).

Run: python benchmarks/conv_kernels.py [--quick] [--depthwise-only] [--blas-threads N] [--wait-idle]. Figures are
medians over interleaved rounds (a burst of cnnc calls, a burst of torch calls, ...) so that load
from other processes hits both sides alike; --wait-idle starts each round only when the machine
looks idle (Linux), for a machine shared with other jobs. ratio is cnnc time / torch time (below
1: cnnc is faster). PyTorch runs with its default threads. The conv kernels split the batch over
Numba threads themselves and expect a single-threaded BLAS inside (the default here).
"""
import argparse
import time

import numpy as np
import scipy.linalg.cython_blas  # noqa: F401  (load the BLAS Numba uses, so the limit below reaches it)
import torch
import torch.nn.functional as F
from threadpoolctl import threadpool_limits

from cnnc.kernels.conv import conv2d_backward, conv2d_forward
from cnnc.kernels.depthwise import depthwise_backward, depthwise_forward
from cnnc.kernels.pool import maxpool_backward, maxpool_forward

NO_RESIDUAL = np.empty((0, 0, 0, 0), np.float32)
NO_SCALE = np.empty(0, np.float32)  # no folded batchnorm

# name, C, F, H (=W), K, padding per side (same for odd K), relu, need_dx (False: first layer)
CONVS = [
    ("lenet conv1 1->6 5x5 same 28", 1, 6, 28, 5, 2, True, False),
    ("lenet conv2 6->16 5x5 valid 14", 6, 16, 14, 5, 0, True, True),
    ("vgg conv1 3->32 3x3 same 32", 3, 32, 32, 3, 1, True, False),
    ("vgg conv2 32->32 3x3 same 32", 32, 32, 32, 3, 1, True, True),
    ("vgg conv3 32->64 3x3 same 16", 32, 64, 16, 3, 1, True, True),
    ("vgg conv4 64->64 3x3 same 16", 64, 64, 16, 3, 1, True, True),
]
# mobilenet_v1's depthwise 3x3 layers (padding 1, ReLU): name, C, H (=W), stride
DEPTHWISE = [
    ("mobilenet dw 32 s1 32", 32, 32, 1),
    ("mobilenet dw 64 s2 32", 64, 32, 2),
    ("mobilenet dw 128 s1 16", 128, 16, 1),
    ("mobilenet dw 128 s2 16", 128, 16, 2),
    ("mobilenet dw 256 s1 8", 256, 8, 1),
    ("mobilenet dw 512 s1 4", 512, 4, 1),
    ("mobilenet dw 1024 s1 2", 1024, 2, 1),
]
POOLS = [("lenet pool1 6x28", 6, 28), ("vgg pool1 32x32", 32, 32), ("vgg pool2 64x16", 64, 16)]


def busy_fraction(seconds):
    """Share of the machine's CPU time spent busy over the next `seconds` (from /proc/stat)."""
    def sample():
        ticks = [int(v) for v in open("/proc/stat").readline().split()[1:]]
        return sum(ticks), ticks[3] + ticks[4]  # total, idle + iowait
    total, idle = sample()
    time.sleep(seconds)
    total2, idle2 = sample()
    return 1 - (idle2 - idle) / max(1, total2 - total)


def race(ours, theirs, rounds, wait_idle, burst=3):
    """Median seconds of each callable over rounds of `burst` back-to-back calls, alternating."""
    a, b = [], []
    for _ in range(rounds):
        while wait_idle and busy_fraction(0.1) > 0.1:
            pass
        for fn, times in ((ours, a), (theirs, b)):
            fn()  # warm: the first call after a pause pays for waking threads
            for _ in range(burst):
                t = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t)
    return float(np.median(a)), float(np.median(b))


def conv_cases(name, C, Fo, H, K, pad, relu, need_dx, n, rng):
    OH = H + 2 * pad - K + 1
    x = rng.standard_normal((C, n, H, H), dtype=np.float32)
    w = rng.standard_normal((Fo, C, K, K), dtype=np.float32) * np.float32((C * K * K) ** -0.5)
    b = rng.standard_normal(Fo, dtype=np.float32)
    out = np.empty((Fo, n, OH, OH), np.float32)
    dout = rng.standard_normal(out.shape, dtype=np.float32)
    dx, dw, db = np.zeros_like(x), np.empty_like(w), np.empty_like(b)

    def ours_fwd():
        conv2d_forward(x, w, b, NO_SCALE, NO_RESIDUAL, out, 1, 1, pad, pad, 1, 1, 1, relu)

    def ours_step():
        conv2d_forward(x, w, b, NO_SCALE, NO_RESIDUAL, out, 1, 1, pad, pad, 1, 1, 1, relu)
        conv2d_backward(x, w, out, dout, dx, dw, db, 1, 1, pad, pad, 1, 1, 1, relu, need_dx)

    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(1, 0, 2, 3)))
    xg = xt.clone().requires_grad_(need_dx)
    wt, bt = torch.from_numpy(w).requires_grad_(), torch.from_numpy(b).requires_grad_()
    gt = torch.from_numpy(np.ascontiguousarray(dout.transpose(1, 0, 2, 3)))

    def torch_fwd():
        with torch.no_grad():
            F.relu(F.conv2d(xt, wt, bt, padding=pad))

    def torch_step():
        wt.grad = bt.grad = xg.grad = None
        F.relu(F.conv2d(xg, wt, bt, padding=pad)).backward(gt)

    flops = 2 * Fo * C * K * K * OH * OH * n
    return (("fwd", ours_fwd, torch_fwd, flops), ("fwd+bwd", ours_step, torch_step, flops * (3 if need_dx else 2)))


def depthwise_cases(name, C, H, stride, n, rng):
    """Forward and forward+backward of a 3x3 depthwise layer with ReLU; the third figure of each
    case is its bytes: forward reads x and writes out; backward reads x, dout and out (the ReLU's
    mask) and reads and writes dx."""
    OH = (H - 1) // stride + 1
    x = rng.standard_normal((C, n, H, H), dtype=np.float32)
    w = rng.standard_normal((C, 1, 3, 3), dtype=np.float32) / np.float32(3)
    b = rng.standard_normal(C, dtype=np.float32)
    out = np.empty((C, n, OH, OH), np.float32)
    dout = rng.standard_normal(out.shape, dtype=np.float32)
    dx, dw, db = np.zeros_like(x), np.empty_like(w), np.empty_like(b)

    def ours_fwd():
        depthwise_forward(x, w, b, NO_SCALE, NO_RESIDUAL, out, stride, stride, 1, 1, 1, 1, True)

    def ours_step():
        ours_fwd()
        depthwise_backward(x, w, out, dout, dx, dw, db, stride, stride, 1, 1, 1, 1, True, True)

    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(1, 0, 2, 3)))
    xg = xt.clone().requires_grad_()
    wt, bt = torch.from_numpy(w).requires_grad_(), torch.from_numpy(b).requires_grad_()
    gt = torch.from_numpy(np.ascontiguousarray(dout.transpose(1, 0, 2, 3)))

    def torch_fwd():
        with torch.no_grad():
            F.relu(F.conv2d(xt, wt, bt, stride=stride, padding=1, groups=C))

    def torch_step():
        wt.grad = bt.grad = xg.grad = None
        F.relu(F.conv2d(xg, wt, bt, stride=stride, padding=1, groups=C)).backward(gt)

    fwd_bytes = 4 * (x.size + out.size)
    return (("fwd", ours_fwd, torch_fwd, fwd_bytes), ("fwd+bwd", ours_step, torch_step,
                                                      fwd_bytes + 4 * (3 * x.size + 2 * out.size)))


def pool_cases(C, H, n, rng):
    x = rng.standard_normal((C, n, H, H), dtype=np.float32)
    out = np.empty((C, n, H // 2, H // 2), np.float32)
    arg = np.empty(out.shape, np.int32)
    dx = np.zeros_like(x)
    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(1, 0, 2, 3))).requires_grad_()
    gt = torch.from_numpy(np.ascontiguousarray(out.transpose(1, 0, 2, 3)))

    def ours_step():
        maxpool_forward(x, out, arg, 2, 2, 2, 2, 0, 0)
        maxpool_backward(out, arg, dx)

    def torch_step():
        xt.grad = None
        F.max_pool2d(xt, 2).backward(gt)

    return (("fwd+bwd", ours_step, torch_step, 0),)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="batches 1 and 64 only")
    parser.add_argument("--blas-threads", type=int, default=1)
    parser.add_argument("--wait-idle", action="store_true", help="start each round on an idle machine")
    parser.add_argument("--depthwise-only", action="store_true", help="mobilenet_v1's depthwise layers only")
    args = parser.parse_args()
    threadpool_limits(args.blas_threads, user_api="blas")
    batches = (1, 64) if args.quick else (1, 64, 256)
    rng = np.random.default_rng(0)
    print(f"torch threads {torch.get_num_threads()}, BLAS threads {args.blas_threads}")
    print(f"{'layer':34} {'N':>4} {'pass':8} {'cnnc ms':>9} {'torch ms':>9} {'ratio':>6} {'GFLOP/s':>8}")
    rows = [] if args.depthwise_only else [(spec[0], n, conv_cases(*spec, n, rng)) for spec in CONVS for n in batches]
    rows += [] if args.depthwise_only else [(name, n, pool_cases(C, H, n, rng)) for name, C, H in POOLS for n in batches]
    run_rows(rows, args.wait_idle)
    print(f"\n{'depthwise layer':34} {'N':>4} {'pass':8} {'cnnc ms':>9} {'torch ms':>9} {'ratio':>6} "
          f"{'cnnc GB/s':>9} {'torch GB/s':>10}")
    run_rows([(spec[0], n, depthwise_cases(*spec, n, rng)) for spec in DEPTHWISE for n in batches if n > 1],
             args.wait_idle, bandwidth=True)


def run_rows(rows, wait_idle, bandwidth=False):
    """Prints each case's medians; the last column is GFLOP/s, or with bandwidth, GB/s of both."""
    for name, n, cases in rows:
        for label, ours, theirs, work in cases:
            rounds = 10 if n == 1 else (3 if n == 256 else 5)
            a, b = race(ours, theirs, rounds, wait_idle)
            rate = f"{work / a * 1e-9:9.1f} {work / b * 1e-9:10.1f}" if bandwidth else \
                f"{work / a * 1e-9:8.1f}" if work else ""
            print(f"{name:34} {n:4} {label:8} {a * 1e3:9.3f} {b * 1e3:9.3f} {a / b:6.2f} {rate}", flush=True)


if __name__ == "__main__":
    main()
