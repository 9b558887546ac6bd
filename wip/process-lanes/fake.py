import sys, types, time, os
sys.path.insert(0, "/work/main")
import numpy as np
from cnnc import forked_lanes as fl

def make_module(fn):
    m = types.SimpleNamespace()
    m.loss_and_grads = fn
    return m

def pool(count, fn, capacity=None):
    vec = fl.shared_zeros(10, np.float32)
    capacity = capacity or 4 * count
    return fl.ForkedLanes(make_module(fn), vec, count, capacity, (1, 2, 2), (), 10, 4)

def run(p, n=None):
    n = n or p.capacity
    x = np.zeros((n, 1, 2, 2), np.float32); y = np.zeros(n, np.int64)
    parts = [slice(k * n // p.count, (k + 1) * n // p.count) for k in range(p.count)]
    g0 = np.zeros(10, np.float32)
    return p.step(x, y, parts, 1, n, 0, 0.0, g0)
