# the pool forked from a worker thread: PR_SET_PDEATHSIG fires when that *thread* ends
from fake import *
import threading
def ok(x, y, P, G, seed, total, start, smoothing, replicas):
    return (1.0, 0)
box = {}
def worker():
    box["p"] = pool(2, ok)
    print("in thread:", run(box["p"]))
t = threading.Thread(target=worker); t.start(); t.join()
p = box["p"]
pid = p.children[0][0]
time.sleep(0.2)
print("alive after the thread ended:", p.alive())
try:
    run(p)
except Exception as e:
    print("next step:", type(e).__name__, e)
# the race: step right after join, before the kill is seen by waitpid
races = {}
for i in range(30):
    t = threading.Thread(target=lambda: box.__setitem__("p", pool(2, ok))); t.start(); t.join()
    q = box["p"]
    try:
        run(q)
        races["ok"] = races.get("ok", 0) + 1
    except Exception as e:
        races[type(e).__name__ + ": " + str(e)[:50]] = races.get(type(e).__name__ + ": " + str(e)[:50], 0) + 1
    q.close()
print(races)
