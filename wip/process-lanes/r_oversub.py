# more lanes than cores (CNNC_THREADS=8 on 2 cores, as a container's CPU quota below its affinity gives)
import os, sys, time
sys.path.insert(0, "/work/main"); sys.path.insert(0, "/work/main/tests")
import numpy as np
import cnnc
from test_models import SOURCES
os.environ["CNNC_THREADS"] = "8"
for mode in ["threads", "processes"]:
    os.environ["CNNC_LANES"] = mode
    net = cnnc.compile_source(SOURCES["resnet_tiny"])
    rng = np.random.default_rng(0)
    x = rng.standard_normal((32,) + net.input_shape).astype(np.float32)
    y = rng.integers(0, net.lowered.output_shape[0], 32)
    net.loss_and_grads(x, y)
    ts = []
    for _ in range(5):
        t = time.perf_counter(); net.loss_and_grads(x, y); ts.append(time.perf_counter() - t)
    print(mode, "ms per step:", [round(1000 * t, 1) for t in ts])
    if net.forked: net.forked.close()
