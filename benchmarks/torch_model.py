"""A cnnc model file as an efficient PyTorch `nn.Module`, for the benchmarks.

The module is built from cnnc's parsed graph (ops, attributes, resolved pads), the way a
PyTorch user would write the network by hand: `nn.Conv2d` with its own symmetric padding (a
`nn.ZeroPad2d` in front only where `same` pads one side more), `nn.MaxPool2d`, `nn.Linear`,
`nn.BatchNorm2d`/`1d`, in-place ReLU where nothing else reads the input.

`model(x)` returns the logits: a final `softmax` is left out so that training uses
`F.cross_entropy` on logits (log-softmax and NLL in one op, PyTorch's fastest and the same
loss as cnnc's cross_entropy on the softmax); `probabilities(model, x)` applies it for inference.
`for_inference(model)` returns an eval-mode copy with every batchnorm that follows a conv
folded into it, as cnnc does for inference.
"""
from __future__ import annotations

import copy

import networkx as nx
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from cnnc.graph import in_file_order, inputs


class Add(nn.Module):
    """The sum of the inputs, added in place into input `into` when given (nothing else reads it)."""

    def __init__(self, into: int | None):
        super().__init__()
        self.into = into

    def forward(self, *xs):
        if self.into is None:
            return sum(xs[1:], xs[0])
        out = xs[self.into]
        for i, x in enumerate(xs):
            if i != self.into:
                out.add_(x)
        return out


class Concat(nn.Module):
    def forward(self, *xs):
        return torch.cat(xs, dim=1)


class AvgPoolRealOnly(nn.Module):
    """Average over the real elements of each window with any (even asymmetric) padding."""

    def __init__(self, size, stride, pads):
        super().__init__()
        top, bottom, left, right = pads
        self.pad = (left, right, top, bottom)
        self.size, self.stride = size, stride

    def forward(self, x):
        total = F.avg_pool2d(F.pad(x, self.pad), self.size, self.stride, divisor_override=1)
        ones = F.pad(torch.ones_like(x[:1, :1]), self.pad)
        return total / F.avg_pool2d(ones, self.size, self.stride, divisor_override=1)


def _symmetric(pads) -> tuple[int, int] | None:
    """(h, w) padding when top == bottom and left == right, else None."""
    top, bottom, left, right = pads
    return (top, left) if top == bottom and left == right else None


def conv_module(data, in_channels: int) -> nn.Module:
    attrs = data["attrs"]
    padding = _symmetric(data["pads"])
    conv = nn.Conv2d(in_channels, attrs["filters"], attrs["size"], attrs["stride"],
                     padding=padding or 0, dilation=attrs["dilation"], groups=attrs["groups"], bias=attrs["bias"])
    if padding is not None:
        return conv
    top, bottom, left, right = data["pads"]
    return nn.Sequential(nn.ZeroPad2d((left, right, top, bottom)), conv)


