"""Lanes as replicas: a training step cut into 1, 2 or 3 slices computes the step of the whole
batch (batchnorm statistics summed across the lanes), and a failing lane never hangs the others."""
from __future__ import annotations

import threading

import numpy as np
import pytest

import cnnc
import reference
from cnnc import lanes
from cnnc.replicas import LaneGroup
from test_models import SOURCES, assert_gradients_match, random_step, relative_error

BATCHNORM_MODELS = ("every_op_image", "every_op_vector", "resnet_tiny")


def step(source: str, threads: int, monkeypatch, optimize: bool = True):
    monkeypatch.setenv("CNNC_THREADS", str(threads))
    net = cnnc.compile_source(source, optimize=optimize)
    return (net, *random_step(net, 11))


@pytest.mark.parametrize("name", BATCHNORM_MODELS)
def test_batchnorm_training_on_lanes_equals_one_lane_and_pytorch(name, monkeypatch):
    """13 images as 1, 2 (6 + 7) and 3 (4 + 4 + 5) slices: the loss, every gradient and the running
    statistics of the whole batch, equal to the single lane's to float32 rounding."""
    source = SOURCES[name]
    one_net, before, x, y, one_loss, one_grads = step(source, 1, monkeypatch)
    for threads in (2, 3):
        net, _, _, _, loss, grads = step(source, threads, monkeypatch)
        assert loss == pytest.approx(one_loss, rel=1e-6)
        for param, g in one_grads.items():
            assert relative_error(grads[param], g) < 2e-5 or np.linalg.norm(g) < 1e-6, (threads, param)
        for param in (p for p in net.params if "running" in p):
            assert relative_error(net.params[param], one_net.params[param]) < 1e-6, (threads, param)
    ref_loss, ref_grads, ref_running = reference.loss_and_grads(one_net.parsed, before, x, y)
    assert abs(loss - ref_loss) <= 1e-4 * abs(ref_loss)
    assert_gradients_match(grads, ref_grads)
    for param, ref in ref_running.items():
        assert relative_error(net.params[param], ref) < 1e-5, param


