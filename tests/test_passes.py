"""cnnc.passes: each pass alone (what it fuses, what it leaves, never mutating its input), the
pipelines, and the front end's speed on a long chain."""
from __future__ import annotations

import copy
import time
from pathlib import Path

import networkx as nx
import pytest

from cnnc import passes
from cnnc.frontend import check_source, optimized
from cnnc.graph import inputs
from cnnc.passes import (
    drop_dropout, fold_batchnorm, fuse_batchnorm_add, fuse_batchnorm_relu, fuse_conv_add, fuse_conv_relu,
    fuse_convtranspose_relu, fuse_dense_relu, fuse_softmax_cross_entropy,
)

EXAMPLES = sorted(Path(__file__).parent.parent.joinpath("examples").glob("*.cnn"))
ALL_PASSES = [drop_dropout, fold_batchnorm, fuse_conv_relu, fuse_dense_relu, fuse_softmax_cross_entropy,
              fuse_conv_add, fuse_batchnorm_add, fuse_batchnorm_relu, fuse_convtranspose_relu]

MIXED = """input 3x8x8
conv filters=4 size=3 padding=same
batchnorm
a: relu
b: conv filters=4 size=3 padding=same activation=relu
dropout
add(a, dropout1)
c: relu
d: dropout(c)
concat(a, d, c)
flatten
dense units=8 activation=relu
batchnorm
dense units=3
softmax
loss cross_entropy
"""


def graph(text: str) -> nx.DiGraph:
    return check_source(text)


def snapshot(g: nx.DiGraph):
    """Everything a pass could change, deep-copied so that later mutation shows."""
    return (copy.deepcopy(dict(g.nodes(data=True))), sorted(g.edges(data="index")), copy.deepcopy(g.graph))


SOURCES = [MIXED] + [p.read_text() for p in EXAMPLES]


@pytest.mark.parametrize("run", ALL_PASSES, ids=lambda p: p.__name__)
@pytest.mark.parametrize("source", SOURCES, ids=["mixed"] + [p.stem for p in EXAMPLES])
def test_a_pass_never_mutates_its_input(run, source):
    g = graph(source)
    before = snapshot(g)
    after = run(g)
    assert snapshot(g) == before
    if after is not g:  # and what it returns shares no mutable state with its input
        for node, data in after.nodes(data=True):
            data.setdefault("fused", []).append("x")
            data["attrs"]["changed"] = True
        after.graph["loss"] = "changed"
        after.graph["train"]["changed"] = True
        assert snapshot(g) == before


@pytest.mark.parametrize("run", ALL_PASSES, ids=lambda p: p.__name__)
def test_a_pass_with_nothing_to_do_returns_its_input(run):
    g = graph("input 1x4x4\ntanh\nflatten\ndense units=2\n")
    assert run(g) is g


def fused(g, node):
    data = g.nodes[node]
    return data.get("fused"), data.get("fused_ops"), data.get("activation"), data.get("folded_bn")


# -- each pass alone --------------------------------------------------------------------------


def test_fuse_conv_relu():
    g = fuse_conv_relu(graph("input 1x6x6\nconv filters=2 size=3\nrelu\nflatten\n"))
    assert list(g.nodes) == ["input1", "conv1", "flatten1"]
    assert fused(g, "conv1") == (["relu1"], ["relu"], "relu", None)
    assert inputs(g, "flatten1") == ["conv1"] and g.nodes["conv1"]["shape"] == (2, 4, 4)


def test_fuse_conv_relu_takes_the_activation_key_and_updates_the_output():
    g = fuse_conv_relu(graph("input 1x6x6\nb: conv filters=2 size=3 activation=relu\n"))
    assert list(g.nodes) == ["input1", "b"] and g.graph["output"] == "b"
    assert fused(g, "b") == (["b.relu"], ["relu"], "relu", None)


