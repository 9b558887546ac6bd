"""The graph as Graphviz DOT: one node per layer with its op, key hyperparameters and output shape,
inside one cluster per block use (from the nodes' `scope`, `stage2.block1.`)."""
from __future__ import annotations

import networkx as nx
import pydot

from ..ops import describe
from ..graph import in_file_order, inputs
from ..shapes import show


def node_label(name: str, data: dict) -> str:
    op = "+".join([data["op"]] + data.get("fused_ops", []))
    fused = "fused " + ", ".join(data["fused"]) if data.get("fused") else ""
    lines = [name, op, describe(data["op"], data["attrs"]), show(data["shape"]), fused]
    return "\n".join(line for line in lines if line)


def to_dot(g: nx.DiGraph) -> str:
    """DOT text that Graphviz and pydot read; fused nodes list what they absorbed."""
    # Quoted: a name from a file like `<model>` would otherwise read as an HTML-like DOT id.
    dot = pydot.Dot(quote(g.graph["name"]), graph_type="digraph", rankdir="TB")
    dot.set_node_defaults(shape="box", style="rounded", fontname="Helvetica")
    clusters = {"": dot}
    for node in in_file_order(g):
        data = g.nodes[node]
        style = {"style": "rounded,filled", "fillcolor": "lightyellow"} if data.get("fused") else {}
        cluster(clusters, data.get("scope", "")).add_node(
            pydot.Node(quote(node), label=quote(node_label(node, data)), **style))
    for node in in_file_order(g):
        for src in inputs(g, node):
            dot.add_edge(pydot.Edge(quote(src), quote(node)))
    return dot.to_string()


def cluster(clusters: dict, scope: str):
    """The cluster of a block use (`stage2.block1.`), made inside its parent's on first use."""
    if scope not in clusters:
        use = scope[:-1]
        parent = cluster(clusters, use[:use.rfind(".") + 1] if "." in use else "")
        made = pydot.Cluster(use, label=quote(use), style="rounded", color="gray60")
        parent.add_subgraph(made)
        clusters[scope] = made
    return clusters[scope]


def quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
