"""Fuse a ReLU into the conv, convtranspose, dense or (training) batchnorm layer before it: the ReLU runs in the layer's own loop."""
from __future__ import annotations

import networkx as nx

from .rewrite import copy, merge_into, only_consumer


def fuse_relu_after(op: str, g: nx.DiGraph) -> nx.DiGraph:
    pairs = layer_relu_pairs(op, g)
    if not pairs:
        return g
    g = copy(g)
    for layer, relu in pairs:
        merge_into(g, layer, relu, activation="relu")
    return g


def layer_relu_pairs(op: str, g: nx.DiGraph) -> list[tuple[str, str]]:
    """(layer, relu) where the relu is the layer's only consumer. The pairs share no node, so
    fusing one leaves the others as they were found."""
    pairs = []
    for node, data in g.nodes(data=True):
        if data["op"] != op or data.get("activation"):
            continue
        nxt = only_consumer(g, node)
        if nxt is not None and g.nodes[nxt]["op"] == "relu":
            pairs.append((node, nxt))
    return pairs


def fuse_conv_relu(g: nx.DiGraph) -> nx.DiGraph:
    return fuse_relu_after("conv", g)


def fuse_convtranspose_relu(g: nx.DiGraph) -> nx.DiGraph:
    return fuse_relu_after("convtranspose", g)


def fuse_dense_relu(g: nx.DiGraph) -> nx.DiGraph:
    return fuse_relu_after("dense", g)


def fuse_batchnorm_relu(g: nx.DiGraph) -> nx.DiGraph:
    return fuse_relu_after("batchnorm", g)
