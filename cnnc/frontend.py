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


MAX_MODEL_BYTES = 16 << 20  # a model file is a page of text; this reads /dev/zero no further


def check_file(path: str | Path) -> nx.DiGraph:
    return check_source(read_model(path), str(path))


def read_model(path: str | Path) -> bytes:
    """A model file's bytes, read once (it may be a pipe) and no further than MAX_MODEL_BYTES."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_MODEL_BYTES + 1)
    except OSError as err:
        raise ModelError(f"cannot read {path}: {err.strerror or err}") from None
    if len(data) > MAX_MODEL_BYTES:
        raise ModelError(f"{path} is larger than {MAX_MODEL_BYTES >> 20} MiB: not a model file")
    return data


def optimized(g: nx.DiGraph, mode: str = "inference"):
    """The graph after the inference or the training pipeline, and the passes that changed it."""
    return passes.optimize(g, passes.INFERENCE if mode == "inference" else passes.TRAINING)
