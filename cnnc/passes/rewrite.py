"""Graph surgery shared by the passes: removing a node and handing its consumers its input."""
from __future__ import annotations

import networkx as nx


def can_bypass(g: nx.DiGraph, node: str, replacement: str) -> bool:
    """False where a consumer already takes `replacement` (a graph holds one edge per pair)."""
    return not any(g.has_edge(replacement, c) for c in g.successors(node))


def bypass(g: nx.DiGraph, node: str, replacement: str) -> None:
    """Removes `node` (in place, on a pass's own copy); its consumers take `replacement` instead."""
    assert can_bypass(g, node, replacement), (node, replacement)
    for _, consumer, data in list(g.out_edges(node, data=True)):
        g.add_edge(replacement, consumer, **data)
    if g.graph["output"] == node:
        g.graph["output"] = replacement
    g.remove_node(node)


def merge_into(g: nx.DiGraph, keeper: str, absorbed: str, **attrs) -> None:
    """Folds `absorbed` (the only consumer of `keeper`) into `keeper`, which records what it fused."""
    data = g.nodes[keeper]
    gone = g.nodes[absorbed]
    data["fused"] = data.get("fused", []) + [absorbed] + gone.get("fused", [])
    data["fused_ops"] = data.get("fused_ops", []) + [gone["op"]] + gone.get("fused_ops", [])
    data["shape"] = gone["shape"]
    data.update(attrs)
    bypass(g, absorbed, keeper)


def only_consumer(g: nx.DiGraph, node: str) -> str | None:
    """The node's single consumer, or None when it has none or several."""
    succ = list(g.successors(node))
    return succ[0] if len(succ) == 1 else None


def copy(g: nx.DiGraph) -> nx.DiGraph:
    """A copy that shares no list or dict with the original (`attrs`, `fused`, `train`), so that
    neither a pass nor whoever uses its result can change the graph it was given."""
    out = nx.DiGraph(**{k: own(v) for k, v in g.graph.items()})
    for node, data in g.nodes(data=True):
        out.add_node(node, **{k: own(v) for k, v in data.items()})
    out.add_edges_from(g.edges(data=True))
    return out


def own(value):
    """A fresh list or dict in place of a shared one; anything else (tuples, Locs) is immutable."""
    if isinstance(value, list):
        return list(value)
    return dict(value) if isinstance(value, dict) else value
