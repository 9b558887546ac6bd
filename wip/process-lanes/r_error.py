# 3 lanes: lane 1 fails; lane 2, aborted at its meeting, may report first, and its
# "another lane of the step failed" is what the parent raises.
from fake import *
class Slow(ValueError):
    def __str__(self):
        time.sleep(0.05)   # stands for lane 1 losing its core right after setting abort
        return "the real error"
def fn(x, y, P, G, seed, total, start, smoothing, replicas):
    if start == 4:
        time.sleep(0.05)
        raise Slow()
    replicas.sum(np.zeros((2, 2)))
    return (1.0, 0)
p = pool(3, fn, 12)
try:
    run(p)
except Exception as e:
    print(type(e).__name__, e)
