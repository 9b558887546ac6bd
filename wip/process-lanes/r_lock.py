# another thread compiling (holding Numba's compiler lock) while the first forked step forks:
# the child inherits the lock held, blocks loading its first kernel, and the step waits forever
import faulthandler, os, sys, threading, time
faulthandler.dump_traceback_later(20, exit=True)
sys.path.insert(0, "/work/main"); sys.path.insert(0, "/work/main/tests")
os.environ["CNNC_THREADS"] = "2"
import numpy as np
import cnnc
from numba.core.compiler_lock import global_compiler_lock
from test_models import SOURCES
def batch(net):
    rng = np.random.default_rng(0)
    return (rng.standard_normal((8,) + net.input_shape).astype(np.float32),
            rng.integers(0, net.lowered.output_shape[0], 8))
first = cnnc.compile_source(SOURCES["resnet_tiny"])
first.loss_and_grads(*batch(first))  # a first network has trained on processes
net = cnnc.compile_source(SOURCES["inception_tiny"])
net.compile(training=True)          # kernels in Numba's cache (compile_all does not load them)
def compiling_elsewhere():          # e.g. another model being compiled by a server thread
    with global_compiler_lock:
        time.sleep(2)
threading.Thread(target=compiling_elsewhere).start()
time.sleep(0.1)
x, y = batch(net)
t = time.monotonic()
net.loss_and_grads(x, y)
print("step done in %.1f s" % (time.monotonic() - t))
