# the parameter vector is a MAP_SHARED mapping in every Network, whatever $CNNC_LANES says:
# any fork-based worker (multiprocessing's default on Linux before 3.14) now shares the weights
import os, sys, multiprocessing as mp
sys.path.insert(0, "/work/main"); sys.path.insert(0, "/work/main/tests")
os.environ["CNNC_LANES"] = "threads"; os.environ["CNNC_THREADS"] = "1"
import numpy as np
import cnnc
from test_models import SOURCES
net = cnnc.compile_source(SOURCES["resnet_tiny"])
before = net.vector.copy()
def train_a_variant(lr):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8,) + net.input_shape).astype(np.float32)
    y = rng.integers(0, net.lowered.output_shape[0], 8)
    for _ in range(3):
        net.loss_and_grads(x, y)
        net.vector[:net.layout.trainable] -= lr * net.grad_vector    # this worker's own copy, it thinks
    return float(np.abs(net.vector - before).max())
with mp.get_context("fork").Pool(2) as pool:
    print("workers' changes:", pool.map(train_a_variant, [0.1, 0.001]))
print("parent's weights changed by the workers:", float(np.abs(net.vector - before).max()))
