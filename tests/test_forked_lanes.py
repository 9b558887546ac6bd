"""A training step's lanes as forked processes (cnnc/forked_lanes.py): the same bits as the thread
lanes, a child's error or death raised in the parent, a Ctrl-C that ends the children, no child
left behind, and a process the user forks that shares neither the weights nor the children."""
from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
import types

import numpy as np
import pytest

import cnnc
from cnnc import cli, forked_lanes
from test_models import SOURCES

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="lanes are processes on Linux only")


def network(monkeypatch, lanes: int, mode: str = "processes"):
    monkeypatch.setenv("CNNC_THREADS", str(lanes))
    monkeypatch.setenv("CNNC_LANES", mode)
    return cnnc.compile_source(SOURCES["resnet_tiny"])


def batch(net, n: int, seed: int = 3):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n,) + net.input_shape).astype(np.float32)
    return x, rng.integers(0, net.lowered.output_shape[0], n)


def steps(net, count: int = 2, n: int = 13):
    """`count` steps of n images from the same start, each followed by a plain SGD update."""
    x, y = batch(net, n)
    out = []
    for _ in range(count):
        loss, _ = net.loss_and_grads(x, y)
        out.append((loss, net.grad_vector.copy(), net.vector.copy()))
        net.vector[:net.layout.trainable] -= 0.01 * net.grad_vector
    return out