@pytest.mark.parametrize("source", [
    "input 1x6x6\nc: conv filters=2 size=3\nr: relu\nadd(c, r)\n",  # the conv feeds another layer too
    "input 1x6x6\nconv filters=2 size=3\nsigmoid\n",  # not a relu
    "input 1x6x6\nconv filters=2 size=3\nbatchnorm\nrelu\n",  # something in between
    "input 1x6x6\nrelu\nconv filters=2 size=3\n",  # relu before, not after
])
def test_fuse_conv_relu_leaves(source):
    g = graph(source)
    assert fuse_conv_relu(g) is g


def test_fuse_dense_relu():
    g = fuse_dense_relu(graph("input 1x2x2\nflatten\ndense units=3 activation=relu\ndense units=2\nrelu\n"))
    assert list(g.nodes) == ["input1", "flatten1", "dense1", "dense2"]
    assert fused(g, "dense1") == (["dense1.relu"], ["relu"], "relu", None)
    assert fused(g, "dense2") == (["relu1"], ["relu"], "relu", None)
    assert g.graph["output"] == "dense2" and inputs(g, "dense2") == ["dense1"]


def test_fuse_convtranspose_relu():
    g = fuse_convtranspose_relu(graph("input 2x3x3\nt: convtranspose filters=2 size=2 stride=2 activation=relu\n"
                                      "u: convtranspose filters=2 size=2\nrelu\n"))
    assert list(g.nodes) == ["input1", "t", "u"]
    assert fused(g, "t") == (["t.relu"], ["relu"], "relu", None)
    assert fused(g, "u") == (["relu1"], ["relu"], "relu", None)
    assert g.graph["output"] == "u" and inputs(g, "u") == ["t"]


def test_fuse_dense_relu_leaves_convs_and_fuse_conv_relu_leaves_dense():
    conv = graph("input 1x6x6\nconv filters=2 size=3\nrelu\n")
    dense = graph("input 1x2x2\nflatten\ndense units=3\nrelu\n")
    assert fuse_dense_relu(conv) is conv and fuse_conv_relu(dense) is dense


def test_fold_batchnorm():
    g = fold_batchnorm(graph("input 1x6x6\nconv filters=2 size=3\nbn: batchnorm\nrelu\n"))
    assert list(g.nodes) == ["input1", "conv1", "relu1"]
    assert fused(g, "conv1") == (["bn"], ["batchnorm"], None, "bn")
    assert inputs(g, "relu1") == ["conv1"]


def test_folded_then_fused_records_both_in_order():
    g, applied = optimized(graph("input 1x6x6\nconv filters=2 size=3\nbatchnorm\nrelu\n"), "inference")
    assert fused(g, "conv1") == (["batchnorm1", "relu1"], ["batchnorm", "relu"], "relu", "batchnorm1")
    assert applied == [("fold_batchnorm", 1), ("fuse_conv_relu", 1)]


@pytest.mark.parametrize("source", [
    "input 1x2x2\nflatten\ndense units=3\nbatchnorm\n",  # batchnorm after dense: not folded
    "input 1x6x6\nc: conv filters=2 size=3\nb: batchnorm\nadd(c, b)\n",  # the conv feeds another layer
    "input 1x6x6\nbatchnorm\nconv filters=2 size=3\n",
])
def test_fold_batchnorm_leaves(source):
    g = graph(source)
    assert fold_batchnorm(g) is g


def test_drop_dropout_rewires_consumers_in_input_order():
    g = drop_dropout(graph("input 1x6x6\na: relu\nd: dropout(input1)\nb: tanh(input1)\nconcat(a, d, b)\n"))
    assert "d" not in g and inputs(g, "concat1") == ["a", "input1", "b"]


def test_drop_dropout_at_the_output_and_in_a_row():
    g = drop_dropout(graph("input 1x6x6\nrelu\ndropout\ndropout rate=0.1\n"))
    assert list(g.nodes) == ["input1", "relu1"] and g.graph["output"] == "relu1"


