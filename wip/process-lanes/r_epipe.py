# a child that dies between step()'s alive() check and its os.write(go): BrokenPipeError,
# which cnnc/cli.py:main turns into a silent exit status 0
from fake import *
import signal
def ok(x, y, P, G, seed, total, start, smoothing, replicas):
    return (1.0, 0)
p = pool(2, ok)
run(p)
pid = p.children[0][0]
os.kill(pid, signal.SIGKILL); time.sleep(0.1)
real_alive = p.alive
checks = [0]
def racy_alive():          # the check made a moment before the child died
    checks[0] += 1
    return True if checks[0] == 1 else real_alive()
p.alive = racy_alive
try: run(p)
except BaseException as e: print(type(e).__name__, e)
