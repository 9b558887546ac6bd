"""The network and its weights as an ONNX model (opset 17), one ONNX node per layer of the parsed graph.

The parsed graph is exported, not the optimized one: ONNX runtimes do their own fusion, and an
unfused file maps one to one onto the model file a person wrote. A network trained with an input
normalization (`normalize=auto`, `mean=`/`std=`) gets it baked in as the first nodes, Sub and Div
by per-channel `input.mean` and `input.std`, so the ONNX model takes the images as cnnc does.
"""
from __future__ import annotations

import networkx as nx
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..files import atomic_write_bytes
from ..graph import inputs

OPSET = 17


def pads_of(data: dict) -> list[int]:
    top, bottom, left, right = data["pads"]
    return [top, left, bottom, right]


def layer_nodes(name: str, data: dict, srcs: list[str], params: dict, in_shape: tuple = ()) -> tuple[list, list[str]]:
    """The ONNX nodes of one layer, and the names of the initializers they read."""
    op, attrs = data["op"], data["attrs"]
    if op == "conv":
        weights = [f"{name}.weight"] + ([f"{name}.bias"] if f"{name}.bias" in params else [])
        return [helper.make_node("Conv", srcs + weights, [name], name=name, kernel_shape=list(attrs["size"]),
                                 strides=list(attrs["stride"]), pads=pads_of(data), group=attrs["groups"],
                                 dilations=list(attrs["dilation"]))], weights
    if op == "convtranspose":
        weights = [f"{name}.weight"] + ([f"{name}.bias"] if f"{name}.bias" in params else [])
        return [helper.make_node("ConvTranspose", srcs + weights, [name], name=name,
                                 kernel_shape=list(attrs["size"]), strides=list(attrs["stride"]),
                                 pads=pads_of(data), output_padding=list(attrs["output_padding"]))], weights
    if op in ("maxpool", "avgpool"):
        return pool_nodes(name, data, srcs, in_shape), []
    if op == "dense":
        weights = [f"{name}.weight"] + ([f"{name}.bias"] if f"{name}.bias" in params else [])
        return [helper.make_node("Gemm", srcs + weights, [name], name=name, transB=1)], weights
    if op == "batchnorm":
        weights = [f"{name}.{k}" for k in ("gamma", "beta", "running_mean", "running_var")]
        return [helper.make_node("BatchNormalization", srcs + weights, [name], name=name,
                                 epsilon=attrs["eps"], momentum=1 - attrs["momentum"])], weights
    if op == "upsample":
        return resize_nodes(name, attrs, srcs), []
    simple = {"relu": "Relu", "sigmoid": "Sigmoid", "tanh": "Tanh", "dropout": "Identity",
              "globalavgpool": "GlobalAveragePool", "add": "Sum", "concat": "Concat",
              "softmax": "Softmax", "flatten": "Flatten"}
    softmax_axis = 1 if attrs.get("axis") == "channels" else -1  # NCHW: the channels of each pixel
    extra = {"concat": {"axis": 1}, "softmax": {"axis": softmax_axis}, "flatten": {"axis": 1}}.get(op, {})
    return [helper.make_node(simple[op], srcs, [name], name=name, **extra)], []