def test_drop_dropout_keeps_one_whose_consumer_already_takes_its_input():
    # add(a, dropout(a)) cannot become add(a, a): a graph holds one edge per pair
    g = drop_dropout(graph("input 1x6x6\na: relu\nd: dropout\nadd(a, d)\n"))
    assert "d" in g and inputs(g, "add1") == ["a", "d"]


def test_fuse_softmax_cross_entropy():
    g = fuse_softmax_cross_entropy(graph("input 1x2x2\nflatten\ndense units=3\nsoftmax\nloss cross_entropy\n"))
    assert "softmax1" not in g and g.graph["output"] == "dense1"
    assert g.graph["loss"] == "softmax_cross_entropy"


@pytest.mark.parametrize("source", [
    "input 1x2x2\nflatten\ndense units=3\nsoftmax\n",  # no loss
    "input 1x2x2\nflatten\ndense units=3\nloss cross_entropy\n",  # logits already
    "input 1x2x2\nflatten\nd: dense units=3\ns: softmax\nadd(d, s)\nloss cross_entropy\n",  # softmax not last
])
def test_fuse_softmax_cross_entropy_leaves(source):
    g = graph(source)
    assert fuse_softmax_cross_entropy(g) is g


def test_fuse_softmax_cross_entropy_after_a_join():
    g = graph("input 1x2x2\nflatten\nd: dense units=3\nr: relu\ns: dense(d) units=3\nadd(r, s)\nsoftmax\n"
              "loss cross_entropy\n")
    after = fuse_softmax_cross_entropy(g)
    assert "softmax1" not in after and after.graph["output"] == "add1"


BLOCK = """input 4x6x6
stem: conv filters=4 size=3 padding=same activation=relu
conv filters=4 size=3 padding=same
batchnorm
relu
conv filters=4 size=3 padding=same
r: batchnorm
add(stem, r)
out: relu
flatten
dense units=2
loss cross_entropy
"""


def test_fuse_conv_add_takes_the_residual_as_a_second_input():
    after = fuse_conv_relu(fuse_conv_add(fold_batchnorm(graph(BLOCK))))
    assert "add1" not in after and "out" not in after
    assert inputs(after, "conv3") == ["conv2", "stem"]
    assert fused(after, "conv3") == (["r", "add1", "out"], ["batchnorm", "add", "relu"], "relu", "r")
    assert inputs(after, "flatten1") == ["conv3"]


def test_fuse_batchnorm_add_then_relu():
    after = fuse_batchnorm_relu(fuse_batchnorm_add(graph(BLOCK)))
    assert "add1" not in after and "out" not in after
    assert inputs(after, "r") == ["conv3", "stem.relu"]  # fuse_conv_relu has not run
    assert fused(after, "r") == (["add1", "out"], ["add", "relu"], "relu", None)
    assert fused(after, "batchnorm1") == (["relu1"], ["relu"], "relu", None)
    assert inputs(after, "flatten1") == ["r"]


@pytest.mark.parametrize("source", [
    "input 2x4x4\na: conv filters=2 size=1\nadd(input1, a)\n",  # add(x, conv(x)): x feeds both already
    "input 2x4x4\na: relu\nb: conv filters=2 size=1\nc: conv(a) filters=2 size=1\nadd(a, b, c)\n",  # three inputs
    "input 2x4x4\na: relu\nb: conv filters=2 size=1 activation=relu\nadd(a, b)\n",  # ReLU before the add
    "input 2x4x4\na: relu\nb: conv filters=2 size=1\nadd(a, b)\nc: relu(b)\nadd(add1, c)\n",  # b has two consumers
])
def test_fuse_conv_add_leaves(source):
    g = graph(source)
    assert fuse_conv_add(g) is g


def test_fuse_conv_add_picks_one_input_per_add():
    """Both inputs qualify: the later one absorbs the add; the earlier becomes its residual."""
    g = graph("input 2x4x4\na: conv filters=2 size=1\nb: conv(input1) filters=2 size=3 padding=same\nadd(a, b)\n")
    after = fuse_conv_add(g)
    assert set(after) == {"input1", "a", "b"} and inputs(after, "b") == ["input1", "a"]
    assert after.graph["output"] == "b"


