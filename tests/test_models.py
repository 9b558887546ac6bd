"""Whole networks against the PyTorch reference: forward, loss, every gradient, running statistics.

Each model is compiled with and without the passes; both must match the reference (so the
optimized graph computes what the parsed one does), on fresh random inputs and parameters.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

import cnnc
import reference
from checks import central_difference

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
# Test models that are not examples: the resizing ops in an encoder-decoder.
TEST_MODELS = [Path(__file__).resolve().parent / "models" / f"{name}.cnn" for name in ("encoder_decoder", "pool_rounding")]

# Small models that together use every op, padding mode and a branching graph.
EVERY_OP = {
    "every_op_image": """
        input 3x9x7
        a: conv filters=4 size=3x2 stride=2x1 padding=same bias=false
        batchnorm
        r: relu
        b: conv(r) filters=3 size=3 padding=full activation=relu
        c: conv(r) filters=2 size=1 padding=1
        avgpool(c) size=3 stride=2 padding=1
        p: sigmoid
        q: maxpool(b) size=3 stride=2 padding=1
        cat: concat(q, p)
        s: tanh
        t: conv filters=5 size=2 padding=valid
        u: conv(t) filters=5 size=1 activation=relu
        add(t, u)
        globalavgpool
        flatten
        dense units=6
        softmax
        loss cross_entropy
    """,
    "conv_variants": """
        input 4x9x8
        a: conv filters=8 size=3 stride=2 padding=same groups=4 activation=relu
        b: conv filters=6 size=3 padding=same dilation=2 groups=2 bias=false
        batchnorm
        r: relu
        d: conv filters=6 size=3 padding=same dilation=2x1 groups=6
        add(r, d)
        e: conv filters=6 size=3 padding=full groups=6
        batchnorm
        f: conv filters=4 size=2 stride=2 padding=1 dilation=2 groups=2 activation=relu
        globalavgpool
        flatten
        dense units=3
        loss cross_entropy
    """,
    "every_op_vector": """
        input 2x6x6
        conv filters=3 size=3 stride=2 padding=2x1
        flatten
        d: dense units=7 bias=false
        batchnorm
        dropout rate=0
        e: tanh
        f: dense(d) units=7 activation=relu
        add(e, f)
        dense units=5
        loss cross_entropy
    """,
    "every_op_pixels": """
        input 2x7x5
        a: conv filters=4 size=3 padding=same activation=relu
        b: conv(a) filters=3 size=3x1 padding=same bias=false batchnorm=true
        m: maxpool(a) size=3 stride=1 padding=same
        cat: concat(b, m)
        conv filters=3 size=1
        softmax axis=channels
        loss cross_entropy
    """,
    "pixel_logits": """
        input 1x5x6
        conv filters=3 size=3 padding=1 activation=tanh
        conv filters=4 size=1
        loss cross_entropy
    """,
}


def relative_error(ours, ref) -> float:
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    return float(np.linalg.norm(ours - ref) / max(np.linalg.norm(ref), 1e-30))


def assert_gradients_match(grads, ref_grads):
    """Norm-wise relative error under 1e-4 per parameter. A gradient that is zero in exact
    arithmetic (a bias right before batchnorm) is float32 rounding noise in both: there the
    check is that ours is as negligible as the reference's, against the whole gradient."""
    whole = np.sqrt(sum(np.linalg.norm(g) ** 2 for g in ref_grads.values()))
    assert set(grads) == set(ref_grads)
    for param, ref in ref_grads.items():
        if np.linalg.norm(ref) < 1e-6 * whole:
            assert np.linalg.norm(grads[param]) < 1e-5 * whole, param
        else:
            assert relative_error(grads[param], ref) < 1e-4, param


def randomize(net, rng) -> None:
    """Fresh random parameters: nothing zero, running variances positive."""
    for name, view in net.params.items():
        kind = name.rsplit(".", 1)[1]
        if kind == "running_var":
            view[...] = rng.uniform(0.5, 2.0, view.shape)
        elif kind == "weight":
            view[...] = rng.standard_normal(view.shape) * np.sqrt(2.0 / np.prod(view.shape[1:]))
        else:
            view[...] = rng.standard_normal(view.shape) * 0.5