def test_every_lane_gets_the_same_sum():
    group = LaneGroup(3)
    buffers = [np.full(4, k + 1.0) for k in range(3)]
    threads = [threading.Thread(target=lane.sum, args=(b,)) for lane, b in zip(group.lanes(), buffers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert all(np.array_equal(b, np.full(4, 6.0)) for b in buffers)


def test_a_failing_lane_stops_the_others_with_its_own_error():
    """Lane 1 fails before its first sum; lane 0, waiting there for it, must not hang, and the
    caller sees lane 1's error, not the broken barrier."""
    def work(k, replicas):
        if k == 1:
            raise ValueError("lane 1 failed")
        replicas.sum(np.zeros(2))
        return k

    done = []
    caller = threading.Thread(target=lambda: done.append(_error_of(lambda: lanes.run(work, [(0,), (1,)], 2, True))))
    caller.start()
    caller.join(timeout=20)
    assert not caller.is_alive(), "a lane waited forever"
    assert isinstance(done[0], ValueError) and "lane 1 failed" in str(done[0])


def _error_of(fn):
    try:
        fn()
    except Exception as error:  # noqa: BLE001 -- the test inspects it
        return error
    return None


class Interrupted(Exception):
    pass


def test_an_interrupt_while_lanes_sum_stops_the_call_after_the_lanes_stop(monkeypatch):
    """A signal handled while the lanes meet at their barriers (Ctrl-C in a training step): the
    call raises it, no lane hangs, and every lane has stopped by then, so nothing writes into
    the buffers after the caller has moved on."""
    import os
    import signal
    import time

    stopped = []

    def work(k, replicas):
        try:
            for _ in range(200):
                time.sleep(0.005)
                replicas.sum(np.ones(3))
        finally:
            stopped.append(k)

    def interrupt(signum, frame):
        raise Interrupted

    previous = signal.signal(signal.SIGINT, interrupt)
    try:
        threading.Timer(0.03, os.kill, (os.getpid(), signal.SIGINT)).start()
        start = time.perf_counter()
        with pytest.raises(Interrupted):
            lanes.run(work, [(0,), (1,), (2,)], 3, True)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert sorted(stopped) == [0, 1, 2]
    assert time.perf_counter() - start < 0.5  # the lanes stopped at their next sum, not after 200


def test_lanes_hand_their_total_to_the_other_processes_once_per_sum():
    """Lanes composed with processes (`across`): lane 0 alone passes the lanes' total on, once per
    sum, and every lane gets what comes back (here: as from one more process holding the same)."""
    class Across:
        count, first, calls = 2, True, []

        def sum(self, buffer):
            self.calls.append(buffer.copy())
            buffer *= 2

    across = Across()
    group = LaneGroup(3, across)
    buffers = [np.full(4, k + 1.0) for k in range(3)]
    threads = [threading.Thread(target=lambda lane, b: (lane.sum(b), lane.sum(b)), args=(lane, b))
               for lane, b in zip(group.lanes(), buffers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert [c.tolist() for c in across.calls] == [[6.0] * 4, [36.0] * 4]  # 2 * (1 + 2 + 3), then 2 * 3 * 12
    assert all(np.array_equal(b, np.full(4, 72.0)) for b in buffers)
    assert [lane.count for lane in group.lanes()] == [6, 6, 6]


def test_two_steps_started_together_from_two_threads_both_finish(monkeypatch):
    """Two networks trained from two threads: their lanes share the pool. Hand-outs made to
    interleave (A0, B0, A1, B1) must not leave each step holding a thread and waiting for one."""
    import time

    pool = lanes._pool(2)
    submit = pool.submit

    def slow_submit(*args, **kwargs):
        time.sleep(0.01)
        return submit(*args, **kwargs)

    monkeypatch.setattr(pool, "submit", slow_submit)

    def work(k, replicas):
        replicas.sum(np.ones(2))
        return k

    callers = [threading.Thread(target=lanes.run, args=(work, [(0,), (1,)], 2, True)) for _ in range(2)]
    for t in callers:
        t.start()
    for t in callers:
        t.join(timeout=5)
    assert not any(t.is_alive() for t in callers), "two steps waited for each other forever"


def test_inference_in_groups_equals_one_call_per_lane(monkeypatch):
    """A lane's slice runs through forward in equal groups of at most forward_group images (10 + 9
    of 19 on one lane, at most 4 of 10 per lane on two): the probabilities of one call, to rounding.
    On threads, where this process sees every call (test_forked_lanes.py has the processes')."""
    monkeypatch.setenv("CNNC_LANES", "threads")
    net = cnnc.compile_source(SOURCES["resnet_tiny"])
    x = np.random.default_rng(3).standard_normal((19, *net.input_shape)).astype(np.float32)
    whole = net.module.forward(net.normalized(x), net.vector)
    calls = []
    real = net.module.forward
    monkeypatch.setattr(net.module, "forward", lambda x, P, memo=None: calls.append(len(x)) or real(x, P, memo))
    for threads, group, sizes in ((1, 10, [10, 9]), (2, 4, [4, 3, 3, 3, 3, 3])):
        monkeypatch.setattr(lanes, "lane_count", lambda: threads)
        net.forward_group, calls[:] = group, []
        assert relative_error(net.forward(x), whole) < 1e-6
        assert sorted(calls, reverse=True) == sizes


def test_the_cgroup_cpu_quota_is_the_smallest_on_the_path(tmp_path):
    """A container limited to 1.5 CPUs inside a slice without a limit: 1.5 CPUs, so one lane."""
    (tmp_path / "proc").write_text("12:cpu:/ignored\n0::/slice/container\n")
    (tmp_path / "slice" / "container").mkdir(parents=True)
    (tmp_path / "cpu.max").write_text("max 100000\n")
    (tmp_path / "slice" / "cpu.max").write_text("400000 100000\n")
    (tmp_path / "slice" / "container" / "cpu.max").write_text("150000 100000\n")
    assert lanes.cgroup_cpu_quota(str(tmp_path), str(tmp_path / "proc")) == 1.5
    (tmp_path / "slice" / "container" / "cpu.max").write_text("max 100000\n")
    assert lanes.cgroup_cpu_quota.__wrapped__(str(tmp_path), str(tmp_path / "proc")) == 4.0
    assert lanes.cgroup_cpu_quota.__wrapped__(str(tmp_path / "none"), str(tmp_path / "proc")) is None