def onnx_ceil_agrees(data: dict, in_shape: tuple) -> bool:
    """Whether ONNX's ceil_mode output size, ceil((n + pads - k) / s) + 1, is ours. It is not when
    PyTorch's rule drops a last window that would start in the bottom or right padding:
    onnxruntime follows that rule but ONNX's shape inference does not, so the file would
    contradict itself."""
    top, bottom, left, right = data["pads"]
    sizes = zip(in_shape[1:], data["attrs"]["size"], data["attrs"]["stride"], (top + bottom, left + right),
                data["shape"][1:])
    return all(-(-(n + pads - k) // s) + 1 == out for n, k, s, pads, out in sizes)


def pool_nodes(name: str, data: dict, srcs: list[str], in_shape: tuple) -> list:
    """MaxPool or AveragePool, with ceil_mode and count_include_pad where ONNX means what we do."""
    op, attrs = data["op"], data["attrs"]
    if attrs["rounding"] == "ceil" and not onnx_ceil_agrees(data, in_shape):
        return floor_pool_nodes(name, data, srcs, in_shape)
    extra = {"count_include_pad": int(attrs["count_pad"])} if op == "avgpool" else {}
    return [helper.make_node("MaxPool" if op == "maxpool" else "AveragePool", srcs, [name], name=name,
                             kernel_shape=list(attrs["size"]), strides=list(attrs["stride"]), pads=pads_of(data),
                             ceil_mode=int(attrs["rounding"] == "ceil"), **extra)]


def floor_pool_nodes(name: str, data: dict, srcs: list[str], in_shape: tuple) -> list:
    """Ceil-mode pooling where ONNX's ceil_mode disagrees: floor mode, with the end padding that
    gives exactly our windows (padding does not count in ONNX's max, nor in an average with
    count_include_pad=0). For count_pad, a Pad node first makes the padding real zeros."""
    op, attrs = data["op"], data["attrs"]
    top, bottom, left, right = data["pads"]
    nodes, src, (h, w) = [], srcs[0], in_shape[1:]
    if op == "avgpool" and attrs["count_pad"]:
        pads = numpy_helper.from_array(np.array([0, 0, top, left, 0, 0, bottom, right], np.int64), f"{name}.pads")
        nodes = [helper.make_node("Constant", [], [f"{name}.pads"], name=f"{name}.pads", value=pads),
                 helper.make_node("Pad", [src, f"{name}.pads"], [f"{name}.padded"], name=f"{name}.pad")]
        src, (h, w), top, left = f"{name}.padded", (h + top + bottom, w + left + right), 0, 0
    ends = [max((out - 1) * s + k - n - before, 0) for out, s, k, n, before in
            zip(data["shape"][1:], attrs["stride"], attrs["size"], (h, w), (top, left))]
    extra = {"count_include_pad": 0} if op == "avgpool" else {}
    return nodes + [helper.make_node("MaxPool" if op == "maxpool" else "AveragePool", [src], [name], name=name,
                                     kernel_shape=list(attrs["size"]), strides=list(attrs["stride"]),
                                     pads=[top, left, *ends], **extra)]


def resize_nodes(name: str, attrs: dict, srcs: list[str]) -> list:
    """Resize by constant scales: nearest as floor(p / factor) (asymmetric, floor), bilinear as
    PyTorch's align_corners=False (linear, half_pixel)."""
    scales = numpy_helper.from_array(np.array([1, 1, *attrs["factor"]], np.float32), f"{name}.scales")
    modes = {"nearest": dict(mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
             "bilinear": dict(mode="linear", coordinate_transformation_mode="half_pixel")}[attrs["mode"]]
    return [helper.make_node("Constant", [], [f"{name}.scales"], name=f"{name}.scales", value=scales),
            helper.make_node("Resize", [srcs[0], "", f"{name}.scales"], [name], name=name, **modes)]


def normalization_nodes(normalization, params: dict) -> tuple[list, list[str], str]:
    """(input - mean) / std per channel: its nodes, initializers (added to params) and output name."""
    if normalization is None:
        return [], [], "input"
    mean, std = (np.asarray(v, np.float32).reshape(1, -1, 1, 1) for v in normalization)
    params["input.mean"], params["input.std"] = mean, std
    nodes = [helper.make_node("Sub", ["input", "input.mean"], ["input.centered"], name="input.centered"),
             helper.make_node("Div", ["input.centered", "input.std"], ["input.normalized"], name="input.normalized")]
    return nodes, ["input.mean", "input.std"], "input.normalized"


def to_onnx(g: nx.DiGraph, params: dict[str, np.ndarray], normalization=None) -> onnx.ModelProto:
    """An ONNX model of a shape-checked (parsed) graph with these parameter values, taking its
    input normalized by `normalization` ((mean, std) per channel) when given."""
    params = dict(params)
    nodes, used, first = normalization_nodes(normalization, params)
    for node in nx.topological_sort(g):
        data = g.nodes[node]
        if data["op"] == "input":
            continue
        srcs = [first if g.nodes[s]["op"] == "input" else s for s in inputs(g, node)]
        made, weights = layer_nodes(node, data, srcs, params, g.nodes[inputs(g, node)[0]]["shape"])
        nodes += made
        used += weights
    out = g.graph["output"]
    nodes.append(helper.make_node("Identity", [out], ["output"], name="output"))
    in_shape = g.nodes[g.graph["input"]]["shape"]
    graph = helper.make_graph(
        nodes, g.graph["name"],
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", *in_shape])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", *g.nodes[out]["shape"]])],
        [numpy_helper.from_array(np.asarray(params[w], np.float32), w) for w in used])
    model = helper.make_model(graph, producer_name="cnnc", opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8  # onnxruntime releases read IR 8 with opset 17
    onnx.checker.check_model(model)
    return model


def export_onnx(net, path) -> None:
    """Writes the network with its current parameters to an .onnx file, atomically: a kill or a
full disk keeps the previous file whole."""
    model = to_onnx(net.parsed, {name: view for name, view in net.params.items()}, net.normalization)
    atomic_write_bytes(path, model.SerializeToString())
