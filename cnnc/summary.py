"""The table `cnnc compile` prints: one row per layer of the optimized graph, and the totals."""
from __future__ import annotations

import io
import math
from collections import defaultdict

import networkx as nx
from rich import box
from rich.console import Console
from rich.table import Table

from .graph import in_file_order
from .shapes import layer_flops, parameter_shapes, show
from .ops import BUFFER_KINDS


def summary_rows(parsed: nx.DiGraph, optimized: nx.DiGraph):
    """(name, op, shape, parameters, FLOPs) per optimized node; fused members are counted in."""
    counts = layer_parameter_counts(parsed)
    rows = []
    for node in in_file_order(optimized):
        data = optimized.nodes[node]
        members = [node] + data.get("fused", [])
        ops_ = [parsed.nodes[m]["op"] for m in members]
        count = sum(counts[m] for m in members)
        flops = sum(layer_flops(parsed, m) for m in members)
        rows.append((node, "+".join(ops_), show(data["shape"]), count, flops))
    return rows


def layer_parameter_counts(parsed: nx.DiGraph) -> dict[str, int]:
    """Layer name -> the number of values in its parameters (0 for a layer without any)."""
    counts = defaultdict(int)
    for name, shape in parameter_shapes(parsed).items():
        counts[name.rsplit(".", 1)[0]] += math.prod(shape)
    return counts


def render_summary(parsed, optimized, applied, extra_lines=(), width=100) -> str:
    table = Table(title=f"model {parsed.graph['name']}", box=box.SIMPLE_HEAD, title_justify="left")
    for column, justify in [("layer", "left"), ("op", "left"), ("output", "right"),
                            ("params", "right"), ("FLOPs", "right")]:
        table.add_column(column, justify=justify)
    rows = summary_rows(parsed, optimized)
    for name, op, shape, count, flops in rows:
        table.add_row(name, op, shape, f"{count:,}", f"{flops:,}")
    params = parameter_shapes(parsed)
    total = sum(math.prod(s) for s in params.values())
    frozen = sum(math.prod(s) for n, s in params.items() if n.rsplit(".", 1)[1] in BUFFER_KINDS)
    console = Console(width=width, record=True, file=io.StringIO(), color_system=None)
    console.print(table)
    lines = [line.rstrip() for line in console.export_text().rstrip().splitlines()]
    passes = ", ".join(f"{name} (-{removed} node{'s' if removed != 1 else ''})" if removed else name
                       for name, removed in applied) or "none"
    lines.append(f"passes: {passes}")
    lines.append(f"layers: {parsed.number_of_nodes()} parsed, {optimized.number_of_nodes()} after passes")
    lines.append(f"parameters: {total:,} ({total - frozen:,} trainable, {frozen:,} running statistics)"
                 if frozen else f"parameters: {total:,}")
    lines.append(f"FLOPs per image (forward): {sum(r[4] for r in rows):,}")
    lines.extend(extra_lines)
    return "\n".join(lines)
