"""Blocks and repetition (cnnc/expand.py): scoped names, parameters, repeat= and first=, conv
batchnorm=true; the examples written with blocks against their flat form, their weights in ONNX and
in a PyTorch module under the hierarchical names; every block error located at both places."""
from __future__ import annotations

import math
import re
from pathlib import Path

import networkx as nx
import numpy as np
import onnx
import onnxruntime
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import cnnc
from cnnc.cli import main
from cnnc.diagnostics import ModelError
from cnnc.export.dot import to_dot
from cnnc.frontend import check_file, check_source
from cnnc.shapes import parameter_shapes
from cnnc.summary import render_summary
from test_diagnostics import caret_column
from test_export import randomize_buffers

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
FLAT_RESNET20 = ROOT / "tests" / "models" / "resnet20_flat.cnn"

BASIC = """\
block basic filters
    conv filters=filters size=3 padding=same bias=false batchnorm=true activation=relu
    r: conv filters=filters size=3 padding=same bias=false batchnorm=true
    add(in, r)
    relu
end
"""


def layer_lines(path: Path) -> int:
    """Lines that are not blank, not comments, and not `loss` or `train`."""
    lines = [line.split("#")[0].strip() for line in path.read_text().splitlines()]
    return sum(1 for line in lines if line and not line.startswith(("loss", "train")))


def trainable(g) -> int:
    return sum(math.prod(s) for n, s in parameter_shapes(g).items() if not n.endswith(("running_mean", "running_var")))


# -- the examples -----------------------------------------------------------------------------


@pytest.mark.parametrize("name, count", [("resnet20", 272_474), ("resnet18", 11_173_962), ("densenet_bc40", 176_122),
                                         ("mobilenet_v1", 3_217_226)])
def test_examples_are_short_and_count_the_papers_parameters(name, count):
    path = EXAMPLES / f"{name}.cnn"
    assert layer_lines(path) <= 30
    g = check_file(path)
    assert trainable(g) == count
    assert g.nodes[g.graph["output"]]["shape"] == (10,)


def structure(g):
    """The graph without its names: each node's op, attributes and shape in order, each edge by position.
    `batchnorm=` and `activation=` are left out: they stand for nodes of their own, compared as such."""
    order = list(nx.topological_sort(g))
    at = {n: i for i, n in enumerate(order)}
    nodes = [(g.nodes[n]["op"], {k: v for k, v in g.nodes[n]["attrs"].items() if k not in ("batchnorm", "activation")},
              g.nodes[n]["shape"]) for n in order]
    edges = sorted((at[u], at[v], d["index"]) for u, v, d in g.edges(data=True))
    return nodes, edges


def test_resnet20_with_blocks_is_the_flat_graph():
    blocks, flat = check_file(EXAMPLES / "resnet20.cnn"), check_file(FLAT_RESNET20)
    assert structure(blocks) == structure(flat)
    assert list(parameter_shapes(blocks).values()) == list(parameter_shapes(flat).values())
    assert "stage2.block1.p.weight" in parameter_shapes(blocks)


def test_resnet20_with_blocks_computes_the_flat_numbers_bit_for_bit():
    blocks = cnnc.compile(EXAMPLES / "resnet20.cnn", seed=5)
    flat = cnnc.compile(FLAT_RESNET20, seed=5)
    assert blocks.passes == flat.passes and blocks.training_passes == flat.training_passes
    assert all(np.array_equal(a, b) for a, b in zip(blocks.params.values(), flat.params.values()))
    rng = np.random.default_rng(6)
    x = rng.standard_normal((4, 3, 32, 32)).astype(np.float32)
    y = rng.integers(0, 10, 4)
    assert np.array_equal(blocks.forward(x), flat.forward(x))
    (loss_b, grads_b), (loss_f, grads_f) = blocks.loss_and_grads(x, y), flat.loss_and_grads(x, y)
    assert loss_b == loss_f
    assert [g.shape for g in grads_b.values()] == [g.shape for g in grads_f.values()]
    assert all(np.array_equal(a, b) for a, b in zip(grads_b.values(), grads_f.values()))
    assert all(np.array_equal(a, b) for a, b in zip(blocks.params.values(), flat.params.values()))  # running stats


