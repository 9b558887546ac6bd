import faulthandler; faulthandler.dump_traceback_later(8, exit=True)
# 130 lanes: lane 128 reports success as byte 128 = "lane 0 failed"; lane 129 as 129 = "lane 1 failed"
from fake import *
def ok(x, y, P, G, seed, total, start, smoothing, replicas):
    return (1.0, 0)
p = pool(130, ok)
t = time.monotonic()
try:
    print(run(p)[:3])
except Exception as e:
    print("raised after", round(time.monotonic() - t, 2), "s:", type(e).__name__, e)
p.close()