def test_fuse_add_when_the_other_input_is_an_add_fused_before():
    """Two blocks whose outputs are bare adds: the second add's other input is the first add,
    which the layer before it has absorbed by then."""
    source = ("input 2x4x4\ns: conv filters=2 size=1\nrelu\na: conv filters=2 size=1\nadd(s, a)\n"
              "relu\nb: conv filters=2 size=1\nadd(add1, b)\n")
    for fuse, layers in ((fuse_conv_add, ("a", "b")), (fuse_batchnorm_add, None)):
        g = graph(source if layers else source.replace("a: conv filters=2 size=1", "conv filters=2 size=1\na: batchnorm")
                  .replace("b: conv filters=2 size=1", "conv filters=2 size=1\nb: batchnorm"))
        after = fuse(g)
        assert "add1" not in after and "add2" not in after
        assert inputs(after, "b")[1] == "a" and all("op" in d for _, d in after.nodes(data=True))


# -- pipelines --------------------------------------------------------------------------------


def test_pipelines():
    assert passes.INFERENCE == [drop_dropout, fold_batchnorm, fuse_conv_add, fuse_conv_relu, fuse_dense_relu,
                                fuse_convtranspose_relu]
    assert passes.TRAINING == [fuse_softmax_cross_entropy, fuse_batchnorm_add, fuse_conv_relu, fuse_dense_relu,
                               fuse_batchnorm_relu, fuse_convtranspose_relu]


def test_the_mixed_model_through_both_pipelines():
    g = graph(MIXED)
    assert g.number_of_nodes() == 17
    inference, applied = optimized(g, "inference")
    assert applied == [("drop_dropout", 1), ("fold_batchnorm", 1), ("fuse_conv_relu", 2), ("fuse_dense_relu", 1)]
    assert inference.number_of_nodes() == 12
    assert fused(inference, "conv1") == (["batchnorm1", "a"], ["batchnorm", "relu"], "relu", "batchnorm1")
    assert inputs(inference, "concat1") == ["conv1", "d", "c"]  # d stays: concat takes c already
    assert inputs(inference, "add1") == ["conv1", "b"]
    training, applied = optimized(g, "training")
    assert applied == [("fuse_softmax_cross_entropy", 1), ("fuse_conv_relu", 1), ("fuse_dense_relu", 1),
                       ("fuse_batchnorm_relu", 1)]
    assert training.number_of_nodes() == 13
    assert training.graph["output"] == "dense2" and training.graph["loss"] == "softmax_cross_entropy"
    assert {"dropout1", "d", "batchnorm1", "batchnorm2"} <= set(training)
    assert fused(training, "batchnorm1") == (["a"], ["relu"], "relu", None)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
@pytest.mark.parametrize("mode", ["inference", "training"])
def test_examples_get_smaller_exactly_where_something_fused(path, mode):
    g = graph(path.read_text())
    after, applied = optimized(g, mode)
    assert after.number_of_nodes() == g.number_of_nodes() - sum(removed for _, removed in applied)
    assert (after.number_of_nodes() < g.number_of_nodes()) == bool(applied)
    for node, data in after.nodes(data=True):
        assert len(data.get("fused", [])) == len(data.get("fused_ops", []))
        assert all(member in g and member not in after for member in data.get("fused", []))


# -- speed ------------------------------------------------------------------------------------


def test_a_5000_layer_chain_goes_through_the_front_end_in_under_5_seconds():
    lines = ["input 1x8x8"] + ["relu" if i % 2 == 0 else "conv filters=1 size=1" for i in range(5000)]
    source = "\n".join(lines) + "\n"
    start = time.perf_counter()
    g = check_source(source)
    inference, _ = optimized(g, "inference")
    training, _ = optimized(g, "training")
    seconds = time.perf_counter() - start
    assert g.number_of_nodes() == 5001 and inference.number_of_nodes() == training.number_of_nodes() == 2502
    assert seconds < 5, f"{seconds:.2f} s"
