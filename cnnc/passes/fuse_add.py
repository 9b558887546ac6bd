"""Fuse a residual add into the layer that feeds it: the layer adds the add's other input in
its own output loop, which saves a pass over memory (and with a ReLU after it, two).

In inference that layer is a conv (its batchnorm folded in); in training, a batchnorm, whose
backward hands the add's gradient on to the other input too. The other input becomes the
layer's second input (edge index 1).
"""
from __future__ import annotations

import networkx as nx

from ..graph import inputs
from .rewrite import copy, merge_into, only_consumer


def fuse_add_into(op: str, g: nx.DiGraph) -> nx.DiGraph:
    triples = layer_add_triples(op, g)
    if not triples:
        return g
    g = copy(g)
    absorbed: dict[str, str] = {}  # an add merged already -> the layer that took its place
    for layer, add, other in triples:
        g.add_edge(absorbed.get(other, other), layer, index=1)
        merge_into(g, layer, add)
        absorbed[add] = layer
    return g


def layer_add_triples(op: str, g: nx.DiGraph) -> list[tuple[str, str, str]]:
    """(layer, add, other input) where a two-input add is the layer's only consumer; one per add
    (the input computed last, when both qualify), in the order of the graph. The other input may
    be an earlier add of the list (a block whose output is a bare add), merged by then."""
    order = {node: k for k, node in enumerate(nx.topological_sort(g))}
    chosen: dict[str, tuple[str, str, str]] = {}
    for node, data in g.nodes(data=True):
        if data["op"] != op or data.get("activation") or g.in_degree(node) != 1:
            continue
        add = only_consumer(g, node)
        if add is None or g.nodes[add]["op"] != "add" or len(inputs(g, add)) != 2:
            continue
        other = next(src for src in inputs(g, add) if src != node)
        if g.has_edge(other, node):  # add(x, conv(x)): x is already the layer's input
            continue
        if add not in chosen or order[node] > order[chosen[add][0]]:
            chosen[add] = (node, add, other)
    return sorted(chosen.values(), key=lambda triple: order[triple[1]])


def fuse_conv_add(g: nx.DiGraph) -> nx.DiGraph:
    return fuse_add_into("conv", g)


def fuse_batchnorm_add(g: nx.DiGraph) -> nx.DiGraph:
    return fuse_add_into("batchnorm", g)