# -- names, scopes, parameters ----------------------------------------------------------------


def test_names_follow_the_nesting_in_graph_summary_and_dot():
    g = check_source(BASIC + "input 2x6x6\nconv filters=4 size=1\nstage: basic filters=4 repeat=2\nb: basic filters=4\n"
                     "globalavgpool\n", "m.cnn")
    assert [n for n in g if n.startswith("stage.block2.")] == [
        "stage.block2.conv1", "stage.block2.conv1.batchnorm", "stage.block2.conv1.relu", "stage.block2.r",
        "stage.block2.r.batchnorm", "stage.block2.add1", "stage.block2.relu1"]
    assert "b.r.batchnorm.gamma" in parameter_shapes(g)
    assert g.nodes["stage.block1.r"]["scope"] == "stage.block1."
    net = cnnc.Network(g)
    summary = render_summary(g, net.graph, net.passes)
    assert "stage.block1.conv1" in summary and "conv+batchnorm+relu" in summary
    dot = to_dot(g)
    assert 'subgraph "cluster_stage.block1"' in dot and 'label="b"' in dot


def test_automatic_names_and_labels_are_local_to_each_use():
    g = check_source(BASIC + "input 2x6x6\nconv filters=4 size=1\nbasic filters=4\nbasic filters=4\n"
                     "conv filters=2 size=1\nr: relu\n")
    assert {"basic1.r", "basic2.r", "r", "conv2", "basic2.conv1"} <= set(g)
    assert "conv3" not in g  # the convolutions inside the uses do not count at the top level


def test_a_use_is_named_by_its_output():
    g = check_source(BASIC + "input 2x6x6\nconv filters=4 size=1\nb: basic filters=4\nc: conv(b) filters=4 size=1\n"
                     "add(basic1, c)\n")
    assert set(g.predecessors("c")) == {"b.relu1"}


def test_products_of_parameters_and_defaults():
    g = check_source("block wide growth scale=2\n  conv filters=growth*4/scale size=1\nend\n"
                     "input 1x4x4\nwide growth=3\nwide growth=3 scale=4\n")
    assert [g.nodes[n]["attrs"]["filters"] for n in ("wide1.conv1", "wide2.conv1")] == [6, 3]


def test_a_block_with_two_inputs_and_a_nested_use():
    g = check_source("block join(a, b) filters\n  x: conv(a) filters=filters size=1\n"
                     "  y: conv(b) filters=filters size=1\n  concat(x, y)\nend\n"
                     "block pair filters\n  left: conv filters=filters size=3 padding=same\n"
                     "  join(left, in) filters=filters*2\nend\n"
                     "input 2x5x5\np: pair filters=3\n")
    assert g.nodes[g.graph["output"]]["shape"] == (12, 5, 5)
    assert list(g.predecessors("p.join1.y")) == ["input1"]
    assert list(g.predecessors("p.join1.x")) == ["p.left"]


def test_first_copy_may_be_another_block():
    down = "block down filters\n  conv filters=filters size=3 stride=2 padding=1\nend\n"
    plain = "block plain filters\n  conv filters=filters size=3 padding=same\nend\n"
    g = check_source(down + plain + "input 1x8x8\ns: plain filters=2 repeat=3 first=down\n")
    assert [g.nodes[f"s.block{i}.conv1"]["shape"] for i in (1, 2, 3)] == [(2, 4, 4)] * 3


