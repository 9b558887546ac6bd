# a fork-based worker that trains the inherited network closes the *parent's* lane pool: it kills
# the parent's lane children by pid (ForkedLanes.alive() sees "not my child" -> close -> SIGKILL)
import os, sys, multiprocessing as mp
sys.path.insert(0, "/work/main"); sys.path.insert(0, "/work/main/tests")
os.environ["CNNC_THREADS"] = "2"
import numpy as np
import cnnc
from test_models import SOURCES
net = cnnc.compile_source(SOURCES["resnet_tiny"])
rng = np.random.default_rng(0)
x = rng.standard_normal((8,) + net.input_shape).astype(np.float32)
y = rng.integers(0, net.lowered.output_shape[0], 8)
net.loss_and_grads(x, y)
mine = [pid for pid, _ in net.forked.children]
def worker(_):
    net.loss_and_grads(x, y)
    return [pid for pid, _ in net.forked.children]
with mp.get_context("fork").Pool(1) as pool:
    print("worker's lanes:", pool.map(worker, [0]))
print("parent's lane children", mine, "alive:", net.forked.alive())
