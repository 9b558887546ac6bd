from fake import *
import gc
def ok(x, y, P, G, seed, total, start, smoothing, replicas):
    return (1.0, 0)
def fds(): return len(os.listdir("/proc/self/fd"))
p = pool(3, ok); run(p); p.close()
before = fds()
for i in range(20):
    p = pool(3, ok); run(p)
    if i % 2: p.close()
    p = None; gc.collect()
print("fds after 20 pools:", fds() - before)
kids = [d for d in os.listdir("/proc") if d.isdigit() and open(f"/proc/{d}/stat").read().split()[3] == str(os.getpid())]
print("children left:", kids)