@pytest.mark.parametrize("activation", ["relu", "none", "tanh"])
def test_conv_batchnorm_true_is_the_three_line_form(activation):
    one = f"input 2x6x6\nconv filters=3 size=3 batchnorm=true activation={activation}\nflatten\ndense units=2\n" \
          "loss cross_entropy\n"
    act = "" if activation == "none" else f"{activation}\n"
    three = f"input 2x6x6\nconv filters=3 size=3\nbatchnorm\n{act}flatten\ndense units=2\nloss cross_entropy\n"
    a, b = cnnc.compile_source(one, seed=1), cnnc.compile_source(three, seed=1)
    assert a.passes == b.passes and a.graph.number_of_nodes() == b.graph.number_of_nodes()
    x = np.random.default_rng(2).standard_normal((4, 2, 6, 6)).astype(np.float32)
    assert np.array_equal(a.forward(x), b.forward(x))
    assert np.array_equal(a.loss_and_grads(x, [0, 1, 1, 0])[0], b.loss_and_grads(x, [0, 1, 1, 0])[0])


# -- weights under the hierarchical names: ONNX and PyTorch -----------------------------------


def conv_bn(cin, cout, size, stride, padding):
    conv = nn.Conv2d(cin, cout, size, stride, padding, bias=False)
    conv.batchnorm = nn.BatchNorm2d(cout)  # a child, so that the state dict says `conv1.batchnorm.weight`
    return conv


def conv_bn_forward(conv, x):
    return conv.batchnorm(conv(x))


class Basic(nn.Module):
    def __init__(self, cin, filters, down):
        super().__init__()
        self.conv1 = conv_bn(cin, filters, 3, 2 if down else 1, 1)
        self.r = conv_bn(filters, filters, 3, 1, 1)
        self.p = conv_bn(cin, filters, 1, 2, 0) if down else None

    def forward(self, x):
        r = conv_bn_forward(self.r, F.relu(conv_bn_forward(self.conv1, x)))
        return F.relu((conv_bn_forward(self.p, x) if self.p is not None else x) + r)


class ResNet20(nn.Module):
    """He et al.'s CIFAR ResNet-20 written in PyTorch with the module names of examples/resnet20.cnn."""

    def __init__(self):
        super().__init__()
        self.stem = conv_bn(3, 16, 3, 1, 1)
        cin = 16
        for stage, filters in enumerate((16, 32, 64), 1):
            blocks = nn.Module()
            for i in (1, 2, 3):
                blocks.add_module(f"block{i}", Basic(cin, filters, down=stage > 1 and i == 1))
                cin = filters
            self.add_module(f"stage{stage}", blocks)
        self.dense1 = nn.Linear(64, 10)

    def forward(self, x):
        x = F.relu(conv_bn_forward(self.stem, x))
        for stage in (self.stage1, self.stage2, self.stage3):
            for block in stage.children():
                x = block(x)
        return F.softmax(self.dense1(x.mean(dim=(2, 3))), dim=1)