def maxpool_module(data) -> nn.Module:
    attrs = data["attrs"]
    padding = _symmetric(data["pads"])
    fits = padding is not None and all(p <= k // 2 for p, k in zip(padding, attrs["size"]))
    if fits:
        return nn.MaxPool2d(attrs["size"], attrs["stride"], padding)
    top, bottom, left, right = data["pads"]
    return nn.Sequential(nn.ConstantPad2d((left, right, top, bottom), float("-inf")),
                         nn.MaxPool2d(attrs["size"], attrs["stride"]))


def avgpool_module(data) -> nn.Module:
    attrs = data["attrs"]
    padding = _symmetric(data["pads"])
    if padding is not None and all(p <= k // 2 for p, k in zip(padding, attrs["size"])):
        return nn.AvgPool2d(attrs["size"], attrs["stride"], padding, count_include_pad=False)
    return AvgPoolRealOnly(attrs["size"], attrs["stride"], data["pads"])


def layer_module(g: nx.DiGraph, node: str) -> nn.Module:
    """The nn.Module computing one node of the parsed graph."""
    data, op, attrs = g.nodes[node], g.nodes[node]["op"], g.nodes[node]["attrs"]
    sources = inputs(g, node)
    in_shape = g.nodes[sources[0]]["shape"] if sources else None
    alone = bool(sources) and _only_reader(g, sources[0], node)
    if op == "conv":
        return conv_module(data, in_shape[0])
    if op == "maxpool":
        return maxpool_module(data)
    if op == "avgpool":
        return avgpool_module(data)
    if op == "globalavgpool":
        return nn.AdaptiveAvgPool2d(1)
    if op == "batchnorm":
        kind = nn.BatchNorm2d if len(in_shape) == 3 else nn.BatchNorm1d
        return kind(in_shape[0], eps=attrs["eps"], momentum=attrs["momentum"])
    if op == "dense":
        return nn.Linear(in_shape[0], attrs["units"], bias=attrs["bias"])
    if op == "flatten":
        return nn.Flatten()
    if op == "add":
        writable = [i for i, s in enumerate(sources) if _only_reader(g, s, node) and sources.count(s) == 1]
        return Add(writable[0] if writable else None)
    if op == "concat":
        return Concat()
    if op == "softmax":
        return nn.Softmax(dim=1)
    if op == "dropout":
        return nn.Dropout(attrs["rate"])
    if op == "relu":
        return nn.ReLU(inplace=alone)
    if op in ("sigmoid", "tanh"):
        return nn.Sigmoid() if op == "sigmoid" else nn.Tanh()
    raise NotImplementedError(f"no PyTorch module for op {op}")


def _only_reader(g: nx.DiGraph, source: str, node: str) -> bool:
    """Whether `node` is the one consumer of `source` and `source` is not the network's input
    (so an in-place op on it changes nothing anyone else sees)."""
    return g.nodes[source]["op"] != "input" and list(g.successors(source)) == [node]


class GraphNet(nn.Module):
    """The parsed graph as a module; node `name`'s module is `self.layer(name)`."""

    def __init__(self, g: nx.DiGraph):
        super().__init__()
        self.graph_name = g.graph["name"]
        order = in_file_order(g)
        output = g.graph["output"]
        self.ends_in_softmax = g.nodes[output]["op"] == "softmax"
        if self.ends_in_softmax:
            output = inputs(g, output)[0]
        computed = [n for n in order if g.nodes[n]["op"] != "input"]
        computed = computed[:computed.index(output) + 1]
        self.names = computed
        self.layers = nn.ModuleList(layer_module(g, n) for n in computed)
        self.sources = {n: inputs(g, n) for n in computed}
        self.input_name, self.output_name = g.graph["input"], output
        self.aliases: dict[str, str] = {}  # node -> node whose value it is (a folded batchnorm)
        self.graph = g
        self._make_plan()

    def layer(self, name: str) -> nn.Module:
        return self.layers[self.names.index(name)]

    def _make_plan(self) -> None:
        """Steps of (module, input slots, output slot) over a list of values; slot 0 is the input."""
        slot = {self.input_name: 0}
        self.plan = []
        for name, module in zip(self.names, self.layers):
            if name in self.aliases:
                slot[name] = slot[self.aliases[name]]
                continue
            slot[name] = len(slot)
            self.plan.append((module, tuple(slot[s] for s in self.sources[name]), slot[name]))
        self.slots, self.output_slot = len(slot), slot[self.output_name]

    def forward(self, x):
        values = [None] * self.slots
        values[0] = x
        for module, srcs, dst in self.plan:
            values[dst] = module(*[values[s] for s in srcs])
        return values[self.output_slot]

    @torch.no_grad()
    def load_cnnc_params(self, params) -> None:
        """Copies cnnc's parameters (PyTorch layouts, `<layer>.<kind>`) into the modules."""
        rename = {"gamma": "weight", "beta": "bias"}
        for full, value in params.items():
            layer, kind = full.rsplit(".", 1)
            module = self.layer(layer)
            if isinstance(module, nn.Sequential):
                module = module[-1]
            getattr(module, rename.get(kind, kind)).copy_(torch.from_numpy(np.asarray(value)))


def build(g: nx.DiGraph, params=None) -> GraphNet:
    """The module for a parsed graph, with cnnc's parameters copied in when given."""
    model = GraphNet(g)
    if params is not None:
        model.load_cnnc_params(params)
    return model


def for_inference(model: GraphNet) -> GraphNet:
    """An eval-mode copy with each batchnorm that is a conv's only reader folded into the conv."""
    folded = copy.deepcopy(model).eval()
    g = folded.graph
    for name in folded.names:
        source = folded.sources[name][0] if folded.sources[name] else None
        if g.nodes[name]["op"] != "batchnorm" or g.nodes[source]["op"] != "conv":
            continue
        if not _only_reader(g, source, name):
            continue
        index = folded.names.index(source)
        conv = folded.layers[index]
        bn = folded.layer(name)
        if isinstance(conv, nn.Sequential):
            conv[-1] = fuse_conv_bn_eval(conv[-1], bn)
        else:
            folded.layers[index] = fuse_conv_bn_eval(conv, bn)
        folded.aliases[name] = source
    folded._make_plan()
    return folded


def probabilities(model: GraphNet, x: torch.Tensor) -> torch.Tensor:
    """The network's output as cnnc's forward gives it (the softmax applied when the graph ends in one)."""
    out = model(x)
    return torch.softmax(out, dim=1) if model.ends_in_softmax else out


def loss(model: GraphNet, x: torch.Tensor, y: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """cnnc's cross_entropy: on the logits when the graph ends in softmax, else on its output."""
    return F.cross_entropy(model(x), y, label_smoothing=label_smoothing)
