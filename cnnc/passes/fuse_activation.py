"""Fuse a ReLU into the conv or dense layer before it: bias and ReLU run in the layer's own loop."""
from __future__ import annotations

import networkx as nx

from .rewrite import copy, merge_into, only_consumer


def fuse_relu_after(op: str, g: nx.DiGraph) -> nx.DiGraph:
    g = copy(g)
    for node in list(g.nodes):
        if node not in g or g.nodes[node]["op"] != op or g.nodes[node].get("activation"):
            continue
        nxt = only_consumer(g, node)
        if nxt is not None and g.nodes[nxt]["op"] == "relu":
            merge_into(g, node, nxt, activation="relu")
    return g


def fuse_conv_relu(g: nx.DiGraph) -> nx.DiGraph:
    return fuse_relu_after("conv", g)


def fuse_dense_relu(g: nx.DiGraph) -> nx.DiGraph:
    return fuse_relu_after("dense", g)
