# page tables: every child copies the parent's for its private memory (a data set held in RAM)
from fake import *
def ok(x, y, P, G, seed, total, start, smoothing, replicas):
    return (1.0, 0)
data = np.ones(1 << 28, np.float32)    # a 1 GiB data set in memory
p = pool(4, ok)
pte = lambda pid: [l for l in open(f"/proc/{pid}/status") if l.startswith("VmPTE")][0].split()[1]
print("VmPTE kB: parent", pte(os.getpid()), "children", [pte(c) for c, _ in p.children])
p.close()
