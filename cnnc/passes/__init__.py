"""The optimization passes: each a function graph -> graph that never mutates its input.

A pass with nothing to do returns its input itself. A pipeline is a list of passes; `optimize`
runs it and reports which passes changed something.
"""
from __future__ import annotations

from typing import Callable

import networkx as nx

from .drop_dropout import drop_dropout
from .fold_batchnorm import fold_batchnorm
from .fuse_activation import fuse_batchnorm_relu, fuse_conv_relu, fuse_convtranspose_relu, fuse_dense_relu
from .fuse_add import fuse_batchnorm_add, fuse_conv_add
from .fuse_softmax_cross_entropy import fuse_softmax_cross_entropy

Pass = Callable[[nx.DiGraph], nx.DiGraph]

INFERENCE: list[Pass] = [drop_dropout, fold_batchnorm, fuse_conv_add, fuse_conv_relu, fuse_dense_relu,
                         fuse_convtranspose_relu]
TRAINING: list[Pass] = [fuse_softmax_cross_entropy, fuse_batchnorm_add, fuse_conv_relu, fuse_dense_relu,
                        fuse_batchnorm_relu, fuse_convtranspose_relu]


def optimize(g: nx.DiGraph, passes: list[Pass]) -> tuple[nx.DiGraph, list[tuple[str, int]]]:
    """Runs the passes in order; returns the result and (pass name, nodes removed) for each that changed the graph."""
    applied = []
    for run in passes:
        after = run(g)
        if changed(g, after):
            applied.append((run.__name__, g.number_of_nodes() - after.number_of_nodes()))
        g = after
    return g, applied


def changed(before: nx.DiGraph, after: nx.DiGraph) -> bool:
    """Whether a pass did something; a full comparison only when the cheap answers do not settle it."""
    if after is before:
        return False
    return after.number_of_nodes() != before.number_of_nodes() or not nx.utils.graphs_equal(after, before)
