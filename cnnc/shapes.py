"""Shape inference and checks: one rule per op, run over the graph in topological order.

Shapes leave out the batch: (C, H, W) for images, (D,) for vectors. Convolution and pooling
nodes also get `pads` = (top, bottom, left, right), resolved from their padding mode.
"""
from __future__ import annotations

import math

import networkx as nx

from . import ops
from .diagnostics import ModelError
from .graph import in_file_order, inputs, shown


def show(shape: tuple) -> str:
    """A shape as the user writes it: `16x5x5`, or `120` for a vector."""
    return "x".join(str(d) for d in shape)


def infer_shapes(g: nx.DiGraph) -> nx.DiGraph:
    """A copy of the graph with `shape` (and `pads`) on every node; a ModelError at the first mismatch."""
    g = g.copy()
    for node in in_file_order(g):
        data = g.nodes[node]
        sources = inputs(g, node)
        in_shapes = [g.nodes[s]["shape"] for s in sources]
        layer = Layer(shown(g, node), data, [shown(g, s) for s in sources], in_shapes)
        data["shape"] = RULES[data["op"]](layer)
    check_loss(g)
    return g


class Layer:
    """What a shape rule sees of one node: its name, attributes, inputs and their shapes."""

    def __init__(self, name, data, sources, in_shapes):
        self.name, self.data, self.sources, self.in_shapes = name, data, sources, in_shapes
        self.attrs = data["attrs"]

    def error(self, message: str, hint: str | None = None) -> ModelError:
        return ModelError(message, self.data["loc"], hint)

    def image(self) -> tuple[int, int, int]:
        """The single input, which must be C x H x W."""
        shape = self.in_shapes[0]
        if len(shape) != 3:
            raise self.error(f"{self.name} needs a CxHxW image but its input {self.sources[0]} is a vector "
                             f"of {show(shape)}", "convolution and pooling come before `flatten` and `dense`")
        return shape


