"""A training step's lanes as forked processes (cnnc/forked_lanes.py): the same bits as the thread
lanes, a child's error or death raised in the parent, a Ctrl-C that ends the children, and no
child left behind."""
from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest

import cnnc
from cnnc import forked_lanes
from test_models import SOURCES, random_step

pytestmark = pytest.mark.skipif(not forked_lanes.available(), reason="lanes are processes on Linux only")


def network(monkeypatch, lanes: int, mode: str = "processes"):
    monkeypatch.setenv("CNNC_THREADS", str(lanes))
    monkeypatch.setenv("CNNC_LANES", mode)
    return cnnc.compile_source(SOURCES["resnet_tiny"])


def steps(net, count: int = 2):
    """`count` steps of 13 images from the same start, each followed by a plain SGD update."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((13,) + net.input_shape).astype(np.float32)
    y = rng.integers(0, net.lowered.output_shape[0], 13)
    out = []
    for _ in range(count):
        loss, _ = net.loss_and_grads(x, y)
        out.append((loss, net.grad_vector.copy(), net.vector.copy()))
        net.vector[:net.layout.trainable] -= 0.01 * net.grad_vector
    return out


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.parametrize("lanes", [2, 3])
def test_processes_give_the_threads_bits(monkeypatch, lanes):
    """13 images as 6 + 7 or 4 + 4 + 5: loss, gradients and running statistics (in the vector) equal
    bit for bit, two steps running."""
    threads = steps(network(monkeypatch, lanes, "threads"))
    net = network(monkeypatch, lanes)
    processes = steps(net)
    assert net.forked is not None and net.forked.count == lanes, "the step must have run on processes"
    for (loss_t, grads_t, vector_t), (loss_p, grads_p, vector_p) in zip(threads, processes):
        assert loss_t == loss_p
        assert np.array_equal(grads_t, grads_p)
        assert np.array_equal(vector_t, vector_p)


def test_a_childs_error_is_raised_here_and_the_next_step_forks_anew(monkeypatch):
    net = network(monkeypatch, 2)
    net.compile(training=True)  # before the patch: its dry run reads the generated function's code
    real = net.module.loss_and_grads

    def failing(x, y, P, G, seed, total, start, *rest):
        if start > 0:  # lane 1: the child
            raise ValueError("a test's failure in lane 1")
        return real(x, y, P, G, seed, total, start, *rest)

    monkeypatch.setattr(net.module, "loss_and_grads", failing)  # inherited by the children forked next
    ended, close = [], forked_lanes.ForkedLanes.close
    monkeypatch.setattr(forked_lanes.ForkedLanes, "close",
                        lambda self: (ended.extend(pid for pid, _ in self.children), close(self)))
    with pytest.raises(forked_lanes.LaneFailed, match="a test's failure in lane 1"):
        steps(net, 1)
    assert net.forked.broken and ended and all(gone(pid) for pid in ended)
    monkeypatch.setattr(net.module, "loss_and_grads", real)
    after = steps(net, 1)[0]
    assert np.isfinite(after[0]) and not net.forked.broken


def test_a_child_that_dies_during_the_step_is_reported_not_waited_for(monkeypatch):
    net = network(monkeypatch, 2)
    net.compile(training=True)
    real = net.module.loss_and_grads

    def dying(x, y, P, G, seed, total, start, *rest):
        if start > 0:
            os._exit(3)
        return real(x, y, P, G, seed, total, start, *rest)

    monkeypatch.setattr(net.module, "loss_and_grads", dying)
    started = time.monotonic()
    with pytest.raises(forked_lanes.LaneFailed, match="died"):
        steps(net, 1)
    assert time.monotonic() - started < 30


def test_a_child_killed_between_steps_is_replaced(monkeypatch):
    net = network(monkeypatch, 2)
    before = net.vector.copy()
    first = steps(net, 1)[0]
    pid = net.forked.children[0][0]
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)  # dead for sure (a kill is delivered in its own time)
    net.vector[:] = before  # the weights and running statistics the first step started from
    again = steps(net, 1)[0]
    assert net.forked.children[0][0] != pid
    assert again[0] == first[0] and np.array_equal(again[1], first[1])


def test_an_interrupt_in_this_lane_ends_the_children(monkeypatch):
    net = network(monkeypatch, 2)
    steps(net, 1)
    children = [pid for pid, _ in net.forked.children]

    def interrupted(self, buffer):
        raise KeyboardInterrupt

    monkeypatch.setattr(forked_lanes.SharedLane, "sum", interrupted)  # this process's lane only: forked before
    with pytest.raises(KeyboardInterrupt):
        steps(net, 1)
    assert net.forked.broken and all(gone(pid) for pid in children)


def test_closing_ends_the_children(monkeypatch):
    net = network(monkeypatch, 3)
    steps(net, 1)
    children = [pid for pid, _ in net.forked.children]
    assert len(children) == 2 and not any(gone(pid) for pid in children)
    net.forked.close()
    assert all(gone(pid) for pid in children)