# Too big to run here on CI's two cores: test_blocks.py compiles it and counts its parameters.
FULL_SIZE_ONLY = {"resnet18"}
# Deep enough that float32 rounding alone moves some gradients by more than 1e-4 (in resnet20 it is
# PyTorch's float32 run that strays: 5e-3 from float64 on batchnorm gradients, where ours is 1e-6
# off): these are held to a float64 reference instead, all gradients together within twice the
# error of PyTorch's own float32 run, each within five times (or 1e-4).
DEEP = {"densenet_bc40", "mobilenet_v1", "resnet20"}
# At full width, mobilenet_v1's float32 gradients at random parameters are chaotic: PyTorch's own
# float32 run strays 0.2-17% from float64 depending on the seed (ReLUs of values near zero flip,
# and the last batchnorms see 2x2 planes). Its gradients are checked at an eighth of the width:
# the same blocks, strides and kernels (the depthwise ones included).
NARROWED = {"mobilenet_v1"}


def narrow(source: str) -> str:
    return re.sub(r"\b(channels|filters)=(\d+)", lambda m: f"{m.group(1)}={int(m.group(2)) // 8}", source)


def random_step(net, seed: int, images: int = 13):
    """Fresh random parameters and a batch, and one loss_and_grads on them: the parameters
    before the step, the batch, the loss and a copy of the gradients."""
    rng = np.random.default_rng(seed)
    randomize(net, rng)
    before = {n: v.copy() for n, v in net.params.items()}
    x = rng.standard_normal((images,) + net.input_shape).astype(np.float32)
    y = rng.integers(0, net.lowered.output_shape[0], (images,) + net.label_shape)  # a class per image or pixel
    loss, grads = net.loss_and_grads(x, y)
    return before, x, y, loss, {n: g.copy() for n, g in grads.items()}


def model_sources():
    sources = {name: re.sub(r"^\s+", "", text, flags=re.M) for name, text in EVERY_OP.items()}
    for path in sorted(EXAMPLES.glob("*.cnn")) + TEST_MODELS:
        if path.stem in FULL_SIZE_ONLY:
            continue
        # cnnc's dropout masks cannot be replayed in PyTorch: compare with rate 0 (dropout has its own tests).
        sources[path.stem] = re.sub(r"dropout\s+rate=[0-9.]+|dropout\s*$", "dropout rate=0",
                                    path.read_text(), flags=re.M)
    return sources


SOURCES = model_sources()


@pytest.fixture(autouse=True)
def three_lanes(monkeypatch):
    """Batches of 9 and 13 images run as 2 and 3 slices in parallel threads (cnnc/lanes.py), whose
    results are put together: these tests check that too (training slices only without batchnorm)."""
    monkeypatch.setenv("CNNC_THREADS", "3")


@pytest.fixture(scope="module", params=sorted(SOURCES))
def case(request):
    name = request.param
    return name, SOURCES[name]


@pytest.mark.parametrize("optimize", [True, False], ids=["optimized", "parsed"])
def test_forward_matches_pytorch(case, optimize):
    name, source = case
    net = cnnc.compile_source(source, optimize=optimize, file=f"{name}.cnn")
    rng = np.random.default_rng(1)
    randomize(net, rng)
    x = rng.standard_normal((9,) + net.input_shape).astype(np.float32)
    ours = net.forward(x)
    ref = reference.forward(net.parsed, dict(net.params), x)
    assert ours.shape == ref.shape
    assert relative_error(ours, ref) < 1e-4


@pytest.mark.parametrize("optimize", [True, False], ids=["optimized", "parsed"])
def test_loss_and_grads_match_pytorch(case, optimize):
    name, source = case
    source = narrow(source) if name in NARROWED else source
    net = cnnc.compile_source(source, optimize=optimize, file=f"{name}.cnn")
    if not net.parsed.graph["loss"]:
        pytest.skip("no loss")
    before, x, y, loss, grads = random_step(net, 2)
    ref_loss, ref_grads, ref_running = reference.loss_and_grads(net.parsed, before, x, y)
    assert abs(loss - ref_loss) <= 1e-4 * abs(ref_loss)
    if name in DEEP:
        exact = reference.loss_and_grads(net.parsed, {n: v.astype(np.float64) for n, v in before.items()},
                                         x.astype(np.float64), y)[1]
        whole = [np.concatenate([g[p].ravel() for p in exact]) for g in (grads, ref_grads, exact)]
        assert relative_error(whole[0], whole[2]) <= max(1e-4, 2 * relative_error(whole[1], whole[2]))
        for param, ref in exact.items():
            assert relative_error(grads[param], ref) <= max(1e-4, 5 * relative_error(ref_grads[param], ref)), param
    else:
        assert_gradients_match(grads, ref_grads)
    for param, ref in ref_running.items():  # running statistics move as PyTorch's do
        assert relative_error(net.params[param], ref) < 1e-5, param


