# a process with >1024 fds open: select() rejects the done pipe -> every step fails
from fake import *
import resource
held = [os.open("/dev/null", os.O_RDONLY) for _ in range(1100)]
def ok(x, y, P, G, seed, total, start, smoothing, replicas):
    return (1.0, 0)
for attempt in range(2):
    p = pool(2, ok)
    print("done fd", p.done)
    try:
        print(run(p))
    except Exception as e:
        print("step raised:", type(e).__name__, e, "| broken:", p.broken)