def gone(pid: int) -> bool:
    """The process has ended (a zombie that nobody reaps counts as ended)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def children(net) -> list[int]:
    return [pid for pid, _ in net.forked.children]


def failing_lane(net, monkeypatch, lane_start: int, error: BaseException):
    """The network's step, with the lane whose slice starts at image `lane_start` raising `error`
    (patched before the fork: the children inherit it)."""
    net.compile(training=True)  # before the patch: its dry run reads the generated function's code
    real = net.module.loss_and_grads

    def failing(x, y, P, G, seed, total, start, *rest):
        if start == lane_start:
            raise error
        return real(x, y, P, G, seed, total, start, *rest)

    monkeypatch.setattr(net.module, "loss_and_grads", failing)
    return real


def assert_same_steps(a, b):
    for (loss_a, grads_a, vector_a), (loss_b, grads_b, vector_b) in zip(a, b):
        assert loss_a == loss_b
        assert np.array_equal(grads_a, grads_b)
        assert np.array_equal(vector_a, vector_b)


@pytest.mark.parametrize("lanes", [2, 3])
def test_processes_give_the_threads_bits(monkeypatch, lanes):
    """13 images as 6 + 7 or 4 + 4 + 5: loss, gradients and running statistics (in the vector) equal
    bit for bit, two steps running."""
    threads = steps(network(monkeypatch, lanes, "threads"))
    net = network(monkeypatch, lanes)
    processes = steps(net)
    assert net.forked is not None and net.forked.count == lanes, "the step must have run on processes"
    assert_same_steps(threads, processes)


@pytest.mark.parametrize("lanes, group", [(2, 0), (3, 2)])
def test_a_forward_on_processes_gives_the_threads_bits(monkeypatch, lanes, group):
    """13 images, each lane at once or in groups of 2, on children forked for forwards only (with
    the forward's kernels: no training compile); a step forks children that run both, and the
    next forward, of 40 images, runs on them."""
    x, _ = batch(network(monkeypatch, lanes, "threads"), 40)
    threads = network(monkeypatch, lanes, "threads")
    threads.forward_group = group
    expected = threads.forward(x[:13]), threads.forward(x)
    net = network(monkeypatch, lanes)
    net.forward_group = group
    net.compile(training=False)
    assert np.array_equal(net.forward(x[:13]), expected[0])
    assert len(children(net)) == lanes - 1 and not net.forked.steps and "training" not in net.mode_calls
    steps(net, 1)
    pids = children(net)
    assert net.forked.steps
    net.vector[:] = threads.vector  # the step moved the running statistics
    assert np.array_equal(net.forward(x), expected[1]) and children(net) == pids


def test_a_network_without_a_loss_runs_its_forward_on_processes(monkeypatch):
    source = "input 1x8x8\nconv filters=4 size=3 padding=same\nbatchnorm\nrelu\nflatten\ndense units=3\nsoftmax\n"
    monkeypatch.setenv("CNNC_THREADS", "2")
    x = np.random.default_rng(0).standard_normal((16, 1, 8, 8)).astype(np.float32)
    monkeypatch.setenv("CNNC_LANES", "threads")
    expected = cnnc.compile_source(source).forward(x)
    monkeypatch.setenv("CNNC_LANES", "processes")
    net = cnnc.compile_source(source)
    assert np.array_equal(net.forward(x), expected) and len(children(net)) == 1


def test_lanes_are_processes_only_when_each_has_a_cpu(monkeypatch):
    monkeypatch.delenv("CNNC_LANES", raising=False)
    monkeypatch.setattr("cnnc.lanes.usable_cpus", lambda: 2)
    assert forked_lanes.available(2) and not forked_lanes.available(3) and not forked_lanes.available(1)
    monkeypatch.setenv("CNNC_LANES", "processes")
    assert forked_lanes.available(3)
    monkeypatch.setenv("CNNC_LANES", "threads")
    assert not forked_lanes.available(2)


def test_a_smaller_step_leaves_children_idle_instead_of_forking_again(monkeypatch):
    """13 images on 3 lanes, then 9 on 2 (a last batch): the same children, the threads' bits."""
    threads = network(monkeypatch, 3, "threads")
    net = network(monkeypatch, 3)
    steps(threads, 1), steps(net, 1)
    pids = children(net)
    assert_same_steps(steps(threads, 2, n=9), steps(net, 2, n=9))
    assert children(net) == pids


def test_a_childs_error_is_raised_here_and_the_next_step_forks_anew(monkeypatch):
    net = network(monkeypatch, 2)
    real = failing_lane(net, monkeypatch, 6, ValueError("a test's failure in lane 1"))
    with pytest.raises(ValueError, match="a test's failure in lane 1"):  # as the thread lanes raise it
        steps(net, 1)
    assert net.forked.broken and all(gone(pid) for pid in children(net))
    monkeypatch.setattr(net.module, "loss_and_grads", real)
    after = steps(net, 1)[0]
    assert np.isfinite(after[0]) and not net.forked.broken


def test_the_failing_lane_is_named_not_the_lanes_it_stopped(monkeypatch):
    """Three lanes, the last one fails: lane 1, stopped at a meeting by it, is not what is reported."""
    net = network(monkeypatch, 3)
    failing_lane(net, monkeypatch, 8, ValueError("the real failure"))
    with pytest.raises(ValueError, match="the real failure"):
        steps(net, 1)


def test_an_error_that_does_not_pickle_arrives_as_its_text(monkeypatch):
    class Unpicklable(Exception):
        def __reduce__(self):
            raise TypeError("no")

    net = network(monkeypatch, 2)
    failing_lane(net, monkeypatch, 6, Unpicklable("its words"))
    with pytest.raises(forked_lanes.LaneFailed, match="lane 1 .*Unpicklable: its words"):
        steps(net, 1)


def test_a_childs_memory_error_stays_a_memory_error(monkeypatch):
    net = network(monkeypatch, 2)
    failing_lane(net, monkeypatch, 6, MemoryError())
    with pytest.raises(MemoryError):
        steps(net, 1)


def test_a_child_that_dies_during_the_step_is_reported_not_waited_for(monkeypatch):
    net = network(monkeypatch, 2)
    net.compile(training=True)
    real = net.module.loss_and_grads

    def dying(x, y, P, G, seed, total, start, *rest):
        if start > 0:
            os._exit(3)
        return real(x, y, P, G, seed, total, start, *rest)

    monkeypatch.setattr(net.module, "loss_and_grads", dying)
    signal.signal(signal.SIGALRM, lambda *_: pytest.fail("the step waited for a dead lane"))
    signal.alarm(60)
    try:
        with pytest.raises(forked_lanes.LaneFailed, match="died") as raised:
            steps(net, 1)
    finally:
        signal.alarm(0)
    assert "CNNC_LANES=threads" in raised.value.render()


def test_a_child_killed_between_steps_is_replaced(monkeypatch):
    net = network(monkeypatch, 2)
    before = net.vector.copy()
    first = steps(net, 1)[0]
    pid = children(net)[0]
    os.kill(pid, signal.SIGKILL)
    while not gone(pid):  # dead for sure (a kill is delivered in its own time)
        time.sleep(0.01)
    net.vector[:] = before  # the weights and running statistics the first step started from
    again = steps(net, 1)[0]
    assert children(net)[0] != pid
    assert again[0] == first[0] and np.array_equal(again[1], first[1])


def test_an_interrupt_in_this_lane_ends_the_children(monkeypatch):
    net = network(monkeypatch, 2)
    steps(net, 1)
    pids = children(net)

    def interrupted(self, buffer):
        raise KeyboardInterrupt

    monkeypatch.setattr(forked_lanes.SharedLane, "sum", interrupted)  # this process's lane only: forked before
    with pytest.raises(KeyboardInterrupt):
        steps(net, 1)
    assert net.forked.broken and all(gone(pid) for pid in pids)


def test_a_real_ctrl_c_in_a_step_leaves_no_child_behind(monkeypatch):
    """SIGINT at a moment of its own: the children it caught in a step are ended, or, caught
    between steps, still serve; the next step runs either way."""
    net = network(monkeypatch, 2)
    steps(net, 1)
    pids = children(net)
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        steps(net, 1000)
    timer.join()
    if net.forked.broken:
        assert all(gone(pid) for pid in pids)
    else:
        assert children(net) == pids and not any(gone(pid) for pid in pids)
    steps(net, 1)
    assert not net.forked.broken and not any(gone(pid) for pid in children(net))


def test_forking_after_a_failed_step_leaves_the_programs_files_alone(monkeypatch, tmp_path):
    """A failed step closes its pool's pipes; their numbers, reused by files opened afterwards,
    must not be closed by the fork hook, nor by the next pool's children."""
    net = network(monkeypatch, 2)
    real = failing_lane(net, monkeypatch, 6, ValueError("fails once"))
    with pytest.raises(ValueError):
        steps(net, 1)
    monkeypatch.setattr(net.module, "loss_and_grads", real)
    with open(tmp_path / "log", "w") as log:
        pid = os.fork()
        if pid == 0:
            try:
                os.write(log.fileno(), b"the child writes")
                os._exit(0)
            except BaseException:
                os._exit(1)
        assert os.waitpid(pid, 0)[1] == 0
        steps(net, 1, n=16)  # a new pool, wider than the last
        log.write(" and so does this process")
    assert (tmp_path / "log").read_text() == "the child writes and so does this process"


def test_two_networks_step_side_by_side(monkeypatch):
    threads = steps(network(monkeypatch, 2, "threads"), 2)
    a, b = network(monkeypatch, 2), network(monkeypatch, 2)
    first_a, first_b = steps(a, 1), steps(b, 1)
    second_a, second_b = steps(a, 1), steps(b, 1)
    assert_same_steps(first_a + second_a, threads)
    assert_same_steps(first_b + second_b, threads)
    assert not set(children(a)) & set(children(b))


def test_closing_ends_the_children(monkeypatch):
    net = network(monkeypatch, 3)
    steps(net, 1)
    pids = children(net)
    assert len(pids) == 2 and not any(gone(pid) for pid in pids)
    net.forked.close()
    assert all(gone(pid) for pid in pids)


def test_children_outlive_the_thread_that_forked_them(monkeypatch):
    net = network(monkeypatch, 2)
    first = threading.Thread(target=steps, args=(net, 1))
    first.start()
    first.join()
    pids = children(net)
    time.sleep(0.2)
    assert not any(gone(pid) for pid in pids)
    steps(net, 1)
    assert children(net) == pids


def test_children_end_when_their_parent_dies_without_closing_them(tmp_path):
    script = (f"import os, sys; sys.path[:0] = {sys.path!r}\n"
              "os.environ.update(CNNC_THREADS='2', CNNC_LANES='processes')\n"
              "from test_forked_lanes import *\n"
              "net = cnnc.compile_source(SOURCES['resnet_tiny']); steps(net, 1)\n"
              "print(*children(net), flush=True); os._exit(0)\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    pids = [int(p) for p in out.stdout.split()]
    assert pids, out.stderr
    deadline = time.monotonic() + 10
    while not all(gone(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(gone(pid) for pid in pids)


def test_the_children_keep_no_file_of_the_parent_open(monkeypatch, tmp_path):
    net = network(monkeypatch, 2)
    with open(tmp_path / "log", "w"):
        steps(net, 1)
        opened = [os.readlink(f"/proc/{children(net)[0]}/fd/{fd}") for fd in os.listdir(f"/proc/{children(net)[0]}/fd")]
    assert not any(str(tmp_path) in target for target in opened)
    assert len(opened) <= 5  # standard input, output, error and two pipes


INHERITED = {}  # what a forked worker finds in its copy of this module


def _users_worker(lr):
    """A multiprocessing worker training its own variant of the network."""
    net = INHERITED["net"]
    for _ in range(2):
        steps(net, 1)
        net.vector[:net.layout.trainable] -= lr * net.grad_vector
    return net.vector.copy()


def test_a_process_the_user_forks_shares_neither_weights_nor_children(monkeypatch):
    net = INHERITED["net"] = network(monkeypatch, 2)
    steps(net, 1)
    pids, before = children(net), net.vector.copy()
    try:
        with multiprocessing.get_context("fork").Pool(2) as workers:
            variants = workers.map(_users_worker, [0.1, 0.001])
    finally:
        INHERITED.clear()
    assert not np.array_equal(variants[0], variants[1]), "each worker trains its own weights"
    assert np.array_equal(net.vector, before), "the workers' steps must not write this process's weights"
    assert not any(gone(pid) for pid in pids), "the workers must not end this process's children"
    steps(net, 1)
    assert children(net) == pids


def fake_pool(count: int, loss_and_grads) -> forked_lanes.ForkedLanes:
    """A pool whose lanes run `loss_and_grads` on batches of one 1x2x2 image per lane."""
    return forked_lanes.ForkedLanes(types.SimpleNamespace(loss_and_grads=loss_and_grads), count, count,
                                    (1, 2, 2), (), (1,), 10, 10, 4)


def fake_step(pool: forked_lanes.ForkedLanes) -> list:
    n = pool.capacity
    parts = [slice(k, k + 1) for k in range(n)]
    return pool.step(np.zeros((n, 1, 2, 2), np.float32), np.zeros(n, np.int64), parts, np.zeros(10, np.float32),
                     np.zeros(10, np.float32), 1, n, 0, 0.0)[0]


def test_130_lanes_report_their_steps():
    def lane(x, y, P, G, seed, total, start, smoothing, replicas):
        sums = np.full((2, 1), float(start))
        replicas.sum(sums)
        return (sums[0, 0], start)

    pool = fake_pool(130, lane)
    try:
        results = fake_step(pool)
    finally:
        pool.close()
    assert results == [(sum(range(130)), k) for k in range(130)]


def test_the_command_line_reports_a_failed_lane_with_status_1(monkeypatch, capsys, tmp_path):
    def failed(*args, **kwargs):
        raise forked_lanes.LaneFailed("a lane's process died during the training step")

    monkeypatch.setattr(cnnc.runtime.Network, "loss_grads_correct", failed)
    model = tmp_path / "m.cnn"
    model.write_text(SOURCES["resnet_tiny"])
    x, y = np.random.default_rng(0).random((16, 3, 32, 32), np.float32), np.arange(16) % 10
    np.savez(tmp_path / "d.npz", x_train=x, y_train=y, x_test=x, y_test=y)
    command = ["train", str(model), str(tmp_path / "d.npz"), "--epochs", "1", "--out", str(tmp_path / "w.npz")]
    assert cli.main(command) == 1
    assert "died during the training step" in capsys.readouterr().err
