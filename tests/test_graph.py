"""cnnc.graph: Program -> networkx graph. Automatic names, labels, `activation=` nodes, edges in
input order, the graph's attributes and the op table's defaults."""
from __future__ import annotations

import pytest

from cnnc import ops
from cnnc.frontend import check_source
from cnnc.expand import expand
from cnnc.graph import build_graph, inputs
from cnnc.shapes import parameter_shapes
from cnnc.syntax import parse


def graph(*lines: str, name=None):
    return build_graph(expand(parse("\n".join(lines) + "\n", "m.cnn")), name)


def test_automatic_names_count_each_op_in_file_order():
    g = graph("input 1x8x8", "conv filters=2 size=3", "relu", "conv filters=2 size=3", "relu", "flatten")
    assert list(g.nodes) == ["input1", "conv1", "relu1", "conv2", "relu2", "flatten1"]


def test_labeled_layers_count_too_so_labels_rename_no_other():
    g = graph("input 1x8x8", "conv filters=2 size=1", "a: conv filters=2 size=1", "relu", "b: relu",
              "conv filters=2 size=1")
    assert list(g.nodes) == ["input1", "conv1", "a", "relu1", "b", "conv3"]


def test_a_label_may_be_its_own_automatic_name():
    g = graph("input 1x8x8", "conv1: conv filters=2 size=1", "relu")
    assert list(g.nodes) == ["input1", "conv1", "relu1"]


def test_a_labeled_layer_is_also_known_by_its_automatic_name():
    g = graph("input 1x8x8", "a: conv filters=2 size=1", "b: relu(input1)", "add(conv1, b)")
    assert inputs(g, "add1") == ["a", "b"]


def test_without_an_input_list_a_layer_takes_the_statement_before_it():
    g = graph("input 1x8x8", "a: relu", "sigmoid(input1)", "tanh", "add(a, tanh1)")
    assert inputs(g, "tanh1") == ["sigmoid1"] and inputs(g, "sigmoid1") == ["input1"]


@pytest.mark.parametrize("activation", ["relu", "sigmoid", "tanh"])
@pytest.mark.parametrize("layer", ["conv filters=4 size=3", "dense units=4"])
def test_activation_is_a_separate_node_named_after_the_layer(layer, activation):
    first = "flatten" if layer.startswith("dense") else "relu"
    g = graph("input 1x8x8", first, f"b: {layer} activation={activation}", "dropout")
    act = f"b.{activation}"
    assert g.nodes[act]["op"] == activation and g.nodes[act]["attrs"] == {}
    assert inputs(g, act) == ["b"] and inputs(g, "dropout1") == [act]
    assert g.nodes["b"]["attrs"]["activation"] == activation
    assert g.nodes[act]["loc"] == g.nodes["b"]["loc"]


def test_a_label_names_the_activated_output_but_parameters_keep_the_label():
    g = check_source("input 1x8x8\nb: conv filters=4 size=3 activation=relu\nc: conv filters=4 size=1\nadd(b, c)\n")
    assert inputs(g, "c") == ["b.relu"] and inputs(g, "add1") == ["b.relu", "c"]
    assert {"b.weight", "b.bias"} <= set(parameter_shapes(g))
    assert not any(p.startswith("b.relu") for p in parameter_shapes(g))


def test_activation_nodes_do_not_count_as_relu_statements():
    g = graph("input 1x8x8", "conv filters=2 size=1 activation=relu", "relu")
    assert list(g.nodes) == ["input1", "conv1", "conv1.relu", "relu1"]


def test_activation_none_adds_no_node():
    g = graph("input 1x8x8", "conv filters=2 size=1 activation=none")
    assert list(g.nodes) == ["input1", "conv1"]


def test_edges_follow_the_input_list_order():
    g = graph("input 1x8x8", "c: relu", "a: sigmoid(input1)", "b: tanh(input1)", "concat(b, c, a)")
    assert inputs(g, "concat1") == ["b", "c", "a"]
    assert {u: g.edges[u, "concat1"]["index"] for u in ("b", "c", "a")} == {"b": 0, "c": 1, "a": 2}


