# are the kernels loaded in the parent when the children are forked?
import os, sys, time
sys.path.insert(0, "/work/main"); sys.path.insert(0, "/work/main/tests")
import numpy as np
import cnnc
from cnnc import forked_lanes
from test_models import SOURCES
os.environ["CNNC_THREADS"] = "2"
os.environ["CNNC_LANES"] = sys.argv[1]
net = cnnc.compile_source(SOURCES["resnet_tiny"])
net.compile(training=True)
loaded = sum(1 for k, s in net.kernel_calls if s in k.overloads)
print("kernel signatures with machine code in this process before the first step:", loaded, "of", len(net.kernel_calls))
rng = np.random.default_rng(0)
x = rng.standard_normal((32,) + net.input_shape).astype(np.float32)
y = rng.integers(0, net.lowered.output_shape[0], 32)
t = time.perf_counter(); net.loss_and_grads(x, y); first = time.perf_counter() - t
t = time.perf_counter(); net.loss_and_grads(x, y); second = time.perf_counter() - t
print(sys.argv[1], "first step %.0f ms, second %.1f ms" % (1000 * first, 1000 * second))
