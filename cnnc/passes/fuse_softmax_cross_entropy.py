"""For training, a softmax output followed by cross_entropy becomes one stable log-softmax + NLL.

The softmax node leaves the training graph; its input (the logits) becomes the output and the
graph's loss becomes `softmax_cross_entropy`, which the lowering computes in one kernel.
"""
from __future__ import annotations

import networkx as nx

from ..graph import inputs
from .rewrite import bypass, copy


def fuse_softmax_cross_entropy(g: nx.DiGraph) -> nx.DiGraph:
    out = g.graph["output"]
    if g.graph["loss"] != "cross_entropy" or g.nodes[out]["op"] != "softmax":
        return g
    logits = inputs(g, out)[0]
    if g.out_degree(logits) > 1:  # the logits feed another layer too: keep the softmax
        return g
    g = copy(g)
    bypass(g, out, logits)
    g.graph["loss"] = "softmax_cross_entropy"
    return g
