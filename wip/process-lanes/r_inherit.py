# pools of two networks: B's children inherit A's pipe ends and A's shared mappings
from fake import *
import gc
def ok(x, y, P, G, seed, total, start, smoothing, replicas):
    return (1.0, 0)
def shmem():
    return int([l for l in open("/proc/meminfo") if l.startswith("Shmem:")][0].split()[1]) // 1024
base = shmem()
a = pool(2, ok, capacity=16 << 20)        # A's x: 256 MiB of shared memory
a.x[:] = 1.0
print("A's x filled: Shmem +%d MiB" % (shmem() - base))
b = pool(2, ok)
child = b.children[0][0]
print("B's child's fds:", sorted(int(f) for f in os.listdir(f"/proc/{child}/fd")),
      "| A's done, go:", a.done, [g for _, g in a.children])
a.close(); del a; gc.collect(); time.sleep(0.2)
print("A closed and collected: Shmem +%d MiB" % (shmem() - base))
b.close(); gc.collect(); time.sleep(0.2)
print("B closed: Shmem +%d MiB" % (shmem() - base))
