"""The memo of Winograd's transformed filters (kernels/winograd.py: winograd_memo): a forward that
runs whole on one lane keeps them from call to call, and must give, bit for bit, what a fresh
memo gives after any change to what they depend on: the weights, a folded batchnorm's
statistics, the tile size. (Without a memo, calls of 16 to 63 tiles take F(2x2) instead of
F(4x4): the same to rounding, not bit for bit.)"""
from __future__ import annotations

import threading

import numpy as np
import pytest

import cnnc
from cnnc.kernels import winograd
from cnnc.kernels.winograd import conv3x3_forward, winograd_memo

MODEL = """
model memo_check
input 3x16x16
conv filters=32 size=3 padding=same
batchnorm
relu
conv filters=16 size=3 padding=same
batchnorm
relu
globalavgpool
flatten
dense units=4
softmax
loss cross_entropy
train optimizer=sgd lr=0.1 batch=4 epochs=1
"""
NONE = (np.empty((0, 0, 0), np.float32), np.empty(0, np.float32))


def fresh():
    """A memo that has recorded nothing: the call transforms the filters."""
    return winograd_memo({}, "conv", 16, 16)


def call(x, w, scale, memo):
    """conv3x3_forward's inference output (16 channels, same padding, ReLU) with the given memo."""
    F, (C, N, H, W) = w.shape[0], x.shape
    out = np.empty((F, N, H, W), np.float32)
    b = np.linspace(-0.5, 0.5, F).astype(np.float32)
    conv3x3_forward(x, w, b, scale, np.empty((0, 0, 0, 0), np.float32), out, 1, 1, True, True, *memo)
    return out


def layer(seed, images=1):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((16, images, 8, 8)).astype(np.float32)
    w = rng.standard_normal((16, 16, 3, 3)).astype(np.float32) * 0.1
    scale = rng.uniform(0.5, 2.0, 16).astype(np.float32)
    return x, w, scale


@pytest.mark.parametrize("change", ["the first weight", "a weight", "the last weight", "the first scale",
                                    "the last scale", "the tile size", "nothing"])
def test_the_memo_gives_what_a_fresh_transform_gives_after_a_change(change):
    x, w, scale = layer(1)
    memo = fresh()
    assert np.array_equal(call(x, w, scale, memo), call(x, w, scale, NONE))  # 4 tiles: F(2x2) either way
    if change.endswith("weight"):
        w[{"the first weight": (0, 0, 0, 0), "a weight": (3, 5, 1, 2), "the last weight": (15, 15, 2, 2)}[change]] += 0.25
    elif change.endswith("scale"):
        scale[0 if change == "the first scale" else 15] *= 1.5
    elif change == "the tile size":  # 4 images of 8x8 have the 16 tiles that F(4x4) takes with a memo
        x = np.concatenate([x] + [layer(k)[0] for k in (2, 3, 4)], axis=1)
    assert np.array_equal(call(x, w, scale, memo), call(x, w, scale, fresh()))
    assert memo[1][-1] == (4 if change == "the tile size" else 2)  # what the memo recorded last


def test_the_memo_is_read_when_nothing_changed():
    """A second call with the same filters reads memo_u, even if it is wrong: here it is spoiled
    on purpose, and the output follows it (proof that the transform was skipped)."""
    x, w, scale = layer(5)
    memo = fresh()
    right = call(x, w, scale, memo)
    memo[0][:] = 0
    assert not np.array_equal(call(x, w, scale, memo), right)


def test_a_nan_in_the_filters_is_transformed_at_every_call():
    x, w, scale = layer(6)
    w[0, 0, 1, 1] = np.nan
    memo = fresh()
    first = call(x, w, scale, memo)
    np.testing.assert_array_equal(first, call(x, w, scale, NONE))  # NaNs where they fall, the rest equal
    w[0, 0, 1, 1] = 0.5
    assert np.array_equal(call(x, w, scale, memo), call(x, w, scale, fresh()))


def test_one_memo_keeps_two_models_layers_of_the_same_name_apart():
    """A memo handed to two models' forwards: "conv" of 16 -> 16 filters and of 32 -> 16."""
    memo = {}
    for channels in (16, 32, 16):
        x = np.random.default_rng(channels).standard_normal((channels, 1, 8, 8)).astype(np.float32)
        w = np.random.default_rng(channels + 1).standard_normal((16, channels, 3, 3)).astype(np.float32)
        scale = np.ones(16, np.float32)
        got = call(x, w, scale, winograd_memo(memo, "conv", channels, 16))
        assert np.array_equal(got, call(x, w, scale, winograd_memo({}, "conv", channels, 16)))


def test_layers_past_the_memo_budget_get_no_memo(monkeypatch):
    per_layer = 4 * (36 * 17 * 16 + 16 * 16 * 9 + 16 + 1)
    monkeypatch.setattr(winograd, "MEMO_BYTES", per_layer + 100)
    memo = {}
    assert winograd_memo(memo, "first", 16, 16)[1].size > 0
    assert winograd_memo(memo, "second", 16, 16)[1].size == 0
    assert winograd_memo(memo, "first", 16, 16)[1].size > 0  # kept


@pytest.fixture(scope="module")
def net():
    return cnnc.compile_source(MODEL, seed=3)


def plain(net, x):
    """The generated forward with a fresh memo."""
    return net.module.forward(net.check_input(x), net.vector, {})


def test_a_batch_one_forward_follows_every_change_to_the_parameters(net):
    x = np.random.default_rng(7).standard_normal((1, 3, 16, 16)).astype(np.float32)  # 16 tiles: F(4x4)
    assert np.array_equal(net.forward(x), plain(net, x))
    assert net.memo, "the batch-1 forward kept no memo"
    net.params["conv2.weight"][2, 1, 0, 0] += 0.5  # in place, as a user may
    assert np.array_equal(net.forward(x), plain(net, x))
    net.params["conv2.weight"][15, 31, 2, 2] += 0.5
    assert np.array_equal(net.forward(x), plain(net, x))
    net.params["batchnorm2.running_var"][15] *= 3.0  # the folded batchnorm's scale
    assert np.array_equal(net.forward(x), plain(net, x))
    y = np.array([0, 1, 2, 3])
    net.fit(np.random.default_rng(8).standard_normal((4, 3, 16, 16)).astype(np.float32), y, epochs=1, verbose=False)
    assert np.array_equal(net.forward(x), plain(net, x))


def test_batch_one_forwards_from_two_threads_are_both_right(net):
    """Each thread has a memo of its own: the two give the same bits as one thread. (With one memo
    under a lock, the thread without it took F(2x2) at 16 tiles where the memo's took F(4x4).)"""
    xs = np.random.default_rng(9).standard_normal((2, 1, 3, 16, 16)).astype(np.float32)
    expected = [plain(net, x) for x in xs]
    wrong = []

    def run(k):
        for _ in range(200):
            if not np.array_equal(net.forward(xs[k]), expected[k]):
                wrong.append(k)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not wrong
    assert net.memo, "this thread's memo"
