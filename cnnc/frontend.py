"""The front end as one call: model-file text -> checked graph, and the optimized graphs."""
from __future__ import annotations

from pathlib import Path

import networkx as nx

from . import passes
from .diagnostics import ModelError
from .expand import expand
from .graph import build_graph
from .shapes import infer_shapes
from .syntax import parse


def check_source(source: str | bytes, file: str = "<model>") -> nx.DiGraph:
    """Parse, expand, build and shape-check a model; the graph before any pass (the `parsed` stage)."""
    program = expand(parse(source, file))
    return infer_shapes(build_graph(program, Path(file).stem))


def check_file(path: str | Path) -> nx.DiGraph:
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ModelError(f"cannot read {path}: {err.strerror or err}") from None
    return check_source(data, str(path))


def optimized(g: nx.DiGraph, mode: str = "inference"):
    """The graph after the inference or the training pipeline, and the passes that changed it."""
    return passes.optimize(g, passes.INFERENCE if mode == "inference" else passes.TRAINING)