def test_block_weights_load_into_pytorch_under_their_names(tmp_path):
    net = randomize_buffers(cnnc.compile(EXAMPLES / "resnet20.cnn", seed=7), 8)
    np.savez(tmp_path / "w.npz", **dict(net.params))
    saved = np.load(tmp_path / "w.npz")
    torch_names = {"gamma": "weight", "beta": "bias"}
    state = {re.sub(r"\.(gamma|beta)$", lambda m: "." + torch_names[m.group(1)], name): torch.tensor(saved[name])
             for name in saved.files}
    model = ResNet20().eval()
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert unexpected == [] and all(m.endswith("num_batches_tracked") for m in missing)
    x = np.random.default_rng(9).standard_normal((3, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        ours, theirs = net.forward(x), model(torch.tensor(x)).numpy()
    assert np.abs(ours - theirs).max() < 1e-5


def test_block_weights_export_to_onnx_under_their_names(tmp_path):
    net = randomize_buffers(cnnc.compile(EXAMPLES / "resnet20.cnn", seed=10), 11)
    np.savez(tmp_path / "w.npz", **dict(net.params))
    assert main(["export", str(EXAMPLES / "resnet20.cnn"), "--weights", str(tmp_path / "w.npz"),
                 "-o", str(tmp_path / "m.onnx")]) == 0
    model = onnx.load(tmp_path / "m.onnx")
    assert {i.name for i in model.graph.initializer} == set(net.params)
    session = onnxruntime.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(12).standard_normal((2, 3, 32, 32)).astype(np.float32)
    assert np.abs(session.run(None, {"input": x})[0] - net.forward(x)).max() < 1e-5


# -- errors: located at the definition, with a note at each use --------------------------------
# (id, source, (line, column), fragments of the whole diagnostic, [(line, column) of each note])

TWO = "block two(a, b)\n  concat(a, b)\nend\n"
ERRORS = [
    ("unknown-block-near-miss", BASIC + "input 1x8x8\nbasc filters=2\n", (8, 1),
     ["unknown op `basc`", "did you mean `basic`", "the blocks: basic"], []),
    ("too-many-inputs", BASIC + "input 1x8x8\na: relu\nbasic(a, input1) filters=1\n", (9, 1),
     ["block `basic` takes 1 input, not 2", "its inputs are: in (line 1)"], []),
    ("inputs-not-named", TWO + "input 1x8x8\ntwo\n", (5, 1), ["block `two` takes 2 inputs", "two(a, b)"], []),
    ("missing-argument", BASIC + "input 1x8x8\nb: basic\n", (8, 1), ["block `basic` needs `filters`", "line 1"], []),
    ("unknown-argument", BASIC + "input 1x8x8\nbasic filter=2\n", (8, 7),
     ["block `basic` has no parameter `filter`", "did you mean `filters`"], []),
    ("bare-argument", BASIC + "input 1x8x8\nbasic 2\n", (8, 7), ["unexpected value `2`", "filters, repeat, first"], []),
    ("argument-twice", BASIC + "input 1x8x8\nbasic filters=2 filters=3\n", (8, 17), ["`filters` is given twice"], []),
    ("argument-of-the-wrong-kind", "block b size=3\n  conv filters=1 size=size\nend\ninput 1x8x8\nb size=same\n",
     (5, 8), ["`size` of block `b` takes an integer or a pair HxW like its default `3`, not `same`", "line 1"], []),
    ("repeat-zero", BASIC + "input 1x8x8\nbasic filters=1 repeat=0\n", (8, 24),
     ["`repeat` must be a positive integer, not `0`"], []),
    ("first-unknown", BASIC + "input 1x8x8\nbasic filters=1 repeat=2 first=dwn\n", (8, 32),
     ["`first` must name a block, not `dwn`"], []),
    ("recursion", "block a n\n  conv filters=n size=1\n  a n=n\nend\ninput 1x8x8\na n=1\n", (3, 3),
     ["block `a` uses itself (a -> a)"], [(6, 1)]),
    ("mutual-recursion", "block a\n  b\nend\nblock b\n  relu\n  a\nend\ninput 1x8x8\na\n", (6, 3),
     ["block `a` uses itself (a -> b -> a)"], [(2, 3), (9, 1)]),
    ("repeat-of-a-two-input-block", TWO + "input 1x8x8\nr: relu\ntwo(r, input1) repeat=2\n", (6, 1),
     ["block `two` takes 2 inputs, so it cannot be repeated"], []),
    ("shape-error-inside-a-block", "block b k\n  relu\n  conv filters=2 size=k\nend\ninput 1x8x8\ns: b k=9 repeat=2\n",
     (3, 3), ["s.block1.conv1: the kernel 9x9 is larger", "note: in block `b` (k=9), used here as `s.block1`"],
     [(6, 1)]),
    ("bad-value-through-a-parameter", BASIC + "input 1x8x8\nx: basic filters=0\n", (2, 18),
     ["`filters` must be a positive integer, not `0`", "in block `basic` (filters=0), used here as `x`"], [(8, 1)]),
    ("error-two-blocks-deep", "block inner\n  conv filters=2 size=20\nend\nblock outer\n  relu\n  inner\nend\n"
     "input 1x8x8\nouter\n", (2, 3), ["outer1.inner1.conv1", "kernel 20x20"], [(6, 3), (9, 1)]),
    ("outer-name-inside-a-block", "block b\n  add(in, stem)\nend\ninput 1x8x8\nstem: relu\nb\n", (2, 3),
     ["add takes `stem`, but no layer has that name", "inside block `b`, name its own layers or its input `in`"],
     [(6, 1)]),
    ("label-in", "block b\n  in: relu\nend\ninput 1x8x8\nb\n", (2, 3), ["label `in` is the name of the input"],
     [(5, 1)]),
    ("input-inside-a-block", "block b\n  input 1x8x8\nend\ninput 1x8x8\nb\n", (2, 3),
     ["`input` cannot stand inside block `b`"], [(5, 1)]),
    ("loss-inside-a-block", "block b\n  relu\n  loss cross_entropy\nend\ninput 1x8x8\nb\n", (3, 3),
     ["`loss` cannot stand inside block `b`"], [(6, 1)]),
    ("block-without-end", "input 1x8x8\nblock b\n  relu\n", (2, 1), ["block `b` has no `end`"], []),
    ("end-without-block", "input 1x8x8\nrelu\nend\n", (3, 1), ["`end` without a block"], []),
    ("end-with-arguments", "block b\n  relu\nend b\n", (3, 1), ["`end` closes a block and takes nothing else"], []),
    ("block-inside-a-block", "block a\n  relu\nblock b\n  relu\nend\n", (3, 1),
     ["block `b` is defined inside block `a` (line 1)"], []),
    ("empty-block", "block a\nend\ninput 1x8x8\n", (1, 1), ["block `a` has no layers"], []),
    ("block-named-like-an-op", "block conv n\n  relu\nend\n", (1, 7), ["block `conv` has the name of an op"], []),
    ("block-defined-twice", "block a\n  relu\nend\nblock a\n  tanh\nend\n", (4, 7),
     ["block `a` is already defined at line 1"], []),
    ("parameter-twice", "block a n n\n  relu\nend\n", (1, 11), ["block `a` names `n` twice"], []),
    ("parameter-named-repeat", "block a repeat\n  relu\nend\n", (1, 9), ["`repeat` cannot be a parameter name"], []),
    ("parameter-named-same", "block a same=1\n  relu\nend\n", (1, 9), ["`same` cannot be a parameter name"], []),
    ("parameter-not-a-name", "block a 3\n  relu\nend\n", (1, 9), ["`3` is not a parameter name"], []),
    ("default-a-product", "block a n=2*3\n  relu\nend\n", (1, 11), ["the default of `n` must be a plain value"], []),
    ("product-outside-a-block", "input 1x8x8\nconv filters=x*2 size=1\n", (2, 14),
     ["`x` in `x*2` is not a parameter", "outside any block"], []),
    ("product-of-a-name", "block a p\n  conv filters=p*2 size=1\nend\ninput 1x8x8\na p=same\n", (2, 16),
     ["`p*2` needs integers, but `p` is `same`"], [(5, 1)]),
    ("division-by-zero", "block a p\n  conv filters=4/p size=1\nend\ninput 1x8x8\na p=0\n", (2, 16),
     ["`4/p` divides by zero"], [(5, 1)]),
    ("block-before-input", BASIC + "basic filters=2\ninput 1x8x8\n", (7, 1),
     ["`basic` comes before the model's input"], []),
    ("block-as-a-label", "input 1x8x8\nblock: relu\n", (2, 1), ["`block` begins a block definition"], []),
]


@pytest.mark.parametrize("source, where, fragments, notes", [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_a_block_mistake_is_located_at_both_places(source, where, fragments, notes):
    with pytest.raises(ModelError) as info:
        check_source(source, "m.cnn")
    err = info.value
    rendered = err.render()
    assert (err.file, err.line, err.column) == ("m.cnn", *where), rendered
    for fragment in fragments:
        assert fragment in rendered, (fragment, rendered)
    assert rendered.splitlines()[1] == f" {where[0]} | {source.split(chr(10))[where[0] - 1]}"
    assert caret_column(rendered) == (err.loc.mark or where[1]), rendered
    assert [(n.loc.line, n.loc.column) for n in err.loc.via + err.notes] == notes, rendered
    for line, column in notes:
        assert f"m.cnn:{line}:{column}: note: " in rendered
