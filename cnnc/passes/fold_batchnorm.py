"""Fold an inference-mode batchnorm into the conv before it: one conv with scaled weights and a bias.

The folded weights are computed from the current parameters when the network runs, so the
graph only records which batchnorm each conv absorbed (`folded_bn`).
"""
from __future__ import annotations

import networkx as nx

from .rewrite import copy, merge_into, only_consumer


def fold_batchnorm(g: nx.DiGraph) -> nx.DiGraph:
    g = copy(g)
    for node in list(g.nodes):
        if node not in g:
            continue
        data = g.nodes[node]
        if data["op"] != "conv" or data.get("activation") or data.get("folded_bn"):
            continue
        nxt = only_consumer(g, node)
        if nxt is not None and g.nodes[nxt]["op"] == "batchnorm":
            merge_into(g, node, nxt, folded_bn=nxt)
    return g
