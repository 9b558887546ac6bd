# SIGTERM to every process of the job (scheduler, systemd, `timeout`): the children inherited the
# trainer's Python SIGTERM handler (train/loop.py: raise_terminated)
from fake import *
import signal, threading, collections
sys.path.insert(0, "/work/main")
from cnnc.train.loop import raise_terminated, Terminated
signal.signal(signal.SIGTERM, raise_terminated)
def fn(x, y, P, G, seed, total, start, smoothing, replicas):
    end = time.monotonic() + 0.3
    while time.monotonic() < end:      # a lane computing (in Python here, so the handler can run)
        pass
    replicas.sum(np.zeros((2, 2)))
    return (1.0, 0)
outcomes = collections.Counter()
for trial in range(6):
    p = pool(2, fn)
    pids = [os.getpid()] + [pid for pid, _ in p.children]
    threading.Timer(0.1, lambda: [os.kill(q, signal.SIGTERM) for q in pids]).start()
    try:
        run(p); outcomes["completed"] += 1
    except Terminated:
        outcomes["Terminated (graceful)"] += 1
    except Exception as e:
        outcomes[f"{type(e).__name__}: {e}"] += 1
    time.sleep(0.1)
    p.close()
print(dict(outcomes))
