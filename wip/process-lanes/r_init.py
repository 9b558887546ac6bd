# failures inside ForkedLanes.__init__: fds and children left behind
from fake import *
def ok(x, y, P, G, seed, total, start, smoothing, replicas):
    return (1.0, 0)
def fds(): return len(os.listdir("/proc/self/fd"))
real_fork = os.fork
# 1. fork itself fails (EAGAIN under a pids limit, ENOMEM under strict overcommit)
calls = [0]
def failing_fork():
    calls[0] += 1
    if calls[0] == 2:
        raise BlockingIOError(11, "Resource temporarily unavailable")
    return real_fork()
os.fork = failing_fork
before = fds()
try: pool(3, ok)
except OSError as e: print("1:", e)
print("1: fds leaked:", fds() - before)
# 2. an exception in the parent right after fork returned (Ctrl-C there, or Python 3.12's
#    fork DeprecationWarning under -W error, which is raised at exactly this point)
def fork_then_raise():
    pid = real_fork()
    if pid:
        raise KeyboardInterrupt
    return pid
os.fork = fork_then_raise
before = fds()
try: pool(2, ok)
except KeyboardInterrupt: print("2: KeyboardInterrupt")
time.sleep(0.2)
leak = fds() - before
kids = [d for d in os.listdir("/proc") if d.isdigit() and open(f"/proc/{d}/stat").read().split()[3] == str(os.getpid())]
print("2: fds leaked:", leak, "| children:", [(k, open(f"/proc/{k}/stat").read().split()[2]) for k in kids])
