"""The graph as Graphviz DOT: one node per layer with its op, key hyperparameters and output shape."""
from __future__ import annotations

import networkx as nx
import pydot

from .. import ops
from ..graph import inputs
from ..shapes import show


def hyperparameters(data: dict) -> str:
    """`6 filters 5x5 same`-style text of the keys the op table marks as shown."""
    attrs = data["attrs"]
    parts = []
    for key in ops.OPS[data["op"]].shown:
        value = attrs[key]
        if key == "padding" and value == "valid" or key == "stride" and value in ((1, 1), attrs["size"]):
            continue
        parts.append(f"{key}={show_value(value)}")
    return " ".join(parts)


def show_value(value) -> str:
    """`3` for a square pair (3, 3), `3x5` otherwise."""
    if isinstance(value, tuple):
        return str(value[0]) if len(set(value)) == 1 else show(value)
    return str(value)


def node_label(name: str, data: dict) -> str:
    op = "+".join([data["op"]] + data.get("fused_ops", []))
    fused = "fused " + ", ".join(data["fused"]) if data.get("fused") else ""
    lines = [name, op, hyperparameters(data), show(data["shape"]), fused]
    return "\n".join(line for line in lines if line)


def to_dot(g: nx.DiGraph) -> str:
    """DOT text that Graphviz and pydot read; fused nodes list what they absorbed."""
    dot = pydot.Dot(g.graph["name"], graph_type="digraph", rankdir="TB")
    dot.set_node_defaults(shape="box", style="rounded", fontname="Helvetica")
    for node in nx.topological_sort(g):
        data = g.nodes[node]
        style = {"style": "rounded,filled", "fillcolor": "lightyellow"} if data.get("fused") else {}
        dot.add_node(pydot.Node(quote(node), label=quote(node_label(node, data)), **style))
    for node in nx.topological_sort(g):
        for src in inputs(g, node):
            dot.add_edge(pydot.Edge(quote(src), quote(node)))
    return dot.to_string()


def quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