def test_graph_attributes_mark_input_output_loss_train_and_file():
    g = graph("model net", "input 1x8x8", "flatten", "dense units=3 activation=relu",
              "loss cross_entropy", "train lr=1 batch=4 optimizer=adam")
    assert (g.graph["name"], g.graph["file"], g.graph["input"], g.graph["output"]) == \
        ("net", "m.cnn", "input1", "dense1.relu")
    assert g.graph["loss"] == "cross_entropy"
    assert g.graph["train"] == {"lr": 1.0, "batch": 4, "optimizer": "adam"}  # only what the file gives


def test_without_model_or_loss_the_name_comes_from_the_file():
    assert check_source("input 1x8x8\n", "/x/my_net.cnn").graph["name"] == "my_net"
    assert graph("input 1x8x8").graph["loss"] is None and graph("input 1x8x8").graph["train"] == {}


def test_nodes_carry_their_statement_location():
    g = graph("input 1x8x8", "", "  a: relu")
    loc = g.nodes["a"]["loc"]
    assert (loc.file, loc.line, loc.column, loc.text) == ("m.cnn", 3, 3, "  a: relu")


# -- attributes: the op table's defaults and normalized values --------------------------------

MINIMAL = {"conv": "filters=2 size=1", "maxpool": "size=1", "avgpool": "size=1", "dense": "units=2",
           "convtranspose": "filters=2 size=1", "upsample": "factor=2"}


def optional_keys():
    return [(op.name, key, spec.default) for op in ops.OPS.values() for key, spec in op.keys.items()
            if spec.default is not ops.REQUIRED]


@pytest.mark.parametrize("op, key, default", optional_keys())
def test_every_optional_key_gets_the_table_default(op, key, default):
    before = "flatten" if op == "dense" else "relu"
    g = graph("input 1x8x8", before, f"{op} {MINIMAL.get(op, '')}")
    attrs = g.nodes[f"{op}1"]["attrs"]
    assert attrs[key] == (attrs["size"] if (op, key) in (("maxpool", "stride"), ("avgpool", "stride")) else default)


@pytest.mark.parametrize("text, key, value", [
    ("size=3", "size", (3, 3)), ("size=3x5", "size", (3, 5)), ("stride=2", "stride", (2, 2)),
    ("stride=2x1", "stride", (2, 1)), ("padding=same", "padding", "same"), ("padding=2", "padding", (2, 2)),
    ("padding=1x0", "padding", (1, 0)), ("padding=0", "padding", (0, 0)), ("bias=false", "bias", False),
])
def test_values_are_normalized(text, key, value):
    args = f"filters=2 {text}" + ("" if key == "size" else " size=1")
    assert graph("input 1x8x8", f"conv {args}").nodes["conv1"]["attrs"][key] == value


@pytest.mark.parametrize("text, key, value", [
    ("padding=2", "padding", (2, 2)), ("padding=1x0", "padding", (1, 0)), ("output_padding=1", "output_padding", (1, 1)),
    ("output_padding=0x1", "output_padding", (0, 1)), ("stride=2x3", "stride", (2, 3)),
])
def test_convtranspose_values_are_normalized(text, key, value):
    g = graph("input 1x8x8", f"convtranspose filters=2 size=3 stride=3 {text}" if key != "stride" else
              f"convtranspose filters=2 size=3 {text}")
    assert g.nodes["convtranspose1"]["attrs"][key] == value


def test_upsample_values_are_normalized():
    g = graph("input 1x8x8", "a: upsample factor=3", "b: upsample factor=2x1 mode=bilinear")
    assert g.nodes["a"]["attrs"] == {"factor": (3, 3), "mode": "nearest"}
    assert g.nodes["b"]["attrs"] == {"factor": (2, 1), "mode": "bilinear"}


def test_train_values_are_normalized_and_only_given_keys_kept():
    g = graph("input 1x8x8", "train momentum=0.5 nesterov=true schedule=step step_size=3 gamma=0.5 seed=0")
    assert g.graph["train"] == {"momentum": 0.5, "nesterov": True, "schedule": "step", "step_size": 3,
                                "gamma": 0.5, "seed": 0}


def test_input_attrs_hold_the_shape():
    assert graph("input 3x4x5").nodes["input1"]["attrs"] == {"shape": (3, 4, 5)}
