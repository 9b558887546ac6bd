"""What an emitter needs to know while it writes code: variable names, shapes, parameter slices."""
from __future__ import annotations

import keyword
import math
import re

import networkx as nx

from ..graph import inputs
from ..ops import BUFFER_KINDS
from ..shapes import parameter_shapes

RESERVED = {"x", "y", "n", "P", "G", "seed", "loss", "np", "EMPTY4", "EMPTY2", "EMPTY1", "smoothing"}


class ParamLayout:
    """Where each parameter lives in the flat float32 vector: trainable ones first, then buffers."""

    def __init__(self, shapes: dict[str, tuple]):
        ordered = [n for n in shapes if n.rsplit(".", 1)[1] not in BUFFER_KINDS]
        ordered += [n for n in shapes if n.rsplit(".", 1)[1] in BUFFER_KINDS]
        self.slots: dict[str, tuple[int, tuple]] = {}
        offset = 0
        for name in ordered:
            self.slots[name] = (offset, shapes[name])
            offset += math.prod(shapes[name])
        self.size = offset
        self.trainable = sum(math.prod(shapes[n]) for n in ordered if n.rsplit(".", 1)[1] not in BUFFER_KINDS)

    @classmethod
    def of(cls, parsed: nx.DiGraph) -> "ParamLayout":
        return cls(parameter_shapes(parsed))

    def trainable_names(self) -> list[str]:
        return [n for n in self.slots if n.rsplit(".", 1)[1] not in BUFFER_KINDS]

    def view(self, vector: str, name: str) -> str:
        """Source text of the parameter as a view into the flat vector, e.g. `P[0:150].reshape((6, 1, 5, 5))`."""
        offset, shape = self.slots[name]
        flat = f"{vector}[{offset}:{offset + math.prod(shape)}]"
        return flat if len(shape) == 1 else f"{flat}.reshape({shape})"


def identifiers(g: nx.DiGraph) -> dict[str, str]:
    """A Python identifier per node, from its layer name (`dense1.relu` -> `dense1_relu`)."""
    names: dict[str, str] = {}
    taken = set(RESERVED)
    for node in nx.topological_sort(g):
        base = re.sub(r"\W", "_", node)
        if keyword.iskeyword(base) or base in taken:
            base += "_"
        while base in taken:
            base += "_"
        taken.add(base)
        names[node] = base
    return names


def scalars(*values) -> str:
    """Integer and boolean arguments of a kernel call, as `1, True`."""
    return ", ".join(map(str, values))


class Context:
    """One graph being lowered: names and shapes of its values, and the parameter layout."""

    def __init__(self, g: nx.DiGraph, layout: ParamLayout):
        self.g, self.layout = g, layout
        self.names = identifiers(g)
        self.seeds = {n: i for i, n in enumerate(nx.topological_sort(g))}

    def node(self, node: str) -> dict:
        return self.g.nodes[node]

    def var(self, node: str) -> str:
        return self.names[node]

    def grad(self, node: str) -> str:
        return "d_" + self.names[node]

    def inputs(self, node: str) -> list[str]:
        return inputs(self.g, node)

    def shape(self, node: str) -> str:
        """The node's runtime array shape as source: CNHW `(C, n, H, W)` or `(n, D)`."""
        s = self.g.nodes[node]["shape"]
        return f"({s[0]}, n, {s[1]}, {s[2]})" if len(s) == 3 else f"(n, {s[0]})"

    def empty(self, node: str, suffix: str = "", dtype: str = "np.float32") -> str:
        return f"{self.var(node)}{suffix} = np.empty({self.shape(node)}, {dtype})"

    def param(self, node: str, kind: str) -> str:
        return self.layout.view("P", f"{node}.{kind}")

    def param_grad(self, node: str, kind: str) -> str:
        return self.layout.view("G", f"{node}.{kind}")

    def has_param(self, node: str, kind: str) -> bool:
        return f"{node}.{kind}" in self.layout.slots
