# changing batch sizes: results vs threads, and how often the children are forked anew
import os, sys
sys.path.insert(0, "/work/main"); sys.path.insert(0, "/work/main/tests")
import numpy as np
import cnnc
from cnnc import forked_lanes
from test_models import SOURCES
forks = [0]
orig = forked_lanes.ForkedLanes.__init__
def counting(self, *a, **k):
    forks[0] += 1
    return orig(self, *a, **k)
forked_lanes.ForkedLanes.__init__ = counting
os.environ["CNNC_THREADS"] = "3"
def run(mode):
    os.environ["CNNC_LANES"] = mode
    net = cnnc.compile_source(SOURCES["resnet_tiny"])
    rng = np.random.default_rng(0)
    out = []
    for n in [13, 8, 20, 12, 5, 13, 8, 13]:
        x = rng.standard_normal((n,) + net.input_shape).astype(np.float32)
        y = rng.integers(0, net.lowered.output_shape[0], n)
        loss, _ = net.loss_and_grads(x, y)
        out.append((loss, net.grad_vector.copy()))
        net.vector[:net.layout.trainable] -= 0.01 * net.grad_vector
    return out, net.vector.copy()
t, tv = run("threads")
p, pv = run("processes")
print("forks:", forks[0], "for 8 steps")
print("same:", all(a[0] == b[0] and np.array_equal(a[1], b[1]) for a, b in zip(t, p)) and np.array_equal(tv, pv))
