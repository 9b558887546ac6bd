# a real Ctrl-C: SIGINT to the whole process group during the step (parent in _wait / meeting)
from fake import *
import signal, threading
def fn(x, y, P, G, seed, total, start, smoothing, replicas):
    time.sleep(0.5 if start else 0.0)   # lane 0 then waits in the meeting, then in _wait
    replicas.sum(np.zeros((2, 2)))
    return (1.0, 0)
for where in (0.1,):
    p = pool(2, fn)
    kids = [pid for pid, _ in p.children]
    threading.Timer(where, lambda: os.killpg(os.getpgrp(), signal.SIGINT)).start()
    try: run(p); print("completed?!")
    except KeyboardInterrupt: print("KeyboardInterrupt; broken:", p.broken)
    time.sleep(0.1)
    print("children gone:", all(not os.path.exists(f"/proc/{k}") for k in kids))
