# user code forks a helper that exits normally: its atexit runs the pool's finalizer
from fake import *
def ok(x, y, P, G, seed, total, start, smoothing, replicas):
    return (1.0, 0)
p = pool(2, ok)
print(run(p))
pid = os.fork()
if pid == 0:
    sys.exit(0)          # a helper process ending normally (atexit runs)
os.waitpid(pid, 0)
time.sleep(0.1)
print("lane children alive after the helper exited:", p.alive())
try: print(run(p))
except Exception as e: print("next step:", type(e).__name__, e)