# The step is smaller where ReLUs and max pooling put kinks near the probed points (at 1e-2 a
# probe of encoder_decoder's e2.weight crossed one: 0.594 against 0.576, converging as h shrinks).
@pytest.mark.parametrize("name, step", [("every_op_vector", 1e-2), ("encoder_decoder", 1e-3), ("pool_rounding", 1e-3)])
def test_gradients_match_finite_differences(name, step):
    """An independent check of the gradients that needs no PyTorch: central differences in float64 sums."""
    net = cnnc.compile_source(SOURCES[name].replace("dropout rate=0\n", ""), file="fd.cnn")
    rng = np.random.default_rng(3)
    randomize(net, rng)
    x = rng.standard_normal((5,) + net.input_shape).astype(np.float32)
    y = rng.integers(0, net.lowered.output_shape[0], 5)
    running = {n: v.copy() for n, v in net.params.items() if "running" in n}

    def loss_at():
        value, _ = net.loss_and_grads(x, y)
        for n, v in running.items():  # the forward pass moves them; keep every probe identical
            net.params[n] = v
        return value

    loss_at()
    analytic = {n: g.copy() for n, g in net.grads.items()}
    for name, grad in analytic.items():
        view = net.params[name].reshape(-1)
        for i in rng.choice(view.size, size=min(3, view.size), replace=False):
            numeric = central_difference(loss_at, view, i, h=step * max(1.0, abs(float(view[i]))))
            assert numeric == pytest.approx(grad.reshape(-1)[i], rel=3e-2, abs=3e-3), (name, i)


def test_writing_params_changes_the_next_call():
    net = cnnc.compile(EXAMPLES / "lenet5.cnn")
    x = np.random.default_rng(4).random((2, 1, 28, 28), dtype=np.float32)
    first = net.forward(x)
    net.params["dense3.bias"][...] += 5.0 * np.arange(10)
    assert not np.allclose(first, net.forward(x))
    net.params["dense3.weight"] = np.zeros((10, 84), np.float32)
    assert np.allclose(net.forward(x)[0], net.forward(x)[1])


def test_seed_fixes_initialization():
    a = cnnc.compile(EXAMPLES / "lenet5.cnn", seed=7)
    b = cnnc.compile(EXAMPLES / "lenet5.cnn", seed=7)
    c = cnnc.compile(EXAMPLES / "lenet5.cnn", seed=8)
    assert all(np.array_equal(a.params[n], b.params[n]) for n in a.params)
    assert not np.array_equal(a.params["conv1.weight"], c.params["conv1.weight"])
    assert all(v.dtype == np.float32 for v in a.params.values())


@pytest.mark.parametrize("bad, words", [
    (np.zeros((2, 28, 28), np.float32), "N x 1x28x28"),
    (np.zeros((2, 3, 28, 28), np.float32), "N x 1x28x28"),
    (np.array([["a"]]), "N x 1x28x28"),
])
def test_wrong_input_is_a_clear_error(bad, words):
    net = cnnc.compile(EXAMPLES / "lenet5.cnn")
    with pytest.raises(cnnc.InputError, match=words):
        net.forward(bad)


def test_labels_are_checked():
    net = cnnc.compile(EXAMPLES / "lenet5.cnn")
    x = np.zeros((2, 1, 28, 28), np.float32)
    with pytest.raises(cnnc.InputError, match="0..9"):
        net.loss_and_grads(x, [0, 10])
    with pytest.raises(cnnc.InputError, match="vector of 2"):
        net.loss_and_grads(x, [0])


def test_dropout_is_seeded_and_active_only_in_training():
    source = "input 1x4x4\nflatten\ndense units=32\ndropout rate=0.5\ndense units=3\nloss cross_entropy\n"
    a, b = cnnc.compile_source(source, seed=5), cnnc.compile_source(source, seed=5)
    x = np.random.default_rng(5).random((8, 1, 4, 4), dtype=np.float32)
    y = np.arange(8) % 3
    assert np.array_equal(a.forward(x), a.forward(x))
    losses_a = [a.loss_and_grads(x, y)[0] for _ in range(3)]
    losses_b = [b.loss_and_grads(x, y)[0] for _ in range(3)]
    assert losses_a == losses_b  # same seed, same masks
    assert len(set(losses_a)) == 3  # a new mask every step



def test_mobilenet_v1_learns_a_batch():
    """A few SGD steps of the full-width model on one random batch lower its loss."""
    net = cnnc.compile(EXAMPLES / "mobilenet_v1.cnn", seed=0)
    rng = np.random.default_rng(9)
    x = rng.standard_normal((8,) + net.input_shape).astype(np.float32)
    y = rng.integers(0, 10, 8)
    losses = []
    for _ in range(6):
        loss, grads = net.loss_and_grads(x, y)
        losses.append(loss)
        for name, grad in grads.items():
            net.params[name][...] -= 0.05 * grad
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.75 * losses[0], losses
