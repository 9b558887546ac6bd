"""Fold an inference-mode batchnorm into the conv before it: one conv with scaled weights and a bias.

The folded weights are computed from the current parameters when the network runs, so the
graph only records which batchnorm each conv absorbed (`folded_bn`).
"""
from __future__ import annotations

import networkx as nx

from .rewrite import copy, merge_into, only_consumer


def fold_batchnorm(g: nx.DiGraph) -> nx.DiGraph:
    pairs = conv_batchnorm_pairs(g)
    if not pairs:
        return g
    g = copy(g)
    for conv, bn in pairs:
        merge_into(g, conv, bn, folded_bn=bn, folded_eps=g.nodes[bn]["attrs"]["eps"])
    return g


def conv_batchnorm_pairs(g: nx.DiGraph) -> list[tuple[str, str]]:
    """(conv, batchnorm) where the batchnorm is the conv's only consumer. The pairs share no
    node, so folding one leaves the others as they were found."""
    pairs = []
    for node, data in g.nodes(data=True):
        if data["op"] != "conv" or data.get("activation") or data.get("folded_bn"):
            continue
        nxt = only_consumer(g, node)
        if nxt is not None and g.nodes[nxt]["op"] == "batchnorm":
            pairs.append((node, nxt))
    return pairs