def same_padding(n: int, k: int, s: int) -> tuple[int, int]:
    """ONNX SAME_UPPER: out = ceil(n / s); the odd zero goes after (bottom or right)."""
    out = -(-n // s)
    total = max((out - 1) * s + k - n, 0)
    return total // 2, total - total // 2


def axis_padding(mode, axis: int, n: int, k: int, s: int) -> tuple[int, int]:
    if mode == "valid":
        return 0, 0
    if mode == "same":
        return same_padding(n, k, s)
    if mode == "full":
        return k - 1, k - 1
    return mode[axis], mode[axis]


def window(layer: Layer, kind: str) -> tuple[int, int]:
    """Output H x W of a sliding window (conv or pooling); sets the node's `pads`."""
    c, h, w = layer.image()
    kh, kw = ops.effective_size(layer.attrs)
    sh, sw = layer.attrs["stride"]
    mode = layer.attrs["padding"]
    top, bottom = axis_padding(mode, 0, h, kh, sh)
    left, right = axis_padding(mode, 1, w, kw, sw)
    layer.data["pads"] = (top, bottom, left, right)
    if h + top + bottom < kh or w + left + right < kw:
        padded = "" if (top, bottom, left, right) == (0, 0, 0, 0) else " padded"
        size = "x".join(map(str, layer.attrs["size"]))
        dilated = "" if (kh, kw) == tuple(layer.attrs["size"]) else f" (size {size}, dilated)"
        raise layer.error(
            f"{layer.name}: the {kind} {kh}x{kw}{dilated} is larger than its input {layer.sources[0]}'s{padded} "
            f"{h + top + bottom}x{w + left + right} (input {show((c, h, w))})",
            f"use padding=same, a smaller size{' or dilation' if dilated else ''}, or remove a pooling layer before it")
    if kind == "window" and (max(top, bottom) >= kh or max(left, right) >= kw):
        raise layer.error(f"{layer.name}: padding {max(top, bottom)}x{max(left, right)} leaves windows "
                          f"with no real element for size {kh}x{kw}", "use a padding smaller than the size")
    if layer.attrs.get("rounding") == "ceil":
        return ceil_windows(h, kh, sh, top, bottom), ceil_windows(w, kw, sw, left, right)
    return (h + top + bottom - kh) // sh + 1, (w + left + right - kw) // sw + 1


def ceil_windows(n: int, k: int, s: int, before: int, after: int) -> int:
    """Windows on one axis with ceil rounding (PyTorch's ceil_mode): a last, partial window counts
    if it starts inside the input or the padding before it, not in the padding after."""
    out = -(-(n + before + after - k) // s) + 1
    return out - 1 if (out - 1) * s >= n + before else out


def conv_shape(layer: Layer):
    check_groups(layer)
    oh, ow = window(layer, "kernel")
    return (layer.attrs["filters"], oh, ow)


def check_groups(layer: Layer) -> None:
    """groups=G needs the input channels and the filters both divisible by G."""
    groups, filters = layer.attrs["groups"], layer.attrs["filters"]
    channels = layer.image()[0]
    if groups == 1:
        return
    valid = [g for g in range(2, channels + 1) if channels % g == 0 and filters % g == 0]
    hint = ("valid groups here: " + ", ".join(map(str, valid[:8])) + (", ..." if len(valid) > 8 else "")
            if valid else "the input channels and the filters have no common divisor above 1: use groups=1")
    if channels % groups:
        raise layer.error(f"{layer.name}: groups={groups} does not divide its {channels} input channels "
                          f"(input {layer.sources[0]} is {show(layer.in_shapes[0])})", hint)
    if filters % groups:
        raise layer.error(f"{layer.name}: groups={groups} does not divide its {filters} filters",
                          f"{hint}; for a depthwise conv, filters must be a multiple of the {channels} channels")


def pool_shape(layer: Layer):
    oh, ow = window(layer, "window")
    return (layer.image()[0], oh, ow)


def global_pool_shape(layer: Layer):
    return (layer.image()[0], 1, 1)


def same_shape(layer: Layer):
    return layer.in_shapes[0]


def softmax_shape(layer: Layer):
    if layer.attrs["axis"] == "channels" and len(layer.in_shapes[0]) != 3:
        raise layer.error(f"{layer.name}: softmax axis=channels needs a CxHxW image but its input "
                          f"{layer.sources[0]} is a vector of {show(layer.in_shapes[0])}",
                          "a vector's softmax is over its only axis: leave out `axis=`")
    return layer.in_shapes[0]


def flatten_shape(layer: Layer):
    return (math.prod(layer.in_shapes[0]),)


def dense_shape(layer: Layer):
    shape = layer.in_shapes[0]
    if len(shape) != 1:
        raise layer.error(f"{layer.name} needs a vector but its input {layer.sources[0]} is {show(shape)}",
                          "add `flatten` before it")
    return (layer.attrs["units"],)


def add_shape(layer: Layer):
    first = layer.in_shapes[0]
    for src, shape in zip(layer.sources[1:], layer.in_shapes[1:]):
        if shape != first:
            raise layer.error(f"{layer.name}: inputs {layer.sources[0]} and {src} have different shapes, "
                              f"{show(first)} and {show(shape)}", "add needs inputs of one shape")
    return first


def concat_shape(layer: Layer):
    for src, shape in zip(layer.sources, layer.in_shapes):
        if len(shape) != 3:
            raise layer.error(f"{layer.name}: input {src} is a vector of {show(shape)}; concat joins CxHxW "
                              "images along channels")
    first = layer.in_shapes[0]
    for src, shape in zip(layer.sources[1:], layer.in_shapes[1:]):
        if shape[1:] != first[1:]:
            raise layer.error(f"{layer.name}: inputs {layer.sources[0]} and {src} differ in height and width, "
                              f"{show(first)} and {show(shape)}", "concat needs equal H and W; pad or pool one side")
    return (sum(s[0] for s in layer.in_shapes),) + first[1:]


def conv_transpose_shape(layer: Layer):
    """PyTorch's ConvTranspose2d: (n - 1) * stride - 2 * padding + size + output_padding per axis."""
    c, h, w = layer.image()
    attrs = layer.attrs
    (kh, kw), (sh, sw), (ph, pw), (oph, opw) = attrs["size"], attrs["stride"], attrs["padding"], attrs["output_padding"]
    layer.data["pads"] = (ph, ph, pw, pw)
    if oph >= sh or opw >= sw:
        raise layer.error(f"{layer.name}: output_padding {oph}x{opw} must be smaller than the stride {sh}x{sw}",
                          "output_padding picks one of the `stride` output sizes that convolving back "
                          "gives the same input size; it is at most stride - 1")
    oh, ow = (h - 1) * sh - 2 * ph + kh + oph, (w - 1) * sw - 2 * pw + kw + opw
    if oh < 1 or ow < 1:
        raise layer.error(f"{layer.name}: padding {ph}x{pw} leaves no output from its input {layer.sources[0]} "
                          f"{show((c, h, w))} (size {kh}x{kw}, stride {sh}x{sw}: {oh}x{ow})",
                          "the padding is cut from the output: use a smaller padding")
    return (attrs["filters"], oh, ow)


def upsample_shape(layer: Layer):
    c, h, w = layer.image()
    fh, fw = layer.attrs["factor"]
    return (c, h * fh, w * fw)


RULES = {
    "input": lambda layer: layer.attrs["shape"],
    "conv": conv_shape,
    "maxpool": pool_shape,
    "avgpool": pool_shape,
    "globalavgpool": global_pool_shape,
    "relu": same_shape,
    "sigmoid": same_shape,
    "tanh": same_shape,
    "softmax": softmax_shape,
    "dropout": same_shape,
    "batchnorm": same_shape,
    "flatten": flatten_shape,
    "dense": dense_shape,
    "add": add_shape,
    "concat": concat_shape,
    "convtranspose": conv_transpose_shape,
    "upsample": upsample_shape,
}
assert set(RULES) == set(ops.OPS), "every op in the table needs a shape rule"


def check_loss(g: nx.DiGraph) -> None:
    """cross_entropy needs class scores: a vector of them, or a CxHxW image of them per pixel."""
    if g.graph["loss"] != "cross_entropy":
        return
    out = g.graph["output"]
    shape = g.nodes[out]["shape"]
    if len(shape) == 3:
        check_pixel_loss(g, out, shape)
    elif shape[0] < 2:
        raise ModelError(f"loss cross_entropy needs a vector of class scores, but the output {shown(g, out)} "
                         f"has {shape[0]} value", g.graph["loss_loc"],
                         "end the network with `dense units=CLASSES`, one score per class")


def check_pixel_loss(g: nx.DiGraph, out: str, shape: tuple) -> None:
    """A per-pixel loss: the channels are the classes, so a softmax must run over them."""
    data = g.nodes[out]
    if data["op"] == "softmax" and data["attrs"]["axis"] != "channels":
        raise ModelError(f"{shown(g, out)} is a softmax over the width, but `loss cross_entropy` (line "
                         f"{g.graph['loss_loc'].line}) on its {show(shape)} output takes the classes along the "
                         "channels", data["loc"], "write `softmax axis=channels` for a class per pixel, or end "
                         "with `flatten` and `dense units=CLASSES` to classify whole images")
    if shape[0] < 2:
        raise ModelError(f"loss cross_entropy needs class scores, but the output {shown(g, out)} is {show(shape)}: "
                         "a loss per pixel takes the classes along the channels, and it has one",
                         g.graph["loss_loc"], "to classify whole images, end the network with `flatten` and "
                         "`dense units=CLASSES` (or `globalavgpool` first); for a class per pixel, end it with "
                         "`conv filters=CLASSES size=1`")


def parameter_shapes(g: nx.DiGraph) -> dict[str, tuple]:
    """Every parameter of a shape-checked graph, `<layer>.<kind>` -> shape, in graph order."""
    shapes = {}
    for node in nx.topological_sort(g):
        data = g.nodes[node]
        in_shape = g.nodes[inputs(g, node)[0]]["shape"] if data["op"] != "input" else ()
        for kind, shape in ops.param_shapes(data["op"], data["attrs"], in_shape).items():
            shapes[f"{node}.{kind}"] = shape
    return shapes


def layer_flops(g: nx.DiGraph, node: str) -> int:
    data = g.nodes[node]
    in_shapes = [g.nodes[s]["shape"] for s in inputs(g, node)]
    return ops.flops(data["op"], data["attrs"], in_shapes, data["shape"])
