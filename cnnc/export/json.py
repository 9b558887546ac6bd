"""The graph as JSON: nodes with their op, attributes, shape, source location and block scope; edges in input order."""
from __future__ import annotations

import json

import networkx as nx

from ..graph import in_file_order, inputs


def node_record(name: str, data: dict, g: nx.DiGraph) -> dict:
    loc = data["loc"]
    record = {"name": name, "op": data["op"], "attrs": data["attrs"], "shape": data["shape"],
              "inputs": inputs(g, name), "line": loc.line, "column": loc.column}
    for key in ("scope", "pads", "activation", "fused", "folded_bn"):
        if data.get(key):
            record[key] = data[key]
    return record


def to_json(g: nx.DiGraph) -> str:
    graph = {k: v for k, v in g.graph.items() if k in ("name", "file", "input", "output", "loss", "train")}
    nodes = [node_record(n, g.nodes[n], g) for n in in_file_order(g)]
    return json.dumps({"model": graph, "nodes": nodes}, indent=2)
