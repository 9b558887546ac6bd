"""Remove dropout for inference, where it passes values through unchanged."""
from __future__ import annotations

import networkx as nx

from ..graph import inputs
from .rewrite import bypass, can_bypass, copy


def drop_dropout(g: nx.DiGraph) -> nx.DiGraph:
    dropouts = [n for n, op in g.nodes(data="op") if op == "dropout"]
    if not dropouts:
        return g
    g = copy(g)
    for node in dropouts:
        # Checked on the copy as it is now: dropping one dropout can hand another a new input.
        if can_bypass(g, node, inputs(g, node)[0]):
            bypass(g, node, inputs(g, node)[0])
    return g
